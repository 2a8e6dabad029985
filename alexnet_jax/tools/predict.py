"""Classify image files with a trained checkpoint or torchvision weights.

  python -m alexnet_jax.predict --workdir=DIR [--step=N] PATH...
  python -m alexnet_jax.predict --torchvision=alexnet-owt-7be5be79.pth PATH...
  ... [--top_k=5] [--batch_size=32] [--json]

PATH is a JPEG or PNG file or a directory (searched recursively). Each image is preprocessed
the way the weights were trained, as the checkpoint records it (`meta['preprocessing']`), by
the data layer's own eval transform (data/inference.py):
- ImageNet sources (tfds, folder, auto) and torchvision weights: shorter side to
  `resize_size`, central `image_size` crop, RGB; then (x - mean) / std with the recorded
  mean/std (the paper's mean subtraction, or torchvision's mean/std);
- fashion_mnist (the d2l recipe): grey, resized to Fashion-MNIST's 28x28, the grey channel
  repeated when the model takes 3 channels, upsampled to `image_size` on the device;
- synthetic: the whole image resized to `image_size`.
Class names come from the checkpoint (Fashion-MNIST's for d2l runs, WordNet names for
ImageNet), or the package's ImageNet list for 1000-class torchvision weights.

`load_model_from_workdir` / `load_model_from_torchvision` give a `LoadedModel`, which
visualize.py uses too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np
from absl import flags

from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.tools import cli

FLAGS = flags.FLAGS


# --------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
  """A model ready for inference on the host's devices.

  model_config: the `model` fields (variant, num_classes, in_channels, image_size, ...).
  params: the Flax params tree, numpy float32. batch_stats: alexnet_bn's BN statistics or None.
  preprocessing: the checkpoint's `meta['preprocessing']` record (source, mean and std in
  0-255 units, image_size and resize_size in pixels), or torchvision's.
  class_names: names by class index (may be empty). description: for titles and messages.
  """
  model_config: dict[str, Any]
  params: Any
  preprocessing: dict[str, Any]
  class_names: tuple[str, ...]
  description: str
  batch_stats: Any = None

  @functools.cached_property
  def probe(self):
    """interpret.AlexNetProbe of this model (jitted logits, stages, saliency, Grad-CAM)."""
    from alexnet_jax.tools import interpret
    return interpret.AlexNetProbe(self.model_config, self.params,
                                  tuple(self.preprocessing["mean"]),
                                  tuple(self.preprocessing["std"]), self.batch_stats)

  @property
  def num_classes(self) -> int:
    """Number of classes of the model's head (fc8)."""
    return int(self.model_config["num_classes"])

  @property
  def channels(self) -> int:
    """The model's input channels (1 grey, 3 RGB)."""
    return int(self.model_config["in_channels"])

  @property
  def image_size(self) -> int:
    """The side of the model's square input, pixels."""
    return int(self.preprocessing["image_size"])

  def load_image(self, path: str | os.PathLike) -> np.ndarray:
    """The file as the uint8 (h, w, channels) image the model's eval pipeline makes
    (data.inference.load_image); UserError for a file that cannot be read or decoded."""
    from alexnet_jax.data import inference
    return inference.load_image(path, self.preprocessing, self.channels)

  def class_name(self, index: int) -> str:
    """The name of class `index`, or 'class <index>' when the model has no names."""
    if index < len(self.class_names):
      return self.class_names[index]
    return f"class {index}"

  def class_index(self, label: str) -> int:
    """A class given as its index or one of its names ('tabby', 'Sneaker'); UserError for
    neither."""
    if label.lstrip("-").isdigit():
      index = int(label)
      if not 0 <= index < self.num_classes:
        raise UserError(f"label={index} is not a class index (0..{self.num_classes - 1}).")
      return index
    wanted = label.strip().lower()
    for index, name in enumerate(self.class_names):
      if wanted == name.lower() or wanted in (s.strip().lower() for s in name.split(",")):
        return index
    raise UserError(f"label={label!r} is neither a class index nor a class name of this "
                    "model.")


def _imagenet_names() -> tuple[str, ...]:
  from alexnet_jax.data import imagenet
  return imagenet.class_names()


def load_model_from_workdir(workdir: str | os.PathLike, step: int | None = None) -> LoadedModel:
  """The params, model and preprocessing of a checkpoint (latest unless `step`), read with
  checkpoint.read_for_inference. Raises UserError for a missing run, step or checkpoint, or a
  checkpoint that records no preprocessing."""
  from alexnet_jax import checkpoint
  from alexnet_jax.data import inference
  restored = checkpoint.read_for_inference(workdir, step)
  meta = restored.meta
  preprocessing = meta.get("preprocessing")
  if not preprocessing:
    raise UserError(f"The checkpoint in {workdir} records no preprocessing (written by an older "
                    "version); evaluate it with --mode=eval and its config instead.")
  model_config = dict(meta["model"])
  preprocessing = {**preprocessing, "mean": list(preprocessing["mean"]),
                   "std": list(preprocessing["std"])}
  names = tuple(meta.get("class_names") or ())
  if not names and inference.is_imagenet(preprocessing):
    names = _imagenet_names()
  return LoadedModel(model_config, restored.params, preprocessing, names,
                     f"{workdir} step {restored.step} ({model_config['variant']} variant)",
                     restored.batch_stats or None)


