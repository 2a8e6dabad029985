"""Shared-memory batch arrays that a Grain worker reuses: written by the worker, read by the
trainer, handed back.

Grain sends a worker's arrays to the trainer in a fresh shared-memory segment per batch, so
every 4 KiB page the worker writes is a page fault and a newly zeroed page: about as much as
loading a raw example, which halved a worker's images per core (docs/data.md). Here a worker keeps
its segments ("slots"): it writes a batch into a free slot, sends a `SlotArray` handle (a
name, not an ndarray, so Grain passes it on as is), and the trainer marks the slot free as
soon as the batch is on the devices (`TrainerSlots.used`); the next batch
lands on pages already mapped. A worker holds as many slots as it has batches in flight.

Cleanup does not depend on anyone exiting cleanly: the trainer unlinks a segment's name as
soon as it has mapped it (the memory lives until both processes unmap it), removes the
segments of batches loaded but never taken when it closes the pipeline (they carry the
pipeline's name prefix), and Python's resource tracker removes anything left when the
trainer exits, however it exits.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import secrets
import threading
from multiprocessing import shared_memory
from typing import Any, Callable

import numpy as np

# Bytes before the array in a segment: byte 0 is the slot's state; 64 keeps the array aligned.
_HEADER = 64
_FREE, _IN_FLIGHT = 0, 1
_SHM_DIR = "/dev/shm"


@dataclasses.dataclass(frozen=True)
class SlotArray:
  """What crosses from worker to trainer for one array: its segment's name, shape, dtype."""
  name: str
  shape: tuple[int, ...]
  dtype: str


def new_prefix() -> str:
  """A name prefix for the slots of one pipeline's workers: the trainer's PID and a random
  token (short: macOS allows 31 characters in a shared-memory name)."""
  return f"ajx{os.getpid()}_{secrets.token_hex(3)}_"


class WorkerSlots:
  """A worker's segments, reused once the trainer has released them, named
  `prefix + worker PID + number` so that the trainer can remove those it never received
  (`TrainerSlots.close`). Thread-safe (a worker's loader threads share it).

  A worker does not remove its segments when it exits: Grain's workers exit when their share
  of a finite dataset (an evaluation) is loaded, with batches still queued for the trainer."""

  def __init__(self, prefix: str):
    self._prefix = f"{prefix}{os.getpid()}_"
    self._segments: dict[int, list[shared_memory.SharedMemory]] = {}
    self._lock = threading.Lock()
    self._made = itertools.count()

  def array(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, SlotArray]:
    """An uninitialized array in a free slot (a new one if none is free) and its handle; the
    slot stays taken until the trainer releases the handle."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    with self._lock:
      segments = self._segments.setdefault(nbytes, [])
      segment = next((s for s in segments if s.buf[0] == _FREE), None)
      if segment is None:
        segment = shared_memory.SharedMemory(name=f"{self._prefix}{next(self._made)}",
                                             create=True, size=_HEADER + nbytes)
        segments.append(segment)
      segment.buf[0] = _IN_FLIGHT
    view = np.ndarray(shape, dtype, buffer=segment.buf, offset=_HEADER)
    return view, SlotArray(segment.name, tuple(shape), dtype.str)

  def count(self) -> int:
    """Segments made so far (for tests)."""
    return sum(len(s) for s in self._segments.values())


class TrainerSlots:
  """The trainer's side of one pipeline's slots (named from `prefix`): maps each worker
  segment once and unlinks its name at once, turns handles into arrays, marks slots free.
  Not shared between threads. `close` (after the workers have stopped) unmaps them and
  removes the segments of batches that were loaded but never taken."""

  def __init__(self, prefix: str | None = None):
    self.prefix = new_prefix() if prefix is None else prefix
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
    """Unmaps every segment, then removes those the workers made and the trainer never took
    (Linux lists them in /dev/shm; elsewhere Python's resource tracker removes them when the
    trainer exits)."""
    for segment in self._segments.values():
      try:
        segment.close()
      except BufferError:  # a view is still alive somewhere: the mapping goes at exit
        pass
    self._segments.clear()
    for name in _names_with_prefix(self.prefix):
      try:
        segment = shared_memory.SharedMemory(name=name)
      except FileNotFoundError:
        continue
      segment.close()
      segment.unlink()


def _names_with_prefix(prefix: str) -> list[str]:
  try:
    return [name for name in os.listdir(_SHM_DIR) if name.startswith(prefix)]
  except OSError:  # no /dev/shm (macOS)
    return []
