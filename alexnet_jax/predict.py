"""`python -m alexnet_jax.predict`: kept for users; the tool is alexnet_jax/tools/predict.py."""

from alexnet_jax.tools import predict as _tool
from alexnet_jax.tools.predict import *  # noqa: F401,F403

__doc__ = _tool.__doc__  # what --help prints

if __name__ == "__main__":
  _tool.run()
