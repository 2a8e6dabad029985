"""XLA:GPU cost of the trainer's train step, compiled for an H100 / H200 on a machine without
a GPU ("deviceless AOT"): bytes moved and FLOPs per image, and the images/s they predict.

Install (once, ~2.4 GB; a separate virtual environment that sees the system's jax and the
project, so the CUDA plugin never changes how the test suite or the trainer pick a backend):

  python -m venv --system-site-packages .venv-gpu-cost && .venv-gpu-cost/bin/pip install "jax[cuda13]==$(python -c 'import jax; print(jax.__version__)')"

Run (every form, both targets, ~3-5 minutes on 2 CPU cores):

  .venv-gpu-cost/bin/python benchmarks/gpu_cost.py --out=benchmarks/results/gpu_cost_$(date +%F).jsonl
  .venv-gpu-cost/bin/python benchmarks/gpu_cost.py --forms=paper_towers,paper_auto_gpu --targets=h100 --top=20

What is compiled: the trainer's own step (experiment.build on configs/synthetic.py: optax SGD
with momentum and weight decay, the on-device mirror and PCA colour noise, the model with the
layer forms of the form's `kernels` / `group_impl`, or those `models.resolve_kernels` picks for
backend 'gpu'), bfloat16, batch 512, 227 (paper) / 224 (torchvision), on one device of
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=<text of
/work/shared/data/gpu_targets/{h100,h200}.txtpb>, topology="1x1x1")`, with the inputs as
`jax.ShapeDtypeStruct`s sharded on that topology's mesh; then `jax.jit(step).lower(...).compile()`.
JAX_PLATFORMS is set to 'cpu' here before JAX starts: without a driver the CUDA plugin's
start-up check fails otherwise. No autotuning happens (cuDNN algorithms are chosen at run time).

What is measured, per form and target (one JSON line each): `cost_analysis()` is not
implemented for such executables (jax 0.10.2), so bytes and FLOPs are read from the optimized
HLO text (`compiled.as_text()`): every kernel the entry computation launches (fusion, cuDNN
conv, cuBLAS/Triton gemm, copy, ...) counts its operands plus its result (see `analyze`);
FLOPs count convolutions and dots from their shapes. Also the temp memory
(`memory_analysis()`), the numbers of fusions, cuDNN and cuBLAS calls, Triton gemms, copies,
transposes, reduce-windows and scatters, and the largest kernels with --top.

Prediction: a step's time ~ CALIBRATION x bytes / HBM bandwidth (3.35 TB/s H100, 4.8 TB/s
H200). The factor is fitted (geometric mean) on the forms timed on one H200 (docs/model.md:
bf16, batch 512, jax 0.11.2, 2026-11-30): torchvision 62.6k img/s and paper towers 31.8k;
its error on each measured form, feature_group_count's 26.2k included, is printed beside it
(`calibration` line). Bytes do not see how efficient a kernel is: the grouped-conv kernels
(feature_group_count) ran 1.21x slower than towers on the H200 at about the same bytes, so
the prediction is right for memory-bound forms built of ordinary convs and wrong for them.
Times were measured with jax 0.11.2, bytes here come from jax 0.10.2's XLA.

"Paper net without LRN" is not among the forms: no config field removes the LRN (the
layer forms are equal in value by design), and a benchmark-only hack of the model would not
be the trainer's step. Its figure from an earlier hand-made compile (31.3 MB) is in
/work/shared/GUIDE.md, section 2b.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import os
import pathlib
import re
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TARGETS_DIR = pathlib.Path(os.environ.get(
    "ALEXNET_JAX_GPU_TARGETS", REPO.parent / "shared" / "data" / "gpu_targets"))
# HBM bandwidth, bytes/s (the targets' memory_bandwidth).
BANDWIDTH = {"h100": 3.35e12, "h200": 4.8e12}

# Measured on one H200 (docs/model.md; jax 0.11.2, bf16, batch 512, 2026-11-30), img/s.
MEASURED_H200 = {"torchvision": 62.6e3, "paper_towers": 31.8e3, "paper_fgc": 26.2e3}
CALIBRATED_ON = ("torchvision", "paper_towers")  # ordinary convs only (see the docstring)


@dataclasses.dataclass(frozen=True)
class Form:
  """One compiled configuration: model.variant, image_size, kernels, group_impl
  ('auto' resolved for backend 'gpu' by models.resolve_kernels), and what it is."""
  variant: str
  image_size: int
  kernels: str
  group_impl: str
  what: str


FORMS = {
    "torchvision": Form("torchvision", 224, "plain", "towers",
                        "torchvision variant, plain forms (as timed on the H200)"),
    "torchvision_auto_gpu": Form("torchvision", 224, "auto", "auto",
                                 "torchvision variant, the forms auto picks on GPU"),
    "paper_towers": Form("paper", 227, "plain", "towers",
                         "paper net, plain forms, towers (as timed on the H200)"),
    "paper_fgc": Form("paper", 227, "plain", "feature_group_count",
                      "paper net, plain forms, feature_group_count (as timed on the H200)"),
    "paper_cpu_forms": Form("paper", 227, "cpu", "towers",
                            "paper net, the XLA:CPU forms (band-matrix LRN) on GPU"),
    "paper_lrn_recompute": Form("paper", 227, "plain,lrn=recompute", "towers",
                                "paper towers + LRN keeping only its input"),
    "paper_pool_scatter_free": Form("paper", 227, "plain,pool=scatter_free", "towers",
                                    "paper towers + scatter-free max-pool gradient"),
    "paper_lrn_pool_fused": Form("paper", 227, "plain,lrn_pool=fused", "towers",
                                 "paper towers + ReLU/LRN/max pool as one op"),
    "paper_tower_arrays": Form("paper", 227, "plain", "tower_arrays",
                               "paper net, plain forms, towers kept as separate arrays"),
    "paper_auto_gpu": Form("paper", 227, "auto", "auto",
                           "paper net, the forms auto picks on GPU (all of the above)"),
}



# --------------------------------------------------------------------------------------------
# Reading the optimized HLO text


DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
    "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16,
    "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1, "f8e5m2fnuz": 1, "f8e4m3fnuz": 1, "f8e4m3b11fnuz": 1,
}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True)) +
                    r")\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
# Instructions that launch no kernel and move no memory.
FREE_OPS = frozenset({"parameter", "constant", "bitcast", "get-tuple-element", "tuple",
                      "after-all", "partition-id", "replica-id", "copy-done", "opt-barrier"})


def shapes(type_text: str) -> list[tuple[str, tuple[int, ...]]]:
  """[(dtype, dims)] of every array in an HLO type ('f32[2,3]{1,0}' or a tuple of them)."""
  return [(dtype, tuple(int(d) for d in dims.split(",") if d))
          for dtype, dims in _SHAPE.findall(type_text)]


def type_bytes(type_text: str) -> float:
  """Bytes of all arrays in an HLO type."""
  return sum(DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in shapes(type_text))


def _closing(text: str, start: int) -> int:
  """Index just past the bracket group that opens at text[start]."""
  pairs = {"(": ")", "{": "}", "[": "]"}
  stack = []
  for i in range(start, len(text)):
    ch = text[i]
    if ch in pairs:
      stack.append(pairs[ch])
    elif stack and ch == stack[-1]:
      stack.pop()
      if not stack:
        return i + 1
  raise ValueError(f"unbalanced brackets in HLO: {text[start:start + 80]!r}")


class Instruction:
  """One HLO instruction: name, result type text, opcode, operand names, attribute text."""

  def __init__(self, name: str, type_text: str, opcode: str, operands: list[str], attrs: str):
    self.name, self.type_text, self.opcode = name, type_text, opcode
    self.operands, self.attrs = operands, attrs

  def attr(self, key: str) -> str | None:
    """The text of attribute `key=...` (up to the next top-level comma), or None."""
    match = re.search(r"(?:^|[\s,])" + re.escape(key) + r"=", self.attrs)
    if not match:
      return None
    i, depth = match.end(), 0
    for j in range(i, len(self.attrs)):
      ch = self.attrs[j]
      if ch in "({[":
        depth += 1
      elif ch in ")}]":
        depth -= 1
      elif ch == "," and depth == 0:
        return self.attrs[i:j]
      if depth < 0:
        return self.attrs[i:j]
    return self.attrs[i:]


def _parse_instruction(line: str) -> Instruction | None:
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  name, rest = match.group(2), match.group(3)
  if rest.startswith("("):
    end = _closing(rest, 0)
  else:
    end = rest.index(" ")
  type_text, rest = rest[:end], rest[end:].lstrip()
  paren = rest.index("(")
  opcode = rest[:paren]
  close = _closing(rest, paren)
  operands = re.findall(r"%([\w.\-]+)", rest[paren:close])
  return Instruction(name, type_text, opcode, operands, rest[close:].lstrip(", "))


def parse_module(text: str) -> tuple[str, dict[str, list[Instruction]]]:
  """(entry computation name, {computation name: its instructions}) of an HLO module text."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = None, None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header:
        current = header.group(2)
        computations[current] = []
        if header.group(1):
          entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    instruction = _parse_instruction(line)
    if instruction is not None:
      computations[current].append(instruction)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return entry, computations


