"""Turns the ImageNet tars (or an extracted folder tree) into ArrayRecord files for training.

Three ways, all ending in `<data_dir>/imagenet2012/<version>/` that `data.source=tfds` (or
`auto`) reads with random access:

  # tfds's own builder, original JPEGs (needs TensorFlow: pip install 'alexnet_jax[prepare]')
  python -m alexnet_jax.tools.prepare --tars_dir=DIR --data_dir=OUT

  # no TensorFlow: images stored pre-resized to shorter side 256, the paper's preprocessing
  python -m alexnet_jax.tools.prepare --tars_dir=DIR --data_dir=OUT --resize_shorter=256
  python -m alexnet_jax.tools.prepare --folder_dir=DIR --data_dir=OUT --resize_shorter=256

  # the paper's storage: central 256x256 patch as raw uint8 RGB (196,608 bytes an image)
  python -m alexnet_jax.tools.prepare --folder_dir=DIR --data_dir=OUT --format=raw

DIR with --tars_dir holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; with
--folder_dir it holds train/<wnid>/*.JPEG and val/ (either layout, see docs/data.md).
`--folder_dir` without `--resize_shorter` packs the original files unchanged.

The TensorFlow-free writer produces exactly what tfds would: the `imagenet2012` features
(`image` JPEG bytes, `label`, `file_name`) serialized as tf.train.Example protos (tfds ships the
proto classes), in ArrayRecord shards with `group_size:1` (random access), plus tfds's
dataset_info.json and features.json, so `tfds.data_source` opens it as any imagenet2012 build.
A file `alexnet_jax_prepare.json` next to them records how the images were stored
(`format`: jpeg or raw). Worker processes each write whole shards; unreadable images are
skipped, listed and counted. Everything is written into `<version>.incomplete-alexnet_jax/`
and renamed to `<version>/` only at the end, so an interrupted prepare leaves nothing a run
could read; a directory that already holds a build is refused unless `--overwrite`.

Ctrl-C (SIGINT) or SIGTERM stops within seconds (the workers are ended, status 130 or 143)
and keeps the shards already finished: each one's `.done.json` is written only once the shard
is complete and on disk, and the same command run again reuses them after checking them
against the plan, their size and record count. A full disk is one sentence with an estimate
of the space still needed (status 1); the finished shards are kept for the rerun too.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import datetime
import errno
import functools
import hashlib
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import signal
import tarfile
import sys
import threading
import time
from typing import Any, Iterator, Sequence

from absl import flags
import tqdm

from alexnet_jax.data import imagenet, pipeline, raw, transforms
from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.tools import cli

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
# tfds's file naming, e.g. imagenet2012-train.array_record-00000-of-01000
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
# What folder splits are called in tfds.
TFDS_SPLIT_OF_FOLDER = {"train": "train", "val": "validation"}


@dataclasses.dataclass(frozen=True)
class LoadedItem:
  """A file already in memory (from a nested tar)."""
  data: bytes
  file_name: str
  label: int

  def read(self) -> bytes:
    """The file's bytes."""
    return self.data


FORMATS = ("jpeg", raw.FORMAT)
# Mean bytes of an ILSVRC-2012 train JPEG (~147.9 GB / 1,281,167): estimates the number of
# images in a class tar for the progress bar's total (the tar is not read twice).
MEAN_TRAIN_FILE_BYTES = 110_000


# One record per chunk (random access) and no compression: ArrayRecord's default, brotli,
# gains ~1% on JPEG bytes and costs ~0.3 ms per raw 256x256 record to decompress, more than
# everything else a raw example needs (measured, docs/data.md).
ARRAY_RECORD_OPTIONS = "group_size:1,uncompressed"


class BuildExistsError(UserError, FileExistsError):
  """The output directory already holds a build (pass --overwrite)."""


@dataclasses.dataclass(frozen=True)
class StoreOptions:
  """How images are stored.

  format 'jpeg': resized to shorter side `resize_shorter` pixels (0: original bytes) and
  re-encoded as JPEG at `jpeg_quality` (1-95, PIL's scale). format 'raw': the central
  `raw_side` x `raw_side` patch after scaling the shorter side to `raw_side` (the paper's 256),
  as uint8 RGB bytes (raw_side * raw_side * 3 a record). decoder: a `data.jpeg_decoder` value.
  """
  resize_shorter: int = 0  # 0 keeps the original bytes
  jpeg_quality: int = 90
  format: str = "jpeg"
  raw_side: int = raw.SIDE
  decoder: str = "pillow"


# --------------------------------------------------------------------------------------------
# Where the images come from: shard tasks a worker process can run on its own


@dataclasses.dataclass(frozen=True)
class FileItem:
  """One image file on disk, with its tfds file name and label (class index). path and
  file_name as os.fsdecode gives them (surrogate escapes for bytes that are not UTF-8)."""
  path: str
  file_name: str
  label: int

  def read(self) -> bytes:
    """The file's bytes."""
    return pathlib.Path(self.path).read_bytes()


