"""`python -m alexnet_jax.prepare`: kept for users; the tool is alexnet_jax/tools/prepare.py."""

from alexnet_jax.tools import prepare as _tool
from alexnet_jax.tools.prepare import *  # noqa: F401,F403

__doc__ = _tool.__doc__  # what --help prints

if __name__ == "__main__":
  _tool.run()
