"""Ctrl-C as a user presses it: to the whole process group (trainer and loader workers), once
or twice, at any moment. Never a crash (139) or an abort (134); the run always resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from tests.helpers import SMALL, device_env, main_command, read_metrics, run_main

# Points of a run, each found by a line of its console log, in the order one workdir meets
# them (each run resumes where the previous stopped, a step or two after its press; the last
# evaluation is at the final step, 14).
MARKERS = {
    "compile": "Waiting for the train step's compile",
    "step": "step 6/",
    "save": "step 10/",
    "eval": "Evaluating",
}


def _interrupt(workdir, args, marker: str, presses: int, gap_s: float = 1.0):
  """Starts main, waits for `marker` in its log, sends SIGINT to its process group `presses`
  times `gap_s` apart; returns (exit status, stderr, seconds from the first press to exit)."""
  process = subprocess.Popen(main_command("synthetic.py", workdir, *args), env=device_env(1),
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
  seen = []
  for line in process.stderr:
    seen.append(line)
    if marker in line:
      break
  else:
    process.wait()
    raise AssertionError(f"{marker!r} never logged:\n{''.join(seen)[-3000:]}")
  children = psutil.Process(process.pid).children(recursive=True)
  pressed = time.time()
  for press in range(presses):
    if press:
      time.sleep(gap_s)
    os.killpg(process.pid, signal.SIGINT)
  rest = process.stderr.read()
  status = process.wait(timeout=120)
  gone = psutil.wait_procs(children, timeout=10)[1]
  assert not gone, f"left running: {gone}"
  return status, "".join(seen) + rest, time.time() - pressed


def _args(*extra):
  return SMALL + ("--config.num_train_steps=14", "--config.checkpoint_every_steps=5",
                  "--config.eval_every_steps=7", "--config.data.num_eval_examples=600",
                  "--config.log_every_steps=1") + extra


def test_two_ctrl_c_at_every_point_exit_130_and_the_run_resumes(tmp_path):
  """One workdir through every point in turn: each run resumes the previous one's newest
  complete checkpoint, and the last finishes the run."""
  for point, marker in MARKERS.items():
    status, log, _ = _interrupt(tmp_path, _args(), marker, presses=2)
    assert status == 130, f"{point}: exit {status}\n{log[-3000:]}"
    # The first press may already have stopped the run (saved, exit 130) before the second.
    assert "second Ctrl-C" in log or "Stopped by SIGINT" in log, f"{point}:\n{log[-3000:]}"
    assert "Traceback" not in log, f"{point}:\n{log[-3000:]}"
  finished = run_main("synthetic.py", tmp_path, *_args())
  steps = [r["step"] for r in read_metrics(tmp_path) if "train/loss" in r]
  assert steps[-1] == 14, finished.stderr[-3000:]


def test_one_ctrl_c_during_an_evaluation_abandons_it_and_checkpoints(tmp_path):
  # 600 images in batches of 8: 75 eval batches, abandoned after the one in flight.
  args = _args("--config.eval_batch_size=8")
  status, log, _ = _interrupt(tmp_path, args, MARKERS["eval"], presses=1)
  assert status == 130, log[-3000:]
  abandoned = [line for line in log.splitlines() if "Evaluation abandoned after" in line]
  assert len(abandoned) == 1 and "of 75 batches" in abandoned[0], log[-3000:]
  assert int(abandoned[0].split("after ")[1].split()[0]) < 75
  assert not [r for r in read_metrics(tmp_path) if "eval/top1" in r]  # no partial result
  assert (tmp_path / "checkpoints" / "7").is_dir()
  resumed = run_main("synthetic.py", tmp_path, *args)
  assert "Resumed from step 7" in resumed.stderr
  # The abandoned evaluation is not redone; the next one runs at its cadence.
  assert [r["step"] for r in read_metrics(tmp_path) if "eval/top1" in r] == [14]


@pytest.mark.slow
@pytest.mark.parametrize("point", list(MARKERS))
def test_two_ctrl_c_on_the_paper_net_with_workers_never_crash(tmp_path, point):
  """The paper net with 2 loader workers, where unwinding after the second Ctrl-C crashed
  (SIGSEGV) 5 of 5 times: 3 trials at each point, then the run resumes."""
  args = ("--config.num_train_steps=12", "--config.checkpoint_every_steps=5",
          "--config.eval_every_steps=7", "--config.log_every_steps=1",
          "--config.data.num_workers=2", "--config.data.num_eval_examples=256")
  for trial in range(3):
    workdir = tmp_path / str(trial)
    status, log, _ = _interrupt(workdir, args, MARKERS[point].replace("6/", "3/"), presses=2)
    assert status == 130, f"trial {trial}: exit {status}\n{log[-3000:]}"
  run_main("synthetic.py", workdir, *args)


def test_a_ctrl_c_at_launch_is_never_lost(tmp_path):
  """A signal in the first instants (while jax imports, Python may drop the exception it
  raises inside a garbage-collection callback) still stops training and --mode=eval, exit
  130, one line, no traceback; a completed run is never reported for it."""
  args = SMALL + ("--config.num_train_steps=2", "--config.eval_at_end=false")
  for mode in ("train", "eval"):
    if mode == "eval":
      run_main("synthetic.py", tmp_path, *args)  # a checkpoint to evaluate
    process = subprocess.Popen(main_command("synthetic.py", tmp_path, *args, mode=mode),
                               env=device_env(1), stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    log = process.stderr.read()
    assert process.wait(timeout=120) == 130, f"{mode}:\n{log[-3000:]}"
    assert "Traceback" not in log and "Exception ignored" not in log, f"{mode}:\n{log[-3000:]}"
