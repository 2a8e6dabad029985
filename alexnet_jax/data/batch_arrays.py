"""Where a loader writes its batch: one preallocated array per key, in a Grain worker's reusable
shared-memory slots (data/batch_slots.py), else recycled from the loader's earlier batches
once nothing refers to them any more, else new; the large arrays only (the images)."""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

from alexnet_jax.data import batch_slots

# Set by loading.init_worker in a Grain worker (use_worker_slots): its reusable shared-memory
# slots, into which it builds its batches for the trainer; None in any other process.
_worker_slots: batch_slots.WorkerSlots | None = None
# Arrays at least this large go into slots in a worker, and are recycled elsewhere (the images).
_SHARED_MEMORY_MIN_BYTES = 1 << 16


def use_worker_slots(slots: batch_slots.WorkerSlots) -> None:
  """From now on this process (a Grain worker) builds its batches' large arrays in `slots`."""
  global _worker_slots
  _worker_slots = slots


def _references(arrays: list, i: int) -> int:
  return sys.getrefcount(arrays[i])


# What `_references` counts for an array that only a list holds (2 on CPython 3.11-3.13;
# measured, not assumed, so that an interpreter counting borrowed references differently
# still sees "nobody else holds it" right).
_UNSHARED = _references([np.empty(0)], 0)


class Recycler:
  """The large batch arrays of one loader in a process without worker slots (the trainer
  with num_workers=0, a tool reading batches), reused once nothing else refers to them.

  A fresh array for every batch costs a page fault and a zeroed page per 4 KiB written (a
  512 x 227x227x3 batch is 79 MB, always mapped anew by glibc): about as much as the copies
  themselves (docs/data.md, "Batch assembly"). Whoever keeps a batch keeps a reference to its
  arrays (a view, a memoryview and jax's device_put, which holds the host array until its
  transfer is done or, on XLA:CPU, for as long as the device array aliases it), so an array
  whose only reference is this list is free: every row of the next batch is written anew.
  At most `keep` arrays per shape are kept (beyond that, plain new arrays), and they go with
  the loader (the dataset), so an evaluation's arrays are not held after its pass."""

  def __init__(self, keep: int = 16):
    self._keep = keep
    self._lock = threading.Lock()
    self._kept: dict[tuple[tuple[int, ...], str], list[np.ndarray]] = {}

  def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    with self._lock:
      kept = self._kept.setdefault((shape, dtype.str), [])
      for i in range(len(kept)):
        if _references(kept, i) == _UNSHARED:
          return kept[i]
      array = np.empty(shape, dtype)
      if len(kept) < self._keep:
        kept.append(array)
      return array


class Loader:
  """Base of the picklable batch loaders: a `Recycler` per process, made on first use and
  never pickled (a worker uses its slots instead)."""

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_recycler"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)

  @property
  def recycler(self) -> Recycler:
    recycler = self.__dict__.get("_recycler")
    if recycler is None:  # setdefault: two loader threads arriving at once share one
      recycler = self.__dict__.setdefault("_recycler", Recycler())
    return recycler


class BatchArrays:
  """One preallocated array per key, written in place: by a transform's whole-batch loader
  (`batch_loader`), or one example at a time (`put`: one copy per example, shapes and dtypes
  from the first example). In a Grain worker the large arrays live in the worker's reusable
  slots, and `finished` hands their handles to the trainer instead of the arrays; elsewhere
  they come from `recycler` when one is given."""

  def __init__(self, rows: int, recycler: Recycler | None = None):
    self.rows = rows
    self.arrays: dict[str, np.ndarray] = {}
    self._recycler = recycler
    self._handles: dict[str, batch_slots.SlotArray] = {}

  def empty(self, key: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The uninitialized (rows, *shape) array of `key`, which the batch will hold."""
    dtype = np.dtype(dtype)
    shape = (self.rows,) + tuple(shape)
    large = not dtype.hasobject and math.prod(shape) * dtype.itemsize >= _SHARED_MEMORY_MIN_BYTES
    if large and _worker_slots is not None:
      array, self._handles[key] = _worker_slots.array(shape, dtype)
    elif large and self._recycler is not None:
      array = self._recycler.empty(shape, dtype)
    else:
      array = np.empty(shape, dtype)
    self.arrays[key] = array
    return array

  def put(self, row: int, example: dict[str, Any]) -> None:
    """Writes `example` (a transform's output) into row `row`."""
    if not self.arrays:
      for key, value in example.items():
        self.empty(key, np.shape(value), np.asarray(value).dtype)
    for key, value in example.items():
      self.arrays[key][row] = value

  def repeat(self, row: int) -> None:
    """Row `row` becomes a copy of row `row - 1` (eval padding: no reload, no warning)."""
    for array in self.arrays.values():
      array[row] = array[row - 1]

  def finished(self) -> dict[str, Any]:
    """The batch as it leaves this process: arrays, or slot handles for those in slots."""
    return {key: self._handles.get(key, array) for key, array in self.arrays.items()}

