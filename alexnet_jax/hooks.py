"""What the training loop does besides stepping: stop requests, the metric meter, the checks
that read the metrics (divergence, stall, unreadable records), and the periodic actions.

Each periodic action is a small function of (step, state) called by train.py at its cadence;
they share no state except through the arguments.
"""

from __future__ import annotations

import collections
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


class TrainMeter:
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


def global_sum(value: int) -> int:
  """Sum of a host integer over all processes (every process must call it)."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.process_allgather(np.int64(value)).sum())


def update_plateau(config: Any, mesh, state: Any, top1: float, log) -> Any:
  """The paper's rule after an evaluation: the state with its schedule scale updated
  (schedule.name='plateau'; otherwise unchanged)."""
  sched = config.schedule
  if sched.name != "plateau":
    return state
  rule = optim.Plateau(sched.factor, sched.patience, sched.max_reductions, sched.min_delta)
  current = {k: float(v) for k, v in jax.device_get(state["schedule"]).items()}
  updated, reduced = rule.update(current, top1)
  if reduced:
    log(f"eval/top1 has not improved for {sched.patience} evaluations: learning rate "
        f"scaled by {sched.factor} (reduction {int(updated['reductions'])} of "
        f"{sched.max_reductions}).")
  new_schedule = {k: np.float32(v) for k, v in updated.items()}
  return dict(state, schedule=sharding.replicate(new_schedule, mesh))


def filters_image(variant: str, conv1_kernel: Any):
  """conv1's filters as one (H, W, C) picture in [0, 1], the two towers side by side; every
  process must call it (the kernel may be split over processes)."""
  from alexnet_jax.tools import interpret
  kernel = sharding.to_host(conv1_kernel)
  return interpret.conv1_filter_grid(kernel, interpret.towers_of(variant))


class EvalPrestart:
  """Starts the next evaluation's input pipeline (its Grain workers, its first batch) shortly
  before the evaluation's step, so the evaluation does not wait for the workers to start:
  with 2 workers on the 2-core machine an evaluation of 16 images in one batch took 4.1-4.3 s,
  now 0.1-0.3 s (2026-11-30; docs/data.md); on an H200 start-up would be several % of an
  epoch.

  The lead is 1.5x the start-up the previous pre-started pipeline took (FIRST_LEAD_S before
  any), converted into steps with the median of the last steps' wall times. `exp` needs
  `eval_batches()` returning a `data.device.DeviceBatches`.
  """
  FIRST_LEAD_S = 10.0

  def __init__(self, exp: Any, clock: Callable[[], float] = time.time):
    self._exp = exp
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
      self._pending = self._exp.eval_batches()
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


def next_eval_step(step: int, every: int, total: int, at_end: bool) -> int | None:
  """The first step after `step` that evaluates (a multiple of `every`, or `total` when
  `at_end`), or None."""
  candidates = [((step // every) + 1) * every]
  if at_end:
    candidates.append(total)
  following = [s for s in candidates if step < s <= total]
  return min(following) if following else None


def evaluates_at(step: int, every: int, total: int, at_end: bool) -> bool:
  """Whether step `step` evaluates (the steps `next_eval_step` names)."""
  return next_eval_step(step - 1, every, total, at_end) == step
