"""The project's GPU measurements in ONE call of at most 8 minutes on one H100.

  python benchmarks/gpu_suite.py                 # the default plan, under --budget_s=445
  python benchmarks/gpu_suite.py --plan_only     # prints the plan (no GPU needed) and exits
  python benchmarks/gpu_suite.py --smoke         # on a CPU, tiny sizes: every section runs
  python benchmarks/gpu_suite.py --accuracy --torch_compile --budget_s=1500   # the extras

It prints its plan first: every item in priority order with its estimated seconds on the
device (`ESTIMATES`), the sum per section, and what the budget leaves out. Then it runs the
items in that order; before each, an item whose estimate does not fit the budget left (the
time already spent counted, not the estimates) is skipped with a line saying so, and a
subprocess never runs past the budget. Output: one JSON line per measurement or skip (each
with `section` and `item`), on stdout and appended to --out, which defaults to
$OUT/gpu_suite.jsonl when the OUT environment variable is set (the device tool returns only
files under $OUT); compiled HLO text (gzip) and memory analyses of the step go to
$OUT/hlo/ (or --hlo_dir). Lines are flushed as they come, so a run cut short keeps them.

Default plan, in priority order (docs/benchmarks.md):
 1. step: the trainer's own jitted train step (experiment.build) on a batch kept on the
    device, bf16, batch 512: the paper net with the forms `auto` picks on a GPU; torchvision's
    net (the ceiling: same MACs, no LRN, no groups); the same paper net in PyTorch (eager,
    channels_last, bf16 autocast, synchronized only at the end); then each alternative to
    the auto form changed one at a time: every other layer form of `models.LAYER_FORMS`
    (`model.kernels='<auto preset>,<layer>=<form>'`) and every other `model.group_impl`
    (`step_alternatives`: a new form in models/ is picked up with no change here; pin extra
    ones in EXTRA_STEP_FORMS). An alternative that lowers to the same program as one timed
    already (e.g. an LRN form under the fused ReLU-LRN-pool) is reported as the same, not
    compiled again. HLO text and memory analysis saved for each compiled step.
 2. layers: forward + backward of single layers at the paper net's batch-512 shapes, bf16:
    every LRN form and every max-pool form, ReLU-LRN-pool fused against separate, conv1 as is
    against its input channels zero-padded to 4 and 8 (`layer_cases`).
 3. end_to_end: `python -m alexnet_jax.main`, 300 steps, no evaluation, bf16, batch 512,
    paper net at 227: synthetic data with 0 and N Grain workers, then a generated raw build
    (prepare --format=raw) with 0 and N workers; each line: steady images/s (logged windows
    after the first) and its ratio to the step alone. The first of these runs starts with an
    empty compilation cache: its first logged step is the cold start-up.
 4. startup: the first run again with the cache it filled: the warm start-up.
 5. input: the input pipeline alone, 1-16 workers (benchmarks/input_pipeline.py
    --worker_sweep), on the raw build, then on 256-px JPEG.
Extras, only when asked: --torch_compile (PyTorch with torch.compile), --accuracy
(configs/fashion_mnist.py, the d2l recipe, and the recipe proxy: minutes each).

The device needs jax (CUDA), flax, optax, orbax and, for the torch item, torch; grain,
tensorflow-datasets and the other packages its image lacks travel as wheels
(../shared/tools/device_wheels.sh; the command is in docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import gzip
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from the working tree, no install needed
sys.path.insert(0, str(REPO / "benchmarks"))

# The suite's own process (steps, layers) and each `python -m alexnet_jax.main` it starts share
# the GPU: JAX's default is to take 75% of its memory at start, so the second process would
# find too little. Each takes at most this fraction (the paper net's step at batch 512 needs a
# few GB); set before jax is imported. PyTorch's allocator takes what it needs of the rest.
GPU_MEMORY_FRACTION = "0.4"
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", GPU_MEMORY_FRACTION)

SECTIONS = ("step", "layers", "end_to_end", "startup", "input")
EXTRAS = ("torch_compile", "fashion_mnist", "proxy")
# The device time of one call (the device tool's 8-minute limit for this suite), and what the
# call spends outside the suite: installing the wheels and starting Python (docs/benchmarks.md).
CALL_S, OUTSIDE_SUITE_S = 480, 25

_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes on any backend: checks the suite runs.")
_PLAN_ONLY = flags.DEFINE_bool("plan_only", False, "Print the plan and exit.")
_BUDGET = flags.DEFINE_float("budget_s", CALL_S - OUTSIDE_SUITE_S - 10,
                             "Seconds the suite may run; items that do not fit are skipped.")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"Which of {SECTIONS} to plan.")
_TORCH_COMPILE = flags.DEFINE_bool("torch_compile", False, "Add PyTorch with torch.compile.")
_ACCURACY = flags.DEFINE_bool("accuracy", False,
                              "Add the accuracy runs (fashion_mnist, proxy): minutes each.")
_DEVICE_KIND = flags.DEFINE_enum("device_kind", "", ["", "h100", "h200", "cpu"],
                                 "Whose estimates to plan with; empty: the device found "
                                 "(--plan_only: h100, or cpu with --smoke).")
_OUT = flags.DEFINE_string("out", "", "Append the JSON lines here; default $OUT/gpu_suite.jsonl "
                           "when OUT is set.")
_HLO_DIR = flags.DEFINE_string("hlo_dir", "", "Compiled HLO and memory analyses; default "
                               "$OUT/hlo when OUT is set, else WORKDIR/hlo.")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed steps per timing (step, torch, layers).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement; the best is kept.")
_E2E_STEPS = flags.DEFINE_integer("e2e_steps", 300, "Steps of each end-to-end run.")
_WORKERS = flags.DEFINE_integer("workers", 0, "N of the end-to-end runs' 'N workers'; 0: the "
                                "host's cores less 2 (the trainer's own threads).")
_INPUT_IMAGES = flags.DEFINE_integer("input_images", 4096,
                                     "Generated images of the raw build and the input sweep.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch directory (default: a temporary one).")

BATCH, DTYPE = 512, "bfloat16"
FASHION_MNIST_MEAN = 72.9  # 0-255, the proxy's mean (benchmarks/recipe_proxy.py)
# --smoke: the command-line runs use a small single-tower model on a CPU.
SMOKE_MODEL = ["--config.model.variant=torchvision", "--config.model.image_size=65",
               "--config.model.init=torch"]
# Extra step forms to time after the generated alternatives: (model.kernels, model.group_impl)
# of the paper net, one line each, e.g. ("gpu,lrn=recompute,pool=plain", "towers").
EXTRA_STEP_FORMS: list[tuple[str, str]] = []

# Estimated seconds per item (guesses until the suite's first GPU run; from the H200 run of
# 2026-11-30: main's first logged step 55-70 s after launch with 20-28 s of compilation, the
# paper step at ~26-32k img/s). Every item's line records its measured seconds (`seconds`) and
# the `done` line sums them per item: replace these with those.
ESTIMATES = {
    "h100": {"start": 10, "step_first": 40, "step_variant": 25, "step_alternative": 10,
             "torch": 20, "layer": 2, "raw_build": 15, "e2e_cold": 70, "e2e_compile": 50,
             "e2e": 35, "startup": 35, "input_raw": 40, "input_jpeg": 60,
             "torch_compile": 120, "fashion_mnist": 240, "proxy": 180},
    # --smoke on the project's 2-core CPU machine (2026-12-06).
    "cpu": {"start": 5, "step_first": 10, "step_variant": 8, "step_alternative": 8,
            "torch": 6, "layer": 1, "raw_build": 5, "e2e_cold": 20, "e2e_compile": 15,
            "e2e": 15, "startup": 15, "input_raw": 12, "input_jpeg": 15,
            "torch_compile": 60, "fashion_mnist": 15, "proxy": 15},
}
# Host cores of the lent GPU machines (the device tool's description): N workers = cores - 2.
DEVICE_HOST_CORES = {"h100": 16, "h200": 16}
ESTIMATES["h200"] = ESTIMATES["h100"]


# --------------------------------------------------------------------------------------------
# Output


class Output:
  """JSON lines to stdout and the --out file, flushed one by one."""

  def __init__(self, path: str):
    self.path = path
    if path:
      pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)

  def emit(self, record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if self.path:
      with open(self.path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def _out_path() -> str:
  if _OUT.value:
    return _OUT.value
  return os.path.join(os.environ["OUT"], "gpu_suite.jsonl") if os.environ.get("OUT") else ""


def _hlo_dir(scratch: pathlib.Path) -> pathlib.Path:
  if _HLO_DIR.value:
    return pathlib.Path(_HLO_DIR.value)
  if os.environ.get("OUT"):
    return pathlib.Path(os.environ["OUT"]) / "hlo"
  return scratch / "hlo"


def _environment() -> dict:
  import jax
  import flax
  import optax
  info = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__,
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "num_devices": jax.device_count(), "python": platform.python_version(),
          "host_cpus": os.cpu_count(), "smoke": _SMOKE.value}
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    info["nvidia_smi"] = out.stdout.strip()
  except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
  return info


def device_kind() -> str:
  if _DEVICE_KIND.value:
    return _DEVICE_KIND.value
  if _PLAN_ONLY.value:
    return "cpu" if _SMOKE.value else "h100"
  import jax
  kind = jax.devices()[0].device_kind.lower()
  if jax.default_backend() == "cpu":
    return "cpu"
  return "h200" if "h200" in kind else "h100"


def host_cores(kind: str) -> int:
  """This host's cores; planning for a GPU machine from elsewhere (--plan_only), its."""
  if _PLAN_ONLY.value and kind in DEVICE_HOST_CORES:
    return DEVICE_HOST_CORES[kind]
  return os.cpu_count() or 1


