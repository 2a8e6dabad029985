"""The variant table and every `config.model.*` field's default: the one home of both.

config_base builds `config.model` from `model_preset('paper')`; configs/ change fields;
`create_model` fills the fields a caller leaves out from here.
Sources of the values: docs/model.md (paper, LRN convention, 224 vs 227, init schemes).
"""

from __future__ import annotations

from alexnet_jax.errors import UserError

VARIANTS = ("paper", "torchvision", "d2l", "alexnet_bn")
# Variants built of the paper's two towers (grouped conv2/4/5): the ones model parallelism
# over a two-device 'model' axis can split the way the paper split them over two GPUs.
TWO_TOWER_VARIANTS = ("paper", "alexnet_bn")
# Variants with batch normalization, hence a 'batch_stats' collection.
BATCH_NORM_VARIANTS = ("alexnet_bn",)
# Dense layers whose kernels parallel.fsdp shards over the data axis (90% of the parameters).
FSDP_LAYERS = ("fc6", "fc7")
DTYPES = ("float32", "bfloat16")
# What model.dtype takes: a dtype, or "auto" (resolve_dtype picks one per backend).
DTYPE_CHOICES = ("auto",) + DTYPES
GROUP_IMPLS = ("auto", "towers", "feature_group_count", "tower_arrays")
PAPER_IMAGE_SIZES = (224, 227)


def model_preset(variant: str) -> dict:
  """Every `config.model.*` field with its default for `variant`: a fresh dict of Python
  scalars (str, int, float, bool). Raises UserError naming `model.variant` for a variant not
  in VARIANTS."""
  if variant not in VARIANTS:
    raise UserError(f"model.variant={variant!r} is not one of "
                    f"{', '.join(repr(v) for v in VARIANTS)}.")
  per_variant = {
      # The paper states 224x224 inputs; 227 (Caffe's choice) is also supported.
      "paper": dict(num_classes=1000, in_channels=3, image_size=224, init="paper"),
      # torchvision.models.alexnet and PyTorch's default init.
      "torchvision": dict(num_classes=1000, in_channels=3, image_size=224, init="torch"),
      # Dive into Deep Learning: Fashion-MNIST (1 channel, 10 classes) upsampled to 224.
      "d2l": dict(num_classes=10, in_channels=1, image_size=224, init="xavier"),
      # You et al. (2017) started from Caffe's BVLC AlexNet, hence its init (docs/model.md).
      "alexnet_bn": dict(num_classes=1000, in_channels=3, image_size=224, init="caffe"),
  }[variant]
  return dict(
      variant=variant,  # paper | torchvision | d2l | alexnet_bn
      num_classes=per_variant["num_classes"],
      in_channels=per_variant["in_channels"],
      image_size=per_variant["image_size"],  # paper, alexnet_bn: 224 or 227 only
      dropout_rate=0.5,  # on fc6/fc7, train only
      # Compute dtype: auto (bfloat16 on GPU/TPU, float32 on CPU; models.resolve_dtype) |
      # float32 | bfloat16. Parameters stay float32.
      dtype="auto",
      init=per_variant["init"],  # paper | caffe | xavier | torch
      # How the 2-group convs run: auto | towers (one conv per group, concatenated) |
      # feature_group_count (one XLA grouped conv) | tower_arrays (the towers stay separate
      # arrays between convs). auto picks per backend (docs/model.md).
      group_impl="auto",
      # Which forms of conv, LRN and max pool run: auto | plain (XLA's own ops) | cpu (forms
      # measured faster on XLA:CPU) | gpu (fewer bytes on XLA:GPU), optionally with per-layer
      # forms, e.g. 'gpu,pool=plain'. auto picks per backend; same parameters and (to float
      # rounding) same values either way (docs/model.md, "Kernel forms per backend").
      kernels="auto",
      lrn_k=2.0,
      lrn_size=5,
      lrn_alpha=1e-4,
      lrn_beta=0.75,
      lrn_alpha_divided_by_size=True,  # cuda-convnet, Caffe, PyTorch; see docs/model.md
  )


# Config field names as they appear under config.model.*. The module field for `init` is
# called `init_scheme`, because a field named `init` would shadow `nn.Module.init`.
CONFIG_FIELDS = tuple(model_preset("paper"))
