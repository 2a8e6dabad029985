"""`python -m alexnet_jax.visualize`: kept for users; the tool is alexnet_jax/tools/visualize.py."""

from alexnet_jax.tools import visualize as _tool
from alexnet_jax.tools.visualize import *  # noqa: F401,F403

__doc__ = _tool.__doc__  # what --help prints

if __name__ == "__main__":
  _tool.run()
