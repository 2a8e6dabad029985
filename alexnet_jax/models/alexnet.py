"""The Flax modules (Conv, Dense, AlexNet) and the table of variants.

Conv and dense parameters are written by hand with ``self.param`` so that the grouped kernel
``(kh, kw, in/groups, out)`` is the same array whichever form runs it (towers or
``feature_group_count``; plain or XLA:CPU kernels; one device or one tower per device).
Checkpoints are therefore interchangeable between all of them.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from alexnet_jax.errors import UserError
from alexnet_jax.models import cpu_kernels, gpu_kernels, layers
from alexnet_jax.models.presets import (BATCH_NORM_VARIANTS, CONFIG_FIELDS, FSDP_LAYERS,
                                        TWO_TOWER_VARIANTS)
from alexnet_jax.models.initializers import layer_initializers
from alexnet_jax.models.towers import (PAPER_TOWERS, _batch_axes, _context_mesh,
                                       sharded_dense, tower_conv, tower_local, tower_mesh)

# BatchNorm constants of alexnet_bn (running average = 0.9 * old + 0.1 * batch).
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# Per variant and conv layer: (out_channels, kernel, stride, padding, groups).
# The paper's conv1 padding depends on image_size and is filled in by conv_specs.
_CONV_SPECS = {
    "paper": {
        "conv1": (96, 11, 4, None, 1),
        "conv2": (256, 5, 1, 2, 2),
        "conv3": (384, 3, 1, 1, 1),  # the only conv that mixes the two towers
        "conv4": (384, 3, 1, 1, 2),
        "conv5": (256, 3, 1, 1, 2),
    },
    "torchvision": {
        "conv1": (64, 11, 4, 2, 1),
        "conv2": (192, 5, 1, 2, 1),
        "conv3": (384, 3, 1, 1, 1),
        "conv4": (256, 3, 1, 1, 1),
        "conv5": (256, 3, 1, 1, 1),
    },
    "d2l": {
        "conv1": (96, 11, 4, 1, 1),
        "conv2": (256, 5, 1, 2, 1),
        "conv3": (384, 3, 1, 1, 1),
        "conv4": (384, 3, 1, 1, 1),
        "conv5": (256, 3, 1, 1, 1),
    },
}
_CONV_SPECS["alexnet_bn"] = dict(_CONV_SPECS["paper"])  # same convs; BN replaces LRN
# Max-pool 3x3 stride 2 ("overlapping pooling") follows these convs in every variant.
POOLED_AFTER = ("conv1", "conv2", "conv5")
FC_HIDDEN = 4096
TORCHVISION_POOL_OUTPUT = 6  # AdaptiveAvgPool2d((6, 6))

STAGE_SUFFIX = "_output"
STAGES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5",
          "avgpool", "flatten", "fc6", "fc7", "fc8")

# Layer forms by name (model.kernels, docs/model.md "Kernel forms per backend"): per layer,
# the functions with the same signature and (to float rounding) the same values.
LAYER_FORMS = {
    "conv": {"plain": layers.conv, "padded": cpu_kernels.conv},
    "lrn": {"plain": layers.local_response_norm, "band": cpu_kernels.local_response_norm,
            "recompute": gpu_kernels.local_response_norm},
    "pool": {"plain": layers.max_pool, "scatter_free": cpu_kernels.max_pool},
    # ReLU -> LRN -> max pool after the paper's conv1 and conv2: three layers, or one op.
    "lrn_pool": {"separate": None, "fused": gpu_kernels.relu_lrn_max_pool},
}
# model.kernels presets: one form per layer. 'auto' picks one per backend (resolve_kernels).
KERNEL_PRESETS = {
    "plain": {"conv": "plain", "lrn": "plain", "pool": "plain", "lrn_pool": "separate"},
    "cpu": {"conv": "padded", "lrn": "band", "pool": "scatter_free", "lrn_pool": "separate"},
    "gpu": {"conv": "plain", "lrn": "recompute", "pool": "scatter_free", "lrn_pool": "fused"},
}
KERNELS = ("auto",) + tuple(KERNEL_PRESETS)


def parse_kernels(kernels) -> tuple[str, dict[str, str]]:
  """``model.kernels`` -> (preset, {layer: form} overrides).

  The value is a preset ('auto', 'plain', 'cpu', 'gpu'), optionally followed by per-layer
  forms that replace the preset's, comma-separated: 'gpu,pool=plain', 'plain,lrn=recompute'
  (layers and forms: LAYER_FORMS). Raises ValueError naming model.kernels for anything else.
  """
  allowed = ", ".join(repr(v) for v in KERNELS)
  if not isinstance(kernels, str):
    raise UserError(f"model.kernels={kernels!r} is not one of {allowed}.")
  preset, *parts = [part.strip() for part in kernels.split(",")]
  if preset not in KERNELS:
    raise UserError(
        f"model.kernels={kernels!r} is not one of {allowed}, optionally followed by layer "
        "forms such as ',lrn=recompute' (docs/model.md, \"Kernel forms per backend\").")
  overrides: dict[str, str] = {}
  for part in parts:
    layer, _, form = part.partition("=")
    layer, form = layer.strip(), form.strip()
    if layer not in LAYER_FORMS or layer in overrides:
      raise UserError(
          f"model.kernels={kernels!r}: {part!r} is not a layer form; give each of "
          f"{', '.join(repr(k) for k in LAYER_FORMS)} at most once, as layer=form.")
    if form not in LAYER_FORMS[layer]:
      raise UserError(
          f"model.kernels={kernels!r}: {layer} is one of "
          f"{', '.join(repr(f) for f in LAYER_FORMS[layer])}, not {form!r}.")
    overrides[layer] = form
  return preset, overrides


def layer_form_names(kernels: str) -> dict[str, str]:
  """{layer: form name} of a resolved ``kernels`` value (a preset other than 'auto', with
  any overrides). Raises ValueError for 'auto' (resolve it first) or a bad value."""
  preset, overrides = parse_kernels(kernels)
  if preset == "auto":
    raise UserError(f"kernels={kernels!r} is not resolved; resolve model.kernels with "
                    "models.resolve_kernels first.")
  return {**KERNEL_PRESETS[preset], **overrides}


@dataclasses.dataclass(frozen=True)
class LayerForms:
  """The functions a resolved ``model.kernels`` runs. ``relu_lrn_max_pool`` is None when
  ReLU, LRN and max pool run as three layers (``lrn_pool=separate``)."""

  conv: Callable
  local_response_norm: Callable
  max_pool: Callable
  relu_lrn_max_pool: Callable | None


def kernel_forms(kernels: str) -> LayerForms:
  """The layer functions of a resolved ``kernels`` value: 'plain' -> ``layers``' forms,
  'cpu' -> ``cpu_kernels``', 'gpu' -> the GPU set (``gpu_kernels``, ``cpu_kernels.max_pool``),
  each with any per-layer overrides ('gpu,pool=plain'). Raises ValueError for 'auto' or
  anything else (resolve with ``models.resolve_kernels`` first)."""
  names = layer_form_names(kernels)
  return LayerForms(conv=LAYER_FORMS["conv"][names["conv"]],
                    local_response_norm=LAYER_FORMS["lrn"][names["lrn"]],
                    max_pool=LAYER_FORMS["pool"][names["pool"]],
                    relu_lrn_max_pool=LAYER_FORMS["lrn_pool"][names["lrn_pool"]])


def _each(fn, x):
  """fn on each array of a tower-arrays tuple, or on the one array."""
  return tuple(fn(t) for t in x) if isinstance(x, tuple) else fn(x)


def _whole(x):
  """The towers of a tower-arrays tuple concatenated on the channel axis (else x itself)."""
  return jnp.concatenate(x, axis=-1) if isinstance(x, tuple) else x


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
  """Spatial output size of a conv/pool (floor mode, as PyTorch and Caffe's conv)."""
  if size + 2 * padding < kernel:
    return 0
  return (size + 2 * padding - kernel) // stride + 1


def _paper_conv1_padding(image_size: int) -> int:
  # 227 gives 55x55 with no padding (Caffe); 224 needs padding 2 (torchvision's choice).
  return 0 if image_size == 227 else 2


def conv_specs(variant: str, image_size: int) -> dict:
  """{conv name: (out_channels, kernel, stride, padding, groups)} of ``variant`` at
  ``image_size`` (the two-tower variants pad conv1 by 0 at 227, 2 at 224)."""
  specs = dict(_CONV_SPECS[variant])
  if variant in TWO_TOWER_VARIANTS:
    out, k, s, _, g = specs["conv1"]
    specs["conv1"] = (out, k, s, _paper_conv1_padding(image_size), g)
  return specs


class Conv(nn.Module):
  """Square conv with HWIO kernel (kh, kw, in/groups, out) and bias, float32 params.

  ``group_impl`` ('towers' | 'feature_group_count' | 'tower_arrays') and ``kernels`` (a
  resolved ``model.kernels``) come from ``models.resolve_kernels``; they never change the
  parameters. ``input_split`` (tower mode only): the input already holds one tower per device.
  Input (N, H, W, C) any float dtype; output (N, H', W', features) in ``dtype``. With
  'tower_arrays' the input may be, and the output is, a tuple of PAPER_TOWERS arrays holding
  the channels of each tower (``layers.tower_arrays_conv``; the bias is added per tower).
  """

  features: int
  kernel_size: int
  stride: int
  padding: int
  groups: int
  group_impl: str
  kernels: str
  init_scheme: str
  dtype: Any
  use_bias: bool = True
  tower_axis: str | None = None
  input_split: bool = True

  @nn.compact
  def __call__(self, x):
    in_channels = (sum(t.shape[-1] for t in x) if isinstance(x, tuple) else x.shape[-1])
    if in_channels % self.groups or self.features % self.groups:
      raise UserError(f"{self.name}: channels {in_channels}->{self.features} "
                       f"do not split into {self.groups} groups.")
    shape = (self.kernel_size, self.kernel_size, in_channels // self.groups, self.features)
    kernel_init, bias_init = layer_initializers(
        self.init_scheme, self.name, fan_in=int(np.prod(shape[:-1])))
    kernel = self.param("kernel", kernel_init, shape, jnp.float32).astype(self.dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", bias_init, (self.features,), jnp.float32).astype(self.dtype)
    conv_fn = kernel_forms(self.kernels).conv
    # One tower per device (tower mode) takes precedence over any group_impl.
    mesh = None if self.is_initializing() else tower_mesh(self.tower_axis)
    if self.group_impl == "tower_arrays" and mesh is None:
      x = _each(lambda t: t.astype(self.dtype), x)
      ys = layers.tower_arrays_conv(x, kernel, stride=self.stride, padding=self.padding,
                                    groups=self.groups, towers=PAPER_TOWERS, conv_fn=conv_fn)
      if bias is None:
        return ys
      return tuple(y + b for y, b in zip(ys, jnp.split(bias, PAPER_TOWERS)))
    x = x.astype(self.dtype)
    if mesh is not None:
      return tower_conv(x, kernel, bias, stride=self.stride, padding=self.padding,
                        groups=self.groups, input_split=self.input_split, mesh=mesh,
                        tower_axis=self.tower_axis, conv_fn=conv_fn)
    y = layers.grouped_conv(x, kernel, stride=self.stride, padding=self.padding,
                            groups=self.groups, impl=self.group_impl, conv_fn=conv_fn)
    return y if bias is None else y + bias


class Dense(nn.Module):
  """Dense layer with kernel (in, out) and bias, float32 params; (N, in) -> (N, features).

  ``tower_axis``: split the output features over the towers when that mesh axis is in
  context. ``fsdp_axis``: the kernel is stored sharded over this axis (parallel.fsdp) and
  gathered for use here, so its gradient is reduce-scattered back.
  """

  features: int
  init_scheme: str
  dtype: Any
  tower_axis: str | None = None
  fsdp_axis: str | None = None

  @nn.compact
  def __call__(self, x):
    shape = (x.shape[-1], self.features)
    kernel_init, bias_init = layer_initializers(self.init_scheme, self.name, fan_in=shape[0])
    kernel = self.param("kernel", kernel_init, shape, jnp.float32)
    bias = self.param("bias", bias_init, (self.features,), jnp.float32)
    x, kernel, bias = (v.astype(self.dtype) for v in (x, kernel, bias))
    if self.is_initializing():
      return x @ kernel + bias
    towers = tower_mesh(self.tower_axis)
    tower_axis = (self.tower_axis if towers is not None
                  and self.features % PAPER_TOWERS == 0 else None)
    context = _context_mesh()
    fsdp_axis = (self.fsdp_axis if self.fsdp_axis is not None and self.name in FSDP_LAYERS
                 and context is not None and self.fsdp_axis in context.axis_names else None)
    if tower_axis is not None or fsdp_axis is not None:
      return sharded_dense(x, kernel, bias, mesh=context, tower_axis=tower_axis,
                           fsdp_axis=fsdp_axis, gather_output=self.name == "fc8")
    if towers is not None:  # features that do not split in two (an odd num_classes)
      x = jax.lax.with_sharding_constraint(x, P(_batch_axes(towers, self.tower_axis)))
    return x @ kernel + bias


class AlexNet(nn.Module):
  """AlexNet; fields are the ``config.model.*`` fields (``init`` -> ``init_scheme``).

  Build it with ``models.create_model(**config.model)``, which validates the fields, fills
  missing ones from ``presets.model_preset(variant)`` and resolves ``kernels``,
  ``group_impl`` and ``dtype`` for the backend; the fields have no defaults here.

  Call with NHWC float images (N, image_size, image_size, in_channels), already normalized,
  and ``train``; dropout draws from the 'dropout' rng collection. Returns float32 logits
  (N, num_classes). Collections: 'params', and for alexnet_bn 'batch_stats' (running BN
  statistics: updated when ``train`` and ``mutable=['batch_stats']``, used when not
  ``train``). Raises ValueError for a bad field (naming ``model.<field>``) or images of
  another shape.

  ``kernels`` and ``group_impl`` (resolved: never 'auto') pick the forms that run;
  parameters and values (to float rounding) are the same for every choice.

  Two fields are not ``config.model`` fields but mesh axis names from ``config.parallel``
  (docs/parallel.md); they move computation, never change values or parameters:
  ``tower_axis`` runs one tower per device of that axis when a mesh with it is in context;
  ``fsdp_axis`` gathers fc6/fc7's kernels, stored sharded over that axis, for their use.
  """

  variant: str
  num_classes: int
  in_channels: int
  image_size: int
  init_scheme: str
  dropout_rate: float
  dtype: str
  group_impl: str
  kernels: str
  lrn_k: float
  lrn_size: int
  lrn_alpha: float
  lrn_beta: float
  lrn_alpha_divided_by_size: bool
  tower_axis: str | None = None
  fsdp_axis: str | None = None

  def config(self) -> dict:
    """The fields as a ``config.model`` dict (with ``init``, not ``init_scheme``)."""
    cfg = {f: getattr(self, f) for f in CONFIG_FIELDS if f != "init"}
    cfg["init"] = self.init_scheme
    return cfg

  def _check_images(self, images) -> None:
    expected = (self.image_size, self.image_size, self.in_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise UserError(
          f"AlexNet expects NHWC images of shape (N, {expected[0]}, {expected[1]}, "
          f"{expected[2]}) from model.image_size={self.image_size} and "
          f"model.in_channels={self.in_channels}, got {tuple(images.shape)}.")

  def _record(self, stage: str, x) -> None:
    # Sown names may not equal submodule names, hence the suffix; layer_shapes strips it.
    if not self.is_mutable_collection("intermediates"):
      return  # nothing is kept (and tower arrays need no concatenation for it)
    self.sow("intermediates", stage + STAGE_SUFFIX, _whole(x))

  def _within_towers(self, fn, x):
    """``fn(x, groups=...)`` computed within each tower: per array of a tower-arrays tuple,
    per device in tower mode, else on the whole map with PAPER_TOWERS groups."""
    if isinstance(x, tuple):
      return tuple(fn(t, groups=1) for t in x)
    mesh = None if self.is_initializing() else tower_mesh(self.tower_axis)
    if mesh is not None:  # one tower per device: the op is local to it
      return tower_local(functools.partial(fn, groups=1), x, mesh=mesh,
                         tower_axis=self.tower_axis)
    return fn(x, groups=PAPER_TOWERS)

  def _lrn_kwargs(self) -> dict:
    return dict(size=self.lrn_size, k=self.lrn_k, alpha=self.lrn_alpha, beta=self.lrn_beta,
                alpha_divided_by_size=self.lrn_alpha_divided_by_size)

  @nn.compact
  def __call__(self, images, *, train: bool):
    self._check_images(images)
    forms = kernel_forms(self.kernels)
    group_impl = self.group_impl
    if group_impl == "tower_arrays" and self.variant != "paper":
      group_impl = "towers"  # BN (alexnet_bn) normalizes whole maps; one-tower variants
    dtype = jnp.dtype(self.dtype)
    x = images.astype(dtype)
    # The fused ReLU -> LRN -> pool hides the ReLU and LRN outputs: where they are recorded
    # (layer_shapes, visualization) the three layers run separately, with the same values.
    fused = (forms.relu_lrn_max_pool if self.variant == "paper"
             and not self.is_mutable_collection("intermediates") else None)

    batch_norm = self.variant in BATCH_NORM_VARIANTS
    for name, (features, kernel, stride, padding, groups) in conv_specs(
        self.variant, self.image_size).items():
      # With BN after it a conv's bias is redundant (BN subtracts the mean): none.
      x = Conv(features, kernel, stride, padding, groups, group_impl, self.kernels,
               self.init_scheme, dtype, use_bias=not batch_norm,
               tower_axis=self.tower_axis, input_split=name != "conv1", name=name)(x)
      if batch_norm:  # before the ReLU, as Ioffe & Szegedy place it
        x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                         epsilon=BN_EPSILON, dtype=dtype, param_dtype=jnp.float32,
                         name=name.replace("conv", "bn"))(x)
      lrn_here = self.variant == "paper" and name in ("conv1", "conv2")
      if lrn_here and fused is not None:  # ReLU, LRN and pool in one op
        x = self._within_towers(functools.partial(fused, **self._lrn_kwargs()), x)
        continue
      x = _each(nn.relu, x)
      self._record(name, x)
      if lrn_here:  # after ReLU, before pooling, as in the paper
        x = self._within_towers(
            functools.partial(forms.local_response_norm, **self._lrn_kwargs()), x)
      if name in POOLED_AFTER:
        x = _each(forms.max_pool, x)
        self._record(name.replace("conv", "pool"), x)

    x = _whole(x)
    if self.variant == "torchvision":
      x = layers.adaptive_avg_pool(x, TORCHVISION_POOL_OUTPUT)
      self._record("avgpool", x)
    x = x.reshape(x.shape[0], -1)  # NHWC flatten; convert.py reorders for PyTorch
    self._record("flatten", x)
    x = self._classifier(x, train)
    return x.astype(jnp.float32)

  def _classifier(self, x, train: bool):
    dtype = jnp.dtype(self.dtype)
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train)
    dense = functools.partial(Dense, init_scheme=self.init_scheme, dtype=dtype,
                              tower_axis=self.tower_axis, fsdp_axis=self.fsdp_axis)
    # torchvision drops fc6's and fc7's inputs; paper and d2l drop fc6's and fc7's
    # outputs after the ReLU (= the inputs of fc7 and fc8).
    drop_before = self.variant == "torchvision"
    for name in ("fc6", "fc7"):
      if drop_before:
        x = dropout(x)
      x = nn.relu(dense(FC_HIDDEN, name=name)(x))
      if not drop_before:
        x = dropout(x)
      self._record(name, x)
    x = dense(self.num_classes, name="fc8")(x)
    self._record("fc8", x)
    return x
