"""Joining a multi-process JAX job (several hosts, or several processes on one host).

`maybe_initialize` calls `jax.distributed.initialize` when the job has more than one process:
with explicit --coordinator_address/--num_processes/--process_id, or auto-detected from the
environment JAX understands (SLURM with several tasks, Cloud TPU pods, Kubernetes/JobSet,
or JAX_COORDINATOR_ADDRESS). On CPU, collectives between processes go through gloo.
"""

from __future__ import annotations

import os

import jax
from absl import logging


def _cluster_detected() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") > 0:  # a multi-host TPU slice
    return True
  return bool(os.environ.get("JOBSET_NAME") and os.environ.get("JAX_NUM_PROCESSES"))


def maybe_initialize(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None) -> None:
  """Joins a multi-process JAX job: with the explicit coordinator address, process count
  and index when given, or detected (SLURM, Cloud TPU, Kubernetes); a no-op for one process.
  Must run before anything creates a JAX backend."""
  explicit = coordinator_address is not None
  if explicit and (num_processes is None or process_id is None):
    raise ValueError("--coordinator_address needs --num_processes and --process_id too.")
  if not explicit and not _cluster_detected():
    return  # a single-process run
  # Must be set before the backend starts; harmless on GPU/TPU, needed for CPU processes.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  else:
    jax.distributed.initialize()
  logging.info("Process %d of %d joined; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