@dataclasses.dataclass(frozen=True)
class TarItem:
  """One file inside an uncompressed tar, read by its byte offset (random access)."""
  tar_path: str
  offset: int
  size: int
  file_name: str
  label: int

  def read(self) -> bytes:
    """The member's bytes, read at its offset."""
    with open(self.tar_path, "rb") as f:
      f.seek(self.offset)
      return f.read(self.size)


@dataclasses.dataclass(frozen=True)
class ListShard:
  """A shard made of a list of files."""
  split: str
  index: int
  items: tuple[FileItem | TarItem, ...]

  def items_in_order(self) -> Iterator[FileItem | TarItem]:
    """The shard's items, in the order they are written."""
    return iter(self.items)


@dataclasses.dataclass(frozen=True)
class ClassTarShard:
  """One class of the train tar: a tar `<wnid>.tar` nested in it, read whole by offset."""
  split: str
  index: int
  tar_path: str
  offset: int
  size: int
  wnid: str

  def items_in_order(self) -> Iterator[LoadedItem]:
    """The class tar's files, sorted by name, each with the class's label."""
    inner = TarItem(self.tar_path, self.offset, self.size, self.wnid, -1).read()
    label = imagenet.wnid_to_label()[self.wnid]
    with tarfile.open(fileobj=io.BytesIO(inner), mode="r:") as tar:
      for member in sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name):
        yield LoadedItem(tar.extractfile(member).read(), os.path.basename(member.name), label)


Shard = ListShard | ClassTarShard


def _chunks(items: Sequence, size: int) -> list[tuple]:
  return [tuple(items[i:i + size]) for i in range(0, len(items), size)]


def plan_folder(folder_dir: str, examples_per_shard: int) -> list[Shard]:
  """Shards of train/ and val/ of the folder layout, in sorted file order."""
  shards: list[Shard] = []
  for split, tfds_split in TFDS_SPLIT_OF_FOLDER.items():
    source = imagenet.folder_split(folder_dir, split)
    # os.fsdecode: a name that is not UTF-8 becomes a str with surrogate escapes, which opens
    # the same file and os.fsencode turns back into its bytes (write_shard stores those).
    relatives = [os.fsdecode(bytes(relative)) for relative in source.relative_paths]
    items = [FileItem(os.path.join(source.root, relative), os.path.basename(relative),
                      int(label))
             for relative, label in zip(relatives, source.labels)]
    shards += [ListShard(tfds_split, i, chunk)
               for i, chunk in enumerate(_chunks(items, examples_per_shard))]
  return shards


def plan_train_tar(tar_path: str) -> list[Shard]:
  """One shard per class tar inside ILSVRC2012_img_train.tar, by wnid."""
  with tarfile.open(tar_path, mode="r:") as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".tar")),
                     key=lambda m: m.name)
  shards = []
  for i, member in enumerate(members):
    wnid = os.path.basename(member.name)[:-len(".tar")]
    if wnid not in imagenet.wnid_to_label():
      raise UserError(f"{tar_path} holds {member.name}, which is not an ILSVRC-2012 class.")
    shards.append(ClassTarShard("train", i, tar_path, member.offset_data, member.size, wnid))
  return shards


def plan_val_tar(tar_path: str, examples_per_shard: int) -> list[Shard]:
  """Shards of ILSVRC2012_img_val.tar in file-name order, labelled by the tfds label list."""
  with tarfile.open(tar_path, mode="r:") as tar:
    members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
  items = []
  for member in members:
    name = os.path.basename(member.name)
    items.append(TarItem(tar_path, member.offset_data, member.size, name,
                         imagenet.validation_label(name)))
  return [ListShard("validation", i, chunk)
          for i, chunk in enumerate(_chunks(items, examples_per_shard))]


def plan_tars(tars_dir: str, examples_per_shard: int) -> list[Shard]:
  """The shards of both ILSVRC-2012 tars in `tars_dir`; UserError when one is missing."""
  paths = [os.path.join(tars_dir, name) for name in (TRAIN_TAR, VAL_TAR)]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{', '.join(missing)} not found: --tars_dir must hold {TRAIN_TAR} "
                    f"and {VAL_TAR} (from https://image-net.org/download-images).")
  return plan_train_tar(paths[0]) + plan_val_tar(paths[1], examples_per_shard)


# --------------------------------------------------------------------------------------------
# Writing shards (runs in worker processes)


