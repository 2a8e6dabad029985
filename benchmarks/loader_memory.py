"""Unique memory of the trainer and of each Grain loader process: a full-size folder index
(ImageNet's 1,281,167 training files) next to a small one, same config otherwise.

  python benchmarks/loader_memory.py --old_commit=main --repeats=2 \
      --out=benchmarks/results/loader_memory_cpu_DATE.jsonl

Each measurement is a fresh process (a "trainer") that lists `data.source=folder` at
`--index_dir` (full) or `--small_index_dir` (small), starts `data.train_batches` with
`--workers` Grain workers on a CPU mesh, at a step two batches before the end of the first
epoch (so every worker also crosses an epoch boundary: both epochs' permutations are made),
takes `--batches` batches, and then reads `psutil.Process.memory_full_info()` of itself and
of each worker: USS (pages only that process maps), PSS (shared pages divided among their
processes) and RSS, in MB (10^6 bytes). Also: the pickled sizes of the source and of the
training dataset (what Grain sends each worker), and, per process, its own pages by kind of
mapping and its share of the mapped index (mappings named `alexnet_jax_index`, none before
the change), from /proc/PID/smaps.

The two indexes are made of hard links (benchmarks/folder_index.py): they cost no disk
to speak of. With `--old_commit` each measurement also runs on that commit's tree (a
`git worktree` under /tmp), alternating, so before and after are side by side on one machine
at one load. One JSON line per measurement, then one per (tree, index) with the means, then
the differences full - small.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
if not any(arg.startswith("--measure") for arg in sys.argv):  # a measurement imports its tree
  sys.path.insert(0, str(REPO))

_FILES = flags.DEFINE_integer("files", 1_281_167, "Training images in the full index.")
_SMALL = flags.DEFINE_integer("small_files", 10_000, "Training images in the small index.")
_INDEX = flags.DEFINE_string("index_dir", "/tmp/alexnet_jax_startup_index",
                             "Where the full index is made (shared with startup.py).")
_SMALL_INDEX = flags.DEFINE_string("small_index_dir", "/tmp/alexnet_jax_small_index",
                                   "Where the small index is made.")
_OLD = flags.DEFINE_string("old_commit", None, "Also measure this commit's tree.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Measurements per (tree, index), alternating.")
_WORKERS = flags.DEFINE_integer("workers", 2, "data.num_workers.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Global batch size.")
_BATCHES = flags.DEFINE_integer("batches", 12, "Batches taken before measuring.")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
_MEASURE = flags.DEFINE_string("measure", None, "(internal) measure this index in this process.")

MB = 1e6
INDEX_MAPPING = "alexnet_jax_index"


def _smaps(pid: int) -> dict[str, float]:
  """From /proc/PID/smaps, in MB: `private_<kind>`, the process's own pages by kind of
  mapping (anon: the heap and anonymous mappings; index: the shared index file; shm:
  /dev/shm and other shared memory, the batch slots; files: everything else, the libraries),
  and `index_rss`, `index_pss` of its mappings of the index."""
  totals = {key: 0 for key in ("private_anon", "private_index", "private_shm",
                               "private_files", "index_rss", "index_pss")}
  kind = "anon"
  try:
    with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
      for line in f:
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's header: address range, ..., path
          path = fields[5] if len(fields) > 5 else ""
          kind = ("index" if INDEX_MAPPING in line else
                  "anon" if path in ("", "[heap]", "[stack]") else
                  "shm" if path.startswith(("/dev/shm", "/SYSV", "/memfd:")) else "files")
        elif fields[0] in ("Private_Clean:", "Private_Dirty:"):
          totals[f"private_{kind}"] += int(fields[1]) * 1024
        elif kind == "index" and fields[0] in ("Rss:", "Pss:"):
          totals[f"index_{fields[0][:-1].lower()}"] += int(fields[1]) * 1024
  except OSError:
    pass
  return {key: round(value / MB, 1) for key, value in totals.items()}


def _memory(process) -> dict:
  info = process.memory_full_info()
  return {"pid": process.pid, "uss_mb": round(info.uss / MB, 1),
          "pss_mb": round(info.pss / MB, 1), "rss_mb": round(info.rss / MB, 1),
          "smaps_mb": _smaps(process.pid)}


def _grain_workers(trainer) -> list:
  workers = []
  for child in trainer.children(recursive=True):
    try:
      command = " ".join(child.cmdline())
    except Exception:  # noqa: BLE001 - gone
      continue
    if "spawn_main" in command and "resource_tracker" not in command:
      workers.append(child)
  return workers


def measure(index_dir: str) -> dict:
  """One trainer on `index_dir`: its memory and its workers' after `--batches` batches."""
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import importlib.util

  import cloudpickle
  import jax
  import psutil

  from alexnet_jax import data as data_lib
  from alexnet_jax import sharding
  from alexnet_jax.data import pipeline

  spec = importlib.util.spec_from_file_location("imagenet_config",
                                                pathlib.Path.cwd() / "configs" / "imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.source = "folder"
  config.data.data_dir = index_dir
  config.data.num_workers = _WORKERS.value
  config.batch_size = _BATCH.value

  started = time.time()
  split = data_lib.open_split(config, "train")
  listed_s = time.time() - started
  n = split.num_examples
  start_step = max(0, n // config.batch_size - 2)  # the first batches cross into epoch 1
  dataset = pipeline.train_dataset(split.source, split.transform, seed=config.seed,
                                   global_batch_size=config.batch_size)
  pickled_dataset = len(cloudpickle.dumps(dataset[start_step:]))
  pickled_source = len(cloudpickle.dumps(split.source))
  mesh = sharding.make_mesh(jax.devices()[:1])
  batches = data_lib.train_batches(split, mesh, seed=config.seed, batch_size=config.batch_size,
                                   loading=data_lib.Loading.of(config.data),
                                   start_step=start_step)
  started = time.time()
  for _ in range(_BATCHES.value):
    next(batches)
  loaded_s = time.time() - started
  time.sleep(1.0)
  trainer = psutil.Process()
  workers = [_memory(w) for w in _grain_workers(trainer)]
  record = {"index_files": n, "workers": config.data.num_workers,
            "batch_size": config.batch_size, "start_step": start_step,
            "batches": _BATCHES.value, "listing_s": round(listed_s, 1),
            "loading_s": round(loaded_s, 1), "pickled_source_bytes": pickled_source,
            "pickled_dataset_bytes": pickled_dataset, "trainer": _memory(trainer),
            "loader_processes": workers,
            "loader_uss_mean_mb": round(sum(w["uss_mb"] for w in workers) / max(1, len(workers)), 1),
            "loader_pss_mean_mb": round(sum(w["pss_mb"] for w in workers) / max(1, len(workers)), 1)}
  batches.close()
  return record


def _tree_of(commit: str) -> pathlib.Path:
  sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout.strip()
  tree = pathlib.Path(tempfile.gettempdir()) / f"alexnet_jax_{sha}"
  if not tree.exists():
    subprocess.run(["git", "worktree", "add", "--detach", str(tree), sha], cwd=REPO, check=True,
                   capture_output=True)
  return tree


def _run_measurement(tree: pathlib.Path, index_dir: str) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(tree))
  command = [sys.executable, str(pathlib.Path(__file__).resolve()), f"--measure={index_dir}",
             f"--workers={_WORKERS.value}", f"--batch_size={_BATCH.value}",
             f"--batches={_BATCHES.value}"]
  done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"{tree} {index_dir}: exit {done.returncode}\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _commit(tree: pathlib.Path) -> str:
  sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True,
                       text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=tree,
                         capture_output=True, text=True).stdout.strip()
  return sha + ("+changes" if dirty else "")


