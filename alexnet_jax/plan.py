"""The numbers of one run, derived and checked once from the config: batch sizes (global, per
process, per device), steps, epochs and the cadences of the periodic actions.

Everything below the top of the run takes these values from a `Plan`; nothing else derives
them from the config or checks them again.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from alexnet_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Plan:
  """global_batch: images per step over all processes and devices (config.batch_size);
  process_batch / device_batch: this process's and one device's share of it; eval_batch: the
  global evaluation batch (config.eval_batch_size, at most the eval split rounded up to the
  device count). In eval mode the training fields are 0.
  """
  global_batch: int
  process_batch: int
  device_batch: int
  eval_batch: int
  steps_per_epoch: int
  total_steps: int
  warmup_steps: int
  log_every: int
  eval_every: int
  checkpoint_every: int
  eval_at_end: bool

  def epoch_of(self, step: int) -> float:
    """Epochs done after `step` steps."""
    return step / self.steps_per_epoch

  def next_eval_step(self, step: int) -> int | None:
    """The first step after `step` that evaluates (a multiple of eval_every, or the last step
    when eval_at_end), or None."""
    candidates = [(step // self.eval_every + 1) * self.eval_every]
    if self.eval_at_end:
      candidates.append(self.total_steps)
    following = [s for s in candidates if step < s <= self.total_steps]
    return min(following) if following else None

  def evaluates_at(self, step: int) -> bool:
    """Whether step `step` (1-based) ends with an evaluation."""
    return self.next_eval_step(step - 1) == step


def _divides(field: str, value: int, devices: int) -> None:
  if value <= 0 or value % devices:
    raise UserError(f"{field}={value} is not divisible by the {devices} devices of the mesh; "
                    f"use a positive multiple of {devices}.")


def make_plan(config: Any, *, num_devices: int, num_processes: int, train_examples: int | None,
              eval_examples: int) -> Plan:
  """The plan of `config` on `num_devices` devices over `num_processes` processes, for a train
  split of `train_examples` (None: evaluation only) and an eval split of `eval_examples`.
  Raises UserError naming the field for a batch the devices cannot split, a train split
  smaller than one batch, or a cadence that is not positive."""
  _divides("batch_size", config.batch_size, num_devices)
  _divides("eval_batch_size", config.eval_batch_size, num_devices)
  for field in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
    if config[field] <= 0:
      raise UserError(f"{field}={config[field]} must be positive.")
  batch = config.batch_size
  # No bigger than the split needs, rounded up to the devices: a 46-image split is one batch
  # of 48 on 8 devices, never padded to 256 rows.
  eval_batch = max(num_devices, min(config.eval_batch_size,
                                    math.ceil(eval_examples / num_devices) * num_devices))
  steps_per_epoch = total = warmup = eval_every = 0
  if train_examples is not None:
    if train_examples < batch:
      raise UserError(f"The training split has {train_examples} examples, fewer than one batch "
                      f"(batch_size={batch}).")
    steps_per_epoch = train_examples // batch
    total = (int(config.num_train_steps) if config.num_train_steps > 0
             else int(math.ceil(config.num_epochs * steps_per_epoch)))
    warmup = int(round(config.schedule.warmup_epochs * steps_per_epoch))
    eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  return Plan(global_batch=batch, process_batch=batch // num_processes,
              device_batch=batch // num_devices, eval_batch=eval_batch,
              steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=warmup,
              log_every=config.log_every_steps, eval_every=eval_every,
              checkpoint_every=config.checkpoint_every_steps,
              eval_at_end=bool(config.eval_at_end))
