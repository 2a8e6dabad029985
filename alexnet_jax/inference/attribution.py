"""Attribution maps: which pixels or features a class score depends on. Pure functions.

Each method takes plain functions of a batch of images, so that it can be checked by hand on
tiny models (tests/test_interpret.py); `probe.AlexNetProbe` binds them to an AlexNet.
- `saliency(score_fn, image, label)`: |d class score / d pixel|, max over colour channels
  (Simonyan, Vedaldi & Zisserman 2013);
- `grad_cam(features_fn, head_fn, image, label)`: ReLU(sum_k alpha_k A_k), alpha_k the spatial
  mean of d class score / d A_k (Selvaraju et al. 2017);
- `occlusion_map(prob_fn, image, label, patch, stride, fill)`: the class probability while a
  square of `fill` covers each position (Zeiler & Fergus 2014); `occlusion_to_pixels` and
  `upsample` bring coarse maps to the image's pixels.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import UserError

Array = Any
BatchFn = Callable[[Array], Array]  # (N, H, W, C) images -> (N, ...) outputs


def saliency(score_fn: BatchFn, image: Array, label: int | Array) -> Array:
  """(H, W): max over channels of |d score_fn(image)[label] / d image|. Jittable."""
  def score(x):
    return score_fn(x[None])[0, label]
  grad = jax.grad(score)(jnp.asarray(image, jnp.float32))
  return jnp.max(jnp.abs(grad), axis=-1)


def grad_cam(features_fn: BatchFn, head_fn: BatchFn, image: Array, label: int | Array) -> Array:
  """(h, w) Grad-CAM map at the resolution of `features_fn`'s (N, h, w, K) output. Jittable.

  The weight of feature map k is the spatial mean of the gradient of the class score with
  respect to it; the map is the ReLU of the weighted sum (not normalized).
  """
  features = features_fn(jnp.asarray(image, jnp.float32)[None])[0]

  def score(a):
    return head_fn(a[None])[0, label]
  grads = jax.grad(score)(features)
  weights = jnp.mean(grads, axis=(0, 1))
  return jax.nn.relu(jnp.einsum("hwk,k->hw", features, weights))


def occlusion_starts(size: int, patch: int, stride: int) -> list[int]:
  """Top (or left) edges of the occluding square; the last one always reaches the border."""
  if not 0 < patch <= size:
    raise UserError(f"occlusion patch={patch} must be between 1 and the image size {size}.")
  if stride <= 0:
    raise UserError(f"occlusion stride={stride} must be positive.")
  starts = list(range(0, size - patch + 1, stride))
  if starts[-1] != size - patch:
    starts.append(size - patch)
  return starts


def occlusion_map(prob_fn: BatchFn, image: Array, label: int, *, patch: int, stride: int,
                  fill: float | Array = 128.0, batch_size: int = 32) -> np.ndarray:
  """(len(rows), len(cols)): prob_fn(occluded image)[label] with the square at each position.

  `fill` is a pixel value (scalar or one per channel) in the units of `image`. Occluded copies
  go through `prob_fn` `batch_size` at a time, the last batch padded to the same shape (one
  compilation).
  """
  image = np.asarray(image, np.float32)
  height, width = image.shape[:2]
  rows, cols = occlusion_starts(height, patch, stride), occlusion_starts(width, patch, stride)
  positions = [(top, left) for top in rows for left in cols]
  fill = np.broadcast_to(np.asarray(fill, np.float32), image.shape[-1:])
  probabilities = []
  for first in range(0, len(positions), batch_size):
    chunk = positions[first:first + batch_size]
    batch = np.repeat(image[None], batch_size, axis=0)
    for i, (top, left) in enumerate(chunk):
      batch[i, top:top + patch, left:left + patch] = fill
    probabilities.append(np.asarray(prob_fn(batch))[:len(chunk), label])
  return np.concatenate(probabilities).reshape(len(rows), len(cols))


def occlusion_to_pixels(values: np.ndarray, image_size: tuple[int, int], *, patch: int,
                        stride: int) -> np.ndarray:
  """(H, W): at each pixel, the mean of the occlusion values of the squares covering it."""
  height, width = image_size
  total = np.zeros((height, width), np.float64)
  count = np.zeros((height, width), np.float64)
  rows, cols = occlusion_starts(height, patch, stride), occlusion_starts(width, patch, stride)
  for i, top in enumerate(rows):
    for j, left in enumerate(cols):
      total[top:top + patch, left:left + patch] += values[i, j]
      count[top:top + patch, left:left + patch] += 1
  return (total / np.maximum(count, 1)).astype(np.float32)


def upsample(values: Array, size: tuple[int, int]) -> np.ndarray:
  """A coarse (h, w) map resized bilinearly to (H, W), to lay over the image."""
  values = jnp.asarray(values, jnp.float32)
  return np.asarray(jax.image.resize(values, tuple(size), "bilinear"))
