"""Batch assembly, old code path against new, side by side in one run (issue 21, item 4).

  python benchmarks/batch_assembly.py --baseline=88c1275 [--photos_dir=DIR] [--rounds=6]

In-process cases (`synthetic`, `fashion_mnist`, `raw`, `raw_eval`): the split the trainer
opens (`alexnet_jax.data.open_split` with configs/synthetic.py, fashion_mnist.py, imagenet.py),
its batches loaded in the calling thread by the pipeline of the baseline commit (its
`alexnet_jax/data/pipeline.py`, read with `git show`, loaded beside the current one: one
example at a time, a fresh array per batch) and by the current one, alternating batch by
batch, both timed in CPU seconds of this thread (images per CPU second = the per-thread rate
of a trainer with num_workers=0). Every batch of the two is compared: the line says whether
all were identical. Each round alternates which side goes first.

`trainer` case: benchmarks/input_pipeline.py --workers=0 on the raw build (the trainer's
process with the config's loader threads, batch 128): images per busy core, the baseline's tree
(`git archive`) and the working tree alternating run by run, each in its own process.

This process keeps glibc's default allocator settings, as a GPU trainer's does (pass
--keep_freed_memory for a Grain worker's), and freezes garbage collection as `loading.loaded`
does. Prints one JSON line per case (also appended to --out) with the ranges over rounds, the
load average before and after, and the machine.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CASES = ("synthetic", "fashion_mnist", "raw", "raw_eval", "trainer")
_BASELINE = flags.DEFINE_string("baseline", "88c1275",
                                "Commit whose pipeline is the old code path.")
_CASES = flags.DEFINE_list("cases", list(CASES), f"Which of {CASES}.")
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Rounds per case (each: --batches of each side).")
_BATCHES = flags.DEFINE_integer("batches", 4, "Batches per side per round.")
_SYNTHETIC_BATCH = flags.DEFINE_integer("synthetic_batch", 512, "Batch of the synthetic case.")
_RAW_BATCH = flags.DEFINE_integer("raw_batch", 128, "Batch of the raw cases.")
_RAW_DIR = flags.DEFINE_string("raw_dir", "", "A raw build (prepare --format=raw) to read; "
                               "empty: made here from --photos_dir or generated images.")
_PHOTOS_DIR = flags.DEFINE_string("photos_dir", "", "Real photographs to cut the raw build "
                                  "from (input_pipeline.make_photo_dataset).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 181, "Images in the raw build made here.")
_TRAINER_RUNS = flags.DEFINE_integer("trainer_runs", 3, "Runs per side of the trainer case.")
_TRAINER_BATCHES = flags.DEFINE_integer("trainer_batches", 150, "Timed batches per trainer run.")
_KEEP_FREED = flags.DEFINE_bool("keep_freed_memory", False,
                                "Set glibc to keep freed memory, as a Grain worker does.")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
_NOTE = flags.DEFINE_string("note", "", "Free text stored in each line.")


def emit(line: dict) -> None:
  text = json.dumps(line)
  print(text, flush=True)
  if _OUT.value:
    with open(_OUT.value, "a", encoding="utf-8") as f:
      f.write(text + "\n")


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(f"config_{name}", REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def old_pipeline(commit: str):
  """The baseline's data/pipeline.py as a module of its own (`old_pipeline`), its imports
  resolved against the current package (batch_slots, errors, host_memory: unchanged)."""
  text = subprocess.run(["git", "show", f"{commit}:alexnet_jax/data/pipeline.py"], cwd=REPO,
                        check=True, capture_output=True, text=True).stdout
  path = pathlib.Path(tempfile.mkdtemp(prefix="old_pipeline_")) / "old_pipeline.py"
  path.write_text(text)
  spec = importlib.util.spec_from_file_location("old_pipeline", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["old_pipeline"] = module
  spec.loader.exec_module(module)
  return module


def _identical(a: dict, b: dict) -> bool:
  if sorted(a) != sorted(b):
    return False
  for key in a:
    x, y = np.asarray(a[key]), np.asarray(b[key])
    if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
      return False
  return True


def alternate(old_ds, new_ds, batch: int, first_batch: int = 0) -> dict:
  """Old and new batches alternating, timed in this thread's CPU seconds; ranges over rounds."""
  for k in range(2):  # warm-up: pools, caches, the first arrays
    old_ds[first_batch + k], new_ds[first_batch + k]
  rates = {"old": [], "new": []}
  identical = True
  k = first_batch + 2
  for round_index in range(_ROUNDS.value):
    spent = {"old": 0.0, "new": 0.0}
    order = ("old", "new") if round_index % 2 == 0 else ("new", "old")
    for _ in range(_BATCHES.value):
      got = {}
      for side in order:
        started = time.thread_time()
        got[side] = (old_ds if side == "old" else new_ds)[k]
        spent[side] += time.thread_time() - started
      identical &= _identical(got["old"], got["new"])
      del got  # the batch is used and dropped, as the trainer does after its transfer
      k += 1
    for side in rates:
      rates[side].append(batch * _BATCHES.value / spent[side])
  ratios = [n / o for n, o in zip(rates["new"], rates["old"])]
  span = lambda values: [round(min(values)), round(max(values))]
  return {"old_images_per_cpu_second": span(rates["old"]),
          "new_images_per_cpu_second": span(rates["new"]),
          "ratio_new_over_old": [round(min(ratios), 2), round(max(ratios), 2)],
          "median_ratio": round(float(np.median(ratios)), 2),
          "rounds": _ROUNDS.value, "batches_per_side_per_round": _BATCHES.value,
          "batches_identical": bool(identical)}


