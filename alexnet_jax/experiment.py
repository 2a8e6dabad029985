"""Everything a run is made of, built once from the config: mesh, data, model, optimizer,
schedule, and the jitted steps with their shardings. train.py and evaluate.py both start here.

Config mistakes a user can make are caught here, each with one sentence naming the field.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh

from alexnet_jax import data as data_lib
from alexnet_jax import finetune, models, optim, parallel, state as state_lib, steps

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass
class Experiment:
  config: Any
  mesh: Mesh
  datasets: data_lib.Datasets
  model: Any
  tx: Any
  lr_schedule: Callable
  steps_per_epoch: int
  total_steps: int
  eval_every_steps: int
  input_shape: tuple[int, ...]
  abstract_state: Any
  state_shardings: Any
  train_step: Callable
  eval_step: Callable

  def checkpoint_meta(self) -> dict[str, Any]:
    """What a checkpoint records about the model and the inputs it expects."""
    c = self.config
    return {
        "format": CHECKPOINT_FORMAT,
        "model": c.model.to_dict(),
        "preprocessing": {"source": c.data.source, "mean": list(c.data.mean),
                          "std": list(c.data.std), "image_size": c.model.image_size,
                          "resize_size": c.data.resize_size},
        "class_names": list(self.datasets.info.class_names or []),
    }

  def epoch_of(self, step: int) -> float:
    return step / self.steps_per_epoch


def _check_config(config: Any, info: data_lib.DataInfo, mesh: Mesh) -> None:
  parallel.check_batch_size("batch_size", config.batch_size, mesh)
  parallel.check_batch_size("eval_batch_size", config.eval_batch_size, mesh)
  if config.model.in_channels != info.channels:
    raise ValueError(f"model.in_channels={config.model.in_channels} but data.source="
                     f"{config.data.source!r} gives {info.channels}-channel images.")
  if config.model.num_classes != info.num_classes:
    raise ValueError(f"model.num_classes={config.model.num_classes} but data.source="
                     f"{config.data.source!r} has {info.num_classes} classes.")
  for field in ("mean", "std"):
    values = tuple(config.data[field])
    if len(values) not in (1, info.channels):
      raise ValueError(f"data.{field} has {len(values)} values; give 1 or {info.channels} "
                       "(one per channel).")
  if any(s <= 0 for s in config.data.std):
    raise ValueError("data.std must be positive.")
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if config[field] <= 0:
      raise ValueError(f"{field}={config[field]} must be positive.")
  finetune.check_config(config)


def build(config: Any) -> Experiment:
  # config.parallel: data parallelism, the two towers on two devices, FSDP (docs/parallel.md).
  parallel.check_parallel_config(config.parallel.model, jax.device_count(),
                                 config.model.variant)
  mesh = parallel.make_mesh(model_parallel=config.parallel.model)
  datasets = data_lib.create_datasets(config, jax.process_index(), jax.process_count())
  info = datasets.info
  _check_config(config, info, mesh)
  model = models.create_model(**config.model.to_dict(), **parallel.model_axes(mesh, config))
  tx = optim.make_optimizer(config)

  steps_per_epoch = max(1, info.num_train_examples // config.batch_size)
  if config.num_train_steps > 0:
    total_steps = int(config.num_train_steps)
  else:
    total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  lr_schedule = optim.make_schedule(config, steps_per_epoch, total_steps)

  size, channels = config.model.image_size, config.model.in_channels
  input_shape = (1, size, size, channels)
  abstract_state, shardings = state_lib.abstract_train_state(model, tx, input_shape, mesh)
  mean = np.asarray(config.data.mean, np.float32)
  std = np.asarray(config.data.std, np.float32)

  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  # Traced under the mesh, so the model can place its towers on the 'model' axis.
  train_step = jax.jit(
      parallel.with_mesh(steps.make_train_step(model, tx, lr_schedule, mean, std, size), mesh),
      in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
      donate_argnums=(0,))
  eval_step = jax.jit(
      parallel.with_mesh(steps.make_eval_step(model, mean, std, size), mesh),
      in_shardings=(shardings["params"], shardings["batch_stats"], batch_sharding),
      out_shardings=replicated)
  return Experiment(config=config, mesh=mesh, datasets=datasets, model=model, tx=tx,
                    lr_schedule=lr_schedule, steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, eval_every_steps=eval_every,
                    input_shape=input_shape, abstract_state=abstract_state,
                    state_shardings=shardings, train_step=train_step, eval_step=eval_step)
