"""Building a model from `config.model` fields: validation (once, here), the layer forms and
compute dtype per backend (the one place that looks at `jax.default_backend()`), the checks of
`config.parallel` against the model, and where each parameter lives on a mesh.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from alexnet_jax.errors import UserError
from alexnet_jax.models.alexnet import (AlexNet, POOLED_AFTER, conv_out, conv_specs,
                                        layer_form_names, parse_kernels)
from alexnet_jax.models.initializers import INIT_SCHEMES
from alexnet_jax.models.layers import POOL_STRIDE, POOL_WINDOW
from alexnet_jax.models.presets import (CONFIG_FIELDS, DTYPE_CHOICES, FSDP_LAYERS, GROUP_IMPLS,
                                        PAPER_IMAGE_SIZES, TWO_TOWER_VARIANTS, VARIANTS,
                                        model_preset)
from alexnet_jax.models.towers import PAPER_TOWERS

MODEL_PARALLEL_SIZES = (1, PAPER_TOWERS)


def _quoted(values) -> str:
  return ", ".join(repr(v) for v in values)


def _check_choice(field: str, value, allowed) -> None:
  """Raises ValueError "model.<field>=<value> is not one of ..." unless value is allowed."""
  if value not in allowed:
    raise UserError(f"model.{field}={value!r} is not one of {_quoted(allowed)}.")


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


def create_model(*, tower_axis: str | None = None, fsdp_axis: str | None = None,
                 **model_kwargs) -> AlexNet:
  """Build a validated AlexNet from ``config.model.*`` fields.

  Missing fields take ``model_preset(variant)`` (variant defaults to 'paper'); 'auto'
  kernels, group_impl and dtype are resolved for the default backend.
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
  cfg = {**model_preset(kwargs["variant"] if "variant" in kwargs else "paper"), **kwargs}
  validate_model_config(cfg)
  if tower_axis is not None and cfg["variant"] not in TWO_TOWER_VARIANTS:
    raise UserError(
        f"Model parallelism over two towers needs a two-tower variant "
        f"({_quoted(TWO_TOWER_VARIANTS)}), not model.variant={cfg['variant']!r}; "
        f"use parallel.model=1 for it.")
  cfg["init_scheme"] = cfg.pop("init")
  choice = resolve_kernels(cfg["kernels"], cfg["group_impl"])
  cfg["kernels"], cfg["group_impl"] = choice.kernels, choice.group_impl
  cfg["dtype"] = resolve_dtype(cfg["dtype"])[0]
  return AlexNet(**cfg, tower_axis=tower_axis, fsdp_axis=fsdp_axis)


def check_parallel(variant: str, model_parallel: int, num_devices: int) -> None:
  """One clear error for a `parallel.model` the devices or the model cannot take."""
  if isinstance(model_parallel, bool) or model_parallel not in MODEL_PARALLEL_SIZES:
    raise UserError(f"parallel.model={model_parallel!r} is not one of 1 (data parallelism) "
                    f"or {PAPER_TOWERS} (the paper's two towers on two devices).")
  if num_devices % model_parallel:
    raise UserError(f"parallel.model={model_parallel} does not divide the {num_devices} "
                    f"devices; use parallel.model=1 or an even device count.")
  if model_parallel > 1 and variant not in TWO_TOWER_VARIANTS:
    raise UserError(f"parallel.model={model_parallel} splits the two towers of the paper's "
                    f"network over devices; model.variant={variant!r} has no towers. Use "
                    f"model.variant in {TWO_TOWER_VARIANTS} or parallel.model=1.")


def partition_specs(shapes: Mapping[tuple[str, str], tuple[int, ...]], *,
                    tower_axis: str | None = None, fsdp_axis: str | None = None,
                    axis_sizes: Mapping[str, int] | None = None) -> dict[tuple[str, str], P]:
  """Where each parameter (or BN statistic) lives on a mesh: {(layer, kind): PartitionSpec}
  for `shapes` {(layer, kind): shape}, e.g. {('conv1', 'kernel'): (11, 11, 3, 96)}.

  Towers (`tower_axis`): the last axis (conv output channels, dense output features, BN
  channels) is split over it: conv1 and the grouped conv2/4/5 as on the paper's GPUs, conv3
  and the fully connected layers by their outputs (fc8 only when num_classes is even).
  FSDP (`fsdp_axis`, of `axis_sizes[fsdp_axis]` devices): the first axis (input features) of
  fc6's and fc7's kernels. Raises UserError when those rows do not divide over the devices.
  """
  specs = {}
  for (layer, kind), shape in shapes.items():
    spec = [None] * len(shape)
    if tower_axis is not None and shape and shape[-1] % PAPER_TOWERS == 0:
      spec[-1] = tower_axis
    if fsdp_axis is not None and layer in FSDP_LAYERS and kind == "kernel":
      size = axis_sizes[fsdp_axis]
      if shape[0] % size:
        raise UserError(
            f"parallel.fsdp=True shards {layer}'s kernel rows ({shape[0]}) over the {size} "
            f"devices of the '{fsdp_axis}' axis, which do not divide them; use a device count "
            f"that does, or parallel.fsdp=False.")
      spec[0] = fsdp_axis
    specs[(layer, kind)] = P(*spec)
  return specs
