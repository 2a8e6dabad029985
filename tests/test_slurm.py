"""The README's Slurm command, `sbatch launch/slurm.sbatch ...`, under a real Slurm.

Needs a running cluster: `launch/slurm_local.sh start` (as root) makes one on this machine;
.ci/run does that, runs `python -m pytest -q -m slurm` and stops it. The default suite
deselects these tests (marker `slurm`). Every job has 2 tasks of 1 CPU each (gloo), on the
small d2l model, with the CPU options given to sbatch, as a user of a CPU cluster would.

- two tasks train like one process of two devices, and `--mode=eval` restores the result;
- a job warned at its time limit (--signal) and by `scancel --signal=TERM` checkpoints the
  same step in every process, requeues itself, and resumes to the same losses, bit for bit,
  as a job never interrupted; a plain scancel is not requeued; nothing is left running;
- a task killed with SIGKILL stops the others within seconds; a resubmission resumes from
  the newest checkpoint (and reads the compilation cache the first one wrote in the workdir);
- a workdir one task cannot write, or too few tasks for the mesh: one sentence in the log.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, SMALL, eval_records, run_main, train_losses


# What a user of a CPU cluster adds to the README's command: 2 tasks of one CPU, no GPU.
CPU_TASKS = ("--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-task=0")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE")
# Long enough never to end by itself in these tests (they stop it); no eval, no periodic
# checkpoint: the only checkpoints are those the stops write.
LONG = SMALL + ("--config.num_train_steps=1000", "--config.eval_every_steps=100000",
                "--config.checkpoint_every_steps=100000")


@pytest.fixture(scope="module")
def slurm():
  if shutil.which("sbatch") is None or subprocess.run(
      ["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
    pytest.fail("no Slurm cluster answers here: start one with `sudo launch/slurm_local.sh "
                "start` (and stop it with `... stop`)")


# The tests that submit jobs; the others here run in the default suite.
slurm_job = pytest.mark.usefixtures("slurm")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """One compilation cache for the jobs that do not test the script's default (in the
  workdir): the same steps compile once."""
  return tmp_path_factory.mktemp("compilation_cache")


class Job:
  """One `sbatch launch/slurm.sbatch ...` submission and its log."""

  def __init__(self, tmp_path: pathlib.Path, workdir, *args: str, sbatch=(), env=None,
               config: str = "synthetic.py", mode: str = "train"):
    self.log = tmp_path / f"slurm-{workdir.name}-{mode}-%j.out"
    environ = dict(os.environ)
    environ.pop("XLA_FLAGS", None)  # the test process's 8 simulated devices are not the job's
    # The job runs the interpreter of these tests.
    environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), environ["PATH"]])
    environ.update(env or {})
    command = ["sbatch", "--parsable", f"--output={self.log}", *CPU_TASKS, *sbatch,
               "launch/slurm.sbatch", f"--config=configs/{config}", f"--workdir={workdir}",
               f"--mode={mode}", *args]
    result = subprocess.run(command, cwd=REPO, env=environ, capture_output=True, text=True,
                            timeout=60, check=True)
    self.id = result.stdout.strip().split(";")[0]
    self.log = pathlib.Path(str(self.log).replace("%j", self.id))
    self.submitted = time.monotonic()

  def info(self) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True,
                         text=True, timeout=30).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))

  def text(self) -> str:
    return self.log.read_text(errors="replace") if self.log.exists() else ""

  def lines(self, task: int | None = None) -> list[str]:
    """The log's lines, of one task (label removed) or all."""
    if task is None:
      return self.text().splitlines()
    prefix = f"{task}: "
    return [line[len(prefix):] for line in self.text().splitlines() if line.startswith(prefix)]

  def last_step(self) -> int:
    steps = [int(m) for m in re.findall(r"\] step (\d+)/", self.text())]
    return max(steps, default=0)

  def wait(self, condition, what: str, timeout: float = 240, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      value = condition()
      if value:
        return value
      time.sleep(poll)
    raise AssertionError(f"job {self.id}: no {what} after {timeout} s; state "
                         f"{self.info().get('JobState')}; log:\n{self.text()[-5000:]}")

  def wait_step(self, step: int, timeout: float = 240) -> int:
    return self.wait(lambda: self.last_step() >= step and self.last_step(), f"step {step}",
                     timeout)

  def wait_restarts(self, count: int, timeout: float = 180) -> dict[str, str]:
    """Until the job has been requeued `count` times and waits to start again."""
    return self.wait(lambda: (lambda i: int(i.get("Restarts", 0)) >= count
                              and i.get("JobState") == "PENDING" and i)(self.info()),
                     f"requeue #{count}", timeout, poll=0.5)

  def start_now(self, time_limit: str | None = None) -> None:
    """Starts a requeued job as soon as its last run is gone from the node: Slurm holds a
    requeued job ~2 minutes before it may start again (its BeginTime), for that clean-up;
    the tests do not wait longer than it takes."""
    self.wait(lambda: not job_processes(self.id), "end of the last run's processes", 60)
    time.sleep(1)  # slurmd's own bookkeeping of the finished steps
    update = ["scontrol", "update", f"JobId={self.id}", "StartTime=now"]
    if time_limit:
      update.append(f"TimeLimit={time_limit}")
    subprocess.run(update, check=True, timeout=30)

  def wait_end(self, timeout: float = 300) -> dict[str, str]:
    """Until the job has ended and no process of it is left."""
    info = self.wait(lambda: (lambda i: i.get("JobState") in TERMINAL and i)(self.info()),
                     "end", timeout, poll=0.5)
    self.wait(lambda: not job_processes(self.id), "exit of every process", 60)
    return info

  def scancel(self, *options: str) -> None:
    subprocess.run(["scancel", *options, self.id], check=True, timeout=30)


def job_processes(job_id: str) -> list[int]:
  """PIDs of every process with this job's id in its environment (tasks, loader processes,
  resource trackers, the batch shell), wherever they were re-parented, and of Slurm's step
  daemons for it (`slurmstepd: [ID.STEP]`)."""
  marker = f"SLURM_JOB_ID={job_id}".encode()
  stepd = f"slurmstepd: [{job_id}.".encode()
  pids = []
  for entry in pathlib.Path("/proc").iterdir():
    if not entry.name.isdigit():
      continue
    try:
      if (entry / "stat").read_text().split(") ")[-1][0] == "Z":
        continue
      if ((entry / "cmdline").read_bytes().startswith(stepd)
          or marker in (entry / "environ").read_bytes().split(b"\0")):
        pids.append(int(entry.name))
    except OSError:
      continue
  return pids


def task_pid(job: Job, task: int) -> int:
  """The trainer process of task `task` (not its loader processes)."""
  for pid in job_processes(job.id):
    try:
      env = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
      cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
      continue
    if f"SLURM_PROCID={task}".encode() in env and b"alexnet_jax.main" in cmdline:
      return pid
  raise AssertionError(f"no trainer process of task {task} in job {job.id}")


def stopped_steps(job: Job) -> dict[int, list[int]]:
  """task -> the steps at which it stopped on SIGTERM with a checkpoint, in order."""
  return {task: [int(s) for s in re.findall(r"Stopped by SIGTERM after step (\d+); checkpoint "
                                            r"saved", "\n".join(job.lines(task)))]
          for task in (0, 1)}


def checkpoint_steps(workdir) -> list[int]:
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def assert_clean_stop(job: Job) -> None:
  """No traceback, no loader process failure: the scheduler's signal reached the trainers
  only (the loader processes ignore it; their trainer stops them)."""
  text = job.text()
  assert "Traceback" not in text, text[-5000:]
  assert "terminated unexpectedly" not in text, text[-5000:]
  assert "internal error" not in text, text[-5000:]


@pytest.mark.slurm
@slurm_job
def test_two_tasks_train_like_one_process_of_two_devices_and_eval_restores(tmp_path,
                                                                            cache_dir):
  args = SMALL + ("--config.num_train_steps=4", "--config.eval_every_steps=4",
                  f"--config.compilation_cache_dir={cache_dir}")
  job = Job(tmp_path, tmp_path / "slurm", *args)
  info = job.wait_end()
  assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", job.text()[-5000:]
  # Two processes of one CPU device each, found from Slurm's environment; the XLA:CPU
  # convolution flag is a one-process decision, taken knowing there are two.
  for task in (0, 1):
    assert any(f"Process {task} of 2 joined; 1 local / 2 global devices" in line
               for line in job.lines(task)), job.text()[-5000:]
    assert any("not applied with 1 devices, 2 processes" in line for line in job.lines(task))
  assert "lacks support for cpu binding" not in job.text()  # cpu binding only where supported

  run_main("synthetic.py", tmp_path / "one", *args, devices=2)
  slurm_losses, one_losses = train_losses(tmp_path / "slurm"), train_losses(tmp_path / "one")
  assert sorted(slurm_losses) == [1, 2, 3, 4]
  for step, loss in one_losses.items():
    assert slurm_losses[step] == pytest.approx(loss, rel=1e-4), step
  trained_eval = eval_records(tmp_path / "slurm")[-1]
  assert trained_eval["eval/loss"] == pytest.approx(eval_records(tmp_path / "one")[-1]["eval/loss"],
                                                    rel=1e-4)

  # --mode=eval through the same command restores the checkpoint both tasks wrote.
  evaluation = Job(tmp_path, tmp_path / "slurm", *args, mode="eval")
  info = evaluation.wait_end()
  assert info["JobState"] == "COMPLETED", evaluation.text()[-5000:]
  printed = json.loads([line for line in evaluation.lines(0) if line.startswith("{")][-1])
  assert printed["step"] == 4 and printed["eval/num_examples"] == 100
  assert printed["eval/loss"] == pytest.approx(trained_eval["eval/loss"], rel=1e-6)


@pytest.mark.slurm
@slurm_job
def test_preempted_at_the_time_limit_and_by_scancel_requeues_and_resumes_bit_exact(
    tmp_path, cache_dir):
  args = LONG + (f"--config.compilation_cache_dir={cache_dir}",)
  workdir = tmp_path / "preempted"
  job = Job(tmp_path, workdir, *args, sbatch=("--time=10", "--signal=TERM@90"))

  # 1. The time limit: once it trains, the limit comes down so that Slurm's warning
  # (--signal=TERM@90: SIGTERM 90 s before the limit) is due at its next check (every 30 s).
  job.wait_step(3)
  elapsed = job.info()["RunTime"].split(":")  # [D-]HH:MM:SS
  minutes = int(elapsed[-3].split("-")[-1]) * 60 + int(elapsed[-2])
  subprocess.run(["scontrol", "update", f"JobId={job.id}", f"TimeLimit={minutes + 2}"],
                 check=True, timeout=30)
  job.wait_restarts(1, timeout=150)
  job.wait(lambda: not job_processes(job.id), "exit of every process of the run", 15)
  first = stopped_steps(job)
  assert len(first[0]) == 1 and first[0] == first[1], job.text()[-5000:]  # the same step
  k1 = first[0][0]
  assert checkpoint_steps(workdir) == [k1]
  assert f"requeueing job {job.id}" in job.text()
  assert_clean_stop(job)

  # 2. scancel --signal=TERM, a few steps into the requeued run.
  job.start_now(time_limit="10")
  job.wait(lambda: f"Resumed from step {k1} " in job.text(), "resume", 240)
  job.wait_step(k1 + 3)
  job.scancel("--signal=TERM")
  job.wait_restarts(2)
  job.wait(lambda: not job_processes(job.id), "exit of every process of the run", 15)
  second = stopped_steps(job)
  assert len(second[0]) == 2 and second[0] == second[1], job.text()[-5000:]
  k2 = second[0][1]
  assert k2 > k1 and checkpoint_steps(workdir) == [k1, k2]
  assert_clean_stop(job)

  # 3. Resumed once more, then a plain scancel: the user's cancel, not requeued.
  job.start_now()
  job.wait(lambda: f"Resumed from step {k2} " in job.text(), "second resume", 240)
  job.wait_step(k2 + 2)
  job.scancel()
  info = job.wait_end()
  assert info["JobState"] == "CANCELLED" and info["Restarts"] == "2", info
  assert "not requeued" in job.text()
  last = job.last_step()

  # The same command never interrupted (cancelled once past `last`): the same losses at
  # every step, bit for bit.
  straight = Job(tmp_path, tmp_path / "straight", *args)
  straight.wait_step(last, timeout=300)
  straight.scancel()
  straight.wait_end()
  resumed, reference = train_losses(workdir), train_losses(tmp_path / "straight")
  assert sorted(resumed)[-1] >= last
  assert all(step in reference for step in range(1, last + 1))
  assert [resumed[s] for s in range(1, last + 1)] == [reference[s] for s in range(1, last + 1)]
  assert job.text().count("Resumed from step") == 2


@pytest.mark.slurm
@slurm_job
def test_a_killed_task_stops_the_others_and_a_resubmission_resumes(tmp_path):
  # The script's own compilation cache, in the workdir: the resubmission reads what process
  # 0 wrote (JAX logs its cache hits with JAX_LOG_COMPILES). Only process 0 of a CPU job can:
  # JAX writes from process 0 only, and its CPU cache keys differ per process (they hash
  # each process's own device topology); on GPU they are the same for every process.
  workdir = tmp_path / "killed"
  args = SMALL + ("--config.num_train_steps=20", "--config.checkpoint_every_steps=3",
                  "--config.eval_every_steps=100000", "--config.eval_at_end=false")
  env = {"JAX_LOG_COMPILES": "1"}
  job = Job(tmp_path, workdir, *args, env=env)
  job.wait(lambda: checkpoint_steps(workdir) and job.last_step() >= 7, "a checkpoint")
  victim = task_pid(job, 1)
  killed_at = time.monotonic()
  os.kill(victim, signal.SIGKILL)
  info = job.wait_end(timeout=120)
  stopped_in = time.monotonic() - killed_at
  assert stopped_in < 15, f"the job took {stopped_in:.1f} s to end after a task was killed"
  assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", info
  assert "process 1 of this job ended before finishing" in job.text(), job.text()[-5000:]
  assert job.last_step() < 20
  assert "requeueing" not in job.text()
  newest = checkpoint_steps(workdir)[-1]

  again = Job(tmp_path, workdir, *args, env=env)
  info = again.wait_end()
  assert info["JobState"] == "COMPLETED", again.text()[-5000:]
  assert f"Resumed from step {newest} " in again.text()
  assert checkpoint_steps(workdir)[-1] == 20
  assert any("Persistent compilation cache hit for 'jit_traced'" in line
             for line in again.lines(0)), again.text()[-5000:]
  assert (workdir / "compilation_cache").is_dir()


def _one_error_sentence(job: Job) -> str:
  info = job.wait_end(timeout=180)
  assert info["JobState"] == "FAILED", (info, job.text()[-5000:])
  text = job.text()
  assert "Traceback" not in text, text[-5000:]
  errors = [re.sub(r"^\d+: ", "", line) for line in text.splitlines()
            if re.sub(r"^\d+: ", "", line).startswith("error:")]
  assert len(errors) == 1, text[-5000:]
  return errors[0]


@pytest.mark.slurm
@slurm_job
def test_a_workdir_one_task_cannot_write_is_one_sentence(tmp_path):
  # Task 1 runs as root without the permission override (the `python` it finds first on
  # PATH drops CAP_DAC_OVERRIDE): it cannot write a root-owned directory of mode 0555.
  shim = tmp_path / "bin"
  shim.mkdir()
  (shim / "python").write_text(
      "#!/bin/bash\n"
      'if [[ ${SLURM_PROCID:-0} == 1 ]]; then\n'
      "  exec setpriv --inh-caps=-dac_override,-dac_read_search "
      f'--bounding-set=-dac_override,-dac_read_search {sys.executable} "$@"\n'
      "fi\n"
      f'exec {sys.executable} "$@"\n')
  (shim / "python").chmod(0o755)
  workdir = tmp_path / "read_only"
  workdir.mkdir()
  workdir.chmod(0o555)
  job = Job(tmp_path, workdir, *SMALL, env={
      "PATH": os.pathsep.join([str(shim), os.environ["PATH"]])})
  error = _one_error_sentence(job)
  assert f"--workdir={workdir} is not writable" in error and "Permission denied" in error
  assert not (workdir / "checkpoints").exists()


@pytest.mark.slurm
@slurm_job
def test_too_few_tasks_for_the_mesh_is_one_sentence(tmp_path, cache_dir):
  # parallel.model=2 splits the two towers over 2 devices; one task of one CPU device has 1.
  job = Job(tmp_path, tmp_path / "few", "--config.parallel.model=2",
            "--config.num_train_steps=2", f"--config.compilation_cache_dir={cache_dir}",
            sbatch=("--ntasks-per-node=1",))
  error = _one_error_sentence(job)
  assert "parallel.model=2 does not divide the 1 devices" in error


@pytest.mark.parametrize("environ, flag, expected", [
    ({}, None, 1),
    ({}, 3, 3),  # --num_processes
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, None, 4),
    ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None, 1),
    ({"SLURM_NTASKS": "4"}, None, 1),  # not inside a job: a plain run
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "8"}, None, 8),
    ({"JAX_COORDINATOR_ADDRESS": "h:1"}, None, 2),  # several, number unknown
    ({"TPU_WORKER_HOSTNAMES": "a,b,c,d"}, None, 4),
])
def test_the_process_count_is_known_before_joining(environ, flag, expected):
  # Per-process decisions (the XLA:CPU convolution flag) are taken before JAX joins the job.
  from alexnet_jax.runtime import distributed
  assert distributed.process_count(flag, environ=environ) == expected
