"""The paper's mirror and PCA colour noise, done in the train step (data/augment.py)."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax.data import augment


def numbered(batch, size=6):
  """(batch, size, size, 3) float32 images whose every pixel differs from its mirror."""
  one = np.arange(size * size * 3, dtype=np.float32).reshape(size, size, 3)
  return jnp.asarray(np.broadcast_to(one, (batch,) + one.shape))


def test_each_image_is_mirrored_or_kept_whole_about_half_the_time():
  images = numbered(400)
  out = np.asarray(augment.apply(images, jax.random.key(0), augment.Augment(flip=True, pca_std=0.0)))
  mirrored = np.all(out == np.asarray(images)[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == np.asarray(images), axis=(1, 2, 3))
  assert np.all(mirrored ^ kept)
  assert 160 < mirrored.sum() < 240


def expected_shift_covariance(std: float) -> np.ndarray:
  scales = (std * augment.PCA_EIGVAL * 255.0) ** 2
  return augment.PCA_EIGVEC @ np.diag(scales) @ augment.PCA_EIGVEC.T


def test_colour_noise_is_one_shift_per_image_with_the_eigen_covariance():
  grey = jnp.full((20000, 2, 2, 3), 128.0, jnp.float32)
  out = np.asarray(augment.apply(grey, jax.random.key(1), augment.Augment(flip=False, pca_std=0.1)))
  assert np.all(out == out[:, :1, :1, :])  # the same shift on every pixel of an image
  shifts = out[:, 0, 0, :] - 128.0
  expected = expected_shift_covariance(0.1)
  assert np.all(np.abs(shifts.mean(0)) < 4 * np.sqrt(np.diag(expected) / 20000))
  np.testing.assert_allclose(np.cov(shifts.T), expected, atol=0.03 * expected.max())
  # Along each eigenvector the std is std * eigenvalue * 255 (~5.5 for the first).
  projected = shifts @ augment.PCA_EIGVEC
  np.testing.assert_allclose(projected.std(0), 0.1 * augment.PCA_EIGVAL * 255, rtol=0.03)
  assert np.mean(shifts != np.rint(shifts)) > 0.99  # not rounded to whole grey levels


def test_off_means_untouched():
  images = numbered(4)
  out = augment.apply(images, jax.random.key(0), augment.Augment(flip=False, pca_std=0.0))
  np.testing.assert_array_equal(out, images)


def test_same_noise_whatever_the_sharding():
  """8 devices holding one row each see what one device holding the batch sees, so a run
  gives the same augmentation on any device count (and a resumed run, the same key)."""
  images = numbered(8) + jnp.arange(8.0)[:, None, None, None]
  key, spec = jax.random.key(7), augment.Augment(flip=True, pca_std=0.1)
  whole = jax.jit(augment.apply, static_argnums=2)(images, key, spec)
  mesh = jax.make_mesh((8,), ("data",))
  sharded = jax.device_put(images, NamedSharding(mesh, P("data")))
  split = jax.jit(augment.apply, static_argnums=2)(sharded, key, spec)
  assert len(split.sharding.device_set) == 8
  # Same draws; the float sums may differ in the last bit between the two programs.
  np.testing.assert_allclose(np.asarray(split), np.asarray(whole), atol=1e-4)
  again = jax.jit(augment.apply, static_argnums=2)(images, jax.random.key(8), spec)
  assert not np.array_equal(np.asarray(again), np.asarray(whole))
