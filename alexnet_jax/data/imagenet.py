"""ImageNet (ILSVRC-2012) sources: the TFDS ArrayRecord build, or an extracted folder tree.

`data.source` picks how `data.data_dir` is read:

- `tfds`: `<data_dir>/imagenet2012/<version>/` prepared as ArrayRecord (by
  `python -m alexnet_jax.tools.prepare`, or by tfds itself). Read with `tfds.data_source` and
  `SkipDecoding`, so no TensorFlow is needed at run time; records carry the JPEG bytes.
- `folder`: `<data_dir>/train/<wnid>/*.JPEG`, and `<data_dir>/val/<wnid>/*.JPEG` or a flat
  `<data_dir>/val/ILSVRC2012_val_XXXXXXXX.JPEG` labelled by the 50,000 validation labels that
  ship inside the tensorflow-datasets package.
- `auto`: whichever of the two `data_dir` holds (tfds first).

A tfds build written by `prepare --format=raw` (its `alexnet_jax_prepare.json` says
`"format": "raw"`) holds 256x256 uint8 pixels instead of JPEGs; `build` then uses the raw
transforms of `data/raw.py` (no decoding).

Labels are always the position of the wnid in the standard 1000-class order
(`imagenet_labels/imagenet2012_synsets.txt`), never the listing order of a partial copy. Every
layout problem is reported by `build(config)`, before any training starts.
"""

from __future__ import annotations

import collections.abc
import functools
import json
import logging
import os
import pathlib
import re
from typing import Any

import numpy as np

from alexnet_jax.data import (IMAGENET_SOURCES, DataInfo, Split, augment, decode, pipeline, raw,
                              records, shared_arrays, transforms)
from alexnet_jax.data.wnids import (NUM_CLASSES, class_names, validation_label,
                                    wnid_to_label)
from alexnet_jax.errors import UserError, MissingFileError

# The `data.source` values that read ImageNet (this module); the one list of them.
SOURCE_NAMES = IMAGENET_SOURCES
TFDS_NAME = "imagenet2012"
TFDS_SPLITS = {"train": "train", "eval": "validation"}
VERSION = re.compile(r"\d+\.\d+\.\d+")
# Written next to dataset_info.json by `alexnet_jax.tools.prepare` (how the images were stored).
PREPARE_INFO_FILE = "alexnet_jax_prepare.json"

PREPARE_COMMAND = ("python -m alexnet_jax.tools.prepare --tars_dir=DIR_WITH_ILSVRC2012_TARS "
                   "--data_dir={data_dir} [--resize_shorter=256 | --format=raw]")


# --------------------------------------------------------------------------------------------
# Layout errors


def layout_help(data_dir: str) -> str:
  """The text that shows both accepted layouts of data_dir and the prepare command."""
  shown = data_dir or "DATA_DIR"
  return (
      "Expected one of these layouts:\n"
      f"  tfds:   {shown}/imagenet2012/<version>/dataset_info.json and "
      "imagenet2012-{train,validation}.array_record-* shards\n"
      f"          (build it: {PREPARE_COMMAND.format(data_dir=shown)})\n"
      f"  folder: {shown}/train/<wnid>/*.JPEG and {shown}/val/<wnid>/*.JPEG or "
      f"{shown}/val/ILSVRC2012_val_XXXXXXXX.JPEG\n"
      "          (the two ImageNet tars extracted; wnids like n01440764)\n"
      "Point --config.data.data_dir at that folder and set --config.data.source to tfds, "
      "folder or auto.")


def missing_data_error(data_dir: str, problem: str) -> Exception:
  """The UserError for ImageNet not found: MissingFileError when data_dir does not exist."""
  message = f"ImageNet not found: {problem}.\n{layout_help(data_dir)}"
  if data_dir and not os.path.exists(data_dir):
    return MissingFileError(message)
  return UserError(message)


# --------------------------------------------------------------------------------------------
# tfds (ArrayRecord) source


def tfds_default_data_dir() -> str:
  """tensorflow-datasets' default data directory (TFDS_DATA_DIR or ~/tensorflow_datasets)."""
  import tensorflow_datasets as tfds
  return os.fspath(tfds.core.constants.DATA_DIR)


def prepared_tfds_versions(data_dir: str) -> list[str]:
  """Versions of imagenet2012 under data_dir that have a dataset_info.json, oldest first."""
  root = pathlib.Path(data_dir) / TFDS_NAME
  if not root.is_dir():
    return []
  # Only finished builds: tfds and alexnet_jax.tools.prepare write into `<version>.incomplete*`.
  versions = [d.name for d in root.iterdir()
              if VERSION.fullmatch(d.name) and (d / "dataset_info.json").is_file()]
  return sorted(versions, key=lambda v: tuple(int(part) for part in v.split(".")))


