"""Running the shards: write_shard over a build's shards in a pool of worker processes, a bounded
number in flight, stopped cleanly by a signal (Ctrl-C, SIGTERM) or a failure, with a progress
bar, and a full disk said in one sentence with the space still needed."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import time
from typing import Sequence

import tqdm

from alexnet_jax.data.prepare import resume, shard_file, stop, storage
from alexnet_jax.data.prepare.shard_file import ShardResult
from alexnet_jax.data.prepare.sources import Shard, estimated_images
from alexnet_jax.errors import UserError


class DiskFullError(UserError):
  """The output filesystem is full (or the quota reached) while writing the build."""


def is_disk_full(error: BaseException) -> bool:
  """Whether `error` says the filesystem is full or the quota reached (array_record's writer
  raises a RuntimeError with the C library's text, Python an OSError)."""
  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  text = str(error)
  return isinstance(error, RuntimeError) and (
      os.strerror(errno.ENOSPC) in text or os.strerror(errno.EDQUOT) in text)


def _gb(num_bytes: float) -> str:
  return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.1f} MB"


def disk_full_error(out_dir: str, done: Sequence[ShardResult],
                    remaining: Sequence[Shard]) -> DiskFullError:
  """The one sentence for a full disk: the path, the space the rest needs (estimated from the
  bytes per image of the shards done), what is free, and how to go on."""
  try:
    free = shutil.disk_usage(out_dir).free
  except OSError:
    free = 0
  images_done = sum(r.num_examples + len(r.skipped) for r in done)
  bytes_done = sum(r.num_bytes for r in done)
  if images_done and bytes_done:
    need = bytes_done / images_done * estimated_images(remaining)
    estimate = (f"the {len(remaining)} shards left need about {_gb(need)} more (estimated from "
                f"the {len(done)} finished, {_gb(bytes_done)}) and {_gb(free)} is free")
  else:
    estimate = f"not one shard was finished and {_gb(free)} is free"
  return DiskFullError(
      f"no space left on the device of {out_dir}: {estimate}; free space there (the finished "
      "shards are kept) and run the same command again to resume, or choose another "
      "--data_dir.")


def _end_workers(executor: concurrent.futures.ProcessPoolExecutor) -> None:
  """Cancels what is queued and ends the worker processes now (SIGTERM, then SIGKILL after
  5 s), whatever they are doing; returns when none is left."""
  # ProcessPoolExecutor has no public way to end running workers before Python 3.14
  # (terminate_workers); its process table has been `_processes` since Python 3.2.
  processes = list((getattr(executor, "_processes", None) or {}).values())
  executor.shutdown(wait=False, cancel_futures=True)
  for process in processes:
    if process.is_alive():
      process.terminate()
  deadline = time.monotonic() + 5
  for process in processes:
    process.join(max(0.0, deadline - time.monotonic()))
    if process.is_alive():
      process.kill()
      process.join()


