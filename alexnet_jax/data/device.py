"""Host batches to global device batches, ahead of the step, with skip accounting.

Each process loads its own rows of every global batch (pipeline.py); here they become one
`jax.Array` per key, sharded over the mesh's 'data' axis, before the step asks for them:
Grain's thread prefetch (`grain.experimental.ThreadPrefetchIterDataset`) keeps
`host_prefetch` batches loaded and `device_prefetch` batches already transferred, so the
host-to-device copy of batch k+1 overlaps step k.

The trainer and the evaluation read `skipped` (unreadable records replaced in the batches
handed out so far, this process only) instead of popping it from the batch themselves.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, Iterator

import grain
import jax
import numpy as np
from grain import experimental as grain_experimental

from alexnet_jax import sharding
from alexnet_jax.data import batch_slots, loading, pipeline


def _may_alias_host_memory(mesh) -> bool:
  """Whether a device array made from a host array may share its memory: XLA:CPU takes an
  aligned numpy buffer as is (checked with jax 0.10.2: a 64-byte-aligned batch changed after
  device_put showed the change). Such a batch must be copied before its slot is reused."""
  return any(d.platform == "cpu" for d in mesh.devices.flat)


class _ToDevice:
  """Map: host batch -> (global device batch, skipped notes of its rows). A batch from a
  worker's slots is released once its transfer has finished (data/batch_slots.py)."""

  def __init__(self, mesh):
    self.mesh = mesh
    self.copy_first = _may_alias_host_memory(mesh)
    self.slots = batch_slots.TrainerSlots()

  def _transfer(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
    if self.copy_first:
      batch = {key: np.array(value) for key, value in batch.items()}
    arrays = sharding.to_global_batch(batch, self.mesh)
    return jax.block_until_ready(arrays)  # the slot is reused after this

  def __call__(self, batch: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    batch = dict(batch)
    batch.pop(pipeline.SKIPPED_KEY, None)
    notes = list(batch.pop(pipeline.SKIPPED_NOTES_KEY, []))
    if not any(isinstance(v, batch_slots.SlotArray) for v in batch.values()):
      return sharding.to_global_batch(batch, self.mesh), notes  # loaded here: no slot
    return self.slots.used(batch, self._transfer), notes


class DeviceBatches(Iterator[dict[str, Any]]):
  """Iterator of global batches {'image': uint8 (B, H, W, C) or (B, crops, H, W, C),
  'label': int32 (B,), ['mask': bool (B,)]}, B the global batch size, sharded over 'data'.

  dataset: a Grain MapDataset of this process's rows of each global batch (pipeline.py).
  num_workers: Grain worker processes (0: load in this process). host_prefetch: batches
  loaded ahead; device_prefetch: batches already on the devices (0: transfer on demand).
  """

  def __init__(self, dataset: grain.MapDataset, mesh, *, batch_size: int, num_workers: int,
               host_prefetch: int, device_prefetch: int):
    self.batch_size = batch_size  # global
    self._length = len(dataset)
    self._to_device = _ToDevice(mesh)
    iter_ds = loading.loaded(dataset, num_workers=num_workers, prefetch_batches=host_prefetch,
                             slots_prefix=self._to_device.slots.prefix)
    iter_ds = iter_ds.map(self._to_device)
    if device_prefetch > 0:
      iter_ds = grain_experimental.ThreadPrefetchIterDataset(
          iter_ds, prefetch_buffer_size=device_prefetch)
    self._iterator = iter(iter_ds)
    self.skipped = 0  # unreadable records replaced in the batches returned so far
    self.batches = 0
    self._starter: threading.Thread | None = None
    self._first: tuple[bool, Any] | None = None
    self.startup_seconds: float | None = None  # start() -> first batch ready

  def __len__(self) -> int:
    """Batches in the pass (an endless training stream: sys.maxsize)."""
    return self._length

  def start(self) -> None:
    """Starts the workers and loads the first batch now, in a background thread, so that a
    later `next` does not wait for the pipeline's start-up (the evaluation's pre-start)."""
    started = time.time()

    def load_first() -> None:
      # Workers started from here inherit this thread's blocked SIGINT: a Ctrl-C while they
      # import (before loading.init_worker ignores it) would print each one's KeyboardInterrupt
      # traceback. The trainer's main thread still gets the signal and stops the run.
      signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
      try:
        self._first = (True, next(self._iterator))
      except BaseException as e:  # noqa: BLE001 - re-raised by __next__ in the caller's thread
        self._first = (False, e)
      self.startup_seconds = time.time() - started

    self._starter = threading.Thread(target=load_first, name="pipeline-start", daemon=True)
    self._starter.start()

  def _take_first(self):
    self._starter.join()
    self._starter = None
    loaded, value = self._first
    self._first = None
    if not loaded:
      raise value
    return value

  def __next__(self) -> dict[str, Any]:
    if self._starter is not None:
      batch, notes = self._take_first()
    else:
      batch, notes = next(self._iterator)
    pipeline.log_skipped(notes)  # logged when used, so batches loaded ahead log nothing
    self.skipped += len(notes)
    self.batches += 1
    return batch

  def close(self) -> None:
    """Stops worker processes and prefetch threads now rather than at garbage collection."""
    if self._starter is not None:
      self._starter.join()
      self._starter = self._first = None
    close = getattr(self._iterator, "close", None)
    if close is not None:
      close()
    self._to_device.slots.close()
