"""Several JAX processes on this host (launch/local.sh: gloo collectives) train and evaluate
exactly like one process with the same global batch and device count."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.helpers import REPO, eval_records, run_main, train_losses
from tests.helpers import SMALL

ARGS = SMALL + ("--config.num_train_steps=4", "--config.eval_every_steps=4")


def launch_local(num_processes: int, devices_per_process: int, *args: str):
  env = dict(os.environ, DEVICES_PER_PROCESS=str(devices_per_process))
  env.pop("XLA_FLAGS", None)
  return subprocess.run(["bash", str(REPO / "launch" / "local.sh"), str(num_processes), *args],
                        env=env, capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow  # ~20-40 s; run by .ci/run's second pytest (-m slow)
def test_two_processes_of_two_devices_match_one_process_of_four(tmp_path):
  two = launch_local(2, 2, f"--config={REPO / 'configs' / 'synthetic.py'}",
                     f"--workdir={tmp_path / 'two'}", *ARGS)
  assert two.returncode == 0, two.stdout[-3000:]
  assert "[1] " in two.stdout  # both processes' output, prefixed
  run_main("synthetic.py", tmp_path / "one", *ARGS, devices=4)

  one_losses, two_losses = train_losses(tmp_path / "one"), train_losses(tmp_path / "two")
  assert sorted(two_losses) == [1, 2, 3, 4]
  for step, loss in one_losses.items():
    assert two_losses[step] == pytest.approx(loss, rel=1e-4), step
  one_eval, two_eval = eval_records(tmp_path / "one")[-1], eval_records(tmp_path / "two")[-1]
  assert two_eval["eval/num_examples"] == one_eval["eval/num_examples"] == 100
  assert two_eval["eval/loss"] == pytest.approx(one_eval["eval/loss"], rel=1e-4)

  # The checkpoint both processes wrote restores in a single process on one device.
  result = run_main("synthetic.py", tmp_path / "two", *ARGS, devices=1, mode="eval")
  printed = json.loads(result.stdout.strip().splitlines()[-1])
  assert printed["step"] == 4 and printed["eval/num_examples"] == 100
  assert printed["eval/loss"] == pytest.approx(two_eval["eval/loss"], rel=1e-4)

  # ...and training resumes from it in one process of four devices, on the batches the
  # two-process run would have seen next (the data position is the step alone).
  more = ARGS[:-2] + ("--config.num_train_steps=6", "--config.eval_at_end=false")
  continued = run_main("synthetic.py", tmp_path / "two", *more, devices=4)
  run_main("synthetic.py", tmp_path / "one", *more, devices=4)
  resumed, straight = train_losses(tmp_path / "two"), train_losses(tmp_path / "one")
  assert sorted(resumed) == list(range(1, 7))
  for step in (5, 6):
    assert resumed[step] == pytest.approx(straight[step], rel=1e-4), step
  assert "Resumed from step" in continued.stderr


def test_a_failing_process_fails_the_launch(tmp_path):
  result = launch_local(2, 1, f"--config={REPO / 'configs' / 'synthetic.py'}",
                        f"--workdir={tmp_path}", "--config.model.variant=nope")
  assert result.returncode != 0
  assert "model.variant" in result.stdout
