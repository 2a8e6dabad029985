"""Loading batches ahead: `loaded` runs a dataset's batches in loader threads of this process or
of Grain worker processes, each worker set up by `init_worker` (exits with the trainer, ignores
SIGINT/SIGTERM, keeps freed memory, builds its batches in its own shared-memory slots), with
garbage collection frozen after the imports (`freeze_gc`); `to_iterator` gives host batches
of arrays of their own (benchmarks, tools). The trainer's consumer is data/device.py.
"""

from __future__ import annotations

import functools
import gc
import os
import signal
import threading
import time
from typing import Any

import grain

from alexnet_jax.data import batch_arrays, batch_slots
from alexnet_jax.runtime import host_memory

# How often a Grain worker checks that the trainer that started it is still alive (seconds).
PARENT_POLL_S = 1.0


def _watch_parent(parent: int) -> None:
  while True:
    if os.getppid() != parent:  # re-parented: the trainer is gone (kill -9, OOM killer)
      os._exit(1)
    time.sleep(PARENT_POLL_S)


def init_worker(worker_index: int, worker_count: int, *, parent: int,
                slots_prefix: str) -> None:
  """Grain `worker_init_fn` (bind `parent`, the PID of the process that starts the workers,
  with functools.partial): the worker exits within PARENT_POLL_S of that process's death,
  or at once if it died while the worker was starting, instead of living on, re-parented to
  PID 1, with its memory and /dev/shm segments. It ignores SIGINT and SIGTERM (the trainer
  handles both and closes its workers). Its allocator keeps freed memory
  (`host_memory.keep_freed_memory`) and its imports are exempted from garbage collection
  (`freeze_gc`): ~20% and ~10-25% of an example's time. Its batches go into its own reusable
  slots (`batch_slots.WorkerSlots`), named from `slots_prefix`."""
  del worker_index, worker_count
  batch_arrays.use_worker_slots(batch_slots.WorkerSlots(slots_prefix))
  # Ctrl-C reaches the whole process group, and a scheduler's SIGTERM every process of the
  # job (Slurm signals all processes of a step): the trainer finishes its step, checkpoints
  # and closes its workers. A worker that died of SIGTERM instead failed the trainer's next
  # batch ("Worker process was terminated unexpectedly"), so no checkpoint was written; its
  # own KeyboardInterrupt would only print a traceback. SIGKILL still ends it, and it exits
  # with the trainer (_watch_parent).
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  threading.Thread(target=_watch_parent, args=(parent,), name="exit-with-parent",
                   daemon=True).start()
  host_memory.keep_freed_memory()
  freeze_gc()


_gc_frozen = False


def freeze_gc() -> None:
  """Once per process: collects garbage, then exempts every object alive now (the imports:
  jax, tfds, grain, ...) from later collections.

  Call it in a process that loads batches, after its imports. Loading allocates many
  short-lived objects, and each full collection walked the hundreds of thousands of long-lived
  ones as well, a quarter of a JPEG example's time (docs/data.md). What is frozen is never
  freed, hence once, right after start-up.
  """
  global _gc_frozen
  if not _gc_frozen:
    _gc_frozen = True
    gc.collect()
    gc.freeze()


def loaded(dataset: grain.MapDataset, *, num_workers: int, prefetch_batches: int,
           slots_prefix: str) -> grain.IterDataset:
  """`dataset` loaded ahead by `prefetch_batches` threads in each of `num_workers` Grain
  worker processes (0: threads of this process), each worker set up by `init_worker`; this
  process's garbage collection is frozen too (it loads the batches when num_workers=0).
  Batches from workers hold `batch_slots.SlotArray` handles named from `slots_prefix`
  (`batch_slots.TrainerSlots.prefix` of their consumer): see `to_iterator`."""
  freeze_gc()
  iter_ds = dataset.to_iter_dataset(grain.ReadOptions(
      num_threads=max(1, prefetch_batches), prefetch_buffer_size=prefetch_batches))
  if num_workers > 0:
    iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                                  worker_init_fn=functools.partial(
                                      init_worker, parent=os.getpid(),
                                      slots_prefix=slots_prefix))
  return iter_ds


class _Copied:
  """Map: a loaded batch -> the same with arrays of its own (worker slots copied, released)."""

  def __init__(self):
    self.slots = batch_slots.TrainerSlots()

  def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
    return self.slots.copied(batch)


def to_iterator(dataset: grain.MapDataset, *, num_workers: int,
                prefetch_batches: int) -> grain.DatasetIterator:
  """Host batches (numpy arrays of their own) of `dataset` (see `loaded`): for benchmarks
  and tools that read batches on the host. The trainer uses `data.device.DeviceBatches`."""
  copied = _Copied()
  return iter(loaded(dataset, num_workers=num_workers, prefetch_batches=prefetch_batches,
                     slots_prefix=copied.slots.prefix).map(copied))
