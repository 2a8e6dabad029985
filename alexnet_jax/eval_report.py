"""`--mode=eval`'s report: DIR/eval_report.json, beyond the three headline numbers.

For each view of the eval split (the centre crop; and the paper's 10 crops, 4 corners + centre
and their mirrors with the softmax averaged, where the source has crops, i.e. ImageNet):
top-1 and top-5, the accuracy of every class, and the most confused (true, predicted) pairs
with their names. Counted exactly like `evaluate.run_eval`: every example once, padded rows
masked, on any number of devices and processes.

Format (docs/inference.md):
  {"step", "data_source", "num_classes", "views": {"center_crop": VIEW, "ten_crop": VIEW|null},
   "notes": [...]}
  VIEW = {"num_examples", "top1", "top5",
          "per_class": [{"class", "name", "count", "top1", "top5"}, ...],
          "most_confused": [{"true", "true_name", "predicted", "predicted_name", "count",
                             "fraction_of_true"}, ...]}
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import parallel, steps
from alexnet_jax.data import pipeline

REPORT_FILE = "eval_report.json"
TOP_K = 5
# Sources whose eval transform can make the 10 views (data.ten_crop): the ImageNet ones.
TEN_CROP_SOURCES = ("tfds", "folder", "auto")


@dataclasses.dataclass
class ViewCounts:
  """Counts over one pass: confusion[true, predicted top-1] and top-5 hits per true class."""
  confusion: np.ndarray
  top5_hits: np.ndarray

  @classmethod
  def zeros(cls, num_classes: int) -> "ViewCounts":
    return cls(np.zeros((num_classes, num_classes), np.int64), np.zeros(num_classes, np.int64))

  def add(self, labels: np.ndarray, ranked: np.ndarray) -> None:
    """`ranked`: (N, k) classes by decreasing probability, for the N counted rows."""
    np.add.at(self.confusion, (labels, ranked[:, 0]), 1)
    hits = np.any(ranked == labels[:, None], axis=1)
    self.top5_hits += np.bincount(labels[hits], minlength=len(self.top5_hits))


def make_ranking_step(model, mean, std, image_size: int, k: int = TOP_K) -> Callable:
  """(params, batch_stats, batch) -> the k most probable classes of each row, softmax
  averaged over crops when images are (B, crops, H, W, C), as `steps.make_eval_step` scores
  them."""
  mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)

  def ranking_step(params, batch_stats, batch):
    images = steps.device_preprocess(batch["image"], mean, std, image_size)
    log_probs = steps.crop_averaged_log_probs(model, params, batch_stats, images)
    _, ranked = jax.lax.top_k(log_probs, min(k, log_probs.shape[-1]))  # same order as probs
    return {"ranked": ranked, "label": batch["label"], "mask": batch["mask"]}

  return ranking_step


def count_view(exp, params, batch_stats, dataset) -> ViewCounts:
  """One pass over `dataset` (padded, masked global batches)."""
  config = exp.config
  ranking_step = make_ranking_step(exp.model, np.asarray(config.data.mean, np.float32),
                                   np.asarray(config.data.std, np.float32),
                                   config.model.image_size)
  step = jax.jit(  # placed like experiment.build places the eval step
      parallel.with_mesh(ranking_step, exp.mesh),
      in_shardings=(exp.state_shardings["params"], exp.state_shardings["batch_stats"],
                    parallel.batch_sharding(exp.mesh)),
      out_shardings=parallel.replicated(exp.mesh))
  counts = ViewCounts.zeros(config.model.num_classes)
  batches = pipeline.to_iterator(dataset, num_workers=config.data.num_workers,
                                 prefetch_batches=config.data.prefetch_batches)
  for batch in batches:
    batch.pop("skipped")
    out = step(params, batch_stats, parallel.to_global_batch(batch, exp.mesh))
    out = {key: np.asarray(value.addressable_data(0)) for key, value in out.items()}
    mask = out["mask"].astype(bool)
    counts.add(out["label"][mask].astype(np.int64), out["ranked"][mask])
  return counts


def _name(class_names: Sequence[str], index: int) -> str:
  return class_names[index] if index < len(class_names) else f"class {index}"


def summarize(counts: ViewCounts, class_names: Sequence[str], num_confusions: int) -> dict:
  """The JSON-ready VIEW dict of one view's counts."""
  confusion = counts.confusion
  per_class_count = confusion.sum(axis=1)
  total = int(per_class_count.sum())
  correct = np.diag(confusion)
  ratio = lambda hits, n: float(hits) / n if n else None
  per_class = [{"class": c, "name": _name(class_names, c), "count": int(per_class_count[c]),
                "top1": ratio(correct[c], per_class_count[c]),
                "top5": ratio(counts.top5_hits[c], per_class_count[c])}
               for c in range(len(per_class_count))]
  off_diagonal = confusion.copy()
  np.fill_diagonal(off_diagonal, 0)
  order = np.argsort(-off_diagonal, axis=None, kind="stable")[:num_confusions]
  most_confused = []
  for flat in order:
    true, predicted = np.unravel_index(flat, confusion.shape)
    count = int(off_diagonal[true, predicted])
    if count == 0:
      break
    most_confused.append({
        "true": int(true), "true_name": _name(class_names, true),
        "predicted": int(predicted), "predicted_name": _name(class_names, predicted),
        "count": count, "fraction_of_true": count / int(per_class_count[true])})
  return {"num_examples": total, "top1": ratio(correct.sum(), total),
          "top5": ratio(counts.top5_hits.sum(), total), "per_class": per_class,
          "most_confused": most_confused}


