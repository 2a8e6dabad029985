"""The periodic actions of the training loop, and what they share.

The loop (train.py) runs one step, then each action in turn; every action is a callable
(step, state) -> state that decides itself, from the run's plan, whether `step` is its turn:
- `LogStep`: at log_every, the first and the last step: the divergence check, the averaged
  metrics to metrics.jsonl/TensorBoard and one console line with an ETA, the stall warning,
  the unreadable-records check;
- `Evaluate`: at the plan's evaluation steps: one exact pass over the eval split (its input
  started ahead by `EvalPrestart`), the plateau rule, the conv1 filters picture;
- `Save`: at checkpoint_every, the last step, and when a stop was requested (a signal, or the
  scheduler's preemption notice): the divergence check, then an asynchronous checkpoint.
"""

from __future__ import annotations

import collections
import datetime
import math
import signal
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from alexnet_jax import optim, sharding
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import interrupts

# Past this many records read, more than data.max_skip_fraction unreadable ones stops the run
# (a smaller sample says too little: one bad file in the first batch is not a broken dataset).
MIN_RECORDS_FOR_SKIP_CHECK = 1000
# Steps dispatched ahead of the host: the loop waits for step k-2 before queueing step k+1, so
# a stop request takes effect within two steps and host memory stays bounded, while the
# device always has the next step queued.
MAX_STEPS_IN_FLIGHT = 2
# The train loss counts as "at chance" within this fraction of ln(num_classes).
STALL_TOLERANCE = 0.01


class TrainingDiverged(UserError):
  """The loss or the gradient became NaN or infinite."""


class StopRequest:
  """Whether SIGTERM/SIGINT asked the loop to stop: it finishes its step, abandons an
  evaluation, checkpoints and returns.

  Under the command line the process's runtime.interrupts policy is in force (a second
  Ctrl-C exits at once); used as a library, plain handlers record the signal while the loop
  runs and are put back by `restore_handlers`.
  """

  def __init__(self):
    self._interrupts = interrupts.current()
    self._local: int | None = None
    self._previous = {}
    if self._interrupts is not None:
      self._interrupts.raise_early = False
    else:
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    if self._local is None:
      self._local = signum
      logging.warning("Received %s: stopping after this step and saving a checkpoint.",
                      signal.Signals(signum).name)

  @property
  def signum(self) -> int | None:
    """The first signal received, or None."""
    return self._interrupts.signum if self._interrupts is not None else self._local

  def requested(self, step: int = 0, every: int = 1) -> bool:
    """Whether to stop after `step`. One process: the local flag, every step (no device
    sync). Several processes: agreed at every `every`-th step only (one small all-gather),
    since every process must stop at the same step or the next collective hangs. With the
    defaults, agreed now (between evaluation batches, before the first step)."""
    local = self.signum is not None
    if jax.process_count() == 1:
      return local
    if step % every:
      return False
    return bool(multihost_utils.process_allgather(np.int32(local)).max())

  def restore_handlers(self) -> None:
    """Ends the loop's handling: the process policy stops start-up again, or the plain
    handlers installed before come back."""
    if self._interrupts is not None:
      self._interrupts.raise_early = True
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}


