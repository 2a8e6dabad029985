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

The arrays a batch is written into are data/batch_arrays.py's; loading batches ahead, in
threads and worker processes, is data/loading.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import sys
import threading
from typing import Any, Callable, Protocol

import grain
import numpy as np

from alexnet_jax.data import batch_arrays

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


_permutation_lock = threading.Lock()


def epoch_permutation(seed: int, num_examples: int, epoch: int) -> np.ndarray:
  """The order of the split in `epoch`: a permutation of 0..num_examples-1, a function of
  (seed, epoch) alone: `np.random.default_rng([seed, epoch]).permutation(num_examples)`.
  Made once per epoch and process instead of per index (Grain's per-index shuffle cost
  ~160 us per example), by one loader thread while the others wait: without the lock each
  of a worker's threads made its own copy at start-up and at each epoch's end, and the
  worker's allocator kept the peak (docs/data.md, "Loader memory"). int32 below 2**31
  examples (5 MB for ImageNet's 1.28M images, in every loader process): the same shuffle of
  arange(num_examples) in int32 gives permutation's int64 order (the draws do not depend on
  the item size)."""
  with _permutation_lock:
    return _epoch_permutation(seed, num_examples, epoch)


@functools.lru_cache(maxsize=2)  # this epoch and the next: a batch may straddle the two
def _epoch_permutation(seed: int, num_examples: int, epoch: int) -> np.ndarray:
  dtype = np.int32 if num_examples <= np.iinfo(np.int32).max else np.int64
  order = np.arange(num_examples, dtype=dtype)
  np.random.default_rng([seed, epoch]).shuffle(order)
  return order


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
class _LoadTrainRows(batch_arrays.Loader):
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
      batch = batch_arrays.BatchArrays(len(indices), self.recycler)
      try:
        load(indices, uniforms, batch.empty)
        return _with_skips(batch.finished(), [])
      except SkippableRecordError:
        pass  # an unreadable record: the per-row path below replaces, counts and names it
    batch, notes = batch_arrays.BatchArrays(len(indices), self.recycler), []
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
class _LoadEvalRows(batch_arrays.Loader):
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
      batch = batch_arrays.BatchArrays(len(positions), self.recycler)
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
    batch, mask, notes = batch_arrays.BatchArrays(len(positions), self.recycler), [], []
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

