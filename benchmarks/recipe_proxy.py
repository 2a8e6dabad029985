"""Does the paper's recipe learn? The ImageNet recipe's model and optimizer on a real-image proxy.

ImageNet is not at hand, so the nearest real images stand in: Fashion-MNIST with the grey
channel repeated to RGB, upsampled to 224 on the device, 0-255 units with the mean (72.9)
subtracted and std 1, as the paper fed ImageNet. The model and optimizer are exactly
`configs/imagenet.py`'s (paper net, SGD momentum 0.9, lr 0.01, weight decay 5e-4), with only
the data, the class count and the batch (64) overridden, and a constant rate.

  python benchmarks/recipe_proxy.py --mode=scales                   # activation scale at init
  python benchmarks/recipe_proxy.py --mode=train --steps=300 --runs=default,paper,...

One JSON line per run. `scales`: the RMS of every stage's output at initialization for each
init scheme and LRN convention, the fraction of it that depends on the image (std over the
batch / RMS), and the initial loss (chance: ln 10 = 2.303). `train`: loss and
top-1 at steps 25/50/100/150/200/250/300 (averages over the preceding 25 steps) and
`steps_to_leave_chance`, the first logged step whose loss is below 0.95 ln 10.
Results: benchmarks/results/recipe_proxy_cpu.jsonl.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import pathlib
import platform
import time

from absl import app, flags, logging

_MODE = flags.DEFINE_enum("mode", "train", ["scales", "train"], "What to measure.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per run.")
_BATCH = flags.DEFINE_integer("batch", 64, "Global batch size.")
_RUNS = flags.DEFINE_list("runs", ["default", "paper"],
                          "Runs (names in RUNS): each changes one thing of configs/imagenet.py.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 25, "Steps between the averages reported.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny image size and few steps: checks it runs.")

REPO = pathlib.Path(__file__).resolve().parents[1]
FASHION_MNIST_MEAN = 72.9  # mean pixel of the Fashion-MNIST training images, 0-255
# Each run: config.model / config.optimizer overrides of configs/imagenet.py's defaults.
RUNS = {
    "default": {},  # configs/imagenet.py as it ships
    "paper": {"model.init": "paper"},  # N(0, 0.01), biases 1 (the paper's text)
    "caffe": {"model.init": "caffe"},  # N(0, 0.01), fc6/fc7 N(0, 0.005), biases 0.1
    "paper_lrn_printed": {"model.init": "paper", "model.lrn_alpha_divided_by_size": False},
    "paper_no_dropout": {"model.init": "paper", "model.dropout_rate": 0.0},
    "paper_lr_0.001": {"model.init": "paper", "optimizer.learning_rate": 0.001},
    "paper_input_std_58": {"model.init": "paper", "data.std": (58.0, 58.0, 58.0)},
}


def imagenet_config():
  spec = importlib.util.spec_from_file_location("imagenet_config", REPO / "configs" / "imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def proxy_config(overrides: dict):
  """configs/imagenet.py with the proxy's data and the run's overrides."""
  c = imagenet_config()
  c.data.source = "fashion_mnist"
  c.data.num_workers = 0
  c.data.mean = (FASHION_MNIST_MEAN,) * 3
  c.data.std = (1.0,) * 3
  c.model.num_classes = 10
  c.model.in_channels = 3
  c.batch_size = c.eval_batch_size = _BATCH.value
  c.schedule.name = "constant"
  c.compilation_cache_dir = "off"
  if _SMOKE.value:
    c.model.image_size = 227
  for path, value in overrides.items():
    section, field = path.split(".")
    c[section][field] = value
  return c


def _header() -> dict:
  import jax
  return {"date": datetime.date.today().isoformat(), "device": jax.devices()[0].device_kind,
          "backend": jax.default_backend(), "jax": jax.__version__,
          "machine": platform.machine(), "batch": _BATCH.value}


def measure_scales() -> None:
  import jax.numpy as jnp
  import optax

  from alexnet_jax import experiment, models, steps

  for init in ("paper", "caffe", "xavier", "torch"):
    for divided in (True, False):
      config = proxy_config({"model.init": init, "model.lrn_alpha_divided_by_size": divided})
      exp = experiment.build(config)
      batch = next(exp.train_batches())
      params = models.init("paper", config.seed, **{k: v for k, v in config.model.to_dict().items()
                                                     if k != "variant"})
      images = steps.device_preprocess(batch["image"], jnp.asarray(config.data.mean, jnp.float32),
                                       jnp.asarray(config.data.std, jnp.float32),
                                       config.model.image_size)
      logits, state = exp.model.apply({"params": params}, images, train=False,
                                      mutable=["intermediates"])
      rms = {name.removesuffix("_output"): float(jnp.sqrt(jnp.mean(jnp.square(v[0]))))
             for name, v in state["intermediates"].items()}
      # The part of each unit that depends on the image: its std over the batch, as a
      # fraction of its RMS. Near 0: every image gives the same activation (a bias-driven
      # layer), so the loss cannot tell the classes apart.
      signal = {name.removesuffix("_output"): float(
          jnp.sqrt(jnp.mean(jnp.var(v[0], axis=0))) / (jnp.sqrt(jnp.mean(jnp.square(v[0]))) + 1e-12))
                for name, v in state["intermediates"].items()}
      loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean())
      print(json.dumps({**_header(), "mode": "scales", "init": init,
                        "lrn_alpha_divided_by_size": divided, "initial_loss": loss,
                        "logit_std": float(jnp.std(logits)), "input_rms": float(
                            jnp.sqrt(jnp.mean(jnp.square(images)))),
                        "stage_rms": {k: round(v, 4) for k, v in sorted(
                            rms.items(), key=lambda kv: models.STAGES.index(kv[0]))},
                        "stage_image_dependent_fraction": {k: round(v, 4) for k, v in sorted(
                            signal.items(), key=lambda kv: models.STAGES.index(kv[0]))}}),
            flush=True)


def train_run(name: str) -> dict:
  import jax
  import numpy as np

  from alexnet_jax import experiment, state as state_lib

  config = proxy_config(RUNS[name])
  exp = experiment.build(config)
  state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape, exp.state_shardings,
                                       config.seed)
  batches = exp.train_batches()
  chance = math.log(config.model.num_classes)
  curve, pending, left_chance = {}, [], None
  started = time.time()
  for step in range(1, _STEPS.value + 1):
    state, metrics = exp.train_step(state, next(batches))
    pending.append(metrics)
    if step % _LOG_EVERY.value == 0:
      fetched = jax.device_get(pending)
      pending = []
      loss = float(np.mean([m["loss"] for m in fetched]))
      top1 = float(np.mean([m["top1"] for m in fetched]))
      curve[step] = {"loss": round(loss, 4), "top1": round(top1, 4)}
      logging.info("%s step %d: loss %.4f top1 %.4f", name, step, loss, top1)
      if left_chance is None and loss < 0.95 * chance:
        left_chance = step
  batches.close()
  return {**_header(), "mode": "train", "run": name, "overrides": RUNS[name],
          "init": config.model.init, "steps": _STEPS.value, "curve": curve,
          "steps_to_leave_chance": left_chance,
          "final_loss": curve[max(curve)]["loss"] if curve else None,
          "seconds": round(time.time() - started, 1)}


def main(argv):
  del argv
  from alexnet_jax.runtime import cpu_runtime
  cpu_runtime.configure()  # as main does, before JAX starts: the CPU allocator setting
  if _SMOKE.value:
    flags.FLAGS.steps = min(_STEPS.value, 4)
    flags.FLAGS.batch = 8
    flags.FLAGS.log_every = 2
  if _MODE.value == "scales":
    measure_scales()
    return
  for name in _RUNS.value:
    if name not in RUNS:
      raise app.UsageError(f"--runs: {name!r} is not one of {sorted(RUNS)}")
    print(json.dumps(train_run(name)), flush=True)


if __name__ == "__main__":
  app.run(main)
