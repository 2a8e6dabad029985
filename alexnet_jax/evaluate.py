"""Exact evaluation: every example of the split counted once, on any device/process count.

`run_eval` walks the eval split (padded, masked global batches) and returns the `eval/*`
metrics. `evaluate_checkpoint` is `--mode=eval`: restore a checkpoint of this workdir onto the
devices at hand, evaluate it, and (config.eval_report) write DIR/eval_report.json
(eval_report.py: per-class accuracy, confused pairs, centre and 10-crop views).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from alexnet_jax import checkpoint as ckpt_lib, parallel
from alexnet_jax.data import pipeline
from alexnet_jax.experiment import Experiment
from alexnet_jax.metrics_writer import MetricWriter


def run_eval(exp: Experiment, params: Any, batch_stats: Any = None,
             view_counts: Any = None) -> dict[str, float]:
  """`batch_stats`: the train state's (alexnet_bn's running BN statistics); None for none.
  `view_counts` (an eval_report.ViewCounts), if given, also gets every counted row's top-5,
  so the report needs no second pass over the split."""
  batch_stats = {} if batch_stats is None else batch_stats
  totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "num_examples": 0.0}
  skipped = 0
  start = time.time()
  data = exp.config.data
  batches = pipeline.to_iterator(exp.datasets.eval, num_workers=data.num_workers,
                                 prefetch_batches=data.prefetch_batches)
  for batch in batches:
    skipped += int(batch.pop("skipped"))
    sums = exp.eval_step(params, batch_stats, parallel.to_global_batch(batch, exp.mesh))
    rows = sums.pop("rows")
    for key, value in jax.device_get(sums).items():
      totals[key] += float(value)  # float64 on the host: exact counts for any split size
    if view_counts is not None:
      # Replicated outputs: every process holds all rows of the global batch.
      rows = {key: np.asarray(value.addressable_data(0)) for key, value in rows.items()}
      counted = rows["mask"].astype(bool)
      view_counts.add(rows["label"][counted].astype(np.int64), rows["ranked"][counted])
  count = totals["num_examples"]
  if count == 0:
    raise RuntimeError("The eval split produced no readable examples.")
  return {
      "eval/loss": totals["loss"] / count,
      "eval/top1": totals["top1"] / count,
      "eval/top5": totals["top5"] / count,
      "eval/num_examples": int(round(count)),
      "eval/skipped": skipped,
      "eval/seconds": time.time() - start,
  }


def evaluate_checkpoint(exp: Experiment, workdir: str | pathlib.Path) -> dict[str, float]:
  """Restores `eval_checkpoint_step` (or the latest) from workdir and evaluates it."""
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"No checkpoints in {directory}: train first with the same "
                            "--workdir, or point --workdir at a run that has them.")
  checkpointer = ckpt_lib.Checkpointer(directory, keep=1, read_only=True)
  step = exp.config.eval_checkpoint_step
  available = checkpointer.all_steps()
  if step < 0:
    step = checkpointer.latest_step()
  if step is None or step not in available:
    raise FileNotFoundError(
        f"Checkpoint step {step} is not in {directory}; available steps: {available or 'none'}.")
  ckpt_lib.check_compatible(checkpointer.read_meta(step), exp.config.model.to_dict(),
                            str(directory))
  abstract = ckpt_lib.abstract_like(exp.abstract_state, exp.state_shardings)
  state = checkpointer.restore(step, abstract)
  checkpointer.close()
  logging.info("Restored step %d from %s onto %d device(s).", step, directory,
               jax.device_count())
  view_counts = None
  if exp.config.eval_report:
    from alexnet_jax import eval_report
    view_counts = eval_report.ViewCounts.zeros(exp.config.model.num_classes)
  metrics = run_eval(exp, state["params"], state["batch_stats"], view_counts)
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
  writer.write(step, {**metrics, "eval/checkpoint_step": step})
  writer.close()
  result = {"step": step, **metrics}
  if view_counts is not None:
    path = eval_report.write_report(exp, state["params"], workdir, step, state["batch_stats"],
                                    counted={bool(exp.config.data.ten_crop): view_counts})
    logging.info("Wrote %s.", path)
    result["eval_report"] = str(path)
  return result
