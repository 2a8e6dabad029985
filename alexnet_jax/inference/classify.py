"""Top-k classes of image files with a LoadedModel (model.py), in padded batches."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable, Sequence

import numpy as np

from alexnet_jax.data import decode
from alexnet_jax.errors import UserError
from alexnet_jax.inference.model import LoadedModel


def find_images(paths: Iterable[str | os.PathLike]) -> list[pathlib.Path]:
  """The image files named, and those under the directories named (sorted, recursive; the
  suffixes of decode.IMAGE_SUFFIXES, hidden files skipped). UserError for a path that does
  not exist or when no image is found."""
  found = []
  for path in map(pathlib.Path, paths):
    if path.is_dir():
      found += sorted(p for p in path.rglob("*")
                      if p.is_file() and p.suffix.lower() in decode.IMAGE_SUFFIXES
                      and not p.name.startswith("."))
    elif path.is_file():
      found.append(path)
    else:
      raise UserError(f"{path} does not exist.")
  if not found:
    raise UserError(f"No JPEG or PNG images in {', '.join(map(str, paths))}.")
  return found


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
  """(class, probability) of the k most probable classes of a (num_classes,) probability
  vector, most probable first (ties: lower class first)."""
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(int(i), float(probabilities[i])) for i in order]


def predict_files(loaded: LoadedModel, files: Sequence[str | os.PathLike], *, k: int = 5,
                  batch_size: int = 32) -> list[dict[str, Any]]:
  """One record per file: {'path', 'top': [{'class', 'name', 'probability'}, ...]} (k
  entries, most probable first) or {'path', 'error'} for a file that cannot be read or decoded,
  or is over the large-image rule (data.decode.MAX_IMAGE_PIXELS). 'path' is printable
  text (decode.printable_name: bytes of a name that are not UTF-8 as escapes).
  Images go through the model in padded batches of `batch_size` (one compilation)."""
  records: list[dict[str, Any] | None] = [None] * len(files)
  # Paths as printable text: a file name that is not UTF-8 shows its bytes as escapes.
  shown = [decode.printable_name(path) for path in files]
  images, slots = [], []
  for i, path in enumerate(files):
    try:
      images.append(loaded.load_image(path))
      slots.append(i)
    except UserError as e:
      records[i] = {"path": shown[i], "error": str(e)}
  k = min(k, loaded.num_classes)
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    # Pad to a fixed batch: one compilation whatever the number of files.
    batch = np.stack(chunk + [chunk[-1]] * (batch_size - len(chunk)))
    probabilities = np.asarray(loaded.probe.probabilities(batch), np.float64)
    for row, slot in enumerate(slots[start:start + batch_size]):
      records[slot] = {"path": shown[slot], "top": [
          {"class": c, "name": loaded.class_name(c), "probability": p}
          for c, p in top_k(probabilities[row], k)]}
  return records