def copy_floor(images: np.ndarray) -> dict:
  """The images per CPU second of one contiguous copy of a whole batch's images into an array
  written before (memcpy of the same bytes, no page faults): what any path that writes the
  batch can reach at most on this machine."""
  source, target = np.array(images), np.empty_like(images)
  target[...] = 0
  rates = []
  for _ in range(_ROUNDS.value):
    started = time.thread_time()
    for _ in range(_BATCHES.value):
      np.copyto(target, source)
    rates.append(len(images) * _BATCHES.value / (time.thread_time() - started))
  return {"batch_memcpy_images_per_cpu_second": [round(min(rates)), round(max(rates))]}


def machine() -> dict:
  cpu = "?"
  for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
    if line.startswith("model name"):
      cpu = line.split(":", 1)[1].strip()
      break
  return {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
          "numpy": np.__version__}


def load() -> list[float]:
  return [round(x, 2) for x in os.getloadavg()]


def raw_build(tmp: pathlib.Path) -> str:
  """--raw_dir, or a raw build made in a subprocess (input_pipeline.py defines flags of its
  own) from --photos_dir, else from generated photo-like images."""
  if _RAW_DIR.value:
    return _RAW_DIR.value
  folder, out = tmp / "folder", tmp / "raw"
  if _PHOTOS_DIR.value:
    make = (f"ip.make_photo_dataset(pathlib.Path({str(folder)!r}), {_PHOTOS_DIR.value!r}, "
            f"num_images={_NUM_IMAGES.value}, quality=90)")
  else:
    make = (f"ip.make_benchmark_dataset(pathlib.Path({str(folder)!r}), "
            f"num_images={_NUM_IMAGES.value}, num_unique={min(_NUM_IMAGES.value, 64)}, "
            "width=500, height=375, quality=90)")
  script = ("import pathlib, sys\n"
            f"sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import input_pipeline as ip\n"
            "if __name__ == '__main__':\n"
            f"  ip.pack(str({make}), {str(out)!r}, 0, storage_format='raw')\n")
  (tmp / "make_raw.py").write_text(script)
  subprocess.run([sys.executable, str(tmp / "make_raw.py")], cwd=REPO, check=True)
  return str(out)