def eval_dataset(exp, ten_crop: bool):
  """The eval split with or without the 10 views: the experiment's own when it already is
  that one, else built a second time from a copy of the config."""
  if bool(exp.config.data.ten_crop) == ten_crop:
    return exp.datasets.eval
  from alexnet_jax import data as data_lib
  config = copy.deepcopy(exp.config)
  config.data.ten_crop = ten_crop
  return data_lib.create_datasets(config, jax.process_index(), jax.process_count()).eval


def build_report(exp, params, step: int, batch_stats: Any = None,
                 counted: dict[bool, ViewCounts] | None = None) -> dict[str, Any]:
  """`batch_stats`: the state's running BN statistics (alexnet_bn); None for none.
  `counted`: views already counted by the caller's own pass, keyed by ten_crop."""
  counted = counted or {}
  batch_stats = {} if batch_stats is None else batch_stats
  config = exp.config
  names = tuple(exp.datasets.info.class_names or ())
  views: dict[str, Any] = {}
  notes = []
  for view, ten_crop in (("center_crop", False), ("ten_crop", True)):
    if ten_crop and config.data.source not in TEN_CROP_SOURCES:
      views[view] = None
      notes.append(f"ten_crop: not applicable to data.source={config.data.source!r}: its "
                   "images are evaluated whole, with no crops to vary.")
      continue
    counts = counted.get(ten_crop)
    if counts is None:
      counts = count_view(exp, params, batch_stats, eval_dataset(exp, ten_crop))
    views[view] = summarize(counts, names, config.eval_report_confusions)
  if config.data.source not in TEN_CROP_SOURCES:
    notes.append("center_crop: the whole image (this source has no crop), resized to "
                 f"model.image_size={config.model.image_size} on the device where needed.")
  return {"step": int(step), "data_source": config.data.source,
          "num_classes": int(config.model.num_classes), "views": views, "notes": notes}


def write_report(exp, params, workdir: str | pathlib.Path, step: int,
                 batch_stats: Any = None,
                 counted: dict[bool, ViewCounts] | None = None) -> pathlib.Path:
  """Builds the report (every process takes part) and writes it from process 0."""
  report = build_report(exp, params, step, batch_stats, counted)
  path = pathlib.Path(workdir) / REPORT_FILE
  if jax.process_index() == 0:
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
  return path
