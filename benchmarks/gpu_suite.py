"""Every GPU measurement of the project in ONE command (aimed at under 8 minutes on one
H100/H200; not yet run on one: the first run's `done` line gives the time of each section, and
`--sections` splits it over two calls if it is longer).

  python benchmarks/gpu_suite.py --out=benchmarks/results/gpu_suite_h200.jsonl
  python benchmarks/gpu_suite.py --smoke          # on a CPU, in about 2 minutes: checks it runs

Prints one JSON line per measurement (also appended to --out), each with `section`, and
`images_per_sec` for throughput lines. Sections, in order (--sections to choose):
- `step`: the trainer's own jitted train step (experiment.build) on a batch already on the
  device, best of --repeats timings of --steps steps: paper and torchvision with the forms
  `auto` chooses, bfloat16 at batch 128/512/1024 and float32 at 512; and every kernel form of
  the paper net (kernels plain|cpu x group_impl towers|feature_group_count) at bf16 batch 512.
- `torch`: the same paper net in PyTorch (benchmarks/torch_reference.py), channels_last, bf16
  autocast, batch 512, eager and torch.compile, when torch with CUDA is importable.
- `end_to_end`: `python -m alexnet_jax.main` on synthetic data (bf16, batch 512) for
  --e2e_steps steps: its logged images/s against the step alone.
- `startup`: launch to the first logged step with a cold and then a warm compilation cache.
- `fashion_mnist`: configs/fashion_mnist.py (the d2l recipe, 10 epochs): test top-1, wall time.
- `proxy`: configs/imagenet.py's model and optimizer (default init, and model.init=paper) on
  Fashion-MNIST repeated to RGB at 224 for 2 epochs: does each leave chance, test top-1.
- `input`: the training input pipeline on the host's cores (benchmarks/input_pipeline.py
  --worker_sweep: 1, 2, 4, 8, 16 workers) on generated ImageNet-like photos stored as
  256-px JPEG and as raw 256x256 (prepare --format=raw): total and per-worker images/s.
- `end_to_end_raw`: `python -m alexnet_jax.main` with configs/imagenet.py on a generated raw
  build (bf16, batch 512, 227 crops, --input_workers Grain workers): logged images/s against
  the step alone.
These last two need the input stack too (grain, tensorflow-datasets, array_record,
simplejpeg), which device_wheels.sh fetches.
It needs jax (with CUDA), flax, optax, orbax and, for the torch section, torch; grain,
ml_collections and tensorboardX travel as wheels (../shared/tools/device_wheels.sh).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from the working tree, no install needed

SECTIONS = ("step", "torch", "end_to_end", "startup", "fashion_mnist", "proxy", "input",
            "end_to_end_raw")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes on any backend: checks the suite runs.")
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"Which of {SECTIONS}.")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per measurement (step section).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timings per measurement; the best is kept.")
_E2E_STEPS = flags.DEFINE_integer("e2e_steps", 600, "Steps of the end-to-end main run.")
_WORKDIR = flags.DEFINE_string("workdir", "", "Scratch directory (default: a temporary one).")
_INPUT_IMAGES = flags.DEFINE_integer("input_images", 4096,
                                     "Generated images for the input and end_to_end_raw sections.")
_INPUT_WORKERS = flags.DEFINE_integer("input_workers", 0,
                                      "Grain workers of end_to_end_raw; 0: the host's cores.")

FASHION_MNIST_MEAN = 72.9  # 0-255, the proxy's mean (benchmarks/recipe_proxy.py)
# --smoke: the command-line runs use a small single-tower model, so the suite checks its own
# plumbing on a CPU in about a minute.
SMOKE_MODEL = ["--config.model.variant=torchvision", "--config.model.image_size=65",
               "--config.model.init=torch"]


def _emit(record: dict) -> None:
  line = json.dumps(record)
  print(line, flush=True)
  if _OUT.value:
    with open(_OUT.value, "a", encoding="utf-8") as f:
      f.write(line + "\n")


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


def load_config(name: str):
  """configs/<name>.py's get_config() (configs/ is a folder of files, not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# --------------------------------------------------------------------------------------------
