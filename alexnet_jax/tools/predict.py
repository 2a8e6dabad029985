"""Classify image files with a trained checkpoint or torchvision weights.

  python -m alexnet_jax.predict --workdir=DIR [--step=N] PATH...
  python -m alexnet_jax.predict --torchvision=alexnet-owt-7be5be79.pth PATH...
  ... [--top_k=5] [--batch_size=32] [--json]

PATH is a JPEG or PNG file or a directory (searched recursively). Each image is preprocessed
the way the weights were trained, as the checkpoint records it (`meta['preprocessing']`):
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

import argparse
import dataclasses
import functools
import io
import json
import os
import pathlib
import sys
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGENET_SOURCES = ("tfds", "folder", "auto")
FASHION_MNIST_SIZE = 28
# torchvision's AlexNet weights: Resize(256), CenterCrop(224), its mean/std (0-255 units).
TORCHVISION_RESIZE, TORCHVISION_CROP = 256, 224


# --------------------------------------------------------------------------------------------
# Preprocessing


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How the weights' training images were made: what a checkpoint's meta records."""
  source: str
  mean: tuple[float, ...]
  std: tuple[float, ...]
  image_size: int
  resize_size: int
  channels: int

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> "Preprocessing":
    recorded = meta.get("preprocessing")
    if not recorded:
      raise ValueError("The checkpoint records no preprocessing (written by an older version); "
                       "evaluate it with --mode=eval and its config instead.")
    return cls(source=recorded["source"], mean=tuple(recorded["mean"]),
               std=tuple(recorded["std"]), image_size=int(recorded["image_size"]),
               resize_size=int(recorded["resize_size"]),
               channels=int(meta["model"]["in_channels"]))

  @classmethod
  def torchvision(cls, image_size: int = TORCHVISION_CROP, channels: int = 3) -> "Preprocessing":
    from alexnet_jax import config_base
    resize = round(image_size * TORCHVISION_RESIZE / TORCHVISION_CROP)
    return cls(source="torchvision", mean=config_base.TORCHVISION_MEAN_RGB,
               std=config_base.TORCHVISION_STD_RGB, image_size=image_size, resize_size=resize,
               channels=channels)

  def load(self, path: str | os.PathLike) -> np.ndarray:
    """The file as the uint8 (h, w, channels) image the model's training pipeline made."""
    with open(path, "rb") as f:
      data = f.read()
    if self.source == "fashion_mnist":
      image = _decode(data, path).convert("L").resize(
          (FASHION_MNIST_SIZE, FASHION_MNIST_SIZE), Image.Resampling.BILINEAR)
    elif self.source == "synthetic":
      image = _decode(data, path).convert("RGB" if self.channels == 3 else "L").resize(
          (self.image_size, self.image_size), Image.Resampling.BILINEAR)
    else:
      from alexnet_jax.data import pipeline, transforms
      choose = lambda w, h: transforms.centre_crop_box(w, h, self.resize_size, self.image_size)
      try:
        image = transforms.decode_region(data, str(path), choose,
                                         (self.image_size, self.image_size))
      except pipeline.SkippableRecordError as e:
        raise ValueError(str(e)) from e
      if self.channels == 1:
        image = image.convert("L")
    array = np.asarray(image, np.uint8)
    if array.ndim == 2:
      array = array[..., None]
    if array.shape[-1] != self.channels:
      array = np.repeat(array, self.channels, axis=-1)  # grey repeated for 3-channel models
    return array

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def _decode(data: bytes, path) -> Image.Image:
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Image.UnidentifiedImageError as e:
    raise ValueError(f"cannot decode image {path}: not a JPEG or PNG file.") from e
  except (OSError, ValueError, SyntaxError, EOFError) as e:
    raise ValueError(f"cannot decode image {path}: {e}") from e
  return image


# --------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
  model_config: dict[str, Any]
  params: Any
  preprocessing: Preprocessing
  class_names: tuple[str, ...]
  description: str
  batch_stats: Any = None  # running BN statistics (alexnet_bn)

  @functools.cached_property
  def probe(self):
    from alexnet_jax import interpret
    return interpret.AlexNetProbe(self.model_config, self.params, self.preprocessing.mean,
                                  self.preprocessing.std, self.batch_stats)

  @property
  def num_classes(self) -> int:
    return int(self.model_config["num_classes"])

  def class_name(self, index: int) -> str:
    if index < len(self.class_names):
      return self.class_names[index]
    return f"class {index}"

  def class_index(self, label: str) -> int:
    """A class given as its index or one of its names ('tabby', 'Sneaker')."""
    if label.lstrip("-").isdigit():
      index = int(label)
      if not 0 <= index < self.num_classes:
        raise ValueError(f"label={index} is not a class index (0..{self.num_classes - 1}).")
      return index
    wanted = label.strip().lower()
    for index, name in enumerate(self.class_names):
      if wanted == name.lower() or wanted in (s.strip().lower() for s in name.split(",")):
        return index
    raise ValueError(f"label={label!r} is neither a class index nor a class name of this "
                     "model.")


def _imagenet_names() -> tuple[str, ...]:
  from alexnet_jax.data import imagenet
  return imagenet.class_names()


