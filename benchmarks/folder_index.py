"""ImageNet's shape in files, made of hard links to a few dozen small JPEGs: the folder index
that benchmarks/startup.py and benchmarks/loader_memory.py list. It costs no disk to speak of
and lists like the real thing."""

from __future__ import annotations

import os
import pathlib
import shutil


def make_index(root: pathlib.Path, files: int) -> None:
  """root/train/<wnid>/<k>.JPEG (files spread evenly over the 1000 wnids) and
  root/val/<wnid>/<k>.JPEG (50 each), hard links to small JPEGs (one per 50,000 links:
  ext4 allows 65,000 links to a file)."""
  from alexnet_jax.data import wnids
  from tests import imagenet_fixtures as fx

  stamp = root / f"made-{files}"
  if stamp.exists():
    return
  shutil.rmtree(root, ignore_errors=True)
  originals = root / "originals"
  originals.mkdir(parents=True)
  sources = []
  for i in range(max(8, -(-(files + 50_000) // 50_000))):
    path = originals / f"{i}.JPEG"
    path.write_bytes(fx.jpeg_bytes(320, 256 + 8 * i, seed=i % 8))
    sources.append(path)
  wnids = wnids.standard_wnids()
  for split, count in (("train", files), ("val", 50 * len(wnids))):
    for c, wnid in enumerate(wnids):
      folder = root / split / wnid
      folder.mkdir(parents=True)
      per_class = count // len(wnids) + (1 if c < count % len(wnids) else 0)
      for k in range(per_class):
        os.link(sources[k % len(sources)], folder / f"{wnid}_{k}.JPEG")
  stamp.touch()
