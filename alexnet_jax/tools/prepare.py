"""Turns the ImageNet tars (or an extracted folder tree) into ArrayRecord files for training.

Three ways, all ending in `<data_dir>/imagenet2012/<version>/` that `data.source=tfds` (or
`auto`) reads with random access:

  # tfds's own builder, original JPEGs (needs TensorFlow: pip install 'alexnet_jax[prepare]')
  python -m alexnet_jax.tools.prepare --tars_dir=DIR --data_dir=OUT

  # no TensorFlow: images stored pre-resized to shorter side 256, the paper's preprocessing
  python -m alexnet_jax.tools.prepare --tars_dir=DIR --data_dir=OUT --resize_shorter=256
  python -m alexnet_jax.tools.prepare --folder_dir=DIR --data_dir=OUT --resize_shorter=256

  # the paper's storage: central 256x256 patch as raw uint8 RGB (196,608 bytes an image)
  python -m alexnet_jax.tools.prepare --folder_dir=DIR --data_dir=OUT --format=raw

DIR with --tars_dir holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar; with
--folder_dir it holds train/<wnid>/*.JPEG and val/ (either layout, see docs/data.md).
`--folder_dir` without `--resize_shorter` packs the original files unchanged.

Ctrl-C (SIGINT) or SIGTERM stops within seconds (status 130 or 143) and keeps the shards
already finished: the same command run again resumes from them. A full disk is one sentence
with an estimate of the space still needed (status 1). This module is the command line; the
build itself (what is written, resuming, the workers) is alexnet_jax.data.prepare's.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Sequence

from absl import flags

from alexnet_jax.data import decode, imagenet, prepare, raw
from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.tools import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Command-line flags; defined only when run as a program, so importing defines none."""
  flags.DEFINE_string("tars_dir", None,
                      f"Folder holding {prepare.TRAIN_TAR} and {prepare.VAL_TAR}.")
  flags.DEFINE_string("folder_dir", None, "Folder holding train/<wnid>/*.JPEG and val/ instead.")
  flags.DEFINE_string("data_dir", None, "Where to write (becomes --config.data.data_dir).")
  flags.DEFINE_enum("format", "jpeg", list(prepare.FORMATS),
                    "jpeg: encoded images (see --resize_shorter). raw: the paper's storage, the "
                    "central 256x256 patch (or --resize_shorter) as uint8 RGB pixels.")
  flags.DEFINE_integer("resize_shorter", 0,
                       "Store images resized to this shorter side (256 is the paper's); 0 keeps "
                       "the original files (jpeg) or means 256 (raw).")
  flags.DEFINE_enum("jpeg_decoder", "auto", list(decode.DECODERS),
                    "JPEG decoder for resizing (see data.jpeg_decoder).")
  flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of re-encoded images.")
  flags.DEFINE_integer("num_workers", os.cpu_count() or 1, "Worker processes.")
  flags.DEFINE_integer("examples_per_shard", 2048,
                       "Images per shard (the train tar always gives one shard per class).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing build in --data_dir.")


@cli.report_user_errors
def main(argv: Sequence[str]) -> int:
  """Writes the ArrayRecord build the flags describe; returns 0, 1 on a UserError, 2 for a
  wrong command line."""
  if len(argv) > 1:
    raise UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
  if (FLAGS.tars_dir is None) == (FLAGS.folder_dir is None):
    raise UsageError("Give exactly one of --tars_dir and --folder_dir.")
  if not FLAGS.data_dir:
    raise UsageError("--data_dir is required.")
  source_flag, source = (("tars_dir", FLAGS.tars_dir) if FLAGS.tars_dir
                         else ("folder_dir", FLAGS.folder_dir))
  if not os.path.isdir(source):
    raise UserError(f"--{source_flag}={source} is not a directory.")
  if FLAGS.folder_dir and not os.path.isdir(os.path.join(source, "train")):
    raise UserError(f"--folder_dir={source} has no train/ folder: it must hold "
                    "train/<wnid>/*.JPEG and val/ (docs/data.md).")
  if FLAGS.tars_dir and FLAGS.resize_shorter <= 0 and FLAGS.format == "jpeg":
    prepare.prepare_with_tfds(FLAGS.tars_dir, FLAGS.data_dir)
    return 0
  options = prepare.StoreOptions(
      FLAGS.resize_shorter, FLAGS.jpeg_quality, format=FLAGS.format,
      raw_side=FLAGS.resize_shorter if FLAGS.resize_shorter > 0 else raw.SIDE,
      decoder=FLAGS.jpeg_decoder)
  prepare.check_options(options)
  # Before listing a source of 1.3M files.
  prepare.check_no_build(FLAGS.data_dir, FLAGS.overwrite)
  try:  # listing ImageNet takes tens of seconds: Ctrl-C there is no failure either
    if FLAGS.tars_dir:
      shards = prepare.plan_tars(FLAGS.tars_dir, FLAGS.examples_per_shard)
      origin = FLAGS.tars_dir
    else:
      shards = prepare.plan_folder(FLAGS.folder_dir, FLAGS.examples_per_shard)
      origin = FLAGS.folder_dir
  except KeyboardInterrupt:
    print(f"prepare stopped by SIGINT while listing --{source_flag}; nothing was written.",
          file=sys.stderr, flush=True)
    return 128 + signal.SIGINT
  started = time.time()
  try:
    version_dir = prepare.write_tfds_dataset(
        shards, FLAGS.data_dir, options, num_workers=FLAGS.num_workers,
        origin=os.path.abspath(origin), overwrite=FLAGS.overwrite)
  except prepare.Interrupted as e:
    print(str(e), file=sys.stderr, flush=True)
    return 128 + e.signum  # the shell's status for "ended by a signal"
  summary = json.loads((version_dir / imagenet.PREPARE_INFO_FILE).read_text())
  print(f"wrote {version_dir} in {time.time() - started:.0f} s: {summary['num_examples']}, "
        f"{len(summary['skipped'])} unreadable files skipped. Train with "
        f"--config.data.data_dir={FLAGS.data_dir}")
  return 0


def run() -> None:
  """`python -m alexnet_jax.tools.prepare`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
