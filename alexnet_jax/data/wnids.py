"""The ILSVRC-2012 classes: the standard 1000-wnid order (labels are positions in it), their
WordNet names, and the labels of the 50,000 validation images. Read from the files shipped in
alexnet_jax/data/imagenet_labels/ and from the installed tensorflow-datasets; never downloaded.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

from alexnet_jax.data import decode
from alexnet_jax.errors import MissingFileError, UserError

NUM_CLASSES = 1000
NUM_VALIDATION_IMAGES = 50_000
VALIDATION_FILE = re.compile(r"ILSVRC2012_val_(\d{8})\.(?:JPEG|jpeg|jpg|JPG|png|PNG)")


def _package_text(*parts: str) -> str:
  resource = importlib.resources.files("alexnet_jax.data").joinpath("imagenet_labels", *parts)
  return resource.read_text(encoding="utf-8")


@functools.cache
def standard_wnids() -> tuple[str, ...]:
  """The 1000 wnids in the standard ILSVRC-2012 order (line i is class i)."""
  wnids = tuple(_package_text("imagenet2012_synsets.txt").split())
  assert len(wnids) == NUM_CLASSES, "imagenet2012_synsets.txt must list 1000 wnids"
  return wnids


@functools.cache
def wnid_to_label() -> dict[str, int]:
  """WordNet id (e.g. 'n01440764') -> label 0..999 in the standard ILSVRC-2012 order."""
  return {wnid: i for i, wnid in enumerate(standard_wnids())}


@functools.cache
def class_names() -> tuple[str, ...]:
  """WordNet names of the 1000 classes ('tench, Tinca tinca', ...), standard order."""
  lines = _package_text("synset_words.txt").splitlines()
  names = tuple(line.split(" ", 1)[1] for line in lines if line.strip())
  assert len(names) == NUM_CLASSES, "synset_words.txt must list 1000 classes"
  return names


@functools.cache
def validation_wnids() -> tuple[str, ...]:
  """The wnid of each of the 50,000 validation images, in file-number order.

  Read from the copy inside the installed tensorflow-datasets package; never downloaded.
  """
  for relative in ("datasets/imagenet2012/validation_labels.txt",
                   "image_classification/imagenet2012_validation_labels.txt"):
    resource = importlib.resources.files("tensorflow_datasets").joinpath(relative)
    if resource.is_file():
      wnids = tuple(resource.read_text(encoding="utf-8").split())
      if len(wnids) == NUM_VALIDATION_IMAGES:
        return wnids
  raise MissingFileError(
      "The ILSVRC-2012 validation labels were not found in the installed tensorflow-datasets "
      "package (datasets/imagenet2012/validation_labels.txt). Reinstall tensorflow-datasets, "
      "or arrange val/ as val/<wnid>/*.JPEG.")


def validation_label(file_name: str) -> int:
  """Class index of a flat validation file `ILSVRC2012_val_00000001.JPEG`."""
  match = VALIDATION_FILE.fullmatch(file_name)
  if match is None:
    raise UserError(f"'{decode.printable_name(file_name)}' is not named like a validation "
                    "image (ILSVRC2012_val_XXXXXXXX.JPEG).")
  number = int(match.group(1))
  if not 1 <= number <= NUM_VALIDATION_IMAGES:
    raise UserError(f"{file_name!r}: validation images are numbered 1 to 50000.")
  return wnid_to_label()[validation_wnids()[number - 1]]
