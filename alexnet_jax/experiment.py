"""Everything a run is made of, built once from the config: mesh, model and its kernels,
optimizer, schedule, abstract train state, and the jitted steps with their shardings.

Data is built per mode and on demand: training opens the train and eval splits, `--mode=eval`
only the eval split (a data directory holding only the validation images is enough).
Config mistakes a user can make are caught here, each with one sentence naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from alexnet_jax import data as data_lib
from alexnet_jax import checkpoint as ckpt_lib
from alexnet_jax import models, optim, sharding, state as state_lib, steps
from alexnet_jax.errors import UserError
from alexnet_jax.transfer import finetune

# Version of the checkpoint layout (meta["format"]). 3: meta["config"] records the whole config
# (the resume contract, checkpoint.check_resume); 2: the data position is the step (no Grain
# iterator state is needed to resume). 1 and 2 checkpoints restore the same way.
CHECKPOINT_FORMAT = 3
MODES = ("train", "eval")


@dataclasses.dataclass
class Experiment:
  """A run's parts. Train-only fields (train_split, steps_per_epoch, total_steps,
  eval_every_steps, lr_schedule) are None in eval mode.

  train_step: (state, batch) -> (state, metrics), batch from `train_batches`.
  eval_step: (params, batch_stats, batch) -> sums over the masked rows (steps.make_eval_step).
  input_shape: (1, image_size, image_size, in_channels), what the model is initialized with.
  """
  config: Any
  mode: str
  mesh: Mesh
  info: data_lib.DataInfo
  eval_split: data_lib.Split
  train_split: data_lib.Split | None
  model: Any
  kernels: Any  # models.KernelChoice: the layer forms chosen for this backend
  tx: Any
  lr_schedule: Callable | None
  steps_per_epoch: int | None
  total_steps: int | None
  eval_every_steps: int | None
  input_shape: tuple[int, ...]
  abstract_state: Any
  state_shardings: Any
  train_step: Callable
  eval_step: Callable

  def checkpoint_meta(self) -> dict[str, Any]:
    """What a checkpoint records (JSON): the model and the inputs it expects, the class names,
    and the whole config that wrote it (checked on resume: checkpoint.check_resume)."""
    c = self.config
    return {
        "format": CHECKPOINT_FORMAT,
        "model": c.model.to_dict(),
        "preprocessing": {"source": c.data.source, "mean": list(c.data.mean),
                          "std": list(c.data.std), "image_size": c.model.image_size,
                          "resize_size": c.data.resize_size},
        "class_names": list(self.info.class_names or []),
        "config": c.to_dict(),
    }

  def epoch_of(self, step: int) -> float:
    """Epochs done after `step` steps (float; train mode only)."""
    return step / self.steps_per_epoch

  def precompile_eval(self) -> threading.Thread:
    """Compiles the eval step for the eval batches' shapes in a background thread, so the
    first evaluation does not pause for it (JAX reuses the compiled executable when the step
    is first called). Returns the started thread; a failure there is only logged (the call
    then compiles as usual)."""
    def compile_eval():
      try:
        batch_size = data_lib.effective_eval_batch_size(
            self.config.eval_batch_size, self.eval_split.num_examples, self.mesh.devices.size)
        batch = self._abstract_batch(self.eval_split, batch_size, mask=True)
        state = self.sharded_abstract_state()
        started = time.time()
        self.eval_step.lower(state["params"], state["batch_stats"], batch).compile()
        logging.info("Eval step compiled in the background (%.1f s).", time.time() - started)
      except Exception as e:  # noqa: BLE001 - only an optimization: the first eval compiles
        logging.info("Eval step not precompiled (%s: %s); it compiles at the first eval.",
                     type(e).__name__, e)
    thread = threading.Thread(target=compile_eval, name="precompile-eval", daemon=True)
    thread.start()
    return thread

  def sharded_abstract_state(self) -> Any:
    """The train state as ShapeDtypeStructs carrying their shardings: what a compile lowers
    and what Orbax restores onto (checkpoint.abstract_like)."""
    return ckpt_lib.abstract_like(self.abstract_state, self.state_shardings)

  def _abstract_batch(self, split: data_lib.Split, batch_size: int, mask: bool) -> dict:
    """ShapeDtypeStructs (sharded over 'data') of a global batch of `split`, from one
    transformed example: what a compile needs, without loading a batch."""
    count = data_lib.pipeline.uniforms_per_example(split.transform)
    example = split.transform(split.source[0], np.full(count, 0.5) if count else None)
    batch_sharding = sharding.batch_sharding(self.mesh)
    abstract = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
    image = np.asarray(example["image"])
    batch = {"image": abstract((batch_size,) + image.shape, image.dtype),
             "label": abstract((batch_size,), np.asarray(example["label"]).dtype)}
    if mask:
      batch["mask"] = abstract((batch_size,), np.bool_)
    return batch

  def compile_train_step(self) -> Callable[[], Callable]:
    """Starts compiling the train step in a background thread, from abstract shapes alone,
    so the compile overlaps the input pipeline's start-up and the model's initialization.
    Returns `wait()`: blocks until the compile is done and gives the compiled step (same
    call as `train_step`); if the background compile failed it is logged and `wait()`
    gives `train_step`, which compiles at its first call as usual."""
    result: dict[str, Any] = {}

    def compile_step() -> None:
      try:
        state = self.sharded_abstract_state()
        batch = self._abstract_batch(self.train_split, self.config.batch_size, mask=False)
        started = time.time()
        result["step"] = self.train_step.lower(state, batch).compile()
        logging.info("Train step compiled (%.1f s, beside the start-up).", time.time() - started)
      except Exception as e:  # noqa: BLE001 - only an optimization: the call compiles
        logging.info("Train step not compiled ahead (%s: %s); it compiles at the first step.",
                     type(e).__name__, e)

    thread = threading.Thread(target=compile_step, name="compile-train-step", daemon=True)
    thread.start()

    def wait() -> Callable:
      thread.join()
      return result.get("step", self.train_step)
    return wait

  def train_batches(self, start_step: int = 0):
    """Global device batches of the training stream from `start_step` (data/device.py)."""
    return data_lib.train_batches(self.config, self.mesh, start_step=start_step,
                                  split=self.train_split)

  def eval_batches(self, ten_crop: bool | None = None):
    """One exact pass over the eval split; ten_crop None: `data.ten_crop`."""
    split = self.eval_split
    if ten_crop is not None and ten_crop != bool(self.config.data.ten_crop):
      split = data_lib.open_split(self.config, "eval", ten_crop=ten_crop)
    return data_lib.eval_batches(self.config, self.mesh, split=split)


def _check_config(config: Any, info: data_lib.DataInfo, mesh: Mesh) -> None:
  sharding.check_batch_size("batch_size", config.batch_size, mesh)
  sharding.check_batch_size("eval_batch_size", config.eval_batch_size, mesh)
  if config.model.in_channels != info.channels:
    raise UserError(f"model.in_channels={config.model.in_channels} but data.source="
                    f"{config.data.source!r} gives {info.channels}-channel images.")
  if config.model.num_classes != info.num_classes:
    raise UserError(f"model.num_classes={config.model.num_classes} but data.source="
                    f"{config.data.source!r} has {info.num_classes} classes.")
  for field in ("mean", "std"):
    values = tuple(config.data[field])
    if len(values) not in (1, info.channels):
      raise UserError(f"data.{field} has {len(values)} values; give 1 or {info.channels} "
                      "(one per channel).")
  if any(s <= 0 for s in config.data.std):
    raise UserError("data.std must be positive.")
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if config[field] <= 0:
      raise UserError(f"{field}={config[field]} must be positive.")
  for field in ("prefetch_batches", "device_prefetch", "num_workers"):
    if config.data[field] < 0:
      raise UserError(f"data.{field}={config.data[field]} must be 0 or more.")
  finetune.check_config(config)


def build(config: Any, mode: str = "train",
          devices: list[jax.Device] | None = None) -> Experiment:
  """The run of `config` in `mode` ('train' or 'eval') on `devices` (default: all of them).
  Raises UserError for config mistakes and missing data (naming the field or directory)."""
  if mode not in MODES:
    raise UserError(f"--mode={mode!r} is not one of {MODES}.")
  devices = jax.devices() if devices is None else list(devices)
  # config.parallel: data parallelism, the two towers on two devices, FSDP (docs/parallel.md).
  sharding.check_parallel_config(config.parallel.model, len(devices), config.model.variant)
  mesh = sharding.make_mesh(devices, model_parallel=config.parallel.model)
  eval_split = data_lib.open_split(config, "eval")
  train_split = data_lib.open_split(config, "train") if mode == "train" else None
  info = eval_split.info
  _check_config(config, info, mesh)
  kernels = models.resolve_kernels(config.model.kernels, config.model.group_impl,
                                   jax.default_backend())
  logging.info("Layer forms: %s", kernels.describe())
  dtype, dtype_why = models.resolve_dtype(config.model.dtype, jax.default_backend())
  logging.info("Compute dtype: %s [%s]", dtype, dtype_why)
  model_config = dict(config.model.to_dict(), kernels=kernels.kernels,
                      group_impl=kernels.group_impl, dtype=dtype)
  model = models.create_model(**model_config, **sharding.model_axes(mesh, config))
  tx = optim.make_optimizer(config)

  steps_per_epoch = total_steps = eval_every = lr_schedule = None
  if train_split is not None:
    if train_split.num_examples < config.batch_size:
      raise UserError(f"The training split has {train_split.num_examples} examples, fewer "
                      f"than one batch (batch_size={config.batch_size}).")
    steps_per_epoch = max(1, train_split.num_examples // config.batch_size)
    if config.num_train_steps > 0:
      total_steps = int(config.num_train_steps)
    else:
      total_steps = int(math.ceil(config.num_epochs * steps_per_epoch))
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
    lr_schedule = optim.learning_rate_fn(config, steps_per_epoch, total_steps)

  size, channels = config.model.image_size, config.model.in_channels
  input_shape = (1, size, size, channels)
  abstract_state, shardings = state_lib.abstract_train_state(model, tx, input_shape, mesh)
  mean = np.asarray(config.data.mean, np.float32)
  std = np.asarray(config.data.std, np.float32)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_step = None
  if lr_schedule is not None:
    # Traced under the mesh, so the model can place its towers on the 'model' axis.
    train_step = jax.jit(
        sharding.with_mesh(steps.make_train_step(
            model, tx, lr_schedule, optim.hyperparams(config), mean, std, size,
            train_split.info.train_augment), mesh),
        in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
        donate_argnums=(0,))
  eval_step = jax.jit(
      sharding.with_mesh(steps.make_eval_step(model, mean, std, size), mesh),
      in_shardings=(shardings["params"], shardings["batch_stats"], batch_sharding),
      out_shardings=replicated)
  return Experiment(config=config, mode=mode, mesh=mesh, info=info, eval_split=eval_split,
                    train_split=train_split, model=model, kernels=kernels, tx=tx,
                    lr_schedule=lr_schedule, steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, eval_every_steps=eval_every,
                    input_shape=input_shape, abstract_state=abstract_state,
                    state_shardings=shardings, train_step=train_step, eval_step=eval_step)
