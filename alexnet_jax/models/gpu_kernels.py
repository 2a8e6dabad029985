"""Layer forms for XLA:GPU: same signatures and values as ``layers.py``, less memory traffic.

The paper net's train step is bound by memory traffic on a GPU, not by FLOPs (docs/model.md,
"Kernel forms per backend": the torchvision net with the same multiply-adds moves half the
bytes and trained 2x faster on one H200). Compiled by XLA:GPU for an H100 (benchmarks/
gpu_cost.py), the plain forms of two layers moved most of the paper step's extra bytes:

- LRN: autodiff of the plain form keeps float32 copies of its input, the window sums and the
  power terms for the backward pass (several full-size float32 tensors per LRN: 595 MB each
  after conv1 at batch 512). ``local_response_norm`` here keeps only its input, in the compute
  dtype, and recomputes the rest in the backward pass (``jax.custom_vjp``).
- max pool: XLA's gradient of ``reduce_window`` max writes the float32 maximum and four int32
  index arrays, then scatters. The scatter-free form of ``cpu_kernels.max_pool`` (one int8
  winner per output, gradient routed on the pooled grid) serves here as it is.

``relu_lrn_max_pool`` fuses the three layers that follow conv1 and conv2 of the paper net into
one custom-VJP op that keeps only the ReLU output (compute dtype) and the pool's int8 winners.

The backward passes put ``jax.lax.optimization_barrier`` on their residuals: without it XLA
merges the recomputation with the forward pass's identical expressions (common subexpression
elimination) and keeps the forward's float32 tensors alive after all.
Parameters do not depend on the form; values equal the plain forms' to float rounding
(tests/test_gpu_forms.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from alexnet_jax.models import cpu_kernels
from alexnet_jax.models.layers import channel_window_sum, check_lrn_groups


def _lrn_scale(size: int, alpha: float, alpha_divided_by_size: bool) -> float:
  return alpha / size if alpha_divided_by_size else alpha


def _inverse_power(d, beta: float):
  """d ** -beta as one power op, in the forward pass. The plain form's rsqrt(d) *
  sqrt(rsqrt(d)) (beta 0.75) uses rsqrt(d) twice; compiled for the H200 target (not the
  H100), XLA:GPU's cost model then wrote it to memory in float32 between two kernels: +4.8 MB
  per image of the paper step. (In the backward pass the power op measured worse on the H100
  target, 29.2 vs 27.3 MB, so the gradient keeps ``layers.inverse_power``.)"""
  return jnp.power(d, -beta)


def _lrn_values(a, size: int, k: float, scale: float, beta: float, groups: int):
  """(output, denominator) of the LRN of float32 ``a``: the plain form's formula, with the
  power as one op (``_inverse_power``)."""
  denominator = k + scale * channel_window_sum(jnp.square(a), size, groups)
  return a * _inverse_power(denominator, beta), denominator


def _lrn_gradient(a, grad, size, k, scale, beta, groups, store_dtype):
  """The LRN's input gradient (float32) recomputed from its float32 input ``a``."""
  _, denominator = _lrn_values(a, size, k, scale, beta, groups)
  spread_sum = lambda v: channel_window_sum(v, size, groups, transpose=True)
  spread_dtype = None if store_dtype == jnp.float32 else store_dtype
  return cpu_kernels.lrn_input_gradient(a, grad.astype(jnp.float32), denominator, spread_sum,
                                        scale, beta, spread_dtype=spread_dtype)


# --------------------------------------------------------------------------------------
# LRN that keeps only its input
# --------------------------------------------------------------------------------------

