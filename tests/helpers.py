"""Running the real command line in a subprocess, as a user would, and reading its outputs."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# A small d2l model on 96x96 grey synthetic images: each command-line run takes seconds.
SMALL = (
    "--config.model.variant=d2l", "--config.model.num_classes=10",
    "--config.model.in_channels=1", "--config.model.image_size=96",
    "--config.model.init=xavier", "--config.data.mean=(0.,)", "--config.data.std=(255.,)",
    "--config.data.num_train_examples=256", "--config.data.num_eval_examples=100",
    "--config.batch_size=16", "--config.eval_batch_size=24", "--config.log_every_steps=1",
    "--config.optimizer.learning_rate=0.01",
)


def main_command(config: str, workdir, *overrides: str, mode: str = "train") -> list[str]:
  return [sys.executable, "-m", "alexnet_jax.main", f"--config={REPO / 'configs' / config}",
          f"--workdir={workdir}", f"--mode={mode}", *overrides]


def device_env(num_devices: int) -> dict[str, str]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def run_main(config: str, workdir, *overrides: str, devices: int = 1, mode: str = "train",
             check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
  result = subprocess.run(main_command(config, workdir, *overrides, mode=mode),
                          env=device_env(devices), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
  if check and result.returncode != 0:
    raise AssertionError(f"main exited {result.returncode}:\n{result.stderr[-4000:]}")
  return result


def read_metrics(workdir) -> list[dict]:
  path = pathlib.Path(workdir) / "metrics.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_losses(workdir) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in read_metrics(workdir) if "train/loss" in r}


def eval_records(workdir) -> list[dict]:
  return [r for r in read_metrics(workdir) if "eval/top1" in r]
