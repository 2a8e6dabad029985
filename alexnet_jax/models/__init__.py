"""AlexNet variants in Flax linen: the paper's two-tower net, torchvision's, d2l's and
AlexNet-BN.

Four variants share one module and one parameter tree (``conv1`` .. ``conv5``, ``fc6`` ..
``fc8``, each with ``kernel`` and ``bias``; alexnet_bn has no conv biases and adds ``bn1``
.. ``bn5``):

- ``paper``: Krizhevsky, Sutskever & Hinton (2012). Two towers (grouped conv2/4/5),
  local response normalization after conv1 and conv2, computed inside each tower.
- ``torchvision``: ``torchvision.models.alexnet`` (single tower, 64/192/384/256/256,
  no LRN, adaptive average pool to 6x6).
- ``d2l``: the Dive-into-Deep-Learning textbook net (single tower, 96/256/384/384/256,
  no LRN), 1 input channel and 10 classes for Fashion-MNIST at 224x224.
- ``alexnet_bn``: the paper's two-tower net with batch normalization after every conv in
  place of LRN (conv -> BN -> ReLU; conv biases dropped), the "AlexNet-BN" that You et al.
  (2017) trained with LARS at batch 8K-32K. It has a second collection, ``batch_stats``.

The package:

- ``alexnet.py``: the Flax modules and the variant table; ``initializers.py``: init schemes.
- ``layers.py``: the plain layer forms (XLA's own ops; TPU's, and the reference of the others).
- ``cpu_kernels.py``: the forms measured faster on XLA:CPU (same values and parameters).
- ``gpu_kernels.py``: the forms that cut the paper step's memory traffic on XLA:GPU.
- ``towers.py``: one tower per device (``shard_map``) and FSDP dense layers.
- here: ``create_model``, config validation, ``resolve_kernels`` (the one place that picks
  the layer forms per backend) and the functional facade.

Model parallelism (docs/parallel.md): with ``tower_axis`` set and a mesh with that axis in
context, each device of the axis computes one tower, as the paper's two GPUs did. Parameters
are the same arrays either way.

Functional facade (what scripts and tests use)::

    params = init('paper', seed=0)                      # the 'params' pytree
    out = logits('paper', params, images)               # eval mode, float32 logits
    count_params(params)                                # 60_965_224
    layer_shapes('d2l')                                 # {'conv1': (54, 54, 96), ...}
    stats = init_batch_stats('alexnet_bn')              # running BN statistics ({} if none)
    out = logits('alexnet_bn', params, images, batch_stats=stats)

See docs/model.md for the design notes (LRN convention, 224 vs 227, init, kernel forms).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax import config_base
from alexnet_jax.models.alexnet import (
    BATCH_NORM_VARIANTS, BN_EPSILON, BN_MOMENTUM, CONFIG_FIELDS, DTYPE_CHOICES, DTYPES, FC_HIDDEN,
    FSDP_LAYERS, KERNEL_PRESETS, KERNELS, LAYER_FORMS, LAYER_NAMES, PAPER_IMAGE_SIZES,
    POOLED_AFTER, STAGE_SUFFIX, STAGES, TORCHVISION_POOL_OUTPUT, TWO_TOWER_VARIANTS, VARIANTS,
    AlexNet, Conv, Dense, LayerForms, conv_out, conv_specs, kernel_forms, layer_form_names,
    parse_kernels)
from alexnet_jax.models.initializers import INIT_SCHEMES, Initializer, layer_initializers
from alexnet_jax.models.layers import POOL_STRIDE, POOL_WINDOW, adaptive_avg_pool
from alexnet_jax.models.layers import grouped_conv as layers_grouped_conv
from alexnet_jax.models.towers import (PAPER_TOWERS, sharded_dense, tower_conv, tower_local,
                                       tower_mesh)

GROUP_IMPLS = ("auto", "towers", "feature_group_count", "tower_arrays")

# The public names; constants, modules and layer functions are re-exported so that callers
# use `models.<name>` whatever submodule defines it.
__all__ = [
    # variant table and constants (alexnet.py, initializers.py, layers.py, towers.py)
    "BATCH_NORM_VARIANTS", "BN_EPSILON", "BN_MOMENTUM", "CONFIG_FIELDS", "DTYPE_CHOICES", "DTYPES",
    "FC_HIDDEN", "FSDP_LAYERS", "GROUP_IMPLS", "INIT_SCHEMES", "KERNELS", "KERNEL_PRESETS",
    "LAYER_FORMS", "LAYER_NAMES",
    "PAPER_IMAGE_SIZES", "PAPER_TOWERS", "POOL_STRIDE", "POOL_WINDOW", "STAGES",
    "TORCHVISION_POOL_OUTPUT", "TWO_TOWER_VARIANTS", "VARIANTS",
    # modules and building blocks
    "AlexNet", "Conv", "Dense", "Initializer", "layer_initializers", "sharded_dense",
    "tower_conv", "tower_local", "tower_mesh",
    # config, kernel choice, model
    "KernelChoice", "LayerForms", "create_model", "default_model_config", "feature_map_size",
    "kernel_forms", "layer_form_names", "parse_kernels",
    "min_image_size", "resolve_group_impl", "resolve_kernels", "validate_model_config",
    # layer functions (the form resolve_kernels picks)
    "adaptive_avg_pool", "grouped_conv", "local_response_norm", "max_pool",
    # functional facade
    "count_params", "init", "init_batch_stats", "layer_shapes", "logits", "variables",
]


# --------------------------------------------------------------------------------------
# Config defaults and validation
# --------------------------------------------------------------------------------------

def _quoted(values) -> str:
  return ", ".join(repr(v) for v in values)


def _check_choice(field: str, value, allowed) -> None:
  """Raises ValueError "model.<field>=<value> is not one of ..." unless value is allowed."""
  if value not in allowed:
    raise UserError(f"model.{field}={value!r} is not one of {_quoted(allowed)}.")


def default_model_config(variant: str) -> dict:
  """Default value of every ``config.model.*`` field for ``variant``.

  The values live in ``config_base.model_preset`` (their one home); this is that function,
  kept under its old name. Raises ValueError naming ``model.variant`` for an unknown variant.
  """
  return config_base.model_preset(variant)


def feature_map_size(variant: str, image_size: int) -> int:
  """Height (= width, pixels) of the last pooled feature map (pool5) of ``variant`` for
  square ``image_size`` inputs; 0 if it vanishes on the way."""
  size = image_size
  for name, (_, kernel, stride, padding, _) in conv_specs(variant, image_size).items():
    size = conv_out(size, kernel, stride, padding)
    if name in POOLED_AFTER:
      size = conv_out(size, POOL_WINDOW, POOL_STRIDE, 0)
    if size <= 0:
      return 0
  return size


@functools.lru_cache(maxsize=None)
def min_image_size(variant: str) -> int:
  """Smallest image_size (pixels) whose feature maps do not vanish before fc6."""
  size = 1
  while feature_map_size(variant, size) <= 0:
    size += 1
  return size


def validate_model_config(cfg: Mapping[str, Any]) -> None:
  """Checks a full ``config.model`` mapping (every field of CONFIG_FIELDS).

  Raises ValueError naming the offending ``model.<field>`` and the allowed values for any
  bad value (unknown variant/init/group_impl/dtype, a kernels value parse_kernels refuses,
  non-positive sizes, an image
  size the variant cannot take, dropout outside [0, 1)).
  """
  variant = cfg["variant"]
  _check_choice("variant", variant, VARIANTS)
  _check_choice("init", cfg["init"], INIT_SCHEMES)
  _check_choice("group_impl", cfg["group_impl"], GROUP_IMPLS)
  parse_kernels(cfg["kernels"])
  _check_choice("dtype", cfg["dtype"], DTYPE_CHOICES)
  for field in ("num_classes", "in_channels", "image_size", "lrn_size"):
    value = cfg[field]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise UserError(f"model.{field}={value!r} must be a positive integer.")
  image_size = cfg["image_size"]
  if variant in TWO_TOWER_VARIANTS:
    if image_size not in PAPER_IMAGE_SIZES:
      raise UserError(
          f"model.image_size={image_size!r} is not supported by the {variant} variant; "
          f"use one of {_quoted(PAPER_IMAGE_SIZES)} (both give 55x55 after conv1).")
  elif feature_map_size(variant, image_size) <= 0:
    raise UserError(
        f"model.image_size={image_size!r} is too small for the {variant} variant: the "
        f"feature map vanishes before fc6; the minimum is {min_image_size(variant)}.")
  if not 0.0 <= cfg["dropout_rate"] < 1.0:
    raise UserError(f"model.dropout_rate={cfg['dropout_rate']!r} must be in [0, 1).")


# --------------------------------------------------------------------------------------
# Kernel choice per backend: the one place that looks at jax.default_backend()
# --------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class KernelChoice:
  """Resolved layer forms. ``kernels``: a preset 'plain' | 'cpu' | 'gpu', possibly with
  per-layer overrides ('gpu,pool=plain'; ``parse_kernels``), never 'auto';
  ``group_impl``: 'towers' | 'feature_group_count' | 'tower_arrays'; ``backend``: the JAX
  backend they were resolved for; ``kernels_reason`` / ``group_impl_reason``: why, for the
  log."""

  kernels: str
  group_impl: str
  backend: str
  kernels_reason: str
  group_impl_reason: str

  @property
  def forms(self) -> dict[str, str]:
    """{layer: form name}: conv, lrn, pool, lrn_pool (``layer_form_names``)."""
    return layer_form_names(self.kernels)

  def describe(self) -> str:
    """One line for the log: "model kernels on backend 'cpu': kernels=cpu (conv=padded,
    lrn=band, pool=scatter_free, lrn_pool=separate) [cpu forms: measured faster on XLA:CPU
    (docs/model.md)]; group_impl=towers [...]"."""
    forms = ", ".join(f"{layer}={form}" for layer, form in self.forms.items())
    return (f"model kernels on backend {self.backend!r}: kernels={self.kernels} ({forms}) "
            f"[{self.kernels_reason}]; group_impl={self.group_impl} "
            f"[{self.group_impl_reason}]")


