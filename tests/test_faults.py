"""Faults a user meets, injected from outside as a user would: each ends in one sentence and
a non-zero exit, or is survived, and never loses or corrupts good work.

Runs `python -m alexnet_jax.main` in subprocesses on the small d2l model of helpers.SMALL.
"""

from __future__ import annotations

import pathlib
import signal
import subprocess
import time

import filelock
import numpy as np
import orbax.checkpoint as ocp
import psutil

from tests.helpers import SMALL, device_env, main_command, read_metrics, run_main, train_losses


def _params(workdir, step):
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")["params"]


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_divergence_stops_the_run_and_keeps_only_finite_checkpoints(tmp_path):
  result = run_main("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=8",
                    "--config.checkpoint_every_steps=1", "--config.log_every_steps=4",
                    "--config.eval_at_end=false", "--config.optimizer.learning_rate=1e6",
                    check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "diverged" in result.stderr and "learning_rate" in result.stderr
  assert "Traceback" not in result.stderr
  for step in _checkpoint_steps(tmp_path):  # whatever was saved is finite
    for leaf in np.concatenate([np.ravel(x) for layer in _params(tmp_path, step).values()
                                for x in layer.values()])[None]:
      assert np.all(np.isfinite(leaf)), step
  assert all(v is not None for r in read_metrics(tmp_path) for v in r.values())


def _truncate_largest_file(directory: pathlib.Path) -> None:
  files = [p for p in directory.rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 3])


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
  args = SMALL + ("--config.checkpoint_every_steps=2", "--config.eval_at_end=false")
  run_main("synthetic.py", tmp_path, *args, "--config.num_train_steps=4")
  assert _checkpoint_steps(tmp_path) == [2, 4]
  _truncate_largest_file(tmp_path / "checkpoints" / "4" / "state")
  resumed = run_main("synthetic.py", tmp_path, *args, "--config.num_train_steps=6")
  damage = [line for line in resumed.stderr.splitlines() if "Checkpoint step 4" in line]
  assert len(damage) == 1 and "is unreadable (state/" in damage[0], resumed.stderr[-3000:]
  assert len(damage[0].split("] ", 1)[1]) <= 200  # one short line (the log prefix aside)
  # Orbax's abandoned read coroutines printed ~65 lines of TensorStore spec each.
  assert "Traceback" not in resumed.stderr and "Exception ignored" not in resumed.stderr
  assert "Resumed from step 2" in resumed.stderr
  assert (tmp_path / "checkpoints" / "4.damaged").is_dir()  # kept for the user to inspect
  assert _checkpoint_steps(tmp_path) == [2, 4, 6]


def test_a_second_trainer_on_the_same_workdir_is_refused(tmp_path):
  tmp_path.mkdir(exist_ok=True)
  held = filelock.FileLock(str(tmp_path / ".alexnet_jax.lock"))
  with held.acquire(timeout=0):
    result = run_main("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=1",
                      check=False)
  assert result.returncode == 1
  assert "Another trainer" in result.stderr and "Traceback" not in result.stderr
  assert not (tmp_path / "checkpoints").exists()


def test_refused_resume_writes_nothing(tmp_path):
  run_main("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=1",
           "--config.eval_at_end=false")
  config_before = (tmp_path / "config.json").read_text()
  events_before = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
  other = run_main("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=2",
                   "--config.model.image_size=112", check=False)
  assert other.returncode == 1 and "model.image_size=96" in other.stderr
  assert (tmp_path / "config.json").read_text() == config_before
  assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == events_before

  again = run_main("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=1",
                   "--config.eval_at_end=false")
  assert "Already trained to step 1" in again.stderr and "Training 1 steps" not in again.stderr


def test_resume_under_another_worker_count_sees_the_same_batches(tmp_path):
  args = SMALL + ("--config.eval_at_end=false", "--config.checkpoint_every_steps=1000")
  run_main("synthetic.py", tmp_path / "straight", *args, "--config.num_train_steps=6")
  run_main("synthetic.py", tmp_path / "split", *args, "--config.num_train_steps=3",
           "--config.data.num_workers=0")
  second = run_main("synthetic.py", tmp_path / "split", *args, "--config.num_train_steps=6",
                    "--config.data.num_workers=2")
  straight, split = train_losses(tmp_path / "straight"), train_losses(tmp_path / "split")
  assert sorted(split) == [1, 2, 3, 4, 5, 6]
  for step, loss in straight.items():
    assert split[step] == loss, step
  assert "Resumed from step 3 in" in second.stderr


def test_workers_exit_when_the_trainer_is_killed(tmp_path):
  process = subprocess.Popen(
      main_command("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=100000",
                   "--config.data.num_workers=2"),
      env=device_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and len(train_losses(tmp_path) if (
        tmp_path / "metrics.jsonl").exists() else {}) < 2:
      time.sleep(0.2)
    children = psutil.Process(process.pid).children(recursive=True)
    assert len(children) >= 2, "expected Grain worker processes"
  finally:
    process.send_signal(signal.SIGKILL)
    process.wait()
  _, alive = psutil.wait_procs(children, timeout=20)
  assert not alive, [p.cmdline()[:3] for p in alive]


def test_a_full_disk_stops_at_the_first_failed_save_with_one_sentence(tmp_path):
  # RLIMIT_FSIZE makes every write past 20 MB fail with EFBIG ("File too large"), as a full
  # disk fails with ENOSPC: the same path through Orbax and TensorStore (Python ignores
  # SIGXFSZ, so the write fails instead of killing the process).
  import resource

  limit = 20 * 2**20
  result = subprocess.run(
      main_command("synthetic.py", tmp_path, *SMALL, "--config.num_train_steps=4",
                   "--config.checkpoint_every_steps=1", "--config.eval_at_end=false",
                   "--config.compilation_cache_dir=off"),
      env=device_env(1), capture_output=True, text=True, timeout=300,
      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Could not write a checkpoint") and "File too large" in last
  assert "Traceback" not in result.stderr  # Orbax's background tracebacks stay out
  assert "MB" in last
  assert max(train_losses(tmp_path)) < 4  # stopped at the failure, did not train on
