"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly on a signal."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from alexnet_jax import (checkpoint as ckpt_lib, evaluate, finetune, interpret, optim, parallel,
                         state as state_lib)
from alexnet_jax.data import pipeline
from alexnet_jax.experiment import Experiment
from alexnet_jax.metrics_writer import MetricWriter

# Past this many records read, more than data.max_skip_fraction unreadable ones stops the run
# (a smaller sample says too little: one bad file in the first batch is not a broken dataset).
MIN_RECORDS_FOR_SKIP_CHECK = 1000


@dataclasses.dataclass
class TrainResult:
  final_step: int
  interrupted_by: int | None  # signal number when stopped by SIGTERM/SIGINT
  eval_metrics: dict[str, float] | None


class StopRequest:
  """SIGTERM/SIGINT set a flag; the loop finishes its step, checkpoints and returns.

  A second SIGINT (Ctrl-C twice) interrupts at once.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.signum is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    logging.warning("Received %s: stopping after this step and saving a checkpoint.",
                    signal.Signals(signum).name)

  def requested(self) -> bool:
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    # Every process must stop at the same step, or the next collective hangs.
    return bool(multihost_utils.process_allgather(np.int32(local)).max())

  def restore_handlers(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


class _TrainMeter:
  """Averages of the step metrics since the last log line, fetched from the device lazily."""

  def __init__(self):
    self._pending: list[dict[str, jax.Array]] = []
    self._since: float | None = None  # None until the first (compiling) step is done
    self._timed_steps = 0

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self._pending.append(metrics)
    if self._since is None:
      jax.block_until_ready(metrics)  # the first step includes compilation: not timed
      self._since = time.time()
    else:
      self._timed_steps += 1

  def summary(self, batch_size: int) -> dict[str, float]:
    fetched = jax.device_get(self._pending)
    now = time.time()
    out = {f"train/{k}": float(np.mean([m[k] for m in fetched])) for k in ("loss", "top1", "top5")}
    out["train/lr"] = float(fetched[-1]["lr"])
    if self._timed_steps > 0:
      out["train/images_per_sec"] = self._timed_steps * batch_size / max(now - self._since, 1e-9)
    self._pending, self._since, self._timed_steps = [], now, 0
    return out


def _write_config(config, workdir: pathlib.Path) -> None:
  with open(workdir / "config.json", "w", encoding="utf-8") as f:
    json.dump(config.to_dict(), f, indent=2, default=str)


def _restore_or_init(exp: Experiment, checkpointer: ckpt_lib.Checkpointer,
                     train_iter, writer: MetricWriter) -> Any:
  latest = checkpointer.latest_step()
  if latest is None:
    writer.log(f"Initializing {exp.config.model.variant} model "
               f"({jax.device_count()} device(s), seed {exp.config.seed}).")
    state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape, exp.mesh,
                                         exp.config.seed)
    if exp.config.init_from:  # only for a fresh run: a resumed one has its own checkpoint
      state = finetune.initialize_from(state, exp.config, exp.tx, exp.state_shardings,
                                       writer.log)
    return state
  ckpt_lib.check_compatible(checkpointer.read_meta(latest), exp.config.model.to_dict(),
                            str(checkpointer.directory))
  abstract = ckpt_lib.abstract_like(exp.abstract_state, exp.state_shardings)
  state = checkpointer.restore(latest, abstract, train_iter)
  writer.log(f"Resumed from step {latest} in {checkpointer.directory}.")
  return state


def _format_line(step: int, exp: Experiment, metrics: dict[str, float], eta_s: float) -> str:
  line = (f"step {step}/{exp.total_steps} epoch {exp.epoch_of(step):.2f} | "
          f"loss {metrics['train/loss']:.4f} top1 {metrics['train/top1']:.4f} "
          f"lr {metrics['train/lr']:.3g}")
  if "train/images_per_sec" in metrics:
    line += f" | {metrics['train/images_per_sec']:.1f} img/s"
  if eta_s == eta_s:  # not NaN
    line += f" | ETA {datetime.timedelta(seconds=int(eta_s))}"
  return line


def _update_plateau(exp: Experiment, state: Any, top1: float, writer: MetricWriter) -> Any:
  sched = exp.config.schedule
  if sched.name != "plateau":
    return state
  rule = optim.Plateau(sched.factor, sched.patience, sched.max_reductions, sched.min_delta)
  current = {k: float(v) for k, v in jax.device_get(state["schedule"]).items()}
  updated, reduced = rule.update(current, top1)
  if reduced:
    writer.log(f"eval/top1 has not improved for {sched.patience} evaluations: learning rate "
               f"scaled by {sched.factor} (reduction {int(updated['reductions'])} of "
               f"{sched.max_reductions}).")
  new_schedule = {k: np.float32(v) for k, v in updated.items()}
  return dict(state, schedule=parallel.replicate(new_schedule, exp.mesh))


def train_and_evaluate(exp: Experiment, workdir: str | pathlib.Path) -> TrainResult:
  config = exp.config
  workdir = pathlib.Path(workdir)
  is_chief = jax.process_index() == 0
  if is_chief:
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(config, workdir)
  writer = MetricWriter(workdir, enabled=is_chief)
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=config.keep_checkpoints)
  train_iter = pipeline.to_iterator(exp.datasets.train, num_workers=config.data.num_workers,
                                    prefetch_batches=config.data.prefetch_batches)
  state = _restore_or_init(exp, checkpointer, train_iter, writer)
  step = int(jax.device_get(state["step"]))
  if step >= exp.total_steps:
    writer.log(f"Already trained to step {step} (num_train_steps/num_epochs give "
               f"{exp.total_steps}); nothing to do. Use --mode=eval to evaluate.")
  meta = exp.checkpoint_meta()
  stop = StopRequest()
  meter = _TrainMeter()
  skipped = records = 0
  eval_metrics = None
  last_saved = step if checkpointer.latest_step() == step else None
  timing_start = timing_from = None  # for the ETA: wall time from the end of the first step
  writer.log(f"Training {exp.total_steps} steps ({exp.steps_per_epoch} per epoch, global batch "
             f"{config.batch_size}) in {workdir}.")
  try:
    while step < exp.total_steps:
      batch = next(train_iter)
      skipped += int(batch.pop("skipped"))
      records += len(batch["label"])
      state, metrics = exp.train_step(state, parallel.to_global_batch(batch, exp.mesh))
      step += 1
      meter.add(metrics)
      if timing_start is None:
        timing_start, timing_from = time.time(), step
      is_last = step == exp.total_steps

      if step % config.log_every_steps == 0 or is_last:
        summary = meter.summary(config.batch_size)
        summary["train/epoch"] = exp.epoch_of(step)
        summary["data/skipped"] = _global_sum(skipped)
        eta = float("nan")
        if timing_start is not None and step > timing_from:
          eta = (exp.total_steps - step) * (time.time() - timing_start) / (step - timing_from)
        writer.write(step, summary)
        writer.log(_format_line(step, exp, summary, eta))
        _check_skips(config, summary["data/skipped"], _global_sum(records))

      if step % exp.eval_every_steps == 0 or (is_last and config.eval_at_end):
        eval_metrics = evaluate.run_eval(exp, state["params"], state["batch_stats"])
        eval_metrics["train/epoch"] = exp.epoch_of(step)
        writer.write(step, eval_metrics)
        writer.log(f"eval at step {step}: loss {eval_metrics['eval/loss']:.4f} top1 "
                   f"{eval_metrics['eval/top1']:.4f} top5 {eval_metrics['eval/top5']:.4f} "
                   f"({eval_metrics['eval/num_examples']} examples)")
        state = _update_plateau(exp, state, eval_metrics["eval/top1"], writer)
        _write_filters_image(exp, state, step, writer)

      stopping = stop.requested() or checkpointer.reached_preemption(step)
      if step % config.checkpoint_every_steps == 0 or is_last or stopping:
        checkpointer.save(step, state, train_iter, meta)
        last_saved = step
      if stopping:
        break
  finally:
    checkpointer.wait()
    checkpointer.close()
    writer.close()
    stop.restore_handlers()
  if stop.signum is not None:
    logging.warning("Stopped by %s after step %d; checkpoint saved in %s. Run the same command "
                    "to resume.", signal.Signals(stop.signum).name, last_saved,
                    checkpointer.directory)
  return TrainResult(final_step=step, interrupted_by=stop.signum, eval_metrics=eval_metrics)


def _write_filters_image(exp: Experiment, state: Any, step: int, writer: MetricWriter) -> None:
  """conv1's filters as one picture in TensorBoard (the two towers side by side)."""
  # Gathered on every process (a collective when the towers are split over processes).
  kernel = finetune.to_host(state["params"]["conv1"]["kernel"])
  if not writer.enabled:
    return
  writer.image(step, "filters/conv1",
               interpret.conv1_filter_grid(kernel, interpret.towers_of(exp.config.model.variant)))


def _global_sum(value: int) -> int:
  if jax.process_count() == 1:
    return value
  return int(multihost_utils.process_allgather(np.int64(value)).sum())


def _check_skips(config, skipped: int, records: int) -> None:
  if records >= MIN_RECORDS_FOR_SKIP_CHECK and skipped > config.data.max_skip_fraction * records:
    raise RuntimeError(
        f"{skipped} of {records} training records could not be read, more than "
        f"data.max_skip_fraction={config.data.max_skip_fraction}. The skipped files are named in "
        "the log above; repair or remove them, or raise --config.data.max_skip_fraction. "
        "Checkpoints and metrics written so far are kept.")
