"""Large batch: the alexnet_bn variant (batch statistics), LARS, the poly schedule, and the
configs/imagenet_large_batch.py recipe run end to end for a few steps, checkpoint and resume.

In-process on the simulated CPU devices of conftest.py (8, or fewer where more would add CPU
time and no check); the networks are full size (227x227), batches tiny.
"""

from __future__ import annotations

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import (checkpoint as ckpt_lib, evaluate, experiment, models, optim, sharding,
                         state as state_lib, steps, train)
from configs import imagenet_large_batch
from tests.helpers import read_metrics

BN_LAYERS = ("bn1", "bn2", "bn3", "bn4", "bn5")
CONV_CHANNELS = (96, 256, 384, 384, 256)


def test_alexnet_bn_parameters_and_batch_stats():
  params = jax.eval_shape(lambda: models.init("alexnet_bn", 0))
  # The paper's 60,965,224, less the 1,376 conv biases, plus a BN scale and offset per channel.
  assert models.count_params(params) == 60_966_600 == 60_965_224 - 1_376 + 2 * 1_376
  for i, (bn, channels) in enumerate(zip(BN_LAYERS, CONV_CHANNELS), start=1):
    assert set(params[f"conv{i}"]) == {"kernel"}
    assert params[bn]["scale"].shape == params[bn]["bias"].shape == (channels,)
  assert params["conv2"]["kernel"].shape == (5, 5, 48, 256)  # still two towers
  stats = models.init_batch_stats("alexnet_bn")
  assert models.count_params(stats) == 2 * 1_376
  np.testing.assert_array_equal(stats["bn3"]["var"], np.ones(384, np.float32))
  assert models.init_batch_stats("paper") == {}
  assert models.model_preset("alexnet_bn")["init"] == "caffe"
  assert models.layer_shapes("alexnet_bn", image_size=227)["pool5"] == (6, 6, 256)


