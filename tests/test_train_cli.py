"""The command line end to end: device-count equivalence, SIGTERM + resume, eval elsewhere.

These run `python -m alexnet_jax.main` in subprocesses with their own simulated device counts,
on a small d2l model (96x96 grey synthetic images) so that each run takes seconds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from tests.helpers import (SMALL, device_env, eval_records, main_command, read_metrics,
                           run_main, train_losses)


def _params(workdir, step):
  path = workdir / "checkpoints" / str(step) / "state"
  state = ocp.StandardCheckpointer().restore(path)
  return state["params"]


def test_eight_devices_train_like_one_and_the_checkpoint_evaluates_on_one(tmp_path):
  """Same global batch on 1 and 8 devices: the same loss at every step (float32); the
  checkpoint written on 8 devices restores and evaluates on 1 to the same numbers."""
  args = SMALL + ("--config.num_train_steps=5", "--config.eval_every_steps=5")
  run_main("synthetic.py", tmp_path / "one", *args, devices=1)
  eight_dir = tmp_path / "eight"
  run_main("synthetic.py", eight_dir, *args, devices=8)
  one, eight = train_losses(tmp_path / "one"), train_losses(eight_dir)
  assert sorted(one) == [1, 2, 3, 4, 5]
  for step in one:
    assert eight[step] == pytest.approx(one[step], rel=1e-4), step
  eval_one, eval_eight = eval_records(tmp_path / "one")[-1], eval_records(eight_dir)[-1]
  assert eval_one["eval/num_examples"] == eval_eight["eval/num_examples"] == 100
  assert eval_eight["eval/loss"] == pytest.approx(eval_one["eval/loss"], rel=1e-4)

  result = run_main("synthetic.py", eight_dir, *args, devices=1, mode="eval")
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  assert printed["step"] == 5
  assert printed["eval/num_examples"] == 100
  assert printed["eval/loss"] == pytest.approx(eval_eight["eval/loss"], rel=1e-4)
  assert printed["eval/top1"] == pytest.approx(eval_eight["eval/top1"], abs=1e-6)
  appended = read_metrics(eight_dir)[-1]
  assert appended["eval/checkpoint_step"] == 5 and appended["eval/loss"] == printed["eval/loss"]

  # A checkpoint of another model: one clear sentence, no traceback.
  other = run_main("synthetic.py", eight_dir, *args, "--config.model.variant=torchvision",
                   "--config.model.init=torch", mode="eval", check=False)
  assert other.returncode == 1
  assert "model.variant='d2l'" in other.stderr and "Traceback" not in other.stderr


def test_sigterm_then_resume_matches_uninterrupted_run(tmp_path):
  steps = 24  # the signal lands after step 5: 19 steps of margin
  args = SMALL + (f"--config.num_train_steps={steps}", "--config.eval_every_steps=12",
                  "--config.checkpoint_every_steps=1000")
  run_main("synthetic.py", tmp_path / "straight", *args)

  stopped = tmp_path / "stopped"
  process = subprocess.Popen(main_command("synthetic.py", stopped, *args),
                             env=device_env(1), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline:
    if (stopped / "metrics.jsonl").exists() and len(train_losses(stopped)) >= 5:
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
  assert "Run the same command to resume" in stderr
  interrupted_at = max(train_losses(stopped))
  assert interrupted_at < steps, "the run finished before the signal; make it longer"
  assert (stopped / "checkpoints" / str(interrupted_at)).is_dir()

  resumed = run_main("synthetic.py", stopped, *args)
  assert f"Resumed from step {interrupted_at}" in resumed.stderr

  straight_losses, resumed_losses = train_losses(tmp_path / "straight"), train_losses(stopped)
  assert sorted(resumed_losses) == list(range(1, steps + 1))
  for step, loss in straight_losses.items():
    assert resumed_losses[step] == loss, step  # bit-identical, not just close
  final_a, final_b = _params(tmp_path / "straight", steps), _params(stopped, steps)
  for layer in final_a:
    for name in final_a[layer]:
      np.testing.assert_array_equal(final_a[layer][name], final_b[layer][name])


def test_clear_error_for_unknown_variant(tmp_path):
  result = run_main("synthetic.py", tmp_path, "--config.model.variant=vgg", check=False)
  assert result.returncode == 1
  assert "model.variant" in result.stderr and "Traceback" not in result.stderr


def test_clear_error_when_imagenet_is_missing(tmp_path):
  result = run_main("imagenet.py", tmp_path / "run",
                    f"--config.data.data_dir={tmp_path / 'no_imagenet_here'}", check=False)
  assert result.returncode == 1
  assert "no_imagenet_here" in result.stderr and "Traceback" not in result.stderr
  assert "prepare" in result.stderr  # says how to prepare the data