def load_model_from_torchvision(path: str | os.PathLike,
                                image_size: int | None = None) -> LoadedModel:
  """torchvision AlexNet weights (a state_dict .pth, read with convert.params_from_file) with
  torchvision's preprocessing at crop `image_size` (default 224). UserError for a file that is
  not AlexNet weights or cannot be read."""
  from alexnet_jax import models
  from alexnet_jax.data import inference
  from alexnet_jax.transfer import convert
  image_size = image_size or inference.TORCHVISION_CROP
  model_config = models.model_preset("torchvision")
  model_config["image_size"] = image_size
  params, model_config = convert.params_from_file(path, model_config)
  names = _imagenet_names() if model_config["num_classes"] == 1000 else ()
  return LoadedModel(model_config, params, inference.torchvision_preprocessing(image_size),
                     names, f"{path} (torchvision variant)")


def load_model(workdir: str | None, torchvision: str | None, step: int | None = None,
               image_size: int | None = None) -> LoadedModel:
  """The model of --workdir (and --step) or of --torchvision (at --image_size); UsageError
  unless exactly one of the two is given."""
  if bool(workdir) == bool(torchvision):
    raise UsageError("Give exactly one of --workdir (a training run) and --torchvision "
                     "(a .pth state_dict).")
  if workdir:
    return load_model_from_workdir(workdir, step)
  return load_model_from_torchvision(torchvision, image_size)


# --------------------------------------------------------------------------------------------
# Prediction


def find_images(paths: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
  """The image files named, and those under the directories named (sorted, recursive; the
  suffixes of imagenet.IMAGE_SUFFIXES, hidden files skipped). UserError for a path that does
  not exist or when no image is found."""
  from alexnet_jax.data import imagenet
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in imagenet.IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    elif path.is_file():
      found.append(path)
    else:
      raise UserError(f"{path} does not exist.")
  if not found:
    raise UserError(f"No JPEG or PNG images in {', '.join(map(str, paths))}.")
  return found


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
  """(class, probability) of the k most probable classes of a (num_classes,) probability
  vector, most probable first (ties: lower class first)."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(int(i), float(probabilities[i])) for i in order]


def predict_files(loaded: LoadedModel, files: Sequence[str | os.PathLike], *, k: int = 5,
                  batch_size: int = 32) -> list[dict[str, Any]]:
  """One record per file: {'path', 'top': [{'class', 'name', 'probability'}, ...]} (k
  entries, most probable first) or {'path', 'error'} for a file that cannot be read or decoded,
  or is over the large-image rule (data.transforms.MAX_IMAGE_PIXELS). 'path' is printable
  text (transforms.printable_name: bytes of a name that are not UTF-8 as escapes).
  Images go through the model in padded batches of `batch_size` (one compilation)."""
  from alexnet_jax.data import transforms
  records: list[dict[str, Any] | None] = [None] * len(files)
  # Paths as printable text: a file name that is not UTF-8 shows its bytes as escapes.
  shown = [transforms.printable_name(path) for path in files]
  images, slots = [], []
  for i, path in enumerate(files):
    try:
      images.append(loaded.load_image(path))
      slots.append(i)
    except UserError as e:
      records[i] = {"path": shown[i], "error": str(e)}
  k = min(k, loaded.num_classes)
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    # Pad to a fixed batch: one compilation whatever the number of files.
    batch = np.stack(chunk + [chunk[-1]] * (batch_size - len(chunk)))
    probabilities = np.asarray(loaded.probe.probabilities(batch), np.float64)
    for row, slot in enumerate(slots[start:start + batch_size]):
      records[slot] = {"path": shown[slot], "top": [
          {"class": c, "name": loaded.class_name(c), "probability": p}
          for c, p in top_k(probabilities[row], k)]}
  return records


def format_text(records: Sequence[dict[str, Any]]) -> str:
  """predict_files' records as text: the path, then one ranked line per class (or the error)."""
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
  files = find_images(paths)
  loaded = load_model(FLAGS.workdir, FLAGS.torchvision, FLAGS.step, FLAGS.image_size)
  records = predict_files(loaded, files, k=FLAGS.top_k, batch_size=FLAGS.batch_size)
  if FLAGS.json:
    print(json.dumps({"model": loaded.description, "preprocessing": loaded.preprocessing,
                      "predictions": records}, indent=2))
  else:
    print(f"# {loaded.description}; preprocessing: {loaded.preprocessing['source']}")
    print(format_text(records))
  return 1 if any("error" in r for r in records) else 0


def run() -> None:
  """`python -m alexnet_jax.predict`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
