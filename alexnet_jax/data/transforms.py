"""ImageNet image transforms: encoded image bytes -> uint8 crops, with numpy and PIL only.

Every transform is a picklable callable `transform(record, u) -> {'image', 'label'}` that Grain
workers run. A record is a mapping with `image` (the encoded file: JPEG, or whatever PIL reads),
`label` (class index) and, for error messages, `file_name`. A train transform's class says how
many uniforms in [0, 1) it draws (`uniforms_per_example`); the loader passes them as `u`
(data/pipeline.py), eval transforms get None. Only the crop is chosen here: the mirror and
the PCA colour noise are done in the train step (data/augment.py).

Speed comes from doing the work once, at the size it is needed:
- The crop is chosen in the coordinates of the *original* image (from its header, before any
  pixel is decoded), and one `Image.resize(..., box=crop)` resamples only that region to the
  output size. Resizing the whole image to shorter side 256 and then cropping gives the same
  pixels (PIL's resampling reads the neighbours outside the box too), at more cost.
- For JPEGs much larger than needed, `Image.draft` makes libjpeg decode at 1/2, 1/4 or 1/8
  scale (DCT scaling), never below the resolution the crop needs.
- Stored images that are already at the target scale (see `python -m alexnet_jax.tools.prepare
  --resize_shorter=256`) are cropped without resampling.

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

import dataclasses
import io
import math
import os
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet_jax.data import pipeline
from alexnet_jax.errors import UserError

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

Box = tuple[float, float, float, float]  # left, upper, right, lower; original-image pixels
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


# --------------------------------------------------------------------------------------------
# Decoding


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


# --------------------------------------------------------------------------------------------
# Crop geometry (all in original-image pixels)


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
  """Size after scaling the shorter side to `shorter` (torchvision's Resize(int) rounding)."""
  if width <= height:
    return shorter, int(shorter * height / width)
  return int(shorter * width / height), shorter


def crop_in_resized(width: int, height: int, resize_size: int, left: int, top: int,
                    crop_size: int) -> Box:
  """Maps a crop of the image resized to shorter side `resize_size` back to the original."""
  resized_w, resized_h = resized_size(width, height, resize_size)
  sx, sy = width / resized_w, height / resized_h
  return (left * sx, top * sy, (left + crop_size) * sx, (top + crop_size) * sy)


def centre_offset(length: int, crop: int) -> int:
  """torchvision's CenterCrop offset."""
  return int(round((length - crop) / 2.0))


def centre_crop_box(width: int, height: int, resize_size: int, crop_size: int) -> Box:
  """The central `crop_size` square after scaling the shorter side to `resize_size`."""
  resized_w, resized_h = resized_size(width, height, resize_size)
  return crop_in_resized(width, height, resize_size, centre_offset(resized_w, crop_size),
                         centre_offset(resized_h, crop_size), crop_size)


def uniform_int(u: float, count: int) -> int:
  """An integer uniform on 0 .. count-1 from a uniform float u in [0, 1)."""
  return min(int(u * count), count - 1)


def paper_offsets(u: np.ndarray, square_size: int, crop_size: int) -> tuple[int, int]:
  """(dx, dy): the offsets of a uniformly random `crop_size` crop inside a `square_size`
  square, from 2 uniforms in [0, 1) (horizontal, vertical). Shared by the JPEG and the raw
  paper transforms, so both storages crop alike for the same uniforms."""
  positions = square_size - crop_size + 1
  return uniform_int(u[0], positions), uniform_int(u[1], positions)


def paper_offsets_of_rows(u: np.ndarray, square_size: int,
                          crop_size: int) -> tuple[np.ndarray, np.ndarray]:
  """`paper_offsets` of every row of u (rows, >= 2) at once: (dx, dy), int64 arrays, equal
  to it row by row (the same float64 product, truncated)."""
  positions = square_size - crop_size + 1
  offsets = np.minimum((u[:, :2] * positions).astype(np.int64), positions - 1)
  return offsets[:, 0], offsets[:, 1]


def paper_crop_box(width: int, height: int, resize_size: int, crop_size: int,
                   u: np.ndarray) -> Box:
  """A uniformly random `crop_size` crop of the central `resize_size` square (the paper);
  u: 2 uniforms in [0, 1) (see `paper_offsets`)."""
  resized_w, resized_h = resized_size(width, height, resize_size)
  square_left = centre_offset(resized_w, resize_size)
  square_top = centre_offset(resized_h, resize_size)
  dx, dy = paper_offsets(u, resize_size, crop_size)
  return crop_in_resized(width, height, resize_size, square_left + dx, square_top + dy,
                         crop_size)


INCEPTION_TRIES = 10


def inception_crop_box(width: int, height: int, u: np.ndarray,
                       scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Box:
  """torchvision's RandomResizedCrop.get_params, from 4 * INCEPTION_TRIES uniforms `u` in
  [0, 1) (area, log aspect ratio, top, left of each try).

  Ten tries at a crop of random area (scale x image area) and log-uniform aspect ratio that
  fits inside the image; then the largest central crop with a ratio inside `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for attempt in range(INCEPTION_TRIES):
    u_area, u_ratio, u_top, u_left = u[4 * attempt:4 * attempt + 4]
    target_area = area * (scale[0] + u_area * (scale[1] - scale[0]))
    aspect = math.exp(log_ratio[0] + u_ratio * (log_ratio[1] - log_ratio[0]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = uniform_int(u_top, height - h + 1)
      left = uniform_int(u_left, width - w + 1)
      return (left, top, left + w, top + h)
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    w, h = int(round(height * max(ratio))), height
  else:
    w, h = width, height
  top, left = (height - h) // 2, (width - w) // 2
  return (left, top, left + w, top + h)


# --------------------------------------------------------------------------------------------
# The transforms


def _train_example(array: np.ndarray, record) -> dict[str, Any]:
  return {"image": array, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class PaperTrainTransform:
  """Shorter side to `resize_size`, central square, random `image_size` crop.

  The mirror and the PCA colour noise follow in the train step (data/augment.py). Returns
  {'image': (image_size, image_size, 3) uint8 (possibly a read-only view), 'label': int32}.
  """
  image_size: int
  resize_size: int = 256
  use_draft: bool = True
  decoder: str = "pillow"  # resolved: pillow | simplejpeg
  uniforms_per_example: ClassVar[int] = 2

  def __call__(self, record, u: np.ndarray):
    choose = lambda w, h: paper_crop_box(w, h, self.resize_size, self.image_size, u)
    size = (self.image_size, self.image_size)
    return _train_example(decode_region_array(record["image"], record_key(record), choose,
                                              size, self.use_draft, self.decoder), record)


@dataclasses.dataclass(frozen=True)
class InceptionTrainTransform:
  """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3); mirror and PCA noise
  follow in the train step."""
  image_size: int
  use_draft: bool = True
  decoder: str = "pillow"
  uniforms_per_example: ClassVar[int] = 4 * INCEPTION_TRIES

  def __call__(self, record, u: np.ndarray):
    choose = lambda w, h: inception_crop_box(w, h, u)
    size = (self.image_size, self.image_size)
    return _train_example(decode_region_array(record["image"], record_key(record), choose,
                                              size, self.use_draft, self.decoder), record)


@dataclasses.dataclass(frozen=True)
class CentreCropTransform:
  """Evaluation: shorter side to `resize_size`, central `image_size` crop."""
  image_size: int
  resize_size: int = 256
  use_draft: bool = True
  decoder: str = "pillow"

  def __call__(self, record, u=None):
    del u  # deterministic
    choose = lambda w, h: centre_crop_box(w, h, self.resize_size, self.image_size)
    size = (self.image_size, self.image_size)
    array = decode_region_array(record["image"], record_key(record), choose, size,
                                self.use_draft, self.decoder)
    return {"image": np.ascontiguousarray(array), "label": np.int32(record["label"])}


def ten_crops(square: np.ndarray, crop_size: int, out: np.ndarray | None = None) -> np.ndarray:
  """(10, S, S, C): top-left, top-right, bottom-left, bottom-right, centre, then the mirror
  of each of the five, in that order (the paper's test-time views); written into `out` when
  given (a batch row: no array of its own)."""
  side = square.shape[0]
  far, mid = side - crop_size, centre_offset(side, crop_size)
  corners = [(0, 0), (0, far), (far, 0), (far, far), (mid, mid)]
  five = [square[top:top + crop_size, left:left + crop_size] for top, left in corners]
  if out is None:
    return np.stack(five + [crop[:, ::-1] for crop in five])
  for k, crop in enumerate(five):
    out[k] = crop
    out[k + 5] = crop[:, ::-1]
  return out


@dataclasses.dataclass(frozen=True)
class TenCropTransform:
  """Evaluation on 10 views: the central `resize_size` square, its 4 corner crops and centre
  crop of `image_size`, and their mirrors; image shape (10, S, S, 3)."""
  image_size: int
  resize_size: int = 256
  use_draft: bool = True
  decoder: str = "pillow"

  def __call__(self, record, u=None):
    del u  # deterministic
    choose = lambda w, h: centre_crop_box(w, h, self.resize_size, self.resize_size)
    size = (self.resize_size, self.resize_size)
    square = decode_region_array(record["image"], record_key(record), choose, size,
                                 self.use_draft, self.decoder)
    return {"image": ten_crops(square, self.image_size),
            "label": np.int32(record["label"])}


TRAIN_TRANSFORMS = ("paper", "inception")


def make_train_transform(name: str, *, image_size: int, resize_size: int, use_draft: bool,
                         decoder: str = "pillow") -> pipeline.Transform:
  """The train transform `name` (paper | inception); decoder: a `data.jpeg_decoder` value.

  Raises UserError for an unknown name or decoder."""
  decoder = resolve_decoder(decoder)
  if name == "paper":
    return PaperTrainTransform(image_size, resize_size, use_draft, decoder)
  if name == "inception":
    return InceptionTrainTransform(image_size, use_draft, decoder)
  raise UserError(f"data.train_transform={name!r} is not one of "
                   f"{', '.join(map(repr, TRAIN_TRANSFORMS))}.")


def make_eval_transform(*, image_size: int, resize_size: int, ten_crop: bool,
                        use_draft: bool, decoder: str = "pillow") -> pipeline.Transform:
  """Centre crop, or the 10 views when `ten_crop`; decoder: a `data.jpeg_decoder` value."""
  decoder = resolve_decoder(decoder)
  if ten_crop:
    return TenCropTransform(image_size, resize_size, use_draft, decoder)
  return CentreCropTransform(image_size, resize_size, use_draft, decoder)
