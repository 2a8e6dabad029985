"""Where metrics go: `metrics.jsonl`, TensorBoard event files, the console.

Only process 0 writes; on the others every call is a no-op. The JSONL file is appended and
flushed on every event, so nothing logged is lost if the run dies.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from absl import logging

from alexnet_jax.checkpoint import layout


def _plain(value: Any) -> Any:
  value = value.item() if hasattr(value, "item") else value
  if isinstance(value, float) and not math.isfinite(value):
    return None if math.isnan(value) else str(value)
  return value


class MetricWriter:

  """metrics.jsonl (one JSON object per event) and TensorBoard event files in workdir.

  enabled: False on processes other than 0 (every call is then a no-op). tensorboard: also
  write event files under workdir/tensorboard (tensorboardX, no TensorFlow)."""
  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool, tensorboard: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self._jsonl = open(workdir / layout.METRICS_FILE, "a", encoding="utf-8")
    if tensorboard:
      # tensorboardX writes standard event files without TensorFlow.
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(workdir / layout.TENSORBOARD_DIR))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Appends {'step': step, **metrics} (NaN written as null) and the numeric scalars to
      TensorBoard."""
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in record.items():
        if name != "step" and isinstance(value, (int, float)):
          self._tb.add_scalar(name, value, step)
      self._tb.flush()

  def image(self, step: int, name: str, array: Any) -> None:
    """An (H, W, C) float image in [0, 1] (C = 1 or 3) to TensorBoard; not to the JSONL."""
    if self._tb is not None:
      self._tb.add_image(name, array, step, dataformats="HWC")
      self._tb.flush()

  def log(self, message: str) -> None:
    """One line to the console log (absl INFO), from process 0 only."""
    if self.enabled:
      logging.info(message)

  def close(self) -> None:
    """Flushes and closes the files."""
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
