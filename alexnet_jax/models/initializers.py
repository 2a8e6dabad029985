"""Weight and bias initializers of the four init schemes (docs/model.md, "Initialization")."""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.errors import UserError

INIT_SCHEMES = ("paper", "caffe", "xavier", "torch")

Initializer = Callable[[jax.Array, tuple, Any], jax.Array]

# Layers whose bias the paper sets to 1 (Caffe: 0.1) so ReLUs start in their active part.
_POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _uniform(bound: float) -> Initializer:
  def init_fn(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init_fn


def layer_initializers(scheme: str, layer: str, fan_in: int) -> tuple[Initializer, Initializer]:
  """(kernel_init, bias_init) of ``layer`` ('conv1' .. 'fc8') under init ``scheme``.

  fan_in is kh*kw*in_channels/groups for convs and in_features for dense layers. Each
  initializer is ``(key, shape, dtype=float32) -> array``. Schemes:
  'paper': N(0, 0.01), bias 1 in conv2/4/5, fc6/7 else 0 (the paper, Section 5);
  'caffe': N(0, 0.01), fc6/fc7 N(0, 0.005), bias 0.1 where the paper has 1 (BVLC AlexNet);
  'xavier': Glorot uniform, bias 0 (d2l); 'torch': U(+-1/sqrt(fan_in)) for both (PyTorch's
  default). Raises ValueError naming ``model.init`` for another scheme.
  """
  positive_bias = layer in _POSITIVE_BIAS_LAYERS
  if scheme == "paper":
    return (nn.initializers.normal(0.01),
            nn.initializers.constant(1.0 if positive_bias else 0.0))
  if scheme == "caffe":
    std = 0.005 if layer in ("fc6", "fc7") else 0.01
    return (nn.initializers.normal(std),
            nn.initializers.constant(0.1 if positive_bias else 0.0))
  if scheme == "xavier":
    # HWIO / (in, out) layouts give the same fans as PyTorch's xavier_uniform_.
    return nn.initializers.glorot_uniform(), nn.initializers.zeros
  if scheme == "torch":
    # kaiming_uniform_(a=sqrt(5)) reduces to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / math.sqrt(fan_in)
    return _uniform(bound), _uniform(bound)
  raise UserError(f"model.init={scheme!r} is not one of "
                   f"{', '.join(repr(s) for s in INIT_SCHEMES)}.")