def test_batch_norm_trains_on_batch_statistics_and_evaluates_on_running_ones():
  model = models.create_model(variant="alexnet_bn", image_size=227, num_classes=10,
                              dropout_rate=0.0)
  params = models.init("alexnet_bn", 0, image_size=227, num_classes=10)
  stats = models.init_batch_stats("alexnet_bn", image_size=227, num_classes=10)
  images = jax.random.normal(jax.random.key(1), (4, 227, 227, 3)) * 50.0

  @jax.jit
  def train_forward(params, stats, images):
    return model.apply(models.variables(params, stats), images, train=True,
                       mutable=["batch_stats"])

  eval_forward = jax.jit(lambda p, s, x: model.apply(models.variables(p, s), x, train=False))

  logits, updated = train_forward(params, stats, images)
  new_stats = updated["batch_stats"]
  # Running averages move 10% of the way (momentum 0.9) to this batch's conv1 statistics.
  conv1 = models.grouped_conv(images, params["conv1"]["kernel"], stride=4, padding=0, groups=1,
                              impl="towers")
  np.testing.assert_allclose(new_stats["bn1"]["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)),
                             rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(new_stats["bn1"]["var"], 0.9 + 0.1 * conv1.var(axis=(0, 1, 2)),
                             rtol=1e-3)
  # Train mode: an example's output depends on the rest of its batch (batch statistics).
  alone, _ = train_forward(params, stats, images[:2])
  assert not np.allclose(alone[0], logits[0], atol=1e-4)
  # Eval mode: it does not (running statistics), and the statistics passed are the ones used.
  full = eval_forward(params, new_stats, images)
  np.testing.assert_allclose(eval_forward(params, new_stats, images[:2])[0], full[0],
                             rtol=1e-5, atol=1e-5)
  assert not np.allclose(eval_forward(params, stats, images)[0], full[0], atol=1e-4)
  # The facade needs the statistics and uses them.
  with pytest.raises(ValueError, match="pass batch_stats="):
    models.logits("alexnet_bn", params, images, image_size=227, num_classes=10)
  np.testing.assert_allclose(
      models.logits("alexnet_bn", params, images, batch_stats=new_stats, image_size=227,
                    num_classes=10), full, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # ~20-40 s; run by .ci/run's second pytest (-m slow)
def test_batch_statistics_are_over_the_global_batch():
  """One train step on 8 devices (batch split 8 ways) and on 1 device: same BN statistics.

  fc6/fc7 are FSDP-sharded only to save CPU time (8 simulated devices updating 61M replicated
  parameters each); the batch is split over the same 8 devices either way."""
  model = models.create_model(variant="alexnet_bn", image_size=227, num_classes=10,
                              fsdp_axis="data")
  tx = optax.inject_hyperparams(optim.paper_sgd, static_args=("nesterov", "decay_biases"))(
      learning_rate=0.01, momentum=0.9, weight_decay=5e-4, nesterov=False, decay_biases=True)
  rng = np.random.default_rng(0)
  host_batch = {"image": rng.integers(0, 256, (8, 227, 227, 3), dtype=np.uint8),
                "label": rng.integers(0, 10, 8, dtype=np.int32)}
  results = {}
  for devices in (8, 1):
    mesh = sharding.make_mesh(jax.devices()[:devices])
    abstract = state_lib.abstract_train_state(model, tx, (1, 227, 227, 3))
    specs = models.partition_specs(sharding.layer_leaf_shapes(abstract), fsdp_axis="data",
                                   axis_sizes=dict(mesh.shape))
    shardings = sharding.state_shardings(abstract, mesh, specs)
    state = state_lib.create_train_state(model, tx, (1, 227, 227, 3), shardings, seed=0)
    step = jax.jit(
        sharding.with_mesh(steps.make_train_step(model, tx, lambda s, _: 0.01,
                                                 {"momentum": 0.9, "weight_decay": 5e-4},
                                                 120.0, 60.0, 227), mesh),
        in_shardings=(shardings, sharding.batch_sharding(mesh)))
    state, metrics = step(state, sharding.to_global_batch(host_batch, mesh))
    results[devices] = (float(metrics["loss"]), sharding.to_host(state["batch_stats"]))
  (loss8, stats8), (loss1, stats1) = results[8], results[1]
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  for layer in BN_LAYERS:
    assert float(np.abs(stats1[layer]["mean"]).max()) > 0  # updated from their zero init
    for kind in ("mean", "var"):
      np.testing.assert_allclose(stats8[layer][kind], stats1[layer][kind], rtol=1e-4,
                                 atol=1e-6, err_msg=f"{layer}/{kind}")


def test_poly_schedule_warmup_and_linear_scaling():
  config = imagenet_large_batch.get_config()
  config.batch_size = 4096  # half the recipe's batch: half its rate (linear scaling)
  config.schedule.warmup_epochs = 1.0
  schedule = optim.make_schedule(config.optimizer, config.schedule, batch_size=config.batch_size,
                                 steps_per_epoch=10, total_steps=30, warmup_steps=10)
  peak = 14.0 * 4096 / 8192
  assert float(schedule(0)) == pytest.approx(peak / 10)
  assert float(schedule(9)) == pytest.approx(peak)
  assert float(schedule(20)) == pytest.approx(peak * (1 - 10 / 20) ** 2)
  assert float(schedule(30)) == pytest.approx(0.0, abs=1e-9)


def test_lars_exempts_biases_from_trust_ratio_and_decay():
  config = imagenet_large_batch.get_config()
  tx = optim.make_optimizer(config.optimizer, config.freeze)
  params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
  grads = {"w": jnp.full((2, 2), 1.0), "b": jnp.full((2,), 1.0)}
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(1.0)
  updates, _ = tx.update(grads, state, params)
  # w: u = g + 5e-4 w, scaled by 0.001 * |w| / |u|; b: the plain gradient.
  u = 1.0 + 5e-4 * 2.0
  np.testing.assert_allclose(updates["w"], -0.001 * (4.0 / (2 * u)) * u, rtol=1e-6)
  np.testing.assert_allclose(updates["b"], -1.0, rtol=1e-6)


def _large_batch_config(steps: int):
  c = imagenet_large_batch.get_config()
  c.data.source = "synthetic"
  c.data.num_workers = 0
  c.data.num_train_examples = 64  # 4 steps per epoch at batch 16
  c.data.num_eval_examples = 16
  c.batch_size = c.eval_batch_size = 16
  c.num_train_steps = steps
  c.schedule.warmup_epochs = 0.5  # 2 steps
  c.log_every_steps = 1
  c.checkpoint_every_steps = 2
  c.eval_every_steps = 1000  # once, at the end
  c.eval_report = False
  c.parallel.model = 2  # the towers on two devices (the global batch is tested above)
  return c


@pytest.mark.slow  # ~20-40 s; run by .ci/run's second pytest (-m slow)
def test_large_batch_recipe_trains_checkpoints_and_resumes(tmp_path):
  # Two of the 8 simulated devices: on all 8 each replica updated the 61M parameters (or
  # FSDP gathered them), 2-3x the CPU time for nothing this test checks.
  exp = experiment.build(_large_batch_config(steps=4), devices=jax.devices()[:2])
  assert exp.config.model.variant == "alexnet_bn" and exp.config.optimizer.name == "lars"
  straight = tmp_path / "straight"
  result = train.train_and_evaluate(exp, straight)
  assert result.final_step == 4
  records = [r for r in read_metrics(straight) if "train/loss" in r]
  assert all(np.isfinite(r["train/loss"]) for r in records)
  peak = 14.0 * 16 / 8192
  assert [round(r["train/lr"] / peak, 6) for r in records] == [0.5, 1.0, 1.0, 0.25]

  # Resume from the step-2 checkpoint of a copy: the same state at step 4, batch stats included.
  resumed = tmp_path / "resumed"
  shutil.copytree(straight / "checkpoints", resumed / "checkpoints")
  shutil.rmtree(resumed / "checkpoints" / "4")
  train.train_and_evaluate(exp, resumed)
  abstract = ckpt_lib.abstract_like(exp.abstract_state, exp.state_shardings)
  states = []
  for workdir in (straight, resumed):
    reader = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=3, read_only=True)
    states.append(sharding.to_host(reader.restore(4, abstract)))
    reader.close()
  init_stats = models.init_batch_stats("alexnet_bn", image_size=227)
  assert not np.allclose(states[0]["batch_stats"]["bn5"]["mean"], init_stats["bn5"]["mean"])
  for got, want in zip(jax.tree.leaves(states[1]), jax.tree.leaves(states[0])):
    np.testing.assert_array_equal(got, want)

  # --mode=eval restores the batch statistics and evaluates with them: the end-of-run numbers.
  metrics = evaluate.evaluate_checkpoint(exp, resumed)
  final_eval = [r for r in read_metrics(straight) if "eval/loss" in r][-1]
  assert metrics["eval/num_examples"] == 16
  assert metrics["eval/loss"] == pytest.approx(final_eval["eval/loss"], rel=1e-6)
