"""The glibc allocator setting that keeps freed memory for reuse (no page faults re-filling
big buffers that are freed and allocated again and again).

Used by the XLA:CPU process settings (runtime/cpu_runtime.py: the step's scratch buffer) and
by every Grain loader process (data/device.py: each batch's arrays, each decoded image and
record); a loader runs no XLA, so it applies there on any backend (its gain per example:
docs/data.md, "Input pipeline speed"). The cost: the process keeps its peak host memory instead of returning it to the system.
"""

from __future__ import annotations

import ctypes
import platform

# What keep_freed_memory sets: (mallopt parameter from malloc.h, the environment variable glibc
# reads for it at start-up, value). One arena: blocks freed by XLA's worker threads go back to
# the main heap, where the next step finds them (a thread arena maps anything over 64 MB
# afresh every time); no mmap; no trimming (mallopt takes an int, hence 2**31 - 1).
GLIBC_KEEP_FREED_MEMORY = (
    (-8, "MALLOC_ARENA_MAX", 1),  # M_ARENA_MAX
    (-4, "MALLOC_MMAP_MAX_", 0),  # M_MMAP_MAX
    (-1, "MALLOC_TRIM_THRESHOLD_", 2**31 - 1),  # M_TRIM_THRESHOLD
)


def on_glibc() -> bool:
  """Whether this process runs on Linux with glibc (where mallopt applies)."""
  return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
  """Make glibc keep freed memory for reuse instead of returning it. False off glibc."""
  if not on_glibc():
    return False
  try:
    libc = ctypes.CDLL("libc.so.6")
  except OSError:
    return False
  return all(libc.mallopt(param, value) == 1 for param, _, value in GLIBC_KEEP_FREED_MEMORY)


def keep_freed_memory_env() -> dict[str, str]:
  """The same settings as environment variables, for a process started from here."""
  return {name: str(value) for _, name, value in GLIBC_KEEP_FREED_MEMORY}
