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
  # The batch divides over the processes: plan.make_plan checked it.
  per_process = global_batch_size // process_count
  return slice(process_index * per_process, (process_index + 1) * per_process)


# Set by init_worker in a Grain worker: its reusable shared-memory slots, into which it builds
# its batches for the trainer (data/batch_slots.py); None in any other process.
_worker_slots: batch_slots.WorkerSlots | None = None
# Arrays at least this large go into slots in a worker, and are recycled elsewhere (the images).
_SHARED_MEMORY_MIN_BYTES = 1 << 16


def _references(arrays: list, i: int) -> int:
  return sys.getrefcount(arrays[i])


# What `_references` counts for an array that only a list holds (2 on CPython 3.11-3.13;
# measured, not assumed, so that an interpreter counting borrowed references differently
# still sees "nobody else holds it" right).
_UNSHARED = _references([np.empty(0)], 0)


class _Recycler:
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


class _Loader:
  """Base of the picklable batch loaders: a `_Recycler` per process, made on first use and
  never pickled (a worker uses its slots instead)."""

  def __getstate__(self) -> dict[str, Any]:
    return {k: v for k, v in self.__dict__.items() if k != "_recycler"}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.__dict__.update(state)

  @property
  def recycler(self) -> _Recycler:
    recycler = self.__dict__.get("_recycler")
    if recycler is None:  # setdefault: two loader threads arriving at once share one
      recycler = self.__dict__.setdefault("_recycler", _Recycler())
    return recycler


class _BatchArrays:
  """One preallocated array per key, written in place: by a transform's whole-batch loader
  (`batch_loader`), or one example at a time (`put`: one copy per example, shapes and dtypes
  from the first example). In a Grain worker the large arrays live in the worker's reusable
  slots, and `finished` hands their handles to the trainer instead of the arrays; elsewhere
  they come from `recycler` when one is given."""

  def __init__(self, rows: int, recycler: _Recycler | None = None):
    self.rows = rows
    self.arrays: Example = {}
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

  def put(self, row: int, example: Example) -> None:
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


# A transform's whole-batch form: load(indices, uniforms, empty) writes the examples
# transform(source[i], u) of all `indices` (int64, in range) at once into the arrays
# empty(key, example_shape, dtype) gives (len(indices) rows, keys in the order the transform's
# examples have them); uniforms: (len(indices), uniforms_per_example) or None. It must give
# exactly what the per-row path gives; it may raise SkippableRecordError (then the per-row path
# loads that batch again, counting and naming the record).
BatchLoader = Callable[[np.ndarray, "np.ndarray | None", Callable[..., np.ndarray]], None]


def batch_loader(source: RandomAccessSource, transform: Transform) -> BatchLoader | None:
  """`transform.batch_loader(source)`: its whole-batch form for this source (synthetic pools,
  in-memory arrays, raw pixels), or None (JPEG decoding, whose work is per image, and any
  transform without one): then examples are loaded one at a time."""
  make = getattr(transform, "batch_loader", None)
  return None if make is None else make(source)


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


def stream_indices(seed: int, num_examples: int, global_batch_size: int, batch_index: int,
                   rows: slice) -> np.ndarray:
  """The source indices (int64) of `rows` of global training batch `batch_index`: position
  p = batch_index * global_batch_size + row of the stream is example
  epoch_permutation(seed, n, p // n)[p % n]."""
  positions = batch_index * global_batch_size + np.arange(global_batch_size)[rows]
  epochs, offsets = np.divmod(positions, num_examples)
  indices = np.empty_like(offsets)
  for epoch in np.unique(epochs).tolist():  # one, or two where the batch straddles epochs
    here = epochs == epoch
    indices[here] = epoch_permutation(seed, num_examples, epoch)[offsets[here]]
  return indices


@dataclasses.dataclass(frozen=True)
class _LoadTrainRows(_Loader):
  """Loads this process's rows of global batch `batch_index` of the shuffled stream.

  Position p = batch_index * global_batch_size + row of the stream is example
  epoch_permutation(seed, n, p // n)[p % n]: epochs follow each other without a gap, so a
  batch may hold the end of one epoch and the start of the next. The transform's uniforms
  for the whole global batch are drawn at once from (seed, batch_index) and each row takes
  its own: independent of workers and process count, and one generator per batch instead of
  one per example (~15 us each). The batch is loaded whole by the transform's batch loader
  when it has one for the source, else one example at a time. Picklable, so Grain worker
  processes can run it.
  """
  source: RandomAccessSource
  transform: Transform
  seed: int
  global_batch_size: int
  rows: slice

  def __call__(self, batch_index: int) -> Example:
    count = uniforms_per_example(self.transform)
    uniforms = None
    if count:
      uniforms = np.random.default_rng([self.seed, batch_index]).random(
          (self.global_batch_size, count))[self.rows]
    indices = stream_indices(self.seed, len(self.source), self.global_batch_size, batch_index,
                             self.rows)
    load = batch_loader(self.source, self.transform)
    if load is not None:
      batch = _BatchArrays(len(indices), self.recycler)
      try:
        load(indices, uniforms, batch.empty)
        return _with_skips(batch.finished(), [])
      except SkippableRecordError:
        pass  # an unreadable record: the per-row path below replaces, counts and names it
    batch, notes = _BatchArrays(len(indices), self.recycler), []
    for i, index in enumerate(indices.tolist()):
      u = None if uniforms is None else uniforms[i]
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
class _LoadEvalRows(_Loader):
  """Loads this process's rows of global eval batch `batch_index`, padded and masked."""
  source: RandomAccessSource
  transform: Transform
  global_batch_size: int
  rows: slice

  def __call__(self, batch_index: int) -> Example:
    n = len(self.source)
    positions = batch_index * self.global_batch_size + np.arange(self.global_batch_size)[self.rows]
    load = batch_loader(self.source, self.transform)
    if load is not None:
      # Rows past the end of the split (a suffix) repeat the last row loaded and are masked
      # out, as in the per-row path below; a process whose rows are all past the end loads its
      # first row (wrapped around), masked out too.
      loaded = max(1, int(np.count_nonzero(positions < n)))
      batch = _BatchArrays(len(positions), self.recycler)
      try:
        load(positions[:loaded] % n, None,
             lambda key, shape, dtype: batch.empty(key, shape, dtype)[:loaded])
      except SkippableRecordError:
        pass  # the per-row path below replaces, counts and names the record
      else:
        for array in batch.arrays.values():
          array[loaded:] = array[loaded - 1]
        arrays = batch.finished()
        arrays["mask"] = positions < n
        return _with_skips(arrays, [])
    batch, mask, notes = _BatchArrays(len(positions), self.recycler), [], []
    for i, position in enumerate(positions.tolist()):
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
  batch of step k (slice it, `dataset[step:]`, to resume: no iterator state is needed).
  The split holds at least one batch (plan.make_plan checked it)."""
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
  PID 1, with its memory and /dev/shm segments. It ignores SIGINT and SIGTERM (the trainer
  handles both and closes its workers). Its allocator keeps freed memory
  (`host_memory.keep_freed_memory`) and its imports are exempted from garbage collection
  (`freeze_gc`): ~20% and ~10-25% of an example's time. Its batches go into its own reusable
  slots (`batch_slots.WorkerSlots`), named from `slots_prefix`."""
  global _worker_slots
  del worker_index, worker_count
  _worker_slots = batch_slots.WorkerSlots(slots_prefix)
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
  ones as well, a quarter of a JPEG example's time (docs/data.md). What is frozen is never freed, hence once, right after start-up.
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
