"""Random uint8 images and labels, deterministic by seed: smoke tests and benchmarks.

Examples come from a fixed pool of `data.synthetic_pool_size` pre-generated images (example i
is pool image i mod pool size, with its own label), so reading one costs a copy, not a random
number generator: the synthetic source measures the trainer, not numpy's RNG. A batch is one
gather from the pool (`SyntheticSource.load_batch`), not a copy per row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from alexnet_jax.data import DataInfo, Split, augment

# Seeds of the two splits, offset from config.seed so that train and eval images differ.
_SPLIT_SEED_OFFSET = {"train": 0, "eval": 1}


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticSource:
  """Example i: pool image (i mod pool_size) and label drawn from (seed, i); always the same.

  The pool is made on first access in each process (a Grain worker makes its own, equal one),
  so the source pickles small.
  """
  num_examples: int
  image_shape: tuple[int, int, int]
  num_classes: int
  seed: int
  pool_size: int = 256

  def __len__(self) -> int:
    return self.num_examples

  def _pool(self) -> tuple[np.ndarray, np.ndarray]:
    pool = self.__dict__.get("_cached_pool")
    if pool is None:
      rng = np.random.default_rng([self.seed, 0x5EED])
      size = max(1, min(self.pool_size, self.num_examples))
      images = rng.integers(0, 256, (size,) + tuple(self.image_shape), dtype=np.uint8)
      labels = np.random.default_rng([self.seed, 1]).integers(
          self.num_classes, size=self.num_examples).astype(np.int32)
      pool = (images, labels)
      object.__setattr__(self, "_cached_pool", pool)  # frozen dataclass: a cache, not state
    return pool

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_cached_pool"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.num_examples:
      raise IndexError(index)
    images, labels = self._pool()
    return {"image": images[index % len(images)], "label": labels[index]}

  def load_batch(self, indices: np.ndarray, uniforms, empty) -> None:
    """Examples `indices` at once (a `pipeline.BatchLoader`): the same as `self[i]` row by
    row, as one gather from the pool."""
    del uniforms
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= self.num_examples):
      raise IndexError(f"indices outside 0..{self.num_examples - 1}")
    images, labels = self._pool()
    out = empty("image", images.shape[1:], images.dtype)
    # mode='clip' (the indices are in range): with the default 'raise', numpy gathers into a
    # temporary first and copies that into `out`.
    np.take(images, indices % len(images), axis=0, out=out, mode="clip")
    empty("label", (), labels.dtype)[...] = labels[indices]


class Identity:
  """The synthetic transform: the record as it is. Its batch form for a SyntheticSource is
  the pool gather (`SyntheticSource.load_batch`)."""

  def __call__(self, record, u):
    del u
    return record

  def batch_loader(self, source):
    return source.load_batch if isinstance(source, SyntheticSource) else None


def build(config, split: str, *, ten_crop: bool = False) -> Split:
  """The synthetic `split` ('train': data.num_train_examples, 'eval': data.num_eval_examples)
  of uint8 images (model.image_size, model.image_size, model.in_channels)."""
  del ten_crop  # whole images: no crops
  size = config.model.image_size
  shape = (size, size, config.model.in_channels)
  count = config.data.num_train_examples if split == "train" else config.data.num_eval_examples
  source = SyntheticSource(count, shape, config.model.num_classes,
                           config.seed + _SPLIT_SEED_OFFSET[split],
                           config.data.synthetic_pool_size)
  channels = config.model.in_channels
  # Speed tests train on synthetic images: the step does ImageNet's per-image work on them too.
  train_augment = None
  if split == "train":
    train_augment = augment.Augment(flip=True,
                                    pca_std=config.data.pca_std if channels == 3 else 0.0)
  info = DataInfo(num_classes=config.model.num_classes, channels=channels,
                  train_augment=train_augment)
  return Split(source, Identity(), info)
