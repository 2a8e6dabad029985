"""The one error class for mistakes a user can make and fix, and the one way they end a command.

`UserError` carries one sentence that says what is wrong, where (the config field, file or
directory) and what to do. `main` and the tools print it without a traceback and exit with a
non-zero status (2 for command-line usage, 1 otherwise). Anything else is an internal error:
it keeps its traceback, and the command line says how to report it.
"""

from __future__ import annotations

import sys

USAGE_STATUS = 2  # a wrong command line (UsageError, a bad flag)
USER_ERROR_STATUS = 1  # any other UserError


class UserError(ValueError):
  """A mistake in the user's input (config value, data directory, checkpoint, file).

  Subclasses ValueError so that code which validated with ValueError keeps catching it.
  """


class UsageError(UserError):
  """A wrong command line (unknown config file or field, bad flag): exit status 2."""


class MissingFileError(UserError, FileNotFoundError):
  """A file or directory the user named (data_dir, workdir, checkpoint) does not exist."""


class CheckpointWriteError(UserError):
  """A checkpoint could not be written (disk full, read-only, quota, permissions)."""


# absl's --help flag prints the usage and exits with status 1; asking for help is no failure.
HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def help_asked(argv) -> bool:
  """Whether the command line asks for the usage text."""
  return any(arg in HELP_ARGS for arg in argv[1:])


def report(error: UserError) -> int:
  """Prints `error: <sentence>` to stderr; returns the exit status (2 for a UsageError, else
  1). The policy main and every tool share."""
  print(f"error: {error}", file=sys.stderr, flush=True)
  return USAGE_STATUS if isinstance(error, UsageError) else USER_ERROR_STATUS
