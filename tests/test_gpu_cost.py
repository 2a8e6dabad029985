"""benchmarks/gpu_cost.py: its HLO reader on a fixed text (default suite, no GPU plugin), and
the benchmark itself on a small batch (marker `gpu_cost`: `python -m pytest -m gpu_cost`),
which needs jax's CUDA plugin at jax's version: in this interpreter or in the repository's
.venv-gpu-cost (the install command is in the script's docstring); skipped otherwise."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_cost  # noqa: E402  (no JAX import at module level)

# A trimmed XLA:GPU entry computation: a conv1 weight gradient (cuDNN, with its scratch
# buffer), a Triton gemm with its fused computation, a multi-output fusion read through
# get-tuple-elements, a copy, and instructions that move nothing.
HLO = """\
HloModule jit_step, entry_computation_layout={(f32[512,3]{1,0})->f32[512,3]{1,0}}

%gemm_fusion_dot.1_computation (parameter_0: f32[512,3], parameter_1: f32[3,3]) -> f32[512,3] {
  %parameter_0 = f32[512,3]{1,0} parameter(0)
  %parameter_1 = f32[3,3]{1,0} parameter(1)
  ROOT %dot_general.0 = f32[512,3]{1,0} dot(%parameter_0, %parameter_1), lhs_contracting_dims={1}, rhs_contracting_dims={0}, backend_config={"sizes":["16"]}
}

%fused_max (param_0.1: bf16[512,55,55,96]) -> (bf16[512,55,55,96], s8[512,27,27,96]) {
  %param_0.1 = bf16[512,55,55,96]{3,2,1,0} parameter(0)
  %transpose.1 = bf16[512,55,55,96]{3,2,1,0} transpose(%param_0.1), dimensions={0,1,2,3}
  %slice.1 = s8[512,27,27,96]{3,2,1,0} slice(%param_0.1), slice={[0:512], [0:27], [0:27], [0:96]}
  ROOT %tuple.1 = (bf16[512,55,55,96]{3,2,1,0}, s8[512,27,27,96]{3,2,1,0}) tuple(%transpose.1, %slice.1)
}

