"""Turns the ImageNet tars (or an extracted folder tree) into ArrayRecord files for training.

Three ways, all ending in `<data_dir>/imagenet2012/<version>/` that `data.source=tfds` (or
`auto`) reads with random access:

  # tfds's own builder, original JPEGs (needs TensorFlow: pip install 'alexnet_jax[prepare]')
  python -m alexnet_jax.prepare --tars_dir=DIR --data_dir=OUT

  # no TensorFlow: images stored pre-resized to shorter side 256, the paper's preprocessing
  python -m alexnet_jax.prepare --tars_dir=DIR --data_dir=OUT --resize_shorter=256
  python -m alexnet_jax.prepare --folder_dir=DIR --data_dir=OUT --resize_shorter=256

  # the paper's storage: central 256x256 patch as raw uint8 RGB (196,608 bytes an image)
  python -m alexnet_jax.prepare --folder_dir=DIR --data_dir=OUT --format=raw

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
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import importlib.util
import io
import json
import logging
import multiprocessing
import os
import pathlib
import shutil
import tarfile
import time
from typing import Iterator, Sequence

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


def _init_worker(counter) -> None:
  global _progress_counter
  _progress_counter = counter


def _count_progress(n: int) -> None:
  if _progress_counter is not None and n:
    with _progress_counter.get_lock():
      _progress_counter.value += n


def write_shard(shard: Shard, data_dir: str, out_dir: str,
                options: StoreOptions) -> ShardResult:
  """Writes one shard's examples, in order, to an ArrayRecord file in `out_dir`.

  Files that cannot be read, or (when resizing or raw) decoded, are logged, listed and left
  out. Without resizing the bytes are stored unchecked: the training loader skips bad ones.
  """
  from array_record.python import array_record_module
  features = imagenet_features(data_dir)
  path = os.path.join(out_dir, f"{shard.split}-{shard.index:05d}.array_record.tmp")
  writer = array_record_module.ArrayRecordWriter(path, ARRAY_RECORD_OPTIONS)
  num_examples = num_bytes = 0
  skipped = []
  pending = 0
  try:
    for item in shard.items_in_order():
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
    writer.close()
    _count_progress(pending)
  return ShardResult(shard.split, shard.index, path, num_examples, num_bytes, tuple(skipped))


def estimated_images(shards: Sequence[Shard]) -> int:
  """Images the shards hold: exact for file lists, estimated from the bytes for class tars."""
  total = 0
  for shard in shards:
    if isinstance(shard, ListShard):
      total += len(shard.items)
    else:
      total += max(1, round(shard.size / MEAN_TRAIN_FILE_BYTES))
  return total


def write_all_shards(shards: Sequence[Shard], data_dir: str, out_dir: str,
                     options: StoreOptions, num_workers: int,
                     progress: bool = True) -> list[ShardResult]:
  """Runs write_shard over all shards, in `num_workers` processes (0 or 1: in this one).

  Shows a progress bar (images/s, ETA) on stderr when `progress`, and logs each finished
  shard with the running count of its own split.
  """
  started = time.time()
  total = len(shards)
  results = []
  done_of_split: dict[str, int] = {}
  context = multiprocessing.get_context("spawn")
  counter = context.Value("q", 0)
  bar = tqdm.tqdm(total=estimated_images(shards), unit="img", smoothing=0.1,
                  disable=not progress, desc="prepare", dynamic_ncols=True)

  def update_bar() -> None:
    bar.update(counter.value - bar.n)

  def log_progress(result: ShardResult) -> None:
    results.append(result)
    done_of_split[result.split] = done_of_split.get(result.split, 0) + result.num_examples
    update_bar()
    logging.info("shard %d/%d done (%s shard %d: %d images, %d skipped); %s; %.0f images/s",
                 len(results), total, result.split, result.index, result.num_examples,
                 len(result.skipped),
                 ", ".join(f"{s} {n} so far" for s, n in sorted(done_of_split.items())),
                 sum(done_of_split.values()) / max(time.time() - started, 1e-9))

  try:
    if num_workers <= 1:
      _init_worker(counter)
      try:
        for shard in shards:
          log_progress(write_shard(shard, data_dir, out_dir, options))
      finally:
        _init_worker(None)
      return results
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context,
                                                initializer=_init_worker,
                                                initargs=(counter,)) as executor:
      pending = {executor.submit(write_shard, shard, data_dir, out_dir, options)
                 for shard in shards}
      while pending:
        finished, pending = concurrent.futures.wait(
            pending, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
        update_bar()
        for future in finished:
          log_progress(future.result())
    return results
  finally:
    bar.close()


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
  for result in results:  # empty shards (every file unreadable)
    if os.path.exists(result.path):
      os.remove(result.path)
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
    return (f"Written by alexnet_jax.prepare: raw storage, the central {side}x{side} "
            f"patch after scaling the shorter side to {side}, as uint8 RGB ({side}x{side}x3 = "
            f"{raw.record_bytes(side)} bytes in each record's image field).")
  if options.resize_shorter > 0:
    return (f"Written by alexnet_jax.prepare: images resized to shorter side "
            f"{options.resize_shorter} and stored as JPEG quality {options.jpeg_quality}.")
  return "Written by alexnet_jax.prepare: original image files, unchanged."


def _write_prepare_info(work_dir: str, results: Sequence[ShardResult], options: StoreOptions,
                        origin: str, description: str) -> None:
  info = {
      "written_by": "alexnet_jax.prepare",
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
  half a build). Raises BuildExistsError (a UserError and FileExistsError) when data_dir
  already holds an imagenet2012 build of any version and not `overwrite`; with `overwrite`
  the old build is removed only once the new one is complete.
  """
  check_options(options)
  version_dir = check_no_build(data_dir, overwrite)
  existing = imagenet.prepared_tfds_versions(data_dir)
  if overwrite:  # older versions would shadow or be shadowed by the new one: clear them too
    for version in existing:
      if version != version_dir.name:
        shutil.rmtree(version_dir.parent / version)
  work_dir = f"{version_dir}.incomplete-alexnet_jax"
  shutil.rmtree(work_dir, ignore_errors=True)
  os.makedirs(work_dir)
  results = write_all_shards(shards, data_dir, work_dir, options, num_workers, progress)
  return finish_dataset(data_dir, work_dir, results, options, origin)


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
  if FLAGS.tars_dir:
    shards, origin = plan_tars(FLAGS.tars_dir, FLAGS.examples_per_shard), FLAGS.tars_dir
  else:
    shards, origin = plan_folder(FLAGS.folder_dir, FLAGS.examples_per_shard), FLAGS.folder_dir
  started = time.time()
  version_dir = write_tfds_dataset(shards, FLAGS.data_dir, options,
                                   num_workers=FLAGS.num_workers, origin=os.path.abspath(origin),
                                   overwrite=FLAGS.overwrite)
  summary = json.loads((version_dir / imagenet.PREPARE_INFO_FILE).read_text())
  print(f"wrote {version_dir} in {time.time() - started:.0f} s: {summary['num_examples']}, "
        f"{len(summary['skipped'])} unreadable files skipped. Train with "
        f"--config.data.data_dir={FLAGS.data_dir}")
  return 0


def run() -> None:
  """`python -m alexnet_jax.prepare`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
