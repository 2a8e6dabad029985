"""Shared-memory batch arrays that a Grain worker reuses: written by the worker, read by the
trainer, handed back.

Grain sends a worker's arrays to the trainer in a fresh shared-memory segment per batch, so
every 4 KiB page the worker writes is a page fault and a newly zeroed page: ~110-130 us per
224x224x3 image on the project's 2-core Intel machine (2026-11-30, docs/data.md), about as
much as loading a raw example, and it halved a worker's images per core. Here a worker keeps
its segments ("slots"): it writes a batch into a free slot, sends a `SlotArray` handle (a
name, not an ndarray, so Grain passes it on as is), and the trainer marks the slot free as
soon as the batch is on the devices (`TrainerSlots.used`); the next batch
lands on pages already mapped. A worker holds as many slots as it has batches in flight.

Cleanup does not depend on anyone exiting cleanly: the trainer unlinks a segment's name as
soon as it has mapped it (the memory lives until both processes unmap it), a worker unlinks
the rest when it exits, and Python's resource tracker removes what a killed worker left.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing.util
import threading
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np

# Bytes before the array in a segment: byte 0 is the slot's state; 64 keeps the array aligned.
_HEADER = 64
_FREE, _IN_FLIGHT = 0, 1


@dataclasses.dataclass(frozen=True)
class SlotArray:
  """What crosses from worker to trainer for one array: its segment's name, shape, dtype."""
  name: str
  shape: tuple[int, ...]
  dtype: str


class WorkerSlots:
  """A worker's segments, reused once the trainer has released them. Thread-safe (a worker's
  loader threads share it)."""

  def __init__(self):
    self._segments: dict[int, list[shared_memory.SharedMemory]] = {}
    self._lock = threading.Lock()
    # At the worker's exit (Grain stops its workers when the trainer closes the pipeline):
    # the segments of batches the trainer never took, e.g. loaded ahead of an evaluation's
    # end, would otherwise stay in /dev/shm until the trainer itself exits.
    multiprocessing.util.Finalize(self, self.unlink_all, exitpriority=10)

  def unlink_all(self) -> None:
    """Removes the names of this worker's segments (those the trainer mapped are gone)."""
    for segments in self._segments.values():
      for segment in segments:
        try:
          segment.unlink()
        except FileNotFoundError:
          pass

  def array(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, SlotArray]:
    """An uninitialized array in a free slot (a new one if none is free) and its handle; the
    slot stays taken until the trainer releases the handle."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    with self._lock:
      segments = self._segments.setdefault(nbytes, [])
      segment = next((s for s in segments if s.buf[0] == _FREE), None)
      if segment is None:
        segment = shared_memory.SharedMemory(create=True, size=_HEADER + nbytes)
        segments.append(segment)
      segment.buf[0] = _IN_FLIGHT
    view = np.ndarray(shape, dtype, buffer=segment.buf, offset=_HEADER)
    return view, SlotArray(segment.name, tuple(shape), dtype.str)

  def count(self) -> int:
    """Segments made so far (for tests)."""
    return sum(len(s) for s in self._segments.values())


class TrainerSlots:
  """The trainer's side: maps each worker segment once, unlinks its name at once, turns
  handles into arrays and marks slots free. Not shared between threads; `close` unmaps."""

  def __init__(self):
    self._segments: dict[str, shared_memory.SharedMemory] = {}

  def _segment(self, name: str) -> shared_memory.SharedMemory:
    segment = self._segments.get(name)
    if segment is None:
      segment = shared_memory.SharedMemory(name=name)
      segment.unlink()  # the name goes now; the memory stays mapped here and in the worker
      self._segments[name] = segment
    return segment

  def view(self, handle: SlotArray) -> np.ndarray:
    """The handle's array, in place (valid until `release`)."""
    segment = self._segment(handle.name)
    return np.ndarray(handle.shape, np.dtype(handle.dtype), buffer=segment.buf,
                      offset=_HEADER)

  def release(self, handle: SlotArray) -> None:
    """The worker may write its next batch into this slot."""
    self._segments[handle.name].buf[0] = _FREE

  def used(self, batch: dict[str, Any], use: Callable[[dict[str, Any]], Any]) -> Any:
    """`use(batch)` with its handles turned into arrays in place; then their slots are
    released, so `use` must have copied what it keeps (a finished host-to-device copy)."""
    handles = [v for v in batch.values() if isinstance(v, SlotArray)]
    if not handles:
      return use(batch)
    try:
      return use({k: self.view(v) if isinstance(v, SlotArray) else v
                  for k, v in batch.items()})
    finally:
      for handle in handles:
        self.release(handle)

  def copied(self, batch: dict[str, Any]) -> dict[str, Any]:
    """The batch with its handles turned into arrays of its own (copies); slots released."""
    return self.used(batch, lambda b: {k: np.array(v) if isinstance(batch[k], SlotArray)
                                       else v for k, v in b.items()})

  def close(self) -> None:
    """Unmaps every segment (arrays still viewing one must be gone: numpy holds no lock)."""
    for segment in self._segments.values():
      try:
        segment.close()
      except BufferError:  # a view is still alive somewhere: the mapping goes at exit
        pass
    self._segments.clear()
