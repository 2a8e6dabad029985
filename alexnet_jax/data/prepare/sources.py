"""Where the images come from: the ILSVRC-2012 tars or the extracted folders, planned as shards,
each a task a worker process can run on its own (its files, in the order they are written)."""

from __future__ import annotations

import dataclasses
import io
import os
import pathlib
import tarfile
from typing import Iterator, Sequence

from alexnet_jax.data import imagenet, wnids
from alexnet_jax.errors import UserError

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
# What folder splits are called in tfds.
TFDS_SPLIT_OF_FOLDER = {"train": "train", "val": "validation"}
# Mean bytes of an ILSVRC-2012 train JPEG (~147.9 GB / 1,281,167): estimates the number of
# images in a class tar for the progress bar's total (the tar is not read twice).
MEAN_TRAIN_FILE_BYTES = 110_000


@dataclasses.dataclass(frozen=True)
class LoadedItem:
  """A file already in memory (from a nested tar)."""
  data: bytes
  file_name: str
  label: int

  def read(self) -> bytes:
    """The file's bytes."""
    return self.data


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
    label = wnids.wnid_to_label()[self.wnid]
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
    if wnid not in wnids.wnid_to_label():
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
                         wnids.validation_label(name)))
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


def estimated_images(shards: Sequence[Shard]) -> int:
  """Images the shards hold: exact for file lists, estimated from the bytes for class tars."""
  total = 0
  for shard in shards:
    if isinstance(shard, ListShard):
      total += len(shard.items)
    else:
      total += max(1, round(shard.size / MEAN_TRAIN_FILE_BYTES))
  return total