# backend -> (kernels, why, group_impl, why) for 'auto'. Numbers: docs/model.md,
# "Kernel forms per backend".
_AUTO = {
    "cpu": ("cpu", "cpu forms: measured faster on XLA:CPU (docs/model.md)",
            "towers", "two convs trained ~3x faster than feature_group_count on XLA:CPU "
            "(docs/model.md)"),
    "gpu": ("gpu", "gpu forms: the paper step's XLA:GPU memory traffic 49.1 -> 27.3 MB per "
            "image compiled for an H100 (benchmarks/gpu_cost.py); a prediction, not yet "
            "timed on a GPU (docs/model.md)",
            "tower_arrays", "towers measured faster than feature_group_count on one H200 "
            "(31.8k vs 26.2k img/s bf16), kept as separate arrays: fewer bytes "
            "(docs/model.md)"),
}
_AUTO_OTHER = ("plain", "plain XLA forms: XLA's own ops (unmeasured on this backend)",
               "feature_group_count", "XLA's own grouped conv (unmeasured on this backend)")


def resolve_kernels(kernels: str, group_impl: str, backend: str | None = None) -> KernelChoice:
  """Resolves ``model.kernels`` and ``model.group_impl`` for ``backend``.

  kernels: a preset 'auto' | 'plain' | 'cpu' | 'gpu', optionally with per-layer forms
  ('auto,pool=plain'; ``parse_kernels``); group_impl: 'auto' | 'towers' |
  'feature_group_count' | 'tower_arrays'; backend: a JAX backend name ('cpu', 'gpu', 'tpu',
  ...), None for ``jax.default_backend()`` (the only place the model code asks for it).
  Explicit values pass through; 'auto' picks a preset per backend and keeps the overrides:
  on 'cpu' the XLA:CPU forms and towers (measured faster there); on 'gpu' the GPU forms and
  tower arrays (fewer bytes compiled for an H100; docs/model.md); on any other backend the
  plain forms and feature_group_count (unmeasured). Raises ValueError naming
  ``model.kernels`` or ``model.group_impl`` for a value they do not take.
  """
  preset, overrides = parse_kernels(kernels)
  _check_choice("group_impl", group_impl, GROUP_IMPLS)
  if backend is None:
    backend = jax.default_backend()
  auto_kernels, kernels_why, auto_groups, groups_why = _AUTO.get(backend, _AUTO_OTHER)
  if preset != "auto":
    auto_kernels, kernels_why = preset, "set by model.kernels"
  if overrides:
    auto_kernels = ",".join([auto_kernels] + [f"{k}={v}" for k, v in overrides.items()])
    kernels_why += "; layer forms set by model.kernels"
  if group_impl != "auto":
    auto_groups, groups_why = group_impl, "set by model.group_impl"
  return KernelChoice(kernels=auto_kernels, group_impl=auto_groups, backend=backend,
                      kernels_reason=kernels_why, group_impl_reason=groups_why)


