"""Layer forms for XLA:CPU: same signatures and values as ``layers.py``, faster on CPU.

A profile of the paper model's train step on XLA:CPU (batch 32, 227x227, 2 cores) found
three places where XLA:CPU's own forms are slow; each form here was measured faster there,
A/B in one process (docs/model.md, "Speed on XLA:CPU", has the numbers):

- ``conv``: an unpadded strided conv (conv1 at 227) runs padded by one stride on the high
  side and cropped, because XLA:CPU takes a slow path for VALID convolutions (about -200 ms
  of a ~1.2 s step).
- ``local_response_norm``: the window sum as a matmul with a 0/1 band matrix per tower and a
  hand-written gradient (``jax.custom_vjp``): about -300 ms.
- ``max_pool``: the max of the 9 strided views with a scatter-free custom gradient, instead
  of select-and-scatter: 915 -> 756 ms.

On GPU, ``models.resolve_kernels`` picks ``gpu_kernels.py``'s set, which reuses two things from
here, measured there with benchmarks/gpu_cost.py: ``max_pool`` as it is (its scatter-free
gradient moves far fewer bytes than XLA:GPU's select-and-scatter) and the LRN gradient formula
(``lrn_input_gradient``); the band-matrix window sum is not used there (it compiles to float32
gemms that moved more bytes than the plain form). TPU takes the plain forms. Parameters do not
depend on the form.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.models.layers import (POOL_STRIDE, POOL_WINDOW, check_lrn_groups,
                                       conv as plain_conv, inverse_power)


# --------------------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------------------

def conv(x: jax.Array, kernel: jax.Array, *, stride: int, padding: int,
         groups: int = 1) -> jax.Array:
  """``layers.conv`` (same shapes, dtypes and values), with unpadded convs on XLA:CPU's
  fast path.

  XLA:CPU runs unpadded ("VALID") convolutions on a slow path: conv1 at 227 (no padding)
  trained about 2x slower than with padding (docs/model.md). Padding the high side by one
  stride and cropping gives exactly the VALID result on the fast path.
  """
  if padding == 0:
    out_h = (x.shape[1] - kernel.shape[0]) // stride + 1
    out_w = (x.shape[2] - kernel.shape[1]) // stride + 1
    y = jax.lax.conv_general_dilated(
        x, kernel, window_strides=(stride, stride), padding=((0, stride), (0, stride)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    return y[:, :out_h, :out_w, :]
  return plain_conv(x, kernel, stride=stride, padding=padding, groups=groups)


# --------------------------------------------------------------------------------------
# Local response normalization
# --------------------------------------------------------------------------------------

def local_response_norm(x: jax.Array, *, size: int, k: float, alpha: float, beta: float,
                        alpha_divided_by_size: bool, groups: int) -> jax.Array:
  """``layers.local_response_norm`` (same formula, shapes, dtypes; values to float
  rounding), as a banded matmul with a hand-written gradient.

  The window sum of each group is a matmul with that group's 0/1 band matrix (a fast GEMM
  on XLA:CPU; one (C/groups)-wide band per group, half the FLOPs of one block-diagonal band
  for two towers), and the gradient is written out (``jax.custom_vjp``), which trained
  faster on XLA:CPU than autodiff of the forward (docs/model.md). Computed in float32,
  returned in x's dtype. Raises ValueError when C does not split into ``groups``.
  """
  check_lrn_groups(x.shape[-1], groups)
  scale = alpha / size if alpha_divided_by_size else alpha
  return _lrn(x.astype(jnp.float32), size, k, scale, beta, groups).astype(x.dtype)


def _window_sum(values, band):
  """Per group (tower), the sum over each channel's window: a matmul with the group's band."""
  per_group = band.shape[0]
  grouped = values.reshape(values.shape[:-1] + (values.shape[-1] // per_group, per_group))
  # HIGHEST keeps the sum float32 on GPU/TPU too, where matmuls may default to bf16 passes.
  summed = jnp.einsum("...c,cd->...d", grouped, band, precision=jax.lax.Precision.HIGHEST)
  return summed.reshape(values.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn(a, size: int, k: float, scale: float, beta: float, groups: int):
  return _lrn_forward(a, size, k, scale, beta, groups)[0]


def _lrn_forward(a, size, k, scale, beta, groups):
  denominator = k + scale * _window_sum(jnp.square(a), _lrn_band(a.shape[-1], size, groups))
  return a * inverse_power(denominator, beta), (a, denominator)


def _lrn_backward(size, k, scale, beta, groups, residuals, grad):
  a, denominator = residuals
  band = _lrn_band(a.shape[-1], size, groups)
  return (lrn_input_gradient(a, grad, denominator, lambda v: _window_sum(v, band.T),
                             scale, beta),)


def lrn_input_gradient(a, grad, denominator, spread_sum, scale: float, beta: float,
                       spread_dtype=None):
  """The LRN's input gradient (the one home of this formula, for every custom-VJP form):

  d/da_j of sum_c g_c a_c d_c^-beta = g_j d_j^-beta
  - 2 scale beta a_j sum_{c: j in window(c)} g_c a_c d_c^(-beta-1).

  a, grad, denominator (k + scale * window sum of a^2): float32, (..., C). spread_sum: the
  sum over the mirrored window (the channels whose window holds j). spread_dtype: store
  g a d^(-beta-1) in this dtype before that sum (the GPU form's bfloat16, half the memory
  traffic of the one intermediate the sum needs written); None keeps float32.
  """
  inv_pow = inverse_power(denominator, beta)
  spread_in = grad * a * inv_pow / denominator
  if spread_dtype is not None:
    spread_in = spread_in.astype(spread_dtype).astype(jnp.float32)
  spread = spread_sum(spread_in)
  return grad * inv_pow - (2.0 * scale * beta) * a * spread


_lrn.defvjp(_lrn_forward, _lrn_backward)


def _lrn_band(channels: int, size: int, groups: int) -> jax.Array:
  """The band of one group: band[c', c] = 1 when channel c' is in the LRN window of c."""
  index = np.arange(channels // groups)
  offset = index[:, None] - index[None, :]  # c' - c
  in_window = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
  return jnp.asarray(in_window, jnp.float32)


# --------------------------------------------------------------------------------------
# Max pooling
# --------------------------------------------------------------------------------------

def _pool_views(x, out_h: int, out_w: int):
  """The 9 strided views x[:, i::2, j::2] of a 3x3/2 pooling, each out_h x out_w."""
  n, _, _, c = x.shape
  return [[jax.lax.slice(x, (0, i, j, 0),
                         (n, i + POOL_STRIDE * (out_h - 1) + 1,
                          j + POOL_STRIDE * (out_w - 1) + 1, c),
                         (1, POOL_STRIDE, POOL_STRIDE, 1))
           for j in range(POOL_WINDOW)] for i in range(POOL_WINDOW)]


def _max_pool_forward(x):
  out_h = (x.shape[1] - POOL_WINDOW) // POOL_STRIDE + 1
  out_w = (x.shape[2] - POOL_WINDOW) // POOL_STRIDE + 1
  views = _pool_views(x, out_h, out_w)
  out, winner = views[0][0], jnp.zeros(views[0][0].shape, jnp.int8)
  for i in range(POOL_WINDOW):
    for j in range(POOL_WINDOW):
      if i or j:
        # Strictly greater: the first maximum in the window takes the gradient,
        # as in PyTorch and cuda-convnet.
        better = views[i][j] > out
        out = jnp.where(better, views[i][j], out)
        winner = jnp.where(better, jnp.int8(POOL_WINDOW * i + j), winner)
  return out, (winner, x.shape)


def _max_pool_backward(residuals, grad):
  """Routes each output gradient to its window's winner without a scatter.

  Along one axis, input 2m is offset 0 of window m and offset 2 of window m-1; input 2m+1
  is offset 1 of window m. So the gradient is built on the pooled grid, per parity of the
  input row and column, and the four parity planes are interleaved once.
  """
  winner, (n, h, w, c) = residuals
  per_offset = [[jnp.where(winner == POOL_WINDOW * i + j, grad, 0).astype(grad.dtype)
                 for j in range(POOL_WINDOW)] for i in range(POOL_WINDOW)]

  def even_positions(offset0, offset2, axis):
    # One longer than the pooled grid: window m's offset 0 plus window m-1's offset 2.
    low, high = [(0, 0)] * 4, [(0, 0)] * 4
    high[axis], low[axis] = (0, 1), (1, 0)
    return jnp.pad(offset0, high) + jnp.pad(offset2, low)

  def column_parities(row):  # -> (even columns, odd columns)
    return even_positions(row[0], row[2], axis=2), row[1]

  (even0, odd0), (even1, odd1), (even2, odd2) = map(column_parities, per_offset)
  even_even = even_positions(even0, even2, axis=1)
  even_odd = even_positions(odd0, odd2, axis=1)
  pad_rows = lambda a: jnp.pad(a, ((0, 0), (0, 1), (0, 0), (0, 0)))
  pad_cols = lambda a: jnp.pad(a, ((0, 0), (0, 0), (0, 1), (0, 0)))
  planes = jnp.stack([jnp.stack([even_even, pad_cols(even_odd)], axis=3),
                      jnp.stack([pad_rows(even1), pad_cols(pad_rows(odd1))], axis=3)], axis=2)
  rows, cols = planes.shape[1] * 2, planes.shape[3] * 2
  full = planes.reshape(n, rows, cols, c)[:, :h, :w, :]
  # Trailing rows/columns no window reaches get zero gradient.
  return (jnp.pad(full, ((0, 0), (0, h - full.shape[1]), (0, w - full.shape[2]), (0, 0))),)


@jax.custom_vjp
def max_pool(x: jax.Array) -> jax.Array:
  """``layers.max_pool`` (3x3 stride 2, VALID; same shapes, dtype and values, exactly).

  Forward: the maximum of the 9 strided views. Backward: the scatter-free rule above
  instead of XLA's select-and-scatter, which is slow on XLA:CPU; together they cut the
  paper model's train step on CPU by about a fifth (docs/model.md). A tie's gradient goes
  to the first maximum of the window (row-major), as in PyTorch and cuda-convnet.
  """
  return _max_pool_forward(x)[0]


max_pool.defvjp(_max_pool_forward, _max_pool_backward)
