"""The evaluation report: eval_report_<step>.json (and eval_report.json, a copy of the latest),
beyond the three headline numbers. evaluate.py counts; this module only summarizes.

For each view of the eval split (the centre crop; and the paper's 10 crops, 4 corners + centre
and their mirrors with the softmax averaged, where the source has crops, i.e. ImageNet):
top-1 and top-5, the accuracy of every class, and the most confused (true, predicted) pairs
with their names. Counted in `evaluate.run_eval`'s own pass: every example once, padded rows
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

import dataclasses
import json
import pathlib
import shutil
from typing import Any, Sequence

import jax
import numpy as np

from alexnet_jax.checkpoint import layout

TOP_K = 5


@dataclasses.dataclass
class ViewCounts:
  """Counts over one pass: confusion[true, predicted top-1] and top-5 hits per true class."""
  confusion: np.ndarray
  top5_hits: np.ndarray

  @classmethod
  def zeros(cls, num_classes: int) -> "ViewCounts":
    """Empty counts for `num_classes` classes (int64)."""
    return cls(np.zeros((num_classes, num_classes), np.int64), np.zeros(num_classes, np.int64))

  def add(self, labels: np.ndarray, ranked: np.ndarray) -> None:
    """`ranked`: (N, k) classes by decreasing probability, for the N counted rows."""
    np.add.at(self.confusion, (labels, ranked[:, 0]), 1)
    hits = np.any(ranked == labels[:, None], axis=1)
    self.top5_hits += np.bincount(labels[hits], minlength=len(self.top5_hits))


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


def build_report(config: Any, info: Any, step: int,
                 counted: dict[bool, ViewCounts]) -> dict[str, Any]:
  """The report dict. counted: the views evaluate.run_eval counted, keyed by ten_crop; info:
  the source's data.DataInfo (class names, whether it has crops)."""
  names = tuple(info.class_names or ())
  views: dict[str, Any] = {}
  notes = []
  for view, ten_crop in (("center_crop", False), ("ten_crop", True)):
    counts = counted.get(ten_crop)
    if counts is None:
      views[view] = None
      if ten_crop and not info.has_crops:
        notes.append(f"ten_crop: not applicable to data.source={config.data.source!r}: its "
                     "images are evaluated whole, with no crops to vary.")
      continue
    views[view] = summarize(counts, names, config.eval_report_confusions)
  if not info.has_crops:
    notes.append("center_crop: the whole image (this source has no crop), resized to "
                 f"model.image_size={config.model.image_size} on the device where needed.")
  return {"step": int(step), "data_source": config.data.source,
          "num_classes": int(config.model.num_classes), "views": views, "notes": notes}


def write_report(config: Any, info: Any, workdir: str | pathlib.Path, step: int,
                 counted: dict[bool, ViewCounts]) -> pathlib.Path:
  """Writes DIR/eval_report_<step>.json and copies it to DIR/eval_report.json when `step` is
  the newest step reported so far (process 0 only). Returns the per-step path."""
  workdir = pathlib.Path(workdir)
  path = workdir / layout.eval_report_file(step)
  if jax.process_index() == 0:
    report = build_report(config, info, step, counted)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    latest = workdir / layout.LATEST_EVAL_REPORT_FILE
    newest = True
    if latest.is_file():
      try:
        newest = json.loads(latest.read_text(encoding="utf-8")).get("step", -1) <= step
      except ValueError:  # a damaged copy: replace it
        newest = True
    if newest:
      shutil.copyfile(path, latest)
  return path
