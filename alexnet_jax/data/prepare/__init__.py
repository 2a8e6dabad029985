"""Preparing ImageNet: the ILSVRC-2012 tars (or an extracted folder tree) written as a tfds
`imagenet2012` build, `<data_dir>/imagenet2012/<version>/`, that `data.source=tfds` (or `auto`)
reads with random access. `python -m alexnet_jax.tools.prepare` is its command line.

The TensorFlow-free writer produces exactly what tfds would: the `imagenet2012` features
(`image` JPEG bytes, `label`, `file_name`) serialized as tf.train.Example protos (tfds ships the
proto classes), in ArrayRecord shards with `group_size:1` (random access), plus tfds's
dataset_info.json and features.json, so `tfds.data_source` opens it as any imagenet2012 build.
A file `alexnet_jax_prepare.json` next to them records how the images were stored
(`format`: jpeg or raw). Worker processes each write whole shards; unreadable images are
skipped, listed and counted. Everything is written into `<version>.incomplete-alexnet_jax/`
and renamed to `<version>/` only at the end, so an interrupted prepare leaves nothing a run
could read; a directory that already holds a build is refused unless `overwrite`.

SIGINT or SIGTERM stops within seconds (the workers are ended; `Interrupted`) and keeps the
shards already finished: each one's `.done.json` is written only once the shard is complete
and on disk, and the same build run again reuses them after checking them against the plan,
their size and record count. A full disk is one sentence with an estimate of the space still
needed (`DiskFullError`); the finished shards are kept for the rerun too.

- sources.py: the shards of the tars or the folders (`plan_tars`, `plan_folder`);
- storage.py: how an image is stored (`StoreOptions`, `stored_image`);
- shard_file.py: one shard written, with its sidecar, and a finished one checked;
- resume.py: the incomplete build's plan, and which finished shards a rerun keeps;
- stop.py: SIGINT/SIGTERM noted and acted on between images and shards;
- workers.py: the shards run in a pool of processes; the full-disk sentence;
- finish.py: the finished shards made a tfds dataset directory;
- dataset.py: one build from start to end (`write_tfds_dataset`), or tfds's own builder.
"""

from alexnet_jax.data.prepare.dataset import (
    BuildExistsError, check_no_build, prepare_with_tfds, write_tfds_dataset)
from alexnet_jax.data.prepare.sources import (
    TRAIN_TAR, VAL_TAR, Shard, plan_folder, plan_tars)
from alexnet_jax.data.prepare.stop import Interrupted
from alexnet_jax.data.prepare.storage import FORMATS, StoreOptions, check_options
from alexnet_jax.data.prepare.workers import DiskFullError

__all__ = [
    "BuildExistsError", "DiskFullError", "FORMATS", "Interrupted", "Shard", "StoreOptions",
    "TRAIN_TAR", "VAL_TAR", "check_no_build", "check_options", "plan_folder", "plan_tars",
    "prepare_with_tfds", "write_tfds_dataset",
]
