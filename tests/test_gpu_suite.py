"""benchmarks/gpu_suite.py --smoke: the one GPU command runs end to end (here on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, device_env


def test_the_gpu_suite_smoke_runs_every_section(tmp_path):
  out = tmp_path / "suite.jsonl"
  result = subprocess.run(
      [sys.executable, str(REPO / "benchmarks" / "gpu_suite.py"), "--smoke", f"--out={out}",
       f"--workdir={tmp_path / 'scratch'}"],
      env=device_env(1), capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in out.read_text().splitlines()]
  sections = [r["section"] for r in records]
  for section in ("environment", "step", "torch", "end_to_end", "startup", "fashion_mnist",
                  "proxy", "input", "end_to_end_raw", "done"):
    assert section in sections, section
  for record in records:
    assert record.get("returncode", 0) == 0, record
  steps = [r for r in records if r["section"] == "step"]
  assert all(r["images_per_sec"] > 0 for r in steps)
  assert any(r["chosen_by_auto"] for r in steps) and any(r["kernels"] == "plain" for r in steps)
  startup = {r["cache"]: r for r in records if r["section"] == "startup"}
  assert startup["cold"]["first_logged_step_s"] and startup["warm"]["first_logged_step_s"]
  inputs = {r["storage"]: r for r in records if r["section"] == "input"}
  assert inputs["raw256"]["images_per_sec"] > 0  # --smoke: raw only
  raw_run = [r for r in records if r["section"] == "end_to_end_raw"]
  assert raw_run[0]["images_per_sec"] > 0
