"""Grain pipelines shared by every data source.

The order of examples is a function of the seed and the global step alone. Indices are shuffled
over the whole split (a new permutation each epoch), cut into *global* batches, and each process
loads only its own rows of each global batch. A transform's random numbers (the crop) are
drawn per global batch from (seed, batch index), each row taking its own. So one process with
8 devices and 2 processes with 4 devices each train on exactly the same global batches, and a
resumed run sees exactly the batches it would have seen.

Evaluation walks the split once in global batches; the last batch is padded by repeating real
examples, and a `mask` marks which rows count, so every example counts exactly once on any
number of processes and devices.

The loader processes (`init_worker`, `freeze_gc`, `loaded`) are set up here too: they exit
with the trainer, keep freed memory, exempt their imports from garbage collection, and build
their batches in shared-memory slots they reuse (data/batch_slots.py): a batch from a worker
holds `batch_slots.SlotArray` handles until its consumer (`to_iterator`, or
data/device.py) turns them into arrays and releases them.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import logging
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Protocol

import grain
import numpy as np

from alexnet_jax.data import batch_slots
from alexnet_jax.errors import UserError
from alexnet_jax.runtime import host_memory

Example = dict[str, np.ndarray]
# transform(record, u) -> {'image': uint8 array, 'label': int}; u: the example's
# `uniforms_per_example(transform)` uniforms in [0, 1) (float64), or None when it draws none.
Transform = Callable[[Any, np.ndarray | None], Example]


def uniforms_per_example(transform: Transform) -> int:
  """How many uniforms a transform draws per example (its `uniforms_per_example`, else 0)."""
  return int(getattr(transform, "uniforms_per_example", 0))


class RandomAccessSource(Protocol):
  """What a source offers the pipeline: len() and record by index (any picklable record)."""
  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> Any: ...


class SkippableRecordError(ValueError):
  """A record that cannot be decoded (truncated, empty, not an image, too large).

  The loaders replace such a record by the next readable one and count it, so one bad file
  never ends a long run. The message names the file (its path, or a record's file_name): it
  is the log line's only clue to which file it was.
  """


def _rows_of_process(global_batch_size: int, process_index: int, process_count: int) -> slice:
  if global_batch_size % process_count:
    raise UserError(
        f"batch size {global_batch_size} is not divisible by the number of processes "
        f"({process_count}); choose a multiple.")
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


# Set by init_worker in a Grain worker: its reusable shared-memory slots, into which it builds
# its batches for the trainer (data/batch_slots.py); None in any other process.
_worker_slots: batch_slots.WorkerSlots | None = None
# Arrays at least this large go into slots in a worker (the images).
_SHARED_MEMORY_MIN_BYTES = 1 << 16


class _BatchArrays:
  """Examples written straight into one preallocated array per key (one copy per example,
  no list of arrays to stack); shapes and dtypes come from the first example. In a Grain
  worker the large arrays live in the worker's reusable slots, and `finished` hands their
  handles to the trainer instead of the arrays."""

  def __init__(self, rows: int):
    self.rows = rows
    self.arrays: Example | None = None
    self._handles: dict[str, batch_slots.SlotArray] = {}

  def _empty(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if _worker_slots is not None and not dtype.hasobject and (
        math.prod(shape) * dtype.itemsize >= _SHARED_MEMORY_MIN_BYTES):
      array, self._handles[key] = _worker_slots.array(shape, dtype)
      return array
    return np.empty(shape, dtype)

  def put(self, row: int, example: Example) -> None:
    if self.arrays is None:
      self.arrays = {key: self._empty(key, (self.rows,) + np.shape(value),
                                      np.asarray(value).dtype)
                     for key, value in example.items()}
    for key, value in example.items():
      self.arrays[key][row] = value

  def repeat(self, row: int) -> None:
    """Row `row` becomes a copy of row `row - 1` (eval padding: no reload, no warning)."""
    for array in self.arrays.values():
      array[row] = array[row - 1]

  def finished(self) -> dict[str, Any]:
    """The batch as it leaves this process: arrays, or slot handles for those in slots."""
    return {key: self._handles.get(key, array) for key, array in self.arrays.items()}


def _with_skips(batch: Example, notes: list[str]) -> Example:
  batch[SKIPPED_KEY] = np.asarray(len(notes), np.int32)
  batch[SKIPPED_NOTES_KEY] = np.asarray(notes, dtype=object)
  return batch


@functools.lru_cache(maxsize=2)  # this epoch and the next: a batch may straddle the two
def epoch_permutation(seed: int, num_examples: int, epoch: int) -> np.ndarray:
  """The order of the split in `epoch`: a permutation of 0..num_examples-1 (int64), a
  function of (seed, epoch) alone. Made once per epoch and process (10 MB for ImageNet's
  1.28M images) instead of per index: Grain's per-index shuffle cost ~160 us per example."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class _LoadTrainRows:
  """Loads this process's rows of global batch `batch_index` of the shuffled stream.

  Position p = batch_index * global_batch_size + row of the stream is example
  epoch_permutation(seed, n, p // n)[p % n]: epochs follow each other without a gap, so a
  batch may hold the end of one epoch and the start of the next. The transform's uniforms
  for the whole global batch are drawn at once from (seed, batch_index) and each row takes
  its own: independent of workers and process count, and one generator per batch instead of
  one per example (~15 us each). Picklable, so Grain worker processes can run it.
  """
  source: RandomAccessSource
  transform: Transform
  seed: int
  global_batch_size: int
  rows: slice

  def __call__(self, batch_index: int) -> Example:
    n = len(self.source)
    count = uniforms_per_example(self.transform)
    uniforms = None
    if count:
      uniforms = np.random.default_rng([self.seed, batch_index]).random(
          (self.global_batch_size, count))
    rows = range(self.global_batch_size)[self.rows]
    batch, notes = _BatchArrays(len(rows)), []
    for i, row in enumerate(rows):
      epoch, offset = divmod(batch_index * self.global_batch_size + row, n)
      index = int(epoch_permutation(self.seed, n, epoch)[offset])
      u = None if uniforms is None else uniforms[row]
      example, note = _load_with_skips(self.source, self.transform, index, u)
      if note is not None:
        notes.append(note)
      batch.put(i, example)
    return _with_skips(batch.finished(), notes)


# Batch keys the loaders add besides the examples: how many of its records were unreadable
# (int32) and why (object array of strings, one per unreadable record). Consumers pop them.
SKIPPED_KEY, SKIPPED_NOTES_KEY = "skipped", "skipped_notes"


def log_skipped(notes) -> None:
  """Logs the skipped records of a batch when it is consumed (not when decoded: batches
  loaded ahead and never used would otherwise log files they never counted). One line per
  record: its index, then the SkippableRecordError's message, which names the file."""
  for note in notes:
    logging.warning("skipping record %s", note)


def _load_with_skips(source, transform, index, u, max_tries: int = 100):
  """(transform(source[index], u), note) where note is None, or says why record `index` was
  unreadable.

  An unreadable record is replaced by the next readable one. Only the record's own failure
  is counted and noted: a substitute that is also unreadable is passed over silently here,
  because it is counted and noted when the stream reaches its own index. So every bad file
  counts once per read of its index, whatever its neighbours are.
  """
  n = len(source)
  note = None
  for attempt in range(max_tries):
    i = (index + attempt) % n
    try:
      return transform(source[i], u), note
    except SkippableRecordError as e:
      if attempt == 0:
        note = f"{i}: {e}"
  raise RuntimeError(
      f"{max_tries} consecutive records from index {index} could not be read; "
      "the dataset looks corrupt.")


@dataclasses.dataclass(frozen=True)
class _LoadEvalRows:
  """Loads this process's rows of global eval batch `batch_index`, padded and masked."""
  source: RandomAccessSource
  transform: Transform
  global_batch_size: int
  rows: slice

  def __call__(self, batch_index: int) -> Example:
    n = len(self.source)
    rows = range(self.global_batch_size)[self.rows]
    batch, mask, notes = _BatchArrays(len(rows)), [], []
    for i, row in enumerate(rows):
      position = batch_index * self.global_batch_size + row
      if position >= n and i > 0:
        # Padding rows repeat an example already loaded (shapes stay right; no re-decode,
        # no repeated warning) and are masked out.
        batch.repeat(i)
        mask.append(False)
        continue
      example, note = _load_with_skips(self.source, self.transform, position % n, None)
      real = position < n
      if note is not None and real:
        notes.append(note)
      batch.put(i, example)
      mask.append(real and note is None)
    arrays = batch.finished()
    arrays["mask"] = np.asarray(mask, np.bool_)
    return _with_skips(arrays, notes)


def train_dataset(source: RandomAccessSource, transform: Transform, *, seed: int,
                  global_batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """Endless dataset of this process's share of each global training batch; element k is the
  batch of step k (slice it, `dataset[step:]`, to resume: no iterator state is needed)."""
  if len(source) < global_batch_size:
    raise UserError(
        f"the training split has {len(source)} examples, fewer than one batch "
        f"(batch_size={global_batch_size}).")
  rows = _rows_of_process(global_batch_size, process_index, process_count)
  endless = grain.MapDataset.range(sys.maxsize // global_batch_size)
  return endless.map(_LoadTrainRows(source, transform, seed, global_batch_size, rows))


def eval_dataset(source: RandomAccessSource, transform: Transform, *, global_batch_size: int,
                 process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
  """One pass over the split in global batches; rows past the end carry mask=False."""
  rows = _rows_of_process(global_batch_size, process_index, process_count)
  num_batches = math.ceil(len(source) / global_batch_size)
  loader = _LoadEvalRows(source, transform, global_batch_size, rows)
  return grain.MapDataset.range(num_batches).map(loader)


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
  PID 1, with its memory and /dev/shm segments. It ignores SIGINT (the trainer handles
  Ctrl-C and closes its workers). Its allocator keeps freed memory
  (`host_memory.keep_freed_memory`) and its imports are exempted from garbage collection
  (`freeze_gc`): ~20% and ~10-25% of an example's time. Its batches go into its own reusable
  slots (`batch_slots.WorkerSlots`), named from `slots_prefix`."""
  global _worker_slots
  del worker_index, worker_count
  _worker_slots = batch_slots.WorkerSlots(slots_prefix)
  # Ctrl-C reaches the whole process group: the trainer stops cleanly and closes its workers;
  # a worker's own KeyboardInterrupt would only print a traceback.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
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
  ones as well: ~25% of a JPEG example's time and ~10% of a raw one's (2-core Intel machine,
  2026-11-30; docs/data.md). What is frozen is never freed, hence once, right after start-up.
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