def _labels(instruction: Instruction) -> tuple[str, str, str] | None:
  dim_labels = instruction.attr("dim_labels")
  if not dim_labels:
    return None
  lhs_rhs, out = dim_labels.split("->")
  lhs, rhs = lhs_rhs.split("_")
  return lhs, rhs, out


def conv_flops(instruction: Instruction, operand_types: list[str]) -> float:
  """2 x multiply-adds of a convolution: forward output (or output gradient) elements x
  kernel elements / output features; the same for forward, input and filter gradient."""
  labels = _labels(instruction)
  result = shapes(instruction.type_text)
  operands = [shapes(t)[0][1] if shapes(t) else () for t in operand_types]
  if labels is None or not result or len(operands) < 2:
    return 0.0
  target = instruction.attr("custom_call_target") or ""
  if "BackwardFilter" in target:
    forward_out, kernel = operands[1], result[0][1]
  elif "BackwardInput" in target:
    forward_out, kernel = operands[0], operands[1]
  else:
    forward_out, kernel = result[0][1], operands[1]
  kernel_labels = labels[1]
  if len(kernel_labels) != len(kernel) or "o" not in kernel_labels:
    return 0.0
  out_features = kernel[kernel_labels.index("o")]
  return 2.0 * math.prod(forward_out) * math.prod(kernel) / out_features


