"""Finishing a build as a tfds dataset directory: the shards renamed to tfds's names,
dataset_info.json and features.json, `alexnet_jax_prepare.json` (how the images were stored),
and the incomplete directory renamed to `<version>/` (replacing an old build only then)."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
from typing import Sequence

from alexnet_jax.data import imagenet, raw
from alexnet_jax.data.prepare import resume, shard_file
from alexnet_jax.data.prepare.shard_file import ShardResult
from alexnet_jax.data.prepare.storage import StoreOptions

# tfds's file naming, e.g. imagenet2012-train.array_record-00000-of-01000
SHARD_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"


def finish_dataset(data_dir: str, work_dir: str, results: Sequence[ShardResult],
                   options: StoreOptions, origin: str) -> pathlib.Path:
  """Renames the shards to tfds's names and writes dataset_info.json next to them."""
  import tensorflow_datasets as tfds
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir, file_format="array_record")
  version_dir = pathlib.Path(builder.data_dir)
  split_infos = []
  for split in sorted({r.split for r in results}):
    written = sorted((r for r in results if r.split == split and r.num_examples),
                     key=lambda r: r.index)
    template = tfds.core.ShardedFileTemplate(
        data_dir=version_dir, template=SHARD_TEMPLATE, dataset_name=imagenet.TFDS_NAME,
        split=split, filetype_suffix="array_record")
    for shard_index, result in enumerate(written):
      final_name = template.sharded_filepath(shard_index=shard_index, num_shards=len(written))
      os.replace(result.path, os.path.join(work_dir, final_name.name))
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[r.num_examples for r in written],
        num_bytes=sum(r.num_bytes for r in written), filename_template=template))
  for result in results:  # empty shards (every file unreadable), and the resume records
    for path in (result.path, shard_file.done_path(result.path)):
      if os.path.exists(path):
        os.remove(path)
  if os.path.exists(os.path.join(work_dir, resume.PLAN_FILE)):
    os.remove(os.path.join(work_dir, resume.PLAN_FILE))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  description = _describe(options)
  builder.info.as_proto.description = f"{description}\n\n{builder.info.description}"
  builder.info.write_to_directory(work_dir)
  _write_prepare_info(work_dir, results, options, origin, description)
  if version_dir.exists():  # --overwrite: the old build goes only now that the new one is whole
    shutil.rmtree(version_dir)
  os.replace(work_dir, version_dir)
  return version_dir


def _describe(options: StoreOptions) -> str:
  if options.format == raw.FORMAT:
    side = options.raw_side
    return (f"Written by alexnet_jax.tools.prepare: raw storage, the central {side}x{side} "
            f"patch after scaling the shorter side to {side}, as uint8 RGB ({side}x{side}x3 = "
            f"{raw.record_bytes(side)} bytes in each record's image field).")
  if options.resize_shorter > 0:
    return (f"Written by alexnet_jax.tools.prepare: images resized to shorter side "
            f"{options.resize_shorter} and stored as JPEG quality {options.jpeg_quality}.")
  return "Written by alexnet_jax.tools.prepare: original image files, unchanged."


def _write_prepare_info(work_dir: str, results: Sequence[ShardResult], options: StoreOptions,
                        origin: str, description: str) -> None:
  info = {
      "written_by": "alexnet_jax.tools.prepare",
      "description": description,
      "origin": origin,
      "format": options.format,
      "resize_shorter": (options.raw_side if options.format == raw.FORMAT
                         else options.resize_shorter),
      "jpeg_quality": (options.jpeg_quality
                       if options.format == "jpeg" and options.resize_shorter > 0 else None),
      "date": datetime.date.today().isoformat(),
      "num_examples": {s: sum(r.num_examples for r in results if r.split == s)
                       for s in sorted({r.split for r in results})},
      "skipped": sorted(name for r in results for name in r.skipped),
      "array_record_options": shard_file.ARRAY_RECORD_OPTIONS,
  }
  if options.format == raw.FORMAT:
    info.update(side=options.raw_side, image_shape=[options.raw_side, options.raw_side, 3],
                dtype="uint8", record_bytes=raw.record_bytes(options.raw_side))
  path = pathlib.Path(work_dir) / imagenet.PREPARE_INFO_FILE
  path.write_text(json.dumps(info, indent=1) + "\n")
