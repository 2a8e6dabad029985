"""How one image is stored in a build: the options (JPEG, resized or not, or raw pixels) and
the bytes they give for one file (`stored_image`)."""

from __future__ import annotations

import dataclasses
import io

from alexnet_jax.data import crops, decode, raw
from alexnet_jax.errors import UserError

# The --format values: encoded images, or the paper's raw pixels (data/raw.py).
FORMATS = ("jpeg", raw.FORMAT)


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


def stored_image(data: bytes, key: str, options: StoreOptions) -> bytes:
  """The bytes to store: the original, a JPEG with the shorter side `resize_shorter`, or (raw)
  the central square's raw_side * raw_side * 3 uint8 RGB bytes.

  Raises `pipeline.SkippableRecordError` for a file that does not decode (when it has to be).

  Images already no larger than that keep their bytes when they are plain JPEGs; CMYK, PNG and
  other oddities are re-encoded as RGB JPEGs.
  """
  if options.format == raw.FORMAT:
    return raw.centre_square(data, key, options.raw_side,
                             decode.resolve_decoder(options.decoder))
  if options.resize_shorter <= 0:
    return data
  target = options.resize_shorter

  def whole_image(width: int, height: int) -> crops.Box:
    return (0, 0, width, height)

  header = decode.open_header(data, key)
  width, height = header.size
  if min(width, height) <= target:
    if header.format == "JPEG" and header.mode in ("RGB", "L"):
      decode.decode_rgb(data, key)  # still refuse broken files
      return data
    image = decode.decode_rgb(data, key)
  else:
    out_size = crops.resized_size(width, height, target)
    image = decode.decode_region(data, key, whole_image, out_size, use_draft=True,
                                 decoder=decode.resolve_decoder(options.decoder))
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=options.jpeg_quality)
  return buffer.getvalue()


def check_options(options: StoreOptions) -> None:
  """UserError for a format, side or decoder that cannot be written."""
  if options.format not in FORMATS:
    raise UserError(f"--format={options.format!r} is not one of {', '.join(FORMATS)}.")
  if options.format == raw.FORMAT and options.raw_side <= 0:
    raise UserError(f"raw storage needs a positive side, got {options.raw_side}.")
  decode.resolve_decoder(options.decoder)

