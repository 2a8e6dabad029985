"""Everything a run is made of, built once from the config: mesh, the plan of the run, model
and its kernels, optimizer, abstract train state, and the jitted steps with their shardings.

This is the top of the run: below it, the loop and its parts (plan, periodic actions, steps,
state, sharding, optim) take values built here; the data sources' builders, called from here
(data.open_split), read their own config.data fields. Data is built per mode and on demand: training opens the train and eval splits, `--mode=eval`
only the eval split (a data directory holding only the validation images is enough).
Config mistakes a user can make are caught here, each with one sentence naming the field.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from alexnet_jax import checkpoint, data as data_lib
from alexnet_jax import models, optim, plan as plan_lib, sharding, state as state_lib, steps
from alexnet_jax.errors import UserError
from alexnet_jax.transfer import finetune

MODES = ("train", "eval")


@dataclasses.dataclass
class Experiment:
  """A run's parts. In eval mode train_split and train_step are None.

  train_step: (state, batch) -> (state, metrics), batch from `train_batches`.
  eval_step: (params, batch_stats, batch) -> sums over the masked rows (steps.make_eval_step).
  input_shape: (1, image_size, image_size, in_channels), what the model is initialized with.
  plateau: the paper's rule when schedule.name is 'plateau', else None.
  """
  config: Any
  mode: str
  mesh: Mesh
  plan: plan_lib.Plan
  loading: data_lib.Loading
  info: data_lib.DataInfo
  eval_split: data_lib.Split
  train_split: data_lib.Split | None
  model: Any
  kernels: Any  # models.KernelChoice: the layer forms chosen for this backend
  tx: Any
  plateau: optim.Plateau | None
  input_shape: tuple[int, ...]
  abstract_state: Any
  state_shardings: Any
  train_step: Callable | None
  eval_step: Callable

  def sharded_abstract_state(self) -> Any:
    """The train state as ShapeDtypeStructs carrying their shardings: what a compile lowers
    and what Orbax restores onto (checkpoint.abstract_like)."""
    return checkpoint.abstract_like(self.abstract_state, self.state_shardings)

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
    """Starts compiling the train step from abstract shapes in a background thread, so the
    compile overlaps the input pipeline's start-up and the model's initialization. Returns
    `wait()`, which gives the compiled step (same call as `train_step`), or `train_step`
    itself (compiled at its first call) if the background compile failed."""
    return _compile_in_background("train step", self.train_step, lambda: (
        self.sharded_abstract_state(),
        self._abstract_batch(self.train_split, self.plan.global_batch, mask=False)))

  def precompile_eval(self) -> None:
    """Compiles the eval step in the background, so the first evaluation does not pause for
    it (JAX reuses the compiled executable when the step is first called)."""
    def args():
      state = self.sharded_abstract_state()
      return (state["params"], state["batch_stats"],
              self._abstract_batch(self.eval_split, self.plan.eval_batch, mask=True))
    _compile_in_background("eval step", self.eval_step, args)

  def train_batches(self, start_step: int = 0):
    """Global device batches of the training stream from `start_step` (data/device.py)."""
    return data_lib.train_batches(self.train_split, self.mesh, seed=self.config.seed,
                                  batch_size=self.plan.global_batch, loading=self.loading,
                                  start_step=start_step)

  def eval_batches(self, ten_crop: bool | None = None):
    """One exact pass over the eval split; ten_crop None: `data.ten_crop`."""
    split = self.eval_split
    if ten_crop is not None and ten_crop != bool(self.config.data.ten_crop):
      split = data_lib.open_split(self.config, "eval", ten_crop=ten_crop)
    return data_lib.eval_batches(split, self.mesh, batch_size=self.plan.eval_batch,
                                 loading=self.loading)


def _compile_in_background(what: str, jitted: Callable,
                           abstract_args: Callable[[], tuple]) -> Callable[[], Callable]:
  """Lowers and compiles `jitted` for the abstract arguments `abstract_args()` gives, in a
  daemon thread. Returns `wait()`: the compiled function, or `jitted` when that failed (logged:
  it is only an optimization, the first call then compiles as usual; e.g. the example the
  batch's shapes come from is an unreadable file, which the loader will skip)."""
  result: dict[str, Callable] = {}

  def compile_now() -> None:
    started = time.time()
    try:
      result["compiled"] = jitted.lower(*abstract_args()).compile()
      logging.info("The %s compiled in the background (%.1f s).", what, time.time() - started)
    except Exception as e:  # noqa: BLE001 - only an optimization
      logging.info("The %s was not compiled ahead (%s: %s); it compiles at its first call.",
                   what, type(e).__name__, e)

  thread = threading.Thread(target=compile_now, name=f"compile {what}", daemon=True)
  thread.start()

  def wait() -> Callable:
    thread.join()
    return result.get("compiled", jitted)
  return wait


def _check_config(config: Any, info: data_lib.DataInfo) -> None:
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
  finetune.check_config(config)


def build(config: Any, mode: str = "train",
          devices: list[jax.Device] | None = None) -> Experiment:
  """The run of `config` in `mode` ('train' or 'eval') on `devices` (default: all of them).
  Raises UserError for config mistakes and missing data (naming the field or directory)."""
  if mode not in MODES:
    raise UserError(f"--mode={mode!r} is not one of {MODES}.")
  devices = jax.devices() if devices is None else list(devices)
  # config.parallel: data parallelism, the two towers on two devices, FSDP (docs/parallel.md).
  models.check_parallel(config.model.variant, config.parallel.model, len(devices))
  mesh = sharding.make_mesh(devices, model_parallel=config.parallel.model)
  eval_split = data_lib.open_split(config, "eval")
  train_split = data_lib.open_split(config, "train") if mode == "train" else None
  info = eval_split.info
  _check_config(config, info)
  plan = plan_lib.make_plan(
      config, num_devices=len(devices), num_processes=jax.process_count(),
      train_examples=train_split.num_examples if train_split else None,
      eval_examples=eval_split.num_examples)
  kernels = models.resolve_kernels(config.model.kernels, config.model.group_impl,
                                   jax.default_backend())
  logging.info("Layer forms: %s", kernels.describe())
  dtype, dtype_why = models.resolve_dtype(config.model.dtype, jax.default_backend())
  logging.info("Compute dtype: %s [%s]", dtype, dtype_why)
  axes = sharding.model_axes(mesh, fsdp=config.parallel.fsdp)
  model = models.create_model(**dict(config.model.to_dict(), kernels=kernels.kernels,
                                     group_impl=kernels.group_impl, dtype=dtype), **axes)
  tx = optim.make_optimizer(config.optimizer, config.freeze)
  size = config.model.image_size
  input_shape = (1, size, size, config.model.in_channels)
  abstract_state = state_lib.abstract_train_state(model, tx, input_shape)
  # Where each parameter lives: the model's partition rules, applied by sharding as data.
  specs = models.partition_specs(sharding.layer_leaf_shapes(abstract_state), **axes,
                                 axis_sizes=dict(mesh.shape))
  shardings = sharding.state_shardings(abstract_state, mesh, specs)
  mean = np.asarray(config.data.mean, np.float32)
  std = np.asarray(config.data.std, np.float32)

  batch_sharding = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)
  train_step = None
  if train_split is not None:
    learning_rate = optim.learning_rate_fn(config.optimizer, config.schedule,
                                           batch_size=plan.global_batch,
                                           steps_per_epoch=plan.steps_per_epoch,
                                           total_steps=plan.total_steps,
                                           warmup_steps=plan.warmup_steps)
    # Traced under the mesh, so the model can place its towers on the 'model' axis.
    train_step = jax.jit(
        sharding.with_mesh(steps.make_train_step(
            model, tx, learning_rate, optim.hyperparams(config.optimizer), mean, std, size,
            train_split.info.train_augment), mesh),
        in_shardings=(shardings, batch_sharding), out_shardings=(shardings, replicated),
        donate_argnums=(0,))
  eval_step = jax.jit(
      sharding.with_mesh(steps.make_eval_step(model, mean, std, size), mesh),
      in_shardings=(shardings["params"], shardings["batch_stats"], batch_sharding),
      out_shardings=replicated)
  plateau = optim.Plateau.of(config.schedule) if config.schedule.name == "plateau" else None
  return Experiment(config=config, mode=mode, mesh=mesh, plan=plan,
                    loading=data_lib.Loading.of(config.data), info=info, eval_split=eval_split,
                    train_split=train_split, model=model, kernels=kernels, tx=tx,
                    plateau=plateau, input_shape=input_shape, abstract_state=abstract_state,
                    state_shardings=shardings, train_step=train_step, eval_step=eval_step)
