"""The loop's periodic actions and checks: the stall warning, the divergence check, the
evaluation cadence and its pipeline's pre-start, the checkpoint line."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from alexnet_jax import periodic
from alexnet_jax.config_base import base_config
from alexnet_jax.plan import make_plan
from tests.helpers import SMALL, run_main


def test_stall_watch_warns_once_after_the_configured_steps_at_chance():
  watch = periodic.StallWatch(num_classes=10, steps=100, warmup_steps=20)
  chance = math.log(10)
  assert watch.update(10, chance) is None  # during warm-up: not counted
  assert watch.update(50, chance * 1.005) is None  # the stall starts here
  assert watch.update(100, chance) is None  # 50 steps: not yet
  warning = watch.update(150, chance * 0.995)
  assert warning and "from step 50 to 150" in warning and "model.init" in warning
  assert watch.update(300, chance) is None  # once only


def test_stall_watch_resets_when_the_loss_moves():
  watch = periodic.StallWatch(num_classes=10, steps=100, warmup_steps=0)
  chance = math.log(10)
  watch.update(10, chance)
  watch.update(60, 0.9 * chance)  # learning: the count starts again
  assert watch.update(150, chance) is None
  assert watch.update(250, chance) is not None
  assert periodic.StallWatch(num_classes=10, steps=0, warmup_steps=0).update(500, chance) is None


def test_check_finite_names_the_first_bad_step():
  meter = periodic.Meter()
  for step, loss in ((1, 2.0), (2, float("nan")), (3, float("inf"))):
    meter.add(step, {"loss": jnp.float32(loss), "grad_norm": jnp.float32(1.0),
                     "top1": jnp.float32(0), "top5": jnp.float32(0), "lr": jnp.float32(0.1)})
  with pytest.raises(periodic.TrainingDiverged, match="became nan at step 2"):
    meter.check_finite()


def test_a_run_that_sits_at_chance_is_warned_about(tmp_path):
  # torch's init gives near-zero logits (loss ln 10); with a zero rate it never moves.
  result = run_main("synthetic.py", tmp_path, *SMALL, "--config.model.init=torch",
                    "--config.optimizer.learning_rate=0", "--config.num_train_steps=8",
                    "--config.stall_warning_steps=4", "--config.eval_at_end=false")
  assert "the net is not learning" in result.stderr
  assert result.stderr.count("the net is not learning") == 1
  # The last step's checkpoint is announced with its place.
  assert f"Saving checkpoint step 8 to {tmp_path / 'checkpoints'}." in result.stderr


# --------------------------------------------------------------------------------------------
# The evaluation's pipeline starts before its step


def _plan(every: int, total: int, at_end: bool):
  config = base_config()
  config.eval_every_steps, config.num_train_steps, config.eval_at_end = every, total, at_end
  config.batch_size = 16
  return make_plan(config, num_devices=1, num_processes=1, train_examples=160,
                   eval_examples=100)


def test_next_eval_step():
  assert _plan(10, 35, True).next_eval_step(0) == 10
  assert _plan(10, 35, True).next_eval_step(10) == 20
  assert _plan(10, 35, True).next_eval_step(30) == 35
  assert _plan(10, 35, False).next_eval_step(30) is None
  assert _plan(10, 35, True).next_eval_step(35) is None
  for at_end in (True, False):  # the loop's test: a multiple of `every`, or the last step
    plan = _plan(10, 35, at_end)
    for step in range(1, 36):
      assert plan.evaluates_at(step) == (step % 10 == 0 or (step == 35 and at_end)), (
          step, at_end)


class FakeBatches:
  def __init__(self):
    self.started = self.closed = False
    self.startup_seconds = None

  def start(self):
    self.started = True

  def close(self):
    self.closed = True


class FakeExperiment:
  def __init__(self):
    self.made = []

  def eval_batches(self):
    self.made.append(FakeBatches())
    return self.made[-1]


def test_eval_pipeline_starts_one_lead_before_the_evaluation():
  now = [0.0]
  exp = FakeExperiment()
  prestart = periodic.EvalPrestart(exp.eval_batches, clock=lambda: now[0])
  # 1 s steps, first lead 10 s: started when the evaluation at step 30 is 10 steps away.
  for step in range(1, 21):
    now[0] += 1.0
    prestart.after_step(step, 30)
  assert len(exp.made) == 1 and exp.made[0].started
  for step in range(21, 30):
    now[0] += 1.0
    prestart.after_step(step, 30)
  assert len(exp.made) == 1  # started once
  first = prestart.take()
  assert first is exp.made[0] and prestart.take() is None
  first.startup_seconds = 2.0  # measured: the next lead is 3 s
  now[0] += 100.0  # the evaluation's time is not a step time
  for step in range(31, 57):
    now[0] += 1.0
    prestart.after_step(step, 60)
  assert len(exp.made) == 1
  now[0] += 1.0
  prestart.after_step(57, 60)
  assert len(exp.made) == 2 and exp.made[1].started
  prestart.close()  # the loop stopped before that evaluation
  assert exp.made[1].closed