def stored_image(data: bytes, key: str, options: StoreOptions) -> bytes:
  """The bytes to store: the original, a JPEG with the shorter side `resize_shorter`, or (raw)
  the central square's raw_side * raw_side * 3 uint8 RGB bytes.

  Raises `pipeline.SkippableRecordError` for a file that does not decode (when it has to be).

  Images already no larger than that keep their bytes when they are plain JPEGs; CMYK, PNG and
  other oddities are re-encoded as RGB JPEGs.
  """
  if options.format == raw.FORMAT:
    return raw.centre_square(data, key, options.raw_side,
                             transforms.resolve_decoder(options.decoder))
  if options.resize_shorter <= 0:
    return data
  target = options.resize_shorter

  def whole_image(width: int, height: int) -> transforms.Box:
    return (0, 0, width, height)

  header = transforms.open_header(data, key)
  width, height = header.size
  if min(width, height) <= target:
    if header.format == "JPEG" and header.mode in ("RGB", "L"):
      transforms.decode_rgb(data, key)  # still refuse broken files
      return data
    image = transforms.decode_rgb(data, key)
  else:
    out_size = transforms.resized_size(width, height, target)
    image = transforms.decode_region(data, key, whole_image, out_size, use_draft=True,
                                     decoder=transforms.resolve_decoder(options.decoder))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=options.jpeg_quality)
  return buffer.getvalue()


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
# Set (in the process that writes) when SIGINT/SIGTERM asked to stop: an in-process write_shard
# stops between images. Worker processes never set it: they ignore SIGINT, the parent ends them.
_stop_signal: int | None = None


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped the prepare; the shards finished so far are kept for a rerun.

  `signum` is the signal; the message is the one line to show (how to resume)."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


class DiskFullError(UserError):
  """The output filesystem is full (or the quota reached) while writing the build."""


class _Stopped(Exception):
  """Raised inside an in-process write_shard when a stop signal arrived."""


def _init_worker(counter) -> None:
  global _progress_counter
  _progress_counter = counter
  # Ctrl-C reaches the whole process group; the parent stops the workers itself (a worker's
  # KeyboardInterrupt would only print a traceback and break the pool mid-cleanup).
  if counter is not None and multiprocessing.parent_process() is not None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _count_progress(n: int) -> None:
  if _progress_counter is not None and n:
    with _progress_counter.get_lock():
      _progress_counter.value += n


def shard_path(out_dir: str, split: str, index: int) -> str:
  """Where a shard is written in the incomplete build (renamed to tfds's name at the end)."""
  return os.path.join(out_dir, f"{split}-{index:05d}.array_record")


def done_path(path: str) -> str:
  """The sidecar that says the shard at `path` is complete (written after it is on disk)."""
  return path[:-len(".array_record")] + DONE_SUFFIX


def _write_json_durably(path: str, value: dict[str, Any]) -> None:
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
                options: StoreOptions, digest: str = "") -> ShardResult:
  """Writes one shard's examples, in order, to an ArrayRecord file in `out_dir`, then (once
  the file is closed and fsynced) its `.done.json` sidecar with `digest` (shard_digest) and
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
      if _stop_signal is not None:
        raise _Stopped()
      pending += 1
      if pending >= _PROGRESS_EVERY:
        _count_progress(pending)
        pending = 0
      name = transforms.printable_name(item.file_name)  # for the log and the skipped list
      try:
        image = stored_image(item.read(), name, options)
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
    _count_progress(pending)
  _fsync_file(path)  # the data is on disk before the sidecar says so
  result = ShardResult(shard.split, shard.index, path, num_examples, num_bytes, tuple(skipped))
  _write_json_durably(sidecar, {
      "version": PLAN_VERSION, "split": shard.split, "index": shard.index, "digest": digest,
      "num_examples": num_examples, "num_bytes": num_bytes,
      "file_bytes": os.path.getsize(path), "skipped": list(skipped)})
  return result


def estimated_images(shards: Sequence[Shard]) -> int:
  """Images the shards hold: exact for file lists, estimated from the bytes for class tars."""
  total = 0
  for shard in shards:
    if isinstance(shard, ListShard):
      total += len(shard.items)
    else:
      total += max(1, round(shard.size / MEAN_TRAIN_FILE_BYTES))
  return total


# --------------------------------------------------------------------------------------------
# Resuming an interrupted build: the plan, and what each finished shard left behind

# Written into the incomplete build when it starts: what it is a build of (options, shards).
PLAN_FILE = "alexnet_jax_prepare_plan.json"
PLAN_VERSION = 1
DONE_SUFFIX = ".done.json"


def shard_digest(shard: Shard) -> str:
  """A SHA-256 of what the shard is made of: each file's path, tfds name and label (tar
  members: offset and size too), or a class tar's offset and size. Equal digests = the same
  input list; the files' contents are not read."""
  if isinstance(shard, ListShard):
    lines = ["\t".join(map(str, vars(item).values())) for item in shard.items]
  else:
    lines = [f"{shard.tar_path}\t{shard.offset}\t{shard.size}\t{shard.wnid}"]
  text = f"{type(shard).__name__}\t{shard.split}\t{shard.index}\n" + "\n".join(lines)
  return hashlib.sha256(os.fsencode(text)).hexdigest()


def build_plan(shards: Sequence[Shard], digests: Sequence[str],
               options: StoreOptions) -> dict[str, Any]:
  """What an incomplete build records about itself, to tell a rerun of the same command (whose
  finished shards it reuses) from another build (which starts over)."""
  return {"version": PLAN_VERSION, "options": dataclasses.asdict(options),
          "array_record_options": ARRAY_RECORD_OPTIONS,
          "shards": dict(collections.Counter(s.split for s in shards)),
          "digest": hashlib.sha256("\n".join(digests).encode()).hexdigest()}


