"""Export a checkpoint as a PyTorch state_dict (torchvision keys for the torchvision variant).

  python -m alexnet_jax.tools.export --workdir=DIR [--step=N] --export_torchvision=FILE.pth

The file loads into torchvision.models.alexnet (torchvision variant) or, for the other
variants, holds the layout keys conv1.weight ... fc8.bias (transfer/convert.py); either way it
can be an `init_from` again. Variants with batch norm have no PyTorch layout here.

Needs PyTorch to write the file (`pip install torch`, or `pip install -e ".[torch]"` in a
clone); without it the tool stops with one sentence before reading the checkpoint.
"""

from __future__ import annotations

from typing import Sequence

from absl import flags

from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.tools import cli

FLAGS = flags.FLAGS


def export(workdir: str, out: str, step: int | None = None) -> tuple[str, int]:
  """Writes the params of checkpoint `step` (latest if None) of `workdir` to `out` as a
  float32 PyTorch state_dict; returns (variant, step). UserError for a missing checkpoint,
  a variant with batch norm, or no PyTorch installed (checked first)."""
  _require_torch(out)
  from alexnet_jax import checkpoint, models
  from alexnet_jax.transfer import convert
  restored = checkpoint.read_for_inference(workdir, step)
  variant = restored.meta["model"]["variant"]
  if variant in getattr(models, "BATCH_NORM_VARIANTS", ()):
    raise UserError(f"{workdir} holds a {variant} model, which has no PyTorch layout here (its "
                    "batch norms are not part of convert.py).")
  convert.save_state_dict(convert.to_torchvision_state_dict(restored.params, variant), out)
  return variant, restored.step


def _require_torch(out: str) -> None:
  """UserError unless PyTorch can be imported: before the checkpoint is read, not after."""
  try:
    import torch  # noqa: F401
  except ImportError as err:
    raise UserError(f"Writing {out} needs PyTorch, which is not installed: `pip install torch` "
                    "(or `pip install -e \".[torch]\"` in a clone).") from err


def define_flags() -> None:
  """export's flags (absl): --workdir, --step, --export_torchvision."""
  cli.define("string", "workdir", None, "run directory (or its checkpoints/)")
  cli.define("integer", "step", None, "checkpoint step (default latest)")
  cli.define("string", "export_torchvision", None, "FILE.pth to write (needs PyTorch)")


@cli.report_user_errors
def main(argv: Sequence[str]) -> int:
  """Exports --workdir's checkpoint to --export_torchvision and prints `wrote FILE ...`;
  returns 0, 1 on a UserError, 2 for a wrong command line."""
  if len(argv) > 1:
    raise UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  if not FLAGS.workdir or not FLAGS.export_torchvision:
    raise UsageError("Give --workdir=DIR and --export_torchvision=FILE.pth.")
  from alexnet_jax.runtime import logs
  logs.quiet_library_logs()
  variant, step = export(FLAGS.workdir, FLAGS.export_torchvision, FLAGS.step)
  print(f"wrote {FLAGS.export_torchvision} ({variant} variant, step {step})")
  return 0


def run() -> None:
  """`python -m alexnet_jax.tools.export`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
