"""AlexNet variants in Flax linen: the paper's two-tower net, torchvision's and d2l's.

Three variants share one module and one parameter tree
(``conv1`` .. ``conv5``, ``fc6`` .. ``fc8``, each with ``kernel`` and ``bias``):

- ``paper``: Krizhevsky, Sutskever & Hinton (2012). Two towers (grouped conv2/4/5),
  local response normalization after conv1 and conv2, computed inside each tower.
- ``torchvision``: ``torchvision.models.alexnet`` (single tower, 64/192/384/256/256,
  no LRN, adaptive average pool to 6x6).
- ``d2l``: the Dive-into-Deep-Learning textbook net (single tower, 96/256/384/384/256,
  no LRN), 1 input channel and 10 classes for Fashion-MNIST at 224x224.
- ``alexnet_bn``: the paper's two-tower net with batch normalization after every conv in
  place of LRN (conv -> BN -> ReLU; conv biases dropped), the "AlexNet-BN" that You et al.
  (2017) trained with LARS at batch 8K-32K. It has a second collection, ``batch_stats``.

Model parallelism (docs/parallel.md): with ``tower_axis`` set and a mesh with that axis in
context, each device of the axis computes one tower, as the paper's two GPUs did: the grouped
convs, LRN and half of every other layer's outputs are local, conv3 and the fully connected
layers all-gather their inputs. Parameters are the same arrays either way.

Conv and dense parameters are written by hand with ``self.param`` so that the grouped
kernel ``(kh, kw, in/groups, out)`` is the same array whether the groups run as two
separate convolutions ("towers") or one ``feature_group_count=2`` convolution.
Checkpoints are therefore interchangeable between the two implementations.

Functional facade (what scripts and tests use)::

    params = init('paper', seed=0)                      # the 'params' pytree
    out = logits('paper', params, images)               # eval mode, float32 logits
    count_params(params)                                # 60_965_224
    layer_shapes('d2l')                                 # {'conv1': (54, 54, 96), ...}
    stats = init_batch_stats('alexnet_bn')              # running BN statistics ({} if none)
    out = logits('alexnet_bn', params, images, batch_stats=stats)

See docs/model.md for the design notes (LRN convention, 224 vs 227, init, towers).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

VARIANTS = ("paper", "torchvision", "d2l", "alexnet_bn")
# Variants built of the paper's two towers (grouped conv2/4/5): the ones model parallelism
# over a two-device 'model' axis can split the way the paper split them over two GPUs.
TWO_TOWER_VARIANTS = ("paper", "alexnet_bn")
# Variants with batch normalization, hence a 'batch_stats' collection.
BATCH_NORM_VARIANTS = ("alexnet_bn",)
# BatchNorm constants of alexnet_bn (running average = 0.9 * old + 0.1 * batch).
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5
# Dense layers whose kernels parallel.fsdp shards over the data axis (90% of the parameters).
FSDP_LAYERS = ("fc6", "fc7")
INIT_SCHEMES = ("paper", "caffe", "xavier", "torch")
GROUP_IMPLS = ("auto", "towers", "feature_group_count")
DTYPES = ("float32", "bfloat16")
PAPER_IMAGE_SIZES = (224, 227)

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

# Per variant and conv layer: (out_channels, kernel, stride, padding, groups).
# The paper's conv1 padding depends on image_size and is filled in by _conv_specs.
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
_POOLED_AFTER = ("conv1", "conv2", "conv5")
POOL_WINDOW, POOL_STRIDE = 3, 2
FC_HIDDEN = 4096
TORCHVISION_POOL_OUTPUT = 6  # AdaptiveAvgPool2d((6, 6))

# The paper runs two towers: every grouped conv and the LRN use this many groups.
PAPER_TOWERS = 2

_STAGE_SUFFIX = "_output"
STAGES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5",
          "avgpool", "flatten", "fc6", "fc7", "fc8")

# Config field names as they appear under config.model.* . The module field for `init`
# is called `init_scheme`, because a field named `init` would shadow `nn.Module.init`.
CONFIG_FIELDS = (
    "variant", "num_classes", "in_channels", "image_size", "dropout_rate", "dtype",
    "init", "group_impl", "lrn_k", "lrn_size", "lrn_alpha", "lrn_beta",
    "lrn_alpha_divided_by_size",
)


# --------------------------------------------------------------------------------------
# Config defaults and validation
# --------------------------------------------------------------------------------------

def _quoted(values) -> str:
    return ", ".join(repr(v) for v in values)


def _check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"model.{field}={value!r} is not one of {_quoted(allowed)}.")


def default_model_config(variant: str) -> dict:
    """Default value of every ``config.model.*`` field for ``variant``."""
    _check_choice("variant", variant, VARIANTS)
    common = dict(
        variant=variant, dropout_rate=0.5, dtype="float32", group_impl="auto",
        lrn_k=2.0, lrn_size=5, lrn_alpha=1e-4, lrn_beta=0.75,
        lrn_alpha_divided_by_size=True,
    )
    per_variant = {
        # The paper states 224x224 inputs; 227 (Caffe's choice) is also supported.
        "paper": dict(num_classes=1000, in_channels=3, image_size=224, init="paper"),
        "torchvision": dict(num_classes=1000, in_channels=3, image_size=224, init="torch"),
        "d2l": dict(num_classes=10, in_channels=1, image_size=224, init="xavier"),
        # You et al. started from Caffe's BVLC AlexNet, hence its init (docs/model.md).
        "alexnet_bn": dict(num_classes=1000, in_channels=3, image_size=224, init="caffe"),
    }[variant]
    return {**common, **per_variant}


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a conv/pool (floor mode, as PyTorch and Caffe's conv)."""
    if size + 2 * padding < kernel:
        return 0
    return (size + 2 * padding - kernel) // stride + 1