def resolve_dtype(dtype: str, backend: str | None = None) -> tuple[str, str]:
  """(compute dtype, why) for ``model.dtype`` on ``backend`` (None: ``jax.default_backend()``).

  'auto' is bfloat16 on GPU and TPU, where the paper step measured 31.8k vs 22.1k img/s in
  float32 on one H200 (docs/model.md), and float32 on the CPU, where XLA:CPU emulates bf16
  convolutions slowly. Parameters stay float32 either way. Explicit values pass through.
  Raises ValueError naming ``model.dtype`` for a value it does not take.
  """
  _check_choice("dtype", dtype, DTYPE_CHOICES)
  if dtype != "auto":
    return dtype, "set by model.dtype"
  if backend is None:
    backend = jax.default_backend()
  if backend in ("gpu", "cuda", "rocm", "tpu"):
    return "bfloat16", f"auto on {backend}: 1.44x float32's step on one H200 (docs/model.md)"
  return "float32", f"auto on {backend}: bf16 convolutions are emulated, slowly, on XLA:CPU"


def resolve_group_impl(group_impl: str) -> str:
  """``resolve_kernels('auto', group_impl).group_impl`` on the default backend:
  'towers' | 'feature_group_count'. Raises ValueError naming ``model.group_impl``."""
  return resolve_kernels("auto", group_impl).group_impl


