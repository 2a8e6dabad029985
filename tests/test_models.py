"""Tests of alexnet_jax.models: shapes, parameter counts, LRN, towers, dtype, init, dropout,
config defaults (models.model_preset) and errors."""

from __future__ import annotations

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import config_base, models

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "golden"))
import make_golden as golden  # noqa: E402  (shares params and compiles with test_convert)

PAPER_PARAMS = 60_965_224
TORCHVISION_PARAMS = 61_100_840
D2L_PARAMS = 46_764_746


def random_images(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def abstract_params(variant, **kwargs):
  return jax.eval_shape(lambda: models.init(variant, 0, **kwargs))


# --------------------------------------------------------------------------------------
# Shapes and parameter counts
# --------------------------------------------------------------------------------------

PAPER_SHAPES = {
    "conv1": (55, 55, 96), "pool1": (27, 27, 96), "conv2": (27, 27, 256),
    "pool2": (13, 13, 256), "conv3": (13, 13, 384), "conv4": (13, 13, 384),
    "conv5": (13, 13, 256), "pool5": (6, 6, 256), "flatten": (9216,),
    "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
}
TORCHVISION_SHAPES = {
    "conv1": (55, 55, 64), "pool1": (27, 27, 64), "conv2": (27, 27, 192),
    "pool2": (13, 13, 192), "conv3": (13, 13, 384), "conv4": (13, 13, 256),
    "conv5": (13, 13, 256), "pool5": (6, 6, 256), "avgpool": (6, 6, 256),
    "flatten": (9216,), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
}
D2L_SHAPES = {
    "conv1": (54, 54, 96), "pool1": (26, 26, 96), "conv2": (26, 26, 256),
    "pool2": (12, 12, 256), "conv3": (12, 12, 384), "conv4": (12, 12, 384),
    "conv5": (12, 12, 256), "pool5": (5, 5, 256), "flatten": (6400,),
    "fc6": (4096,), "fc7": (4096,), "fc8": (10,),
}


@pytest.mark.parametrize("variant, kwargs, expected", [
    ("paper", {"image_size": 224}, PAPER_SHAPES),
    ("paper", {"image_size": 227}, PAPER_SHAPES),
    ("torchvision", {}, TORCHVISION_SHAPES),
    ("d2l", {}, D2L_SHAPES),
])
def test_layer_shapes(variant, kwargs, expected):
  assert models.layer_shapes(variant, **kwargs) == expected


def test_torchvision_adaptive_pool_restores_6x6_at_other_sizes():
  shapes = models.layer_shapes("torchvision", image_size=100)
  assert shapes["pool5"] == (2, 2, 256)
  assert shapes["avgpool"] == (6, 6, 256) and shapes["flatten"] == (9216,)


def test_d2l_fc6_input_follows_image_size():
  assert models.layer_shapes("d2l", image_size=96)["flatten"] == (256,)


@pytest.mark.parametrize("variant, kwargs, expected", [
    ("paper", {}, PAPER_PARAMS),
    ("paper", {"image_size": 227}, PAPER_PARAMS),
    ("torchvision", {}, TORCHVISION_PARAMS),
    ("d2l", {}, D2L_PARAMS),
])
def test_parameter_counts(variant, kwargs, expected):
  assert models.count_params(abstract_params(variant, **kwargs)) == expected


def test_parameter_tree_is_the_same_for_both_group_impls():
  towers = abstract_params("paper", group_impl="towers")
  grouped = abstract_params("paper", group_impl="feature_group_count")
  assert jax.tree_util.tree_structure(towers) == jax.tree_util.tree_structure(grouped)
  assert list(towers) == list(models.LAYER_NAMES)
  assert towers["conv2"]["kernel"].shape == (5, 5, 48, 256)  # in/groups
  assert towers["conv3"]["kernel"].shape == (3, 3, 256, 384)  # full
  assert towers["fc6"]["kernel"].shape == (9216, 4096)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(towers))


def test_only_params_collection():
  model = models.create_model(variant="d2l")
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 1)), train=False))
  assert set(variables) == {"params"}


# --------------------------------------------------------------------------------------
# LRN
# --------------------------------------------------------------------------------------

