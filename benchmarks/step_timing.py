"""Timing the trainer's own jitted train step on one batch kept on the device: shared by
train_step.py (CPU, against PyTorch) and gpu_suite.py. No flags here."""

from __future__ import annotations

import time


def time_train_step(config, *, steps: int, repeats: int = 1, warmup: int = 1) -> dict:
  """Builds `config`'s experiment and times its train step on a random uint8 batch.

  Returns {'seconds_per_step' (best of `repeats` timings of `steps` steps), 'first_step_s'
  (compilation included), 'exp'}. The batch is made once and stays on the device, so the
  input pipeline is not measured.
  """
  import jax
  import numpy as np

  from alexnet_jax import experiment, sharding, state as state_lib

  exp = experiment.build(config)
  state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape, exp.mesh, config.seed)
  size, channels = config.model.image_size, config.model.in_channels
  rng = np.random.default_rng(0)
  batch = sharding.to_global_batch({
      "image": rng.integers(0, 256, (config.batch_size, size, size, channels), dtype=np.uint8),
      "label": rng.integers(0, config.model.num_classes, config.batch_size, dtype=np.int32),
  }, exp.mesh)
  start = time.perf_counter()
  state, metrics = exp.train_step(state, batch)  # compiles
  jax.block_until_ready(metrics)
  first_step_s = time.perf_counter() - start
  for _ in range(warmup - 1):
    state, metrics = exp.train_step(state, batch)
  jax.block_until_ready(metrics)
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = exp.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    best = min(best, (time.perf_counter() - start) / steps)
  return {"seconds_per_step": best, "first_step_s": first_step_s, "exp": exp}