def _paper_conv1_padding(image_size: int) -> int:
    # 227 gives 55x55 with no padding (Caffe); 224 needs padding 2 (torchvision's choice).
    return 0 if image_size == 227 else 2


def _conv_specs(variant: str, image_size: int) -> dict:
    specs = dict(_CONV_SPECS[variant])
    if variant in TWO_TOWER_VARIANTS:
        out, k, s, _, g = specs["conv1"]
        specs["conv1"] = (out, k, s, _paper_conv1_padding(image_size), g)
    return specs


def feature_map_size(variant: str, image_size: int) -> int:
    """Height (= width) of the last pooled feature map, 0 if it vanishes on the way."""
    size = image_size
    for name, (_, kernel, stride, padding, _) in _conv_specs(variant, image_size).items():
        size = _conv_out(size, kernel, stride, padding)
        if name in _POOLED_AFTER:
            size = _conv_out(size, POOL_WINDOW, POOL_STRIDE, 0)
        if size <= 0:
            return 0
    return size


@functools.lru_cache(maxsize=None)
def min_image_size(variant: str) -> int:
    """Smallest image_size whose feature maps do not vanish before fc6."""
    size = 1
    while feature_map_size(variant, size) <= 0:
        size += 1
    return size


def validate_model_config(cfg: Mapping[str, Any]) -> None:
    """Raise ValueError with the offending ``model.<field>`` for any bad value."""
    variant = cfg["variant"]
    _check_choice("variant", variant, VARIANTS)
    _check_choice("init", cfg["init"], INIT_SCHEMES)
    _check_choice("group_impl", cfg["group_impl"], GROUP_IMPLS)
    _check_choice("dtype", cfg["dtype"], DTYPES)
    for field in ("num_classes", "in_channels", "image_size", "lrn_size"):
        value = cfg[field]
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"model.{field}={value!r} must be a positive integer.")
    image_size = cfg["image_size"]
    if variant in TWO_TOWER_VARIANTS:
        if image_size not in PAPER_IMAGE_SIZES:
            raise ValueError(
                f"model.image_size={image_size!r} is not supported by the {variant} variant; "
                f"use one of {_quoted(PAPER_IMAGE_SIZES)} (both give 55x55 after conv1)."
            )
    elif feature_map_size(variant, image_size) <= 0:
        raise ValueError(
            f"model.image_size={image_size!r} is too small for the {variant} variant: the "
            f"feature map vanishes before fc6; the minimum is {min_image_size(variant)}."
        )
    if not 0.0 <= cfg["dropout_rate"] < 1.0:
        raise ValueError(f"model.dropout_rate={cfg['dropout_rate']!r} must be in [0, 1).")


