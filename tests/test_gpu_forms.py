"""The GPU layer forms (models/gpu_kernels.py, group_impl='tower_arrays') equal the plain
forms in value and gradient, on CPU: float32 to a tight tolerance, bfloat16 loosely; and
model.kernels' per-layer vocabulary resolves and fails as documented (docs/model.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import models, sharding
from alexnet_jax.models import cpu_kernels, gpu_kernels, layers

F32_RTOL = 2e-5  # float32, relative to the largest magnitude of the compared array
BF16_RTOL = 3e-2  # bfloat16 (8 mantissa bits), same measure


def assert_close(got, want, rtol):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = np.max(np.abs(want)) + 1e-30
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def value_and_grad(fn, x, seed=7):
  """fn(x) and the gradient of <fn(x), w> for a fixed random cotangent w, in one jit."""
  shape = jax.eval_shape(fn, x)
  weights = jax.random.normal(jax.random.key(seed), shape.shape).astype(shape.dtype)

  def both(x):
    out, vjp = jax.vjp(fn, x)
    return out, vjp(weights)[0]

  return jax.jit(both)(x)


LRN_CASES = [  # size, k, alpha, beta, alpha_divided_by_size, groups
    (5, 2.0, 1e-4, 0.75, True, 2),  # the paper's constants, two towers
    (5, 1.0, 5.0, 0.75, True, 2),  # strong normalization: the gradient's spread term matters
    (5, 2.0, 2.0, 0.75, False, 1),  # the printed-formula convention, one group
    (4, 1.0, 3.0, 0.6, True, 2),  # even window (asymmetric: its mirror differs), general beta
]


def lrn_kwargs(case):
  size, k, alpha, beta, divided, groups = case
  return dict(size=size, k=k, alpha=alpha, beta=beta, alpha_divided_by_size=divided,
              groups=groups)


# --------------------------------------------------------------------------------------
# LRN that keeps only its input
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", LRN_CASES)
def test_lrn_recompute_equals_plain_float32(case):
  x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 6, 24))
  plain = value_and_grad(functools.partial(layers.local_response_norm, **lrn_kwargs(case)), x)
  ours = value_and_grad(functools.partial(gpu_kernels.local_response_norm, **lrn_kwargs(case)),
                        x)
  assert_close(ours[0], plain[0], 1e-6)  # the same formula, the power as one op
  assert_close(ours[1], plain[1], F32_RTOL)


@pytest.mark.parametrize("case", LRN_CASES[:2])
def test_lrn_recompute_equals_plain_bfloat16(case):
  x = (3.0 * jax.random.normal(jax.random.key(1), (2, 5, 6, 24))).astype(jnp.bfloat16)
  plain = value_and_grad(functools.partial(layers.local_response_norm, **lrn_kwargs(case)), x)
  ours = value_and_grad(functools.partial(gpu_kernels.local_response_norm, **lrn_kwargs(case)),
                        x)
  assert ours[0].dtype == ours[1].dtype == jnp.bfloat16
  assert_close(ours[0], plain[0], BF16_RTOL)
  assert_close(ours[1], plain[1], BF16_RTOL)


def residuals(fn, x):
  """(shape, dtype) of every array the backward pass of fn keeps (the vjp's leaves)."""
  return [(leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(jax.vjp(fn, x)[1])]


def test_lrn_recompute_keeps_only_its_input_for_the_backward():
  x = jnp.ones((2, 5, 5, 8), jnp.bfloat16)
  kwargs = lrn_kwargs(LRN_CASES[0])
  assert residuals(functools.partial(gpu_kernels.local_response_norm, **kwargs), x) == [
      (x.shape, jnp.bfloat16)]
  # The plain form's autodiff keeps seven full-size float32 tensors (and a scalar).
  plain = residuals(functools.partial(layers.local_response_norm, **kwargs), x)
  assert plain.count((x.shape, jnp.float32)) == 7


# --------------------------------------------------------------------------------------
# ReLU -> LRN -> max pool as one op
# --------------------------------------------------------------------------------------

def separate_layers(z, **kwargs):
  return layers.max_pool(layers.local_response_norm(jax.nn.relu(z), **kwargs))


@pytest.mark.parametrize("shape, case", [
    ((2, 13, 13, 8), LRN_CASES[1]),
    ((1, 8, 9, 4), LRN_CASES[3]),  # even sizes: a trailing row no window reaches
    ((1, 27, 27, 6), LRN_CASES[2]),
])
def test_relu_lrn_max_pool_equals_the_separate_layers_float32(shape, case):
  z = 2.0 * jax.random.normal(jax.random.key(2), shape)  # about half the ReLUs are off
  kwargs = lrn_kwargs(case)
  plain = value_and_grad(functools.partial(separate_layers, **kwargs), z)
  fused = value_and_grad(functools.partial(gpu_kernels.relu_lrn_max_pool, **kwargs), z)
  assert_close(fused[0], plain[0], 1e-6)  # the power is one op here: float rounding
  assert_close(fused[1], plain[1], F32_RTOL)
  assert float(jnp.mean(fused[1] == 0)) > 0.5  # ReLU-off and non-winning inputs: none


def test_relu_lrn_max_pool_equals_the_separate_layers_bfloat16():
  z = (2.0 * jax.random.normal(jax.random.key(3), (2, 27, 27, 8))).astype(jnp.bfloat16)
  kwargs = lrn_kwargs(LRN_CASES[0])
  plain = value_and_grad(functools.partial(separate_layers, **kwargs), z)
  fused = value_and_grad(functools.partial(gpu_kernels.relu_lrn_max_pool, **kwargs), z)
  assert fused[0].dtype == fused[1].dtype == jnp.bfloat16
  assert_close(fused[0], plain[0], BF16_RTOL)
  assert_close(fused[1], plain[1], BF16_RTOL)


def test_relu_lrn_max_pool_keeps_the_relu_output_and_int8_winners():
  z = jnp.ones((2, 7, 7, 8), jnp.bfloat16)
  fn = functools.partial(gpu_kernels.relu_lrn_max_pool, **lrn_kwargs(LRN_CASES[0]))
  assert sorted(residuals(fn, z), key=str) == sorted(
      [(z.shape, jnp.bfloat16), ((2, 3, 3, 8), jnp.int8)], key=str)


def test_relu_lrn_max_pool_tie_goes_to_the_first_maximum():
  z = jnp.ones((1, 3, 3, 1))  # every input of the one window ties
  grad = jax.grad(lambda z: jnp.sum(gpu_kernels.relu_lrn_max_pool(
      z, **{**lrn_kwargs(LRN_CASES[0]), "groups": 1})))(z)
  assert float(grad[0, 0, 0, 0]) > 0 and int(jnp.sum(grad != 0)) == 1


# --------------------------------------------------------------------------------------
# Towers as separate arrays
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2])
def test_tower_arrays_conv_equals_towers(groups):
  x = jax.random.normal(jax.random.key(4), (2, 9, 9, 8))
  w = 0.1 * jax.random.normal(jax.random.key(5), (3, 3, 8 // groups, 6))
  outs = {impl: value_and_grad(lambda x, impl=impl: models.grouped_conv(
      x, w, stride=1, padding=1, groups=groups, impl=impl, kernels="plain"), x)
      for impl in ("towers", "tower_arrays")}
  for got, want in zip(outs["tower_arrays"], outs["towers"]):
    assert_close(got, want, 1e-6)
  towers = layers.tower_arrays_conv((x[..., :4], x[..., 4:]), w, stride=1, padding=1,
                                    groups=groups, towers=2)
  assert isinstance(towers, tuple) and [t.shape for t in towers] == [(2, 9, 9, 3)] * 2
  assert_close(jnp.concatenate(towers, -1), outs["towers"][0], 1e-6)


# --------------------------------------------------------------------------------------
# model.kernels: presets, per-layer forms, resolve_kernels
# --------------------------------------------------------------------------------------

def test_presets_name_their_forms():
  assert models.layer_form_names("cpu") == {"conv": "padded", "lrn": "band",
                                            "pool": "scatter_free", "lrn_pool": "separate"}
  assert models.layer_form_names("gpu") == {"conv": "plain", "lrn": "recompute",
                                            "pool": "scatter_free", "lrn_pool": "fused"}
  assert models.layer_form_names("plain, pool=scatter_free")["pool"] == "scatter_free"
  forms = models.kernel_forms("gpu,pool=plain,lrn_pool=separate")
  assert forms.max_pool is layers.max_pool and forms.relu_lrn_max_pool is None
  assert forms.local_response_norm is gpu_kernels.local_response_norm
  assert models.kernel_forms("cpu").max_pool is cpu_kernels.max_pool  # one home per form


@pytest.mark.parametrize("backend, kernels, group_impl", [
    ("cpu", "cpu", "towers"),  # unchanged by the GPU forms
    ("gpu", "gpu", "tower_arrays"),
    ("tpu", "plain", "feature_group_count"),
])
def test_auto_per_backend(backend, kernels, group_impl):
  choice = models.resolve_kernels("auto", "auto", backend)
  assert (choice.kernels, choice.group_impl) == (kernels, group_impl)


def test_auto_keeps_the_per_layer_forms():
  choice = models.resolve_kernels("auto,pool=plain", "tower_arrays", "gpu")
  assert choice.kernels == "gpu,pool=plain" and choice.group_impl == "tower_arrays"
  assert choice.forms["pool"] == "plain" and choice.forms["lrn_pool"] == "fused"
  line = choice.describe()
  assert "kernels=gpu,pool=plain (conv=plain, lrn=recompute, pool=plain" in line
  assert "layer forms set by model.kernels" in line and "\n" not in line
  assert models.resolve_kernels("auto,lrn=band", "auto", "cpu").kernels == "cpu,lrn=band"


@pytest.mark.parametrize("value, message", [
    ("fast", "model.kernels='fast' is not one of 'auto', 'plain', 'cpu', 'gpu'"),
    ("gpu,pool=fast", "model.kernels='gpu,pool=fast': pool is one of 'plain', 'scatter_free'"),
    ("gpu,relu=plain", "'relu=plain' is not a layer form"),
    ("gpu,pool=plain,pool=plain", "'pool=plain' is not a layer form"),
    ("pool=plain", "model.kernels='pool=plain' is not one of"),
    (None, "model.kernels=None is not one of"),
])
def test_bad_kernels_values_name_the_field(value, message):
  with pytest.raises(ValueError) as err:
    models.create_model(variant="paper", kernels=value)
  assert message in str(err.value)


def test_bad_group_impl_names_the_new_value():
  with pytest.raises(ValueError, match="'feature_group_count', 'tower_arrays'"):
    models.create_model(variant="paper", group_impl="arrays")


# --------------------------------------------------------------------------------------
# Whole nets
# --------------------------------------------------------------------------------------

STRONG_LRN = dict(init="xavier", lrn_alpha=5.0)  # LRN's gradient terms clearly visible


@functools.lru_cache(maxsize=None)
def _params(image_size):
  return models.init("paper", 0, image_size=image_size, **STRONG_LRN)


@functools.lru_cache(maxsize=None)
def _loss_and_grads(kernels, group_impl, image_size, dtype, towers_on_devices=False):
  """Loss and parameter gradients of the paper net on 2 fixed images (cached: the plain
  reference is shared). towers_on_devices: one tower per device of a 2-device mesh."""
  mesh = (sharding.make_mesh(jax.devices()[:2], model_parallel=2) if towers_on_devices
          else None)
  params = _params(image_size)
  images = 3.0 * jax.random.normal(jax.random.key(9), (2, image_size, image_size, 3))
  labels = jnp.array([3, 997])
  model = models.create_model(variant="paper", image_size=image_size, dtype=dtype,
                              kernels=kernels, group_impl=group_impl, **STRONG_LRN,
                              tower_axis="model" if mesh is not None else None)

  def loss(params):
    out = model.apply({"params": params}, images, train=False)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, None], axis=1))

  fn = jax.value_and_grad(loss)
  if mesh is None:
    return jax.jit(fn)(params)
  replicated = sharding.replicated(mesh)  # the towers split inside the model (shard_map)
  return jax.jit(sharding.with_mesh(fn, mesh), in_shardings=replicated,
                 out_shardings=replicated)(params)


