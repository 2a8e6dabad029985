"""One switch for the libraries' INFO chatter: Orbax, Grain and JAX log every save, read and
compilation at INFO through absl; their warnings and errors still matter."""

from __future__ import annotations

import logging as std_logging

from absl import logging as absl_logging

# Path fragments of the modules whose INFO records are dropped (Orbax, Grain, JAX internals).
NOISY_PATHS = ("/orbax/", "/grain/", "/jax/_src/")


class _DropLibraryInfo(std_logging.Filter):
  """Passes WARNING and above, and every record from outside NOISY_PATHS."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = any(part in record.pathname for part in NOISY_PATHS)
    return record.levelno >= std_logging.WARNING or not noisy


_FILTER = _DropLibraryInfo()


def quiet_library_logs() -> None:
  """Drops the INFO (and DEBUG) records of Orbax, Grain and JAX; keeps their warnings.

  The filter sits on absl's handler, which also receives what those libraries log through
  their own Python loggers, and on the root logger's handlers; this project's own INFO lines
  are kept. Calling it again changes nothing.
  """
  handlers = [absl_logging.get_absl_handler(), *std_logging.getLogger().handlers]
  for handler in handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