# --------------------------------------------------------------------------------------
# Building the model
# --------------------------------------------------------------------------------------

def create_model(*, tower_axis: str | None = None, fsdp_axis: str | None = None,
                 **model_kwargs) -> AlexNet:
  """Build a validated AlexNet from ``config.model.*`` fields.

  Missing fields take ``config_base.model_preset(variant)`` (variant defaults to 'paper').
  ``init`` is the config name of the module field ``init_scheme``; either is accepted.
  ``tower_axis`` / ``fsdp_axis`` are mesh axis names from ``config.parallel`` (see AlexNet);
  they change where the computation runs, never the parameters or the results.
  Raises ValueError for unknown fields, bad values (naming ``model.<field>``), and a
  ``tower_axis`` with a single-tower variant.
  """
  kwargs = dict(model_kwargs)
  if "init_scheme" in kwargs:
    if "init" in kwargs:
      raise UserError("Give model.init or init_scheme, not both.")
    kwargs["init"] = kwargs.pop("init_scheme")
  unknown = sorted(set(kwargs) - set(CONFIG_FIELDS))
  if unknown:
    raise UserError(f"Unknown model config field(s) {_quoted(unknown)}; "
                     f"known fields: {_quoted(CONFIG_FIELDS)}.")
  cfg = {**config_base.model_preset(kwargs.get("variant", "paper")), **kwargs}
  validate_model_config(cfg)
  if tower_axis is not None and cfg["variant"] not in TWO_TOWER_VARIANTS:
    raise UserError(
        f"Model parallelism over two towers needs a two-tower variant "
        f"({_quoted(TWO_TOWER_VARIANTS)}), not model.variant={cfg['variant']!r}; "
        f"use parallel.model=1 for it.")
  cfg["init_scheme"] = cfg.pop("init")
  cfg["dtype"] = resolve_dtype(cfg["dtype"])[0]
  return AlexNet(**cfg, tower_axis=tower_axis, fsdp_axis=fsdp_axis)


# --------------------------------------------------------------------------------------
# Layer functions (the form picked by resolve_kernels)
# --------------------------------------------------------------------------------------

_PAPER = config_base.model_preset("paper")


def local_response_norm(x: jax.Array, *, size: int = _PAPER["lrn_size"],
                        k: float = _PAPER["lrn_k"], alpha: float = _PAPER["lrn_alpha"],
                        beta: float = _PAPER["lrn_beta"],
                        alpha_divided_by_size: bool = _PAPER["lrn_alpha_divided_by_size"],
                        groups: int = 1, kernels: str = "auto") -> jax.Array:
  """Local response normalization across channels (last axis), within each of ``groups``.

  b_c = a_c / (k + alpha' * sum_{c' in window(c)} a_c'^2) ** beta, alpha' = alpha / size if
  alpha_divided_by_size else alpha; window c - size//2 .. c + (size-1)//2 within c's group.
  Defaults are the paper's constants (config_base.model_preset). x: (..., C) any float
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


# --------------------------------------------------------------------------------------
# Functional facade
# --------------------------------------------------------------------------------------

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
  cfg = create_model(variant=variant, **model_kwargs).config()
  choice = resolve_kernels(cfg["kernels"], cfg["group_impl"])
  cfg["kernels"], cfg["group_impl"] = choice.kernels, choice.group_impl
  return tuple(sorted(cfg.items()))


# Fields that change neither the parameter shapes nor their initial values.
_FORWARD_ONLY_FIELDS = ("dropout_rate", "dtype", "group_impl", "kernels", "lrn_k",
                        "lrn_size", "lrn_alpha", "lrn_beta", "lrn_alpha_divided_by_size")


def _init_cache_key(variant: str, model_kwargs: Mapping) -> tuple:
  cfg = create_model(variant=variant, **model_kwargs).config()
  defaults = config_base.model_preset(variant)
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
