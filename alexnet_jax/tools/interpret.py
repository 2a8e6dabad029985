"""What a trained network looks at: pure functions, no plotting (visualize.py draws them).

Model-agnostic methods take plain functions of a batch of images, so that they can be checked
by hand on tiny models:
- `saliency(score_fn, image, label)`: |d class score / d pixel|, max over colour channels
  (Simonyan, Vedaldi & Zisserman 2013);
- `grad_cam(features_fn, head_fn, image, label)`: ReLU(sum_k alpha_k A_k), alpha_k the spatial
  mean of d class score / d A_k (Selvaraju et al. 2017);
- `occlusion_map(prob_fn, image, label, patch, stride, fill)`: the class probability while a
  square of `fill` covers each position (Zeiler & Fergus 2014).

`AlexNetProbe` supplies those functions for an AlexNet: images in pixel units (0-255) at the
model's input size, normalized inside exactly as the trainer does (steps.device_preprocess);
class scores are the logits; Grad-CAM uses conv5 after its ReLU (before pool5).

`conv1_filter_grid` lays conv1's kernels out as one picture, the two towers side by side as in
the paper's figure 3; the trainer sends it to TensorBoard at each evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, steps
from alexnet_jax.errors import UserError

Array = Any
BatchFn = Callable[[Array], Array]  # (N, H, W, C) images -> (N, ...) outputs


# --------------------------------------------------------------------------------------------
# Methods on plain functions


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


# --------------------------------------------------------------------------------------------
# conv1 filters


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


# --------------------------------------------------------------------------------------------
# AlexNet adapters


def alexnet_head(variant: str, params: Mapping, conv5: Array) -> Array:
  """Logits from conv5's ReLU output: pool5, (torchvision: adaptive pool), fc6, fc7, fc8.

  (alexnet_bn's batch norms all sit before conv5's ReLU, so its tail is the paper's.)

  The eval-mode tail of models.AlexNet, written out so that Grad-CAM can differentiate with
  respect to conv5; tests check it reproduces the model's logits.
  """
  x = models.max_pool(conv5)
  if variant == "torchvision":
    x = models.adaptive_avg_pool(x, models.TORCHVISION_POOL_OUTPUT)
  x = x.reshape(x.shape[0], -1)
  for layer in ("fc6", "fc7"):
    x = jax.nn.relu(x @ params[layer]["kernel"] + params[layer]["bias"])
  return x @ params["fc8"]["kernel"] + params["fc8"]["bias"]


_SOWN_SUFFIX = "_output"  # models.AlexNet sows each stage as '<stage>_output'


@dataclasses.dataclass(frozen=True, eq=False)
class AlexNetProbe:
  """The functions the methods above need, for one AlexNet and its input normalization.

  Images are float32 (N, image_size, image_size, in_channels) in pixel units (0-255).
  """
  model_config: Mapping[str, Any]
  params: Any
  mean: tuple[float, ...]
  std: tuple[float, ...]
  batch_stats: Any = None  # running BN statistics (alexnet_bn); None for models without BN

  @functools.cached_property
  def model(self):
    """The Flax module of `model_config`, in float32."""
    # Interpretation runs in float32 whatever the training dtype.
    return models.create_model(**{**self.model_config, "dtype": "float32"})

  @property
  def variant(self) -> str:
    """models.VARIANTS name ('paper', 'd2l', 'torchvision', ...)."""
    return self.model.variant

  @property
  def image_size(self) -> int:
    """Side of the model's square input, pixels."""
    return self.model.image_size

  def _normalize(self, images: Array) -> Array:
    return steps.device_preprocess(images, jnp.asarray(self.mean, jnp.float32),
                                   jnp.asarray(self.std, jnp.float32), self.image_size)

  def _forward(self, params, images: Array) -> tuple[Array, dict[str, Array]]:
    """`params`: {'params': ..., 'batch_stats': ...}, the variables `Module.apply` takes."""
    logits, state = self.model.apply(params, self._normalize(images), train=False,
                                     mutable=["intermediates"])
    stages = {name.removesuffix(_SOWN_SUFFIX): values[0]
              for name, values in state["intermediates"].items()}
    return logits, stages

  # Params are an argument of every jitted function, never a closed-over constant: XLA would
  # otherwise constant-fold the 37M-entry fc6 matrix at compile time.
  @functools.cached_property
  def _params(self):
    return jax.device_put(models.variables(self.params, self.batch_stats))

  @functools.cached_property
  def _jit_probabilities(self):
    return jax.jit(lambda params, x: jax.nn.softmax(self._forward(params, x)[0], axis=-1))

  @functools.cached_property
  def _jit_stages(self):
    return jax.jit(lambda params, x: self._forward(params, x)[1])

  @functools.cached_property
  def _jit_saliency(self):
    def fn(params, image, label):
      return saliency(lambda x: self._forward(params, x)[0], image, label)
    return jax.jit(fn)

  @functools.cached_property
  def _jit_grad_cam(self):
    def fn(params, image, label):
      return grad_cam(lambda x: self._forward(params, x)[1]["conv5"],
                      lambda a: alexnet_head(self.variant, params["params"], a), image, label)
    return jax.jit(fn)

  def logits(self, images: Array) -> Array:
    """float32 (N, num_classes) logits of (N, S, S, C) pixel images."""
    return self._jit_stages(self._params, jnp.asarray(images, jnp.float32))["fc8"]

  def probabilities(self, images: Array) -> Array:
    """float32 (N, num_classes) softmax of the logits of (N, S, S, C) pixel images."""
    return self._jit_probabilities(self._params, jnp.asarray(images, jnp.float32))

  def stage(self, images: Array, name: str) -> Array:
    """Output of one stage (models.STAGES: 'conv1' after ReLU, 'pool1', ..., 'fc8') for
    (N, S, S, C) pixel images: (N, h, w, channels) or (N, features). UserError for a name
    that is not a stage of this variant."""
    available = tuple(self.stage_shapes)
    if name not in available:
      raise UserError(f"layer={name!r} is not a stage of the {self.variant} variant; choose "
                      f"one of {', '.join(available)}.")
    return self._jit_stages(self._params, jnp.asarray(images, jnp.float32))[name]

  @functools.cached_property
  def stage_shapes(self) -> dict[str, tuple]:
    """Per-example output shape of every stage of this variant (models.layer_shapes)."""
    return models.layer_shapes(**self.model_config)

  @property
  def spatial_stages(self) -> tuple[str, ...]:
    """The stages with (h, w, channels) maps, in order: those `activations` can draw
    (conv1 ... pool5, and avgpool for torchvision; not flatten or fc6-fc8)."""
    return tuple(name for name, shape in self.stage_shapes.items() if len(shape) == 3)

  def maps(self, images: Array, name: str) -> Array:
    """(N, h, w, channels) output of the spatial stage `name` (`spatial_stages`); UserError,
    listing only the spatial stages, for any other name."""
    if name not in self.spatial_stages:
      why = ("has no spatial maps" if name in self.stage_shapes else
             f"is not a stage of the {self.variant} variant")
      raise UserError(f"layer={name!r} {why}; choose one of {', '.join(self.spatial_stages)}.")
    return self.stage(images, name)

  def conv5(self, images: Array) -> Array:
    """conv5 after its ReLU, (N, h, w, 256), for (N, S, S, C) pixel images."""
    return self.stage(images, "conv5")

  def head(self, conv5: Array) -> Array:
    """Logits (N, num_classes) from conv5 outputs (N, h, w, 256) (alexnet_head)."""
    return alexnet_head(self.variant, self._params["params"], jnp.asarray(conv5, jnp.float32))

  # The three methods, for this network.

  def saliency(self, image: Array, label: int) -> np.ndarray:
    """(S, S) |d logit[label] / d pixel|, max over channels, for one (S, S, C) image."""
    return np.asarray(self._jit_saliency(self._params, jnp.asarray(image, jnp.float32), label))

  def grad_cam(self, image: Array, label: int) -> np.ndarray:
    """(h, w) Grad-CAM map on conv5 (not upsampled) for one (S, S, C) image."""
    return np.asarray(self._jit_grad_cam(self._params, jnp.asarray(image, jnp.float32), label))

  def occlusion(self, image: Array, label: int, *, patch: int, stride: int,
                fill: float | Array = 128.0, batch_size: int = 32) -> np.ndarray:
    """P(label) for each position of a `patch`-pixel square of `fill` (0-255) moved by
    `stride` over one (S, S, C) image: (rows, columns) as occlusion_map."""
    return occlusion_map(self.probabilities, image, label, patch=patch, stride=stride,
                         fill=fill, batch_size=batch_size)


def resize_to_model(image: Array, image_size: int) -> np.ndarray:
  """(h, w, c) uint8 or float pixels -> float32 (S, S, c), resized bilinearly as the trainer
  does on the device (e.g. Fashion-MNIST's 28x28 to the model size)."""
  image = jnp.asarray(image, jnp.float32)
  if image.shape[:2] != (image_size, image_size):
    image = jax.image.resize(image, (image_size, image_size, image.shape[-1]), "bilinear")
  return np.asarray(image)