def _plan_difference(work_dir: str, plan: dict[str, Any]) -> str | None:
  """None when the incomplete build in work_dir was started with `plan`; else why not."""
  path = os.path.join(work_dir, PLAN_FILE)
  try:
    with open(path) as f:
      old = json.load(f)
  except FileNotFoundError:
    return "it has no plan file (started by an older alexnet_jax, or its start was cut short)"
  except (OSError, ValueError) as e:
    return f"its plan file cannot be read ({e})"
  if old.get("version") != plan["version"]:
    return f"its plan has format {old.get('version')}, this alexnet_jax writes {plan['version']}"
  old_options = old.get("options", {})
  changed = [f"{k}={old_options.get(k)!r} (now {v!r})" for k, v in plan["options"].items()
             if old_options.get(k) != v]
  if changed:
    return f"it was started with other options: {', '.join(changed)}"
  if old.get("array_record_options") != plan["array_record_options"]:
    return (f"its shards are written with {old.get('array_record_options')!r} "
            f"(now {plan['array_record_options']!r})")
  if old.get("shards") != plan["shards"]:
    return f"it was planned as {old.get('shards')} shards (now {plan['shards']})"
  if old.get("digest") != plan["digest"]:
    return "it was started from another list of source files"
  return None


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


def start_or_resume(work_dir: str, shards: Sequence[Shard], digests: Sequence[str],
                    plan: dict[str, Any]) -> dict[int, ShardResult]:
  """Makes work_dir ready to write into; returns {position in shards: result} of the shards
  an interrupted run of the same plan finished, which are kept.

  A work_dir of another plan (other options or source files) is removed, with a log line
  saying why. Files there that no kept shard owns (shards cut short, leftovers) are removed.
  """
  if os.path.isdir(work_dir):
    difference = _plan_difference(work_dir, plan)
    if difference is None:
      reused = {}
      for position, (shard, digest) in enumerate(zip(shards, digests)):
        if _stop_signal is not None:  # the caller stops; nothing is removed before that
          return {}
        result = finished_shard(work_dir, shard, digest)
        if result is not None:
          reused[position] = result
      _remove_unowned_files(work_dir, reused.values())
      logging.info("resuming the unfinished build in %s: %d of %d shards reused (each checked: "
                   "same input files, size and record count), %d to write", work_dir,
                   len(reused), len(shards), len(shards) - len(reused))
      return reused
    logging.warning("starting over: the unfinished build in %s is not this command's (%s); "
                    "removing it", work_dir, difference)
    shutil.rmtree(work_dir)
  os.makedirs(work_dir)
  _write_json_durably(os.path.join(work_dir, PLAN_FILE), plan)
  return {}


def _remove_unowned_files(work_dir: str, kept: Sequence[ShardResult]) -> None:
  """Removes from work_dir every file but the plan and the kept shards with their sidecars
  (shards cut short by a stop or a full disk: their space goes back)."""
  keep = {PLAN_FILE}
  for result in kept:
    keep.update((os.path.basename(result.path), os.path.basename(done_path(result.path))))
  for entry in os.scandir(work_dir):
    if entry.name not in keep:
      if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
      else:
        os.remove(entry.path)


