"""Plain layer forms: XLA's own ops, written for XLA on GPU and TPU.

Each function here is the straightforward form of a layer, left for XLA to fuse and to
differentiate: no hand-written gradients, no tricks tuned to one backend. The forms tuned
for XLA:CPU live in ``cpu_kernels.py`` with the same signatures and (to float rounding) the
same values; ``models.resolve_kernels`` picks one set per backend (docs/model.md, "Kernel
forms per backend"). All arrays are NHWC; kernels are HWIO.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import UserError

# Overlapping max pooling of the paper: 3x3 windows, stride 2, no padding (Section 3.4).
POOL_WINDOW, POOL_STRIDE = 3, 2


def conv(x: jax.Array, kernel: jax.Array, *, stride: int, padding: int,
         groups: int = 1) -> jax.Array:
  """Square convolution with symmetric zero ``padding`` (pixels) on both spatial axes.

  x: (N, H, W, C) any float dtype; kernel: (kh, kw, C / groups, O) of x's dtype.
  Returns (N, H', W', O) with H' = floor((H + 2 * padding - kh) / stride) + 1, x's dtype.
  ``groups`` > 1 is one XLA grouped conv (``feature_group_count``). Bias is not added here.
  """
  return jax.lax.conv_general_dilated(
      x, kernel,
      window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
  )


ConvFn = Callable[..., jax.Array]


def grouped_conv(x: jax.Array, kernel: jax.Array, *, stride: int, padding: int, groups: int,
                 impl: str, conv_fn: ConvFn = conv) -> jax.Array:
  """Convolution with ``groups`` groups; kernel is HWIO with I = in_channels / groups.

  impl 'feature_group_count' runs one grouped conv; 'towers' runs one conv per group on the
  matching slices of input channels and kernel output channels, then concatenates. Both
  follow the same grouping (group g: the g-th slice of inputs and of outputs), PyTorch's.
  ``conv_fn`` is the conv form (this module's ``conv`` or ``cpu_kernels.conv``).
  Shapes and dtype as ``conv``. Raises ValueError for an unknown ``impl``.
  """
  if groups == 1 or impl == "feature_group_count":
    return conv_fn(x, kernel, stride=stride, padding=padding, groups=groups)
  if impl != "towers":
    raise UserError(f"model.group_impl={impl!r} is not one of 'towers', "
                     "'feature_group_count' (resolve 'auto' with models.resolve_kernels).")
  inputs = jnp.split(x, groups, axis=-1)
  kernels = jnp.split(kernel, groups, axis=-1)
  towers = [conv_fn(xi, ki, stride=stride, padding=padding, groups=1)
            for xi, ki in zip(inputs, kernels)]
  return jnp.concatenate(towers, axis=-1)


def inverse_power(d: jax.Array, beta: float) -> jax.Array:
  """d ** -beta; for beta = 0.75 as rsqrt(d) * sqrt(rsqrt(d)) (no exp/log). d > 0."""
  if beta == 0.75:
    inv_sqrt = jax.lax.rsqrt(d)  # d^-0.75 = d^-0.5 * d^-0.25
    return inv_sqrt * jnp.sqrt(inv_sqrt)
  return jnp.power(d, -beta)


def check_lrn_groups(channels: int, groups: int) -> None:
  """Raises ValueError when ``channels`` do not split into ``groups`` equal groups."""
  if channels % groups:
    raise UserError(f"LRN: {channels} channels do not split into {groups} groups.")


def local_response_norm(x: jax.Array, *, size: int, k: float, alpha: float, beta: float,
                        alpha_divided_by_size: bool, groups: int) -> jax.Array:
  """Local response normalization across channels (last axis), within each group.

  b_c = a_c / (k + alpha' * sum_{c' in window(c)} a_c'^2) ** beta with
  alpha' = alpha / size if alpha_divided_by_size else alpha (paper Section 3.3; the
  convention is discussed in docs/model.md). The window covers channels
  c - size//2 .. c + (size-1)//2 of the same group (PyTorch's LocalResponseNorm placement),
  zero-padded at the group's edges; channels of another group (tower) are never neighbours.

  Plain form: the window sum is one ``lax.reduce_window`` add over the channel axis of each
  group, which XLA fuses with the elementwise ops around it; autodiff gives the gradient.
  x: (..., C) any float dtype, C divisible by ``groups``. Computed in float32, returned in
  x's dtype. Raises ValueError when C does not split into ``groups``.
  """
  channels = x.shape[-1]
  check_lrn_groups(channels, groups)
  scale = alpha / size if alpha_divided_by_size else alpha
  a = x.astype(jnp.float32)
  squares = jnp.square(a).reshape(a.shape[:-1] + (groups, channels // groups))
  ndim = squares.ndim
  window_sum = jax.lax.reduce_window(
      squares, 0.0, jax.lax.add,
      window_dimensions=(1,) * (ndim - 1) + (size,),
      window_strides=(1,) * ndim,
      padding=((0, 0),) * (ndim - 1) + ((size // 2, (size - 1) // 2),))
  denominator = k + scale * window_sum.reshape(a.shape)
  return (a * inverse_power(denominator, beta)).astype(x.dtype)


def max_pool(x: jax.Array) -> jax.Array:
  """Overlapping 3x3 stride-2 max pooling, no padding (paper Section 3.4).

  x: (N, H, W, C), H, W >= 3, any dtype; returns (N, (H - 3) // 2 + 1, (W - 3) // 2 + 1, C)
  of x's dtype. Plain form: ``lax.reduce_window`` max (``flax.linen.max_pool``) with XLA's
  own gradient (select-and-scatter).
  """
  return nn.max_pool(x, (POOL_WINDOW, POOL_WINDOW), strides=(POOL_STRIDE, POOL_STRIDE),
                     padding="VALID")


def adaptive_avg_pool(x: jax.Array, output_size: int) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d on NHWC: bin i of n covers [floor(iH/n), ceil((i+1)H/n)).

  x: (N, H, W, C) float; returns (N, output_size, output_size, C) of x's dtype; x itself
  when H = W = output_size. Written as two small matmuls with averaging matrices, one form
  for every backend.
  """
  height, width = x.shape[1], x.shape[2]
  if height == output_size and width == output_size:
    return x  # identity, and exactly so

  def averaging_matrix(length: int) -> np.ndarray:
    matrix = np.zeros((output_size, length), np.float32)
    for i in range(output_size):
      start = (i * length) // output_size
      end = -((-(i + 1) * length) // output_size)  # ceil division
      matrix[i, start:end] = 1.0 / (end - start)
    return matrix

  rows = jnp.asarray(averaging_matrix(height), x.dtype)
  cols = jnp.asarray(averaging_matrix(width), x.dtype)
  return jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols)
