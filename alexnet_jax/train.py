"""The training loop: init or resume, step, and the periodic actions of hooks.py.

One step: the next global batch (already on the devices, data/device.py) -> the jitted train
step -> its metrics stay on the device until a log line or a save reads them. The data order
is a function of (seed, step): a resumed run, whatever its worker or process count, sees the
batches the interrupted one would have seen.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import re
import signal
import time
from typing import Any

import filelock
import jax
import numpy as np
from absl import logging

from alexnet_jax import checkpoint as ckpt_lib, evaluate, hooks, state as state_lib
from alexnet_jax.errors import CheckpointWriteError, UserError
from alexnet_jax.experiment import Experiment
from alexnet_jax.metrics_writer import MetricWriter
from alexnet_jax.runtime import logs
from alexnet_jax.transfer import finetune

LOCK_FILE = ".alexnet_jax.lock"


@dataclasses.dataclass
class TrainResult:
  """final_step: the last step trained; interrupted_by: the signal number when stopped by
  SIGTERM/SIGINT, else None; eval_metrics: the last evaluation's metrics, if any."""
  final_step: int
  interrupted_by: int | None
  eval_metrics: dict[str, float] | None


def _prepare_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir={workdir} is a file, not a directory: name a new or existing "
                    "run directory.")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create --workdir={workdir}: {e.strerror}.") from e
  if not os.access(workdir, os.W_OK):
    raise UserError(f"--workdir={workdir} is not writable: choose another directory.")


def _lock(workdir: pathlib.Path) -> filelock.BaseFileLock:
  """Holds the workdir for this run (released on exit; the OS releases it if the process
  dies, so a lock is never stale)."""
  lock = filelock.FileLock(str(workdir / LOCK_FILE))
  try:
    lock.acquire(timeout=0)
  except filelock.Timeout:
    holder = (workdir / (LOCK_FILE + ".pid"))
    who = f" (process {holder.read_text().strip()})" if holder.is_file() else ""
    raise UserError(f"Another trainer{who} is running in --workdir={workdir}: wait for it to "
                    "finish or stop it, or use another --workdir.") from None
  (workdir / (LOCK_FILE + ".pid")).write_text(f"{os.getpid()}\n")
  return lock


def _init_state(exp: Experiment, log) -> Any:
  log(f"Initializing {exp.config.model.variant} model ({exp.mesh.devices.size} device(s), seed "
      f"{exp.config.seed}).")
  state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape, exp.mesh,
                                       exp.config.seed)
  if exp.config.init_from:  # only for a fresh run: a resumed one has its own checkpoint
    state = finetune.initialize_from(state, exp.config, exp.tx, exp.state_shardings, log)
  return state


def _format_line(step: int, exp: Experiment, metrics: dict[str, float], eta_s: float) -> str:
  line = (f"step {step}/{exp.total_steps} epoch {exp.epoch_of(step):.2f} | "
          f"loss {metrics['train/loss']:.4f} top1 {metrics['train/top1']:.4f} "
          f"lr {metrics['train/lr']:.3g}")
  if "train/images_per_sec" in metrics:
    line += f" | {metrics['train/images_per_sec']:.1f} img/s"
  if eta_s == eta_s:  # not NaN
    line += f" | ETA {datetime.timedelta(seconds=int(eta_s))}"
  if metrics.get("data/skipped"):  # unreadable training files so far, each named in the log
    line += f" | {metrics['data/skipped']} files skipped"
  return line


def _checkpoint_megabytes(exp: Experiment) -> float:
  leaves = jax.tree.leaves(exp.abstract_state)
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in leaves) / 2**20




def _storage_error_text(e: BaseException) -> str | None:
  """The OS's words for a failed write, or None when `e` is not a storage error."""
  if isinstance(e, OSError):
    return e.strerror or str(e)
  match = logs.STORAGE_ERROR.search(str(e))
  if not match:
    return None
  os_error = re.search(r"Failed to write[^\]\n]*?: ([^\[\n]+)", str(e))
  return (os_error.group(1) if os_error else match.group(0)).strip()


def _storage_failure(exp: Experiment, checkpointer, step: int | None, last_saved: int | None,
                     e: BaseException) -> CheckpointWriteError | None:
  reason = _storage_error_text(e)
  if reason is None:
    return None
  # Saves are asynchronous: the failure may be an earlier step's, found by this save.
  what = f"a checkpoint (found at the save of step {step})" if step is not None else "a checkpoint"
  del last_saved  # a save is asynchronous: what is complete on disk is the truth
  try:
    checkpointer.reload()
    complete = checkpointer.all_steps()
  except Exception:  # noqa: BLE001 - the directory itself may be unreadable
    complete = []
  kept = f"step {max(complete)}" if complete else "none"
  return CheckpointWriteError(
      f"Could not write {what} to {checkpointer.directory}: {reason}. A checkpoint needs about "
      f"{_checkpoint_megabytes(exp):.0f} MB; free space or use another --workdir. Training "
      f"stopped here; the last complete checkpoint is {kept}.")


