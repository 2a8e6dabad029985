"""The paper's per-image pixel augmentation, done inside the jitted train step.

Section 4.1 of Krizhevsky et al. (2012): each training image is mirrored with probability 1/2,
and its RGB pixels get the colour noise sum_i alpha_i lambda_i p_i, alpha_i ~ N(0, pca_std),
drawn once per image ("each time an image is used for training"), where (p_i, lambda_i) are
the eigenvectors and eigenvalues of the 3x3 covariance of ImageNet's training pixels.

Done on the device instead of in the loader processes: on the host they cost over a third of
a raw example (docs/data.md), on the device a negligible part of the step. The noise is a function of (the train rng, the step, the row's
position in the global batch) alone, so any number of devices or processes, and a resumed run,
see the same mirrors and colour shifts.

The colour shift is added to the float pixels (0-255 units) before normalization, neither
rounded nor clipped back to uint8 (the paper adds it to the pixel values).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Eigen-decomposition of the RGB covariance of ImageNet training pixels (pixels in [0, 1]), as
# published with fb.resnet.torch (datasets/imagenet.lua) and reused by most AlexNet
# reproductions. Column i of PCA_EIGVEC is the eigenvector of PCA_EIGVAL[i].
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = np.array([
    [-0.5675, 0.7192, 0.4009],
    [-0.5808, -0.0045, -0.8140],
    [-0.5836, -0.6948, 0.4203],
])


@dataclasses.dataclass(frozen=True)
class Augment:
  """What the train step does to each image: mirror with p=1/2 (`flip`), and the PCA colour
  noise with coefficients alpha_i ~ N(0, pca_std) (0 turns it off; needs 3 channels)."""
  flip: bool
  pca_std: float  # config.data.pca_std


def colour_shift(alpha: jax.Array) -> jax.Array:
  """float32 (B, 3) coefficients alpha -> (B, 3) RGB shifts in 0-255 units,
  sum_i alpha_i lambda_i p_i * 255."""
  # Column i: lambda_i p_i in 0-255 units.
  basis = jnp.asarray(PCA_EIGVEC * PCA_EIGVAL[None, :] * 255.0, jnp.float32)
  return alpha @ basis.T


def apply(images: jax.Array, rng: jax.Array, augment: Augment) -> jax.Array:
  """Mirrors and colour-shifts float32 images (B, H, W, C) in 0-255 units. The draws are a
  function of `rng` and the (global) batch shape alone, whatever the sharding. Returns float32
  (B, H, W, C); raises ValueError for colour noise on images that are not RGB."""
  flip_rng, colour_rng = jax.random.split(rng)
  batch = images.shape[0]
  if augment.flip:
    mirror = jax.random.bernoulli(flip_rng, 0.5, (batch,))
    images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1, :], images)
  if augment.pca_std > 0:
    if images.shape[-1] != 3:
      raise ValueError(f"PCA colour noise needs RGB images, got {images.shape[-1]} channels")
    alpha = augment.pca_std * jax.random.normal(colour_rng, (batch, 3), jnp.float32)
    images = images + colour_shift(alpha)[:, None, None, :]
  return images
