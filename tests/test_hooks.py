"""The loop's checks: the stall warning, the divergence check, the stop request."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest

from alexnet_jax import hooks
from tests.helpers import SMALL, run_main


def test_stall_watch_warns_once_after_the_configured_steps_at_chance():
  watch = hooks.StallWatch(num_classes=10, steps=100, warmup_steps=20)
  chance = math.log(10)
  assert watch.update(10, chance) is None  # during warm-up: not counted
  assert watch.update(50, chance * 1.005) is None  # the stall starts here
  assert watch.update(100, chance) is None  # 50 steps: not yet
  warning = watch.update(150, chance * 0.995)
  assert warning and "from step 50 to 150" in warning and "model.init" in warning
  assert watch.update(300, chance) is None  # once only


def test_stall_watch_resets_when_the_loss_moves():
  watch = hooks.StallWatch(num_classes=10, steps=100, warmup_steps=0)
  chance = math.log(10)
  watch.update(10, chance)
  watch.update(60, 0.9 * chance)  # learning: the count starts again
  assert watch.update(150, chance) is None
  assert watch.update(250, chance) is not None
  assert hooks.StallWatch(num_classes=10, steps=0, warmup_steps=0).update(500, chance) is None


def test_check_finite_names_the_first_bad_step():
  meter = hooks.TrainMeter()
  for step, loss in ((1, 2.0), (2, float("nan")), (3, float("inf"))):
    meter.add(step, {"loss": jnp.float32(loss), "grad_norm": jnp.float32(1.0),
                     "top1": jnp.float32(0), "top5": jnp.float32(0), "lr": jnp.float32(0.1)})
  with pytest.raises(hooks.TrainingDiverged, match="became nan at step 2"):
    meter.check_finite()


def test_a_run_that_sits_at_chance_is_warned_about(tmp_path):
  # torch's init gives near-zero logits (loss ln 10); with a zero rate it never moves.
  result = run_main("synthetic.py", tmp_path, *SMALL, "--config.model.init=torch",
                    "--config.optimizer.learning_rate=0", "--config.num_train_steps=8",
                    "--config.stall_warning_steps=4", "--config.eval_at_end=false")
  assert "the net is not learning" in result.stderr
  assert result.stderr.count("the net is not learning") == 1