def _save(exp: Experiment, checkpointer, step: int, state: Any, meta: dict,
          last_saved: int | None) -> None:
  try:
    checkpointer.save(step, state, None, meta)
  except Exception as e:  # noqa: BLE001 - re-raised unless it is the disk's fault
    failure = _storage_failure(exp, checkpointer, step, last_saved, e)
    if failure is None:
      raise
    raise failure from e


def _wait_for_saves(exp: Experiment, checkpointer, last_saved: int | None) -> None:
  try:
    checkpointer.wait()
  except Exception as e:  # noqa: BLE001 - re-raised unless it is the disk's fault
    failure = _storage_failure(exp, checkpointer, None, last_saved, e)
    if failure is None:
      raise
    raise failure from e


def train_and_evaluate(exp: Experiment, workdir: str | pathlib.Path) -> TrainResult:
  """Trains `exp` (built with mode='train') in `workdir`, resuming from its newest readable
  checkpoint. Writes config.json, metrics.jsonl, tensorboard/ and checkpoints/ (process 0;
  every process takes part in saves). Raises UserError for a refused resume, a workdir in
  use, divergence or a failed save; returns normally when stopped by SIGTERM/SIGINT."""
  config = exp.config
  workdir = pathlib.Path(workdir).absolute()
  is_chief = jax.process_index() == 0
  if is_chief:
    _prepare_workdir(workdir)
  lock = _lock(workdir) if is_chief else None
  log = lambda message: logging.info(message) if is_chief else None  # noqa: E731
  checkpointer = None
  writer = None
  try:
    checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
    # Checked before anything is written, so a refused resume leaves the workdir as it was.
    restored = ckpt_lib.restore_for_resume(checkpointer, exp.sharded_abstract_state(), config,
                                           log)
    if restored is not None:
      step = restored[1]
      if step >= exp.total_steps:
        log(f"Already trained to step {step} (num_train_steps/num_epochs give "
            f"{exp.total_steps}); nothing to do. Use --mode=eval to evaluate it.")
        return TrainResult(final_step=step, interrupted_by=None, eval_metrics=None)
      log(f"Resumed from step {step} in {checkpointer.directory}.")
    step = restored[1] if restored is not None else 0
    # Start-up in parallel: the loader workers start and load the first batch, and the train
    # step compiles from abstract shapes, while the model is initialized and the writers open.
    batches = exp.train_batches(start_step=step)
    batches.start()
    try:
      compiled_step = exp.compile_train_step()
      if is_chief:
        with open(workdir / "config.json", "w", encoding="utf-8") as f:
          json.dump(config.to_dict(), f, indent=2, default=str)
      writer = MetricWriter(workdir, enabled=is_chief)
      if restored is not None:
        # Readers of metrics.jsonl: records of steps after this one, written before the
        # restart, are superseded by the ones that follow this marker.
        writer.write(step, {"event": "resumed"})
        state = restored[0]
      else:
        state = _init_state(exp, log)
    except BaseException:
      batches.close()
      raise
    return _loop(exp, workdir, checkpointer, writer, state, step, log, batches, compiled_step)
  finally:
    if checkpointer is not None:
      try:
        checkpointer.close()
      except Exception:  # noqa: BLE001 - a failed save was already reported by the loop
        pass
    if writer is not None:
      writer.close()
    if lock is not None:
      lock.release()