def load_config(name: str):
  """configs/<name>.py's get_config() (configs/ is a folder of files, not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# --------------------------------------------------------------------------------------------
# The plan


@dataclasses.dataclass
class Item:
  """One step of the plan: `run()` emits its own lines; `estimate_s` on the planned device."""
  key: str
  section: str
  estimate_s: float
  run: Callable[[], None]
  needs: tuple[str, ...] = ()  # keys of items that must have succeeded first


class Suite:
  """Shared state of one run: output, scratch folder, results the later items compare with."""

  def __init__(self, out: Output, scratch: pathlib.Path, kind: str):
    self.out, self.scratch, self.kind = out, scratch, kind
    self.estimates = ESTIMATES[kind]
    self.started = time.time()
    self.done: dict[str, bool] = {}
    self.seconds: dict[str, float] = {}
    self.step_rates: dict[tuple, float] = {}  # (variant, kernels, group_impl) -> images/s
    self.step_states: dict[str, Any] = {}  # variant -> a train state to reuse
    self.programs: dict[str, str] = {}  # lowered-program fingerprint -> item key
    self.raw_dir: pathlib.Path | None = None

  def left_s(self) -> float:
    return _BUDGET.value - (time.time() - self.started)

  def emit(self, item: Item, record: dict) -> None:
    self.out.emit({"section": item.section, "item": item.key, **record})


def _batch() -> int:
  return 8 if _SMOKE.value else BATCH


def _dtype() -> str:
  return "float32" if _SMOKE.value else DTYPE


def step_alternatives(variant: str = "paper", backend: str = "gpu") -> list[tuple[str, str]]:
  """(model.kernels, model.group_impl) of each alternative to the auto form on `backend`,
  changed one at a time: every other form of each layer of `models.LAYER_FORMS` as an
  override of the auto preset (or, with models that have only presets, every other preset),
  then every other group_impl, then EXTRA_STEP_FORMS."""
  from alexnet_jax import models
  auto = models.resolve_kernels("auto", "auto", backend=backend)
  out = []
  layer_forms = getattr(models, "LAYER_FORMS", None)
  if layer_forms and hasattr(models, "layer_form_names"):
    chosen = models.layer_form_names(auto.kernels)
    for layer, forms in layer_forms.items():
      out += [(f"{auto.kernels},{layer}={form}", auto.group_impl) for form in forms
              if form != chosen.get(layer)]
  else:
    out += [(k, auto.group_impl) for k in models.KERNELS if k not in ("auto", auto.kernels)]
  if variant == "paper":  # the one-tower nets have no groups
    out += [(auto.kernels, g) for g in models.GROUP_IMPLS if g not in ("auto", auto.group_impl)]
  return out + [form for form in EXTRA_STEP_FORMS if form not in out]


def build_plan(suite: Suite) -> list[Item]:
  est = suite.estimates
  items: list[Item] = []
  add = lambda key, section, estimate, fn, needs=(): items.append(
      Item(key, section, estimate, fn, needs))
  sections = set(_SECTIONS.value)
  backend = "cpu" if suite.kind == "cpu" else "gpu"
  if "step" in sections:
    first = "torchvision" if _SMOKE.value else "paper"  # --smoke: the small net compiles fast
    add(f"step:{first}:auto", "step", est["step_first"],
        functools.partial(run_step, suite, first, "auto", "auto"))
    if not _SMOKE.value:
      add("step:torchvision:auto", "step", est["step_variant"],
          functools.partial(run_step, suite, "torchvision", "auto", "auto"))
    add("step:torch:eager", "step", est["torch"], functools.partial(run_torch, suite, False))
    alternatives = step_alternatives(first, backend)
    for kernels, group_impl in alternatives[:1] if _SMOKE.value else alternatives:
      add(f"step:{first}:{kernels}/{group_impl}", "step", est["step_alternative"],
          functools.partial(run_step, suite, first, kernels, group_impl))
  if "layers" in sections:
    for case in layer_cases(smoke=_SMOKE.value):
      add(f"layers:{case.name}", "layers", est["layer"],
          functools.partial(run_layer, suite, case))
  workers = 1 if _SMOKE.value else _WORKERS.value or max(1, host_cores(suite.kind) - 2)
  if "end_to_end" in sections:
    add("end_to_end:synthetic:workers=0", "end_to_end", est["e2e_cold"],
        functools.partial(run_main, suite, "synthetic", 0, "cold"))
    add(f"end_to_end:synthetic:workers={workers}", "end_to_end", est["e2e"],
        functools.partial(run_main, suite, "synthetic", workers, "shared"))
    add("end_to_end:raw_build", "end_to_end", est["raw_build"],
        functools.partial(make_raw_build, suite))
    add("end_to_end:raw:workers=0", "end_to_end", est["e2e_compile"],
        functools.partial(run_main, suite, "raw", 0, "shared"), ("end_to_end:raw_build",))
    add(f"end_to_end:raw:workers={workers}", "end_to_end", est["e2e"],
        functools.partial(run_main, suite, "raw", workers, "shared"), ("end_to_end:raw_build",))
  if "startup" in sections:
    add("startup:warm", "startup", est["startup"],
        functools.partial(run_main, suite, "synthetic", 0, "warm"),
        ("end_to_end:synthetic:workers=0",))
  if "input" in sections:
    add("input:raw", "input", est["input_raw"], functools.partial(run_input, suite, "raw"))
    if not _SMOKE.value:  # --smoke: the JPEG arm differs by a flag
      add("input:jpeg256", "input", est["input_jpeg"],
          functools.partial(run_input, suite, "jpeg256"))
  if _TORCH_COMPILE.value:
    add("torch_compile", "torch_compile", est["torch_compile"],
        functools.partial(run_torch, suite, True))
  if _ACCURACY.value:
    add("fashion_mnist", "fashion_mnist", est["fashion_mnist"],
        functools.partial(run_fashion_mnist, suite))
    add("proxy", "proxy", est["proxy"], functools.partial(run_proxy, suite))
  return items


def plan_record(items: list[Item], kind: str, budget_s: float, start_s: float) -> dict:
  """The plan as one JSON record: the items that fit the budget (by estimates, in priority
  order), the sum per section, and what is left out."""
  planned, left_out, total = [], [], start_s
  for item in items:
    if total + item.estimate_s <= budget_s:
      planned.append(item)
      total += item.estimate_s
    else:
      left_out.append(item)
  per_section: dict[str, float] = {}
  for item in planned:
    per_section[item.section] = per_section.get(item.section, 0) + item.estimate_s
  return {"section": "plan", "device_kind": kind, "budget_s": budget_s,
          "start_s": start_s, "planned_s": round(total, 1),
          "call_s": round(total + OUTSIDE_SUITE_S, 1), "call_limit_s": CALL_S,
          "seconds_per_section": per_section,
          "items": [[i.key, i.estimate_s] for i in planned],
          "left_out": [[i.key, i.estimate_s] for i in left_out]}


def print_plan(record: dict) -> None:
  print(f"# plan for {record['device_kind']}: {len(record['items'])} items, "
        f"~{record['planned_s']:.0f} s of the {record['budget_s']:.0f} s budget "
        f"(~{record['call_s']:.0f} s of the {record['call_limit_s']} s call with the wheels)",
        flush=True)
  for section, seconds in record["seconds_per_section"].items():
    print(f"#   {section:<14} ~{seconds:.0f} s", flush=True)
  for key, seconds in record["items"]:
    print(f"#     {key:<58} {seconds:>5.0f} s", flush=True)
  for key, seconds in record["left_out"]:
    print(f"#   left out (over budget): {key} ({seconds:.0f} s)", flush=True)


# --------------------------------------------------------------------------------------------
# 1. step


def _synthetic_config(variant: str, kernels: str = "auto", group_impl: str = "auto"):
  c = load_config("synthetic")
  c.batch_size = c.eval_batch_size = _batch()
  c.data.num_train_examples = c.data.num_eval_examples = _batch()
  c.model.variant, c.model.dtype = variant, _dtype()
  c.model.kernels, c.model.group_impl = kernels, group_impl
  if variant == "torchvision":
    c.model.image_size, c.model.init = (65 if _SMOKE.value else 224), "torch"
  return c


def _memory(compiled) -> dict | None:
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend has one
    return None
  if analysis is None:
    return None
  return {name: getattr(analysis, name) for name in dir(analysis)
          if name.endswith("_in_bytes") and isinstance(getattr(analysis, name), int)}


def _cost(compiled) -> dict | None:
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost:
    return None
  return {k: float(cost[k]) for k in ("flops", "bytes accessed") if k in cost}


def _save_hlo(suite: Suite, key: str, compiled, record: dict) -> None:
  folder = _hlo_dir(suite.scratch)
  folder.mkdir(parents=True, exist_ok=True)
  name = re.sub(r"[^A-Za-z0-9_.=-]+", "_", key)
  with gzip.open(folder / f"{name}.hlo.txt.gz", "wt", encoding="utf-8") as f:
    f.write(compiled.as_text())
  (folder / f"{name}.memory.json").write_text(json.dumps(record, indent=1))


def run_step(suite: Suite, variant: str, kernels: str, group_impl: str, item: Item) -> None:
  import step_timing
  from alexnet_jax import models

  config = _synthetic_config(variant, kernels, group_impl)
  chosen = models.resolve_kernels(kernels, group_impl)
  prepared = step_timing.lower_train_step(config, state=suite.step_states.get(variant))
  suite.step_states[variant] = prepared["state"]
  base = {"variant": variant, "batch": config.batch_size, "dtype": config.model.dtype,
          "image_size": config.model.image_size, "kernels": chosen.kernels,
          "group_impl": chosen.group_impl, "auto": kernels == "auto" and group_impl == "auto"}
  twin = suite.programs.get(prepared["fingerprint"])
  if twin is not None:  # e.g. an LRN form the fused ReLU-LRN-pool never calls
    suite.emit(item, {**base, "same_program_as": twin,
                      "images_per_sec": suite.step_rates.get(twin)})
    suite.step_rates[item.key] = suite.step_rates.get(twin)
    return
  started = time.perf_counter()
  compiled = prepared["lowered"].compile()
  compile_s = time.perf_counter() - started
  timed = step_timing.time_compiled(compiled, prepared["state"], prepared["batch"],
                                    steps=_STEPS.value, repeats=_REPEATS.value)
  suite.step_states[variant] = timed["state"]
  suite.programs[prepared["fingerprint"]] = item.key
  rate = config.batch_size / timed["seconds_per_step"]
  suite.step_rates[item.key] = rate
  if base["auto"]:
    suite.step_rates[("auto", variant)] = rate
  record = {**base, "images_per_sec": round(rate, 1),
            "step_ms": round(timed["seconds_per_step"] * 1e3, 3),
            "lower_s": round(prepared["lower_s"], 2), "compile_s": round(compile_s, 2),
            "memory": _memory(compiled), "cost": _cost(compiled)}
  auto_rate = suite.step_rates.get(("auto", variant))
  if auto_rate and not base["auto"]:
    record["over_auto"] = round(rate / auto_rate, 3)
  paper = suite.step_rates.get(("auto", "paper"))
  if variant == "torchvision" and paper:
    record["paper_auto_over_this"] = round(paper / rate, 3)
  _save_hlo(suite, item.key, compiled, record)
  suite.emit(item, record)


def run_torch(suite: Suite, compiled: bool, item: Item) -> None:
  import importlib.util
  if importlib.util.find_spec("torch") is None:  # not imported here: no CUDA context of its own
    suite.emit(item, {"skipped": "torch is not importable"})
    return
  device = "cpu" if suite.kind == "cpu" else "cuda"
  command = [sys.executable, str(REPO / "benchmarks" / "torch_reference.py"),
             f"--batch={_batch()}", f"--steps={2 if _SMOKE.value else _STEPS.value}",
             "--image_size=227", f"--device={device}", "--channels_last"]
  command += [] if _SMOKE.value else ["--bf16"]
  command += ["--compile"] if compiled else []
  result = _subprocess(suite, command)
  if result is None:
    suite.emit(item, {"timed_out": True})
    return
  if result.returncode != 0:
    suite.emit(item, {"returncode": result.returncode, "error": result.stderr[-2000:]})
    return
  record = json.loads(result.stdout.strip().splitlines()[-1])
  jax_paper = suite.step_rates.get(("auto", "paper"))
  if jax_paper and not _SMOKE.value:
    record["alexnet_jax_over_torch"] = round(jax_paper / record["images_per_sec"], 3)
  suite.emit(item, record)


# --------------------------------------------------------------------------------------------
# 2. layers


@dataclasses.dataclass(frozen=True)
class LayerCase:
  """One layer's forward + backward: fn(*inputs) at `shapes` (the first input's gradient, or
  with `grad_of`=1 the second's, e.g. conv1's kernel: the images need none)."""
  name: str
  fn: Callable
  shapes: tuple[tuple[int, ...], ...]
  grad_of: int = 0


def _layer_forms(layer: str, attribute: str) -> dict[str, Callable]:
  """{form name: function} of one layer: models.LAYER_FORMS[layer], or with models that have
  only presets, each preset's `attribute`."""
  from alexnet_jax import models
  table = getattr(models, "LAYER_FORMS", None)
  if table is not None:
    return {name: fn for name, fn in table.get(layer, {}).items() if fn is not None}
  return {k: getattr(models.kernel_forms(k), attribute) for k in models.KERNELS if k != "auto"}