def _dims_attr(instruction: Instruction, key: str) -> list[int]:
  text = instruction.attr(key)
  return [int(d) for d in re.findall(r"\d+", text)] if text else []


def dot_flops(instruction: Instruction, operand_types: list[str]) -> float:
  """2 x result elements x contracted size of a `dot` or a cuBLAS gemm custom-call."""
  result = shapes(instruction.type_text)
  lhs = shapes(operand_types[0]) if operand_types else []
  if not result or not lhs:
    return 0.0
  contracting = _dims_attr(instruction, "lhs_contracting_dims")
  if not contracting:
    config = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attrs)
    contracting = [int(d) for d in re.findall(r"\d+", config.group(1))] if config else []
  size = math.prod(lhs[0][1][d] for d in contracting) if contracting else 1
  return 2.0 * math.prod(result[0][1]) * size


def _nested_flops(computations, name: str, seen=None) -> float:
  """FLOPs of the dots and convolutions inside a fused computation (recursively)."""
  seen = set() if seen is None else seen
  if name in seen or name not in computations:
    return 0.0
  seen.add(name)
  types = {i.name: i.type_text for i in computations[name]}
  total = 0.0
  for instruction in computations[name]:
    operand_types = [types.get(o, "") for o in instruction.operands]
    if instruction.opcode == "dot":
      total += dot_flops(instruction, operand_types)
    elif instruction.opcode == "convolution":
      total += conv_flops(instruction, operand_types)
    for key in ("calls", "to_apply"):
      called = instruction.attr(key)
      if called:
        for callee in re.findall(r"%([\w.\-]+)", called):
          total += _nested_flops(computations, callee, seen)
  return total


