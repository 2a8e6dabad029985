"""Hand-written gradients of the XLA:CPU forms (models/cpu_kernels.py: max pool, LRN) equal
the reference autodiff gradients; the plain LRN (autodiff) is checked the same way."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.models import cpu_kernels, layers


def reference_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("shape", [(2, 55, 55, 4), (1, 27, 27, 3), (2, 13, 13, 2), (1, 8, 9, 2),
                                   (1, 3, 3, 1)])
def test_values_and_gradient_match_reference(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_array_equal(cpu_kernels.max_pool(x), reference_pool(x))
  weights = jax.random.normal(jax.random.key(1), reference_pool(x).shape)
  grad = jax.grad(lambda x: jnp.sum(cpu_kernels.max_pool(x) * weights))(x)
  want = jax.grad(lambda x: jnp.sum(reference_pool(x) * weights))(x)
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6)


def test_gradient_of_a_tie_goes_to_the_first_maximum_only():
  x = jnp.zeros((1, 3, 3, 1))
  grad = jax.grad(lambda x: jnp.sum(cpu_kernels.max_pool(x)))(x)
  assert float(grad[0, 0, 0, 0]) == 1.0 and float(jnp.sum(grad)) == 1.0


def formula_lrn(x, size, k, alpha, beta, divided, groups):
  """LRN straight from its formula, differentiated by JAX's autodiff."""
  channels = x.shape[-1]
  per_group = channels // groups
  scale = alpha / size if divided else alpha
  out = []
  for c in range(channels):
    group = c // per_group
    lo = max(c - size // 2, group * per_group)
    hi = min(c + (size - 1) // 2, (group + 1) * per_group - 1)
    total = jnp.sum(jnp.square(x[..., lo:hi + 1]), axis=-1)
    out.append(x[..., c] / (k + scale * total) ** beta)
  return jnp.stack(out, axis=-1)


@pytest.mark.parametrize("form", [cpu_kernels, layers], ids=["cpu", "plain"])
@pytest.mark.parametrize("k,alpha,beta,divided,groups", [
    (2.0, 1e-4, 0.75, True, 2),   # the paper's constants, two towers
    (1.0, 5.0, 0.75, True, 2),    # strong normalization: the gradient terms matter
    (2.0, 1e-3, 0.6, False, 1),   # general beta, printed-formula convention
])
def test_lrn_gradient_matches_autodiff_of_the_formula(k, alpha, beta, divided, groups, form):
  x = jax.random.normal(jax.random.key(2), (2, 4, 4, 12)) * 3
  kwargs = dict(size=5, k=k, alpha=alpha, beta=beta)
  weights = jax.random.normal(jax.random.key(3), x.shape)
  ours = jax.grad(lambda x: jnp.sum(form.local_response_norm(
      x, alpha_divided_by_size=divided, groups=groups, **kwargs) * weights))(x)
  want = jax.grad(lambda x: jnp.sum(formula_lrn(x, divided=divided, groups=groups, **kwargs)
                                    * weights))(x)
  np.testing.assert_allclose(ours, want, rtol=1e-5, atol=1e-6)
