"""Random access to the examples of a tfds ArrayRecord build, with nothing decoded.

A tfds `imagenet2012` build (written by tfds itself or by `alexnet_jax.tools.prepare`) stores
each example as a serialized `tf.train.Example` with the features `image` (the stored image
bytes: an encoded JPEG, or 196,608 raw pixels), `label` (int64) and `file_name` (bytes).
`ExampleRecords` reads them with array_record's readers (as its `ArrayRecordDataSource` does)
and parses them with
the `tf.train.Example` proto that tensorflow-datasets ships (protobuf's upb parser): the
tfds data source does the same plus a generic per-feature conversion that cost a third of a
raw example's budget (docs/data.md).

Open files: each process keeps at most `shard_capacity()` shard readers open (one file
descriptor each), closing the least recently used one to open another, so any number of
shards reads under any `ulimit -n`. The cap is half the soft limit on open files, at most
MAX_OPEN_SHARDS; the soft limit is first raised toward the hard one when that allows more.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import errno
import itertools
import os
import resource
import threading
from typing import Any

from absl import logging

# Imported here, not on first use: these imports run in the worker's main thread when it
# unpickles the dataset. Imported lazily from Grain's loader threads, two threads importing
# tensorflow_datasets at once deadlocked a worker (etils' lazy modules).
from array_record.python import array_record_module
from tensorflow_datasets.proto import tf_example_pb2

from alexnet_jax.errors import UserError

FEATURES = ("image", "label", "file_name")

# Shard readers one process keeps open at most. A read from a closed shard (reopened) costs
# several times one from an open one (docs/data.md, "Open files"; benchmarks/open_shards.py),
# so every shard stays open when the limit on open files allows: 2,048 covers tfds's 1,024 + 64 ImageNet shards with room to spare.
MAX_OPEN_SHARDS = 2048
MIN_OPEN_SHARDS = 4
# array_record_data_source's reader settings: no read-ahead (records are read at random).
_READER_OPTIONS = "readahead_buffer_size:0"
_READER_BUFFER_BYTES = 32768


class TooManyOpenFilesError(UserError):
  """The process's limit on open files (ulimit -n) left no room to open a shard."""