def _check_array_record(version_dir: pathlib.Path) -> dict[str, Any]:
  info = json.loads((version_dir / "dataset_info.json").read_text())
  file_format = info.get("fileFormat", "tfrecord")
  if file_format != "array_record":
    raise UserError(
        f"{version_dir} holds imagenet2012 as {file_format}, which has no random access. "
        "Convert it once (needs TensorFlow: pip install 'alexnet_jax[prepare]'): "
        f"tfds convert_format --dataset_version_dir={version_dir} "
        "--out_file_format=array_record")
  return info


def open_tfds_split(data_dir: str, version: str, split: str) -> records.ExampleRecords:
  """The records of one split ({'image': undecoded bytes, 'label', 'file_name'})."""
  return records.open_split(os.path.join(data_dir, TFDS_NAME, version), split)


def tfds_split(data_dir: str, split: str):
  """The tfds data source of `split` ('train' or 'eval') of the newest prepared version."""
  return tfds_split_and_storage(data_dir, split)[0]


def prepare_info(version_dir: os.PathLike) -> dict[str, Any]:
  """The contents of `alexnet_jax_prepare.json` in a build ({} when tfds wrote it). A build
  without a `format` entry holds encoded images ('jpeg')."""
  path = pathlib.Path(version_dir) / PREPARE_INFO_FILE
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{path} cannot be read ({e}); prepare the build again with "
                    "--overwrite.") from e


def tfds_split_and_storage(data_dir: str, split: str) -> tuple[Any, dict[str, Any]]:
  """(source, storage) of `split` of the newest prepared version.

  storage: {'format': 'jpeg' | 'raw', 'side': stored side in pixels (raw), 'version_dir'}.
  A raw source is wrapped in `raw.RawSource`, which checks every record's size.
  """
  versions = prepared_tfds_versions(data_dir)
  if not versions:
    raise missing_data_error(data_dir, f"no {TFDS_NAME}/<version>/dataset_info.json under "
                             f"{data_dir!r}")
  version_dir = pathlib.Path(data_dir) / TFDS_NAME / versions[-1]
  info = _check_array_record(version_dir)
  available = {s["name"] for s in info.get("splits", [])}
  if TFDS_SPLITS[split] not in available:
    raise UserError(f"{version_dir} has no {TFDS_SPLITS[split]} split (it has "
                    f"{sorted(available)}); prepare it with {PREPARE_COMMAND}.")
  _log_prepare_info(version_dir)
  source = open_tfds_split(data_dir, versions[-1], TFDS_SPLITS[split])
  written = prepare_info(version_dir)
  storage = {"format": written.get("format", "jpeg"), "version_dir": str(version_dir)}
  if storage["format"] == raw.FORMAT:
    storage["side"] = int(written.get("side", raw.SIDE))
    source = raw.RawSource(source, storage["side"])
  elif storage["format"] != "jpeg":
    raise UserError(f"{version_dir / PREPARE_INFO_FILE} says format={storage['format']!r}, "
                    "which this version of alexnet_jax cannot read (jpeg or raw).")
  return source, storage


@functools.lru_cache(maxsize=None)  # once per build and process: each split opens it
def _log_prepare_info(version_dir: pathlib.Path) -> None:
  info = prepare_info(version_dir)
  if info:
    logging.info("ImageNet in %s: %s (%s)", version_dir, info.get("description", "?"),
                 ", ".join(f"{split} {count}" for split, count in
                           info.get("num_examples", {}).items()))


# --------------------------------------------------------------------------------------------
# folder source


