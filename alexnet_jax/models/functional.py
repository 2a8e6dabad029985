"""The functional facade of the models (what scripts, tools and tests use), and the layer
functions in the form `resolve_kernels` picks:

    params = init('paper', seed=0)                      # the 'params' pytree
    out = logits('paper', params, images)               # eval mode, float32 logits
    count_params(params)                                # 60_965_224
    layer_shapes('d2l')                                 # {'conv1': (54, 54, 96), ...}
    stats = init_batch_stats('alexnet_bn')              # running BN statistics ({} if none)
    out = logits('alexnet_bn', params, images, batch_stats=stats)
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax.models.alexnet import STAGE_SUFFIX, STAGES, AlexNet, kernel_forms
from alexnet_jax.models.factory import create_model, resolve_kernels
from alexnet_jax.models.layers import grouped_conv as layers_grouped_conv
from alexnet_jax.models.presets import BATCH_NORM_VARIANTS, model_preset

_PAPER = model_preset("paper")


def local_response_norm(x: jax.Array, *, size: int = _PAPER["lrn_size"],
                        k: float = _PAPER["lrn_k"], alpha: float = _PAPER["lrn_alpha"],
                        beta: float = _PAPER["lrn_beta"],
                        alpha_divided_by_size: bool = _PAPER["lrn_alpha_divided_by_size"],
                        groups: int = 1, kernels: str = "auto") -> jax.Array:
  """Local response normalization across channels (last axis), within each of ``groups``.

  b_c = a_c / (k + alpha' * sum_{c' in window(c)} a_c'^2) ** beta, alpha' = alpha / size if
  alpha_divided_by_size else alpha; window c - size//2 .. c + (size-1)//2 within c's group.
  Defaults are the paper's constants (presets.model_preset). x: (..., C) any float
  dtype; computed in float32, returned in x's dtype. ``kernels`` as ``model.kernels``
  ('auto' resolves per backend). Raises ValueError when C does not split into ``groups``.
  """
  forms = kernel_forms(resolve_kernels(kernels, "auto").kernels)
  return forms.local_response_norm(x, size=size, k=k, alpha=alpha, beta=beta,
                                   alpha_divided_by_size=alpha_divided_by_size, groups=groups)


def max_pool(x: jax.Array, *, kernels: str = "auto") -> jax.Array:
  """Overlapping 3x3 stride-2 max pooling, VALID: (N, H, W, C) -> (N, (H-3)//2+1,
  (W-3)//2+1, C), x's dtype. ``kernels`` as ``model.kernels`` ('auto' resolves per
  backend); the forms give identical values."""
  return kernel_forms(resolve_kernels(kernels, "auto").kernels).max_pool(x)


def grouped_conv(x: jax.Array, kernel: jax.Array, *, stride: int, padding: int, groups: int,
                 impl: str, kernels: str = "auto") -> jax.Array:
  """Convolution with ``groups`` groups, no bias: x (N, H, W, C), kernel HWIO
  (kh, kw, C / groups, O) -> (N, H', W', O), x's dtype.

  ``impl`` as ``model.group_impl`` and ``kernels`` as ``model.kernels`` ('auto' resolves
  per backend). Raises ValueError for a bad ``impl`` or ``kernels``.
  """
  choice = resolve_kernels(kernels, impl)
  return layers_grouped_conv(x, kernel, stride=stride, padding=padding, groups=groups,
                             impl=choice.group_impl,
                             conv_fn=kernel_forms(choice.kernels).conv)


def _dummy_images(model: AlexNet, batch: int = 1):
  return jnp.zeros((batch, model.image_size, model.image_size, model.in_channels),
                   jnp.float32)


def init(variant: str, seed: int, **model_kwargs) -> dict:
  """Fresh parameters: the float32 pytree under 'params' (what the trainer checkpoints).

  ``model_kwargs`` are ``config.model.*`` fields; missing ones take the variant defaults.
  Deterministic in ``seed`` (threefry), whatever the backend or kernel forms. Batch
  statistics (alexnet_bn) are not parameters: ``init_batch_stats`` gives their initial
  values. Raises ValueError as ``create_model``.
  """
  return _jitted_init(_init_cache_key(variant, model_kwargs))(jax.random.key(seed))


def init_batch_stats(variant: str, **model_kwargs) -> dict:
  """Initial running statistics, the 'batch_stats' collection: for alexnet_bn
  ``{'bn1': {'mean': zeros, 'var': ones}, ...}`` (float32, one value per channel); ``{}``
  for variants without BN. Raises ValueError as ``create_model``."""
  if variant not in BATCH_NORM_VARIANTS:
    create_model(variant=variant, **model_kwargs)  # still validate the fields
    return {}
  model = create_model(variant=variant, **model_kwargs)
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, _dummy_images(model), train=False))
  # BN's running mean starts at 0 and its running variance at 1 (flax's defaults).
  return {layer: {"mean": jnp.zeros(v["mean"].shape, jnp.float32),
                  "var": jnp.ones(v["var"].shape, jnp.float32)}
          for layer, v in shapes["batch_stats"].items()}


# Jitted functions are cached per model config: a fresh jax.jit per call would recompile.
# Keys are full configs with 'auto' resolved, so equivalent spellings share one compile.
def _logits_cache_key(variant: str, model_kwargs: Mapping) -> tuple:
  return tuple(sorted(create_model(variant=variant, **model_kwargs).config().items()))


# Fields that change neither the parameter shapes nor their initial values.
_FORWARD_ONLY_FIELDS = ("dropout_rate", "dtype", "group_impl", "kernels", "lrn_k",
                        "lrn_size", "lrn_alpha", "lrn_beta", "lrn_alpha_divided_by_size")


def _init_cache_key(variant: str, model_kwargs: Mapping) -> tuple:
  cfg = create_model(variant=variant, **model_kwargs).config()
  defaults = model_preset(variant)
  cfg.update({field: defaults[field] for field in _FORWARD_ONLY_FIELDS})
  if variant != "d2l":  # fc6 sees 6x6x256 whatever the image size
    cfg["image_size"] = defaults["image_size"]
  return tuple(sorted(cfg.items()))


@functools.lru_cache(maxsize=32)
def _jitted_init(frozen_kwargs: tuple) -> Callable:
  model = create_model(**dict(frozen_kwargs))
  return jax.jit(
      lambda key: model.init({"params": key}, _dummy_images(model), train=False)["params"])


def variables(params, batch_stats=None) -> dict:
  """The variables dict ``Module.apply`` takes: params, plus batch stats when there are."""
  return {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}


@functools.lru_cache(maxsize=32)
def _jitted_logits(frozen_kwargs: tuple) -> Callable:
  model = create_model(**dict(frozen_kwargs))
  return jax.jit(lambda params, batch_stats, images: model.apply(
      variables(params, batch_stats), images, train=False))


def logits(variant: str, params, images, *, batch_stats=None, **model_kwargs) -> jax.Array:
  """Eval-mode float32 logits (N, num_classes) for NHWC normalized ``images`` (cast to
  float32; jitted, cached per resolved config).

  alexnet_bn needs ``batch_stats`` (its running BN statistics, e.g. from a checkpoint's
  state['batch_stats'] or ``init_batch_stats``): eval mode normalizes with them; without
  them ValueError. Other errors as ``create_model``."""
  key = _logits_cache_key(variant, model_kwargs)
  if variant in BATCH_NORM_VARIANTS and not batch_stats:
    raise UserError(f"The {variant} variant normalizes with its running batch "
                     "statistics in eval mode: pass batch_stats=... (a checkpoint's "
                     "state['batch_stats'], or models.init_batch_stats(variant)).")
  return _jitted_logits(key)(params, batch_stats or {}, jnp.asarray(images, jnp.float32))


def count_params(params) -> int:
  """Number of scalar parameters in a pytree (sum of leaf sizes; shapes only)."""
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def layer_shapes(variant: str, **model_kwargs) -> dict[str, tuple]:
  """Per-example output shape (H, W, C) or (features,) of every stage, in order.

  Stages: conv1 (after ReLU), pool1, conv2, pool2, conv3, conv4, conv5, pool5,
  avgpool (torchvision only), flatten, fc6, fc7, fc8. Computed abstractly (no FLOPs).
  Raises ValueError as ``create_model``.
  """
  model = create_model(variant=variant, **model_kwargs)

  def forward():
    images = _dummy_images(model)
    fresh = model.init({"params": jax.random.key(0)}, images, train=False)
    _, state = model.apply(fresh, images, train=False, mutable=["intermediates"])
    return state["intermediates"]

  sown = jax.eval_shape(forward)
  # sow stores a tuple of values per name; pytrees come back with sorted keys.
  shapes = {name.removesuffix(STAGE_SUFFIX): tuple(values[0].shape[1:])
            for name, values in sown.items()}
  return {stage: shapes[stage] for stage in STAGES if stage in shapes}