# step


def _synthetic_config(variant: str, batch: int, dtype: str, kernels: str = "auto",
                      group_impl: str = "auto"):
  c = load_config("synthetic")
  c.batch_size = c.eval_batch_size = batch
  c.data.num_train_examples = c.data.num_eval_examples = batch
  c.model.variant = variant
  c.model.dtype = dtype
  c.model.kernels, c.model.group_impl = kernels, group_impl
  if variant == "torchvision":
    c.model.image_size, c.model.init = 224, "torch"
  if _SMOKE.value:
    c.model.image_size = 227 if variant == "paper" else 65
  return c


def time_step(config) -> dict:
  """images/s of the trainer's own train step on one batch kept on the device."""
  import step_timing

  timed = step_timing.time_train_step(config, steps=_STEPS.value, repeats=_REPEATS.value)
  exp, best = timed["exp"], timed["seconds_per_step"]
  return {"variant": config.model.variant, "batch": config.batch_size,
          "dtype": config.model.dtype, "image_size": config.model.image_size,
          "kernels": exp.kernels.kernels, "group_impl": exp.kernels.group_impl,
          "chosen_by_auto": config.model.kernels == "auto" and config.model.group_impl == "auto",
          "images_per_sec": round(config.batch_size / best, 1),
          "step_ms": round(best * 1e3, 3), "first_step_s": round(timed["first_step_s"], 2)}


def section_step() -> list[dict]:
  """Times every planned (variant, batch, dtype, kernels, group_impl) once."""
  from alexnet_jax import models

  if _SMOKE.value:
    plan = [("torchvision", 8, "float32", "auto", "auto"),
            ("torchvision", 8, "float32", "plain", "auto")]
  else:
    plan = [(v, b, "bfloat16", "auto", "auto") for v in ("paper", "torchvision")
            for b in (128, 512, 1024)]
    plan += [(v, 512, "float32", "auto", "auto") for v in ("paper", "torchvision")]
    plan += [("paper", 512, "bfloat16", k, g) for k in ("plain", "cpu")
             for g in ("towers", "feature_group_count")]
  out = []
  for variant, batch, dtype, kernels, group_impl in plan:
    config = _synthetic_config(variant, batch, dtype, kernels, group_impl)
    chosen = models.resolve_kernels(kernels, group_impl)
    twin = [r for r in out if (r["variant"], r["batch"], r["dtype"], r["kernels"],
                               r["group_impl"]) == (variant, batch, dtype, chosen.kernels,
                                                    chosen.group_impl)]
    if twin:  # the form `auto` chose was already timed: one compile less
      record = dict(twin[0], chosen_by_auto=kernels == "auto" and group_impl == "auto",
                    same_as_auto=True)
    else:
      record = {"section": "step", **time_step(config)}
    _emit(record)
    out.append(record)
  return out


# --------------------------------------------------------------------------------------------
# torch


def section_torch(steps: list[dict]) -> None:
  try:
    import torch
  except ImportError:
    _emit({"section": "torch", "skipped": "torch is not importable"})
    return
  device = "cuda" if torch.cuda.is_available() else "cpu"
  batch = 8 if _SMOKE.value else 512
  jax_paper = [s for s in steps if s["variant"] == "paper" and s["chosen_by_auto"]
               and s["batch"] == batch and s["dtype"] == "bfloat16"]
  for compiled in ((False,) if _SMOKE.value else (False, True)):
    command = [sys.executable, str(REPO / "benchmarks" / "torch_reference.py"),
               f"--batch={batch}", f"--steps={2 if _SMOKE.value else _STEPS.value}",
               "--image_size=227", f"--device={device}", "--channels_last"]
    command += [] if _SMOKE.value else ["--bf16"]
    command += ["--compile"] if compiled else []
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
      _emit({"section": "torch", "compile": compiled, "error": result.stderr[-2000:]})
      continue
    record = {"section": "torch", **json.loads(result.stdout.strip().splitlines()[-1])}
    if jax_paper:
      record["alexnet_jax_over_torch"] = round(
          jax_paper[0]["images_per_sec"] / record["images_per_sec"], 3)
    _emit(record)


