"""The optimizer follows the paper's update rule; schedules and the plateau rule behave."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import optim
from alexnet_jax.config_base import base_config


def _config(**schedule):
  c = base_config()
  c.schedule.update(schedule)
  return c


def _schedule(c, steps_per_epoch, total_steps):
  return optim.make_schedule(
      c.optimizer, c.schedule, batch_size=c.batch_size, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, warmup_steps=round(c.schedule.warmup_epochs * steps_per_epoch))


def test_sgd_is_the_papers_momentum_rule_with_changing_rate():
  """v <- 0.9 v - 0.0005 lr w - lr g ; w <- w + v, with the rate inside the momentum."""
  c = base_config()
  tx = optim.make_optimizer(c.optimizer, c.freeze)
  params = {"w": jnp.array([1.0, -2.0]), "b": jnp.array([0.5])}
  state = tx.init(params)
  w, v = np.array([1.0, -2.0]), np.zeros(2)
  for lr, g in [(0.01, np.array([0.3, 0.1])), (0.001, np.array([-0.2, 0.4]))]:
    state.hyperparams["learning_rate"] = jnp.asarray(lr)
    grads = {"w": jnp.asarray(g), "b": jnp.array([0.0])}
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    v = 0.9 * v - 0.0005 * lr * w - lr * g
    w = w + v
    np.testing.assert_allclose(params["w"], w, rtol=1e-6)


def test_biases_can_be_left_undecayed():
  c = base_config()
  c.optimizer.decay_biases = False
  tx = optim.make_optimizer(c.optimizer, c.freeze)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert np.all(np.asarray(updates["bias"]) == 0)
  assert np.all(np.asarray(updates["kernel"]) < 0)


def test_step_schedule_divides_by_ten_at_epoch_boundaries():
  fn = _schedule(_config(name="step", boundaries_epochs=(1.0, 2.0)), 10, 30)
  assert [float(fn(s)) for s in (0, 9, 10, 19, 20)] == pytest.approx(
      [0.01, 0.01, 0.001, 0.001, 0.0001])


def test_warmup_then_cosine():
  fn = _schedule(_config(name="cosine", warmup_epochs=1.0), 10, 110)
  assert float(fn(0)) == pytest.approx(0.001)
  assert float(fn(9)) == pytest.approx(0.01, rel=1e-3)
  assert float(fn(109)) < 1e-4


def test_unknown_schedule_names_the_field():
  with pytest.raises(ValueError, match="schedule.name"):
    _schedule(_config(name="exponential"), 10, 10)


def test_plateau_divides_after_patience_at_most_max_times():
  rule = optim.Plateau(factor=0.1, patience=2, max_reductions=2, min_delta=0.0)
  state = optim.Plateau.initial_state()
  history = []
  for top1 in [0.1, 0.2, 0.2, 0.19, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]:
    state, reduced = rule.update(state, top1)
    history.append(reduced)
  assert history == [False, False, False, True, False, False, True, False, False, False, False]
  assert state["scale"] == pytest.approx(0.01) and state["reductions"] == 2
