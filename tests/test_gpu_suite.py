"""benchmarks/gpu_suite.py: its plan fits one 8-minute call on an H100, new layer forms join
it by themselves, and --smoke runs every section end to end (here on the CPU)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO, device_env

SUITE = str(REPO / "benchmarks" / "gpu_suite.py")


def _plan(*args: str) -> tuple[dict, str]:
  result = subprocess.run([sys.executable, SUITE, "--plan_only", *args], env=device_env(1),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
  assert lines and lines[0]["section"] == "plan"  # printed first
  return lines[0], result.stdout


def test_the_default_plan_fits_one_eight_minute_call_on_an_h100():
  plan, printed = _plan("--device_kind=h100")
  assert plan["call_limit_s"] == 480 and plan["call_s"] <= 480
  assert plan["planned_s"] <= plan["budget_s"]
  planned = [key for key, _ in plan["items"]]
  # The priorities are in, in order: the step (auto form, torchvision's ceiling, PyTorch),
  # single layers, end to end (synthetic and raw, 0 and N workers), warm start-up.
  for key in ("step:paper:auto", "step:torchvision:auto", "step:torch:eager",
              "layers:conv1:channels=3", "end_to_end:synthetic:workers=0",
              "end_to_end:synthetic:workers=14", "end_to_end:raw:workers=0",
              "end_to_end:raw:workers=14", "startup:warm"):
    assert key in planned, key
  order = [planned.index(key) for key in ("step:paper:auto", "layers:conv1:channels=3",
                                           "end_to_end:synthetic:workers=0", "startup:warm")]
  assert order == sorted(order)
  assert [key for key, _ in plan["items"] + plan["left_out"]][-1] == "input:jpeg256"
  # Accuracy runs and torch.compile stay out unless asked for.
  assert not any(key.startswith(("fashion_mnist", "proxy", "torch_compile"))
                 for key, _ in plan["items"] + plan["left_out"])
  assert "# plan for h100" in printed and "left out (over budget)" in printed
  extras, _ = _plan("--device_kind=h100", "--accuracy", "--torch_compile", "--budget_s=3000")
  assert {"fashion_mnist", "proxy", "torch_compile"} <= {key for key, _ in extras["items"]}


def test_each_layer_form_of_the_models_is_an_alternative_and_a_layer_case():
  """A form added to models (here one line, in the subprocess) is timed with no change to the
  suite; with models that have only presets, each preset is."""
  code = """
import json, sys
sys.path.insert(0, 'benchmarks')
from absl import flags
import gpu_suite
from alexnet_jax import models
flags.FLAGS(['gpu_suite'])
table = getattr(models, 'LAYER_FORMS', None)
if table is not None:
  table['lrn']['test_form'] = table['lrn']['plain']
  table['pool']['test_pool'] = table['pool']['plain']
print(json.dumps({'layer_forms': table is not None,
                  'kernels': list(models.KERNELS), 'group_impls': list(models.GROUP_IMPLS),
                  'auto': models.resolve_kernels('auto', 'auto', backend='gpu').kernels,
                  'alternatives': gpu_suite.step_alternatives('paper', 'gpu'),
                  'cases': [c.name for c in gpu_suite.layer_cases(smoke=True)]}))
"""
  result = subprocess.run([sys.executable, "-c", code], env=device_env(1), capture_output=True,
                          text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  alternatives = [tuple(a) for a in got["alternatives"]]
  assert len(set(alternatives)) == len(alternatives)
  if got["layer_forms"]:
    assert any(k.endswith(",lrn=test_form") for k, _ in alternatives)
    assert any(k.endswith(",pool=test_pool") for k, _ in alternatives)
    assert "lrn=test_form@conv1" in got["cases"] and "pool=test_pool@conv5" in got["cases"]
  else:
    assert {k for k, _ in alternatives} >= set(got["kernels"]) - {"auto", got["auto"]}
  groups = {g for k, g in alternatives if k == got["auto"]}
  assert len(groups) == len(got["group_impls"]) - 2  # all but 'auto' and the auto choice
  assert {"conv1:channels=3", "conv1:channels=8"} <= set(got["cases"])


@pytest.mark.slow  # ~3 minutes on the 2-core machine: CI's slow run
def test_the_gpu_suite_smoke_runs_every_section(tmp_path):
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, SUITE, "--smoke", f"--workdir={tmp_path / 'scratch'}",
       "--budget_s=900"],
      env={**device_env(1), "OUT": str(out)}, capture_output=True, text=True, timeout=1200,
      cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  # Written under $OUT (what the device tool brings back), the plan first.
  records = [json.loads(line) for line in (out / "gpu_suite.jsonl").read_text().splitlines()]
  assert records[0]["section"] == "plan" and records[-1]["section"] == "done"
  sections = {r["section"] for r in records}
  assert {"environment", "step", "layers", "end_to_end", "startup", "input"} <= sections
  for record in records:
    assert "error" not in record and "skipped" not in record or (
        record.get("skipped") == "torch is not importable"), record
    assert record.get("returncode", 0) == 0, record
  steps = [r for r in records if r["section"] == "step" and "images_per_sec" in r]
  assert steps[0]["auto"] and steps[0]["images_per_sec"] > 0
  assert len(steps) == 2  # the auto form and one alternative (compiled, or the same program)
  assert list((out / "hlo").glob("*.hlo.txt.gz")) and list((out / "hlo").glob("*.memory.json"))
  layers = [r for r in records if r["section"] == "layers"]
  assert len(layers) >= 7 and all(r["forward_backward_ms"] > 0 for r in layers)
  runs = {r["item"]: r for r in records if r["section"] in ("end_to_end", "startup")
          and "images_per_sec" in r}
  for key in ("end_to_end:synthetic:workers=0", "end_to_end:synthetic:workers=1",
              "end_to_end:raw:workers=0", "end_to_end:raw:workers=1", "startup:warm"):
    assert runs[key]["images_per_sec"] > 0 and runs[key]["first_logged_step_s"], key
    assert runs[key]["evaluations"] == 0, key  # end to end means no evaluation
  assert runs["end_to_end:synthetic:workers=0"]["compilation_cache"] == "cold"
  assert runs["startup:warm"]["compilation_cache"] == "warm"
  inputs = [r for r in records if r["section"] == "input" and "images_per_sec" in r]
  assert inputs and inputs[0]["images_per_sec"] > 0