# --------------------------------------------------------------------------------------------
# Running the shards: a bounded number in flight, stopped cleanly by a signal or a failure


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` says the filesystem is full or the quota reached (array_record's writer
  raises a RuntimeError with the C library's text, Python an OSError)."""
  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  text = str(error)
  return isinstance(error, RuntimeError) and (
      os.strerror(errno.ENOSPC) in text or os.strerror(errno.EDQUOT) in text)


def _gb(num_bytes: float) -> str:
  return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


def disk_full_error(out_dir: str, done: Sequence[ShardResult],
                    remaining: Sequence[Shard]) -> DiskFullError:
  """The one sentence for a full disk: the path, the space the rest needs (estimated from the
  bytes per image of the shards done), what is free, and how to go on."""
  try:
    free = shutil.disk_usage(out_dir).free
  except OSError:
    free = 0
  images_done = sum(r.num_examples + len(r.skipped) for r in done)
  bytes_done = sum(r.num_bytes for r in done)
  if images_done and bytes_done:
    need = bytes_done / images_done * estimated_images(remaining)
    estimate = (f"the {len(remaining)} shards left need about {_gb(need)} more (estimated from "
                f"the {len(done)} finished, {_gb(bytes_done)}) and {_gb(free)} is free")
  else:
    estimate = f"not one shard was finished and {_gb(free)} is free"
  return DiskFullError(
      f"no space left on the device of {out_dir}: {estimate}; free space there (the finished "
      "shards are kept) and run the same command again to resume, or choose another "
      "--data_dir.")


class _StopSignals:
  """While active (main thread only), SIGINT and SIGTERM set `signum` (the module's
  `_stop_signal`) instead of raising in the middle of whatever runs; the code checks it and
  stops at a point of its choosing. Nests: an inner one shares the outer one's state."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)
  _depth = 0  # active instances (nested); the outermost installs and restores the handlers

  def __init__(self):
    self._previous: dict[int, Any] = {}

  @property
  def signum(self) -> int | None:
    return _stop_signal

  @staticmethod
  def _handle(signum, frame) -> None:
    del frame
    global _stop_signal
    if _stop_signal is None:  # a second Ctrl-C while stopping changes nothing
      _stop_signal = signum
      logging.warning("%s: stopping (ending the workers; finished shards are kept)",
                      signal.Signals(signum).name)

  def __enter__(self) -> "_StopSignals":
    global _stop_signal
    if (_StopSignals._depth == 0
        and threading.current_thread() is threading.main_thread()):
      _stop_signal = None
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    _StopSignals._depth += 1
    return self

  def __exit__(self, *exc_info) -> None:
    global _stop_signal
    _StopSignals._depth -= 1
    if self._previous:
      for sig, handler in self._previous.items():
        signal.signal(sig, handler)
      _stop_signal = None

  def start_forkserver(self, context) -> None:
    """Starts `context`'s fork server (if not running) with SIGINT ignored: it passes SIG_IGN
    on to every worker it forks, from their first instruction (a worker's own initializer
    runs too late: Ctrl-C during its imports printed a traceback). A SIGINT in the few
    milliseconds the server takes to start is lost (it cannot be held pending: starting a
    process clears this thread's signal mask)."""
    ours = signal.getsignal(signal.SIGINT) is _StopSignals._handle  # installed (main thread)
    if not ours or context.get_start_method() != "forkserver":
      return
    from multiprocessing import forkserver
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
      forkserver.ensure_running()
    finally:
      signal.signal(signal.SIGINT, self._handle)


def _end_workers(executor: concurrent.futures.ProcessPoolExecutor) -> None:
  """Cancels what is queued and ends the worker processes now (SIGTERM, then SIGKILL after
  5 s), whatever they are doing; returns when none is left."""
  # ProcessPoolExecutor has no public way to end running workers before Python 3.14
  # (terminate_workers); its process table has been `_processes` since Python 3.2.
  processes = list((getattr(executor, "_processes", None) or {}).values())
  executor.shutdown(wait=False, cancel_futures=True)
  for process in processes:
    if process.is_alive():
      process.terminate()
  deadline = time.monotonic() + 5
  for process in processes:
    process.join(max(0.0, deadline - time.monotonic()))
    if process.is_alive():
      process.kill()
      process.join()


def write_all_shards(shards: Sequence[Shard], data_dir: str, out_dir: str,
                     options: StoreOptions, num_workers: int,
                     progress: bool = True, *, digests: Sequence[str] | None = None,
                     done: Sequence[ShardResult] = (), total: int | None = None
                     ) -> list[ShardResult]:
  """Runs write_shard over `shards`, in `num_workers` processes (0 or 1: in this one), with at
  most `num_workers` shards in flight (submitted as workers free up, never all up front).

  `done`: results of shards already finished (a resumed build), counted in the progress and
  returned first; `total`: all shards of the build (default len(shards) + len(done));
  `digests`: each shard's shard_digest, recorded in its sidecar.
  Shows a progress bar (images/s, ETA) on stderr when `progress`, and logs each finished
  shard with the running count of its own split.

  Raises Interrupted on SIGINT/SIGTERM and DiskFullError on a full disk, after ending the
  workers and starting no further shard; any other failure of a shard is re-raised the same
  way. Shards finished before keep their files and sidecars (a rerun reuses them).
  """
  digests = list(digests) if digests is not None else [""] * len(shards)
  started = time.time()
  total = total if total is not None else len(shards) + len(done)
  results = list(done)
  done_of_split: dict[str, int] = {}
  for result in done:
    done_of_split[result.split] = done_of_split.get(result.split, 0) + result.num_examples
  # forkserver: workers forked from a server started with SIGINT ignored, which passes that
  # on (_StopSignals.start_forkserver) and imports this module once for all of them; spawn
  # where there is none.
  context = multiprocessing.get_context(
      "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
  counter = context.Value("q", 0)
  initial = sum(r.num_examples + len(r.skipped) for r in done)
  bar = tqdm.tqdm(total=initial + estimated_images(shards), initial=initial, unit="img",
                  smoothing=0.1, disable=not progress, desc="prepare", dynamic_ncols=True)
  written_before = sum(done_of_split.values())

  def update_bar() -> None:
    bar.update(initial + counter.value - bar.n)

  def log_progress(result: ShardResult) -> None:
    results.append(result)
    done_of_split[result.split] = done_of_split.get(result.split, 0) + result.num_examples
    update_bar()
    logging.info("shard %d/%d done (%s shard %d: %d images, %d skipped); %s; %.0f images/s",
                 len(results), total, result.split, result.index, result.num_examples,
                 len(result.skipped),
                 ", ".join(f"{s} {n} so far" for s, n in sorted(done_of_split.items())),
                 (sum(done_of_split.values()) - written_before)
                 / max(time.time() - started, 1e-9))

  queue = collections.deque(zip(shards, digests))
  failure: BaseException | None = None
  with _StopSignals() as stop:
    try:
      if num_workers <= 1:
        _init_worker(counter)
        try:
          while queue and stop.signum is None:
            shard, digest = queue[0]
            try:
              result = write_shard(shard, data_dir, out_dir, options, digest)
            except _Stopped:
              break
            except Exception as e:  # noqa: BLE001 - ended below, after the bookkeeping
              failure = e
              break
            queue.popleft()
            log_progress(result)
        finally:
          _init_worker(None)
      else:
        failure = _run_in_workers(queue, stop, context, counter, num_workers, update_bar,
                                  log_progress, (data_dir, out_dir, options))
    finally:
      bar.close()
    if stop.signum is not None:
      _remove_unowned_files(out_dir, results)
      name = signal.Signals(stop.signum).name
      raise Interrupted(stop.signum, f"prepare stopped by {name}: {len(results)} of {total} "
                        f"shards are finished in {out_dir}; run the same command again to "
                        "resume from them.")
  if failure is not None:
    remaining = [shard for shard, _ in queue]
    _remove_unowned_files(out_dir, results)
    if is_disk_full(failure):
      raise disk_full_error(out_dir, results, remaining) from None
    raise failure
  return results


def _run_in_workers(queue, stop: _StopSignals, context, counter, num_workers: int,
                    update_bar, log_progress, args: tuple) -> BaseException | None:
  """Feeds `queue` (of (shard, digest)) to a pool of `num_workers` processes, one shard per
  idle worker. Returns the first shard failure (then no further shard was started) or None;
  the shards it did not finish stay in `queue`. On a stop signal or a failure the workers are
  ended at once (their unfinished shards are cut short)."""
  stop.start_forkserver(context)
  executor = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=context, initializer=_init_worker, initargs=(counter,))
  running: dict[concurrent.futures.Future, tuple] = {}
  failure = None
  clean = False
  try:
    while (queue or running) and failure is None and stop.signum is None:
      # One shard per worker: a queued shard could not be taken back once a worker's call
      # queue holds it, and would start after a failure.
      while queue and len(running) < num_workers:
        shard, digest = item = queue.popleft()
        running[executor.submit(write_shard, shard, *args, digest)] = item
      finished, _ = concurrent.futures.wait(
          running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
      update_bar()
      for future in sorted(finished, key=lambda f: running[f][0].index):
        item = running.pop(future)
        error = future.exception()
        if error is None:
          log_progress(future.result())
        else:
          queue.appendleft(item)
          failure = failure or error
    clean = failure is None and stop.signum is None
  finally:
    if clean:
      executor.shutdown(wait=True)
    else:
      queue.extendleft(reversed(list(running.values())))
      _end_workers(executor)
  return failure


# --------------------------------------------------------------------------------------------
# Assembling a tfds dataset directory


def finish_dataset(data_dir: str, work_dir: str, results: Sequence[ShardResult],
                   options: StoreOptions, origin: str) -> pathlib.Path:
  """Renames the shards to tfds's names and writes dataset_info.json next to them."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir, file_format="array_record")
  version_dir = pathlib.Path(builder.data_dir)
  split_infos = []
  for split in sorted({r.split for r in results}):
    written = sorted((r for r in results if r.split == split and r.num_examples),
                     key=lambda r: r.index)
    template = tfds.core.ShardedFileTemplate(
        data_dir=version_dir, template=SHARD_TEMPLATE, dataset_name=imagenet.TFDS_NAME,
        split=split, filetype_suffix="array_record")
    for shard_index, result in enumerate(written):
      final_name = template.sharded_filepath(shard_index=shard_index, num_shards=len(written))
      os.replace(result.path, os.path.join(work_dir, final_name.name))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[r.num_examples for r in written],
        num_bytes=sum(r.num_bytes for r in written), filename_template=template))
  for result in results:  # empty shards (every file unreadable), and the resume records
    for path in (result.path, done_path(result.path)):
      if os.path.exists(path):
        os.remove(path)
  if os.path.exists(os.path.join(work_dir, PLAN_FILE)):
    os.remove(os.path.join(work_dir, PLAN_FILE))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  description = _describe(options)
  builder.info.as_proto.description = f"{description}\n\n{builder.info.description}"
  builder.info.write_to_directory(work_dir)
  _write_prepare_info(work_dir, results, options, origin, description)
  if version_dir.exists():  # --overwrite: the old build goes only now that the new one is whole
    shutil.rmtree(version_dir)
  os.replace(work_dir, version_dir)
  return version_dir


def _describe(options: StoreOptions) -> str:
  if options.format == raw.FORMAT:
    side = options.raw_side
    return (f"Written by alexnet_jax.tools.prepare: raw storage, the central {side}x{side} "
            f"patch after scaling the shorter side to {side}, as uint8 RGB ({side}x{side}x3 = "
            f"{raw.record_bytes(side)} bytes in each record's image field).")
  if options.resize_shorter > 0:
    return (f"Written by alexnet_jax.tools.prepare: images resized to shorter side "
            f"{options.resize_shorter} and stored as JPEG quality {options.jpeg_quality}.")
  return "Written by alexnet_jax.tools.prepare: original image files, unchanged."


def _write_prepare_info(work_dir: str, results: Sequence[ShardResult], options: StoreOptions,
                        origin: str, description: str) -> None:
  info = {
      "written_by": "alexnet_jax.tools.prepare",
      "description": description,
      "origin": origin,
      "format": options.format,
      "resize_shorter": (options.raw_side if options.format == raw.FORMAT
                         else options.resize_shorter),
      "jpeg_quality": (options.jpeg_quality
                       if options.format == "jpeg" and options.resize_shorter > 0 else None),
      "date": datetime.date.today().isoformat(),
      "num_examples": {s: sum(r.num_examples for r in results if r.split == s)
                       for s in sorted({r.split for r in results})},
      "skipped": sorted(name for r in results for name in r.skipped),
      "array_record_options": ARRAY_RECORD_OPTIONS,
  }
  if options.format == raw.FORMAT:
    info.update(side=options.raw_side, image_shape=[options.raw_side, options.raw_side, 3],
                dtype="uint8", record_bytes=raw.record_bytes(options.raw_side))
  path = pathlib.Path(work_dir) / imagenet.PREPARE_INFO_FILE
  path.write_text(json.dumps(info, indent=1) + "\n")


def check_options(options: StoreOptions) -> None:
  """UserError for a format, side or decoder that cannot be written."""
  if options.format not in FORMATS:
    raise UserError(f"--format={options.format!r} is not one of {', '.join(FORMATS)}.")
  if options.format == raw.FORMAT and options.raw_side <= 0:
    raise UserError(f"raw storage needs a positive side, got {options.raw_side}.")
  transforms.resolve_decoder(options.decoder)


def check_no_build(data_dir: str, overwrite: bool) -> pathlib.Path:
  """The version directory a build in `data_dir` goes to; raises BuildExistsError when
  data_dir already holds an imagenet2012 build of any version and not `overwrite`."""
  import tensorflow_datasets as tfds
  version_dir = pathlib.Path(tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir).data_dir)
  existing = imagenet.prepared_tfds_versions(data_dir)
  if (existing or version_dir.exists()) and not overwrite:
    found = version_dir if version_dir.exists() else version_dir.parent / existing[-1]
    raise BuildExistsError(f"{found} already holds a build; pass --overwrite to replace it, "
                           "or choose another --data_dir.")
  return version_dir


def write_tfds_dataset(shards: Sequence[Shard], data_dir: str, options: StoreOptions, *,
                       num_workers: int = 0, origin: str = "", overwrite: bool = False,
                       progress: bool = True) -> pathlib.Path:
  """Writes `shards` as `<data_dir>/imagenet2012/<version>/`, readable by tfds.data_source.

  Writes into `<version>.incomplete-alexnet_jax/` and renames it at the end (a run never sees
  half a build). An incomplete build of the same shards and options, left by an interrupted
  run, is resumed: its finished shards are checked and kept (start_or_resume); one of
  another plan is removed first. Raises BuildExistsError (a UserError and FileExistsError)
  when data_dir already holds an imagenet2012 build of any version and not `overwrite`; with
  `overwrite` the old build is removed only once the new one is complete. Raises Interrupted
  on SIGINT/SIGTERM and DiskFullError (a UserError) on a full disk, keeping finished shards.
  """
  check_options(options)
  version_dir = check_no_build(data_dir, overwrite)
  existing = imagenet.prepared_tfds_versions(data_dir)
  if overwrite:  # older versions would shadow or be shadowed by the new one: clear them too
    for version in existing:
      if version != version_dir.name:
        shutil.rmtree(version_dir.parent / version)
  work_dir = f"{version_dir}.incomplete-alexnet_jax"
  # Signals are noted from here on and acted on where stopping leaves a state to resume from.
  with _StopSignals() as stop:
    try:
      digests = []
      for shard in shards:  # ~1.5 s for ImageNet's 1.3M files
        if stop.signum is not None:
          raise _interrupted_before_writing(stop.signum, work_dir)
        digests.append(shard_digest(shard))
      reused = start_or_resume(work_dir, shards, digests,
                               build_plan(shards, digests, options))
      if stop.signum is not None:
        raise _interrupted_before_writing(stop.signum, work_dir)
      todo = [i for i in range(len(shards)) if i not in reused]
      results = write_all_shards([shards[i] for i in todo], data_dir, work_dir, options,
                                 num_workers, progress, digests=[digests[i] for i in todo],
                                 done=list(reused.values()), total=len(shards))
      # A signal now changes nothing: finishing takes seconds and leaves a whole build.
      return finish_dataset(data_dir, work_dir, results, options, origin)
    except OSError as e:
      if is_disk_full(e):  # the plan file, a sidecar, dataset_info.json: small, but no room
        raise DiskFullError(
            f"no space left on the device of {work_dir} ({e}); free space there and run the "
            "same command again to resume, or choose another --data_dir.") from None
      raise


def _interrupted_before_writing(signum: int, work_dir: str) -> Interrupted:
  name = signal.Signals(signum).name
  if os.path.isdir(work_dir):
    return Interrupted(signum, f"prepare stopped by {name} before writing; the unfinished build "
                       f"in {work_dir} is kept: run the same command again to resume from it.")
  return Interrupted(signum, f"prepare stopped by {name} before writing; nothing was written.")


# --------------------------------------------------------------------------------------------
# tfds's own builder (TensorFlow needed)


def prepare_with_tfds(tars_dir: str, data_dir: str) -> None:
  """tfds's imagenet2012 builder over the manual tars, written as ArrayRecord."""
  if importlib.util.find_spec("tensorflow") is None:
    raise SystemExit(
        "Preparing the original JPEGs goes through tfds's imagenet2012 builder, which needs "
        "TensorFlow: pip install 'alexnet_jax[prepare]'. Or add --resize_shorter=256 to store "
        "pre-resized images without TensorFlow.")
  import tensorflow_datasets as tfds
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=tars_dir))


# --------------------------------------------------------------------------------------------
# Command line

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a program, so importing defines none."""
  flags.DEFINE_string("tars_dir", None, f"Folder holding {TRAIN_TAR} and {VAL_TAR}.")
  flags.DEFINE_string("folder_dir", None, "Folder holding train/<wnid>/*.JPEG and val/ instead.")
  flags.DEFINE_string("data_dir", None, "Where to write (becomes --config.data.data_dir).")
  flags.DEFINE_enum("format", "jpeg", list(FORMATS),
                    "jpeg: encoded images (see --resize_shorter). raw: the paper's storage, the "
                    "central 256x256 patch (or --resize_shorter) as uint8 RGB pixels.")
  flags.DEFINE_integer("resize_shorter", 0,
                       "Store images resized to this shorter side (256 is the paper's); 0 keeps "
                       "the original files (jpeg) or means 256 (raw).")
  flags.DEFINE_enum("jpeg_decoder", "auto", list(transforms.DECODERS),
                    "JPEG decoder for resizing (see data.jpeg_decoder).")
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of re-encoded images.")
  flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes.")
  flags.DEFINE_integer("examples_per_shard", 2048,
                       "Images per shard (the train tar always gives one shard per class).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing build in --data_dir.")


@cli.report_user_errors
def main(argv: Sequence[str]) -> int:
  """Writes the ArrayRecord build the flags describe; returns 0, 1 on a UserError, 2 for a
  wrong command line."""
  if len(argv) > 1:
    raise UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  if (FLAGS.tars_dir is None) == (FLAGS.folder_dir is None):
    raise UsageError("Give exactly one of --tars_dir and --folder_dir.")
  if not FLAGS.data_dir:
    raise UsageError("--data_dir is required.")
  source_flag, source = (("tars_dir", FLAGS.tars_dir) if FLAGS.tars_dir
                         else ("folder_dir", FLAGS.folder_dir))
  if not os.path.isdir(source):
    raise UserError(f"--{source_flag}={source} is not a directory.")
  if FLAGS.folder_dir and not os.path.isdir(os.path.join(source, "train")):
    raise UserError(f"--folder_dir={source} has no train/ folder: it must hold "
                    "train/<wnid>/*.JPEG and val/ (docs/data.md).")
  if FLAGS.tars_dir and FLAGS.resize_shorter <= 0 and FLAGS.format == "jpeg":
    prepare_with_tfds(FLAGS.tars_dir, FLAGS.data_dir)
    return 0
  options = StoreOptions(FLAGS.resize_shorter, FLAGS.jpeg_quality, format=FLAGS.format,
                         raw_side=FLAGS.resize_shorter if FLAGS.resize_shorter > 0 else raw.SIDE,
                         decoder=FLAGS.jpeg_decoder)
  check_options(options)
  check_no_build(FLAGS.data_dir, FLAGS.overwrite)  # before listing a source of 1.3M files
  try:  # listing ImageNet takes tens of seconds: Ctrl-C there is no failure either
    if FLAGS.tars_dir:
      shards, origin = plan_tars(FLAGS.tars_dir, FLAGS.examples_per_shard), FLAGS.tars_dir
    else:
      shards, origin = plan_folder(FLAGS.folder_dir, FLAGS.examples_per_shard), FLAGS.folder_dir
  except KeyboardInterrupt:
    print(f"prepare stopped by SIGINT while listing --{source_flag}; nothing was written.",
          file=sys.stderr, flush=True)
    return 128 + signal.SIGINT
  started = time.time()
  try:
    version_dir = write_tfds_dataset(shards, FLAGS.data_dir, options,
                                     num_workers=FLAGS.num_workers,
                                     origin=os.path.abspath(origin), overwrite=FLAGS.overwrite)
  except Interrupted as e:
    print(str(e), file=sys.stderr, flush=True)
    return 128 + e.signum  # the shell's status for "ended by a signal"
  summary = json.loads((version_dir / imagenet.PREPARE_INFO_FILE).read_text())
  print(f"wrote {version_dir} in {time.time() - started:.0f} s: {summary['num_examples']}, "
        f"{len(summary['skipped'])} unreadable files skipped. Train with "
        f"--config.data.data_dir={FLAGS.data_dir}")
  return 0


def run() -> None:
  """`python -m alexnet_jax.tools.prepare`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
