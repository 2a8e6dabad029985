"""The training loop: init or resume, then step and run the periodic actions (periodic.py).

One step: the next global batch (already on the devices, data/device.py) -> the jitted train
step -> its metrics stay on the device until a log line or a save reads them. The data order
is a function of (seed, step): a resumed run, whatever its worker or process count, sees the
batches the interrupted one would have seen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import signal
import time
from typing import Any

import jax
from absl import logging

from alexnet_jax import checkpoint, evaluate, periodic, sharding, state as state_lib
from alexnet_jax.checkpoint import layout
from alexnet_jax.experiment import Experiment
from alexnet_jax.inference import conv1_filter_grid, towers_of
from alexnet_jax.metrics_writer import MetricWriter
from alexnet_jax.transfer import finetune


@dataclasses.dataclass
class TrainResult:
  """final_step: the last step trained; interrupted_by: the signal number when stopped by
  SIGTERM/SIGINT, else None; eval_metrics: the last evaluation's metrics, if any."""
  final_step: int
  interrupted_by: int | None
  eval_metrics: dict[str, float] | None


def train_and_evaluate(exp: Experiment, workdir: str | pathlib.Path) -> TrainResult:
  """Trains `exp` (built with mode='train') in `workdir` (checkpoint.layout), resuming from
  its newest readable checkpoint. Raises UserError for a refused resume, a workdir in use,
  divergence or a failed save; returns normally when stopped by SIGTERM/SIGINT."""
  workdir = pathlib.Path(workdir).absolute()
  is_chief = jax.process_index() == 0

  def log(message: str) -> None:  # process 0's console; the line names the caller's file
    if is_chief:
      logging.info(message, stacklevel=2)

  with contextlib.ExitStack() as cleanup:
    if is_chief:
      layout.prepare(workdir)
      cleanup.callback(layout.lock(workdir).release)
    checkpointer = checkpoint.Checkpointer(workdir / layout.CHECKPOINTS_DIR,
                                           keep=exp.config.keep_checkpoints)
    cleanup.callback(_close_quietly, checkpointer)
    # Checked before anything is written, so a refused resume leaves the workdir as it was.
    restored = checkpoint.restore_for_resume(checkpointer, exp.sharded_abstract_state(),
                                             exp.config, log)
    step = restored[1] if restored is not None else 0
    if restored is not None:
      if step >= exp.plan.total_steps:
        log(f"Already trained to step {step} (num_train_steps/num_epochs give "
            f"{exp.plan.total_steps}); nothing to do. Use --mode=eval to evaluate it.")
        return TrainResult(final_step=step, interrupted_by=None, eval_metrics=None)
      log(f"Resumed from step {step} in {checkpointer.directory}.")
    # Start-up in parallel: the loader workers start and load the first batch, and the train
    # step compiles from abstract shapes, while the model is initialized and the writers open.
    batches = exp.train_batches(start_step=step)
    batches.start()
    cleanup.callback(batches.close)
    compiled_step = exp.compile_train_step()
    if is_chief:
      with open(workdir / layout.CONFIG_FILE, "w", encoding="utf-8") as f:
        json.dump(exp.config.to_dict(), f, indent=2, default=str)
    writer = MetricWriter(workdir, enabled=is_chief)
    cleanup.callback(writer.close)
    state = restored[0] if restored is not None else _init_state(exp, log)
    return _loop(exp, checkpointer, writer, state, step, log, batches, compiled_step)


def _close_quietly(checkpointer: checkpoint.Checkpointer) -> None:
  try:
    checkpointer.close()
  except Exception:  # noqa: BLE001 - a failed save was already reported by the loop
    pass


def _init_state(exp: Experiment, log) -> Any:
  config = exp.config
  log(f"Initializing {config.model.variant} model ({exp.mesh.devices.size} device(s), seed "
      f"{config.seed}).")
  state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape,
                                       exp.state_shardings, config.seed)
  if config.init_from:  # only for a fresh run: a resumed one has its own checkpoint
    state = finetune.initialize_from(
        state, init_from=config.init_from, reinit=config.reinit, freeze=config.freeze,
        model_config=config.model.to_dict(), tx=exp.tx, shardings=exp.state_shardings, log=log)
  return state


def _loop(exp: Experiment, checkpointer, writer: MetricWriter, state: Any, step: int, log,
          batches, compiled_step) -> TrainResult:
  """Steps from `step` to the end. batches: the started training stream from `step`;
  compiled_step: `Experiment.compile_train_step()`'s wait function."""
  plan, config = exp.plan, exp.config
  stop = periodic.StopRequest()
  meter = periodic.Meter()
  prestart = periodic.EvalPrestart(exp.eval_batches)
  towers = towers_of(config.model.variant)
  evaluation = periodic.Evaluate(
      plan, lambda params, stats, pass_, stop_: evaluate.run_eval(
          exp, params, stats, batches=pass_, stop=stop_),
      prestart, meter, writer, stop, exp.plateau, exp.mesh,
      # Every process takes part (the kernel may be split over processes).
      lambda params: conv1_filter_grid(sharding.to_host(params["conv1"]["kernel"]), towers),
      exp.precompile_eval, log)
  saver = periodic.Save(plan, checkpointer, layout.meta(config, exp.info.class_names), meter,
                        stop, log, saved_step=step if checkpointer.latest_step() == step else None)
  stall = periodic.StallWatch(config.model.num_classes, config.stall_warning_steps,
                              plan.warmup_steps)
  actions = [periodic.LogStep(plan, meter, writer, batches, stall,
                              config.data.max_skip_fraction, step + 1, log),
             evaluation, saver]
  to_go = (f"{plan.total_steps} steps" if step == 0 else
           f"steps {step + 1}-{plan.total_steps} of {plan.total_steps}")
  log(f"Training {to_go} ({plan.steps_per_epoch} per epoch, global batch {plan.global_batch}: "
      f"{plan.process_batch} per process, {plan.device_batch} per device) in "
      f"{checkpointer.directory.parent}.")
  try:
    log("Waiting for the train step's compile and the first batch...")
    waited = time.time()
    train_step = compiled_step()
    # A signal during start-up that start-up did not stop on (runtime/interrupts.py): stop
    # before the first step, agreed by every process.
    stopped_before = stop.requested()
    first_step = step + 1
    while step < plan.total_steps and not stopped_before:
      try:
        batch = next(batches)
      except Exception:  # the input pipeline broke (a worker killed, a file gone)
        saver.save_before_failure(step, state)
        raise
      state, metrics = train_step(state, batch)
      step += 1
      meter.add(step, metrics)
      if step == first_step:  # meter.add waited for it
        log(f"First step done {time.time() - waited:.1f} s after the model was ready (the "
            "compile and the first batch ran beside its initialization).")
      for action in actions:
        state = action(step, state)
      if saver.stopped:
        break
    checkpointer.wait()
  finally:
    prestart.close()
    stop.restore_handlers()
  if stop.signum is not None:
    name = signal.Signals(stop.signum).name
    if stopped_before:
      logging.warning("Stopped by %s before training step %d; checkpoints written so far are "
                      "kept. Run the same command to resume.", name, step + 1)
    else:
      logging.warning("Stopped by %s after step %d; checkpoint saved in %s. Run the same "
                      "command to resume.", name, saver.saved_step, checkpointer.directory)
  return TrainResult(final_step=step, interrupted_by=stop.signum,
                     eval_metrics=evaluation.metrics)
