"""Data sources and the Grain pipelines that feed the trainer: one split at a time.

Entry points (each builds only the split it is asked for, so `--mode=eval` never opens the
training split):
- `train_batches(split, mesh, ...)`: global device batches of the training stream,
  positioned at a step (the order is a function of the seed and the step alone), loaded
  ahead of the step and placed on the mesh (`data/device.py`), skipped records counted.
- `eval_batches(split, mesh, ...)`: one exact pass over the eval split.
- `open_split(config, split)`: the source, transform and `DataInfo` of one split.

Images stay uint8 from the source to the device; normalization and any resize to
`model.image_size` happen in the jitted step (steps.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from alexnet_jax.data import augment, device, pipeline
from alexnet_jax.errors import UserError

# The ImageNet sources (data/imagenet.py): an ArrayRecord build, the extracted folders, or
# whichever of the two data_dir holds.
IMAGENET_SOURCES = ("tfds", "folder", "auto")
SOURCES = ("synthetic", "fashion_mnist") + IMAGENET_SOURCES
SPLITS = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the trainer, the evaluation report and inference need to know about a source.

  num_classes: labels are 0 .. num_classes - 1. channels: 1 (grey) or 3 (RGB) of the uint8
  images. class_names: one per label, or None. has_crops: the eval transform cuts crops out of
  a larger image (ImageNet), so the paper's 10-crop view exists (`data.ten_crop`).
  train_augment: the per-image mirror and colour noise the train step adds
  (`augment.Augment`), or None.
  """
  num_classes: int
  channels: int
  class_names: tuple[str, ...] | None = None
  has_crops: bool = False
  train_augment: augment.Augment | None = None


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a source: random access records, the per-example transform, and its facts."""
  source: pipeline.RandomAccessSource
  transform: pipeline.Transform
  info: DataInfo

  @property
  def num_examples(self) -> int:
    """Records in the split (unreadable ones included: they are replaced and counted)."""
    return len(self.source)


def _source_module(name: str):
  # Imported on demand: the ImageNet source brings tensorflow_datasets and array_record, which
  # a synthetic or Fashion-MNIST run never needs.
  if name == "synthetic":
    from alexnet_jax.data import synthetic
    return synthetic
  if name == "fashion_mnist":
    from alexnet_jax.data import fashion_mnist
    return fashion_mnist
  from alexnet_jax.data import imagenet
  if name in imagenet.SOURCE_NAMES:
    return imagenet
  raise UserError(f"data.source={name!r} is not one of {', '.join(map(repr, SOURCES))}.")


def open_split(config: Any, split: str, *, ten_crop: bool | None = None) -> Split:
  """The `split` ('train' or 'eval') of `config.data.source`.

  ten_crop: the eval view (None: `config.data.ten_crop`). Raises UserError for a missing or
  malformed data directory or a config the source cannot serve.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not one of {SPLITS}")
  if ten_crop is None:
    ten_crop = bool(config.data.ten_crop)
  return _source_module(config.data.source).build(config, split, ten_crop=ten_crop)


@dataclasses.dataclass(frozen=True)
class Loading:
  """How batches are loaded: Grain worker processes (0: in the trainer), host batches and
  device batches loaded ahead of the step (config.data's fields of the same names)."""
  num_workers: int
  prefetch_batches: int
  device_prefetch: int

  @classmethod
  def of(cls, data_config: Any) -> "Loading":
    """From `config.data`; UserError for a negative value."""
    values = {f.name: data_config[f.name] for f in dataclasses.fields(cls)}
    for field, value in values.items():
      if value < 0:
        raise UserError(f"data.{field}={value} must be 0 or more.")
    return cls(**values)


def train_batches(split: Split, mesh, *, seed: int, batch_size: int, loading: Loading,
                  start_step: int = 0):
  """The training stream of `split` from `start_step` on, in global batches of `batch_size`
  (the order a function of `seed` and the step), as a `device.DeviceBatches` iterator."""
  dataset = pipeline.train_dataset(
      split.source, split.transform, seed=seed, global_batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  return device.DeviceBatches(dataset[start_step:], mesh, batch_size=batch_size,
                              num_workers=loading.num_workers,
                              host_prefetch=loading.prefetch_batches,
                              device_prefetch=loading.device_prefetch)


def eval_batches(split: Split, mesh, *, batch_size: int, loading: Loading):
  """One pass over `split` in global batches of `batch_size` (the last one padded and masked)
  as a `device.DeviceBatches` iterator."""
  dataset = pipeline.eval_dataset(
      split.source, split.transform, global_batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  return device.DeviceBatches(dataset, mesh, batch_size=batch_size,
                              num_workers=loading.num_workers,
                              host_prefetch=loading.prefetch_batches,
                              device_prefetch=loading.device_prefetch)