def layer_cases(smoke: bool = False) -> list[LayerCase]:
  """The per-layer cases at the paper net's shapes for batch 512 (--smoke: batch 2): conv1's
  output (55x55x96, two towers) and conv2's (27x27x256), conv5's for the last pool."""
  from alexnet_jax import models
  from alexnet_jax.models import layers
  b = 2 if smoke else BATCH
  preset = models.model_preset("paper")
  lrn_kwargs = dict(size=preset["lrn_size"], k=preset["lrn_k"], alpha=preset["lrn_alpha"],
                    beta=preset["lrn_beta"],
                    alpha_divided_by_size=preset["lrn_alpha_divided_by_size"], groups=2)
  maps = {"conv1": (b, 55, 55, 96), "conv2": (b, 27, 27, 256), "conv5": (b, 13, 13, 256)}
  cases = []
  for form, fn in _layer_forms("lrn", "local_response_norm").items():
    for where in ("conv1", "conv2"):
      cases.append(LayerCase(f"lrn={form}@{where}", functools.partial(fn, **lrn_kwargs),
                             (maps[where],)))
  for form, fn in _layer_forms("pool", "max_pool").items():
    for where in ("conv1", "conv2", "conv5"):
      cases.append(LayerCase(f"pool={form}@{where}", fn, (maps[where],)))
  fused = _layer_forms("lrn_pool", "relu_lrn_max_pool")
  if fused:
    import jax
    separate = lambda z: layers.max_pool(layers.local_response_norm(jax.nn.relu(z),
                                                                    **lrn_kwargs))
    for where in ("conv1", "conv2"):
      cases.append(LayerCase(f"relu_lrn_pool=separate(plain)@{where}", separate,
                             (maps[where],)))
      for form, fn in fused.items():
        cases.append(LayerCase(f"relu_lrn_pool={form}@{where}",
                               functools.partial(fn, **lrn_kwargs), (maps[where],)))
  for channels in (3, 4, 8):  # conv1 as is, and its input zero-padded to 4 and 8 channels
    conv1 = functools.partial(layers.conv, stride=4, padding=0, groups=1)
    cases.append(LayerCase(f"conv1:channels={channels}", conv1,
                           ((b, 227, 227, channels), (11, 11, channels, 96)), grad_of=1))
  return cases


