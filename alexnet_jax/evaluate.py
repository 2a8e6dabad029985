"""One evaluation pass, and `--mode=eval`.

`run_eval` walks the eval split once (padded, masked global batches: every example counted
exactly once on any device and process count) and returns the `eval/*` metrics; given a
`report.ViewCounts` it also counts every row's top-5 for the report, in the same pass.
`evaluate_checkpoint` is `--mode=eval`: restore a checkpoint of the workdir onto the devices at
hand, evaluate it, and (config.eval_report) write the report (report.py).
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from alexnet_jax import checkpoint, report, sharding
from alexnet_jax.experiment import Experiment
from alexnet_jax.metrics_writer import MetricWriter

# A progress bar appears when a pass takes longer than this (seconds).
PROGRESS_DELAY_S = 5.0
PROGRESS_LOG_S = 30.0


def _view_text(exp: Experiment, ten_crop: bool | None) -> str:
  """', 10 crops each' or ', centre crop' for sources with crops (ImageNet), else ''."""
  if not exp.info.has_crops:
    return ""
  ten = bool(exp.config.data.ten_crop) if ten_crop is None else ten_crop
  return ", 10 crops each" if ten else ", centre crop"


def run_eval(exp: Experiment, params: Any, batch_stats: Any = None, *,
             ten_crop: bool | None = None, view_counts: Any = None,
             batches: Any = None, stop: Callable[[], bool] | None = None,
             ) -> dict[str, float] | None:
  """Metrics {'eval/loss', 'eval/top1', 'eval/top5', 'eval/num_examples', 'eval/skipped',
  'eval/seconds'} of `params` (and alexnet_bn's running `batch_stats`; None for none) on the
  eval split. ten_crop: the view (None: `data.ten_crop`). view_counts: a report.ViewCounts
  that also receives every counted row's top-5. batches: the pass's `DeviceBatches` when
  already started (periodic.EvalPrestart), else made here; closed here. stop: asked after every
  batch (every process at the same batch); when it says True the pass is abandoned and None
  returned (a stop request during training). Loss and accuracies are
  float64 host sums divided by the count, exact for any split size. Raises RuntimeError if
  nothing was readable.
  """
  batch_stats = {} if batch_stats is None else batch_stats
  totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "num_examples": 0.0}
  start = time.time()
  if batches is None:
    batches = exp.eval_batches(ten_crop)
  num_batches = len(batches)
  if jax.process_index() == 0:
    logging.info("Evaluating %d images%s (%d batch%s of %d)...", exp.eval_split.num_examples,
                 _view_text(exp, ten_crop), num_batches, "" if num_batches == 1 else "es",
                 batches.batch_size)
  chief = jax.process_index() == 0
  # A bar on a terminal; in a log file (no terminal) a line every PROGRESS_LOG_S instead.
  on_terminal = sys.stderr.isatty()
  progress = tqdm(total=num_batches, desc="eval", unit="batch", delay=PROGRESS_DELAY_S,
                  disable=not (chief and on_terminal), leave=False)
  last_line = time.time()
  done = 0
  try:
    for batch in batches:
      if stop is not None and stop():
        logging.info("Evaluation abandoned after %d of %d batches (stop requested).", done,
                     num_batches)
        return None
      sums = exp.eval_step(params, batch_stats, batch)
      rows = sums.pop("rows")
      for key, value in jax.device_get(sums).items():
        totals[key] += float(value)
      if view_counts is not None:
        # Replicated outputs: every process holds all rows of the global batch.
        rows = {key: np.asarray(value.addressable_data(0)) for key, value in rows.items()}
        counted = rows["mask"].astype(bool)
        view_counts.add(rows["label"][counted].astype(np.int64), rows["ranked"][counted])
      progress.update(1)
      done += 1
      if chief and not on_terminal and time.time() - last_line > PROGRESS_LOG_S:
        last_line = time.time()
        logging.info("eval: %d/%d batches", done, num_batches)
  finally:
    progress.close()
    batches.close()
  count = totals["num_examples"]
  if count == 0:
    raise RuntimeError("The eval split produced no readable examples.")
  return {
      "eval/loss": totals["loss"] / count,
      "eval/top1": totals["top1"] / count,
      "eval/top5": totals["top5"] / count,
      "eval/num_examples": int(round(count)),
      "eval/skipped": sharding.global_sum(batches.skipped),
      "eval/seconds": time.time() - start,
  }


def evaluate_checkpoint(exp: Experiment, workdir: str | pathlib.Path) -> dict[str, Any]:
  """`--mode=eval`: restores `eval_checkpoint_step` (-1: the latest) of `workdir` onto this
  machine's devices, evaluates it, appends the metrics to metrics.jsonl and (eval_report)
  writes eval_report_<step>.json. Raises UserError when there is no such checkpoint or it was
  written by another model."""
  workdir = pathlib.Path(workdir)
  wanted = exp.config.eval_checkpoint_step
  state, step, directory = checkpoint.restore_for_eval(
      workdir, None if wanted < 0 else wanted, exp.sharded_abstract_state(),
      exp.config.model.to_dict())
  logging.info("Restored step %d from %s onto %d device(s).", step, directory,
               jax.device_count())
  params, batch_stats = state["params"], state["batch_stats"]
  default_view = bool(exp.config.data.ten_crop)
  counted = {}
  if exp.config.eval_report:
    counted[default_view] = report.ViewCounts.zeros(exp.config.model.num_classes)
  metrics = run_eval(exp, params, batch_stats, view_counts=counted.get(default_view))
  writer = MetricWriter(workdir, enabled=jax.process_index() == 0, tensorboard=False)
  writer.write(step, {**metrics, "eval/checkpoint_step": step})
  writer.close()
  result = {"step": step, **metrics}
  if exp.config.eval_report:
    if exp.info.has_crops:  # the other view of the report, one more pass
      other = not default_view
      counted[other] = report.ViewCounts.zeros(exp.config.model.num_classes)
      other_metrics = run_eval(exp, params, batch_stats, ten_crop=other,
                               view_counts=counted[other])
      logging.info("Step %d%s: top1 %.4f top5 %.4f (%d examples).", step,
                   _view_text(exp, other), other_metrics["eval/top1"],
                   other_metrics["eval/top5"], other_metrics["eval/num_examples"])
    path = report.write_report(exp.config, exp.info, workdir, step, counted)
    logging.info("Wrote the report %s; eval_report.json is a copy of the newest step's.", path)
    result["eval_report"] = str(path)
  return result
