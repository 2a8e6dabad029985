"""One switch for the libraries' INFO chatter: Orbax, Grain and JAX log every save, read and
compilation at INFO through absl; their warnings and errors still matter."""

from __future__ import annotations

import logging as std_logging
import os
import re
import sys

from absl import logging as absl_logging

# Path fragments of the modules whose INFO records are dropped (Orbax, Grain, JAX internals).
NOISY_PATHS = ("/orbax/", "/grain/", "/jax/_src/")


# A failed write (full disk, read-only, quota) as Orbax's background threads report it: the
# trainer stops with one sentence that says the same (errors.CheckpointWriteError), so these
# tracebacks would only bury it.
STORAGE_ERROR = re.compile(r"os_error_code|No space left|Read-only file system|File too large|"
                           r"Permission denied|Disk quota|Input/output error")


def _is_storage_error(record: std_logging.LogRecord) -> bool:
  text = record.getMessage()
  if record.exc_info and record.exc_info[1] is not None:
    text += str(record.exc_info[1])
  return bool(STORAGE_ERROR.search(text)) or "Failed to run" in text and "/orbax/" in (
      record.pathname or "")


class _DropLibraryInfo(std_logging.Filter):
  """Passes WARNING and above, and every record from outside NOISY_PATHS; drops the library
  records of a failed checkpoint write (reported once, by the trainer)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in NOISY_PATHS)
    if noisy and record.levelno >= std_logging.ERROR and _is_storage_error(record):
      return False
    return record.levelno >= std_logging.WARNING or not noisy


def _drop_library_unraisables(unraisable) -> None:
  """sys.unraisablehook for two kinds of library noise, and a stop signal Python dropped;
  everything else goes to Python's default hook:
  - TensorStore's callbacks into an event loop that Orbax already closed (after a failed
    save) raise 'Event loop is closed' dozens of times;
  - Orbax's read coroutines of a damaged checkpoint, abandoned when the first read failed,
    print ~65 lines each of TensorStore spec when collected; the failure itself reached the
    trainer, which reports it in one line (checkpoint.restore_for_resume).
  """
  value = unraisable.exc_value
  if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
    return
  if type(value).__name__ == "StoppedEarly":
    # A stop signal raised inside a GC callback, where Python drops it: runtime/interrupts.py
    # ends the process itself (its backstop), so the traceback says nothing.
    return
  code = getattr(unraisable.object, "cr_code", None)
  if code is not None and "/orbax/" in code.co_filename:
    return
  sys.__unraisablehook__(unraisable)


_FILTER = _DropLibraryInfo()

# multiprocessing's resource tracker (a process of its own, started by the first Grain worker)
# warns at exit "There appear to be N leaked shared_memory objects" for Grain's batch segments:
# on Python < 3.13 a segment is registered by the worker that makes it and again by the
# trainer that opens it (CPython issue 82300), and batches loaded ahead are still open at exit.
# The tracker unlinks them itself (/dev/shm is empty afterwards, checked), so the line, printed
# after every run with workers, says nothing a user can act on. The tracker reads its filters
# from PYTHONWARNINGS, which it inherits.
TRACKER_WARNINGS = "ignore::UserWarning:multiprocessing.resource_tracker"


def quiet_library_logs() -> None:
  """Drops the INFO (and DEBUG) records of Orbax, Grain and JAX; keeps their warnings; and the
  resource tracker's leaked-segment warning at exit (TRACKER_WARNINGS).

  The filter sits on absl's handler, which also receives what those libraries log through
  their own Python loggers, and on the root logger's handlers; this project's own INFO lines
  are kept. Calling it again changes nothing.
  """
  sys.unraisablehook = _drop_library_unraisables
  current = os.environ.get("PYTHONWARNINGS", "")
  if TRACKER_WARNINGS not in current:
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [current, TRACKER_WARNINGS]))
  handlers = [absl_logging.get_absl_handler(), *std_logging.getLogger().handlers]
  for handler in handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