class Meter:
  """Step metrics kept on the device until the loop reads them (at a log line or before a
  save), then averaged; `images_per_sec` leaves out the first (compiling) step."""

  def __init__(self):
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []
    self._since: float | None = None
    self._timed_steps = 0

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    """Records the metrics of `step` (the step just dispatched; 1-based)."""
    self._pending.append((step, metrics))
    if self._since is None:
      jax.block_until_ready(metrics)  # the first step includes compilation: not timed
      self._since = time.time()
    else:
      self._timed_steps += 1
      if len(self._pending) > MAX_STEPS_IN_FLIGHT:
        jax.block_until_ready(self._pending[-1 - MAX_STEPS_IN_FLIGHT][1]["loss"])

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` of wall time (an evaluation, a save) out of images_per_sec."""
    if self._since is not None:
      self._since += seconds

  def check_finite(self) -> None:
    """Raises TrainingDiverged naming the first step whose loss or gradient norm is not
    finite. Fetches the pending scalars (a sync; called at log lines and before saves)."""
    fetched = jax.device_get([(step, m["loss"], m["grad_norm"]) for step, m in self._pending])
    for step, loss, grad_norm in fetched:
      if not (math.isfinite(float(loss)) and math.isfinite(float(grad_norm))):
        what = "loss" if not math.isfinite(float(loss)) else "gradient norm"
        raise TrainingDiverged(
            f"The training {what} became {float(loss if what == 'loss' else grad_norm)} at "
            f"step {step}: the run diverged. Lower --config.optimizer.learning_rate, add "
            "warm-up (--config.schedule.warmup_epochs), or check the input normalization. "
            "No checkpoint of this or a later step was written; any earlier ones are kept.")

  def summary(self, batch_size: int) -> dict[str, float]:
    """Averages since the last summary: train/loss, top1, top5, grad_norm; last lr;
    images_per_sec (global images per second of wall time)."""
    fetched = jax.device_get([m for _, m in self._pending])
    now = time.time()
    out = {f"train/{k}": float(np.mean([m[k] for m in fetched]))
           for k in ("loss", "top1", "top5", "grad_norm")}
    out["train/lr"] = float(fetched[-1]["lr"])
    if self._timed_steps > 0:
      out["train/images_per_sec"] = self._timed_steps * batch_size / max(now - self._since, 1e-9)
    self._pending, self._since, self._timed_steps = [], now, 0
    return out


class StallWatch:
  """Warns once when the logged train loss stays within STALL_TOLERANCE of chance,
  ln(num_classes), for `steps` steps after `warmup_steps` (steps <= 0: never)."""

  def __init__(self, num_classes: int, steps: int, warmup_steps: int):
    self.chance = math.log(num_classes)
    self.steps = steps
    self.warmup_steps = warmup_steps
    self._since: int | None = None
    self.warned = False

  def update(self, step: int, loss: float) -> str | None:
    """The warning text the first time the stall lasts `steps` steps, else None."""
    if self.steps <= 0 or self.warned or step <= self.warmup_steps:
      return None
    if abs(loss - self.chance) > STALL_TOLERANCE * self.chance:
      self._since = None
      return None
    if self._since is None:
      self._since = step
      return None
    if step - self._since < self.steps:
      return None
    self.warned = True
    return (f"The train loss has stayed at chance ({loss:.3f} vs ln({round(math.exp(self.chance))})"
            f" = {self.chance:.3f}) from step {self._since} to {step}: the net is not learning. "
            "Likely causes: initial weights or biases too large or too small "
            "(--config.model.init=caffe), a learning rate too high or too low "
            "(--config.optimizer.learning_rate), inputs not normalized (--config.data.mean, "
            "--config.data.std), labels that do not match the images.")


def check_skips(max_skip_fraction: float, skipped: int, records: int) -> None:
  """Raises UserError when more than `max_skip_fraction` of `records` (global counts) were
  unreadable, once at least MIN_RECORDS_FOR_SKIP_CHECK were read."""
  if records >= MIN_RECORDS_FOR_SKIP_CHECK and skipped > max_skip_fraction * records:
    raise UserError(
        f"{skipped} of {records} training records could not be read, more than "
        f"data.max_skip_fraction={max_skip_fraction}. The skipped files are named in "
        "the log above; repair or remove them, or raise --config.data.max_skip_fraction. "
        "Checkpoints and metrics written so far are kept.")


class EvalPrestart:
  """Starts the next evaluation's input pipeline (its Grain workers, its first batch) shortly
  before the evaluation's step, so the evaluation does not wait for the workers to start:
  with 2 workers on the 2-core machine an evaluation of 16 images in one batch took 4.1-4.3 s,
  now 0.1-0.3 s (docs/data.md).

  The lead is 1.5x the start-up the previous pre-started pipeline took (FIRST_LEAD_S before
  any), converted into steps with the median of the last steps' wall times. `start_batches`
  gives a fresh, unstarted `data.device.DeviceBatches` of the eval split.
  """
  FIRST_LEAD_S = 10.0

  def __init__(self, start_batches: Callable[[], Any], clock: Callable[[], float] = time.time):
    self._start_batches = start_batches
    self._clock = clock
    self._lead_s = self.FIRST_LEAD_S
    self._intervals: collections.deque[float] = collections.deque(maxlen=20)
    self._last: float | None = None
    self._pending = None  # started, not yet taken
    self._taken = None  # taken; its start-up time sets the next lead

  def after_step(self, step: int, next_eval_step: int | None) -> None:
    """Call after every step; starts the pipeline when `next_eval_step` (None: no more
    evaluations) is within the lead."""
    now = self._clock()
    if self._last is not None:
      self._intervals.append(now - self._last)
    self._last = now
    if self._taken is not None and self._taken.startup_seconds is not None:
      self._lead_s = 1.5 * self._taken.startup_seconds
      self._taken = None
    if self._pending is not None or next_eval_step is None or not self._intervals:
      return
    if (next_eval_step - step) * statistics.median(self._intervals) <= self._lead_s:
      self._pending = self._start_batches()
      self._pending.start()

  def take(self):
    """The pre-started batches (None if none were started); the evaluation closes them."""
    batches, self._pending = self._pending, None
    if batches is not None:
      self._taken = batches
    self._last = None  # the evaluation's own time is not a step time
    return batches

  def close(self) -> None:
    """Stops a pipeline started for an evaluation that will not run (the loop stopped)."""
    if self._pending is not None:
      self._pending.close()
      self._pending = None


class LogStep:
  """The log line of the step: at every `plan.log_every`-th step, the first and the last."""

  def __init__(self, plan, meter: Meter, writer, batches, stall: StallWatch,
               max_skip_fraction: float, first_step: int, log: Callable[[str], None]):
    self._plan, self._meter, self._writer, self._batches = plan, meter, writer, batches
    self._stall, self._max_skip_fraction, self._log = stall, max_skip_fraction, log
    self._first = first_step
    self._timed_from: tuple[float, int] | None = None  # for the ETA: after the first step

  def __call__(self, step: int, state: Any) -> Any:
    plan = self._plan
    if self._timed_from is None:
      self._timed_from = (time.time(), step)
    if step % plan.log_every and step not in (self._first, plan.total_steps):
      return state
    self._meter.check_finite()
    summary = self._meter.summary(plan.global_batch)
    summary["train/epoch"] = plan.epoch_of(step)
    summary["data/skipped"] = sharding.global_sum(self._batches.skipped)
    self._writer.write(step, summary)
    self._log(self._line(step, summary))
    warning = self._stall.update(step, summary["train/loss"])
    if warning and self._writer.enabled:
      logging.warning(warning)
    # Every process has taken as many batches: records read = batches x the global batch.
    check_skips(self._max_skip_fraction, summary["data/skipped"],
                self._batches.batches * plan.global_batch)
    return state

  def _line(self, step: int, metrics: dict[str, float]) -> str:
    plan = self._plan
    line = (f"step {step}/{plan.total_steps} epoch {plan.epoch_of(step):.2f} | "
            f"loss {metrics['train/loss']:.4f} top1 {metrics['train/top1']:.4f} "
            f"lr {metrics['train/lr']:.3g}")
    if "train/images_per_sec" in metrics:
      line += f" | {metrics['train/images_per_sec']:.1f} img/s"
    started, from_step = self._timed_from
    if step > from_step:
      eta = (plan.total_steps - step) * (time.time() - started) / (step - from_step)
      line += f" | ETA {datetime.timedelta(seconds=int(eta))}"
    if metrics["data/skipped"]:  # unreadable training files so far, each named in the log
      line += f" | {metrics['data/skipped']} files skipped"
    return line


class Evaluate:
  """The evaluation of the step, at the plan's evaluation steps: `evaluate(params,
  batch_stats, batches, stop)` gives the eval/* metrics, or None when a stop abandoned it.
  Then the plateau rule (`plateau`: an optim.Plateau, None for other schedules) and the conv1
  filters picture (`filters_picture(params)`: an (H, W, C) image). `precompile()` starts the
  eval step's compile after the first step, while training goes on."""

  def __init__(self, plan, evaluate: Callable, prestart: EvalPrestart, meter: Meter, writer,
               stop: StopRequest, plateau: optim.Plateau | None, mesh,
               filters_picture: Callable[[Any], Any], precompile: Callable[[], Any],
               log: Callable[[str], None]):
    self._plan, self._evaluate, self._prestart, self._meter = plan, evaluate, prestart, meter
    self._writer, self._stop, self._plateau, self._mesh = writer, stop, plateau, mesh
    self._filters_picture, self._precompile, self._log = filters_picture, precompile, log
    self.metrics: dict[str, float] | None = None  # the last evaluation's

  def __call__(self, step: int, state: Any) -> Any:
    if self._precompile is not None:
      if self._plan.next_eval_step(step - 1) is not None:
        self._precompile()
      self._precompile = None
    if self._plan.evaluates_at(step):
      metrics = self._evaluate(state["params"], state["batch_stats"], self._prestart.take(),
                               self._stop.requested)
      if metrics is not None:  # None: abandoned for a stop request
        state = self._record(step, state, metrics)
    self._prestart.after_step(step, self._plan.next_eval_step(step))
    return state

  def _record(self, step: int, state: Any, metrics: dict[str, float]) -> Any:
    self.metrics = metrics
    self._meter.exclude(metrics["eval/seconds"])  # images/s is the training rate
    metrics["train/epoch"] = self._plan.epoch_of(step)
    self._writer.write(step, metrics)
    self._log(f"eval at step {step}: loss {metrics['eval/loss']:.4f} top1 "
              f"{metrics['eval/top1']:.4f} top5 {metrics['eval/top5']:.4f} "
              f"({metrics['eval/num_examples']} examples, {metrics['eval/seconds']:.1f} s)")
    if self._plateau is not None:
      state = update_plateau(self._plateau, self._mesh, state, metrics["eval/top1"], self._log)
    self._writer.image(step, "filters/conv1", self._filters_picture(state["params"]))
    return state


class Save:
  """The checkpoint of the step: at every `plan.checkpoint_every`-th step, the last one, and
  when a stop is requested (then `stopped` is True and the loop ends). Never saves a diverged
  state (the meter's check runs first)."""

  def __init__(self, plan, checkpointer, meta: dict[str, Any], meter: Meter,
               stop: StopRequest, log: Callable[[str], None], saved_step: int | None):
    self._plan, self._checkpointer, self._meta, self._meter = plan, checkpointer, meta, meter
    self._stop, self._log = stop, log
    self.saved_step = saved_step  # the newest step saved (or restored from)
    self.stopped = False

  def __call__(self, step: int, state: Any) -> Any:
    self.stopped = (self._stop.requested(step, self._plan.log_every)
                    or self._checkpointer.reached_preemption(step))
    if (step % self._plan.checkpoint_every == 0 or step == self._plan.total_steps
        or self.stopped):
      self.save(step, state)
    return state

  def save(self, step: int, state: Any) -> None:
    """Checks the pending metrics, then starts the save of `step` (asynchronous)."""
    self._meter.check_finite()
    self._checkpointer.save(step, state, self._meta)
    self.saved_step = step
    self._log(f"Saving checkpoint step {step} to {self._checkpointer.directory}.")

  def save_before_failure(self, step: int, state: Any) -> None:
    """The input pipeline broke after `step`: keep the steps trained since the last save."""
    if step > 0 and step != self.saved_step:
      self.save(step, state)
      self._checkpointer.wait()
      logging.warning("The input pipeline failed after step %d; saved a checkpoint of that "
                      "step first.", step)


def update_plateau(rule: optim.Plateau, mesh, state: Any, top1: float,
                   log: Callable[[str], None]) -> Any:
  """The paper's rule after an evaluation: `state` with its schedule scale updated."""
  current = {k: float(v) for k, v in jax.device_get(state["schedule"]).items()}
  updated, reduced = rule.update(current, top1)
  if reduced:
    log(f"eval/top1 has not improved for {rule.patience} evaluations: learning rate scaled by "
        f"{rule.factor} (reduction {int(updated['reductions'])} of {rule.max_reductions}).")
  new_schedule = {k: np.float32(v) for k, v in updated.items()}
  return dict(state, schedule=sharding.replicate(new_schedule, mesh))
