"""The paper's two-GPU split as model parallelism, and FSDP, against pure data parallelism.

In-process on the 8 simulated CPU devices of conftest.py: the paper network (227x227, batch 8)
trained 2 steps on one device (data parallelism's maths) and on a (4, 2) ('data', 'model')
mesh with one tower per 'model' device and fc6/fc7 also sharded over 'data' (FSDP) must give
the same losses and parameters; a checkpoint written in tower mode must restore and evaluate
in data-parallel mode. (Towers and FSDP train together here to keep the suite fast.)
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from alexnet_jax import checkpoint as ckpt_lib, experiment, models, sharding, state as state_lib
from configs import synthetic

STEPS = 2
LAYOUTS = {"data": (1, False), "towers": (2, True)}  # (parallel.model, parallel.fsdp)


def small_config(model_parallel: int = 1, fsdp: bool = False):
  c = synthetic.get_config()  # the paper variant at 227x227
  c.batch_size = c.eval_batch_size = 8
  c.data.num_train_examples = c.data.num_eval_examples = 16
  c.optimizer.learning_rate = 0.001
  c.parallel.model, c.parallel.fsdp = model_parallel, fsdp
  return c


def _train(layout: str):
  # The data-parallel reference runs on one device (the same global batch, so the same
  # maths): replicated on 8 simulated devices, each updating all 61M parameters, it took 28 s
  # of the test's 38 on 2 cores; 8 devices training like one is tested in test_train_cli.
  devices = jax.devices()[:1] if layout == "data" else None
  exp = experiment.build(small_config(*LAYOUTS[layout]), devices=devices)
  state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape, exp.state_shardings, 0)
  batches = exp.train_batches()
  losses = []
  for _ in range(STEPS):
    state, metrics = exp.train_step(state, next(batches))
    losses.append(float(metrics["loss"]))
  return exp, state, losses


@pytest.fixture(scope="module")
def runs():
  return {layout: _train(layout) for layout in LAYOUTS}


def _max_relative_difference(a, b) -> float:
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    scale = max(float(np.max(np.abs(y))), 1e-6)
    worst = max(worst, float(np.max(np.abs(x - y))) / scale)
  return worst


def test_towers_and_fsdp_train_like_data_parallelism(runs):
  _, reference_state, reference_losses = runs["data"]
  towers_exp, towers_state, losses = runs["towers"]
  np.testing.assert_allclose(losses, reference_losses, rtol=1e-5)
  assert _max_relative_difference(sharding.to_host(towers_state["params"]),
                                  sharding.to_host(reference_state["params"])) < 1e-5
  assert towers_exp.mesh.axis_names == ("data", "model")
  assert towers_exp.mesh.devices.shape == (4, 2)
  # Parameters and their momentum stay split over the towers after the steps.
  assert towers_state["params"]["conv2"]["kernel"].sharding.spec == P(None, None, None, "model")
  assert towers_state["params"]["fc6"]["kernel"].sharding.spec == P("data", "model")
  trace = jax.tree.leaves(towers_state["opt_state"].inner_state)
  assert any(getattr(leaf, "shape", None) == (9216, 4096)
             and leaf.sharding.spec == P("data", "model") for leaf in trace)


def test_tower_checkpoint_restores_and_evaluates_in_data_parallel_mode(runs, tmp_path):
  data_exp, data_state, _ = runs["data"]
  towers_exp, towers_state, _ = runs["towers"]
  saver = ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=1)
  saver.save(STEPS, towers_state,
             ckpt_lib.layout.meta(towers_exp.config, towers_exp.info.class_names))
  saver.wait()
  saver.close()
  reader = ckpt_lib.Checkpointer(tmp_path / "checkpoints", keep=1, read_only=True)
  restored = reader.restore(STEPS, ckpt_lib.abstract_like(data_exp.abstract_state,
                                                          data_exp.state_shardings))
  reader.close()
  assert restored["params"]["conv2"]["kernel"].sharding.is_fully_replicated
  for got, want in zip(jax.tree.leaves(sharding.to_host(restored["params"])),
                       jax.tree.leaves(sharding.to_host(towers_state["params"]))):
    np.testing.assert_array_equal(got, want)

  sums = {}
  for name, exp, state in (("data", data_exp, restored), ("towers", towers_exp, towers_state)):
    batch = next(exp.eval_batches())
    sums[name] = jax.device_get(exp.eval_step(state["params"], state["batch_stats"], batch))
  assert sums["data"]["num_examples"] == sums["towers"]["num_examples"] == 8
  np.testing.assert_allclose(sums["towers"]["loss"], sums["data"]["loss"], rtol=1e-5)
  assert sums["towers"]["top5"] == sums["data"]["top5"]


def _shardings(params, mesh, **axes):
  """The train-state shardings of a state holding only `params`, as experiment.build makes
  them: the model's partition rules applied by sharding."""
  state = {"params": params, "batch_stats": {}}
  specs = models.partition_specs(sharding.layer_leaf_shapes(state), **axes,
                                 axis_sizes=dict(mesh.shape))
  return sharding.state_shardings(state, mesh, specs)


