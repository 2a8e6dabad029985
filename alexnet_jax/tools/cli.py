"""absl plumbing the tools share: flags defined once, user errors as one line, `run`.

Each tool module (predict, visualize, export, prepare) has
- `define_flags()`: its absl flags, defined only when the tool runs (importing a tool defines
  no flag, so the tools and main.py can share one process, e.g. in tests);
- `main(argv)`: what `absl.app.run` calls, with the positional arguments (argv[0] is the
  program); returns the exit status;
- `run()`: `cli.run(define_flags, main)`.
A `UserError` ends the tool with `error: <sentence>` on stderr and status 1 (`UsageError` and
unknown or malformed flags: status 2); anything else keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Sequence

from absl import app, flags

from alexnet_jax import errors

FLAGS = flags.FLAGS
USAGE_STATUS = errors.USAGE_STATUS


def define(kind: str, name: str, default: Any, help_text: str, **kwargs) -> None:
  """flags.DEFINE_<kind>(name, default, help_text, ...) unless a tool defined `name` already
  (predict, visualize and export share --workdir, --step, ...: one definition serves all)."""
  if name not in FLAGS:
    getattr(flags, f"DEFINE_{kind}")(name, default, help_text, **kwargs)


def report_user_errors(main: Callable[[Sequence[str]], int]) -> Callable[[Sequence[str]], int]:
  """Wraps a tool's `main`: a UserError becomes `error: <sentence>` on stderr and status 1
  (2 for a UsageError)."""
  @functools.wraps(main)
  def wrapper(argv: Sequence[str]) -> int:
    try:
      return main(argv)
    except errors.UserError as e:
      return errors.report(e)
  return wrapper


def _parse(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag reported as one line and status 2."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}. Pass --help for usage.", file=sys.stderr, flush=True)
    sys.exit(USAGE_STATUS)
  except SystemExit:
    if errors.help_asked(argv):
      sys.exit(0)
    raise


def run(define_flags: Callable[[], None], main: Callable[[Sequence[str]], int]) -> None:
  """Defines the tool's flags, lists them under `--help`, and runs `main` with absl.

  `--help` shows the docstring of the module run as `python -m ...` and these flags (absl
  lists the flags the main module defines; the tools define theirs through `define`, in this
  module, so they are registered for the main module here).
  """
  before = set(FLAGS)
  define_flags()
  for name in sorted(set(FLAGS) - before):
    FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
  app.run(main, flags_parser=_parse)


def call(define_flags: Callable[[], None], main: Callable[[Sequence[str]], int],
         args: Sequence[str], program: str = "alexnet_jax") -> int:
  """Runs a tool in this process with command-line `args` (tests, notebooks); returns its exit
  status. Every flag starts from its default (flags of earlier calls do not carry over)."""
  define_flags()
  FLAGS.unparse_flags()
  try:
    positional = FLAGS([program, *map(str, args)])
  except flags.Error as e:
    print(f"error: {e}. Pass --help for usage.", file=sys.stderr, flush=True)
    return USAGE_STATUS
  return main(positional)
