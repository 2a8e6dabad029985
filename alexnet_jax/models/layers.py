"""Plain layer forms: XLA's own ops, the reference every other form is tested against.

Each function here is the straightforward form of a layer, left for XLA to fuse and to
differentiate: no hand-written gradients, no tricks tuned to one backend. The forms tuned
for XLA:CPU live in ``cpu_kernels.py``, those for XLA:GPU in ``gpu_kernels.py``, with the same
signatures and (to float rounding) the same values; ``models.resolve_kernels`` picks one set
per backend (docs/model.md, "Kernel forms per backend"): these on TPU (unmeasured). All arrays
are NHWC; kernels are HWIO.
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
  matching slices of input channels and kernel output channels, then concatenates;
  'tower_arrays' is ``tower_arrays_conv`` with its towers concatenated here. All follow the
  same grouping (group g: the g-th slice of inputs and of outputs), PyTorch's.
  ``conv_fn`` is the conv form (this module's ``conv`` or ``cpu_kernels.conv``).
  Shapes and dtype as ``conv``. Raises ValueError for an unknown ``impl``.
  """
  if groups == 1 or impl == "feature_group_count":
    return conv_fn(x, kernel, stride=stride, padding=padding, groups=groups)
  if impl == "tower_arrays":
    return jnp.concatenate(tower_arrays_conv(x, kernel, stride=stride, padding=padding,
                                             groups=groups, towers=groups, conv_fn=conv_fn),
                           axis=-1)
  if impl != "towers":
    raise UserError(f"model.group_impl={impl!r} is not one of 'towers', "
                     "'feature_group_count', 'tower_arrays' (resolve 'auto' with "
                     "models.resolve_kernels).")
  inputs = jnp.split(x, groups, axis=-1)
  kernels = jnp.split(kernel, groups, axis=-1)
  towers = [conv_fn(xi, ki, stride=stride, padding=padding, groups=1)
            for xi, ki in zip(inputs, kernels)]
  return jnp.concatenate(towers, axis=-1)


Towers = tuple  # of jax.Array: one array per tower, the towers' channels in order


def tower_arrays_conv(x: jax.Array | Towers, kernel: jax.Array, *, stride: int, padding: int,
                      groups: int, towers: int, conv_fn: ConvFn = conv) -> Towers:
  """A conv whose output stays split into ``towers`` arrays (group_impl 'tower_arrays').

  x: one array (N, H, W, C) or a tuple of ``towers`` arrays holding its channels in order;
  kernel (kh, kw, C / groups, O). Output tower t is output channels t*O/towers ..
  (t+1)*O/towers - 1, computed by its own conv: with ``groups`` == ``towers`` from input
  tower t alone (a grouped conv, no concatenation); with ``groups`` == 1 from all the input
  channels (a tuple is concatenated once, here). So between the paper's convs the towers
  never go through a split or a concatenation of full-size maps, and the bias, ReLU, LRN and
  pooling run on each tower's own array. Returns a tuple of ``towers`` arrays
  (N, H', W', O / towers) of x's dtype. Raises ValueError when ``groups`` is neither 1 nor
  ``towers``.
  """
  if groups not in (1, towers):
    raise UserError(f"tower_arrays: {groups} groups do not map onto {towers} towers.")
  kernels = jnp.split(kernel, towers, axis=-1)
  if groups == 1:
    full = jnp.concatenate(x, axis=-1) if isinstance(x, tuple) else x
    return tuple(conv_fn(full, k, stride=stride, padding=padding, groups=1) for k in kernels)
  inputs = x if isinstance(x, tuple) else tuple(jnp.split(x, towers, axis=-1))
  return tuple(conv_fn(xi, ki, stride=stride, padding=padding, groups=1)
               for xi, ki in zip(inputs, kernels))


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
  check_lrn_groups(x.shape[-1], groups)
  scale = alpha / size if alpha_divided_by_size else alpha
  a = x.astype(jnp.float32)
  denominator = k + scale * channel_window_sum(jnp.square(a), size, groups)
  return (a * inverse_power(denominator, beta)).astype(x.dtype)


def channel_window_sum(values: jax.Array, size: int, groups: int,
                       transpose: bool = False) -> jax.Array:
  """Per group, the sum of ``values`` over each channel's LRN window (last axis).

  The window of channel c is c - size//2 .. c + (size-1)//2 within c's group, zero-padded at
  the group's edges. ``transpose``: the mirrored window (the channels whose window holds c),
  what the LRN gradient sums over; the same for odd ``size``. One ``lax.reduce_window`` add
  over the channel axis of each group, which XLA fuses with the elementwise ops around it.
  values: (..., C), C divisible by ``groups``; returns the same shape and dtype.
  """
  channels = values.shape[-1]
  grouped = values.reshape(values.shape[:-1] + (groups, channels // groups))
  before, after = size // 2, (size - 1) // 2
  if transpose:
    before, after = after, before
  ndim = grouped.ndim
  summed = jax.lax.reduce_window(
      grouped, 0.0, jax.lax.add,
      window_dimensions=(1,) * (ndim - 1) + (size,),
      window_strides=(1,) * ndim,
      padding=((0, 0),) * (ndim - 1) + ((before, after),))
  return summed.reshape(values.shape)


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