def lrn_loop(x, size, k, alpha, beta, divided, groups):
  """Direct loop over the formula, per channel, neighbours within the same group."""
  x = np.asarray(x, np.float64)
  channels = x.shape[-1]
  width = channels // groups
  scale = alpha / size if divided else alpha
  out = np.empty_like(x)
  for c in range(channels):
    group_start = (c // width) * width
    lo = max(group_start, c - size // 2)
    hi = min(group_start + width - 1, c + (size - 1) // 2)
    total = np.sum(x[..., lo:hi + 1] ** 2, axis=-1)
    out[..., c] = x[..., c] / (k + scale * total) ** beta
  return out


@pytest.mark.parametrize("kernels", ["plain", "cpu"])
@pytest.mark.parametrize("divided", [True, False])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("size", [5, 3, 4])
def test_lrn_matches_loop(divided, groups, size, kernels):
  x = 3.0 * np.asarray(random_images((2, 3, 4, 16), seed=size))
  kwargs = dict(size=size, k=1.5, alpha=0.3, beta=0.75)
  got = models.local_response_norm(jnp.asarray(x), alpha_divided_by_size=divided,
                                   groups=groups, kernels=kernels, **kwargs)
  want = lrn_loop(x, divided=divided, groups=groups, **kwargs)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_lrn_conventions_differ_by_factor_size():
  x = jnp.asarray(3.0 * np.asarray(random_images((1, 2, 2, 8))))
  divided = models.local_response_norm(x, alpha=0.5, alpha_divided_by_size=True)
  undivided = models.local_response_norm(x, alpha=0.5 / 5, alpha_divided_by_size=False)
  np.testing.assert_allclose(divided, undivided, rtol=1e-6)


def test_lrn_does_not_cross_tower_boundary():
  x = np.ones((1, 1, 1, 8), np.float32)
  bumped = x.copy()
  bumped[..., 4] = 10.0  # first channel of the second tower
  kwargs = dict(size=5, k=1.0, alpha=1.0)
  base = np.asarray(models.local_response_norm(jnp.asarray(x), groups=2, **kwargs))
  after = np.asarray(models.local_response_norm(jnp.asarray(bumped), groups=2, **kwargs))
  np.testing.assert_array_equal(after[..., :4], base[..., :4])  # tower 1 unaffected
  assert after[..., 5] < base[..., 5]  # a neighbour in tower 2 is normalized down
  # Without towers the last channel of the first half does see it.
  single = np.asarray(models.local_response_norm(jnp.asarray(bumped), groups=1, **kwargs))
  assert single[..., 3] < base[..., 3]


def test_lrn_computes_in_float32_for_bfloat16_inputs():
  x = jnp.asarray(4.0 * np.asarray(random_images((2, 3, 3, 8))))
  out = models.local_response_norm(x.astype(jnp.bfloat16), k=1.0, alpha=1.0, groups=2)
  assert out.dtype == jnp.bfloat16
  want = models.local_response_norm(x.astype(jnp.bfloat16).astype(jnp.float32),
                                    k=1.0, alpha=1.0, groups=2)
  np.testing.assert_array_equal(out, want.astype(jnp.bfloat16))


# --------------------------------------------------------------------------------------
# Grouped convolution: towers vs feature_group_count
# --------------------------------------------------------------------------------------

def test_grouped_conv_impls_agree_with_per_group_reference():
  x = random_images((2, 9, 9, 6), seed=1)
  kernel = random_images((3, 3, 3, 4), seed=2)  # 2 groups: 6 -> 4 channels
  towers = models.grouped_conv(x, kernel, stride=2, padding=1, groups=2, impl="towers")
  grouped = models.grouped_conv(x, kernel, stride=2, padding=1, groups=2,
                                impl="feature_group_count")
  reference = jnp.concatenate([
      jax.lax.conv_general_dilated(x[..., 3 * g:3 * g + 3], kernel[..., 2 * g:2 * g + 2],
                                   (2, 2), ((1, 1), (1, 1)),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
      for g in range(2)], axis=-1)
  np.testing.assert_allclose(towers, reference, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grouped, reference, rtol=1e-5, atol=1e-5)


def test_auto_group_impl_follows_resolve_kernels():
  expected = "feature_group_count" if jax.default_backend() not in ("cpu", "gpu") else "towers"
  assert models.resolve_group_impl("auto") == expected
  assert models.resolve_group_impl("feature_group_count") == "feature_group_count"


def test_paper_towers_equal_feature_group_count():
  kwargs = golden.CASES["paper_227_strong_lrn"][1]  # LRN nonlinearity clearly visible
  params = golden.case_params("paper_227_strong_lrn")
  images = random_images((2, 227, 227, 3), seed=3)
  towers = models.logits("paper", params, images, group_impl="towers", **kwargs)
  grouped = models.logits("paper", params, images, group_impl="feature_group_count",
                          **kwargs)
  assert float(jnp.std(towers)) > 1e-3  # the comparison is not between near-zeros
  np.testing.assert_allclose(towers, grouped, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------
# dtype
# --------------------------------------------------------------------------------------

def test_bfloat16_compute_keeps_float32_params_and_logits():
  kwargs = golden.CASES["paper_224"][1]
  params = golden.case_params("paper_224")
  images = random_images((2, 224, 224, 3), seed=4)
  model = models.create_model(variant="paper", dtype="bfloat16", **kwargs)
  fresh = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(fresh))
  low = models.logits("paper", params, images, dtype="bfloat16", **kwargs)
  high = models.logits("paper", params, images, **kwargs)
  assert low.dtype == jnp.float32 and low.shape == (2, 1000)
  assert np.all(np.isfinite(low))
  # bfloat16 has 8 mantissa bits: agree to a few percent of the logits' spread.
  assert float(jnp.max(jnp.abs(low - high))) < 0.1 * float(jnp.std(high)) + 1e-3


# --------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------

def layer_biases(params):
  return {name: np.unique(np.asarray(params[name]["bias"])) for name in models.LAYER_NAMES}


def test_paper_init_biases_and_weight_std():
  params = models.init("paper", 0)  # the paper variant's default init: 'paper'
  biases = layer_biases(params)
  for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
    np.testing.assert_array_equal(biases[name], [1.0])
  for name in ("conv1", "conv3", "fc8"):
    np.testing.assert_array_equal(biases[name], [0.0])
  for name in models.LAYER_NAMES:
    kernel = np.asarray(params[name]["kernel"])
    assert abs(kernel.std() - 0.01) < 0.0005, name
    assert abs(kernel.mean()) < 0.001, name


def test_caffe_init():
  for layer in models.LAYER_NAMES:
    kernel_init, bias_init = models.layer_initializers("caffe", layer, fan_in=100)
    kernel = np.asarray(kernel_init(jax.random.key(0), (256, 1024), jnp.float32))
    std = 0.005 if layer in ("fc6", "fc7") else 0.01
    assert abs(kernel.std() - std) < 0.03 * std, layer
    bias = 0.1 if layer in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
    np.testing.assert_allclose(bias_init(jax.random.key(0), (3,), jnp.float32), bias)


def test_torch_init_is_uniform_in_one_over_sqrt_fan_in():
  params = golden.case_params("torchvision_224")  # torchvision's default init: 'torch'
  for name, fan_in in (("conv1", 3 * 121), ("conv2", 64 * 25), ("fc6", 9216)):
    bound = 1 / np.sqrt(fan_in) * (1 + 1e-6)  # float32 rounding of the bound
    kernel = np.asarray(params[name]["kernel"])
    bias = np.asarray(params[name]["bias"])
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.05 * bound, name


def glorot_bound(kernel_shape):
  receptive = int(np.prod(kernel_shape[:-2]))
  fan_in, fan_out = kernel_shape[-2] * receptive, kernel_shape[-1] * receptive
  return np.sqrt(6.0 / (fan_in + fan_out))


def test_xavier_init_is_glorot_uniform_with_zero_bias():
  params = golden.case_params("d2l_224")  # d2l's default init: 'xavier'
  for name in models.LAYER_NAMES:
    kernel = np.asarray(params[name]["kernel"])
    bound = glorot_bound(kernel.shape)
    assert np.abs(kernel).max() <= bound * (1 + 1e-6), name
    assert abs(kernel.std() - bound / np.sqrt(3)) < 0.1 * bound, name
    np.testing.assert_array_equal(params[name]["bias"], 0.0)


def test_init_uses_grouped_fan_in():
  kernel = np.asarray(golden.case_params("paper_224")["conv2"]["kernel"])
  bound = glorot_bound(kernel.shape)  # fan_in 48*25: 96 inputs in 2 groups
  assert kernel.shape == (5, 5, 48, 256)
  assert 0.99 * bound < np.abs(kernel).max() <= bound * (1 + 1e-6)


# --------------------------------------------------------------------------------------
# Dropout
# --------------------------------------------------------------------------------------

def test_dropout_only_in_train():
  model = models.create_model(variant="d2l")
  images = random_images((2, 224, 224, 1), seed=5)
  params = golden.case_params("d2l_224")
  forward = jax.jit(model.apply, static_argnames="train")

  def apply(train, rng=None, module=forward):
    rngs = {"dropout": jax.random.key(rng)} if rng is not None else {}
    return np.asarray(module({"params": params}, images, train=train, rngs=rngs))

  eval_out = apply(False)
  np.testing.assert_array_equal(eval_out, apply(False, rng=1))
  train_a, train_b = apply(True, rng=1), apply(True, rng=2)
  assert not np.allclose(train_a, eval_out)
  assert not np.allclose(train_a, train_b)
  np.testing.assert_array_equal(train_a, apply(True, rng=1))
  no_dropout = models.create_model(variant="d2l", dropout_rate=0.0)
  no_dropout_forward = jax.jit(no_dropout.apply, static_argnames="train")
  np.testing.assert_allclose(apply(True, rng=1, module=no_dropout_forward), eval_out,
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant, image_size", [("d2l", 65), ("torchvision", 63)])
def test_dropout_placement(variant, image_size):
  """Paper/d2l drop fc6's and fc7's outputs; torchvision drops their inputs."""
  model = models.create_model(variant=variant, image_size=image_size, num_classes=10)
  images = random_images((1, image_size, image_size, model.in_channels), seed=6)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  # Constant positive weights make every fc6 ReLU output positive: zeros come from dropout.
  variables = jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)
  _, state = model.apply(variables, jnp.abs(images), train=True,
                         rngs={"dropout": jax.random.key(0)}, mutable=["intermediates"])
  fc6 = np.asarray(state["intermediates"]["fc6_output"][0])
  zero_fraction = np.mean(fc6 == 0.0)
  if variant == "d2l":
    assert 0.4 < zero_fraction < 0.6
  else:
    assert zero_fraction == 0.0


# --------------------------------------------------------------------------------------
# Config, facade and errors
# --------------------------------------------------------------------------------------

def test_default_configs():
  assert models.VARIANTS == ("paper", "torchvision", "d2l", "alexnet_bn")
  paper = models.model_preset("paper")
  assert (paper["num_classes"], paper["in_channels"], paper["image_size"],
          paper["init"]) == (1000, 3, 224, "paper")
  tv = models.model_preset("torchvision")
  assert (tv["num_classes"], tv["in_channels"], tv["image_size"], tv["init"]) == (
      1000, 3, 224, "torch")
  d2l = models.model_preset("d2l")
  assert (d2l["num_classes"], d2l["in_channels"], d2l["image_size"], d2l["init"]) == (
      10, 1, 224, "xavier")
  assert set(paper) == set(models.CONFIG_FIELDS)
  assert paper["lrn_alpha_divided_by_size"] is True and paper["group_impl"] == "auto"
  assert paper["kernels"] == "auto"
  bn = models.model_preset("alexnet_bn")
  assert (bn["num_classes"], bn["in_channels"], bn["image_size"], bn["init"]) == (
      1000, 3, 224, "caffe")


def test_model_defaults_have_one_home_in_models():
  assert config_base.base_config().model.to_dict() == models.model_preset("paper")
  with pytest.raises(ValueError, match="model.variant='vgg' is not one of"):
    models.model_preset("vgg")
  # AlexNet itself has no defaults for config fields: create_model fills them.
  with pytest.raises(TypeError):
    models.AlexNet(variant="paper")


def test_configs_load_and_build_a_model():
  import importlib.util
  root = pathlib.Path(__file__).resolve().parents[1] / "configs"
  for path in sorted(root.glob("*.py")):
    spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert set(config.model) == set(models.CONFIG_FIELDS), path.name
    models.create_model(**config.model.to_dict())


def test_create_model_fills_defaults_and_round_trips_config():
  model = models.create_model(variant="d2l", num_classes=7)
  assert model.init_scheme == "xavier" and model.in_channels == 1
  cfg = model.config()
  assert cfg["num_classes"] == 7 and cfg["init"] == "xavier"
  assert models.create_model(**cfg) == model


def test_logits_facade_matches_apply():
  model = models.create_model(variant="d2l")
  images = random_images((2, 224, 224, 1), seed=7)
  params = golden.case_params("d2l_224")
  want = model.apply({"params": params}, images, train=False)
  got = models.logits("d2l", params, images)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_init_is_deterministic_in_seed():
  golden_params = golden.case_params("d2l_224")
  # Same seed, a forward-only field changed: same parameters.
  again = models.init("d2l", golden.GOLDEN_SEED, dtype="bfloat16")
  other = models.init("d2l", golden.GOLDEN_SEED + 1)
  np.testing.assert_array_equal(again["fc6"]["kernel"], golden_params["fc6"]["kernel"])
  assert not np.array_equal(other["conv1"]["kernel"], golden_params["conv1"]["kernel"])


@pytest.mark.parametrize("field, value, message", [
    ("variant", "foo",
     "model.variant='foo' is not one of 'paper', 'torchvision', 'd2l', 'alexnet_bn'"),
    ("init", "he", "model.init='he' is not one of 'paper', 'caffe', 'xavier', 'torch'"),
    ("group_impl", "split", "model.group_impl='split' is not one of"),
  ("kernels", "fast", "model.kernels='fast' is not one of 'auto', 'plain', 'cpu'"),
    ("dtype", "float16", "model.dtype='float16' is not one of 'auto', 'float32', 'bfloat16'"),
    ("dropout_rate", 1.0, "model.dropout_rate=1.0"),
    ("num_classes", 0, "model.num_classes=0"),
])
def test_bad_config_values_name_the_field(field, value, message):
  with pytest.raises(ValueError) as err:
    models.create_model(**{field: value})
  assert message in str(err.value)


def test_paper_image_size_must_be_224_or_227():
  with pytest.raises(ValueError, match=r"model.image_size=256.*224, 227"):
    models.create_model(variant="paper", image_size=256)


def test_too_small_image_size_names_the_minimum():
  with pytest.raises(ValueError, match=r"model.image_size=32.*minimum is 65"):
    models.create_model(variant="d2l", image_size=32)
  assert models.feature_map_size("d2l", 64) == 0 and models.feature_map_size("d2l", 65) == 1
  with pytest.raises(ValueError, match="minimum is 63"):
    models.create_model(variant="torchvision", image_size=62)


def test_unknown_config_field():
  with pytest.raises(ValueError, match="Unknown model config field.*'num_class'"):
    models.create_model(variant="paper", num_class=10)


def test_images_must_match_config():
  model = models.create_model(variant="d2l")
  with pytest.raises(ValueError, match=r"model.image_size=224.*got \(1, 224, 224, 3\)"):
    model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)


def test_auto_dtype_is_bfloat16_on_accelerators_and_float32_on_cpu():
  assert models.resolve_dtype("auto", "gpu")[0] == "bfloat16"
  assert models.resolve_dtype("auto", "tpu")[0] == "bfloat16"
  assert models.resolve_dtype("auto", "cpu")[0] == "float32"
  assert models.resolve_dtype("bfloat16", "cpu") == ("bfloat16", "set by model.dtype")
  assert models.model_preset("paper")["dtype"] == "auto"
  # The tests run on the CPU: a model built with the default computes in float32.
  assert models.create_model(variant="d2l", image_size=96).dtype == "float32"