class FolderSource:
  """Image files under `root`, read as bytes; the decoding is the transform's job.

  The index (file names and labels) is a `shared_arrays.SharedArrays`: 'names', the relative
  paths' bytes one after the other (uint8), 'offsets' (int64, n + 1: name i is
  names[offsets[i]:offsets[i + 1]]) and 'labels' (int32, standard class order). A Grain worker
  maps the trainer's copy instead of unpickling its own (docs/data.md, "Loader memory").
  Names are the bytes the OS gives (os.fsencode of 'wnid/name'), sorted, so a name that is not
  valid UTF-8 is opened as it is; a record's `file_name` is the relative path as printable
  text (decode.printable_name: such bytes as backslash escapes), for messages.
  """

  def __init__(self, root: str, index: shared_arrays.SharedArrays):
    self.root = root
    self.index = index
    self._root = os.fsencode(root)
    self._names, self._offsets = index["names"], index["offsets"]
    self.labels: np.ndarray = index["labels"]

  @classmethod
  def of(cls, root: str, relative_paths: list[bytes], labels: list[int]) -> "FolderSource":
    """The source of `relative_paths` (bytes) under `root` with their `labels`."""
    lengths = np.fromiter(map(len, relative_paths), np.int64, len(relative_paths))
    offsets = np.zeros(len(relative_paths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    names = np.frombuffer(b"".join(relative_paths), np.uint8)
    return cls(root, shared_arrays.SharedArrays(
        {"names": names, "offsets": offsets, "labels": np.asarray(labels, np.int32)}))

  def __reduce__(self):
    return FolderSource, (self.root, self.index)

  def __len__(self) -> int:
    return len(self.labels)

  def relative_path(self, index: int) -> bytes:
    """The relative path ('wnid/name') of record `index`, as the OS's bytes."""
    if not 0 <= index < len(self.labels):
      raise IndexError(f"record {index} of {len(self.labels)}")
    return self._names[self._offsets[index]:self._offsets[index + 1]].tobytes()

  @property
  def relative_paths(self) -> "_RelativePaths":
    """Every relative path (bytes), in the source's order."""
    return _RelativePaths(self)

  def __getitem__(self, index: int) -> dict[str, Any]:
    relative = self.relative_path(index)
    path = os.path.join(self._root, relative)
    try:
      with open(path, "rb") as f:
        data = f.read()
    except OSError as e:
      raise pipeline.SkippableRecordError(
          f"cannot read {decode.printable_name(path)}: {e.strerror or e}") from e
    return {"image": data, "label": self.labels[index],
            "file_name": decode.printable_name(relative)}


class _RelativePaths(collections.abc.Sequence):
  """The relative paths of a FolderSource as a sequence of bytes."""

  def __init__(self, source: FolderSource):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self._source.relative_path(i) for i in range(*index.indices(len(self)))]
    return self._source.relative_path(index + len(self) if index < 0 else index)


def _is_image_file(entry: os.DirEntry) -> bool:
  return (not entry.name.startswith(".") and entry.is_file()
          and entry.name.lower().endswith(decode.IMAGE_SUFFIXES))


def _visible_subdirs(path: str) -> list[os.DirEntry]:
  with os.scandir(path) as entries:
    return sorted((e for e in entries if e.is_dir() and not e.name.startswith(".")),
                  key=lambda e: e.name)


def _image_files(path: str) -> list[str]:
  with os.scandir(path) as entries:
    return sorted(e.name for e in entries if _is_image_file(e))


def list_class_folders(split_dir: str) -> tuple[list[str], list[int]]:
  """(relative paths, labels) of `split_dir/<wnid>/*`, sorted by wnid then file name; names as
  os.scandir gives them (a name that is not UTF-8 holds surrogate escapes: os.fsencode gives
  its bytes back)."""
  lookup = wnid_to_label()
  paths, labels = [], []
  for folder in _visible_subdirs(split_dir):
    if folder.name not in lookup:
      raise UserError(
          f"{decode.printable_name(folder.path)} is not an ILSVRC-2012 class folder: "
          "folder names must be wnids of the 1000-class list (like n01440764; see "
          "alexnet_jax/data/imagenet_labels/imagenet2012_synsets.txt). Remove or move it.")
    names = _image_files(folder.path)
    paths += [f"{folder.name}/{name}" for name in names]
    labels += [lookup[folder.name]] * len(names)
  return paths, labels


def list_flat_validation(val_dir: str) -> tuple[list[str], list[int]]:
  """(file names, labels) of `val_dir/ILSVRC2012_val_XXXXXXXX.JPEG`, sorted by name."""
  names = _image_files(val_dir)
  return names, [validation_label(name) for name in names]


def folder_split(data_dir: str, split: str) -> FolderSource:
  """The train or val split of the folder layout; labelled by the standard class order."""
  split_dir = os.path.join(data_dir, split)
  if not os.path.isdir(split_dir):
    raise missing_data_error(data_dir, f"no {split}/ folder in {data_dir!r}")
  if _visible_subdirs(split_dir):
    paths, labels = list_class_folders(split_dir)
    if split == "val" and _image_files(split_dir):
      raise UserError(f"{split_dir} mixes class folders and loose images; use one layout: "
                       "val/<wnid>/*.JPEG or val/ILSVRC2012_val_XXXXXXXX.JPEG.")
  elif split == "val":
    paths, labels = list_flat_validation(split_dir)
  else:
    paths, labels = [], []
  if not paths:
    raise missing_data_error(data_dir, f"no images in {split_dir}")
  logging.info("ImageNet %s: %d images in %s", split, len(paths),
               decode.printable_name(split_dir))
  # os.fsencode: the names' own bytes, also those that are not UTF-8 (os.scandir gives them as
  # str with surrogate escapes, which str.encode() refuses).
  return FolderSource.of(split_dir, [os.fsencode(path) for path in paths], labels)


def holds_folder_layout(data_dir: str) -> bool:
  """Whether data_dir looks like the folder layout: a train/ or a val/ folder (evaluation
  needs only val/)."""
  return any(os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "val"))


