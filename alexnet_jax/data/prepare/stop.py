"""Stopping a prepare on SIGINT or SIGTERM at a point of its choosing: while `StopSignals` is
active the signal is only noted (`requested`), and the code that writes checks it where
stopping leaves a state to resume from (between images, between shards)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

# Set (in the process that writes) when SIGINT/SIGTERM asked to stop: an in-process write_shard
# stops between images. Worker processes never set it: they ignore SIGINT, the parent ends them.
_stop_signal: int | None = None


def requested() -> int | None:
  """The signal that asked this process to stop (while a StopSignals is active), or None."""
  return _stop_signal


class Interrupted(Exception):
  """SIGINT or SIGTERM stopped the prepare; the shards finished so far are kept for a rerun.

  `signum` is the signal; the message is the one line to show (how to resume)."""

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum = signum


class Stopped(Exception):
  """Raised inside an in-process write_shard when a stop signal arrived."""


class StopSignals:
  """While active (main thread only), SIGINT and SIGTERM set `signum` (the module's
  `_stop_signal`) instead of raising in the middle of whatever runs; the code checks it and
  stops at a point of its choosing. Nests: an inner one shares the outer one's state."""

  SIGNALS = (signal.SIGINT, signal.SIGTERM)
  _depth = 0  # active instances (nested); the outermost installs and restores the handlers

  def __init__(self):
    self._previous: dict[int, Any] = {}

  @property
  def signum(self) -> int | None:
    return _stop_signal

  @staticmethod
  def _handle(signum, frame) -> None:
    del frame
    global _stop_signal
    if _stop_signal is None:  # a second Ctrl-C while stopping changes nothing
      _stop_signal = signum
      logging.warning("%s: stopping (ending the workers; finished shards are kept)",
                      signal.Signals(signum).name)

  def __enter__(self) -> "StopSignals":
    global _stop_signal
    if (StopSignals._depth == 0
        and threading.current_thread() is threading.main_thread()):
      _stop_signal = None
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    StopSignals._depth += 1
    return self

  def __exit__(self, *exc_info) -> None:
    global _stop_signal
    StopSignals._depth -= 1
    if self._previous:
      for sig, handler in self._previous.items():
        signal.signal(sig, handler)
      _stop_signal = None

  def start_forkserver(self, context) -> None:
    """Starts `context`'s fork server (if not running) with SIGINT ignored: it passes SIG_IGN
    on to every worker it forks, from their first instruction (a worker's own initializer
    runs too late: Ctrl-C during its imports printed a traceback). A SIGINT in the few
    milliseconds the server takes to start is lost (it cannot be held pending: starting a
    process clears this thread's signal mask)."""
    ours = signal.getsignal(signal.SIGINT) is StopSignals._handle  # installed (main thread)
    if not ours or context.get_start_method() != "forkserver":
      return
    from multiprocessing import forkserver
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
      forkserver.ensure_running()
    finally:
      signal.signal(signal.SIGINT, self._handle)

