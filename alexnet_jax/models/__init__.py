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
- ``presets.py``: the variant table and every ``config.model`` field's default;
- ``factory.py``: ``create_model`` (validation, once), ``resolve_kernels`` / ``resolve_dtype``
  (the one place that picks forms per backend), ``check_parallel``, ``partition_specs``;
- ``functional.py``: the functional facade and the layer functions;
- here: the names handed on.

Model parallelism (docs/parallel.md): with ``tower_axis`` set and a mesh with that axis in
context, each device of the axis computes one tower, as the paper's two GPUs did. Parameters
are the same arrays either way.

Functional facade: see ``functional.py``.

See docs/model.md for the design notes (LRN convention, 224 vs 227, init, kernel forms).
"""

from alexnet_jax.models.alexnet import (
    BN_EPSILON, BN_MOMENTUM, FC_HIDDEN, KERNEL_PRESETS, KERNELS, LAYER_FORMS, LAYER_NAMES,
    POOLED_AFTER, STAGE_SUFFIX, STAGES, TORCHVISION_POOL_OUTPUT, AlexNet, Conv, Dense,
    LayerForms, conv_out, conv_specs, kernel_forms, layer_form_names, parse_kernels)
from alexnet_jax.models.factory import (
    KernelChoice, check_parallel, create_model, feature_map_size, min_image_size,
    partition_specs, resolve_dtype, resolve_group_impl, resolve_kernels, validate_model_config)
from alexnet_jax.models.functional import (
    count_params, grouped_conv, init, init_batch_stats, layer_shapes, local_response_norm,
    logits, max_pool, variables)
from alexnet_jax.models.initializers import INIT_SCHEMES, Initializer, layer_initializers
from alexnet_jax.models.layers import POOL_STRIDE, POOL_WINDOW, adaptive_avg_pool
from alexnet_jax.models.presets import (
    BATCH_NORM_VARIANTS, CONFIG_FIELDS, DTYPE_CHOICES, DTYPES, FSDP_LAYERS, GROUP_IMPLS,
    PAPER_IMAGE_SIZES, TWO_TOWER_VARIANTS, VARIANTS, model_preset)
from alexnet_jax.models.towers import (PAPER_TOWERS, sharded_dense, tower_conv, tower_local,
                                       tower_mesh)

__all__ = [
    "adaptive_avg_pool", "AlexNet", "BATCH_NORM_VARIANTS", "BN_EPSILON", "BN_MOMENTUM",
    "check_parallel", "CONFIG_FIELDS", "Conv", "conv_out", "conv_specs", "count_params",
    "create_model", "Dense", "DTYPE_CHOICES", "DTYPES", "FC_HIDDEN", "feature_map_size",
    "FSDP_LAYERS", "GROUP_IMPLS", "grouped_conv", "init", "init_batch_stats", "INIT_SCHEMES",
    "Initializer", "kernel_forms", "KERNEL_PRESETS", "KernelChoice", "KERNELS",
    "layer_form_names", "LAYER_FORMS", "layer_initializers", "LAYER_NAMES", "layer_shapes",
    "LayerForms", "local_response_norm", "logits", "max_pool", "min_image_size", "model_preset",
    "PAPER_IMAGE_SIZES", "PAPER_TOWERS", "parse_kernels", "partition_specs", "POOL_STRIDE",
    "POOL_WINDOW", "POOLED_AFTER", "resolve_dtype", "resolve_group_impl", "resolve_kernels",
    "sharded_dense", "STAGE_SUFFIX", "STAGES", "TORCHVISION_POOL_OUTPUT", "tower_conv",
    "tower_local", "tower_mesh", "TWO_TOWER_VARIANTS", "validate_model_config", "variables",
    "VARIANTS",
]
