"""A trained AlexNet loaded for inference: weights, model fields, preprocessing, class names.

`load_model_from_workdir(DIR, step)` reads a checkpoint of this project (through
checkpoint.read_for_inference, on any device count), `load_model_from_torchvision(FILE.pth)`
torchvision's AlexNet weights (transfer/convert.py); both give a `LoadedModel`, whose
`load_image` prepares a file as the weights were trained (preprocess.py) and whose `probe`
computes on it (probe.py).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

from alexnet_jax import checkpoint, models
from alexnet_jax.data import wnids
from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.inference import preprocess
from alexnet_jax.inference.probe import AlexNetProbe
from alexnet_jax.transfer import convert


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
    """probe.AlexNetProbe of this model (jitted logits, stages, saliency, Grad-CAM)."""
    return AlexNetProbe(self.model_config, self.params, tuple(self.preprocessing["mean"]),
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
    (preprocess.load_image); UserError for a file that cannot be read or decoded."""
    return preprocess.load_image(path, self.preprocessing, self.channels)

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
  return wnids.class_names()


def load_model_from_workdir(workdir: str | os.PathLike, step: int | None = None) -> LoadedModel:
  """The params, model and preprocessing of a checkpoint (latest unless `step`), read with
  checkpoint.read_for_inference. Raises UserError for a missing run, step or checkpoint, or a
  checkpoint that records no preprocessing."""
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
  if not names and preprocess.is_imagenet(preprocessing):
    names = _imagenet_names()
  return LoadedModel(model_config, restored.params, preprocessing, names,
                     f"{workdir} step {restored.step} ({model_config['variant']} variant)",
                     restored.batch_stats or None)


def load_model_from_torchvision(path: str | os.PathLike,
                                image_size: int | None = None) -> LoadedModel:
  """torchvision AlexNet weights (a state_dict .pth, read with convert.params_from_file) with
  torchvision's preprocessing at crop `image_size` (default 224). UserError for a file that is
  not AlexNet weights or cannot be read."""
  image_size = image_size or preprocess.TORCHVISION_CROP
  model_config = models.model_preset("torchvision")
  model_config["image_size"] = image_size
  params, model_config = convert.params_from_file(path, model_config)
  names = _imagenet_names() if model_config["num_classes"] == 1000 else ()
  return LoadedModel(model_config, params, preprocess.torchvision_preprocessing(image_size),
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