def in_process(case: str, old, raw_dir: str | None) -> dict:
  from alexnet_jax import data as data_lib
  from alexnet_jax.data import pipeline
  if case == "synthetic":
    config = load_config("synthetic")
    config.batch_size = _SYNTHETIC_BATCH.value
    config.data.num_train_examples = 100 * config.batch_size
  elif case == "fashion_mnist":
    config = load_config("fashion_mnist")
  else:
    config = load_config("imagenet")
    config.data.source, config.data.data_dir = "tfds", raw_dir
    config.batch_size = config.eval_batch_size = _RAW_BATCH.value
  split = data_lib.open_split(config, "train")
  if case == "raw_eval":
    # The eval transform (central crop) over the train split's records: a split as large as
    # a training one, so no batch is mostly padding.
    transform = data_lib.open_split(config, "eval").transform
    make = lambda p: p.eval_dataset(split.source, transform,
                                    global_batch_size=config.eval_batch_size)
    count = len(make(pipeline))
    cycle = lambda ds: type("Cycle", (), {"__getitem__": lambda self, k: ds[k % count]})()
    old_ds, new_ds = cycle(make(old)), cycle(make(pipeline))
  else:
    transform = split.transform
    make = lambda p: p.train_dataset(split.source, split.transform, seed=config.seed,
                                     global_batch_size=config.batch_size)
    old_ds, new_ds = make(old), make(pipeline)
  batch = config.eval_batch_size if case == "raw_eval" else config.batch_size
  before = load()
  result = alternate(old_ds, new_ds, batch)
  floor = copy_floor(new_ds[0]["image"]) if case == "synthetic" else {}
  return {"case": case, "batch": batch, "image_shape": list(np.shape(new_ds[0]["image"])[1:]),
          "transform": type(transform).__name__, **result, **floor,
          "load_before": before, "load_after": load()}


def trainer_case(raw_dir: str, tmp: pathlib.Path) -> dict:
  """input_pipeline.py --workers=0 from the baseline's tree and the working tree, alternating."""
  old_tree = tmp / "old_tree"
  old_tree.mkdir()
  archive = subprocess.run(["git", "archive", _BASELINE.value, "alexnet_jax", "benchmarks",
                            "configs"], cwd=REPO, check=True, capture_output=True).stdout
  subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True)
  per_core = {"old": [], "new": []}
  cores = {"old": [], "new": []}
  before = load()
  for run in range(_TRAINER_RUNS.value):
    for side in (("old", "new") if run % 2 == 0 else ("new", "old")):
      root = old_tree if side == "old" else REPO
      command = [sys.executable, str(root / "benchmarks" / "input_pipeline.py"),
                 f"--config={root / 'configs' / 'imagenet.py'}", f"--data_dir={raw_dir}",
                 "--config.data.source=tfds", "--workers=0",
                 f"--batch_size={_RAW_BATCH.value}",
                 f"--num_batches={_TRAINER_BATCHES.value}", "--wait_for_idle_s=0",
                 "--retries=0"]
      out = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=900)
      lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
      if out.returncode or not lines:
        raise RuntimeError(f"{side}: {out.stderr[-2000:]}")
      per_core[side].append(lines[-1]["images_per_sec_per_busy_core"])
      cores[side].append(lines[-1]["cpu_cores_used"])
  span = lambda values: [round(min(values)), round(max(values))]
  return {"case": "trainer", "batch": _RAW_BATCH.value, "workers": 0,
          "old_images_per_busy_core": span(per_core["old"]),
          "new_images_per_busy_core": span(per_core["new"]),
          "old_cores_used": [min(cores["old"]), max(cores["old"])],
          "new_cores_used": [min(cores["new"]), max(cores["new"])],
          "runs_per_side": _TRAINER_RUNS.value, "target_images_per_busy_core": 10_000,
          "load_before": before, "load_after": load()}


def main(argv) -> None:
  del argv
  unknown = sorted(set(_CASES.value) - set(CASES))
  if unknown:
    raise app.UsageError(f"--cases: unknown {unknown}; choose from {CASES}")
  if _KEEP_FREED.value:
    from alexnet_jax.runtime import host_memory
    host_memory.keep_freed_memory()
  from alexnet_jax.data import loading
  old = old_pipeline(_BASELINE.value)
  loading.freeze_gc()
  common = {"benchmark": "batch_assembly", "date": datetime.date.today().isoformat(),
            "baseline": _BASELINE.value, "keep_freed_memory": _KEEP_FREED.value,
            "note": _NOTE.value, "machine": machine()}
  with tempfile.TemporaryDirectory(prefix="batch_assembly_") as tmp:
    tmp = pathlib.Path(tmp)
    raw_dir = None
    if {"raw", "raw_eval", "trainer"} & set(_CASES.value):
      raw_dir = raw_build(tmp)
      common["raw"] = {"data_dir": _RAW_DIR.value or "made here",
                       "photos_dir": _PHOTOS_DIR.value, "num_images": _NUM_IMAGES.value}
    for case in _CASES.value:
      if case == "trainer":
        emit({**trainer_case(raw_dir, tmp), **common})
      else:
        emit({**in_process(case, old, raw_dir), **common})


if __name__ == "__main__":
  app.run(main)