def _kind(instruction: Instruction) -> str:
  """A category for the summary: cudnn_conv, cublas_gemm, triton_gemm, fusion, copy, ..."""
  op = instruction.opcode
  if op == "custom-call":
    target = instruction.attr("custom_call_target") or ""
    if "cudnn" in target and "conv" in target.lower():
      return "cudnn_conv"
    if "cublas" in target:
      return "cublas_gemm"
    return "custom_call"
  if op == "fusion":
    if "__triton" in instruction.attrs and "gemm" in instruction.attrs:
      return "triton_gemm"
    if "__cudnn$fusion" in instruction.attrs:
      return "cudnn_fusion"
    return "fusion"
  if op in ("copy", "copy-start"):
    return "copy"
  return op


def analyze(text: str, top: int = 0) -> dict:
  """Traffic and counts of the entry computation of an optimized HLO module text.

  Returns {'bytes': operands + results of every kernel, 'flops': convs + dots,
  'bytes_by_kind': {kind: bytes}, 'count_by_kind': {kind: n}, 'fusions' (all fusions,
  gemm/conv fusions included), 'cudnn_calls', 'cublas_calls', 'triton_gemms', 'copies',
  'transposes' (transpose ops and fusions whose root is a transpose), 'reduce_windows',
  'scatters' (select-and-scatter and scatter, top level or fused), and with `top` > 0 'largest':
  the `top` kernels by bytes as [name, kind, bytes]}.
  """
  entry, computations = parse_module(text)
  instructions = computations[entry]
  types = {i.name: i.type_text for i in instructions}
  by_kind_bytes: dict[str, float] = collections.defaultdict(float)
  by_kind_count: collections.Counter = collections.Counter()
  flops = 0.0
  kernels = []
  fusion_ops: collections.Counter = collections.Counter()
  for instruction in instructions:
    if instruction.opcode in FREE_OPS:
      continue
    kind = _kind(instruction)
    result_shapes = shapes(instruction.type_text)
    result_bytes = type_bytes(instruction.type_text)
    if kind in ("cudnn_conv", "cublas_gemm", "custom_call") and len(result_shapes) > 1 \
        and result_shapes[-1][0] in ("u8", "s8"):
      dtype, dims = result_shapes[-1]
      result_bytes -= DTYPE_BYTES[dtype] * math.prod(dims)  # scratch workspace
    operand_names = list(dict.fromkeys(instruction.operands))
    operand_types = [types.get(o, "") for o in instruction.operands]
    moved = result_bytes + sum(type_bytes(types.get(o, "")) for o in operand_names)
    by_kind_bytes[kind] += moved
    by_kind_count[kind] += 1
    kernels.append((moved, instruction.name, kind))
    if kind == "cudnn_conv":
      flops += conv_flops(instruction, operand_types)
    elif kind == "cublas_gemm":
      flops += dot_flops(instruction, operand_types)
    elif instruction.opcode == "dot":
      flops += dot_flops(instruction, operand_types)
    elif instruction.opcode == "convolution":
      flops += conv_flops(instruction, operand_types)
    called = instruction.attr("calls")
    if called:
      for callee in re.findall(r"%([\w.\-]+)", called):
        flops += _nested_flops(computations, callee)
        for inner in computations.get(callee, []):
          fusion_ops[inner.opcode] += 1
        root = next((i for i in computations.get(callee, [])[::-1]), None)
        if root is not None and root.opcode == "transpose":
          by_kind_count["transpose_fusion"] += 1
  fusions = sum(by_kind_count[k] for k in ("fusion", "triton_gemm", "cudnn_fusion"))
  out = {
      "bytes": sum(by_kind_bytes.values()),
      "flops": flops,
      "bytes_by_kind": dict(sorted(by_kind_bytes.items(), key=lambda kv: -kv[1])),
      "count_by_kind": dict(by_kind_count),
      "fusions": fusions,
      "cudnn_calls": by_kind_count["cudnn_conv"] + by_kind_count["cudnn_fusion"],
      "cublas_calls": by_kind_count["cublas_gemm"],
      "triton_gemms": by_kind_count["triton_gemm"],
      "copies": by_kind_count["copy"],
      "transposes": by_kind_count["transpose"] + by_kind_count["transpose_fusion"],
      "reduce_windows": by_kind_count["reduce-window"] + fusion_ops["reduce-window"],
      "scatters": (by_kind_count["scatter"] + by_kind_count["select-and-scatter"]
                   + fusion_ops["scatter"] + fusion_ops["select-and-scatter"]),
  }
  if top:
    out["largest"] = [[name, kind, moved]
                      for moved, name, kind in sorted(kernels, reverse=True)[:top]]
  return out


