"""Data sources and the Grain pipelines that feed the trainer.

`create_datasets(config)` is the one entry point: it picks the source named by
`config.data.source`, and returns the training and evaluation Grain datasets (this process's
rows of every global batch, uint8 images) plus the facts the trainer needs about them.
Normalization and any resize to `model.image_size` happen on the device (see train.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain

from alexnet_jax.data import pipeline


@dataclasses.dataclass(frozen=True)
class DataInfo:
  num_train_examples: int
  num_eval_examples: int
  num_classes: int
  channels: int
  class_names: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class SourceSpec:
  """What a source module hands to the shared pipeline."""
  info: DataInfo
  train_source: pipeline.RandomAccessSource
  train_transform: pipeline.Transform
  eval_source: pipeline.RandomAccessSource
  eval_transform: pipeline.Transform


@dataclasses.dataclass(frozen=True)
class Datasets:
  info: DataInfo
  train: grain.MapDataset
  eval: grain.MapDataset


SOURCES = ("synthetic", "fashion_mnist", "tfds", "folder", "auto")


def build_source(config: Any) -> SourceSpec:
  name = config.data.source
  if name == "synthetic":
    from alexnet_jax.data import synthetic
    return synthetic.build(config)
  if name == "fashion_mnist":
    from alexnet_jax.data import fashion_mnist
    return fashion_mnist.build(config)
  if name in ("tfds", "folder", "auto"):
    from alexnet_jax.data import imagenet
    return imagenet.build(config)
  raise ValueError(f"data.source={name!r} is not one of {', '.join(map(repr, SOURCES))}.")


def create_datasets(config: Any, process_index: int = 0, process_count: int = 1) -> Datasets:
  spec = build_source(config)
  train = pipeline.train_dataset(
      spec.train_source, spec.train_transform, seed=config.seed,
      global_batch_size=config.batch_size, process_index=process_index,
      process_count=process_count)
  evaluation = pipeline.eval_dataset(
      spec.eval_source, spec.eval_transform, global_batch_size=config.eval_batch_size,
      process_index=process_index, process_count=process_count)
  return Datasets(info=spec.info, train=train, eval=evaluation)