def write_all_shards(shards: Sequence[Shard], data_dir: str, out_dir: str,
                     options: storage.StoreOptions, num_workers: int,
                     progress: bool = True, *, digests: Sequence[str] | None = None,
                     done: Sequence[ShardResult] = (), total: int | None = None
                     ) -> list[ShardResult]:
  """Runs write_shard over `shards`, in `num_workers` processes (0 or 1: in this one), with at
  most `num_workers` shards in flight (submitted as workers free up, never all up front).

  `done`: results of shards already finished (a resumed build), counted in the progress and
  returned first; `total`: all shards of the build (default len(shards) + len(done));
  `digests`: each shard's shard_digest, recorded in its sidecar.
  Shows a progress bar (images/s, ETA) on stderr when `progress`, and logs each finished
  shard with the running count of its own split.

  Raises Interrupted on SIGINT/SIGTERM and DiskFullError on a full disk, after ending the
  workers and starting no further shard; any other failure of a shard is re-raised the same
  way. Shards finished before keep their files and sidecars (a rerun reuses them).
  """
  digests = list(digests) if digests is not None else [""] * len(shards)
  started = time.time()
  total = total if total is not None else len(shards) + len(done)
  results = list(done)
  done_of_split: dict[str, int] = {}
  for result in done:
    done_of_split[result.split] = done_of_split.get(result.split, 0) + result.num_examples
  # forkserver: workers forked from a server started with SIGINT ignored, which passes that
  # on (stop.StopSignals.start_forkserver) and imports the program once for all of them;
  # spawn where there is none.
  context = multiprocessing.get_context(
      "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
  counter = context.Value("q", 0)
  initial = sum(r.num_examples + len(r.skipped) for r in done)
  bar = tqdm.tqdm(total=initial + estimated_images(shards), initial=initial, unit="img",
                  smoothing=0.1, disable=not progress, desc="prepare", dynamic_ncols=True)
  written_before = sum(done_of_split.values())

  def update_bar() -> None:
    bar.update(initial + counter.value - bar.n)

  def log_progress(result: ShardResult) -> None:
    results.append(result)
    done_of_split[result.split] = done_of_split.get(result.split, 0) + result.num_examples
    update_bar()
    logging.info("shard %d/%d done (%s shard %d: %d images, %d skipped); %s; %.0f images/s",
                 len(results), total, result.split, result.index, result.num_examples,
                 len(result.skipped),
                 ", ".join(f"{s} {n} so far" for s, n in sorted(done_of_split.items())),
                 (sum(done_of_split.values()) - written_before)
                 / max(time.time() - started, 1e-9))

  queue = collections.deque(zip(shards, digests))
  failure: BaseException | None = None
  with stop.StopSignals() as signals:
    try:
      if num_workers <= 1:
        shard_file.init_worker(counter)
        try:
          while queue and signals.signum is None:
            shard, digest = queue[0]
            try:
              result = shard_file.write_shard(shard, data_dir, out_dir, options, digest)
            except stop.Stopped:
              break
            except Exception as e:  # noqa: BLE001 - ended below, after the bookkeeping
              failure = e
              break
            queue.popleft()
            log_progress(result)
        finally:
          shard_file.init_worker(None)
      else:
        failure = _run_in_workers(queue, signals, context, counter, num_workers, update_bar,
                                  log_progress, (data_dir, out_dir, options))
    finally:
      bar.close()
    if signals.signum is not None:
      resume.remove_unowned_files(out_dir, results)
      name = signal.Signals(signals.signum).name
      raise stop.Interrupted(signals.signum, f"prepare stopped by {name}: {len(results)} of "
                             f"{total} shards are finished in {out_dir}; run the same command "
                             "again to resume from them.")
  if failure is not None:
    remaining = [shard for shard, _ in queue]
    resume.remove_unowned_files(out_dir, results)
    if is_disk_full(failure):
      raise disk_full_error(out_dir, results, remaining) from None
    raise failure
  return results


def _run_in_workers(queue, signals: stop.StopSignals, context, counter, num_workers: int,
                    update_bar, log_progress, args: tuple) -> BaseException | None:
  """Feeds `queue` (of (shard, digest)) to a pool of `num_workers` processes, one shard per
  idle worker. Returns the first shard failure (then no further shard was started) or None;
  the shards it did not finish stay in `queue`. On a stop signal or a failure the workers are
  ended at once (their unfinished shards are cut short)."""
  signals.start_forkserver(context)
  executor = concurrent.futures.ProcessPoolExecutor(
      num_workers, mp_context=context, initializer=shard_file.init_worker, initargs=(counter,))
  running: dict[concurrent.futures.Future, tuple] = {}
  failure = None
  clean = False
  try:
    while (queue or running) and failure is None and signals.signum is None:
      # One shard per worker: a queued shard could not be taken back once a worker's call
      # queue holds it, and would start after a failure.
      while queue and len(running) < num_workers:
        shard, digest = item = queue.popleft()
        running[executor.submit(shard_file.write_shard, shard, *args, digest)] = item
      finished, _ = concurrent.futures.wait(
          running, timeout=0.5, return_when=concurrent.futures.FIRST_COMPLETED)
      update_bar()
      for future in sorted(finished, key=lambda f: running[f][0].index):
        item = running.pop(future)
        error = future.exception()
        if error is None:
          log_progress(future.result())
        else:
          queue.appendleft(item)
          failure = failure or error
    clean = failure is None and signals.signum is None
  finally:
    if clean:
      executor.shutdown(wait=True)
    else:
      queue.extendleft(reversed(list(running.values())))
      _end_workers(executor)
  return failure