# --------------------------------------------------------------------------------------------
# Compiling the trainer's step for a GPU target


def load_config(name: str):
  """configs/<name>.py's get_config()."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def form_config(form: Form, batch: int, dtype: str = "bfloat16"):
  """configs/synthetic.py at `batch` with the form's model; 'auto' resolved for 'gpu'."""
  from alexnet_jax import models

  c = load_config("synthetic")
  c.batch_size = c.eval_batch_size = batch
  c.data.num_train_examples = c.data.num_eval_examples = batch
  c.model.variant, c.model.image_size, c.model.dtype = form.variant, form.image_size, dtype
  if form.variant == "torchvision":
    c.model.init = "torch"
  choice = models.resolve_kernels(form.kernels, form.group_impl, backend="gpu")
  c.model.kernels, c.model.group_impl = choice.kernels, choice.group_impl
  return c


def topology_devices(target: str):
  """The one device of an XLA:GPU topology built from the target's GpuTargetConfig text."""
  from jax.experimental import topologies

  text = (TARGETS_DIR / f"{target}.txtpb").read_text()
  return topologies.get_topology_desc(platform="cuda", target_config=text,
                                      topology="1x1x1").devices


def compile_step(config, target: str):
  """(compiled executable, seconds to compile) of the trainer's train step for `target`."""
  import jax
  import jax.numpy as jnp

  from alexnet_jax import experiment, sharding

  exp = experiment.build(config, devices=topology_devices(target))
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       exp.abstract_state, exp.state_shardings)
  batch_sharding = sharding.batch_sharding(exp.mesh)
  size, channels = config.model.image_size, config.model.in_channels
  batch = {
      "image": jax.ShapeDtypeStruct((config.batch_size, size, size, channels), jnp.uint8,
                                    sharding=batch_sharding),
      "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch_sharding),
  }
  started = time.perf_counter()
  compiled = exp.train_step.lower(state, batch).compile()
  return compiled, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# Calibration


def calibration_factor(bytes_per_image: dict[str, float]) -> float:
  """Geometric mean over CALIBRATED_ON of measured time x bandwidth / bytes (H200)."""
  import math
  logs = [math.log((1.0 / MEASURED_H200[f]) * BANDWIDTH["h200"] / bytes_per_image[f])
          for f in CALIBRATED_ON]
  return math.exp(sum(logs) / len(logs))


def predicted_images_per_sec(bytes_per_image: float, target: str, factor: float) -> float:
  return BANDWIDTH[target] / (factor * bytes_per_image)


