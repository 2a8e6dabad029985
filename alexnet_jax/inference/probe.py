"""What a trained AlexNet computes on an image: probabilities, stage outputs, attributions.

`AlexNetProbe` supplies the functions the attribution methods (attribution.py) need for an
AlexNet: images in pixel units (0-255) at the model's input size, normalized inside exactly as
the trainer does (steps.device_preprocess); class scores are the logits; Grad-CAM uses conv5
after its ReLU (before pool5), with `alexnet_head` the eval-mode tail from there.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models, steps
from alexnet_jax.errors import UserError
from alexnet_jax.inference.attribution import grad_cam, occlusion_map, saliency

Array = Any


def alexnet_head(variant: str, params: Mapping, conv5: Array) -> Array:
  """Logits from conv5's ReLU output: pool5, (torchvision: adaptive pool), fc6, fc7, fc8.

  (alexnet_bn's batch norms all sit before conv5's ReLU, so its tail is the paper's.)

  The eval-mode tail of models.AlexNet, written out so that Grad-CAM can differentiate with
  respect to conv5; tests check it reproduces the model's logits.
  """
  x = models.max_pool(conv5)
  if variant == "torchvision":
    x = models.adaptive_avg_pool(x, models.TORCHVISION_POOL_OUTPUT)
  x = x.reshape(x.shape[0], -1)
  for layer in ("fc6", "fc7"):
    x = jax.nn.relu(x @ params[layer]["kernel"] + params[layer]["bias"])
  return x @ params["fc8"]["kernel"] + params["fc8"]["bias"]


_SOWN_SUFFIX = "_output"  # models.AlexNet sows each stage as '<stage>_output'


@dataclasses.dataclass(frozen=True, eq=False)
class AlexNetProbe:
  """The functions the attribution methods need, for one AlexNet and its input normalization.

  Images are float32 (N, image_size, image_size, in_channels) in pixel units (0-255).
  """
  model_config: Mapping[str, Any]
  params: Any
  mean: tuple[float, ...]
  std: tuple[float, ...]
  batch_stats: Any = None  # running BN statistics (alexnet_bn); None for models without BN

  @functools.cached_property
  def model(self):
    """The Flax module of `model_config`, in float32."""
    # Interpretation runs in float32 whatever the training dtype.
    return models.create_model(**{**self.model_config, "dtype": "float32"})

  @property
  def variant(self) -> str:
    """models.VARIANTS name ('paper', 'd2l', 'torchvision', ...)."""
    return self.model.variant

  @property
  def image_size(self) -> int:
    """Side of the model's square input, pixels."""
    return self.model.image_size

  def _normalize(self, images: Array) -> Array:
    return steps.device_preprocess(images, jnp.asarray(self.mean, jnp.float32),
                                   jnp.asarray(self.std, jnp.float32), self.image_size)

  def _forward(self, params, images: Array) -> tuple[Array, dict[str, Array]]:
    """`params`: {'params': ..., 'batch_stats': ...}, the variables `Module.apply` takes."""
    logits, state = self.model.apply(params, self._normalize(images), train=False,
                                     mutable=["intermediates"])
    stages = {name.removesuffix(_SOWN_SUFFIX): values[0]
              for name, values in state["intermediates"].items()}
    return logits, stages

  # Params are an argument of every jitted function, never a closed-over constant: XLA would
  # otherwise constant-fold the 37M-entry fc6 matrix at compile time.
  @functools.cached_property
  def _params(self):
    return jax.device_put(models.variables(self.params, self.batch_stats))

  @functools.cached_property
  def _jit_probabilities(self):
    return jax.jit(lambda params, x: jax.nn.softmax(self._forward(params, x)[0], axis=-1))

  @functools.cached_property
  def _jit_stages(self):
    return jax.jit(lambda params, x: self._forward(params, x)[1])

  @functools.cached_property
  def _jit_saliency(self):
    def fn(params, image, label):
      return saliency(lambda x: self._forward(params, x)[0], image, label)
    return jax.jit(fn)

  @functools.cached_property
  def _jit_grad_cam(self):
    def fn(params, image, label):
      return grad_cam(lambda x: self._forward(params, x)[1]["conv5"],
                      lambda a: alexnet_head(self.variant, params["params"], a), image, label)
    return jax.jit(fn)

  def logits(self, images: Array) -> Array:
    """float32 (N, num_classes) logits of (N, S, S, C) pixel images."""
    return self._jit_stages(self._params, jnp.asarray(images, jnp.float32))["fc8"]

  def probabilities(self, images: Array) -> Array:
    """float32 (N, num_classes) softmax of the logits of (N, S, S, C) pixel images."""
    return self._jit_probabilities(self._params, jnp.asarray(images, jnp.float32))

  def stage(self, images: Array, name: str) -> Array:
    """Output of one stage (models.STAGES: 'conv1' after ReLU, 'pool1', ..., 'fc8') for
    (N, S, S, C) pixel images: (N, h, w, channels) or (N, features). UserError for a name
    that is not a stage of this variant."""
    available = tuple(self.stage_shapes)
    if name not in available:
      raise UserError(f"layer={name!r} is not a stage of the {self.variant} variant; choose "
                      f"one of {', '.join(available)}.")
    return self._jit_stages(self._params, jnp.asarray(images, jnp.float32))[name]

  @functools.cached_property
  def stage_shapes(self) -> dict[str, tuple]:
    """Per-example output shape of every stage of this variant (models.layer_shapes)."""
    return models.layer_shapes(**self.model_config)

  @property
  def spatial_stages(self) -> tuple[str, ...]:
    """The stages with (h, w, channels) maps, in order: those `activations` can draw
    (conv1 ... pool5, and avgpool for torchvision; not flatten or fc6-fc8)."""
    return tuple(name for name, shape in self.stage_shapes.items() if len(shape) == 3)

  def maps(self, images: Array, name: str) -> Array:
    """(N, h, w, channels) output of the spatial stage `name` (`spatial_stages`); UserError,
    listing only the spatial stages, for any other name."""
    if name not in self.spatial_stages:
      why = ("has no spatial maps" if name in self.stage_shapes else
             f"is not a stage of the {self.variant} variant")
      raise UserError(f"layer={name!r} {why}; choose one of {', '.join(self.spatial_stages)}.")
    return self.stage(images, name)

  def conv5(self, images: Array) -> Array:
    """conv5 after its ReLU, (N, h, w, 256), for (N, S, S, C) pixel images."""
    return self.stage(images, "conv5")

  def head(self, conv5: Array) -> Array:
    """Logits (N, num_classes) from conv5 outputs (N, h, w, 256) (alexnet_head)."""
    return alexnet_head(self.variant, self._params["params"], jnp.asarray(conv5, jnp.float32))

  # The three methods, for this network.

  def saliency(self, image: Array, label: int) -> np.ndarray:
    """(S, S) |d logit[label] / d pixel|, max over channels, for one (S, S, C) image."""
    return np.asarray(self._jit_saliency(self._params, jnp.asarray(image, jnp.float32), label))

  def grad_cam(self, image: Array, label: int) -> np.ndarray:
    """(h, w) Grad-CAM map on conv5 (not upsampled) for one (S, S, C) image."""
    return np.asarray(self._jit_grad_cam(self._params, jnp.asarray(image, jnp.float32), label))

  def occlusion(self, image: Array, label: int, *, patch: int, stride: int,
                fill: float | Array = 128.0, batch_size: int = 32) -> np.ndarray:
    """P(label) for each position of a `patch`-pixel square of `fill` (0-255) moved by
    `stride` over one (S, S, C) image: (rows, columns) as occlusion_map."""
    return occlusion_map(self.probabilities, image, label, patch=patch, stride=stride,
                         fill=fill, batch_size=batch_size)


def resize_to_model(image: Array, image_size: int) -> np.ndarray:
  """(h, w, c) uint8 or float pixels -> float32 (S, S, c), resized bilinearly as the trainer
  does on the device (e.g. Fashion-MNIST's 28x28 to the model size)."""
  image = jnp.asarray(image, jnp.float32)
  if image.shape[:2] != (image_size, image_size):
    image = jax.image.resize(image, (image_size, image_size, image.shape[-1]), "bilinear")
  return np.asarray(image)
