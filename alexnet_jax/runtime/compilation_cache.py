"""JAX's persistent compilation cache, on by default: a second run of the same config skips
XLA compilation (tens of seconds for the paper net on a GPU).

`config.compilation_cache_dir`: "" = the user's cache directory
($XDG_CACHE_HOME or ~/.cache)/alexnet_jax/jax_compilation_cache; "off" (or "none") disables it;
any other value is the directory. Uses JAX's own cache (`jax_compilation_cache_dir`).
"""

from __future__ import annotations

import os
import pathlib

OFF_VALUES = ("off", "none", "false", "0")


def default_dir() -> pathlib.Path:
  """The per-user cache directory (XDG base directory convention)."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "alexnet_jax" / "jax_compilation_cache"


def enable(setting: str) -> str | None:
  """Points JAX's persistent cache at the configured directory; returns it (None: off).
  A directory that cannot be created leaves the cache off with a warning, never fails a run."""
  import jax
  from absl import logging

  if str(setting).strip().lower() in OFF_VALUES:
    return None
  directory = pathlib.Path(os.path.expanduser(setting)) if setting else default_dir()
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("Compilation cache off: cannot create %s (%s).", directory, e.strerror)
    return None
  jax.config.update("jax_compilation_cache_dir", str(directory))
  # Cache every compiled step, not only those above JAX's default 1 s threshold.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  return str(directory)
