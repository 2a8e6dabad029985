"""The plan of a run: every batch size, step count and cadence derived and checked once."""

from __future__ import annotations

import pytest

from alexnet_jax.config_base import base_config
from alexnet_jax.errors import UserError
from alexnet_jax.plan import make_plan


def _config(**fields):
  config = base_config()
  config.update_from_flattened_dict(fields)  # dotted names: {"schedule.warmup_epochs": 0.5}
  return config


def test_batches_steps_and_cadences():
  config = _config(batch_size=64, eval_batch_size=256, num_epochs=2.5, eval_every_steps=-1,
                   **{"schedule.warmup_epochs": 0.5})
  plan = make_plan(config, num_devices=8, num_processes=2, train_examples=1000,
                   eval_examples=46)
  assert (plan.global_batch, plan.process_batch, plan.device_batch) == (64, 32, 8)
  # The eval batch is no bigger than the split needs, rounded up to the device count.
  assert plan.eval_batch == 48
  assert plan.steps_per_epoch == 15 and plan.total_steps == 38 and plan.warmup_steps == 8
  assert plan.eval_every == 15  # once per epoch
  assert plan.epoch_of(30) == 2.0
  assert [s for s in range(1, 39) if plan.evaluates_at(s)] == [15, 30, 38]


def test_num_train_steps_overrides_epochs_and_eval_mode_has_no_training_numbers():
  config = _config(batch_size=16, num_train_steps=7)
  assert make_plan(config, num_devices=1, num_processes=1, train_examples=100,
                   eval_examples=10).total_steps == 7
  plan = make_plan(config, num_devices=1, num_processes=1, train_examples=None,
                   eval_examples=10)
  assert plan.total_steps == 0 and plan.eval_batch == 10


@pytest.mark.parametrize("fields, train_examples, message", [
    ({"batch_size": 12}, 100, "batch_size=12 is not divisible by the 8 devices"),
    ({"eval_batch_size": 4}, 100, "eval_batch_size=4 is not divisible by the 8 devices"),
    ({"batch_size": 128}, 100, "The training split has 100 examples, fewer than one batch"),
    ({"log_every_steps": 0}, 100, "log_every_steps=0 must be positive"),
])
def test_mistakes_are_one_sentence_naming_the_field(fields, train_examples, message):
  with pytest.raises(UserError, match=message):
    make_plan(_config(**fields), num_devices=8, num_processes=2,
              train_examples=train_examples, eval_examples=10)
