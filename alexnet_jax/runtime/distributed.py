"""Joining a multi-process JAX job (several hosts, or several processes on one host).

`maybe_initialize` calls `jax.distributed.initialize` when the job has more than one process:
with explicit --coordinator_address/--num_processes/--process_id, or auto-detected from the
environment JAX understands (SLURM with several tasks, Cloud TPU pods, Kubernetes/JobSet,
or JAX_COORDINATOR_ADDRESS). On CPU, collectives between processes go through gloo.

Joining waits until every process has registered with the coordinator (process 0). When one
never comes, JAX itself gives up only by aborting the process from C++ (SIGABRT, a "Check
failure stack trace" that blames "another task" that died; nothing Python can catch). So a
watchdog thread ends the process first, after `timeout_s`, with one sentence and status 1;
JAX's own deadline is set a margin later.
"""

from __future__ import annotations

import os
import sys
import threading

import jax
from absl import logging

from alexnet_jax.errors import UsageError, UserError

# JAX's own initialization deadline is this much later than ours, so that ours fires first.
_JAX_TIMEOUT_MARGIN_S = 60
TIMEOUT_STATUS = 1


def _cluster_detected() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:  # a multi-host TPU slice
    return True
  return bool(os.environ.get("JOBSET_NAME") and os.environ.get("JAX_NUM_PROCESSES"))


def _describe_job(coordinator_address: str | None, num_processes: int | None) -> tuple[str, str]:
  """(how many processes, at which address) as far as known before JAX detects the cluster."""
  count = num_processes or os.environ.get("JAX_NUM_PROCESSES") or os.environ.get("SLURM_NTASKS")
  address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  return (f"{count} processes" if count else "the processes of the detected cluster",
          address or "the coordinator address JAX detects (process 0's host)")


def _exit_after(timeout_s: float, joined: threading.Event, message: str) -> None:
  """Watchdog thread: unless `joined` is set within timeout_s, prints `message` as the one
  error line and ends the process (the main thread is stuck in C++, nothing else can)."""
  if joined.wait(timeout_s):
    return
  sys.stdout.flush()
  print(f"error: {message}", file=sys.stderr, flush=True)
  os._exit(TIMEOUT_STATUS)


def maybe_initialize(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None, timeout_s: float = 300) -> None:
  """Joins a multi-process JAX job: with the explicit coordinator address, process count
  and index when given, or detected (SLURM, Cloud TPU, Kubernetes); a no-op for one process.
  Must run before anything creates a JAX backend.

  timeout_s: seconds to wait for every process to join (config `distributed_timeout_s`).
  When they have not all joined by then, prints one `error:` line naming the address, the
  process count and the timeout, and ends this process with status 1 at once (os._exit: JAX
  is still blocked in C++ and would otherwise abort the process itself later). Raises
  UserError for a non-positive timeout_s or an incomplete explicit job description.
  """
  explicit = coordinator_address is not None
  if explicit and (num_processes is None or process_id is None):
    raise UsageError("--coordinator_address needs --num_processes and --process_id too.")
  if not explicit and not _cluster_detected():
    return  # a single-process run
  if not timeout_s > 0:
    raise UserError(f"distributed_timeout_s={timeout_s} must be a positive number of seconds.")
  # Must be set before the backend starts; harmless on GPU/TPU, needed for CPU processes.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  count, address = _describe_job(coordinator_address, num_processes)
  who = f"process {process_id}" if explicit else "this process"
  logging.info("Waiting for %s at %s (timeout %g s, distributed_timeout_s) as %s.", count,
               address, timeout_s, who)
  joined = threading.Event()
  message = (f"{who} waited {timeout_s:g} s for {count} to join at {address}, and not all "
             "did: start every process with the same coordinator address and process count, "
             "check that process 0 is running and its address and port are reachable from "
             "every host, or raise --config.distributed_timeout_s.")
  threading.Thread(target=_exit_after, args=(timeout_s, joined, message),
                   name="distributed-join-watchdog", daemon=True).start()
  jax_timeout = int(timeout_s) + _JAX_TIMEOUT_MARGIN_S
  try:
    if explicit:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id,
                                 initialization_timeout=jax_timeout)
    else:
      jax.distributed.initialize(initialization_timeout=jax_timeout)
  finally:
    joined.set()
  logging.info("Process %d of %d joined; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