# --------------------------------------------------------------------------------------------
# runs of the command line


def _subprocess_env() -> dict[str, str]:
  """The environment of the suite's subprocesses: the working tree importable (no install)."""
  return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _main_run(workdir: pathlib.Path, config: str, overrides: list[str], *, cache: str,
              timeout: int = 900) -> dict:
  """Runs python -m alexnet_jax.main; returns wall time, time to the first logged step, the
  metrics records and the return code."""
  command = [sys.executable, "-m", "alexnet_jax.main", f"--config={REPO / 'configs' / config}",
             f"--workdir={workdir}", f"--config.compilation_cache_dir={cache}", *overrides]
  env = _subprocess_env()
  started = time.time()
  process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  first_step_s = None
  lines = []
  for line in process.stdout:
    lines.append(line)
    if first_step_s is None and re.search(r"\] step \d+/\d+", line):
      first_step_s = time.time() - started
  process.wait(timeout=timeout)
  metrics_path = workdir / "metrics.jsonl"
  records = ([json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
             if metrics_path.exists() else [])
  return {"returncode": process.returncode, "wall_s": round(time.time() - started, 1),
          "first_logged_step_s": None if first_step_s is None else round(first_step_s, 1),
          "records": records, "log_tail": "".join(lines[-15:])}


def _shared_cache(scratch: pathlib.Path) -> str:
  """The compilation cache of every run but the start-up section's (which needs its own, cold
  one): a run that compiles what an earlier one did skips XLA. Only first-step times change
  (the throughputs are taken after the first logged window); --smoke took 100-104 s instead of
  113 s on the 2-core VM (2026-11-30)."""
  return str(scratch / "cache")


def _last(records: list[dict], key: str):
  values = [r[key] for r in records if key in r]
  return values[-1] if values else None


def section_end_to_end(scratch: pathlib.Path, steps: list[dict]) -> None:
  batch = 8 if _SMOKE.value else 512
  num_steps = 6 if _SMOKE.value else _E2E_STEPS.value
  overrides = [f"--config.batch_size={batch}", f"--config.eval_batch_size={batch}",
               f"--config.num_train_steps={num_steps}", "--config.eval_at_end=false",
               f"--config.data.num_train_examples={batch * 16}",
               f"--config.log_every_steps={max(1, num_steps // 6)}",
               f"--config.checkpoint_every_steps={num_steps}", "--config.data.num_workers=0"]
  overrides += SMOKE_MODEL if _SMOKE.value else ["--config.model.dtype=bfloat16",
                                                  "--config.model.image_size=227"]
  run = _main_run(scratch / "e2e", "synthetic.py", overrides, cache=_shared_cache(scratch))
  _emit_end_to_end("end_to_end", run, batch, num_steps, steps)


def _emit_end_to_end(section: str, run: dict, batch: int, num_steps: int, steps: list[dict],
                     **extra) -> None:
  """One record: the run's steady images/s (logged windows after the first, which includes
  the run-up) and its ratio to the paper step at the same batch from the step section."""
  rates = [r["train/images_per_sec"] for r in run["records"] if "train/images_per_sec" in r]
  steady = rates[1:] or rates
  record = {"section": section, "batch": batch, "steps": num_steps, **extra,
            "returncode": run["returncode"],
            "images_per_sec": round(sum(steady) / len(steady), 1) if steady else None}
  step = [s for s in steps if s["variant"] == "paper" and s["chosen_by_auto"]
          and s["batch"] == batch and not _SMOKE.value]
  if step and record["images_per_sec"]:
    record["over_step_alone"] = round(record["images_per_sec"] / step[0]["images_per_sec"], 3)
  if run["returncode"]:
    record["log_tail"] = run["log_tail"]
  _emit(record)


def section_startup(scratch: pathlib.Path) -> None:
  cache = scratch / "cache_startup"
  shutil.rmtree(cache, ignore_errors=True)
  batch = 8 if _SMOKE.value else 512
  overrides = [f"--config.batch_size={batch}", f"--config.eval_batch_size={batch}",
               "--config.num_train_steps=2", "--config.log_every_steps=1",
               f"--config.data.num_train_examples={batch * 2}",
               f"--config.data.num_eval_examples={batch}", "--config.data.num_workers=0"]
  overrides += SMOKE_MODEL if _SMOKE.value else ["--config.model.dtype=bfloat16"]
  for which in ("cold", "warm"):
    run = _main_run(scratch / f"startup_{which}", "synthetic.py", overrides, cache=str(cache))
    _emit({"section": "startup", "cache": which, "returncode": run["returncode"],
           "first_logged_step_s": run["first_logged_step_s"], "wall_s": run["wall_s"]})


def section_fashion_mnist(scratch: pathlib.Path) -> None:
  overrides = ["--config.data.num_workers=4"]
  if _SMOKE.value:
    overrides = ["--config.num_train_steps=2", "--config.model.image_size=65",
                 "--config.batch_size=8", "--config.eval_at_end=false",
                 "--config.data.num_workers=0"]
  run = _main_run(scratch / "fashion_mnist", "fashion_mnist.py", overrides,
                  cache=_shared_cache(scratch))
  _emit({"section": "fashion_mnist", "config": "configs/fashion_mnist.py",
         "returncode": run["returncode"], "wall_s": run["wall_s"],
         "test_top1": _last(run["records"], "eval/top1"),
         "test_examples": _last(run["records"], "eval/num_examples"),
         "reference_top1": "about 0.88-0.90 (d2l)"})


def section_proxy(scratch: pathlib.Path) -> None:
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
    if _SMOKE.value:  # the plumbing only: a small single-tower model
      overrides += ["--config.num_train_steps=2", "--config.batch_size=8",
                    "--config.eval_at_end=false", "--config.data.num_workers=0", *SMOKE_MODEL]
    run = _main_run(scratch / f"proxy_{init}", "imagenet.py", overrides,
                    cache=_shared_cache(scratch))
    losses = {r["step"]: r["train/loss"] for r in run["records"] if "train/loss" in r}
    left = [s for s, loss in sorted(losses.items()) if loss < 0.95 * 2.302585]
    _emit({"section": "proxy", "init": init, "returncode": run["returncode"],
           "wall_s": run["wall_s"], "test_top1": _last(run["records"], "eval/top1"),
           "steps_to_leave_chance": left[0] if left else None,
           "loss_curve": {s: round(v, 4) for s, v in sorted(losses.items())}})


def _benchmark_lines(command: list[str], timeout: int = 900) -> tuple[list[dict], int, str]:
  """(JSON lines printed, return code, stderr tail) of a benchmarks/ script run."""
  env = _subprocess_env()
  run = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=timeout)
  lines = [json.loads(x) for x in run.stdout.splitlines() if x.startswith("{")]
  return lines, run.returncode, run.stderr[-1500:]