def versions() -> dict:
  import importlib.metadata as metadata

  import jax
  import jaxlib
  out = {"jax": jax.__version__, "jaxlib": jaxlib.__version__}
  for package in ("jax-cuda13-plugin", "jax-cuda13-pjrt", "nvidia-cudnn-cu13"):
    try:
      out[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
      pass
  return out


def measure(form_name: str, target: str, batch: int, top: int, hlo_dir: str | None) -> dict:
  form = FORMS[form_name]
  config = form_config(form, batch)
  compiled, compile_s = compile_step(config, target)
  text = compiled.as_text()
  if hlo_dir:
    pathlib.Path(hlo_dir).mkdir(parents=True, exist_ok=True)
    (pathlib.Path(hlo_dir) / f"{form_name}_{target}.hlo").write_text(text)
  cost = analyze(text, top=top)
  memory = compiled.memory_analysis()
  per_image = lambda v: v / batch
  record = {
      "benchmark": "gpu_cost", "form": form_name, "target": target, "what": form.what,
      "variant": form.variant, "image_size": form.image_size,
      "kernels": config.model.kernels, "group_impl": config.model.group_impl,
      "dtype": config.model.dtype, "batch": batch,
      "mb_per_image": round(per_image(cost["bytes"]) / 1e6, 3),
      "gflop_per_image": round(per_image(cost["flops"]) / 1e9, 3),
      "mb_per_image_by_kind": {k: round(per_image(v) / 1e6, 3)
                               for k, v in cost["bytes_by_kind"].items()},
      "temp_gb": round(memory.temp_size_in_bytes / 1e9, 3),
      **{k: cost[k] for k in ("fusions", "cudnn_calls", "cublas_calls", "triton_gemms",
                              "copies", "transposes", "reduce_windows", "scatters")},
      "compile_s": round(compile_s, 1),
  }
  if top:
    record["largest_mb_per_image"] = [[name, kind, round(moved / batch / 1e6, 3)]
                                      for name, kind, moved in cost["largest"]]
  return record


def main(argv: list[str]) -> int:
  import argparse

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--forms", default=",".join(FORMS),
                      help=f"comma-separated, of {', '.join(FORMS)}")
  parser.add_argument("--targets", default="h100,h200", help="h100, h200")
  parser.add_argument("--batch", type=int, default=512)
  parser.add_argument("--top", type=int, default=0, help="list the N largest kernels")
  parser.add_argument("--hlo_dir", default=None, help="also write each optimized HLO here")
  parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
  args = parser.parse_args(argv)
  forms = [f for f in args.forms.split(",") if f]
  targets = [t for t in args.targets.split(",") if t]
  for name in forms:
    if name not in FORMS:
      parser.error(f"--forms: {name!r} is not one of {', '.join(FORMS)}")
  for target in targets:
    if target not in BANDWIDTH:
      parser.error(f"--targets: {target!r} is not one of {', '.join(BANDWIDTH)}")
  os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX starts: see the docstring
  sys.path.insert(0, str(REPO))
  try:
    import jax_plugins.xla_cuda13  # noqa: F401
  except ImportError:
    print("gpu_cost.py needs jax's CUDA plugin at jax's version; install it as the "
          "docstring says (python -m venv ... .venv-gpu-cost).", file=sys.stderr)
    return 2

  out = open(args.out, "a") if args.out else None
  common = {"date": datetime.date.today().isoformat(), **versions()}

  def emit(record):
    line = json.dumps({**record, **common})
    print(line, flush=True)
    if out:
      out.write(line + "\n")
      out.flush()

  records = [measure(f, t, args.batch, args.top, args.hlo_dir) for t in targets for f in forms]
  h200_bytes = {r["form"]: r["mb_per_image"] * 1e6 for r in records if r["target"] == "h200"}
  factor = None
  if all(f in h200_bytes for f in CALIBRATED_ON) and args.batch == 512:
    factor = calibration_factor(h200_bytes)
    errors = {f: round(predicted_images_per_sec(h200_bytes[f], "h200", factor)
                       / MEASURED_H200[f] - 1.0, 3)
              for f in MEASURED_H200 if f in h200_bytes}
    emit({"benchmark": "gpu_cost", "calibration": round(factor, 3),
          "model": "step time = calibration x bytes / HBM bandwidth",
          "fitted_on": list(CALIBRATED_ON), "measured_h200_images_per_sec": MEASURED_H200,
          "prediction_error_h200": errors,
          "note": "bytes do not see kernel efficiency: grouped convs (paper_fgc) ran slower "
                  "than their bytes predict; measured with jax 0.11.2, bytes from this jax"})
  for record in records:
    if factor is not None:
      record["predicted_images_per_sec"] = round(predicted_images_per_sec(
          record["mb_per_image"] * 1e6, record["target"], factor))
      if record["target"] == "h200" and record["form"] in MEASURED_H200:
        record["measured_images_per_sec"] = MEASURED_H200[record["form"]]
    emit(record)
  if out:
    out.close()
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