def run_layer(suite: Suite, case: LayerCase, item: Item) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np

  dtype = jnp.float32 if _SMOKE.value else jnp.bfloat16
  rng = np.random.default_rng(0)
  inputs = [jnp.asarray(rng.standard_normal(shape, np.float32), dtype) for shape in case.shapes]

  def forward_backward(*args):
    fixed = list(args)

    def of(x):
      fixed[case.grad_of] = x
      return case.fn(*fixed)
    out, vjp = jax.vjp(of, args[case.grad_of])
    return out, vjp(jnp.ones_like(out))[0]

  started = time.perf_counter()
  compiled = jax.jit(forward_backward).lower(*inputs).compile()
  compile_s = time.perf_counter() - started
  jax.block_until_ready(compiled(*inputs))
  best = float("inf")
  steps = 2 if _SMOKE.value else _STEPS.value
  for _ in range(_REPEATS.value):
    started = time.perf_counter()
    for _ in range(steps):
      result = compiled(*inputs)
    jax.block_until_ready(result)
    best = min(best, (time.perf_counter() - started) / steps)
  suite.emit(item, {"shapes": [list(s) for s in case.shapes], "dtype": jnp.dtype(dtype).name,
                    "forward_backward_ms": round(best * 1e3, 4),
                    "compile_s": round(compile_s, 2), "memory": _memory(compiled),
                    "cost": _cost(compiled)})


