"""conv1's filters as one picture: the paper's figure 3 (numpy only, no plotting).

`conv1_filter_grid(kernel, towers)` scales each filter to [0, 1] and tiles them, the two
towers side by side (`towers_of(variant)`); the trainer sends it to TensorBoard at each
evaluation and `python -m alexnet_jax.tools.visualize filters` draws it. `tile` also lays out
activation maps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from alexnet_jax import models

Array = Any


def towers_of(variant: str) -> int:
  """2 for the two-tower variants (paper, alexnet_bn), else 1."""
  return models.PAPER_TOWERS if variant in models.TWO_TOWER_VARIANTS else 1


def tile(filters: np.ndarray, columns: int, gap: int) -> np.ndarray:
  """(n, h, w, c) in [0, 1] -> one (rows*(h+gap)-gap, columns*(w+gap)-gap, c) picture, white
  between the filters."""
  n, h, w, c = filters.shape
  rows = math.ceil(n / columns)
  grid = np.ones((rows * (h + gap) - gap, columns * (w + gap) - gap, c), np.float32)
  for index in range(n):
    r, col = divmod(index, columns)
    grid[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = filters[index]
  return grid


def grid_columns(count: int) -> int:
  """Columns for `count` tiles: a divisor of count between sqrt(count) and twice that (full
  rows: 64 -> 8, 96 -> 12, 48 -> 8), else ceil(sqrt(count))."""
  root = math.isqrt(count)
  for columns in range(max(1, root), 2 * root + 1):
    if count % columns == 0 and columns * columns >= count:
      return columns
  return max(1, math.ceil(math.sqrt(count)))


def fitting_columns(count: int, aspect: float, tile_shape: tuple[int, int] = (1, 1),
                    gap: int = 0) -> int:
  """Columns for `count` tiles of `tile_shape` (h, w) pixels, `gap` apart, that fill a box of
  width/height `aspect` best when the grid is scaled to fit it (largest tiles). Full rows win
  near-ties (within 5%): 96 square tiles in a 2.6:1 box -> 16 (6 rows), 48 in 1.1:1 -> 8."""
  if count <= 0 or aspect <= 0:
    raise ValueError(f"fitting_columns needs count > 0 and aspect > 0, not {count}, {aspect}.")
  h, w = tile_shape
  best, best_score = 1, -1.0
  for columns in range(1, count + 1):
    rows = math.ceil(count / columns)
    width, height = columns * (w + gap) - gap, rows * (h + gap) - gap
    scale = min(aspect / width, 1.0 / height)  # the grid scaled into the box
    score = scale * scale * (1.0 if count % columns == 0 else 0.95)
    if score > best_score * (1 + 1e-9):
      best, best_score = columns, score
  return best


def conv1_filter_grid(kernel: Array, towers: int = 1, *, gap: int = 1,
                      tower_gap: int = 4, aspect: float | None = None) -> np.ndarray:
  """conv1's (kh, kw, C, F) kernel as one (H, W, C) float32 picture in [0, 1].

  Each filter is scaled to [0, 1] on its own (its sign and relative colours kept), as the
  paper's figure 3 shows them. With `towers=2` the first and second halves of the filters
  (one per GPU in the paper) are two grids side by side. Each grid has `grid_columns`
  columns, or, given the width/height `aspect` of the box the whole picture is drawn in, the
  columns that fill that box best (`fitting_columns`).
  """
  kernel = np.asarray(kernel, np.float32)
  filters = np.transpose(kernel, (3, 0, 1, 2))  # (F, kh, kw, C)
  low = filters.min(axis=(1, 2, 3), keepdims=True)
  high = filters.max(axis=(1, 2, 3), keepdims=True)
  filters = (filters - low) / np.maximum(high - low, 1e-12)
  groups = np.split(filters, towers)
  if aspect is None:
    columns = grid_columns(len(groups[0]))
  else:  # each tower gets its share of the box's width
    columns = fitting_columns(len(groups[0]), aspect / towers, filters.shape[1:3], gap)
  grids = [tile(group, columns, gap) for group in groups]
  if towers == 1:
    return grids[0]
  spacer = np.ones((grids[0].shape[0], tower_gap, grids[0].shape[2]), np.float32)
  parts = [grids[0]]
  for grid in grids[1:]:
    parts += [spacer, grid]
  return np.concatenate(parts, axis=1)
