"""Orbax checkpoints of the train state: the one place that saves and restores through Orbax's
CheckpointManager, and that turns a failed write (full disk, quota, permissions) into one
sentence.

Each step directory holds the items `state` (the train state's arrays, sharded) and `meta`
(JSON, layout.meta). Every process takes part in saves; saves are asynchronous.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import pathlib
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.errors import CheckpointWriteError
from alexnet_jax.runtime import logs


class _DropOrbaxWarnings(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or "/orbax/" not in record.pathname


@contextlib.contextmanager
def reading_quietly():
  """Orbax warns on every read-only open ('Given directory is read only', 'read_only=True,
  setting max_to_keep=None', 'Metadata file does not exist'): expected for readers, so dropped
  while they run; its errors still show."""
  logger = std_logging.getLogger("absl")  # absl.logging's logger, which Orbax logs through
  drop = _DropOrbaxWarnings()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _storage_error_text(e: BaseException) -> str | None:
  """The OS's words for a failed write, or None when `e` is not a storage error."""
  if isinstance(e, OSError):
    return e.strerror or str(e)
  match = logs.STORAGE_ERROR.search(str(e))
  if not match:
    return None
  os_error = re.search(r"Failed to write[^\]\n]*?: ([^\[\n]+)", str(e))
  return (os_error.group(1) if os_error else match.group(0)).strip()


class Checkpointer:
  """Saves and restores the items `state` and `meta` of `directory/<step>/`.

  keep: how many recent steps Orbax keeps (older ones are deleted after a save).
  read_only: never creates or deletes anything, and saves synchronously (evaluation, tools).
  """

  def __init__(self, directory: str | pathlib.Path, *, keep: int, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    self._quiet = contextlib.ExitStack()  # Orbax's read-only warnings, while a reader lives
    if read_only:
      self._quiet.enter_context(reading_quietly())
    self._megabytes = 0.0
    # cleanup_tmp_directories: a save abandoned mid-way (a second Ctrl-C exits at once, a
    # kill) leaves a temporary directory that no step lists; the next writer removes it.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options,
                                            item_names=("state", "meta"))
    except BaseException:
      self._quiet.close()
      raise

  def all_steps(self) -> list[int]:
    """Every saved step, ascending."""
    return list(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The largest saved step, or None when there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of `step` (every process must call it); `wait` ends it.
    Raises CheckpointWriteError (one sentence) when the storage refuses the write, which may
    be an earlier save's failure found now."""
    self._megabytes = sum(x.size * np.dtype(x.dtype).itemsize
                          for x in jax.tree.leaves(state)) / 2**20
    with self._storage_errors(f"a checkpoint (found at the save of step {step})"):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

  def wait(self) -> None:
    """Blocks until the saves in flight are written; CheckpointWriteError as `save`."""
    with self._storage_errors("a checkpoint"):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _storage_errors(self, what: str):
    try:
      yield
    except Exception as e:  # noqa: BLE001 - re-raised unless it is the disk's fault
      reason = _storage_error_text(e)
      if reason is None:
        raise
      try:
        self._manager.reload()
        complete = self._manager.all_steps()  # saves are asynchronous: the disk is the truth
      except Exception:  # noqa: BLE001 - the directory itself may be unreadable
        complete = []
      kept = f"step {max(complete)}" if complete else "none"
      raise CheckpointWriteError(
          f"Could not write {what} to {self.directory}: {reason}. A checkpoint needs about "
          f"{self._megabytes:.0f} MB; free space or use another --workdir. Training stopped "
          f"here; the last complete checkpoint is {kept}.") from e

  def reached_preemption(self, step: int) -> bool:
    """Whether the job scheduler asked to stop (Orbax's preemption sync point) at `step`."""
    return self._manager.reached_preemption(step)

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON `meta` item of `step` (layout.meta)."""
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any) -> Any:
    """The state of `step` on the shardings of `abstract_state` (any device count)."""
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state)))["state"]

  def reload(self) -> None:
    """Re-reads the steps on disk (after a damaged step directory was moved aside)."""
    self._manager.reload()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads."""
    try:
      self._manager.close()
    finally:
      self._quiet.close()