def _loop(exp: Experiment, workdir: pathlib.Path, checkpointer, writer: MetricWriter,
          state: Any, step: int, log, batches, compiled_step) -> TrainResult:
  """Steps from `step` to the end. batches: the started training stream from `step`
  (closed here); compiled_step: `Experiment.compile_train_step()`'s wait function."""
  config = exp.config
  meta = exp.checkpoint_meta()
  stop = hooks.StopRequest()
  meter = hooks.TrainMeter()
  warmup_steps = int(round(config.schedule.warmup_epochs * exp.steps_per_epoch))
  stall = hooks.StallWatch(config.model.num_classes, config.stall_warning_steps, warmup_steps)
  eval_metrics = None
  last_saved = step if checkpointer.latest_step() == step else None
  timing_start = timing_from = None  # for the ETA: wall time from the end of the first step
  first_step = step + 1
  to_go = (f"{exp.total_steps} steps" if step == 0 else
           f"steps {step + 1}-{exp.total_steps} of {exp.total_steps}")
  log(f"Training {to_go} ({exp.steps_per_epoch} per epoch, global batch "
      f"{config.batch_size}) in {workdir}.")
  eval_prestart = hooks.EvalPrestart(exp)
  try:
    log("Waiting for the train step's compile and the first batch...")
    waited = time.time()
    train_step = compiled_step()
    # A signal during start-up that start-up did not stop on (runtime/interrupts.py): stop
    # before the first step, agreed by every process.
    stopped_before = stop.requested()
    while step < exp.total_steps and not stopped_before:
      try:
        batch = next(batches)
      except Exception:
        # The input pipeline broke (a worker killed, a file gone): keep the steps done so far.
        if step != last_saved and step > 0:
          meter.check_finite()
          _save(exp, checkpointer, step, state, meta, last_saved)
          _wait_for_saves(exp, checkpointer, last_saved)
          logging.warning("The input pipeline failed after step %d; saved a checkpoint of "
                          "that step first.", step)
        raise
      state, metrics = train_step(state, batch)
      step += 1
      meter.add(step, metrics)
      if timing_start is None:
        log(f"First step done {time.time() - waited:.1f} s after the model was ready (the "
            "compile and the first batch ran beside its initialization).")
        timing_start, timing_from = time.time(), step
        if config.eval_at_end or exp.eval_every_steps <= exp.total_steps:
          exp.precompile_eval()  # while the next steps run
      is_last = step == exp.total_steps

      if step % config.log_every_steps == 0 or is_last or step == first_step:
        meter.check_finite()
        summary = meter.summary(config.batch_size)
        summary["train/epoch"] = exp.epoch_of(step)
        summary["data/skipped"] = hooks.global_sum(batches.skipped)
        eta = float("nan")
        if step > timing_from:
          eta = (exp.total_steps - step) * (time.time() - timing_start) / (step - timing_from)
        writer.write(step, summary)
        log(_format_line(step, exp, summary, eta))
        warning = stall.update(step, summary["train/loss"])
        if warning and writer.enabled:
          logging.warning(warning)
        hooks.check_skips(config.data.max_skip_fraction, summary["data/skipped"],
                          hooks.global_sum(batches.batches * config.batch_size
                                           // jax.process_count()))

      if hooks.evaluates_at(step, exp.eval_every_steps, exp.total_steps, config.eval_at_end):
        metrics_now = evaluate.run_eval(exp, state["params"], state["batch_stats"],
                                        batches=eval_prestart.take(), stop=stop.requested)
        if metrics_now is not None:  # None: abandoned for a stop request
          eval_metrics = metrics_now
          meter.exclude(eval_metrics["eval/seconds"])  # images/s is the training rate
          eval_metrics["train/epoch"] = exp.epoch_of(step)
          writer.write(step, eval_metrics)
          log(f"eval at step {step}: loss {eval_metrics['eval/loss']:.4f} top1 "
              f"{eval_metrics['eval/top1']:.4f} top5 {eval_metrics['eval/top5']:.4f} "
              f"({eval_metrics['eval/num_examples']} examples, "
              f"{eval_metrics['eval/seconds']:.1f} s)")
          state = hooks.update_plateau(config, exp.mesh, state, eval_metrics["eval/top1"], log)
          picture = hooks.filters_image(config.model.variant,
                                        state["params"]["conv1"]["kernel"])
          writer.image(step, "filters/conv1", picture)

      eval_prestart.after_step(step, hooks.next_eval_step(
          step, exp.eval_every_steps, exp.total_steps, config.eval_at_end))
      stopping = (stop.requested(step, config.log_every_steps)
                  or checkpointer.reached_preemption(step))
      if step % config.checkpoint_every_steps == 0 or is_last or stopping:
        meter.check_finite()  # never save a diverged state
        _save(exp, checkpointer, step, state, meta, last_saved)
        last_saved = step
      if stopping:
        break
    _wait_for_saves(exp, checkpointer, last_saved)
  finally:
    batches.close()
    eval_prestart.close()
    stop.restore_handlers()
    try:
      checkpointer.wait()
    except Exception:  # noqa: BLE001 - already reported, or the loop's own error is on its way
      pass
  if stop.signum is not None and stopped_before:
    logging.warning("Stopped by %s before training step %d; checkpoints written so far are "
                    "kept. Run the same command to resume.", signal.Signals(stop.signum).name,
                    step + 1)
  elif stop.signum is not None:
    logging.warning("Stopped by %s after step %d; checkpoint saved in %s. Run the same command "
                    "to resume.", signal.Signals(stop.signum).name, last_saved,
                    checkpointer.directory)
  return TrainResult(final_step=step, interrupted_by=stop.signum, eval_metrics=eval_metrics)
