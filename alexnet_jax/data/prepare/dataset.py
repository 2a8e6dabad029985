"""One build from start to end: `write_tfds_dataset` refuses a directory that holds one already,
starts or resumes the incomplete build, writes the shards that are left, and finishes it; or
tfds's own builder over the tars (`prepare_with_tfds`, TensorFlow needed)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import signal
from typing import Sequence

from alexnet_jax.data import imagenet
from alexnet_jax.data.prepare import finish, resume, stop, storage, workers
from alexnet_jax.data.prepare.sources import Shard
from alexnet_jax.errors import UserError


class BuildExistsError(UserError, FileExistsError):
  """The output directory already holds a build (pass --overwrite)."""


def check_no_build(data_dir: str, overwrite: bool) -> pathlib.Path:
  """The version directory a build in `data_dir` goes to; raises BuildExistsError when
  data_dir already holds an imagenet2012 build of any version and not `overwrite`."""
  import tensorflow_datasets as tfds
  version_dir = pathlib.Path(tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir).data_dir)
  existing = imagenet.prepared_tfds_versions(data_dir)
  if (existing or version_dir.exists()) and not overwrite:
    found = version_dir if version_dir.exists() else version_dir.parent / existing[-1]
    raise BuildExistsError(f"{found} already holds a build; pass --overwrite to replace it, "
                           "or choose another --data_dir.")
  return version_dir


def write_tfds_dataset(shards: Sequence[Shard], data_dir: str,
                       options: storage.StoreOptions, *,
                       num_workers: int = 0, origin: str = "", overwrite: bool = False,
                       progress: bool = True) -> pathlib.Path:
  """Writes `shards` as `<data_dir>/imagenet2012/<version>/`, readable by tfds.data_source.

  Writes into `<version>.incomplete-alexnet_jax/` and renames it at the end (a run never sees
  half a build). An incomplete build of the same shards and options, left by an interrupted
  run, is resumed: its finished shards are checked and kept (resume.start_or_resume); one of
  another plan is removed first. Raises BuildExistsError (a UserError and FileExistsError)
  when data_dir already holds an imagenet2012 build of any version and not `overwrite`; with
  `overwrite` the old build is removed only once the new one is complete. Raises Interrupted
  on SIGINT/SIGTERM and DiskFullError (a UserError) on a full disk, keeping finished shards.
  """
  storage.check_options(options)
  version_dir = check_no_build(data_dir, overwrite)
  existing = imagenet.prepared_tfds_versions(data_dir)
  if overwrite:  # older versions would shadow or be shadowed by the new one: clear them too
    for version in existing:
      if version != version_dir.name:
        shutil.rmtree(version_dir.parent / version)
  work_dir = f"{version_dir}.incomplete-alexnet_jax"
  # Signals are noted from here on and acted on where stopping leaves a state to resume from.
  with stop.StopSignals() as signals:
    try:
      digests = []
      for shard in shards:  # ~1.5 s for ImageNet's 1.3M files
        if signals.signum is not None:
          raise _interrupted_before_writing(signals.signum, work_dir)
        digests.append(resume.shard_digest(shard))
      reused = resume.start_or_resume(work_dir, shards, digests,
                                      resume.build_plan(shards, digests, options))
      if signals.signum is not None:
        raise _interrupted_before_writing(signals.signum, work_dir)
      todo = [i for i in range(len(shards)) if i not in reused]
      results = workers.write_all_shards(
          [shards[i] for i in todo], data_dir, work_dir, options, num_workers, progress,
          digests=[digests[i] for i in todo], done=list(reused.values()), total=len(shards))
      # A signal now changes nothing: finishing takes seconds and leaves a whole build.
      return finish.finish_dataset(data_dir, work_dir, results, options, origin)
    except OSError as e:
      # The plan file, a sidecar, dataset_info.json: small, but no room for them either.
      if workers.is_disk_full(e):
        raise workers.DiskFullError(
            f"no space left on the device of {work_dir} ({e}); free space there and run the "
            "same command again to resume, or choose another --data_dir.") from None
      raise


def _interrupted_before_writing(signum: int, work_dir: str) -> stop.Interrupted:
  name = signal.Signals(signum).name
  if os.path.isdir(work_dir):
    return stop.Interrupted(
        signum, f"prepare stopped by {name} before writing; the unfinished build in "
        f"{work_dir} is kept: run the same command again to resume from it.")
  return stop.Interrupted(
      signum, f"prepare stopped by {name} before writing; nothing was written.")


def prepare_with_tfds(tars_dir: str, data_dir: str) -> None:
  """tfds's imagenet2012 builder over the manual tars, written as ArrayRecord."""
  if importlib.util.find_spec("tensorflow") is None:
    raise SystemExit(
        "Preparing the original JPEGs goes through tfds's imagenet2012 builder, which needs "
        "TensorFlow: pip install 'alexnet_jax[prepare]'. Or add --resize_shorter=256 to store "
        "pre-resized images without TensorFlow.")
  import tensorflow_datasets as tfds
  builder = tfds.builder(imagenet.TFDS_NAME, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=tars_dir))
