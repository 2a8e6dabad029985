"""Timing the trainer's own jitted train step on one batch kept on the device: shared by
train_step.py (CPU, against PyTorch) and gpu_suite.py. No flags here."""

from __future__ import annotations

import hashlib
import time


def lower_train_step(config, *, state=None) -> dict:
  """Builds `config`'s experiment and lowers its train step for a random uint8 batch.

  state: a train state to reuse (one of the same variant: layer forms and group_impl never
  change the parameters), else a new one is initialized. Returns {'exp', 'state', 'batch',
  'lowered', 'lower_s', 'fingerprint' (SHA-256 of the lowered program's text: two configs
  with the same fingerprint compile to the same program)}.
  """
  import numpy as np

  from alexnet_jax import experiment, sharding, state as state_lib

  exp = experiment.build(config)
  if state is None:
    state = state_lib.create_train_state(exp.model, exp.tx, exp.input_shape, exp.state_shardings,
                                         config.seed)
  size, channels = config.model.image_size, config.model.in_channels
  rng = np.random.default_rng(0)
  batch = sharding.to_global_batch({
      "image": rng.integers(0, 256, (config.batch_size, size, size, channels), dtype=np.uint8),
      "label": rng.integers(0, config.model.num_classes, config.batch_size, dtype=np.int32),
  }, exp.mesh)
  start = time.perf_counter()
  lowered = exp.train_step.lower(state, batch)
  lower_s = time.perf_counter() - start
  fingerprint = hashlib.sha256(lowered.as_text().encode()).hexdigest()
  return {"exp": exp, "state": state, "batch": batch, "lowered": lowered, "lower_s": lower_s,
          "fingerprint": fingerprint}


def time_compiled(compiled, state, batch, *, steps: int, repeats: int = 1,
                  warmup: int = 1) -> dict:
  """Times `compiled(state, batch)` (a compiled train step): the first call (warmup), then the
  best of `repeats` timings of `steps` steps, synchronized only at the end of each timing.
  Returns {'seconds_per_step', 'first_call_s', 'state' (the latest: the step donates it)}."""
  import jax

  start = time.perf_counter()
  state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  first_call_s = time.perf_counter() - start
  for _ in range(warmup - 1):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    best = min(best, (time.perf_counter() - start) / steps)
  return {"seconds_per_step": best, "first_call_s": first_call_s, "state": state}


def time_train_step(config, *, steps: int, repeats: int = 1, warmup: int = 1,
                    state=None) -> dict:
  """Builds `config`'s experiment and times its train step on a random uint8 batch.

  Returns {'seconds_per_step' (best of `repeats` timings of `steps` steps), 'first_step_s'
  (lowering and compilation included), 'compile_s', 'exp', 'compiled', 'state',
  'fingerprint'}. The batch is made once and stays on the device, so the input pipeline is
  not measured.
  """
  prepared = lower_train_step(config, state=state)
  start = time.perf_counter()
  compiled = prepared["lowered"].compile()
  compile_s = time.perf_counter() - start
  timed = time_compiled(compiled, prepared["state"], prepared["batch"], steps=steps,
                        repeats=repeats, warmup=warmup)
  return {"seconds_per_step": timed["seconds_per_step"],
          "first_step_s": prepared["lower_s"] + compile_s + timed["first_call_s"],
          "compile_s": compile_s, "exp": prepared["exp"], "compiled": compiled,
          "state": timed["state"], "fingerprint": prepared["fingerprint"]}