ENTRY %main.1 (x.1: f32[512,3], w.1: f32[3,3], img.1: bf16[512,227,227,3], dy.1: bf16[512,55,55,96]) -> f32[512,3] {
  %x.1 = f32[512,3]{1,0} parameter(0)
  %w.1 = f32[3,3]{1,0} parameter(1)
  %img.1 = bf16[512,227,227,3]{3,2,1,0} parameter(2)
  %dy.1 = bf16[512,55,55,96]{3,2,1,0} parameter(3)
  %c.1 = f32[] constant(0.5)
  %bitcast.1 = f32[512,3]{1,0} bitcast(%x.1)
  %gemm_fusion_dot.1 = f32[512,3]{1,0} fusion(%bitcast.1, %w.1), kind=kCustom, calls=%gemm_fusion_dot.1_computation, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %cudnn-conv-bw-filter.8 = (bf16[96,11,11,3]{3,2,1,0}, u8[4096]{0}) custom-call(%img.1, %dy.1), window={size=11x11 stride=4x4}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter", backend_config={"cudnn_conv_backend_config":{"activation_mode":"kNone"}}
  %get-tuple-element.1 = bf16[96,11,11,3]{3,2,1,0} get-tuple-element(%cudnn-conv-bw-filter.8), index=0
  %loop_fusion = (bf16[512,55,55,96]{3,2,1,0}, s8[512,27,27,96]{3,2,1,0}) fusion(%dy.1, %dy.1), kind=kLoop, calls=%fused_max
  %get-tuple-element.2 = s8[512,27,27,96]{3,2,1,0} get-tuple-element(%loop_fusion), index=1
  %copy.1 = s8[512,27,27,96]{3,2,1,0} copy(%get-tuple-element.2)
  ROOT %tuple.9 = (f32[512,3]{1,0}) tuple(%gemm_fusion_dot.1)
}
"""

IMG = 512 * 227 * 227 * 3 * 2
DY = 512 * 55 * 55 * 96 * 2
WINNERS = 512 * 27 * 27 * 96


def test_bytes_are_operands_plus_results_of_each_kernel():
  cost = gpu_cost.analyze(HLO, top=2)
  gemm = 2 * 512 * 3 * 4 + 3 * 3 * 4
  conv = IMG + DY + 96 * 11 * 11 * 3 * 2  # the u8 scratch buffer is not counted
  fusion = DY + DY + WINNERS  # the operand read twice counts once
  copy = 2 * WINNERS
  assert cost["bytes_by_kind"] == {"fusion": fusion, "cudnn_conv": conv, "copy": copy,
                                   "triton_gemm": gemm}
  assert cost["bytes"] == gemm + conv + fusion + copy
  assert (cost["fusions"], cost["cudnn_calls"], cost["cublas_calls"], cost["triton_gemms"],
          cost["copies"], cost["transposes"]) == (2, 1, 0, 1, 1, 0)
  assert [row[0] for row in cost["largest"]] == ["loop_fusion", "cudnn-conv-bw-filter.8"]


def test_flops_of_convolutions_and_dots():
  cost = gpu_cost.analyze(HLO)
  conv1_macs = 512 * 55 * 55 * 96 * 11 * 11 * 3  # the weight gradient: a forward's MACs
  assert cost["flops"] == 2 * conv1_macs + 2 * 512 * 3 * 3


def test_calibration_reproduces_its_own_fit():
  bytes_per_image = {"torchvision": 23.45e6, "paper_towers": 49.14e6}
  factor = gpu_cost.calibration_factor(bytes_per_image)
  assert 3.0 < factor < 3.4  # the ~3.2 of docs/model.md
  predicted = {f: gpu_cost.predicted_images_per_sec(b, "h200", factor)
               for f, b in bytes_per_image.items()}
  # A one-parameter fit of two points: equal and opposite errors.
  errors = [predicted[f] / gpu_cost.MEASURED_H200[f] - 1 for f in bytes_per_image]
  assert abs(errors[0] + errors[1]) < 1e-3 and abs(errors[0]) < 0.05
  assert gpu_cost.predicted_images_per_sec(30e6, "h100", factor) == pytest.approx(
      gpu_cost.predicted_images_per_sec(30e6, "h200", factor) * 3.35 / 4.8)


def _python_with_cuda_plugin():
  """An interpreter that can import jax's CUDA plugin: this one, or .venv-gpu-cost's."""
  try:
    if importlib.util.find_spec("jax_plugins.xla_cuda13") is not None:
      return sys.executable
  except ImportError:  # no jax_plugins package at all
    pass
  venv = REPO / ".venv-gpu-cost" / "bin" / "python"
  if venv.exists() and subprocess.run(
      [str(venv), "-c", "import jax_plugins.xla_cuda13"], capture_output=True).returncode == 0:
    return str(venv)
  return None


@pytest.mark.gpu_cost
def test_benchmark_on_a_small_batch(tmp_path):
  python = _python_with_cuda_plugin()
  if python is None:
    pytest.skip("jax's CUDA plugin is not installed (see benchmarks/gpu_cost.py's docstring)")
  out = tmp_path / "cost.jsonl"
  run = subprocess.run(
      [python, str(REPO / "benchmarks" / "gpu_cost.py"), "--forms=paper_towers,paper_auto_gpu",
       "--targets=h100", "--batch=16", f"--out={out}"],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert run.returncode == 0, run.stderr[-3000:]
  records = {r["form"]: r for r in map(json.loads, out.read_text().splitlines())}
  plain, auto = records["paper_towers"], records["paper_auto_gpu"]
  assert (auto["kernels"], auto["group_impl"]) == ("gpu", "tower_arrays")
  assert plain["scatters"] > auto["scatters"] and auto["cudnn_calls"] > 0
  # At batch 16 the parameters' and optimizer's traffic (~2 GB a step) dominates the bytes
  # per image; what the forms save per image (21.8 MB at batch 512) does not depend on it.
  assert plain["mb_per_image"] - auto["mb_per_image"] > 15
  assert plain["gflop_per_image"] == pytest.approx(4.14, abs=0.05)  # conv1 has no input grad
  assert "predicted_images_per_sec" not in auto  # the calibration is for batch 512 only