# --------------------------------------------------------------------------------------------
# 3, 4. end to end, start-up


def _subprocess_env() -> dict[str, str]:
  """The environment of the suite's subprocesses: the working tree importable (no install),
  and at most the suite's fraction of the GPU for JAX (the suite's process holds its own)."""
  return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
              XLA_PYTHON_CLIENT_MEM_FRACTION=os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"])


def _subprocess(suite: Suite, command: list[str], **kwargs):
  """subprocess.run, never past the budget (None when it was stopped for it)."""
  timeout = max(5.0, suite.left_s() + 10)
  try:
    return subprocess.run(command, cwd=REPO, env=_subprocess_env(), capture_output=True,
                          text=True, timeout=timeout, **kwargs)
  except subprocess.TimeoutExpired:
    return None


def _main_run(suite: Suite, workdir: pathlib.Path, config: str, overrides: list[str], *,
              cache: str) -> dict:
  """Runs python -m alexnet_jax.main; wall time, time to the first logged step, the metrics
  records, the return code (None when stopped at the budget)."""
  command = [sys.executable, "-m", "alexnet_jax.main", f"--config={REPO / 'configs' / config}",
             f"--workdir={workdir}", f"--config.compilation_cache_dir={cache}", *overrides]
  started = time.time()
  process = subprocess.Popen(command, cwd=REPO, env=_subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  # Killed at the budget's end even while it prints nothing.
  watchdog = threading.Timer(max(5.0, suite.left_s() + 10), process.kill)
  watchdog.start()
  first_step_s, lines = None, []
  for line in process.stdout:
    lines.append(line)
    if first_step_s is None and re.search(r"\] step \d+/\d+", line):
      first_step_s = time.time() - started
  returncode = process.wait()
  stopped = not watchdog.is_alive()  # it fired: the run was cut at the budget
  watchdog.cancel()
  if stopped:
    returncode = None
  metrics_path = workdir / "metrics.jsonl"
  records = ([json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
             if metrics_path.exists() else [])
  return {"returncode": returncode, "wall_s": round(time.time() - started, 1),
          "first_logged_step_s": None if first_step_s is None else round(first_step_s, 1),
          "records": records, "log_tail": "".join(lines[-15:])}


def run_main(suite: Suite, data: str, workers: int, cache: str, item: Item) -> None:
  """A main run of `e2e_steps` steps, no evaluation. data: 'synthetic' or 'raw'; cache:
  'cold' (a new compilation cache, which the warm start-up run reuses), 'warm' (that cache
  again), 'shared' (the cache of the other runs)."""
  batch = _batch()
  steps = 6 if _SMOKE.value else _E2E_STEPS.value
  overrides = [f"--config.batch_size={batch}", f"--config.eval_batch_size={batch}",
               f"--config.num_train_steps={steps}", "--config.eval_at_end=false",
               f"--config.eval_every_steps={10 * steps}",
               f"--config.log_every_steps={max(1, steps // 6)}",
               f"--config.checkpoint_every_steps={steps}",
               f"--config.data.num_workers={workers}"]
  overrides += SMOKE_MODEL if _SMOKE.value else [f"--config.model.dtype={DTYPE}",
                                                  "--config.model.image_size=227"]
  if data == "synthetic":
    overrides.append(f"--config.data.num_train_examples={batch * 16}")
    config = "synthetic.py"
  else:
    overrides.append(f"--config.data.data_dir={suite.raw_dir}")
    config = "imagenet.py"
  caches = {"cold": "cache_startup", "warm": "cache_startup", "shared": "cache"}
  cache = suite.scratch / caches[cache]
  if item.key.endswith("workers=0") and data == "synthetic":
    shutil.rmtree(cache, ignore_errors=True)  # the cold start
  workdir = suite.scratch / re.sub(r"[^A-Za-z0-9_=-]+", "_", item.key)
  shutil.rmtree(workdir, ignore_errors=True)
  run = _main_run(suite, workdir, config, overrides, cache=str(cache))
  if item.section == "end_to_end" and data == "synthetic" and workers == 0:
    # The cold run's cache serves the warm start-up; the other runs share theirs.
    shared = suite.scratch / caches["shared"]
    if not shared.exists() and cache.exists():
      shutil.copytree(cache, shared)
  rates = [r["train/images_per_sec"] for r in run["records"] if "train/images_per_sec" in r]
  steady = rates[1:] or rates
  record = {"data": data, "workers": workers, "batch": batch, "steps": steps,
            "compilation_cache": "cold" if item.key.endswith("synthetic:workers=0") else "warm",
            "returncode": run["returncode"], "wall_s": run["wall_s"],
            "first_logged_step_s": run["first_logged_step_s"],
            "images_per_sec": round(sum(steady) / len(steady), 1) if steady else None,
            "evaluations": sum(1 for r in run["records"] if "eval/top1" in r)}
  step = suite.step_rates.get(("auto", "paper"))
  if step and record["images_per_sec"] and not _SMOKE.value:
    record["over_step_alone"] = round(record["images_per_sec"] / step, 3)
  if run["returncode"] is None:
    record["timed_out"] = True
  if run["returncode"]:
    record["log_tail"] = run["log_tail"]
  suite.emit(item, record)
  if run["returncode"] != 0:
    raise RuntimeError(f"{item.key}: the run did not finish")


def make_raw_build(suite: Suite, item: Item) -> None:
  """Generated ImageNet-like photos, prepared with --format=raw (the host's cores)."""
  images = 48 if _SMOKE.value else _INPUT_IMAGES.value
  folder, data_dir = suite.scratch / "raw_folder", suite.scratch / "raw_build"
  script = suite.scratch / "make_raw_build.py"
  script.write_text(
      "import pathlib, sys; sys.path.insert(0, 'benchmarks'); import input_pipeline as ip\n"
      "if __name__ == '__main__':\n"
      f"  folder = ip.make_benchmark_dataset(pathlib.Path({str(folder)!r}), "
      f"num_images={images}, num_unique={min(images, 256)}, width=500, height=375, "
      "quality=90, num_val=64)\n"
      f"  ip.pack(str(folder), {str(data_dir)!r}, 0, storage_format='raw')\n")
  started = time.time()
  made = _subprocess(suite, [sys.executable, str(script)])
  if made is None or made.returncode:
    suite.emit(item, {"returncode": None if made is None else made.returncode,
                      "stderr_tail": "" if made is None else made.stderr[-1500:]})
    raise RuntimeError("the raw build failed")
  suite.raw_dir = data_dir
  suite.emit(item, {"images": images, "seconds": round(time.time() - started, 1)})


def run_input(suite: Suite, storage: str, item: Item) -> None:
  images = 48 if _SMOKE.value else _INPUT_IMAGES.value
  command = [str(REPO / "benchmarks" / "input_pipeline.py"), "--config=configs/imagenet.py",
             "--prefetch_batches=1", "--wait_for_idle_s=0", "--retries=0",
             f"--batch_size={16 if _SMOKE.value else 256}",
             f"--num_batches={1 if _SMOKE.value else 16}",
             "--workers=1" if _SMOKE.value else "--worker_sweep"]
  if storage == "raw" and suite.raw_dir is not None:
    command += [f"--data_dir={suite.raw_dir}", "--config.data.source=tfds"]
  elif storage == "raw":
    command += [f"--num_images={images}", "--storage=raw"]
  else:
    command += [f"--num_images={images}", f"--num_unique_images={min(images, 256)}",
                "--storage=arrayrecord", "--resize_shorter=256"]
  result = _subprocess(suite, [sys.executable, *command])
  if result is None:
    suite.emit(item, {"storage": storage, "timed_out": True})
    return
  lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
  for line in lines:
    suite.emit(item, {"storage": storage, "workers": line["workers"],
                      "images_per_sec": line["images_per_sec"],
                      "images_per_sec_per_process": line["images_per_sec_per_process"],
                      "cpu_cores_used": line["cpu_cores_used"],
                      "jpeg_decoder": line.get("jpeg_decoder")})
  if result.returncode or not lines:
    suite.emit(item, {"storage": storage, "returncode": result.returncode,
                      "stderr_tail": result.stderr[-1500:]})


# --------------------------------------------------------------------------------------------
# Extras: accuracy


def _last(records: list[dict], key: str):
  values = [r[key] for r in records if key in r]
  return values[-1] if values else None


def run_fashion_mnist(suite: Suite, item: Item) -> None:
  overrides = ["--config.data.num_workers=4"]
  if _SMOKE.value:
    overrides = ["--config.num_train_steps=2", "--config.model.image_size=65",
                 "--config.batch_size=8", "--config.eval_at_end=false",
                 "--config.data.num_workers=0"]
  run = _main_run(suite, suite.scratch / "fashion_mnist", "fashion_mnist.py", overrides,
                  cache=str(suite.scratch / "cache"))
  suite.emit(item, {"config": "configs/fashion_mnist.py", "returncode": run["returncode"],
                    "wall_s": run["wall_s"], "test_top1": _last(run["records"], "eval/top1"),
                    "test_examples": _last(run["records"], "eval/num_examples"),
                    "reference_top1": "about 0.88-0.90 (d2l)"})


def run_proxy(suite: Suite, item: Item) -> None:
  for init in ("default",) if _SMOKE.value else ("default", "paper"):
    overrides = ["--config.data.source=fashion_mnist", "--config.model.num_classes=10",
                 "--config.model.in_channels=3", "--config.data.num_workers=4",
                 f"--config.data.mean=({FASHION_MNIST_MEAN},{FASHION_MNIST_MEAN},"
                 f"{FASHION_MNIST_MEAN})", "--config.data.std=(1.,1.,1.)",
                 "--config.batch_size=64", "--config.eval_batch_size=1000",
                 "--config.num_epochs=2", "--config.schedule.name=constant",
                 "--config.log_every_steps=50", "--config.checkpoint_every_steps=100000"]
    if init != "default":
      overrides.append(f"--config.model.init={init}")
    if _SMOKE.value:
      overrides += ["--config.num_train_steps=2", "--config.batch_size=8",
                    "--config.eval_at_end=false", "--config.data.num_workers=0", *SMOKE_MODEL]
    run = _main_run(suite, suite.scratch / f"proxy_{init}", "imagenet.py", overrides,
                    cache=str(suite.scratch / "cache"))
    losses = {r["step"]: r["train/loss"] for r in run["records"] if "train/loss" in r}
    left = [s for s, loss in sorted(losses.items()) if loss < 0.95 * 2.302585]
    suite.emit(item, {"init": init, "returncode": run["returncode"], "wall_s": run["wall_s"],
                      "test_top1": _last(run["records"], "eval/top1"),
                      "steps_to_leave_chance": left[0] if left else None,
                      "loss_curve": {s: round(v, 4) for s, v in sorted(losses.items())}})


# --------------------------------------------------------------------------------------------


def main(argv):
  del argv
  unknown = sorted(set(_SECTIONS.value) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f"--sections: unknown {unknown}; choose from {SECTIONS}")
  if _SMOKE.value:
    flags.FLAGS.steps, flags.FLAGS.repeats = 2, 1
  kind = device_kind()
  scratch = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="gpu_suite_"))
  scratch.mkdir(parents=True, exist_ok=True)
  out = Output("" if _PLAN_ONLY.value else _out_path())
  suite = Suite(out, scratch, kind)
  items = build_plan(suite)
  plan = plan_record(items, kind, _BUDGET.value, suite.estimates["start"])
  out.emit(plan)
  print_plan(plan)
  if _PLAN_ONLY.value:
    return
  from alexnet_jax.runtime import logs
  logs.quiet_library_logs()  # JAX's backend probing and Orbax's chatter stay out
  out.emit({"section": "environment", **_environment()})
  for item in items:
    missing = [need for need in item.needs if not suite.done.get(need)]
    if missing:
      out.emit({"section": item.section, "item": item.key,
                "skipped": f"needs {', '.join(missing)}, which did not run or failed"})
      continue
    left = suite.left_s()
    if item.estimate_s > left:
      out.emit({"section": item.section, "item": item.key,
                "skipped": f"over budget: {left:.0f} s left, estimated {item.estimate_s:.0f} s"})
      continue
    started = time.time()
    try:
      item.run(item)
      suite.done[item.key] = True
    except Exception as e:  # noqa: BLE001 - reported; the suite goes on with the next item
      out.emit({"section": item.section, "item": item.key,
                "error": f"{type(e).__name__}: {e}"[-2000:]})
    suite.seconds[item.key] = round(time.time() - started, 1)
  out.emit({"section": "done", "seconds": round(time.time() - suite.started, 1),
            "budget_s": _BUDGET.value, "device_kind": kind,
            "seconds_per_item": suite.seconds,
            "estimated_per_item": {i.key: i.estimate_s for i in items}})
  if not _WORKDIR.value:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