def load_model_from_workdir(workdir: str | os.PathLike, step: int | None = None) -> LoadedModel:
  """The params, model and preprocessing of a checkpoint (latest unless `step`)."""
  from alexnet_jax import finetune
  params, meta, step = finetune.read_checkpoint(workdir, step)
  if "model" not in meta:
    raise ValueError(f"The checkpoint in {workdir} records no model fields; it was not "
                     "written by alexnet_jax.")
  model_config = dict(meta["model"])
  names = tuple(meta.get("class_names") or ())
  preprocessing = Preprocessing.from_meta(meta)
  if not names and preprocessing.source in IMAGENET_SOURCES:
    names = _imagenet_names()
  return LoadedModel(model_config, params, preprocessing, names,
                     f"{workdir} step {step} ({model_config['variant']} variant)",
                     finetune.read_batch_stats(workdir, step) or None)


def load_model_from_torchvision(path: str | os.PathLike,
                                image_size: int = TORCHVISION_CROP) -> LoadedModel:
  """torchvision AlexNet weights (a state_dict .pth) with torchvision's preprocessing."""
  from alexnet_jax import finetune, models
  model_config = models.default_model_config("torchvision")
  model_config["image_size"] = image_size
  pretrained = finetune.params_from_torch(path, model_config)
  model_config["num_classes"] = int(pretrained.params["fc8"]["bias"].shape[0])
  model_config["in_channels"] = int(pretrained.params["conv1"]["kernel"].shape[2])
  names = _imagenet_names() if model_config["num_classes"] == 1000 else ()
  preprocessing = Preprocessing.torchvision(image_size, model_config["in_channels"])
  return LoadedModel(model_config, pretrained.params, preprocessing, names,
                     f"{path} (torchvision variant)")


def load_model(workdir: str | None, torchvision: str | None, step: int | None = None,
               image_size: int | None = None) -> LoadedModel:
  if bool(workdir) == bool(torchvision):
    raise ValueError("Give exactly one of --workdir (a training run) and --torchvision "
                     "(a .pth state_dict).")
  if workdir:
    return load_model_from_workdir(workdir, step)
  return load_model_from_torchvision(torchvision, image_size or TORCHVISION_CROP)


# --------------------------------------------------------------------------------------------
# Prediction


def find_images(paths: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
  """The image files named, and those under the directories named (sorted, recursive)."""
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    elif path.is_file():
      found.append(path)
    else:
      raise FileNotFoundError(f"{path} does not exist.")
  if not found:
    raise FileNotFoundError(f"No JPEG or PNG images in {', '.join(map(str, paths))}.")
  return found


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
  """(class, probability) of the k most probable classes, most probable first."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(int(i), float(probabilities[i])) for i in order]


def predict_files(loaded: LoadedModel, files: Sequence[str | os.PathLike], *, k: int = 5,
                  batch_size: int = 32) -> list[dict[str, Any]]:
  """One record per file: {'path', 'top': [{'class', 'name', 'probability'}, ...]} or
  {'path', 'error'} for a file that cannot be decoded."""
  records: list[dict[str, Any] | None] = [None] * len(files)
  images, slots = [], []
  for i, path in enumerate(files):
    try:
      images.append(loaded.preprocessing.load(path))
      slots.append(i)
    except (ValueError, OSError) as e:
      records[i] = {"path": str(path), "error": str(e)}
  k = min(k, loaded.num_classes)
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    # Pad to a fixed batch: one compilation whatever the number of files.
    batch = np.stack(chunk + [chunk[-1]] * (batch_size - len(chunk)))
    probabilities = np.asarray(loaded.probe.probabilities(batch), np.float64)
    for row, slot in enumerate(slots[start:start + batch_size]):
      records[slot] = {"path": str(files[slot]), "top": [
          {"class": c, "name": loaded.class_name(c), "probability": p}
          for c, p in top_k(probabilities[row], k)]}
  return records


def format_text(records: Sequence[dict[str, Any]]) -> str:
  lines = []
  for record in records:
    lines.append(record["path"])
    if "error" in record:
      lines.append(f"  error: {record['error']}")
      continue
    for rank, entry in enumerate(record["top"], 1):
      lines.append(f"  {rank}. {entry['probability']:.4f}  {entry['name']} ({entry['class']})")
  return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m alexnet_jax.predict",
      description="Top-k classes of images, with the preprocessing the weights were trained "
                  "with.")
  parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories")
  parser.add_argument("--workdir", help="a training run directory (its checkpoints)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  parser.add_argument("--torchvision", metavar="FILE.pth",
                      help="torchvision AlexNet weights instead of a checkpoint")
  parser.add_argument("--image_size", type=int, default=None,
                      help="with --torchvision: crop size (default 224)")
  parser.add_argument("--top_k", type=int, default=5)
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
  return parser


def quiet_library_logs() -> None:
  """Orbax warns about read-only directories and metadata on every read; not news here."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  quiet_library_logs()
  try:
    if args.top_k < 1 or args.batch_size < 1:
      raise ValueError("--top_k and --batch_size must be positive.")
    files = find_images(args.paths)
    loaded = load_model(args.workdir, args.torchvision, args.step, args.image_size)
    records = predict_files(loaded, files, k=args.top_k, batch_size=args.batch_size)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps({"model": loaded.description,
                      "preprocessing": loaded.preprocessing.to_dict(),
                      "predictions": records}, indent=2))
  else:
    print(f"# {loaded.description}; preprocessing: {loaded.preprocessing.source}")
    print(format_text(records))
  return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
  sys.exit(main())