def test_parameter_shardings_and_per_device_bytes():
  mesh_2d = sharding.make_mesh(model_parallel=2)
  mesh_1d = sharding.make_mesh()
  params = jax.eval_shape(lambda: models.init("paper", 0))
  total = models.count_params(params) * 4

  def sharded(mesh, **axes):
    shardings = _shardings(params, mesh, **axes)["params"]
    return shardings, sharding.shard_bytes(params, shardings)

  towers, tower_bytes = sharded(mesh_2d, tower_axis="model")
  for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
    assert towers[layer]["kernel"].spec[-1] == "model", layer
    assert towers[layer]["bias"].spec == P("model"), layer
  assert tower_bytes == total // 2  # every parameter count is even: exactly half per device

  fsdp, fsdp_bytes = sharded(mesh_1d, fsdp_axis="data")
  assert fsdp["fc6"]["kernel"].spec == P("data", None)
  assert fsdp["fc7"]["kernel"].spec == P("data", None)
  assert fsdp["fc8"]["kernel"].spec == P(None, None)
  fc67 = (9216 * 4096 + 4096 * 4096) * 4
  assert fsdp_bytes == total - fc67 + fc67 // 8

  both, both_bytes = sharded(mesh_2d, tower_axis="model", fsdp_axis="data")
  assert both["fc6"]["kernel"].spec == P("data", "model")
  assert both_bytes == (total - fc67) // 2 + fc67 // 8

  # An odd number of classes cannot be split over two towers: fc8 stays whole.
  odd = jax.eval_shape(lambda: models.init("paper", 0, num_classes=5))
  odd_shardings = _shardings(odd, mesh_2d, tower_axis="model")
  assert odd_shardings["params"]["fc8"]["kernel"].spec == P(None, None)


@pytest.mark.parametrize("model_parallel, devices, variant, message", [
    (3, 8, "paper", "parallel.model=3 is not one of 1"),
    (2, 3, "paper", "parallel.model=2 does not divide the 3 devices"),
    (2, 8, "d2l", "model.variant='d2l' has no towers"),
])
def test_parallel_config_errors(model_parallel, devices, variant, message):
  with pytest.raises(ValueError, match=message):
    models.check_parallel(variant, model_parallel, devices)


def test_fsdp_needs_a_dividing_device_count():
  mesh = sharding.make_mesh(jax.devices()[:3])
  params = jax.eval_shape(lambda: models.init("paper", 0))
  with pytest.raises(ValueError, match="parallel.fsdp=True shards fc7's kernel rows"):
    _shardings(params, mesh, fsdp_axis="data")


def test_experiment_refuses_towers_for_a_single_tower_variant():
  config = small_config(model_parallel=2)
  config.model.variant = "d2l"
  with pytest.raises(ValueError, match="has no towers"):
    experiment.build(config)
