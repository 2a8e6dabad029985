"""Random uint8 images and labels, deterministic by seed: smoke tests and benchmarks."""

from __future__ import annotations

import dataclasses

import numpy as np

from alexnet_jax.data import DataInfo, SourceSpec


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """Example i is generated from (seed, i), so it is the same every time it is read."""
  num_examples: int
  image_shape: tuple[int, int, int]
  num_classes: int
  seed: int

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    rng = np.random.default_rng([self.seed, index])
    image = rng.integers(0, 256, self.image_shape, dtype=np.uint8)
    return {"image": image, "label": np.int32(rng.integers(self.num_classes))}


def _identity(record, rng):
  del rng
  return record


def build(config) -> SourceSpec:
  size = config.model.image_size
  shape = (size, size, config.model.in_channels)
  classes = config.model.num_classes
  train = SyntheticSource(config.data.num_train_examples, shape, classes, config.seed)
  evaluation = SyntheticSource(config.data.num_eval_examples, shape, classes, config.seed + 1)
  info = DataInfo(num_train_examples=len(train), num_eval_examples=len(evaluation),
                  num_classes=classes, channels=config.model.in_channels)
  return SourceSpec(info, train, _identity, evaluation, _identity)