def _assert_nets_agree(got, want, rtol):
  assert_close(got[0], want[0], rtol)
  for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want[1]),
                          jax.tree_util.tree_leaves(got[1])):
    assert float(jnp.max(jnp.abs(w))) > 0, jax.tree_util.keystr(path)
    try:
      assert_close(g, w, rtol)
    except AssertionError as err:
      raise AssertionError(f"gradient of {jax.tree_util.keystr(path)}") from err


def test_whole_paper_net_auto_gpu_forms_float32():
  want = _loss_and_grads("plain", "towers", 227, "float32")
  got = _loss_and_grads("gpu", "tower_arrays", 227, "float32")
  _assert_nets_agree(got, want, 1e-4)


def _relative_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / (np.linalg.norm(want) + 1e-30))


@pytest.mark.slow  # ~45 s on 2 cores; the layers' bfloat16 tests above are the fast check
def test_whole_paper_net_auto_gpu_forms_bfloat16():
  # In bfloat16 both forms differ from float32 by rounding (sums of thousands of bfloat16
  # terms in the bias gradients, for one): the GPU forms must be about as close to the
  # float32 result as the plain forms are, leaf by leaf.
  exact = _loss_and_grads("plain", "towers", 224, "float32")
  plain = _loss_and_grads("plain", "towers", 224, "bfloat16")
  ours = _loss_and_grads("gpu", "tower_arrays", 224, "bfloat16")
  assert abs(float(ours[0]) - float(exact[0])) <= max(
      2 * abs(float(plain[0]) - float(exact[0])), 1e-2 * abs(float(exact[0])))
  for (path, want), p, o in zip(jax.tree_util.tree_leaves_with_path(exact[1]),
                                jax.tree_util.tree_leaves(plain[1]),
                                jax.tree_util.tree_leaves(ours[1])):
    plain_error, our_error = _relative_error(p, want), _relative_error(o, want)
    assert our_error <= max(2 * plain_error, 2e-2), (
        jax.tree_util.keystr(path), our_error, plain_error)