def local_response_norm(x: jax.Array, *, size: int, k: float, alpha: float, beta: float,
                        alpha_divided_by_size: bool, groups: int) -> jax.Array:
  """``layers.local_response_norm`` (same formula, shapes, dtypes; values and gradient to
  float rounding), keeping only ``x`` for the backward pass.

  Forward: the plain form's expressions (window sums by ``lax.reduce_window``, in float32),
  the power as one op (``_inverse_power``).
  Backward (``jax.custom_vjp``): recomputes the denominator from ``x`` and applies
  ``cpu_kernels.lrn_input_gradient``; the one intermediate its mirrored window sum needs is
  stored in x's dtype. Raises ValueError when C does not split into ``groups``.
  """
  check_lrn_groups(x.shape[-1], groups)
  return _lrn(x, size, k, _lrn_scale(size, alpha, alpha_divided_by_size), beta, groups)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn(x, size: int, k: float, scale: float, beta: float, groups: int):
  return _lrn_values(x.astype(jnp.float32), size, k, scale, beta, groups)[0].astype(x.dtype)


def _lrn_fwd(x, size, k, scale, beta, groups):
  return _lrn(x, size, k, scale, beta, groups), x


def _lrn_bwd(size, k, scale, beta, groups, x, grad):
  x = jax.lax.optimization_barrier(x)  # recompute here; do not reuse the forward's values
  grad_a = _lrn_gradient(x.astype(jnp.float32), grad, size, k, scale, beta, groups, x.dtype)
  return (grad_a.astype(x.dtype),)


_lrn.defvjp(_lrn_fwd, _lrn_bwd)


# --------------------------------------------------------------------------------------
# ReLU -> LRN -> 3x3/2 max pool as one op
# --------------------------------------------------------------------------------------

def relu_lrn_max_pool(z: jax.Array, *, size: int, k: float, alpha: float, beta: float,
                      alpha_divided_by_size: bool, groups: int) -> jax.Array:
  """``max_pool(local_response_norm(relu(z)))`` of the plain forms, as one op.

  z: (N, H, W, C) pre-activation (conv output plus bias), any float dtype, C divisible by
  ``groups``; returns (N, (H-3)//2+1, (W-3)//2+1, C) in z's dtype. The values are the plain
  layers' to float rounding (the LRN output is rounded to z's dtype before pooling, as there).
  Backward: keeps only relu(z) in z's dtype and the pool's int8 winners
  (``cpu_kernels.max_pool``'s rule: a tie goes to the first maximum of the window); the
  gradient is routed to the winners without a scatter, the LRN gradient recomputed, and the
  ReLU's mask taken from relu(z) > 0. Raises ValueError when C does not split into ``groups``.
  """
  check_lrn_groups(z.shape[-1], groups)
  return _relu_lrn_pool(z, size, k, _lrn_scale(size, alpha, alpha_divided_by_size), beta,
                        groups)


def _relu_lrn_pool_forward(z, size, k, scale, beta, groups):
  r = jnp.maximum(z, jnp.zeros((), z.dtype))
  y = _lrn_values(r.astype(jnp.float32), size, k, scale, beta, groups)[0].astype(z.dtype)
  pooled, (winner, _) = cpu_kernels._max_pool_forward(y)
  return pooled, (r, winner)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _relu_lrn_pool(z, size: int, k: float, scale: float, beta: float, groups: int):
  return _relu_lrn_pool_forward(z, size, k, scale, beta, groups)[0]


def _relu_lrn_pool_fwd(z, size, k, scale, beta, groups):
  return _relu_lrn_pool_forward(z, size, k, scale, beta, groups)


def _relu_lrn_pool_bwd(size, k, scale, beta, groups, residuals, grad):
  r, winner = jax.lax.optimization_barrier(residuals)
  grad_y = cpu_kernels._max_pool_backward((winner, r.shape), grad)[0]
  grad_a = _lrn_gradient(r.astype(jnp.float32), grad_y, size, k, scale, beta, groups, r.dtype)
  return (jnp.where(r > 0, grad_a, 0.0).astype(r.dtype),)


_relu_lrn_pool.defvjp(_relu_lrn_pool_fwd, _relu_lrn_pool_bwd)
