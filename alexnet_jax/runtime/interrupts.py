"""SIGTERM and Ctrl-C (SIGINT) for the whole life of a training or evaluation process.

- The first SIGTERM or SIGINT is acknowledged at once, in one log line, even while the main
  thread waits inside XLA (a compile, a step, an evaluation batch). Before the training loop
  it stops start-up (`StoppedEarly` is raised in the main thread); in the loop the step in
  flight finishes, an evaluation is abandoned, a checkpoint is written and the exit status is
  128 + the signal (periodic.StopRequest reads `signum`).
- A second Ctrl-C at any moment prints one line and exits 130 at once, without unwinding:
  raising KeyboardInterrupt and unwinding Python while XLA's threads were busy crashed the
  process (SIGSEGV, 5 of 5 trials on the paper net). Checkpoints Orbax has committed are
  complete on disk (it writes each one into a temporary directory and renames it when done);
  a save in flight is abandoned and its temporary directory removed at the next start
  (checkpoint.Checkpointer).

Python runs signal handlers only in the main thread and only between bytecodes, so the second
Ctrl-C could wait minutes behind a compile. `signal.set_wakeup_fd` has the C-level handler
write each signal's number to a socket at once; a watcher thread reads it.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import sys
import threading

from absl import logging

SECOND_CTRL_C = ("error: interrupted (second Ctrl-C): stopped at once. The newest complete "
                 "checkpoint is kept; run the same command to resume from it.")
# Outside the training loop a signal raises StoppedEarly in the main thread. Python drops an
# exception raised inside a garbage-collection callback (seen while jax was importing: the
# stop was lost and start-up went on), so if the process still runs this long after the
# signal, outside the loop, the watcher ends it itself.
BACKSTOP_S = 3.0


def stopped_early_message(signum: int) -> str:
  """The one line for a signal that stopped the process outside the training loop."""
  return (f"error: stopped by {signal.Signals(signum).name} outside the training loop (while "
          "starting, evaluating or closing); checkpoints written so far are kept.")


class StoppedEarly(BaseException):
  """A SIGTERM/SIGINT before the training loop took over (while starting up or evaluating).
  A BaseException, as KeyboardInterrupt is: code that handles errors (a library loading the
  config file, a restore that sets damaged checkpoints aside) must not take it for one."""

  def __init__(self, signum: int):
    super().__init__(signum)
    self.signum = signum


def exit_now(status: int, message: str) -> None:
  """Prints `message` to stderr and ends the process with `status` without unwinding (no
  Python teardown while library threads run). Worker processes follow their parent
  (data/loading.py)."""
  try:
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
  finally:
    os._exit(status)


def exit_after_stop(status: int) -> None:
  """Ends a run that a signal stopped (its checkpoint written) with `status`: the exit handlers
  run now, while this policy still holds, then the process leaves without the interpreter's
  teardown. In that teardown Python gives SIGINT back its default action, and a second Ctrl-C
  pressed then killed the process (status -2, not 130)."""
  sys.stdout.flush()
  sys.stderr.flush()
  atexit._run_exitfuncs()  # noqa: SLF001 - what interpreter exit would run (jax.distributed, ...)
  os._exit(status)


class Interrupts:
  """The process's SIGTERM/SIGINT policy (module docstring). Install once, from the main
  thread, before JAX starts; `signum` is the first signal received (None: none)."""

  def __init__(self):
    self.signum: int | None = None
    self.raise_early = True  # False while the training loop handles stops itself
    self._sigints = 0
    self._announced = False
    self._lock = threading.Lock()
    self._reader, self._writer = socket.socketpair()
    self._writer.setblocking(False)

  def install(self) -> "Interrupts":
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)
    signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=self._watch, name="interrupts", daemon=True).start()
    return self

  def _handle(self, signum, frame) -> None:
    """The Python-level handler (main thread): records the first signal; before the loop,
    stops start-up."""
    del frame
    first = self.signum is None
    if first:
      self.signum = signum
    if first and self.raise_early:
      raise StoppedEarly(signum)

  def _watch(self) -> None:
    while True:
      try:
        data = self._reader.recv(64)
      except OSError:
        return
      if not data:
        return
      for signum in data:
        self._received(signum)

  def _received(self, signum: int) -> None:
    with self._lock:
      if signum == signal.SIGINT:
        self._sigints += 1
        if self._sigints >= 2:
          exit_now(130, SECOND_CTRL_C)
      if signum not in (signal.SIGINT, signal.SIGTERM) or self._announced:
        return
      self._announced = True
    name = signal.Signals(signum).name
    again = "; press Ctrl-C again to stop at once" if signum == signal.SIGINT else ""
    if self.raise_early:
      logging.warning("Received %s: stopping%s.", name, again)
      threading.Timer(BACKSTOP_S, self._backstop, args=(signum,)).start()
    else:
      logging.warning("Received %s: stopping after the step in flight (an evaluation is "
                      "abandoned) and saving a checkpoint%s.", name, again)

  def _backstop(self, signum: int) -> None:
    """Ends the process when a stop outside the training loop was lost (BACKSTOP_S)."""
    if self.raise_early:
      exit_now(128 + signum, stopped_early_message(signum))


_INSTANCE: Interrupts | None = None


def install() -> Interrupts:
  """The process's Interrupts, installed on the first call (from the main thread)."""
  global _INSTANCE
  if _INSTANCE is None:
    _INSTANCE = Interrupts().install()
  return _INSTANCE


def current() -> Interrupts | None:
  """The installed Interrupts, or None (library use without the command line)."""
  return _INSTANCE
