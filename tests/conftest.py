"""Test set-up: 8 simulated CPU devices for every in-process test.

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
