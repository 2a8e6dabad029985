"""Classify image files with a trained checkpoint or torchvision weights.

  python -m alexnet_jax.tools.predict --workdir=DIR [--step=N] PATH...
  python -m alexnet_jax.tools.predict --torchvision=alexnet-owt-7be5be79.pth PATH...
  ... [--top_k=5] [--batch_size=32] [--json]

PATH is a JPEG or PNG file or a directory (searched recursively). Each image is preprocessed
the way the weights were trained, as the checkpoint records it (`meta['preprocessing']`), by
the data layer's own eval transform (alexnet_jax/inference/preprocess.py):
- ImageNet sources (tfds, folder, auto) and torchvision weights: shorter side to
  `resize_size`, central `image_size` crop, RGB; then (x - mean) / std with the recorded
  mean/std (the paper's mean subtraction, or torchvision's mean/std);
- fashion_mnist (the d2l recipe): grey, resized to Fashion-MNIST's 28x28, the grey channel
  repeated when the model takes 3 channels, upsampled to `image_size` on the device;
- synthetic: the whole image resized to `image_size`.
Class names come from the checkpoint (Fashion-MNIST's for d2l runs, WordNet names for
ImageNet), or the package's ImageNet list for 1000-class torchvision weights.

This module is the command line (flags, text and JSON output); loading and classifying are
alexnet_jax.inference's (`load_model`, `find_images`, `predict_files`).
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from absl import flags

from alexnet_jax.errors import UsageError
from alexnet_jax.tools import cli

FLAGS = flags.FLAGS


def format_text(records: Sequence[dict[str, Any]]) -> str:
  """inference.predict_files' records as text: the path, then one ranked line per class
  (or the error)."""
  lines = []
  for record in records:
    lines.append(record["path"])
    if "error" in record:
      lines.append(f"  error: {record['error']}")
      continue
    for rank, entry in enumerate(record["top"], 1):
      lines.append(f"  {rank}. {entry['probability']:.4f}  {entry['name']} ({entry['class']})")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def define_model_flags() -> None:
  """The flags naming the weights (--workdir, --step, --torchvision, --image_size); visualize
  shares them."""
  cli.define("string", "workdir", None, "a training run directory (its checkpoints)")
  cli.define("integer", "step", None, "checkpoint step (default latest)")
  cli.define("string", "torchvision", None,
             "FILE.pth: torchvision AlexNet weights instead of a checkpoint")
  cli.define("integer", "image_size", None, "with --torchvision: crop size (default 224)")


def define_flags() -> None:
  """predict's flags (absl); PATH... are the positional arguments."""
  define_model_flags()
  cli.define("integer", "top_k", 5, "how many classes to list per image")
  cli.define("integer", "batch_size", 32, "images per forward pass")
  cli.define("bool", "json", False, "one JSON document on stdout")


@cli.report_user_errors
def main(argv: Sequence[str]) -> int:
  """Top-k classes of images, with the preprocessing the weights were trained with.

  `argv`: absl's leftover arguments, the program then PATH... (image files or directories).
  Returns 0, or 1 when a file could not be read (its record says why) or on a UserError.
  """
  from alexnet_jax.runtime import logs
  logs.quiet_library_logs()
  paths = list(argv[1:])
  if not paths:
    raise UsageError("Give at least one PATH (an image file or a directory of images).")
  if FLAGS.top_k < 1 or FLAGS.batch_size < 1:
    raise UsageError("--top_k and --batch_size must be positive.")
  from alexnet_jax import inference
  files = inference.find_images(paths)
  loaded = inference.load_model(FLAGS.workdir, FLAGS.torchvision, FLAGS.step,
                                FLAGS.image_size)
  records = inference.predict_files(loaded, files, k=FLAGS.top_k, batch_size=FLAGS.batch_size)
  if FLAGS.json:
    print(json.dumps({"model": loaded.description, "preprocessing": loaded.preprocessing,
                      "predictions": records}, indent=2))
  else:
    print(f"# {loaded.description}; preprocessing: {loaded.preprocessing['source']}")
    print(format_text(records))
  return 1 if any("error" in r for r in records) else 0


def run() -> None:
  """`python -m alexnet_jax.tools.predict`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
