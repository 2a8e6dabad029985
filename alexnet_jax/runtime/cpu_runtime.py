"""Process settings that make XLA:CPU train faster; applied before JAX creates its backends,
and only when that backend will be the CPU (`will_use_cpu_backend`): never on a GPU/TPU host.

Two measured costs of XLA:CPU on Linux, both outside the model (docs/model.md, "Process
settings"):

1. XLA:CPU allocates each step's scratch buffer anew (about 560 MB for the paper model at
   batch 32) and frees it at the end of the step. glibc hands blocks that large back to the
   kernel (mmap/munmap, and any block over 64 MB that an XLA worker thread frees), so every
   step faults the whole buffer back in: about 150,000 page faults and 200 ms of kernel time
   per step on a 2-core host. `keep_freed_memory` tells glibc to keep freed memory for reuse
   (one malloc arena, no mmap, no trimming); the cost is that the process keeps its peak
   host memory instead of returning it.
2. XLA:CPU sends convolutions to YNNPACK by default. On this model its Eigen convolutions are
   faster (weight and input gradients most), while YNNPACK's matmuls and elementwise kernels
   are faster than the alternatives. `XLA_CPU_FLAGS` keeps YNNPACK for those only. The flag
   is experimental in XLA, and an unknown XLA flag aborts the process, so it is only set on
   the jaxlib versions and the processor family (x86-64) it was measured on.

Both only change speed, never values beyond float rounding. `configure()` is called by the
command-line entry points before anything touches a JAX backend. The allocator setting is on by
default (`config.cpu_runtime_tuning`; ALEXNET_JAX_CPU_RUNTIME_TUNING=0 also turns it off); the
convolution flag where it was measured safe (`config.cpu_eigen_convolutions='auto'`: one
process, one CPU device, parallel.model=1): with several simulated devices it multiplied peak
memory (killed for memory at 8) and XLA rejects it for the two-tower layout (parallel.model=2:
"Instruction with unsupported layout in YNN fusion"). On one device it costs memory too: peak
RSS of a 3-step paper run at batch 32, 4.6 GB (2.6 GB with the allocator setting alone, 1.7 GB
untuned), for a step about 1.5x faster (docs/benchmarks.md).

How the backend is known before it starts: JAX_PLATFORMS, when set, names it (its first
entry); otherwise JAX picks an accelerator whenever a GPU or TPU plugin is installed
(jax-cuda*-plugin, jax-rocm*-plugin, libtpu), so the CPU is assumed only without one. A plugin
that finds no device makes JAX fall back to the CPU untuned: slower, never wrong.
"""

from __future__ import annotations

import os
import platform
import re
import sys

# Re-exported: configure() applies it, tests and benchmarks read it from here.
from alexnet_jax.runtime.host_memory import (  # noqa: F401
    GLIBC_KEEP_FREED_MEMORY, keep_freed_memory, keep_freed_memory_env, on_glibc)

# jaxlib versions (major, minor) and processors on which XLA_CPU_FLAGS were measured.
TUNED_JAXLIB_VERSIONS = ((0, 10),)
TUNED_MACHINES = ("x86_64", "AMD64")
XLA_CPU_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type="
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_ELTWISE",
)
OPT_OUT_ENV = "ALEXNET_JAX_CPU_RUNTIME_TUNING"

# Distributions that give JAX a non-CPU backend (checked by name prefix).
ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu")


def will_use_cpu_backend(environ=os.environ) -> bool:
  """Whether JAX's default backend will be the CPU, decided before any backend starts."""
  platforms = environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  from importlib import metadata
  for dist in metadata.distributions():
    name = (dist.metadata.get("Name") or "").lower()
    if name.startswith(ACCELERATOR_PLUGINS):
      return False
  return True


def backends_started() -> bool:
  """Whether JAX has created its backends (after which XLA flags are no longer read)."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge is not None and getattr(bridge, "_backends", None))


def _jaxlib_version() -> tuple[int, int] | None:
  try:
    from importlib import metadata
    major, minor = metadata.version("jaxlib").split(".")[:2]
    return int(major), int(minor)
  except Exception:  # not installed the usual way: do not guess
    return None


def add_xla_cpu_flags(environ=os.environ) -> list[str]:
  """Append XLA_CPU_FLAGS to XLA_FLAGS, except flags the user already set. Returns those added."""
  if _jaxlib_version() not in TUNED_JAXLIB_VERSIONS or platform.machine() not in TUNED_MACHINES:
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [flag for flag in XLA_CPU_FLAGS if flag.split("=")[0] not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


def simulated_device_count(environ=os.environ) -> int:
  """CPU devices XLA will create: --xla_force_host_platform_device_count in XLA_FLAGS, else 1."""
  match = re.search(r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", ""))
  return int(match.group(1)) if match else 1


def eigen_convolutions_wanted(setting, *, model_parallel: int = 1, num_processes: int = 1,
                              environ=os.environ) -> tuple[bool, str]:
  """(apply the convolution flag?, why) for `config.cpu_eigen_convolutions`.

  'auto' applies it where it was measured safe: one process, one CPU device, no towers split
  over devices (parallel.model=1). Elsewhere it multiplied memory (8 simulated devices ran out
  of memory) or XLA rejected it (parallel.model=2). True/False force it.
  """
  value = str(setting).strip().lower()
  if value in ("true", "1", "yes"):
    return True, "set by cpu_eigen_convolutions"
  if value in ("false", "0", "no"):
    return False, "off by cpu_eigen_convolutions"
  if value != "auto":
    raise ValueError(f"cpu_eigen_convolutions={setting!r} is not one of 'auto', True, False.")
  devices = simulated_device_count(environ)
  if model_parallel > 1 or num_processes > 1 or devices > 1:
    return False, (f"auto: not applied with {devices} devices, {num_processes} processes, "
                   f"parallel.model={model_parallel} (measured safe on one device only)")
  return True, "auto: one process, one CPU device"


def configure(enabled: bool = True, eigen_convolutions=False, *, model_parallel: int = 1,
              num_processes: int = 1, environ=os.environ) -> list[str]:
  """Apply the settings when the backend will be the CPU and they are enabled (not opted out).

  eigen_convolutions: 'auto' | True | False (see eigen_convolutions_wanted); model_parallel
  and num_processes: the run's `parallel.model` and process count. Returns one line per
  setting applied (or skipped with its reason), or one line saying why none was.
  """
  if not enabled or environ.get(OPT_OUT_ENV, "1").lower() in ("0", "false", "no"):
    return []
  if not will_use_cpu_backend(environ):
    return ["none: the JAX backend will be an accelerator (these settings are for XLA:CPU)"]
  applied = []
  if keep_freed_memory():
    applied.append("the allocator keeps freed memory (no page faults re-filling XLA's "
                   "scratch buffer every step)")
  wanted, why = eigen_convolutions_wanted(eigen_convolutions, model_parallel=model_parallel,
                                          num_processes=num_processes, environ=environ)
  if wanted and not backends_started():  # XLA reads its flags at backend start
    added = add_xla_cpu_flags(environ)
    applied += [f"convolutions on XLA:CPU's Eigen path, ~1.5x faster step ({why}; XLA_FLAGS "
                f"+= {flag})" for flag in added]
  elif not wanted and str(eigen_convolutions).lower() == "auto":
    applied.append(f"convolutions on XLA's default library ({why})")
  return applied
