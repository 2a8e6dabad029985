"""Decoding images: encoded bytes (JPEG, or whatever PIL reads) -> RGB pixels, only the region a
crop needs, at the size it needs, with numpy and PIL (and simplejpeg when installed).

- The region is chosen from the header, before any pixel is decoded (`choose_box(width,
  height)`, in original-image pixels: data/crops.py), and one `Image.resize(..., box=crop)`
  resamples only that region to the output size (`decode_region`). Resizing the whole image
  to shorter side 256 and then cropping gives the same pixels (PIL's resampling reads the
  neighbours outside the box too), at more cost.
- For JPEGs much larger than needed, `Image.draft` makes libjpeg decode at 1/2, 1/4 or 1/8
  scale (DCT scaling), never below the resolution the crop needs.
- JPEGs decode through simplejpeg (a libjpeg-turbo binding) when `data.jpeg_decoder` is
  `simplejpeg` (or `auto` and it is installed): same integer DCT and fancy upsampling as
  Pillow's libjpeg-turbo, so the same pixels (tested: equal, or within 1 grey level where the
  two libjpeg-turbo builds differ), with less Python and PIL overhead around them. Whatever it
  does not take (not a JPEG, CMYK/YCCK, a recoverable libjpeg warning such as a truncated
  file, 12-bit) goes to Pillow, which decodes it or refuses it exactly as before.

Decoding failures (empty, truncated, not an image) raise `pipeline.SkippableRecordError`; the
loader substitutes the next record and counts the skip. A full decode is forced with `load()`,
and `ImageFile.LOAD_TRUNCATED_IMAGES` is never set, so a truncated JPEG cannot slip through
as a partly grey image.

One large-image rule for every decoder and tool (`check_image_size`): an image of at most
MAX_IMAGE_PIXELS pixels is decoded (a JPEG at reduced DCT scale when draft mode allows), a
larger one raises `ImageTooLargeError` (a SkippableRecordError) before any pixel is decoded.
It replaces Pillow's own decompression-bomb check, which refused at a different size than
simplejpeg (which has none) and counted the pixels of the full-size image even where draft
mode decodes 1/64 of them.

File names in messages go through `printable_name`: a name that is not valid UTF-8 (bytes
from the OS, or a str holding surrogate escapes) is shown with backslash escapes
(`caf\\xe9.JPEG`) instead of failing to encode.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any, Callable, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet_jax.data import pipeline
from alexnet_jax.data.crops import Box
from alexnet_jax.errors import UserError

# File suffixes read as images (lower case; compare with `name.lower()`): JPEG and PNG.
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")

try:  # optional: the fast JPEG decoder (data.jpeg_decoder)
  import simplejpeg
except ImportError:  # pragma: no cover - depends on the install
  simplejpeg = None

# data.jpeg_decoder values. auto: simplejpeg when installed (measured faster, docs/data.md).
DECODERS = ("auto", "pillow", "simplejpeg")
# JPEG colour spaces simplejpeg turns into RGB exactly as Pillow does; CMYK/YCCK go to Pillow
# (its CMYK->RGB conversion differs from libjpeg-turbo's).
_FAST_COLORSPACES = ("YCbCr", "Gray", "RGB")
_JPEG_SOI = b"\xff\xd8\xff"

# Antialiased bilinear, as torchvision's Resize and RandomResizedCrop default to.
RESAMPLE = Image.Resampling.BILINEAR

# Errors PIL raises on bytes it cannot turn into an image (UnidentifiedImageError and
# "image file is truncated" are OSErrors).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)

ChooseBox = Callable[[int, int], Box]  # (width, height) -> crop box


# The large-image rule. 2**28 = 268,435,456 pixels (e.g. 20000 x 13400): over 1000 times a
# typical ImageNet photo (500x375) and ~4 times a 64-megapixel camera frame, so no real photo
# is refused, while a file whose header claims more (a decompression bomb: a few KB saying
# 65535 x 65535) is. What one decode holds at the limit: 12-16 MiB for a baseline JPEG at 1/8
# scale (draft mode: what a crop at ImageNet's scale of such an image needs); a progressive
# JPEG also keeps all its DCT coefficients, 2 bytes a sample (~0.8 GiB for 4:2:0 colour;
# measured +350 MB for a 16000x11200 grey one, +20 MB baseline); a full decode (a PNG, or
# data.jpeg_draft=False) up to 1 GiB (Pillow keeps 4 bytes a pixel).
MAX_IMAGE_PIXELS = 1 << 28
# Pillow's own check (warns above ~89.5 Mpx, refuses above ~179 Mpx, whatever draft mode
# decodes) is replaced by check_image_size, which every decode here calls, so that Pillow and
# simplejpeg accept exactly the same files. Set once for the process.
Image.MAX_IMAGE_PIXELS = None


class ImageTooLargeError(pipeline.SkippableRecordError):
  """An image with more than MAX_IMAGE_PIXELS pixels: skipped and counted like an unreadable
  file (a user error in predict)."""


def check_image_size(width: int, height: int, key: str) -> None:
  """The one large-image rule, from the header alone (before any pixel is decoded).

  width, height: the image's full size in pixels; key: its name, for the message.
  Raises ImageTooLargeError when width * height > MAX_IMAGE_PIXELS.
  """
  pixels = width * height
  if pixels > MAX_IMAGE_PIXELS:
    raise ImageTooLargeError(
        f"image {key} is {width}x{height} pixels ({pixels / 1e6:.0f} megapixels), more than "
        f"the {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels alexnet_jax decodes (its large-image "
        "rule, docs/data.md); shrink the file if it is meant to be used.")


def printable_name(name: str | bytes | os.PathLike) -> str:
  """A file name or path as text that always prints: a name the OS gave as bytes that are not
  valid UTF-8 (held as bytes, or as a str with surrogate escapes, os.fsdecode's form) shows
  its odd bytes as backslash escapes: b'caf\\xe9.JPEG' -> 'caf\\xe9.JPEG'."""
  name = os.fspath(name)
  if isinstance(name, str):
    name = name.encode("utf-8", "surrogateescape")
  return name.decode("utf-8", "backslashreplace")


def record_key(record: Mapping[str, Any]) -> str:
  """The file name of a record, for messages (printable; '?' when the record has none)."""
  return printable_name(record.get("file_name", "?"))


def _decode_error(key: str, error: Exception, data: bytes) -> pipeline.SkippableRecordError:
  """The skip for `error` raised while decoding `data`, the file `key`, naming the file
  (Pillow's 'cannot identify image file <_io.BytesIO object at 0x...>' names only its
  buffer)."""
  if not data:
    reason = "the file is empty"
  elif isinstance(error, UnidentifiedImageError):
    reason = "not a JPEG, PNG or other image format Pillow reads"
  else:
    reason = str(error) or type(error).__name__
  return pipeline.SkippableRecordError(f"cannot decode image {key}: {reason}")



def open_header(data: bytes, key: str) -> Image.Image:
  """The image with only its header read (size, mode, format); pixels are not decoded yet.

  Raises `pipeline.SkippableRecordError` naming `key` for bytes that are not an image, and
  ImageTooLargeError for one over the large-image rule (`check_image_size`).
  """
  try:
    image = Image.open(io.BytesIO(data))
  except _DECODE_ERRORS as e:
    raise _decode_error(key, e, data) from e
  check_image_size(*image.size, key)
  return image


# Greyscale modes wider than 8 bits (16-bit PNG, 32-bit integer TIFF). PIL's convert("RGB")
# clips them at 255 (a 16-bit photo comes out nearly white), so they are scaled first.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def wide_grey_to_l(image: Image.Image) -> Image.Image:
  """A 16-bit (or 32-bit integer) greyscale image as 8-bit 'L', scaled by its bit depth
  (value * 255 / 65535 for 16 bits), not clipped."""
  values = np.asarray(image, dtype=np.float64)
  full_scale = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) <= 65535 else (
      2.0**32 - 1)
  scaled = np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)
  return Image.fromarray(scaled, mode="L")


def decode_rgb(data: bytes, key: str,
               before_load: Callable[[Image.Image], None] | None = None) -> Image.Image:
  """Fully decodes `data` into an RGB image; `before_load(image)` may set up draft mode.

  Raises `pipeline.SkippableRecordError` naming `key` when the bytes are not a whole image,
  ImageTooLargeError (before decoding) for one over the large-image rule.
  """
  image = open_header(data, key)  # the large-image rule first, from the header
  try:
    if before_load is not None:
      before_load(image)
    image.load()  # decode everything now: a truncated file fails here, not later
    if image.mode in WIDE_GREY_MODES:
      image = wide_grey_to_l(image)
    if image.mode != "RGB":
      image = image.convert("RGB")  # L, CMYK, P, RGBA ...
  except _DECODE_ERRORS as e:
    raise _decode_error(key, e, data) from e
  return image


def resolve_decoder(name: str) -> str:
  """`data.jpeg_decoder` -> 'pillow' or 'simplejpeg'. auto: simplejpeg when installed.

  Raises UserError for an unknown name, or simplejpeg asked for but not installed.
  """
  if name not in DECODERS:
    raise UserError(f"data.jpeg_decoder={name!r} is not one of "
                    f"{', '.join(map(repr, DECODERS))}.")
  if name == "auto":
    return "simplejpeg" if simplejpeg is not None else "pillow"
  if name == "simplejpeg" and simplejpeg is None:
    raise UserError("data.jpeg_decoder='simplejpeg' but simplejpeg is not installed; "
                    "pip install simplejpeg, or set --config.data.jpeg_decoder=pillow.")
  return name


def _pillow_draft_scale(width: int, height: int, box: Box, out_size: tuple[int, int]) -> int:
  """The DCT scale (1, 2, 4 or 8) `_draft_for_box` makes Pillow's `draft` choose."""
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  max_reduction = min(box_w / out_size[0], box_h / out_size[1])
  if max_reduction < 2:
    return 1
  request = (math.ceil(width / max_reduction), math.ceil(height / max_reduction))
  scale = min(width // request[0], height // request[1])
  return next(a for a in (8, 4, 2, 1) if scale >= a)


def _fast_decode_region(data: bytes, key: str, choose_box: ChooseBox,
                        out_size: tuple[int, int], use_draft: bool) -> np.ndarray | None:
  """The region as an (H, W, 3) uint8 array through simplejpeg, or None for anything it does
  not take exactly like Pillow (the caller then uses Pillow). Raises ImageTooLargeError, as
  the Pillow path does, for an image over the large-image rule."""
  if not data.startswith(_JPEG_SOI):
    return None
  try:
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
  except ValueError:
    return None
  check_image_size(width, height, key)
  if colorspace not in _FAST_COLORSPACES:
    return None
  box = choose_box(width, height)
  scale = _pillow_draft_scale(width, height, box, out_size) if use_draft else 1
  kwargs = {}
  expected = (height, width)
  if scale > 1:
    expected = (-(-height // scale), -(-width // scale))
    kwargs = dict(min_factor=scale, min_height=expected[0], min_width=expected[1])
  try:
    array = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, **kwargs)
  except ValueError:
    return None
  if array.shape[:2] != expected:
    return None
  if scale > 1:
    fx, fy = expected[1] / width, expected[0] / height
    box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
  return resize_box_array(array, box, out_size)


def resize_box_array(array: np.ndarray, box: Box, out_size: tuple[int, int]) -> np.ndarray:
  """`resize_box` for an (H, W, 3) uint8 array: a slice (no copy) when no scaling is needed."""
  integral = all(float(v).is_integer() for v in box)
  if integral and (box[2] - box[0], box[3] - box[1]) == tuple(out_size):
    left, top, right, lower = (int(v) for v in box)
    return array[top:lower, left:right]
  return np.asarray(Image.fromarray(array).resize(out_size, RESAMPLE, box=box))


def decode_region_array(data: bytes, key: str, choose_box: ChooseBox,
                        out_size: tuple[int, int], use_draft: bool = True,
                        decoder: str = "pillow") -> np.ndarray:
  """`decode_region` as an (out_h, out_w, 3) uint8 array (possibly a read-only view).

  decoder: 'pillow' or 'simplejpeg' (resolved, see `resolve_decoder`); simplejpeg falls back
  to Pillow for whatever it refuses. Raises `pipeline.SkippableRecordError` naming `key`.
  """
  if decoder == "simplejpeg":
    array = _fast_decode_region(data, key, choose_box, out_size, use_draft)
    if array is not None:
      return array
  return np.asarray(decode_region(data, key, choose_box, out_size, use_draft))


def decode_region(data: bytes, key: str, choose_box: ChooseBox, out_size: tuple[int, int],
                  use_draft: bool = True, decoder: str = "pillow") -> Image.Image:
  """Decodes `data` and returns the RGB region `choose_box(width, height)` at `out_size`.

  decoder: 'pillow', or 'simplejpeg' with Pillow as the fallback. Raises
  `pipeline.SkippableRecordError` naming `key` when the bytes are not a whole image.
  """
  if decoder == "simplejpeg":
    array = _fast_decode_region(data, key, choose_box, out_size, use_draft)
    if array is not None:
      return Image.fromarray(np.ascontiguousarray(array))
  box = None

  def plan(image: Image.Image) -> None:
    nonlocal box  # chosen from the header, before any pixel is decoded
    box = choose_box(*image.size)
    if use_draft and image.format == "JPEG":
      box = _draft_for_box(image, box, out_size)

  image = decode_rgb(data, key, plan)
  return resize_box(image, box, out_size)


def _draft_for_box(image: Image.Image, box: Box, out_size: tuple[int, int]) -> Box:
  """Asks libjpeg for the smallest DCT scale that keeps `box` at least `out_size` large.

  Returns the box in the coordinates of the reduced image.
  """
  box_w, box_h = box[2] - box[0], box[3] - box[1]
  max_reduction = min(box_w / out_size[0], box_h / out_size[1])
  if max_reduction < 2:
    return box
  width, height = image.size
  # PIL picks the largest power of two <= min(width // w, height // h).
  request = (math.ceil(width / max_reduction), math.ceil(height / max_reduction))
  result = image.draft("RGB", request)
  if result is None:
    return box
  _, (_, _, scaled_w, scaled_h) = result
  fx, fy = scaled_w / width, scaled_h / height
  return (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)


def resize_box(image: Image.Image, box: Box, out_size: tuple[int, int]) -> Image.Image:
  """The region `box` of `image` resampled to `out_size`; a plain crop when no scaling."""
  integral = all(float(v).is_integer() for v in box)
  if integral and (box[2] - box[0], box[3] - box[1]) == tuple(out_size):
    return image.crop(tuple(int(v) for v in box))
  return image.resize(out_size, RESAMPLE, box=box)