def shard_capacity() -> int:
  """How many shard readers this process may keep open: half its soft limit on open files
  (the other half stays for sockets, pipes, shared memory, checkpoints), at least
  MIN_OPEN_SHARDS and at most MAX_OPEN_SHARDS. Raises the soft limit toward the hard one
  first when the soft one is below 2 * MAX_OPEN_SHARDS (a common default soft limit is 1024
  with a hard one of 4096 or more)."""
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  want = 2 * MAX_OPEN_SHARDS
  if soft != resource.RLIM_INFINITY and soft < want and (
      hard == resource.RLIM_INFINITY or hard > soft):
    raised = want if hard == resource.RLIM_INFINITY else min(want, hard)
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
      soft = raised
    except (ValueError, OSError):
      pass
  if soft == resource.RLIM_INFINITY:
    return MAX_OPEN_SHARDS
  return max(MIN_OPEN_SHARDS, min(MAX_OPEN_SHARDS, soft // 2))


def _is_out_of_files(error: BaseException) -> bool:
  text = str(error)
  return os.strerror(errno.EMFILE) in text or os.strerror(errno.ENFILE) in text


class _OpenShards:
  """The shard readers open in this process: at most `capacity`, least recently used closed
  first; a reader in use by another thread is never closed (briefly exceeding the cap by the
  number of loader threads). Thread-safe; reads run outside the lock."""

  def __init__(self):
    self._lock = threading.Lock()
    self._readers: collections.OrderedDict[str, list] = collections.OrderedDict()  # [reader, users]
    self._capacity: int | None = None
    self._pid = os.getpid()
    self._warned = False

  @property
  def capacity(self) -> int:
    if self._capacity is None:
      self._capacity = shard_capacity()
    return self._capacity

  def warn_if_too_many(self, num_shards: int) -> None:
    """Logs once per process that `num_shards` do not all stay open, and what it costs."""
    if num_shards > self.capacity and not self._warned:
      self._warned = True
      soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
      logging.warning(
          "%d shards, %d kept open at once (half of `ulimit -n` %d): records of a closed shard "
          "cost ~0.2 ms more to read (reopened); `ulimit -n %d` before starting keeps all open.",
          num_shards, self.capacity, soft, 2 * num_shards + 64)

  def acquire(self, path: str) -> list:
    """The entry [reader, users] of `path`, its reader open and not closed until release()."""
    if os.getpid() != self._pid:  # a forked child: the parent's readers are not ours to use
      self.__init__()
    with self._lock:
      entry = self._readers.get(path)
      if entry is None:
        entry = self._readers[path] = [self._open(path), 0]
        self._close_idle(self.capacity)
      else:
        self._readers.move_to_end(path)
      entry[1] += 1
    return entry

  def release(self, entry: list) -> None:
    with self._lock:
      entry[1] -= 1
      if len(self._readers) > self.capacity:  # it was kept open past the cap while in use
        self._close_idle(self.capacity)

  def _close_idle(self, keep: int) -> None:
    """Closes least recently used readers nobody holds until at most `keep` are open."""
    excess = len(self._readers) - keep
    if excess <= 0:
      return
    idle = []
    for path, (_, users) in self._readers.items():  # oldest first
      if not users:
        idle.append(path)
        if len(idle) == excess:
          break
    for path in idle:
      self._readers.pop(path)[0].close()

  def _open(self, path: str):
    """Opens a reader (the lock is held); out of file descriptors, closes every idle reader
    and tries once more, then raises TooManyOpenFilesError."""
    for attempt in range(2):
      reader = array_record_module.ArrayRecordReader(
          path, _READER_OPTIONS, file_reader_buffer_size=_READER_BUFFER_BYTES)
      if reader.ok():
        return reader
      try:
        reader.read([0])  # raises the reason (the constructor does not)
        return reader
      except RuntimeError as e:
        if not _is_out_of_files(e):
          raise
        if attempt == 0:
          self._close_idle(0)
          continue
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        raise TooManyOpenFilesError(
            f"too many open files to open {path}: this process may have {soft} open "
            f"(`ulimit -n`) and {len(self._readers)} are shard readers; raise the limit, "
            f"e.g. `ulimit -n {max(4 * soft, 4096)}` in the shell that starts the job."
        ) from None
    raise AssertionError("unreachable")


_open_shards = _OpenShards()


class MissingFeatureError(UserError):
  """A record without one of the features the ImageNet transforms read."""


@dataclasses.dataclass(eq=False)
class ExampleRecords:
  """The examples of one split, in the order of its shards.

  paths: the split's ArrayRecord shard files, in order. shard_lengths: examples per shard
  (from dataset_info.json). `records[i]` is {'image': bytes, 'label': int, 'file_name': bytes}.
  Picklable: each process opens its own readers on first use, and keeps at most
  `shard_capacity()` of them open (all splits together).
  """
  paths: tuple[str, ...]
  shard_lengths: tuple[int, ...]

  def __post_init__(self):
    self._starts = tuple(itertools.accumulate(self.shard_lengths, initial=0))
    self._checked = False

  def __getstate__(self) -> dict[str, Any]:
    return {"paths": self.paths, "shard_lengths": self.shard_lengths}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__init__(**state)

  def __len__(self) -> int:
    return self._starts[-1]

  def serialized(self, index: int) -> bytes:
    """The serialized tf.train.Example of record `index`. Raises IndexError outside the
    split, TooManyOpenFilesError when `ulimit -n` leaves no file to open the shard with."""
    if not 0 <= index < len(self):
      raise IndexError(f"record {index} of a split of {len(self)}")
    if not self._checked:
      self._checked = True
      _open_shards.warn_if_too_many(len(self.paths))
    path, position = self.locate(index)
    entry = _open_shards.acquire(path)
    try:
      return entry[0].read([position])[0]
    finally:
      _open_shards.release(entry)

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