def section_input(scratch: pathlib.Path) -> None:
  images = 48 if _SMOKE.value else _INPUT_IMAGES.value
  common = ["benchmarks/input_pipeline.py", "--config=configs/imagenet.py",
            f"--num_images={images}", f"--num_unique_images={min(images, 256)}",
            "--prefetch_batches=1", "--wait_for_idle_s=0", "--retries=0",
            f"--batch_size={16 if _SMOKE.value else 256}",
            f"--num_batches={1 if _SMOKE.value else 16}",
            "--workers=1" if _SMOKE.value else "--worker_sweep"]
  # --smoke: raw only (the JPEG arm differs by a flag), to keep the test suite short.
  for storage in ("raw",) if _SMOKE.value else ("arrayrecord", "raw"):
    extra = ["--storage=raw"] if storage == "raw" else ["--storage=arrayrecord",
                                                         "--resize_shorter=256"]
    lines, returncode, tail = _benchmark_lines(common + extra)
    for line in lines:
      _emit({"section": "input", "storage": "raw256" if storage == "raw" else "jpeg256",
             "workers": line["workers"], "images_per_sec": line["images_per_sec"],
             "images_per_sec_per_process": line["images_per_sec_per_process"],
             "cpu_cores_used": line["cpu_cores_used"], "jpeg_decoder": line.get("jpeg_decoder")})
    if returncode or not lines:
      _emit({"section": "input", "storage": storage, "returncode": returncode,
             "stderr_tail": tail})


