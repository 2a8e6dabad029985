"""A multi-process job whose other process never starts (runtime/distributed.py): a line
saying what it waits for, then, after the timeout, one error line and status 1 (JAX alone
aborts after 300 s with a C++ stack trace)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time

from tests.imagenet_fixtures import REPO

TIMEOUT_S = 3


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_a_process_that_never_joins_ends_the_job_in_one_sentence(tmp_path):
  # Only process 0 of two (the coordinator waits), and, in another job, only process 1 (no
  # coordinator to reach): both end alike.
  started = time.monotonic()
  jobs = {process_id: subprocess.Popen(
      [sys.executable, "-m", "alexnet_jax.main", f"--config={REPO / 'configs' / 'synthetic.py'}",
       f"--workdir={tmp_path / str(process_id)}", f"--coordinator_address=127.0.0.1:{_free_port()}",
       "--num_processes=2", f"--process_id={process_id}",
       f"--config.distributed_timeout_s={TIMEOUT_S}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for process_id in (0, 1)}
  for process_id, job in jobs.items():
    try:
      stdout, stderr = job.communicate(timeout=TIMEOUT_S + 60)
    finally:
      job.kill()
    elapsed = time.monotonic() - started
    assert job.returncode == 1, stderr[-3000:]
    # Python start-up and importing jax take a few seconds on this VM, on top of the timeout.
    assert elapsed < TIMEOUT_S + 15, elapsed
    assert "joined" not in stderr
    assert re.search(rf"Waiting for 2 processes at 127\.0\.0\.1:\d+ \(timeout {TIMEOUT_S} s, "
                     rf"distributed_timeout_s\) as process {process_id}\.", stderr)
    assert "Check failure" not in stderr and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"error: process {process_id} waited {TIMEOUT_S} s for 2 processes to "
                        r"join at 127\.0\.0\.1:\d+, and not all did: start every process with "
                        r"the same coordinator address and process count, check that process "
                        r"0 is running and its address and port are reachable from every "
                        r"host, or raise --config\.distributed_timeout_s\.", last), last