# --------------------------------------------------------------------------------------------
# build(config)


def resolve_source(source: str, data_dir: str) -> tuple[str, str]:
  """(source kind, data_dir to read) for data.source in tfds | folder | auto."""
  if source not in SOURCE_NAMES:
    raise UserError(f"data.source={source!r} is not an ImageNet source "
                    f"({', '.join(SOURCE_NAMES)}).")
  if source == "folder" and not data_dir:
    raise UserError("data.source='folder' needs --config.data.data_dir (there is no default "
                     f"location).\n{layout_help(data_dir)}")
  if not data_dir:  # tfds or auto: the tfds default location
    data_dir = tfds_default_data_dir()
    if source == "auto":
      source = "tfds"
  if not os.path.isdir(data_dir):
    raise missing_data_error(data_dir, f"data.data_dir={data_dir!r} does not exist")
  if source == "auto":
    if prepared_tfds_versions(data_dir):
      source = "tfds"
    elif holds_folder_layout(data_dir):
      source = "folder"
    else:
      hint = ""
      if os.path.isfile(os.path.join(data_dir, "dataset_info.json")):
        hint = " (this looks like a tfds version folder: point data_dir two levels up)"
      raise missing_data_error(
          data_dir, f"{data_dir!r} holds neither {TFDS_NAME}/ nor train/ or val/{hint}")
  return source, data_dir


def _check_config(config: Any) -> None:
  # model.in_channels and num_classes against the source: experiment's check, for every source.
  if config.data.resize_size < config.model.image_size:
    raise UserError(f"data.resize_size={config.data.resize_size} is smaller than "
                     f"model.image_size={config.model.image_size}: the crop must fit.")


def build(config: Any, split: str, *, ten_crop: bool = False) -> Split:
  """The `split` ('train' or 'eval') of ImageNet as `config.data` describes; checks the layout
  now and raises UserError, naming the directory and both layouts, when it is not there."""
  _check_config(config)
  kind, data_dir = resolve_source(config.data.source, config.data.data_dir)
  storage = {"format": "jpeg"}
  if kind == "tfds":
    source, storage = tfds_split_and_storage(data_dir, split)
  else:
    source = folder_split(data_dir, "train" if split == "train" else "val")
  data = config.data
  size = config.model.image_size
  # The paper's mirror and PCA colour noise, done in the train step (data/augment.py).
  train_augment = augment.Augment(flip=True, pca_std=data.pca_std) if split == "train" else None
  info = DataInfo(num_classes=NUM_CLASSES, channels=3, class_names=class_names(),
                  has_crops=True, train_augment=train_augment)
  if storage["format"] == raw.FORMAT:
    raw.check_config(config, storage["side"], storage["version_dir"])
    if len(source):
      source[0]  # a damaged build fails now, naming the shard, not mid-run
    transform = raw.make_transform(config, split, ten_crop=ten_crop, side=storage["side"])
    logging.info("ImageNet %s from %s (%s, raw %dx%d): %d images", split, data_dir, kind,
                 storage["side"], storage["side"], len(source))
    return Split(source, transform, info)
  if split == "train":
    transform = transforms.make_train_transform(
        data.train_transform, image_size=size, resize_size=data.resize_size,
        use_draft=data.jpeg_draft, decoder=data.jpeg_decoder)
  else:
    transform = transforms.make_eval_transform(
        image_size=size, resize_size=data.resize_size, ten_crop=ten_crop,
        use_draft=data.jpeg_draft, decoder=data.jpeg_decoder)
  logging.info("ImageNet %s from %s (%s): %d images", split, data_dir, kind, len(source))
  return Split(source, transform, info)
