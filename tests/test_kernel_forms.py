"""The plain layer forms (models/layers.py) and the XLA:CPU forms (models/cpu_kernels.py)
agree, values and gradients, and resolve_kernels picks the documented form per backend."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax.models import cpu_kernels, layers
from alexnet_jax.models.alexnet import Conv

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "golden"))
import make_golden as golden  # noqa: E402  (shares params and compiles with test_models)

RTOL = 1e-4  # float32, relative to the spread of the compared values


def assert_close(got, want, rtol=RTOL):
  """|got - want| <= rtol * (max |want| + tiny), elementwise over the whole array."""
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = np.max(np.abs(want)) + 1e-30
  np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


def value_and_grad(fn, x, seed=7):
  """fn(x) and the gradient of <fn(x), w> for a fixed random cotangent w (one jit)."""
  shape = jax.eval_shape(fn, x)
  weights = jax.random.normal(jax.random.key(seed), shape.shape, shape.dtype)

  def both(x):
    out, vjp = jax.vjp(fn, x)
    return out, vjp(weights)[0]

  return jax.jit(both)(x)


# --------------------------------------------------------------------------------------
# resolve_kernels
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend, kernels, group_impl", [
    ("cpu", "cpu", "towers"),
    ("gpu", "gpu", "tower_arrays"),
    ("tpu", "plain", "feature_group_count"),
])
def test_auto_choice_per_backend(backend, kernels, group_impl):
  choice = models.resolve_kernels("auto", "auto", backend)
  assert (choice.kernels, choice.group_impl, choice.backend) == (kernels, group_impl, backend)
  line = choice.describe()
  assert f"kernels={kernels}" in line and f"group_impl={group_impl}" in line
  assert backend in line and "\n" not in line
  if backend == "cpu":
    assert "measured faster on XLA:CPU" in line


@pytest.mark.parametrize("backend", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("kernels", ["plain", "cpu"])
@pytest.mark.parametrize("group_impl", ["towers", "feature_group_count"])
def test_explicit_values_pass_through(backend, kernels, group_impl):
  choice = models.resolve_kernels(kernels, group_impl, backend)
  assert (choice.kernels, choice.group_impl) == (kernels, group_impl)
  assert "set by model.kernels" in choice.describe()


def test_default_backend_is_jax_default_backend():
  assert models.resolve_kernels("auto", "auto").backend == jax.default_backend()


def test_bad_values_name_the_field():
  with pytest.raises(ValueError, match=r"model.kernels='fast' is not one of 'auto', 'plain'"):
    models.resolve_kernels("fast", "auto", "cpu")
  with pytest.raises(ValueError, match=r"model.group_impl='split' is not one of"):
    models.resolve_kernels("auto", "split", "cpu")


# --------------------------------------------------------------------------------------
# Layer forms
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("divided", [True, False])
@pytest.mark.parametrize("alpha", [1e-4, 2.0])  # the paper's, and one where LRN bites
def test_lrn_forms_agree(groups, divided, alpha):
  x = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 6, 24))
  kwargs = dict(size=5, k=2.0, alpha=alpha, beta=0.75, alpha_divided_by_size=divided,
                groups=groups)
  plain = value_and_grad(lambda x: layers.local_response_norm(x, **kwargs), x)
  cpu = value_and_grad(lambda x: cpu_kernels.local_response_norm(x, **kwargs), x)
  for got, want in zip(cpu, plain):
    assert_close(got, want)


def test_lrn_forms_agree_for_general_beta_and_even_size():
  x = 2.0 * jax.random.normal(jax.random.key(1), (1, 3, 3, 16))
  kwargs = dict(size=4, k=1.0, alpha=3.0, beta=0.6, alpha_divided_by_size=True, groups=2)
  plain = value_and_grad(lambda x: layers.local_response_norm(x, **kwargs), x)
  cpu = value_and_grad(lambda x: cpu_kernels.local_response_norm(x, **kwargs), x)
  for got, want in zip(cpu, plain):
    assert_close(got, want)


@pytest.mark.parametrize("shape", [(2, 55, 55, 4), (2, 13, 13, 3), (1, 8, 9, 2)])
def test_max_pool_forms_agree(shape):
  x = jax.random.normal(jax.random.key(2), shape)  # continuous values: no ties
  plain_out, plain_grad = value_and_grad(layers.max_pool, x)
  cpu_out, cpu_grad = value_and_grad(cpu_kernels.max_pool, x)
  np.testing.assert_array_equal(cpu_out, plain_out)
  # Sums of overlapping windows' gradients, added in another order: float rounding only.
  np.testing.assert_allclose(cpu_grad, plain_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size, kernel, stride, padding", [
    (227, 11, 4, 0),  # the paper's conv1 at 227: the pad-then-crop trick
    (30, 5, 2, 0),
    (15, 5, 1, 2),   # padded: both forms are the same lax conv
])
def test_conv_forms_agree(size, kernel, stride, padding):
  x = jax.random.normal(jax.random.key(3), (2, size, size, 3))
  w = 0.1 * jax.random.normal(jax.random.key(4), (kernel, kernel, 3, 8))

  def run(conv_fn):  # output, and gradients to the input and to the kernel
    fn = lambda a, b: conv_fn(a, b, stride=stride, padding=padding)
    cot = jax.random.normal(jax.random.key(5), jax.eval_shape(fn, x, w).shape)
    grads = jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b) * cot), argnums=(0, 1)))(x, w)
    return (jax.jit(fn)(x, w),) + grads

  for got, want in zip(run(cpu_kernels.conv), run(layers.conv)):
    assert_close(got, want)


@pytest.mark.parametrize("kernels", ["plain", "cpu"])
def test_towers_equal_feature_group_count(kernels):
  x = jax.random.normal(jax.random.key(6), (2, 13, 13, 8))
  w = 0.1 * jax.random.normal(jax.random.key(7), (3, 3, 4, 6))
  outs = {}
  for impl in ("towers", "feature_group_count"):
    outs[impl] = value_and_grad(lambda x, impl=impl: models.grouped_conv(
        x, w, stride=1, padding=1, groups=2, impl=impl, kernels=kernels), x)
  for got, want in zip(outs["towers"], outs["feature_group_count"]):
    assert_close(got, want)


def test_facade_picks_the_resolved_form():
  x = jax.random.normal(jax.random.key(8), (1, 7, 7, 4))
  for kernels, form in (("plain", layers), ("cpu", cpu_kernels)):
    np.testing.assert_array_equal(models.max_pool(x, kernels=kernels), form.max_pool(x))
  with pytest.raises(ValueError, match="model.kernels='fast'"):
    models.max_pool(x, kernels="fast")


# --------------------------------------------------------------------------------------
# Whole nets: kernels=plain vs kernels=cpu
# --------------------------------------------------------------------------------------

def _net_value_and_grads(variant, image_size, kernels, params, batch_stats, images, labels):
  overrides = golden.CASES["paper_227_strong_lrn"][1]  # xavier init, strong LRN
  model = models.create_model(variant=variant, **{**overrides, "image_size": image_size},
                              kernels=kernels, group_impl="towers")

  def loss(params):
    out = model.apply(models.variables(params, batch_stats), images, train=False)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), labels[:, None], axis=1))

  return jax.jit(jax.value_and_grad(loss))(params)


def _params(variant):
  """The golden paper parameters (one init shared with test_models and test_convert); for
  alexnet_bn the same convs without biases, plus BN scales 1 and offsets 0."""
  params = golden.case_params("paper_227_strong_lrn")
  if variant == "paper":
    return params
  want = jax.eval_shape(lambda: models.init(variant, 0))
  out = {}
  for name, shapes in want.items():
    if name in params:
      out[name] = {leaf: params[name][leaf] for leaf in shapes}
    else:  # bn1 .. bn5
      out[name] = {"scale": jnp.ones(shapes["scale"].shape), "bias": jnp.zeros(
          shapes["bias"].shape)}
  return out


@pytest.mark.parametrize("variant, image_size", [
    ("paper", 227),  # the default suite's whole net: conv1's pad-then-crop form, LRN, towers
    # ~11 s and up to 3 GB each on 2 cores: the slow run (`-m slow`).
    pytest.param("paper", 224, marks=pytest.mark.slow),
    pytest.param("alexnet_bn", 227, marks=pytest.mark.slow),
])
def test_whole_net_forms_agree(variant, image_size):
  params = _params(variant)
  batch_stats = models.init_batch_stats(variant)
  images = jax.random.normal(jax.random.key(9), (2, image_size, image_size, 3))
  labels = jnp.array([3, 997])
  plain = _net_value_and_grads(variant, image_size, "plain", params, batch_stats, images,
                               labels)
  cpu = _net_value_and_grads(variant, image_size, "cpu", params, batch_stats, images, labels)
  assert_close(cpu[0], plain[0])
  leaves = jax.tree_util.tree_leaves_with_path(plain[1])
  cpu_leaves = jax.tree_util.tree_leaves(cpu[1])
  assert len(leaves) == len(cpu_leaves)
  for (path, want), got in zip(leaves, cpu_leaves):
    assert float(jnp.max(jnp.abs(want))) > 0, jax.tree_util.keystr(path)
    try:
      assert_close(got, want)
    except AssertionError as err:
      raise AssertionError(f"gradient of {jax.tree_util.keystr(path)}") from err


def test_parameters_do_not_depend_on_the_forms():
  trees = [jax.eval_shape(lambda k=k, g=g: models.create_model(
      variant="paper", kernels=k, group_impl=g).init(
          jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
      for k, g in (("plain", "feature_group_count"), ("cpu", "towers"))]
  assert trees[0] == trees[1]
  values = []  # one grouped conv: same values, not only the same tree
  for kernels, impl in (("plain", "feature_group_count"), ("cpu", "towers")):
    conv = Conv(8, 3, 1, 0, 2, impl, kernels, "paper", jnp.float32, name="conv2")
    values.append(conv.init(jax.random.key(0), jnp.zeros((1, 9, 9, 4))))
  for a, b in zip(jax.tree_util.tree_leaves(values[0]), jax.tree_util.tree_leaves(values[1])):
    np.testing.assert_array_equal(a, b)