@pytest.mark.slow  # another whole-net compile (~20 s on 2 cores)
def test_gpu_forms_with_one_tower_per_device():
  want = _loss_and_grads("plain", "towers", 227, "float32")
  got = _loss_and_grads("gpu", "tower_arrays", 227, "float32", towers_on_devices=True)
  _assert_nets_agree(got, want, 1e-4)


def test_intermediates_and_parameters_do_not_depend_on_the_forms():
  # Recording intermediates runs ReLU, LRN and pool separately: the same stages and shapes.
  assert (models.layer_shapes("paper", kernels="gpu", group_impl="tower_arrays")
          == models.layer_shapes("paper", kernels="plain", group_impl="towers"))
  trees = [jax.eval_shape(lambda g=g: models.create_model(
      variant="paper", kernels="gpu", group_impl=g).init(
          jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
      for g in ("tower_arrays", "feature_group_count")]
  assert trees[0] == trees[1]
  values = []  # one grouped conv: the same values, not only the same tree
  for impl in ("tower_arrays", "towers"):
    conv = models.Conv(8, 3, 1, 0, 2, impl, "gpu", "paper", jnp.float32, name="conv2")
    values.append(conv.init(jax.random.key(0), jnp.zeros((1, 9, 9, 4))))
  for a, b in zip(jax.tree.leaves(values[0]), jax.tree.leaves(values[1])):
    np.testing.assert_array_equal(a, b)


def test_alexnet_bn_takes_the_gpu_forms():
  # BN normalizes whole maps: tower_arrays runs as towers there; the pools are scatter-free.
  params = models.init("alexnet_bn", 0, image_size=227)
  stats = models.init_batch_stats("alexnet_bn")
  images = jax.random.normal(jax.random.key(1), (2, 227, 227, 3))
  got, want = (models.logits("alexnet_bn", params, images, batch_stats=stats, image_size=227,
                             kernels=k, group_impl=g)
               for k, g in (("gpu", "tower_arrays"), ("plain", "towers")))
  assert_close(got, want, 1e-5)
