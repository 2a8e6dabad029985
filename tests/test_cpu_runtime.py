"""The process settings of alexnet_jax.cpu_runtime: what they change, and that users keep control."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from alexnet_jax.runtime import cpu_runtime
from helpers import REPO, SMALL, device_env, run_main

ON_GLIBC = cpu_runtime.on_glibc()

# A step-like loop: a fresh 160 MB result every iteration, as XLA:CPU's per-step scratch
# buffer is. Prints the page faults per iteration once the heap has settled (the first
# iterations grow it while freed blocks and small allocations find their places). The least of
# 5 iterations: another process's load can add faults to one iteration (memory reclaimed under
# pressure), never take the buffer's own faults away.
_FAULTS_PER_ITERATION = textwrap.dedent("""
    import resource, sys
    from alexnet_jax.runtime import cpu_runtime
    if sys.argv[1] == "tuned":
      cpu_runtime.keep_freed_memory()
    import jax, jax.numpy as jnp
    double = jax.jit(lambda a: a * 2)
    a = jnp.ones((40_000_000,), jnp.float32)
    for _ in range(12):
      double(a).block_until_ready()
    faults = []
    for _ in range(5):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      double(a).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(faults))
""")


def _faults_per_iteration(mode: str) -> float:
  out = subprocess.run([sys.executable, "-c", _FAULTS_PER_ITERATION, mode], env=device_env(1),
                       capture_output=True, text=True, check=True, cwd=REPO)
  return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not ON_GLIBC, reason="the allocator setting is for glibc")
def test_keep_freed_memory_stops_per_step_page_faults():
  pages = 40_000_000 * 4 / 4096
  untuned, tuned = _faults_per_iteration("plain"), _faults_per_iteration("tuned")
  assert untuned > 0.5 * pages  # the buffer is faulted back in every iteration...
  assert tuned < 0.05 * pages  # ...unless glibc keeps it


def _pretend_measured_setup(monkeypatch):
  monkeypatch.setattr(cpu_runtime, "_jaxlib_version", lambda: cpu_runtime.TUNED_JAXLIB_VERSIONS[0])
  monkeypatch.setattr(platform, "machine", lambda: cpu_runtime.TUNED_MACHINES[0])


def test_xla_flags_are_appended_and_never_override_the_user(monkeypatch):
  _pretend_measured_setup(monkeypatch)
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  added = cpu_runtime.add_xla_cpu_flags(environ)
  assert added == list(cpu_runtime.XLA_CPU_FLAGS)
  assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4", *added]

  name = cpu_runtime.XLA_CPU_FLAGS[0].split("=")[0]
  environ = {"XLA_FLAGS": f"{name}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
  assert cpu_runtime.add_xla_cpu_flags(environ) == []
  assert environ["XLA_FLAGS"] == f"{name}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"


def test_xla_flags_only_where_measured(monkeypatch):
  # An XLA flag the installed jaxlib does not know aborts the process: never guess.
  _pretend_measured_setup(monkeypatch)
  for version in ((0, 4), (9, 0), None):
    monkeypatch.setattr(cpu_runtime, "_jaxlib_version", lambda v=version: v)
    environ = {}
    assert cpu_runtime.add_xla_cpu_flags(environ) == []
    assert environ == {}
  _pretend_measured_setup(monkeypatch)
  monkeypatch.setattr(platform, "machine", lambda: "arm64")  # Eigen vs YNNPACK not measured
  assert cpu_runtime.add_xla_cpu_flags({}) == []


def test_configure_does_nothing_when_disabled(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "")
  assert cpu_runtime.configure(False) == []
  monkeypatch.setenv(cpu_runtime.OPT_OUT_ENV, "0")
  assert cpu_runtime.configure(True, eigen_convolutions=True) == []
  assert "ynn" not in os.environ["XLA_FLAGS"]


def test_the_backend_is_known_before_it_starts(monkeypatch):
  assert cpu_runtime.will_use_cpu_backend({"JAX_PLATFORMS": "cpu"})
  assert not cpu_runtime.will_use_cpu_backend({"JAX_PLATFORMS": "cuda,cpu"})
  assert not cpu_runtime.will_use_cpu_backend({"JAX_PLATFORMS": "tpu"})
  # Unset: an installed accelerator plugin means JAX will pick the accelerator.

  class Dist:
    def __init__(self, name):
      self.metadata = {"Name": name}
  from importlib import metadata
  monkeypatch.setattr(metadata, "distributions", lambda: [Dist("numpy"), Dist("jax-cuda13-plugin")])
  assert not cpu_runtime.will_use_cpu_backend({})
  monkeypatch.setattr(metadata, "distributions", lambda: [Dist("numpy"), Dist("jaxlib")])
  assert cpu_runtime.will_use_cpu_backend({})


def test_nothing_is_applied_on_an_accelerator_host(monkeypatch):
  applied = {}
  monkeypatch.setattr(cpu_runtime, "keep_freed_memory", lambda: applied.setdefault("malloc", True))
  environ = {"JAX_PLATFORMS": "cuda", "XLA_FLAGS": ""}
  lines = cpu_runtime.configure(True, eigen_convolutions=True, environ=environ)
  assert lines == ["none: the JAX backend will be an accelerator (these settings are for XLA:CPU)"]
  assert applied == {} and environ["XLA_FLAGS"] == ""


def test_the_convolution_flag_only_where_measured_safe(monkeypatch):
  # One process, one CPU device, no towers split over devices: applied ('auto'). Several
  # devices multiplied memory, parallel.model=2 makes XLA fail: not applied (docs/model.md).
  _pretend_measured_setup(monkeypatch)
  monkeypatch.setattr(cpu_runtime, "keep_freed_memory", lambda: True)
  monkeypatch.setattr(cpu_runtime, "backends_started", lambda: False)
  cases = [({"XLA_FLAGS": ""}, {}, True),
           ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}, {}, False),
           ({"XLA_FLAGS": ""}, {"model_parallel": 2}, False),
           ({"XLA_FLAGS": ""}, {"num_processes": 2}, False)]
  for environ, layout, applied in cases:
    environ = dict(environ, JAX_PLATFORMS="cpu")
    lines = cpu_runtime.configure(True, "auto", environ=environ, **layout)
    assert ("ynn_fusion_type" in environ["XLA_FLAGS"]) == applied, (environ, layout)
    assert any(("ynn_fusion_type" in line) == applied for line in lines)
  environ = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  cpu_runtime.configure(True, False, environ=environ)
  assert environ["XLA_FLAGS"] == ""  # forced off
  environ = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  cpu_runtime.configure(True, "true", environ=environ)
  assert "ynn_fusion_type" in environ["XLA_FLAGS"]  # forced on


def test_main_applies_the_settings_before_jax_starts(tmp_path):
  result = run_main("synthetic.py", tmp_path / "run", *SMALL, "--config.num_train_steps=1",
                    "--config.eval_at_end=false")
  if ON_GLIBC:
    assert "CPU runtime: the allocator keeps freed memory" in result.stderr
  if (cpu_runtime._jaxlib_version() in cpu_runtime.TUNED_JAXLIB_VERSIONS
      and platform.machine() in cpu_runtime.TUNED_MACHINES):  # one device: 'auto' applies it
    assert "XLA_FLAGS += --xla_cpu_experimental_ynn_fusion_type" in result.stderr
  # Two devices are several, as eight are (eight took 3.5 GB resident and a slower compile).
  two = run_main("synthetic.py", tmp_path / "two", *SMALL, "--config.num_train_steps=1",
                 "--config.eval_at_end=false", devices=2)
  assert "XLA_FLAGS +=" not in two.stderr
  assert "convolutions on XLA's default library (auto: not applied with 2 devices" in two.stderr

  off = run_main("synthetic.py", tmp_path / "off", *SMALL, "--config.num_train_steps=1",
                 "--config.eval_at_end=false", "--config.cpu_runtime_tuning=false")
  assert "CPU runtime" not in off.stderr
