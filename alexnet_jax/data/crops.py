"""Crop geometry: where a crop lies in the *original* image (boxes in its pixels, chosen from
its header before any pixel is decoded; torchvision's rounding), the random offsets the train
crops draw from their uniforms, and the paper's ten test-time views of a square."""

from __future__ import annotations

import math

import numpy as np

Box = tuple[float, float, float, float]  # left, upper, right, lower; original-image pixels


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

