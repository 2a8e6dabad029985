"""The max pool's custom gradient equals the reference (nn.max_pool + autodiff)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import models


def reference_pool(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


@pytest.mark.parametrize("shape", [(2, 55, 55, 4), (1, 27, 27, 3), (2, 13, 13, 2), (1, 8, 9, 2),
                                   (1, 3, 3, 1)])
def test_values_and_gradient_match_reference(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  np.testing.assert_array_equal(models.max_pool(x), reference_pool(x))
  weights = jax.random.normal(jax.random.key(1), reference_pool(x).shape)
  grad = jax.grad(lambda x: jnp.sum(models.max_pool(x) * weights))(x)
  want = jax.grad(lambda x: jnp.sum(reference_pool(x) * weights))(x)
  np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-6)


def test_gradient_of_a_tie_goes_to_the_first_maximum_only():
  x = jnp.zeros((1, 3, 3, 1))
  grad = jax.grad(lambda x: jnp.sum(models.max_pool(x)))(x)
  assert float(grad[0, 0, 0, 0]) == 1.0 and float(jnp.sum(grad)) == 1.0
