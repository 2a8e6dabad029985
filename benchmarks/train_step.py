"""Images/sec of the real jitted train step, on whatever devices JAX sees.

  python benchmarks/train_step.py --config=configs/synthetic.py --batch=32 --steps=10
  python benchmarks/train_step.py --config=configs/synthetic.py --batch=32 --group_impl=towers
  python benchmarks/train_step.py --config=configs/synthetic.py --batch=32 --compare_torch

Prints one JSON line per measurement. The step is the trainer's own (experiment.build), fed a
fixed uint8 batch already on the devices, so the figure is the device compute of one step:
forward, backward, optimizer update, metrics. The process is set up as `python -m
alexnet_jax.main` sets it up (alexnet_jax/runtime/cpu_runtime.py; --nocpu_runtime_tuning to measure
without). With --compare_torch it then runs benchmarks/torch_reference.py (the same network in
plain PyTorch) in a subprocess with the same batch, twice: plain, and with glibc set to keep
freed memory as the tuned JAX process does (--notorch_same_allocator to skip), and prints each
ratio, all measured in this one run.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=False)
_BATCH = flags.DEFINE_integer("batch", 32, "Global batch size.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warm-up steps).")
_GROUP_IMPL = flags.DEFINE_string("group_impl", None, "Override model.group_impl.")
_DTYPE = flags.DEFINE_string("dtype", None, "Override model.dtype (float32 | bfloat16).")
_COMPARE_TORCH = flags.DEFINE_bool("compare_torch", False,
                                   "Also time benchmarks/torch_reference.py; print the ratio.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Alternate JAX and torch measurements this often.")
_CPU_RUNTIME_TUNING = flags.DEFINE_bool(
    "cpu_runtime_tuning", True,
    "Apply alexnet_jax.cpu_runtime as the trainer does (false: measure XLA:CPU untuned).")
_TORCH_SAME_ALLOCATOR = flags.DEFINE_bool(
    "torch_same_allocator", True,
    "With --compare_torch, also time torch with glibc set to keep freed memory as the tuned "
    "JAX process does (env MALLOC_*), and print that ratio too.")
_KERNELS = flags.DEFINE_enum("kernels", None, ["auto", "plain", "cpu"],
                             "Override config.model.kernels (layer forms; docs/model.md).")
flags.mark_flag_as_required("config")

HERE = pathlib.Path(__file__).resolve().parent


def measure_jax(config) -> dict:
  import jax

  import step_timing

  timed = step_timing.time_train_step(config, steps=_STEPS.value, warmup=2)
  seconds, exp = timed["seconds_per_step"], timed["exp"]
  return {
      "framework": "jax", "images_per_sec": config.batch_size / seconds,
      "step_time_ms": seconds * 1e3, "device": jax.devices()[0].device_kind,
      "num_devices": jax.device_count(), "variant": config.model.variant,
      "group_impl": exp.kernels.group_impl, "kernels": exp.kernels.kernels,
      "dtype": config.model.dtype, "batch": config.batch_size,
      "image_size": config.model.image_size,
  }


def measure_torch(config, keep_freed_memory: bool = False) -> dict:
  from alexnet_jax.runtime import cpu_runtime

  command = [sys.executable, str(HERE / "torch_reference.py"), f"--batch={config.batch_size}",
             f"--steps={_STEPS.value}", f"--image_size={config.model.image_size}"]
  # The environment form of the mallopt calls the tuned JAX process made.
  env = dict(os.environ, **(cpu_runtime.keep_freed_memory_env() if keep_freed_memory else {}))
  out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  result["glibc_keeps_freed_memory"] = keep_freed_memory
  return result


def main(argv):
  del argv
  from alexnet_jax.runtime import cpu_runtime

  # Before JAX starts its backend, as main does.
  tuning = cpu_runtime.configure(_CPU_RUNTIME_TUNING.value, _CONFIG.value.cpu_eigen_convolutions,
                                  model_parallel=_CONFIG.value.parallel.model)
  config = _CONFIG.value
  config.batch_size = _BATCH.value
  config.eval_batch_size = _BATCH.value
  if _GROUP_IMPL.value:
    config.model.group_impl = _GROUP_IMPL.value
  if _KERNELS.value:
    config.model.kernels = _KERNELS.value
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  for _ in range(_REPEATS.value):
    result = measure_jax(config)
    result["cpu_runtime_tuning"] = tuning
    print(json.dumps(result), flush=True)
    if not _COMPARE_TORCH.value:
      continue
    references = [(False, measure_torch(config))]
    if _TORCH_SAME_ALLOCATOR.value:
      references.append((True, measure_torch(config, keep_freed_memory=True)))
    for same_allocator, reference in references:
      print(json.dumps(reference), flush=True)
      print(json.dumps({
          "metric": ("jax_over_torch_same_allocator_images_per_sec" if same_allocator
                     else "jax_over_torch_images_per_sec"),
          "ratio": result["images_per_sec"] / reference["images_per_sec"],
          "batch": config.batch_size, "variant": config.model.variant,
          "group_impl": result["group_impl"], "dtype": config.model.dtype,
          "cpu_runtime_tuning": bool(tuning)}), flush=True)


if __name__ == "__main__":
  app.run(main)
