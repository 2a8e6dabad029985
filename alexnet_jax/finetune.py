"""`python -m alexnet_jax.finetune --workdir=DIR [--step=N] --export_torchvision=FILE.pth`:
kept for users; the export tool is alexnet_jax/tools/export.py, init_from is
alexnet_jax/transfer/finetune.py."""

from alexnet_jax.tools import export as _tool
from alexnet_jax.transfer.finetune import *  # noqa: F401,F403  (init_from, for old imports)

__doc__ = _tool.__doc__  # what --help prints

if __name__ == "__main__":
  _tool.run()
