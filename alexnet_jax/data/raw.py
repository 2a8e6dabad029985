"""The paper's storage: every image kept as its central 256x256 patch of uint8 RGB pixels.

`python -m alexnet_jax.tools.prepare --format=raw` rescales each image so its shorter side is
256, cuts out the central 256x256 square ("rescaled such that the shorter side was of length 256,
and then cropped out the central 256x256 patch", Krizhevsky et al. 2012) and stores its
196,608 bytes (row-major, H x W x RGB) as the `image` field of the usual tfds `imagenet2012`
record, so the `tfds`/`auto` sources find the build as any other. `alexnet_jax_prepare.json`
records `"format": "raw"` and the side; `imagenet.build` reads it and picks these transforms.

Nothing is decoded at training time: a train example is a random crop (a slice, copied once,
into the batch), with the offsets the JPEG path's paper transform draws from the same
uniforms, so the two storages crop alike for the same seed; the mirror and the colour noise
are done in the train step (data/augment.py).

A batch is loaded whole (the transforms' `batch_loader`, data/pipeline.py): the crop offsets of
all rows at once, then per record only what is per record, its read, with the pixels found in
the serialized record in place (`example_image_and_label`: no parse into new objects, no copy of
the 196 KB) and copied once, cropped, into the batch.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar, Mapping

import numpy as np

from alexnet_jax.data import crops, decode
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
          f"record {index} ({decode.record_key(record)}, record {position} of shard "
          f"{os.path.basename(shard)}) holds {size} bytes, not {record_bytes(self.side)} (a "
          f"{self.side}x{self.side}x3 uint8 image): the raw build is damaged; prepare it "
          "again with --format=raw --overwrite.")
    return record

  def image_and_label(self, index: int) -> tuple[np.ndarray, int]:
    """Record `index` as (its pixels, a read-only (side, side, 3) uint8 view, its label): what
    `pixels(self[index])` and `self[index]['label']` give, found in place in the serialized
    record when the records offer it (`example_image_and_label`), else through `self[index]`
    (which also reports a damaged record)."""
    serialized = getattr(self.inner, "serialized", None)
    if serialized is not None:
      data = serialized(index)
      found = example_image_and_label(data)
      if found is not None and found[1] - found[0] == record_bytes(self.side):
        start, stop, label = found
        image = np.frombuffer(data, np.uint8, stop - start, start)
        return image.reshape(self.side, self.side, CHANNELS), label
    record = self[index]
    return pixels(record, self.side), record["label"]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
  """(value, position after it) of the protobuf varint at data[pos]."""
  byte = data[pos]
  if byte < 0x80:  # one byte: most of them
    return byte, pos + 1
  value, shift = byte & 0x7F, 7
  while True:
    pos += 1
    byte = data[pos]
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos + 1
    shift += 7
    if shift > 63:
      raise ValueError("varint too long")


# Tags of the protobuf wire format: (field number << 3) | wire type (0 varint, 2 length-delimited).
_FIELD1_BYTES, _FIELD2_BYTES, _FIELD3_BYTES, _FIELD1_VARINT = 0x0A, 0x12, 0x1A, 0x08


def _bytes_value(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
  """(start, stop) of BytesList.value[0] in the Feature at data[pos:end] (a bytes_list and
  nothing else), or None."""
  if data[pos] != _FIELD1_BYTES:  # Feature.bytes_list
    return None
  length, pos = _varint(data, pos + 1)
  if pos + length != end or data[pos] != _FIELD1_BYTES:  # BytesList.value[0]
    return None
  length, pos = _varint(data, pos + 1)
  return (pos, pos + length) if pos + length <= end else None


def _int64_value(data: bytes, pos: int, end: int) -> int | None:
  """Int64List.value[0] of the Feature at data[pos:end] (an int64_list and nothing else), or
  None."""
  if data[pos] != _FIELD3_BYTES:  # Feature.int64_list
    return None
  length, pos = _varint(data, pos + 1)
  if pos + length != end:
    return None
  if data[pos] == _FIELD1_BYTES:  # Int64List.value, packed
    length, pos = _varint(data, pos + 1)
    if length == 0:
      return None
    value, after = _varint(data, pos)
    if after > pos + length:
      return None
  elif data[pos] == _FIELD1_VARINT:  # Int64List.value, one by one
    value, _ = _varint(data, pos + 1)
  else:
    return None
  return value - (1 << 64) if value >= 1 << 63 else value  # int64: two's complement


def example_image_and_label(data: bytes) -> tuple[int, int, int] | None:
  """(start, stop, label): where the first value of the `image` feature lies in a serialized
  tf.train.Example, and the first value of its `label` feature, read off the wire format in
  place (the 196 KB are neither parsed into a message nor copied: ~3 us against ~17 us for the
  proto parse and its copy). None unless the record has the plain layout tfds and `prepare`
  write: one `features` field whose map entries are each (key, value) once, with image and
  file_name non-empty bytes lists and label a non-empty int64 list. For None the caller takes
  the full parse (`records.ExampleRecords.__getitem__`), which then gives the same values or
  reports what is wrong."""
  try:
    if data[0] != _FIELD1_BYTES:  # Example.features
      return None
    length, pos = _varint(data, 1)
    size = len(data)
    if pos + length != size:
      return None
    image = label = name = None
    seen = set()
    while pos < size:
      if data[pos] != _FIELD1_BYTES:  # Features.feature: one map entry
        return None
      length, pos = _varint(data, pos + 1)
      end = pos + length
      if data[pos] != _FIELD1_BYTES:  # the entry's key
        return None
      length, pos = _varint(data, pos + 1)
      key = data[pos:pos + length]
      pos += length
      if key in seen or data[pos] != _FIELD2_BYTES:  # the entry's value, a Feature
        return None
      seen.add(key)
      length, pos = _varint(data, pos + 1)
      if pos + length != end:
        return None
      if key == b"image":
        image = _bytes_value(data, pos, end)
        if image is None:
          return None
      elif key == b"label":
        label = _int64_value(data, pos, end)
        if label is None:
          return None
      elif key == b"file_name":
        name = _bytes_value(data, pos, end)
        if name is None:
          return None
      pos = end
    if image is None or label is None or name is None:
      return None
    return image[0], image[1], label
  except (IndexError, ValueError):
    return None


def _reads_raw(source: Any, side: int) -> bool:
  """Whether `source` is a raw build of `side` (the transforms' batch form applies)."""
  return isinstance(source, RawSource) and source.side == side


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
  choose = lambda w, h: crops.centre_crop_box(w, h, side, side)
  image = decode.decode_region(data, key, choose, (side, side), use_draft=True,
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
    dx, dy = crops.paper_offsets(u, self.side, size)
    crop = pixels(record, self.side)[dy:dy + size, dx:dx + size]
    return {"image": crop, "label": np.int32(record["label"])}

  def batch_loader(self, source):
    """A batch at once (`pipeline.BatchLoader`) from a RawSource: all rows' offsets in one
    go, then each record read and its crop copied into its row."""
    if not _reads_raw(source, self.side):
      return None
    size = self.image_size

    def load(indices: np.ndarray, uniforms: np.ndarray, empty) -> None:
      images = empty("image", (size, size, CHANNELS), np.uint8)
      labels = empty("label", (), np.int32)
      dxs, dys = crops.paper_offsets_of_rows(uniforms, self.side, size)
      read = source.image_and_label
      for row, (index, dx, dy) in enumerate(zip(indices.tolist(), dxs.tolist(), dys.tolist())):
        square, labels[row] = read(index)
        images[row] = square[dy:dy + size, dx:dx + size]
    return load


@dataclasses.dataclass(frozen=True)
class RawCentreCropTransform:
  """Evaluation: the central `image_size` crop, (S, S, 3) uint8."""
  image_size: int
  side: int = SIDE

  def __call__(self, record, u=None):
    del u
    offset = crops.centre_offset(self.side, self.image_size)
    crop = pixels(record, self.side)[offset:offset + self.image_size,
                                     offset:offset + self.image_size]
    return {"image": np.ascontiguousarray(crop), "label": np.int32(record["label"])}

  def batch_loader(self, source):
    """A batch at once from a RawSource: each record read, its central crop copied into its
    row."""
    if not _reads_raw(source, self.side):
      return None
    size = self.image_size
    offset = crops.centre_offset(self.side, size)

    def load(indices: np.ndarray, uniforms, empty) -> None:
      del uniforms
      images = empty("image", (size, size, CHANNELS), np.uint8)
      labels = empty("label", (), np.int32)
      read = source.image_and_label
      for row, index in enumerate(indices.tolist()):
        square, labels[row] = read(index)
        images[row] = square[offset:offset + size, offset:offset + size]
    return load


@dataclasses.dataclass(frozen=True)
class RawTenCropTransform:
  """Evaluation on the paper's 10 views of the stored square: (10, S, S, 3) uint8."""
  image_size: int
  side: int = SIDE

  def __call__(self, record, u=None):
    del u
    return {"image": crops.ten_crops(pixels(record, self.side), self.image_size),
            "label": np.int32(record["label"])}

  def batch_loader(self, source):
    """A batch at once from a RawSource: each record read, its 10 views written into its
    row."""
    if not _reads_raw(source, self.side):
      return None
    size = self.image_size

    def load(indices: np.ndarray, uniforms, empty) -> None:
      del uniforms
      images = empty("image", (10, size, size, CHANNELS), np.uint8)
      labels = empty("label", (), np.int32)
      read = source.image_and_label
      for row, index in enumerate(indices.tolist()):
        square, labels[row] = read(index)
        crops.ten_crops(square, size, out=images[row])
    return load


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

