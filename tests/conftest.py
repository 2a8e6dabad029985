"""Test set-up: 8 simulated CPU devices for every in-process test; memory given back after
each test module.

XLA reads the flag when the backend starts, so it is set before anything imports jax.
Subprocess tests pass their own device count (see `run_main` in tests/helpers.py).
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

# Grain reads absl flags; outside absl.app.run they must be marked parsed.
flags.FLAGS.mark_as_parsed()

import ctypes  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _release_memory_after_each_module(request):
  """After each test module, gives back what it left in this process: the arrays its own
  lru_caches hold (whole-net parameters and gradients), jax's compiled executables, and the
  freed heap glibc keeps. Without it the pytest process grew to ~6 GB over the default suite
  and each test's subprocesses came on top (peak 9.4 GB). The golden parameters
  (tests/golden/make_golden.case_params, ~1 GB) stay: test_convert, test_models and
  test_kernel_forms share them."""
  yield
  for value in list(vars(request.module).values()):
    if callable(getattr(value, "cache_clear", None)):
      value.cache_clear()
  if "jax" in sys.modules:
    sys.modules["jax"].clear_caches()
  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass
