"""Resuming an interrupted build: the plan file that says what the incomplete build is a build
of (options, source files), and which of its finished shards a rerun keeps."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import logging
import os
import shutil
from typing import Any, Sequence

from alexnet_jax.data.prepare import shard_file, stop, storage
from alexnet_jax.data.prepare.shard_file import ShardResult
from alexnet_jax.data.prepare.sources import ListShard, Shard

# Written into the incomplete build when it starts: what it is a build of (options, shards).
PLAN_FILE = "alexnet_jax_prepare_plan.json"


def shard_digest(shard: Shard) -> str:
  """A SHA-256 of what the shard is made of: each file's path, tfds name and label (tar
  members: offset and size too), or a class tar's offset and size. Equal digests = the same
  input list; the files' contents are not read."""
  if isinstance(shard, ListShard):
    lines = ["\t".join(map(str, vars(item).values())) for item in shard.items]
  else:
    lines = [f"{shard.tar_path}\t{shard.offset}\t{shard.size}\t{shard.wnid}"]
  text = f"{type(shard).__name__}\t{shard.split}\t{shard.index}\n" + "\n".join(lines)
  return hashlib.sha256(os.fsencode(text)).hexdigest()


def build_plan(shards: Sequence[Shard], digests: Sequence[str],
               options: storage.StoreOptions) -> dict[str, Any]:
  """What an incomplete build records about itself, to tell a rerun of the same command (whose
  finished shards it reuses) from another build (which starts over)."""
  return {"version": shard_file.PLAN_VERSION, "options": dataclasses.asdict(options),
          "array_record_options": shard_file.ARRAY_RECORD_OPTIONS,
          "shards": dict(collections.Counter(s.split for s in shards)),
          "digest": hashlib.sha256("\n".join(digests).encode()).hexdigest()}


def plan_difference(work_dir: str, plan: dict[str, Any]) -> str | None:
  """None when the incomplete build in work_dir was started with `plan`; else why not."""
  path = os.path.join(work_dir, PLAN_FILE)
  try:
    with open(path) as f:
      old = json.load(f)
  except FileNotFoundError:
    return "it has no plan file (started by an older alexnet_jax, or its start was cut short)"
  except (OSError, ValueError) as e:
    return f"its plan file cannot be read ({e})"
  if old.get("version") != plan["version"]:
    return f"its plan has format {old.get('version')}, this alexnet_jax writes {plan['version']}"
  old_options = old.get("options", {})
  changed = [f"{k}={old_options.get(k)!r} (now {v!r})" for k, v in plan["options"].items()
             if old_options.get(k) != v]
  if changed:
    return f"it was started with other options: {', '.join(changed)}"
  if old.get("array_record_options") != plan["array_record_options"]:
    return (f"its shards are written with {old.get('array_record_options')!r} "
            f"(now {plan['array_record_options']!r})")
  if old.get("shards") != plan["shards"]:
    return f"it was planned as {old.get('shards')} shards (now {plan['shards']})"
  if old.get("digest") != plan["digest"]:
    return "it was started from another list of source files"
  return None


def start_or_resume(work_dir: str, shards: Sequence[Shard], digests: Sequence[str],
                    plan: dict[str, Any]) -> dict[int, ShardResult]:
  """Makes work_dir ready to write into; returns {position in shards: result} of the shards
  an interrupted run of the same plan finished, which are kept.

  A work_dir of another plan (other options or source files) is removed, with a log line
  saying why. Files there that no kept shard owns (shards cut short, leftovers) are removed.
  """
  if os.path.isdir(work_dir):
    difference = plan_difference(work_dir, plan)
    if difference is None:
      reused = {}
      for position, (shard, digest) in enumerate(zip(shards, digests)):
        if stop.requested() is not None:  # the caller stops; nothing is removed before that
          return {}
        result = shard_file.finished_shard(work_dir, shard, digest)
        if result is not None:
          reused[position] = result
      remove_unowned_files(work_dir, reused.values())
      logging.info("resuming the unfinished build in %s: %d of %d shards reused (each checked: "
                   "same input files, size and record count), %d to write", work_dir,
                   len(reused), len(shards), len(shards) - len(reused))
      return reused
    logging.warning("starting over: the unfinished build in %s is not this command's (%s); "
                    "removing it", work_dir, difference)
    shutil.rmtree(work_dir)
  os.makedirs(work_dir)
  shard_file.write_json_durably(os.path.join(work_dir, PLAN_FILE), plan)
  return {}


def remove_unowned_files(work_dir: str, kept: Sequence[ShardResult]) -> None:
  """Removes from work_dir every file but the plan and the kept shards with their sidecars
  (shards cut short by a stop or a full disk: their space goes back)."""
  keep = {PLAN_FILE}
  for result in kept:
    keep.update((os.path.basename(result.path),
                 os.path.basename(shard_file.done_path(result.path))))
  for entry in os.scandir(work_dir):
    if entry.name not in keep:
      if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path)
      else:
        os.remove(entry.path)

