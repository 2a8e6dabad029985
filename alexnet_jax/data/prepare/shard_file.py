"""Writing one shard (in a worker process, or in this one): its examples as an ArrayRecord file,
then, once the file is closed and on disk, its `.done.json` sidecar; and the check a rerun
makes of a finished shard before reusing it (`finished_shard`)."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import signal
from typing import Any

from alexnet_jax.data import decode, imagenet, pipeline
from alexnet_jax.data.prepare import stop, storage
from alexnet_jax.data.prepare.sources import Shard

# One record per chunk (random access) and no compression: ArrayRecord's default, brotli,
# gains ~1% on JPEG bytes and costs ~0.3 ms per raw 256x256 record to decompress, more than
# everything else a raw example needs (measured, docs/data.md).
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"
# The format of the sidecars and of the build's plan file (resume.py): a rerun reuses only
# what this version wrote.
PLAN_VERSION = 1
DONE_SUFFIX = ".done.json"


@functools.cache
def imagenet_features(data_dir: str):
  """The tfds `imagenet2012` FeaturesDict (image, label, file_name); no TensorFlow needed."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir, file_format="array_record")
  return builder.info.features


@dataclasses.dataclass(frozen=True)
class ShardResult:
  """What writing one shard produced: its file, example count, bytes, skipped file names."""
  split: str
  index: int
  path: str
  num_examples: int
  num_bytes: int
  skipped: tuple[str, ...]


# Images done, shared with the parent for the progress bar (set in each worker process).
_progress_counter = None
_PROGRESS_EVERY = 16


def init_worker(counter) -> None:
  """Sets the progress counter this process adds its images to (None: no counting); a worker
  process also ignores SIGINT."""
  global _progress_counter
  _progress_counter = counter
  # Ctrl-C reaches the whole process group; the parent stops the workers itself (a worker's
  # KeyboardInterrupt would only print a traceback and break the pool mid-cleanup).
  if counter is not None and multiprocessing.parent_process() is not None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def count_progress(n: int) -> None:
  """Adds `n` images done to the progress counter, if this process has one."""
  if _progress_counter is not None and n:
    with _progress_counter.get_lock():
      _progress_counter.value += n


def shard_path(out_dir: str, split: str, index: int) -> str:
  """Where a shard is written in the incomplete build (renamed to tfds's name at the end)."""
  return os.path.join(out_dir, f"{split}-{index:05d}.array_record")


def done_path(path: str) -> str:
  """The sidecar that says the shard at `path` is complete (written after it is on disk)."""
  return path[:-len(".array_record")] + DONE_SUFFIX


def write_json_durably(path: str, value: dict[str, Any]) -> None:
  """Writes JSON to `path` through a temporary file, fsynced, then renamed into place: the
  file either is absent or holds all of `value`."""
  temporary = f"{path}.writing"
  with open(temporary, "w") as f:
    f.write(json.dumps(value, indent=1) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def _fsync_file(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_shard(shard: Shard, data_dir: str, out_dir: str,
                options: storage.StoreOptions, digest: str = "") -> ShardResult:
  """Writes one shard's examples, in order, to an ArrayRecord file in `out_dir`, then (once
  the file is closed and fsynced) its `.done.json` sidecar with `digest` (resume.shard_digest) and
  the counts, which a rerun checks before reusing the shard.

  Files that cannot be read, or (when resizing or raw) decoded, are logged, listed and left
  out. Without resizing the bytes are stored unchecked: the training loader skips bad ones.
  Raises what the writer raises (a RuntimeError naming the file on a full disk).
  """
  from array_record.python import array_record_module
  features = imagenet_features(data_dir)
  path = shard_path(out_dir, shard.split, shard.index)
  sidecar = done_path(path)
  if os.path.exists(sidecar):  # a shard that did not pass the checks is rewritten
    os.remove(sidecar)
  writer = array_record_module.ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
  num_examples = num_bytes = 0
  skipped = []
  pending = 0
  try:
    for item in shard.items_in_order():
      if stop.requested() is not None:
        raise stop.Stopped()
      pending += 1
      if pending >= _PROGRESS_EVERY:
        count_progress(pending)
        pending = 0
      name = decode.printable_name(item.file_name)  # for the log and the skipped list
      try:
        image = storage.stored_image(item.read(), name, options)
      except (OSError, pipeline.SkippableRecordError) as e:
        logging.warning("skipping %s: %s", name, e)
        skipped.append(name)
        continue
      # The name's own bytes: UTF-8 for a name that is text; a name that is not valid UTF-8
      # keeps its bytes, which tfds's Text feature stores and returns as they are.
      record = features.serialize_example(
          {"image": image, "label": item.label, "file_name": os.fsencode(item.file_name)})
      writer.write(record)
      num_examples += 1
      num_bytes += len(record)
  finally:
    writer.close()  # raises when the last bytes do not fit (a full disk)
    count_progress(pending)
  _fsync_file(path)  # the data is on disk before the sidecar says so
  result = ShardResult(shard.split, shard.index, path, num_examples, num_bytes, tuple(skipped))
  write_json_durably(sidecar, {
      "version": PLAN_VERSION, "split": shard.split, "index": shard.index, "digest": digest,
      "num_examples": num_examples, "num_bytes": num_bytes,
      "file_bytes": os.path.getsize(path), "skipped": list(skipped)})
  return result


def finished_shard(work_dir: str, shard: Shard, digest: str) -> ShardResult | None:
  """The result of `shard` when work_dir holds it finished and intact: a sidecar for this
  very input list (digest), next to a file of the size and record count it records. None
  otherwise (the shard is written again)."""
  from array_record.python import array_record_module
  path = shard_path(work_dir, shard.split, shard.index)
  try:
    with open(done_path(path)) as f:
      done = json.load(f)
    if (done.get("version") != PLAN_VERSION or done.get("digest") != digest
        or (done.get("split"), done.get("index")) != (shard.split, shard.index)
        or os.path.getsize(path) != done["file_bytes"]):
      return None
    reader = array_record_module.ArrayRecordReader(path)
    try:
      if not reader.ok() or reader.num_records() != done["num_examples"]:
        return None
    finally:
      reader.close()
    return ShardResult(shard.split, shard.index, path, int(done["num_examples"]),
                       int(done["num_bytes"]), tuple(done["skipped"]))
  except (OSError, ValueError, KeyError, TypeError, RuntimeError):
    return None

