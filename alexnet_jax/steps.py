"""The jitted computations: one training step and one evaluation step.

Both are pure functions of their inputs. Images arrive as uint8 and are turned into model
inputs here, on the device: cast, resize to `model.image_size` when the host images have
another size (Fashion-MNIST's 28x28), in training the per-image mirror and PCA colour noise
(data/augment.py), then `(x - mean) / std`.

Batch statistics (alexnet_bn): the train step normalizes with the statistics of its batch and
returns the updated running averages in `state['batch_stats']`; the eval step normalizes with
the running averages. The batch mean is over the whole global batch: the batch axis is sharded
over the devices and the mean is one reduction over it (XLA adds the all-reduce), so the
statistics, like the loss, do not depend on the device count.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from alexnet_jax import models
from alexnet_jax.data import augment

# Folded into the step's dropout key to give the augmentation its own stream of randomness.
_AUGMENT_STREAM = 0x61756720


def device_preprocess(images: jax.Array, mean: jax.Array, std: jax.Array,
                      image_size: int, augment_fn: Callable | None = None) -> jax.Array:
  """uint8 images (..., H, W, C) -> float32 (..., image_size, image_size, C) model inputs.

  mean, std: float32 (C,) or (1,), in 0-255 units. Resizes bilinearly (as torchvision's
  Resize) only when H, W differ from image_size (Fashion-MNIST's 28x28 for d2l's 224).
  augment_fn: float32 images in 0-255 units -> the same, applied before normalizing.
  """
  x = images.astype(jnp.float32)
  if x.shape[-3:-1] != (image_size, image_size):
    # Bilinear, as torchvision's Resize upsamples (d2l's Fashion-MNIST recipe).
    x = jax.image.resize(x, x.shape[:-3] + (image_size, image_size, x.shape[-1]), "bilinear")
  if augment_fn is not None:
    x = augment_fn(x)
  return (x - mean) / std


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """float32 (B,): 1.0 where labels (int32, (B,)) is among the k largest of logits (B, classes)
  (k is capped at the class count)."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    learning_rate: Callable, hyperparams: dict[str, float], mean, std,
                    image_size: int, train_augment: augment.Augment | None = None) -> Callable:
  """(state, batch) -> (state, metrics).

  learning_rate: (step, state['schedule']) -> the step's rate (optim.learning_rate_fn).
  hyperparams: the optimizer's other injected hyperparameters (optim.hyperparams), written
  into the optimizer state every step: the config's values rule, not the checkpoint's.

  batch: {'image': uint8 (B, H, W, C), 'label': int32 (B,)}, global, sharded over 'data'.
  train_augment: the per-image mirror and colour noise added before normalization
  (data/augment.py), drawn from (state['rng'], step, row); None: none.
  metrics: float32 scalars 'loss' (mean cross-entropy), 'grad_norm' (global L2 norm of the
  gradient), 'top1', 'top5' (batch accuracies), 'lr'. Trace it under
  `sharding.mesh_context(mesh)` (as experiment.build does) for the model-parallel layout.
  """
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  def train_step(state: dict[str, Any], batch: dict[str, jax.Array]):
    step = state["step"]
    # Dropout noise is a function of (seed, step): identical for any device count and resume.
    dropout_rng = jax.random.fold_in(state["rng"], step)
    if train_augment is None:
      images = device_preprocess(batch["image"], mean, std, image_size)
    else:
      augment_rng = jax.random.fold_in(dropout_rng, _AUGMENT_STREAM)
      images = device_preprocess(batch["image"], mean, std, image_size,
                                 lambda x: augment.apply(x, augment_rng, train_augment))
    labels = batch["label"]

    def loss_fn(params):
      variables = models.variables(params, state["batch_stats"])
      # Models without BN have no batch_stats collection: `updated` is then empty.
      logits, updated = model.apply(variables, images, train=True,
                                    rngs={"dropout": dropout_rng}, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, updated.get("batch_stats", {}))

    (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"])
    lr = learning_rate(step, state["schedule"])
    opt_state = state["opt_state"]
    for name, value in hyperparams.items():
      opt_state.hyperparams[name] = jnp.asarray(value, jnp.float32)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    updates, opt_state = tx.update(grads, opt_state, state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {
        "loss": loss,
        # The divergence check reads it: a NaN/inf gradient would make the next params NaN.
        "grad_norm": optax.global_norm(grads),
        "top1": topk_correct(logits, labels, 1).mean(),
        "top5": topk_correct(logits, labels, 5).mean(),
        "lr": lr,
    }
    new_state = dict(state, step=step + 1, params=params, opt_state=opt_state,
                     batch_stats=new_stats)
    return new_state, metrics

  return train_step


def crop_averaged_log_probs(model: nn.Module, params: Any, batch_stats: Any,
                            images: jax.Array) -> jax.Array:
  """log of the softmax averaged over crops, for images (B, crops, H, W, C) or (B, H, W, C)."""
  crops = images.shape[1] if images.ndim == 5 else 1
  flat = images.reshape((-1,) + images.shape[-3:])
  logits = model.apply(models.variables(params, batch_stats), flat, train=False)
  log_probs = jax.nn.log_softmax(logits.reshape(images.shape[0], crops, -1), axis=-1)
  return jax.nn.logsumexp(log_probs, axis=1) - jnp.log(crops)


def make_eval_step(model: nn.Module, mean, std, image_size: int) -> Callable:
  """(params, batch_stats, batch) -> sums of loss and top-k hits over the rows whose mask is
  set. `batch_stats` is the state's (an empty dict for models without BN).

  With images of shape (B, crops, H, W, C) the softmax is averaged over the crops, as the
  paper's 10-crop test did; the loss is then -log of the averaged probability.
  """
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  def eval_step(params: Any, batch_stats: Any,
                batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    images = device_preprocess(batch["image"], mean, std, image_size)
    log_mean_probs = crop_averaged_log_probs(model, params, batch_stats, images)
    labels, mask = batch["label"], batch["mask"].astype(jnp.float32)
    nll = -jnp.take_along_axis(log_mean_probs, labels[:, None], axis=-1)[:, 0]
    _, ranked = jax.lax.top_k(log_mean_probs, min(5, log_mean_probs.shape[-1]))
    return {
        "loss": jnp.sum(nll * mask),
        "top1": jnp.sum(topk_correct(log_mean_probs, labels, 1) * mask),
        "top5": jnp.sum(topk_correct(log_mean_probs, labels, 5) * mask),
        "num_examples": jnp.sum(mask),
        # Per row, for the eval report's per-class counts (evaluate.run_eval(view_counts=)).
        "rows": {"ranked": ranked, "label": labels, "mask": batch["mask"]},
    }

  return eval_step