def section_end_to_end_raw(scratch: pathlib.Path, steps: list[dict]) -> None:
  images = 48 if _SMOKE.value else _INPUT_IMAGES.value
  folder, data_dir = scratch / "raw_folder", scratch / "raw_build"
  # One process generates the photos and prepares the raw build (input_pipeline.pack, i.e.
  # prepare --format=raw with the host's cores).
  make = ("import pathlib, sys; sys.path.insert(0, 'benchmarks'); import input_pipeline as ip\n"
          "if __name__ == '__main__':\n"
          f"  folder = ip.make_benchmark_dataset(pathlib.Path({str(folder)!r}), "
          f"num_images={images}, num_unique={min(images, 256)}, width=500, height=375, "
          "quality=90, num_val=64)\n"
          f"  ip.pack(str(folder), {str(data_dir)!r}, 0, storage_format='raw')\n")
  env = _subprocess_env()
  scratch.mkdir(parents=True, exist_ok=True)
  script = scratch / "make_raw_build.py"
  script.write_text(make)
  made = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, timeout=900,
                        capture_output=True, text=True)
  if made.returncode:  # reported, and the suite goes on to its next section
    _emit({"section": "end_to_end_raw", "returncode": made.returncode,
           "stderr_tail": made.stderr[-1500:]})
    return
  batch = 8 if _SMOKE.value else 512
  num_steps = 6 if _SMOKE.value else 300
  workers = 0 if _SMOKE.value else _INPUT_WORKERS.value or os.cpu_count() or 1
  overrides = [f"--config.data.data_dir={data_dir}", f"--config.batch_size={batch}",
               f"--config.eval_batch_size={batch}", f"--config.num_train_steps={num_steps}",
               "--config.eval_at_end=false", f"--config.eval_every_steps={10 * num_steps}",
               f"--config.log_every_steps={max(1, num_steps // 6)}",
               f"--config.checkpoint_every_steps={num_steps}",
               f"--config.data.num_workers={workers}"]
  overrides += SMOKE_MODEL if _SMOKE.value else ["--config.model.dtype=bfloat16",
                                                  "--config.model.image_size=227"]
  run = _main_run(scratch / "e2e_raw", "imagenet.py", overrides,
                  cache=_shared_cache(scratch))
  _emit_end_to_end("end_to_end_raw", run, batch, num_steps, steps, workers=workers)


def main(argv):
  del argv
  unknown = sorted(set(_SECTIONS.value) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f"--sections: unknown {unknown}; choose from {SECTIONS}")
  if _SMOKE.value:
    flags.FLAGS.steps, flags.FLAGS.repeats = 2, 1
  from alexnet_jax.runtime import logs
  logs.quiet_library_logs()  # JAX's backend probing and Orbax's chatter stay out
  _emit({"section": "environment", **_environment()})
  scratch = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix="gpu_suite_"))
  started = time.time()
  seconds = {}

  def timed(name, fn, *args):
    section_start = time.time()
    result = fn(*args)
    seconds[name] = round(time.time() - section_start, 1)
    return result

  steps = timed("step", section_step) if "step" in _SECTIONS.value else []
  if "torch" in _SECTIONS.value:
    timed("torch", section_torch, steps)
  if "end_to_end" in _SECTIONS.value:
    timed("end_to_end", section_end_to_end, scratch, steps)
  if "startup" in _SECTIONS.value:
    timed("startup", section_startup, scratch)
  if "fashion_mnist" in _SECTIONS.value:
    timed("fashion_mnist", section_fashion_mnist, scratch)
  if "proxy" in _SECTIONS.value:
    timed("proxy", section_proxy, scratch)
  if "input" in _SECTIONS.value:
    timed("input", section_input, scratch)
  if "end_to_end_raw" in _SECTIONS.value:
    timed("end_to_end_raw", section_end_to_end_raw, scratch, steps)
  _emit({"section": "done", "seconds": round(time.time() - started, 1),
         "seconds_per_section": seconds})
  if not _WORKDIR.value:
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