def main(argv):
  del argv
  if _MEASURE.value:
    print(json.dumps(measure(_MEASURE.value)), flush=True)
    return
  from folder_index import make_index  # benchmarks/folder_index.py: the hard-link index
  indexes = {"small": (pathlib.Path(_SMALL_INDEX.value), _SMALL.value),
             "full": (pathlib.Path(_INDEX.value), _FILES.value)}
  for root, files in indexes.values():
    make_index(root, files)
  trees = {"new": REPO}
  if _OLD.value:
    trees = {"old": _tree_of(_OLD.value), "new": REPO}
  out = open(_OUT.value, "a", encoding="utf-8") if _OUT.value else None

  def emit(record: dict) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    if out:
      out.write(line + "\n")

  emit({"benchmark": "loader_memory", "date": datetime.date.today().isoformat(),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "trees": {name: _commit(tree) for name, tree in trees.items()},
        "workers": _WORKERS.value, "batch_size": _BATCH.value, "batches": _BATCHES.value})
  results: dict[tuple[str, str], list[dict]] = {}
  for repeat in range(_REPEATS.value):
    for name, tree in trees.items():
      for size, (root, _) in indexes.items():
        load = os.getloadavg()[0]
        record = {"tree": name, "index": size, "repeat": repeat,
                  "load_average_1min": round(load, 2), **_run_measurement(tree, str(root))}
        results.setdefault((name, size), []).append(record)
        emit(record)

  def mean(records, get):
    return round(sum(get(r) for r in records) / len(records), 1)

  means = {}
  for (name, size), records in results.items():
    means[(name, size)] = {
        "loader_uss_mb": mean(records, lambda r: r["loader_uss_mean_mb"]),
        "loader_pss_mb": mean(records, lambda r: r["loader_pss_mean_mb"]),
        "loader_private_anon_mb": mean(records, lambda r: sum(
            w["smaps_mb"]["private_anon"] for w in r["loader_processes"]) / max(
                1, len(r["loader_processes"]))),
        "trainer_uss_mb": mean(records, lambda r: r["trainer"]["uss_mb"]),
        "trainer_pss_mb": mean(records, lambda r: r["trainer"]["pss_mb"]),
        "all_processes_pss_mb": mean(records, lambda r: r["trainer"]["pss_mb"] + sum(
            w["pss_mb"] for w in r["loader_processes"])),
        "pickled_dataset_bytes": records[0]["pickled_dataset_bytes"]}
    emit({"tree": name, "index": size, "index_files": records[0]["index_files"],
          "mean_of": len(records), **means[(name, size)]})
  for name in trees:
    small, full = means[(name, "small")], means[(name, "full")]
    emit({"tree": name, "full_minus_small": {
        key: round(full[key] - small[key], 1) for key in small if key.endswith("_mb")},
        "load_average_1_5_15min": [round(x, 2) for x in os.getloadavg()]})


if __name__ == "__main__":
  app.run(main)
