"""Random access to the examples of a tfds ArrayRecord build, with nothing decoded.

A tfds `imagenet2012` build (written by tfds itself or by `alexnet_jax.tools.prepare`) stores
each example as a serialized `tf.train.Example` with the features `image` (the stored image
bytes: an encoded JPEG, or 196,608 raw pixels), `label` (int64) and `file_name` (bytes).
`ExampleRecords` reads them with array_record's `ArrayRecordDataSource` and parses them with
the `tf.train.Example` proto that tensorflow-datasets ships (protobuf's upb parser): the
tfds data source does the same plus a generic per-feature conversion that cost ~30 us per
JPEG record and ~60-90 us per raw record on the project's 2-core Intel machine
(2026-11-30; docs/data.md), a third of the whole budget of a raw example.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import Any

# Imported here, not on first use: these imports run in the worker's main thread when it
# unpickles the dataset. Imported lazily from Grain's loader threads, two threads importing
# tensorflow_datasets at once deadlocked a worker (etils' lazy modules; seen 2026-11-30).
from array_record.python import array_record_data_source
from tensorflow_datasets.proto import tf_example_pb2

from alexnet_jax.errors import UserError

FEATURES = ("image", "label", "file_name")


class MissingFeatureError(UserError):
  """A record without one of the features the ImageNet transforms read."""


@dataclasses.dataclass(eq=False)
class ExampleRecords:
  """The examples of one split, in the order of its shards.

  paths: the split's ArrayRecord shard files, in order. shard_lengths: examples per shard
  (from dataset_info.json). `records[i]` is {'image': bytes, 'label': int, 'file_name': bytes}.
  Picklable: each process opens its own readers on first use.
  """
  paths: tuple[str, ...]
  shard_lengths: tuple[int, ...]

  def __post_init__(self):
    self._starts = tuple(itertools.accumulate(self.shard_lengths, initial=0))
    self._reader = None

  def __getstate__(self) -> dict[str, Any]:
    return {"paths": self.paths, "shard_lengths": self.shard_lengths}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)

  def __len__(self) -> int:
    return self._starts[-1]

  def _data_source(self):
    if self._reader is None:
      self._reader = array_record_data_source.ArrayRecordDataSource(list(self.paths))
    return self._reader

  def serialized(self, index: int) -> bytes:
    """The serialized tf.train.Example of record `index`."""
    return self._data_source()[index]

  def __getitem__(self, index: int) -> dict[str, Any]:
    feature = tf_example_pb2.Example.FromString(self.serialized(index)).features.feature
    try:
      return {"image": feature["image"].bytes_list.value[0],
              "label": int(feature["label"].int64_list.value[0]),
              "file_name": feature["file_name"].bytes_list.value[0]}
    except (KeyError, IndexError) as e:
      shard, position = self.locate(index)
      raise MissingFeatureError(
          f"record {position} of {shard} has no {e} feature (an ImageNet record has "
          f"{', '.join(FEATURES)}): this is not an imagenet2012 build alexnet_jax can "
          "read.") from None

  def locate(self, index: int) -> tuple[str, int]:
    """(shard file, position in it) of global record `index`."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return self.paths[shard], index - self._starts[shard]


def open_split(version_dir: str, split: str) -> ExampleRecords:
  """The examples of tfds split `split` ('train', 'validation') of the build in
  `version_dir` (its dataset_info.json lists the shards and their lengths)."""
  import tensorflow_datasets as tfds
  info = tfds.builder_from_directory(version_dir).info.splits[split]
  return ExampleRecords(tuple(str(p) for p in info.filepaths),
                        tuple(int(n) for n in info.shard_lengths))

