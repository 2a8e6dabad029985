"""The paper's storage: every image kept as its central 256x256 patch of uint8 RGB pixels.

`python -m alexnet_jax.prepare --format=raw` rescales each image so its shorter side is 256,
cuts out the central 256x256 square ("rescaled such that the shorter side was of length 256,
and then cropped out the central 256x256 patch", Krizhevsky et al. 2012) and stores its
196,608 bytes (row-major, H x W x RGB) as the `image` field of the usual tfds `imagenet2012`
record, so the `tfds`/`auto` sources find the build as any other. `alexnet_jax_prepare.json`
records `"format": "raw"` and the side; `imagenet.build` reads it and picks these transforms.

Nothing is decoded at training time: a train example is a random crop (a slice, copied once,
into the batch), with the offsets the JPEG path's paper transform draws from the same
uniforms, so the two storages crop alike for the same seed; the mirror and the colour noise
are done in the train step (data/augment.py).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping

import numpy as np

from alexnet_jax.data import transforms
from alexnet_jax.errors import UserError

FORMAT = "raw"
SIDE = 256  # the paper's stored side
CHANNELS = 3


def record_bytes(side: int = SIDE) -> int:
  """Bytes of one raw record: side * side * 3 (196,608 at 256)."""
  return side * side * CHANNELS


class RawRecordError(UserError):
  """A raw record whose size is not side * side * 3 bytes: the build is damaged (not a skip)."""


@dataclasses.dataclass(frozen=True, eq=False)
class RawSource:
  """Wraps the records of a raw build (`records.ExampleRecords`) and checks every record's
  size. side: stored side in pixels."""
  inner: Any
  side: int = SIDE

  def __len__(self) -> int:
    return len(self.inner)

  def __getitem__(self, index: int) -> Mapping[str, Any]:
    record = self.inner[index]
    size = len(record["image"])
    if size != record_bytes(self.side):
      shard, position = self.inner.locate(index)
      raise RawRecordError(
          f"record {index} ({transforms.record_key(record)}, record {position} of shard "
          f"{os.path.basename(shard)}) holds {size} bytes, not {record_bytes(self.side)} (a "
          f"{self.side}x{self.side}x3 uint8 image): the raw build is damaged; prepare it "
          "again with --format=raw --overwrite.")
    return record


def pixels(record: Mapping[str, Any], side: int = SIDE) -> np.ndarray:
  """The record's image as a read-only (side, side, 3) uint8 view (no copy)."""
  return np.frombuffer(record["image"], np.uint8).reshape(side, side, CHANNELS)


def encode(image: np.ndarray) -> bytes:
  """A (side, side, 3) uint8 array as the bytes of one raw record."""
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != CHANNELS or (
      image.shape[0] != image.shape[1]):
    raise ValueError(f"a raw record is a square uint8 RGB image, got {image.dtype} "
                     f"{image.shape}")
  return np.ascontiguousarray(image).tobytes()


def centre_square(data: bytes, key: str, side: int = SIDE, decoder: str = "pillow") -> bytes:
  """Encoded image bytes -> raw record bytes: shorter side to `side` (antialiased bilinear,
  torchvision's rounding), central side x side square. Raises SkippableRecordError for a file
  that does not decode."""
  choose = lambda w, h: transforms.centre_crop_box(w, h, side, side)
  image = transforms.decode_region(data, key, choose, (side, side), use_draft=True,
                                   decoder=decoder)
  return encode(np.asarray(image))


@dataclasses.dataclass(frozen=True)
class RawPaperTrainTransform:
  """A random `image_size` crop of the stored square (a view, no copy); the mirror and the
  PCA colour noise follow in the train step (data/augment.py).

  Returns {'image': (image_size, image_size, 3) uint8, read-only view, 'label': int32}.
  """
  image_size: int
  side: int = SIDE
  uniforms_per_example: ClassVar[int] = 2

  def __call__(self, record, u: np.ndarray):
    size = self.image_size
    dx, dy = transforms.paper_offsets(u, self.side, size)
    crop = pixels(record, self.side)[dy:dy + size, dx:dx + size]
    return {"image": crop, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class RawCentreCropTransform:
  """Evaluation: the central `image_size` crop, (S, S, 3) uint8."""
  image_size: int
  side: int = SIDE

  def __call__(self, record, u=None):
    del u
    offset = transforms.centre_offset(self.side, self.image_size)
    crop = pixels(record, self.side)[offset:offset + self.image_size,
                                     offset:offset + self.image_size]
    return {"image": np.ascontiguousarray(crop), "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class RawTenCropTransform:
  """Evaluation on the paper's 10 views of the stored square: (10, S, S, 3) uint8."""
  image_size: int
  side: int = SIDE

  def __call__(self, record, u=None):
    del u
    return {"image": transforms.ten_crops(pixels(record, self.side), self.image_size),
            "label": np.int32(record["label"])}


def check_config(config: Any, side: int, where: str) -> None:
  """UserError when `config` asks for something a raw build at `where` cannot give."""
  data = config.data
  if data.train_transform != "paper":
    raise UserError(
        f"data.train_transform={data.train_transform!r} needs the whole image, but {where} "
        f"stores only the central {side}x{side} patch (raw); use "
        "--config.data.train_transform=paper, or prepare JPEG storage without --format=raw.")
  if data.resize_size != side:
    raise UserError(
        f"data.resize_size={data.resize_size} but {where} stores images at {side}x{side} "
        f"(raw); set --config.data.resize_size={side}.")
  if config.model.image_size > side:
    raise UserError(f"model.image_size={config.model.image_size} is larger than the "
                    f"{side}x{side} raw images in {where}.")


def make_transform(config: Any, split: str, *, ten_crop: bool, side: int):
  """The raw transform of `split` ('train' or 'eval') for `config`."""
  size = config.model.image_size
  if split == "train":
    return RawPaperTrainTransform(size, side)
  if ten_crop:
    return RawTenCropTransform(size, side)
  return RawCentreCropTransform(size, side)

