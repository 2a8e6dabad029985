"""The workdir contract: what a run directory holds, under which names, and who may write it.

  DIR/config.json            the config of the latest start (the checkpoints record their own)
  DIR/metrics.jsonl          one JSON record per logged step and per evaluation
  DIR/tensorboard/           the same scalars, and the conv1 filters picture
  DIR/checkpoints/<step>/    Orbax: items `state` (the train state) and `meta` (`meta()` below)
  DIR/checkpoints/<step>.damaged   a checkpoint found unreadable, set aside (restore.py)
  DIR/eval_report_<step>.json, DIR/eval_report.json   --mode=eval's report (report.py)
  DIR/.alexnet_jax.lock(.pid)      held by the one trainer of this workdir
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import filelock

from alexnet_jax.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".alexnet_jax.lock"
# Suffix a damaged checkpoint directory is renamed with, so the run can go on from an earlier
# step and the user can still inspect it (Orbax ignores names that are not integers).
DAMAGED_SUFFIX = ".damaged"
# Version of the checkpoint layout (meta["format"]). 3: meta["config"] records the whole config
# (the resume contract, contract.check_resume); 2: the data position is the step (no Grain
# iterator state is needed to resume). 1 and 2 checkpoints restore the same way.
FORMAT = 3


LATEST_EVAL_REPORT_FILE = "eval_report.json"  # a copy of the newest step's report


def eval_report_file(step: int) -> str:
  """The name of --mode=eval's report of checkpoint `step`."""
  return f"eval_report_{int(step)}.json"


def meta(config: Any, class_names: tuple[str, ...] | None) -> dict[str, Any]:
  """What a checkpoint records beside the state (JSON): the model and the inputs it expects
  (what inference needs), the class names, and the whole config that wrote it (the resume
  contract)."""
  c = config
  return {
      "format": FORMAT,
      "model": c.model.to_dict(),
      "preprocessing": {"source": c.data.source, "mean": list(c.data.mean),
                        "std": list(c.data.std), "image_size": c.model.image_size,
                        "resize_size": c.data.resize_size},
      "class_names": list(class_names or []),
      "config": c.to_dict(),
  }


def prepare(workdir: pathlib.Path) -> None:
  """Creates `workdir` if needed; UserError when it is a file or not writable."""
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"--workdir={workdir} is a file, not a directory: name a new or existing "
                    "run directory.")
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise UserError(f"Cannot create --workdir={workdir}: {e.strerror}.") from e
  if not os.access(workdir, os.W_OK):
    raise UserError(f"--workdir={workdir} is not writable: choose another directory.")


def lock(workdir: pathlib.Path) -> filelock.BaseFileLock:
  """Holds `workdir` for this trainer (release it on exit; the OS releases it if the process
  dies, so a lock is never stale). UserError naming the holder's pid when another has it."""
  held = filelock.FileLock(str(workdir / LOCK_FILE))
  pid_file = workdir / (LOCK_FILE + ".pid")
  try:
    held.acquire(timeout=0)
  except filelock.Timeout:
    who = f" (process {pid_file.read_text().strip()})" if pid_file.is_file() else ""
    raise UserError(f"Another trainer{who} is running in --workdir={workdir}: wait for it to "
                    "finish or stop it, or use another --workdir.") from None
  pid_file.write_text(f"{os.getpid()}\n")
  return held