def create_model(*, tower_axis: str | None = None, fsdp_axis: str | None = None,
                 **model_kwargs) -> "AlexNet":
    """Build a validated AlexNet from ``config.model.*`` fields.

    Missing fields take ``default_model_config(variant)`` (variant defaults to 'paper').
    ``init`` is the config name of the module field ``init_scheme``; either is accepted.
    ``tower_axis`` / ``fsdp_axis`` are mesh axis names from ``config.parallel`` (see AlexNet);
    they change where the computation runs, never the parameters or the results.
    """
    kwargs = dict(model_kwargs)
    if "init_scheme" in kwargs:
        if "init" in kwargs:
            raise ValueError("Give model.init or init_scheme, not both.")
        kwargs["init"] = kwargs.pop("init_scheme")
    unknown = sorted(set(kwargs) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(
            f"Unknown model config field(s) {_quoted(unknown)}; "
            f"known fields: {_quoted(CONFIG_FIELDS)}."
        )
    cfg = {**default_model_config(kwargs.get("variant", "paper")), **kwargs}
    validate_model_config(cfg)
    if tower_axis is not None and cfg["variant"] not in TWO_TOWER_VARIANTS:
        raise ValueError(
            f"Model parallelism over two towers needs a two-tower variant "
            f"({_quoted(TWO_TOWER_VARIANTS)}), not model.variant={cfg['variant']!r}; "
            f"use parallel.model=1 for it.")
    cfg["init_scheme"] = cfg.pop("init")
    return AlexNet(**cfg, tower_axis=tower_axis, fsdp_axis=fsdp_axis)


# --------------------------------------------------------------------------------------
# Initializers
# --------------------------------------------------------------------------------------

Initializer = Callable[[jax.Array, tuple, Any], jax.Array]

# Layers whose bias the paper sets to 1 (Caffe: 0.1) so ReLUs start in their active part.
_POSITIVE_BIAS_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")


def _uniform(bound: float) -> Initializer:
    def init_fn(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init_fn


def layer_initializers(scheme: str, layer: str, fan_in: int) -> tuple[Initializer, Initializer]:
    """(kernel_init, bias_init) of ``layer`` under init ``scheme``.

    fan_in is kh*kw*in_channels/groups for convs and in_features for dense layers.
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
    raise ValueError(f"model.init={scheme!r} is not one of {_quoted(INIT_SCHEMES)}.")


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------

def resolve_group_impl(group_impl: str) -> str:
    """'auto' -> 'towers' on XLA:CPU (about 3x faster to train), else one grouped conv."""
    _check_choice("group_impl", group_impl, GROUP_IMPLS)
    if group_impl != "auto":
        return group_impl
    return "towers" if jax.default_backend() == "cpu" else "feature_group_count"


def _conv(x, kernel, stride: int, padding: int, groups: int):
    if padding == 0:
        # XLA:CPU runs unpadded ("VALID") convolutions on a slow path: conv1 at 227 (no
        # padding) trained about 2x slower than with padding (docs/model.md). Padding the
        # high side by one stride and cropping gives exactly the VALID result on the fast path.
        out_h = (x.shape[1] - kernel.shape[0]) // stride + 1
        out_w = (x.shape[2] - kernel.shape[1]) // stride + 1
        y = _lax_conv(x, kernel, stride, ((0, stride), (0, stride)), groups)
        return y[:, :out_h, :out_w, :]
    return _lax_conv(x, kernel, stride, ((padding, padding), (padding, padding)), groups)


def _lax_conv(x, kernel, stride: int, padding, groups: int):
    return jax.lax.conv_general_dilated(
        x, kernel,
        window_strides=(stride, stride),
        padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def grouped_conv(x, kernel, *, stride: int, padding: int, groups: int, impl: str):
    """Convolution with ``groups`` groups; kernel is HWIO with I = in_channels / groups.

    'feature_group_count' runs one XLA grouped conv; 'towers' runs one conv per group on
    the matching slices of input channels and kernel output channels, then concatenates.
    Both follow the same grouping (group g: inputs and outputs of the g-th slice).
    """
    if groups == 1 or impl == "feature_group_count":
        return _conv(x, kernel, stride, padding, groups)
    inputs = jnp.split(x, groups, axis=-1)
    kernels = jnp.split(kernel, groups, axis=-1)
    towers = [_conv(xi, ki, stride, padding, 1) for xi, ki in zip(inputs, kernels)]
    return jnp.concatenate(towers, axis=-1)


def local_response_norm(x, *, size: int = 5, k: float = 2.0, alpha: float = 1e-4,
                        beta: float = 0.75, alpha_divided_by_size: bool = True,
                        groups: int = 1):
    """Local response normalization across channels (last axis), within each group.

    b_c = a_c / (k + alpha' * sum_{c' in window(c)} a_c'^2) ** beta, where
    alpha' = alpha / size if alpha_divided_by_size else alpha. The window covers channels
    c - size//2 .. c + (size-1)//2 of the same group (PyTorch's LocalResponseNorm; for odd
    size it is centred on c). Channels of another group (tower) are never neighbours.
    Computed in float32 whatever the input dtype; returned in the input dtype.
    """
    channels = x.shape[-1]
    if channels % groups:
        raise ValueError(f"LRN: {channels} channels do not split into {groups} groups.")
    scale = alpha / size if alpha_divided_by_size else alpha
    return _lrn(x.astype(jnp.float32), size, k, scale, beta, groups).astype(x.dtype)


def _inverse_power(d, beta: float):
    if beta == 0.75:
        inv_sqrt = jax.lax.rsqrt(d)  # d^-0.75 = d^-0.5 * d^-0.25, no exp/log
        return inv_sqrt * jnp.sqrt(inv_sqrt)
    return jnp.power(d, -beta)


def _window_sum(values, band):
    """Per group (tower), the sum over each channel's window: a matmul with the group's band.

    One (C/groups)-wide band per group, not one block-diagonal C-wide band: half the FLOPs
    for two towers, and neighbours never cross a tower boundary by construction.
    """
    per_group = band.shape[0]
    grouped = values.reshape(values.shape[:-1] + (values.shape[-1] // per_group, per_group))
    # HIGHEST keeps the sum float32 on GPU/TPU too, where matmuls may default to bf16 passes.
    summed = jnp.einsum("...c,cd->...d", grouped, band, precision=jax.lax.Precision.HIGHEST)
    return summed.reshape(values.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5))
def _lrn(a, size: int, k: float, scale: float, beta: float, groups: int):
    return _lrn_forward(a, size, k, scale, beta, groups)[0]


def _lrn_forward(a, size, k, scale, beta, groups):
    # The window sum as a matmul with a 0/1 band matrix, one per group: a fast GEMM.
    denominator = k + scale * _window_sum(jnp.square(a), _lrn_band(a.shape[-1], size, groups))
    return a * _inverse_power(denominator, beta), (a, denominator)


def _lrn_backward(size, k, scale, beta, groups, residuals, grad):
    """d/da_j of sum_c g_c a_c d_c^-beta = g_j d_j^-beta
    - 2 scale beta a_j sum_{c: j in window(c)} g_c a_c d_c^(-beta-1).

    Written out, it trains faster on XLA:CPU than autodiff of the forward (docs/model.md)."""
    a, denominator = residuals
    band = _lrn_band(a.shape[-1], size, groups)
    inv_pow = _inverse_power(denominator, beta)
    spread = _window_sum(grad * a * inv_pow / denominator, band.T)
    return (grad * inv_pow - (2.0 * scale * beta) * a * spread,)


_lrn.defvjp(_lrn_forward, _lrn_backward)


def _lrn_band(channels: int, size: int, groups: int) -> jax.Array:
    """The band of one group: band[c', c] = 1 when channel c' is in the LRN window of c."""
    index = np.arange(channels // groups)
    offset = index[:, None] - index[None, :]  # c' - c
    in_window = (offset >= -(size // 2)) & (offset <= (size - 1) // 2)
    return jnp.asarray(in_window, jnp.float32)


def adaptive_avg_pool(x, output_size: int):
    """PyTorch's AdaptiveAvgPool2d on NHWC: bin i covers [floor(iH/n), ceil((i+1)H/n))."""
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
def max_pool(x):
    """Overlapping 3x3/2 max pooling, VALID.

    Forward: the maximum of the 9 strided views. Backward: a custom rule (above) instead of
    XLA's select-and-scatter, which is slow on XLA:CPU; together they cut the paper model's
    train step on CPU by about a fifth (docs/model.md). Values equal nn.max_pool exactly.
    """
    return _max_pool_forward(x)[0]


max_pool.defvjp(_max_pool_forward, _max_pool_backward)


# --------------------------------------------------------------------------------------
# Two towers on two devices (model parallelism, docs/parallel.md)
# --------------------------------------------------------------------------------------
#
# XLA's partitioner does not split a grouped convolution by its groups (measured: it
# all-gathers input, kernel and output), so the tower-local layers are written per device
# with `jax.shard_map`: each device of the tower axis holds one tower's channels and runs
# an ordinary convolution on them. The only communication is what the paper's GPUs did:
# conv3 and the fully connected layers all-gather their inputs from both towers.

def _context_mesh():
    """The (abstract) mesh in context, or None."""
    get = getattr(jax.sharding, "get_abstract_mesh", None)
    mesh = get() if get is not None else None
    return mesh if mesh is not None and mesh.axis_names else None


def tower_mesh(tower_axis: str | None):
    """The mesh in context when it has ``tower_axis``, else None.

    None means every layer runs as one program and XLA places it from the parameter
    shardings (same values): the case under ``Module.init``, in ``models.logits``, and in
    any jit that is not run under the mesh (``parallel.mesh_context``)."""
    if tower_axis is None:
        return None
    mesh = _context_mesh()
    if mesh is None or tower_axis not in mesh.axis_names:
        return None
    size = dict(zip(mesh.axis_names, mesh.axis_sizes))[tower_axis]
    if size != PAPER_TOWERS:
        raise ValueError(f"The mesh axis {tower_axis!r} has {size} devices; the two towers "
                         f"need exactly {PAPER_TOWERS}.")
    return mesh


def _batch_axes(mesh, tower_axis: str):
    """Mesh axes other than the tower axis: the batch is split over these."""
    axes = tuple(name for name in mesh.axis_names if name != tower_axis)
    return axes or None


def tower_conv(x, kernel, bias, *, stride: int, padding: int, groups: int, input_split: bool,
               mesh, tower_axis: str):
    """Conv with its output channels split over the towers, one tower per device.

    ``kernel`` (and ``bias``, or None) are the global arrays, split on their last axis.
    ``input_split``: ``x`` holds one tower's channels per device (after conv1). Grouped
    convs (groups=2) then stay local; a full conv (conv3) all-gathers both towers' inputs.
    """
    batch = _batch_axes(mesh, tower_axis)
    split = P(batch, None, None, tower_axis)
    if groups not in (1, PAPER_TOWERS) or (groups > 1 and not input_split):
        raise ValueError(f"tower_conv: {groups} groups do not map onto {PAPER_TOWERS} towers.")

    def body(x, kernel, *maybe_bias):
        if input_split and groups == 1:
            x = jax.lax.all_gather(x, tower_axis, axis=3, tiled=True)  # both towers' maps
        y = _conv(x, kernel, stride, padding, 1)  # one group per device
        return y + maybe_bias[0] if maybe_bias else y

    args = (x, kernel) + (() if bias is None else (bias,))
    in_specs = (split if input_split else P(batch), P(None, None, None, tower_axis),
                P(tower_axis))[:len(args)]
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=split)(*args)


def sharded_dense(x, kernel, bias, *, mesh, tower_axis: str | None, fsdp_axis: str | None,
                  gather_output: bool = False):
    """Dense layer, written per device.

    ``tower_axis``: the output features are split over the towers (the paper split every
    fully connected layer's neurons over its two GPUs); each device sees the whole input,
    and ``gather_output`` all-gathers the result (fc8: whole logits on every device).
    ``fsdp_axis``: the kernel's rows are stored sharded over this axis; each device gathers
    them for the matmul, and the transpose of that gather reduce-scatters the gradient back
    onto the shards (FSDP), instead of all-reducing a full-size gradient.
    """
    batch = _batch_axes(mesh, tower_axis) if tower_axis else (mesh.axis_names or None)

    def body(x, kernel, bias):
        if fsdp_axis is not None:
            kernel = jax.lax.all_gather(kernel, fsdp_axis, axis=0, tiled=True)
        return x @ kernel + bias

    y = jax.shard_map(
        body, mesh=mesh, in_specs=(P(batch, None), P(fsdp_axis, tower_axis), P(tower_axis)),
        out_specs=P(batch, tower_axis))(x, kernel, bias)
    if gather_output and tower_axis is not None:
        # The gathered logits are replicated over the towers; XLA's all-gather says so to the
        # partitioner (an all_gather inside shard_map would count as varying over the axis).
        return jax.lax.with_sharding_constraint(y, P(batch, None))
    return y


def tower_local(fn, x, *, mesh, tower_axis: str):
    """``fn`` applied to each tower's channels on its own device (LRN within a tower)."""
    split = P(_batch_axes(mesh, tower_axis), None, None, tower_axis)
    return jax.shard_map(fn, mesh=mesh, in_specs=split, out_specs=split)(x)


class Conv(nn.Module):
    """Square conv with HWIO kernel (kh, kw, in/groups, out) and bias, float32 params.

    ``input_split`` (tower mode only): the input already holds one tower per device.
    """

    features: int
    kernel_size: int
    stride: int
    padding: int
    groups: int
    group_impl: str
    init_scheme: str
    dtype: Any
    use_bias: bool = True
    tower_axis: str | None = None
    input_split: bool = True

    @nn.compact
    def __call__(self, x):
        in_channels = x.shape[-1]
        if in_channels % self.groups or self.features % self.groups:
            raise ValueError(f"{self.name}: channels {in_channels}->{self.features} "
                             f"do not split into {self.groups} groups.")
        shape = (self.kernel_size, self.kernel_size, in_channels // self.groups, self.features)
        kernel_init, bias_init = layer_initializers(
            self.init_scheme, self.name, fan_in=int(np.prod(shape[:-1])))
        kernel = self.param("kernel", kernel_init, shape, jnp.float32).astype(self.dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", bias_init, (self.features,), jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        mesh = None if self.is_initializing() else tower_mesh(self.tower_axis)
        if mesh is not None:
            return tower_conv(x, kernel, bias, stride=self.stride, padding=self.padding,
                              groups=self.groups, input_split=self.input_split, mesh=mesh,
                              tower_axis=self.tower_axis)
        y = grouped_conv(x, kernel, stride=self.stride, padding=self.padding,
                         groups=self.groups, impl=self.group_impl)
        return y if bias is None else y + bias


class Dense(nn.Module):
    """Dense layer with kernel (in, out) and bias, float32 params.

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


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------

class AlexNet(nn.Module):
    """AlexNet; fields are the ``config.model.*`` fields (``init`` -> ``init_scheme``).

    Call with NHWC float images (already normalized) and ``train``; dropout draws from
    the 'dropout' rng collection. Collections: 'params', and for alexnet_bn 'batch_stats'
    (running BN statistics: updated when ``train`` and ``mutable=['batch_stats']``, used
    when not ``train``). Logits are float32.
    Prefer ``create_model(**config.model)``, which validates and fills defaults.

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
    dropout_rate: float = 0.5
    dtype: str = "float32"
    group_impl: str = "auto"
    lrn_k: float = 2.0
    lrn_size: int = 5
    lrn_alpha: float = 1e-4
    lrn_beta: float = 0.75
    lrn_alpha_divided_by_size: bool = True
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
            raise ValueError(
                f"AlexNet expects NHWC images of shape (N, {expected[0]}, {expected[1]}, "
                f"{expected[2]}) from model.image_size={self.image_size} and "
                f"model.in_channels={self.in_channels}, got {tuple(images.shape)}."
            )

    def _record(self, stage: str, x) -> None:
        # Sown names may not equal submodule names, hence the suffix; layer_shapes strips it.
        self.sow("intermediates", stage + _STAGE_SUFFIX, x)

    def _lrn(self, x):
        lrn = functools.partial(
            local_response_norm, size=self.lrn_size, k=self.lrn_k, alpha=self.lrn_alpha,
            beta=self.lrn_beta, alpha_divided_by_size=self.lrn_alpha_divided_by_size)
        mesh = None if self.is_initializing() else tower_mesh(self.tower_axis)
        if mesh is not None:  # one tower per device: LRN is local to it
            return tower_local(functools.partial(lrn, groups=1), x, mesh=mesh,
                               tower_axis=self.tower_axis)
        return lrn(x, groups=PAPER_TOWERS)

    @nn.compact
    def __call__(self, images, *, train: bool):
        validate_model_config(self.config())
        self._check_images(images)
        dtype = jnp.dtype(self.dtype)
        group_impl = resolve_group_impl(self.group_impl)
        x = images.astype(dtype)

        batch_norm = self.variant in BATCH_NORM_VARIANTS
        for name, (features, kernel, stride, padding, groups) in _conv_specs(
                self.variant, self.image_size).items():
            # With BN after it a conv's bias is redundant (BN subtracts the mean): none.
            x = Conv(features, kernel, stride, padding, groups, group_impl,
                     self.init_scheme, dtype, use_bias=not batch_norm,
                     tower_axis=self.tower_axis, input_split=name != "conv1", name=name)(x)
            if batch_norm:  # before the ReLU, as Ioffe & Szegedy place it
                x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                                 epsilon=BN_EPSILON, dtype=dtype, param_dtype=jnp.float32,
                                 name=name.replace("conv", "bn"))(x)
            x = nn.relu(x)
            self._record(name, x)
            if self.variant == "paper" and name in ("conv1", "conv2"):
                x = self._lrn(x)  # after ReLU, before pooling, as in the paper
            if name in _POOLED_AFTER:
                x = max_pool(x)
                self._record(name.replace("conv", "pool"), x)

        if self.variant == "torchvision":
            x = adaptive_avg_pool(x, TORCHVISION_POOL_OUTPUT)
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


# --------------------------------------------------------------------------------------
# Functional facade
# --------------------------------------------------------------------------------------

def _dummy_images(model: AlexNet, batch: int = 1):
    return jnp.zeros((batch, model.image_size, model.image_size, model.in_channels),
                     jnp.float32)


def init(variant: str, seed: int, **model_kwargs) -> dict:
    """Fresh parameters: the pytree under 'params' (what the trainer checkpoints).

    ``model_kwargs`` are ``config.model.*`` fields; missing ones take the variant defaults.
    Deterministic in ``seed`` (threefry), whatever the backend. Batch statistics (alexnet_bn)
    are not parameters: ``init_batch_stats`` gives their initial values.
    """
    return _jitted_init(_init_cache_key(variant, model_kwargs))(jax.random.key(seed))


def init_batch_stats(variant: str, **model_kwargs) -> dict:
    """Initial running statistics, the 'batch_stats' collection: for alexnet_bn
    ``{'bn1': {'mean': zeros, 'var': ones}, ...}``; ``{}`` for variants without BN."""
    if variant not in BATCH_NORM_VARIANTS:
        create_model(variant=variant, **model_kwargs)  # still validate the fields
        return {}
    model = create_model(variant=variant, **model_kwargs)
    variables = jax.eval_shape(
        lambda: model.init({"params": jax.random.key(0)}, _dummy_images(model), train=False))
    # BN's running mean starts at 0 and its running variance at 1 (flax's defaults).
    return {layer: {"mean": jnp.zeros(v["mean"].shape, jnp.float32),
                    "var": jnp.ones(v["var"].shape, jnp.float32)}
            for layer, v in variables["batch_stats"].items()}


# Jitted functions are cached per model config: a fresh jax.jit per call would recompile.
# Keys are full configs with 'auto' resolved, so equivalent spellings share one compile.
def _logits_cache_key(variant: str, model_kwargs: Mapping) -> tuple:
    cfg = create_model(variant=variant, **model_kwargs).config()
    cfg["group_impl"] = resolve_group_impl(cfg["group_impl"])
    return tuple(sorted(cfg.items()))


# Fields that change neither the parameter shapes nor their initial values.
_FORWARD_ONLY_FIELDS = ("dropout_rate", "dtype", "group_impl", "lrn_k", "lrn_size",
                        "lrn_alpha", "lrn_beta", "lrn_alpha_divided_by_size")


def _init_cache_key(variant: str, model_kwargs: Mapping) -> tuple:
    cfg = create_model(variant=variant, **model_kwargs).config()
    defaults = default_model_config(variant)
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
    """Eval-mode float32 logits for NHWC float32 normalized ``images`` (jitted, cached).

    alexnet_bn needs ``batch_stats`` (its running BN statistics, e.g. from a checkpoint's
    state['batch_stats'] or ``init_batch_stats``): eval mode normalizes with them."""
    key = _logits_cache_key(variant, model_kwargs)
    if variant in BATCH_NORM_VARIANTS and not batch_stats:
        raise ValueError(f"The {variant} variant normalizes with its running batch "
                         "statistics in eval mode: pass batch_stats=... (a checkpoint's "
                         "state['batch_stats'], or models.init_batch_stats(variant)).")
    return _jitted_logits(key)(params, batch_stats or {}, jnp.asarray(images, jnp.float32))


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


def layer_shapes(variant: str, **model_kwargs) -> dict[str, tuple]:
    """Per-example output shape (H, W, C) or (features,) of every stage, in order.

    Stages: conv1 (after ReLU), pool1, conv2, pool2, conv3, conv4, conv5, pool5,
    avgpool (torchvision only), flatten, fc6, fc7, fc8. Computed abstractly (no FLOPs).
    """
    model = create_model(variant=variant, **model_kwargs)

    def forward():
        images = _dummy_images(model)
        variables = model.init({"params": jax.random.key(0)}, images, train=False)
        _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
        return state["intermediates"]

    sown = jax.eval_shape(forward)
    # sow stores a tuple of values per name; pytrees come back with sorted keys.
    shapes = {name.removesuffix(_STAGE_SUFFIX): tuple(values[0].shape[1:])
              for name, values in sown.items()}
    return {stage: shapes[stage] for stage in STAGES if stage in shapes}
