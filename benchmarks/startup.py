"""Launch to first step of `python -m alexnet_jax.main` on an ImageNet-size folder index, two
source trees side by side (this one and an older commit), alternating.

  python benchmarks/startup.py --old_commit=46859b6 --repeats=2

The index is ImageNet's shape in files (default 1,281,167 train images over the 1000 wnid
folders, 50 validation images per class), made of hard links to a few dozen small JPEGs: it costs
no disk to speak of and lists like the real thing. The older tree is a `git worktree` of
`--old_commit`; each run starts in the tree it measures so `python -m` imports that tree.

One JSON line per run: tree, seconds from launch to the first step's log line, the train-step
compile time the trainer reported (the old tree: its 'First step done in X s (compilation
included)'), and their difference; then one line per tree with the ranges. What limits
start-up on a 2-core machine is not what limits it on a 16-core GPU host: compare the trees,
not the absolute seconds.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from folder_index import make_index  # noqa: E402 - benchmarks/ is the script's folder

_FILES = flags.DEFINE_integer("files", 1_281_167, "Training images in the index.")
_INDEX = flags.DEFINE_string("index_dir", "/tmp/alexnet_jax_startup_index", "Where the index is "
                             "made (reused when it holds the same number of files).")
_OLD = flags.DEFINE_string("old_commit", None, "The commit to compare against.")
_REPEATS = flags.DEFINE_integer("repeats", 2, "Runs per tree, alternating.")
_WORKERS = flags.DEFINE_integer("workers", 2, "data.num_workers of each run.")
_OUT = flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")


def run_once(tree: pathlib.Path, index: pathlib.Path) -> dict:
  workdir = pathlib.Path(tempfile.mkdtemp(prefix="startup_"))
  command = [sys.executable, "-m", "alexnet_jax.main", "--config=configs/imagenet.py",
             f"--workdir={workdir}", f"--config.data.data_dir={index}",
             "--config.num_train_steps=1", "--config.batch_size=32",
             "--config.eval_at_end=false", f"--config.data.num_workers={_WORKERS.value}",
             "--config.compilation_cache_dir=off"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  started = time.time()
  process = subprocess.Popen(command, cwd=tree, env=env, stderr=subprocess.PIPE, text=True)
  first_step = None
  lines = []
  for line in process.stderr:
    lines.append(line)
    if first_step is None and "step 1/1" in line:
      first_step = time.time() - started
  process.wait()
  shutil.rmtree(workdir, ignore_errors=True)
  log = "".join(lines)
  if process.returncode != 0 or first_step is None:
    raise RuntimeError(f"{tree}: exit {process.returncode}\n{log[-3000:]}")
  compiled = re.search(r"Train step compiled \(([\d.]+) s", log) or re.search(
      r"First step done in ([\d.]+) s \(compilation included\)", log)
  compile_s = float(compiled.group(1)) if compiled else float("nan")
  return {"launch_to_first_step_s": round(first_step, 2), "train_step_compile_s": compile_s,
          "launch_to_first_step_minus_compile_s": round(first_step - compile_s, 2)}


def main(argv):
  del argv
  index = pathlib.Path(_INDEX.value)
  made = time.time()
  make_index(index, _FILES.value)
  print(json.dumps({"index_files": _FILES.value, "index_seconds": round(time.time() - made, 1)}),
        flush=True)
  trees = {"new": REPO}
  if _OLD.value:
    old = pathlib.Path(tempfile.gettempdir()) / f"alexnet_jax_{_OLD.value}"
    if not old.exists():
      subprocess.run(["git", "worktree", "add", "--detach", str(old), _OLD.value], cwd=REPO,
                     check=True, capture_output=True)
    trees = {"old": old, "new": REPO}
  results = {name: [] for name in trees}
  out = open(_OUT.value, "a", encoding="utf-8") if _OUT.value else None
  for repeat in range(_REPEATS.value):
    for name, tree in trees.items():
      record = {"tree": name, "repeat": repeat, "files": _FILES.value,
                "workers": _WORKERS.value, **run_once(tree, index)}
      results[name].append(record)
      line = json.dumps(record)
      print(line, flush=True)
      if out:
        out.write(line + "\n")
  for name, records in results.items():
    summary = {"tree": name, "commit": _OLD.value if name == "old" else "working tree",
               **{key: [min(r[key] for r in records), max(r[key] for r in records)]
                  for key in ("launch_to_first_step_s", "train_step_compile_s",
                              "launch_to_first_step_minus_compile_s")}}
    print(json.dumps(summary), flush=True)
    if out:
      out.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
  app.run(main)
