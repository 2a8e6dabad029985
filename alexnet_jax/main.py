"""Command line: train (and resume), or evaluate a checkpoint.

  python -m alexnet_jax.main --config=configs/quickstart.py --workdir=DIR            # train/resume
  python -m alexnet_jax.main --config=configs/quickstart.py --workdir=DIR --mode=eval
  ... --config.batch_size=256 --config.model.dtype=bfloat16                         # overrides
"""

from __future__ import annotations

import json
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); fields overridable as --config.field=value.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, logs.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train or resume from the latest checkpoint in workdir. "
                          "eval: evaluate a checkpoint (config.eval_checkpoint_step, -1 = latest).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None,
    "host:port of process 0 of a multi-process job. Not needed on SLURM, Cloud TPU or "
    "Kubernetes, where it is detected.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in the job.")
_TRACEBACK = flags.DEFINE_bool("traceback", False,
                               "Show the full traceback of configuration and data errors.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can cause (bad config value, missing data, foreign checkpoint): each carries
# one sentence saying what and where; a library traceback would bury it.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError)


def _quiet_library_info_logs() -> None:
  """Orbax and Grain log every save and read at INFO; keep their warnings, drop the chatter."""
  import logging as std_logging

  class _Filter(std_logging.Filter):
    def filter(self, record):
      noisy = any(part in record.pathname for part in ("/orbax/", "/grain/", "/jax/_src/"))
      return record.levelno >= std_logging.WARNING or not noisy

  # On the handler, so it also catches libraries that log through their own Python loggers.
  logging.get_absl_handler().addFilter(_Filter())


def run(config, workdir: str, mode: str) -> int:
  import jax  # after absl parsed the flags, so JAX picks up its own flags and env

  from alexnet_jax import distributed, evaluate, experiment, train

  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  exp = experiment.build(config)
  if mode == "eval":
    metrics = evaluate.evaluate_checkpoint(exp, workdir)
    if jax.process_index() == 0:
      print(json.dumps(metrics), flush=True)
    return 0
  result = train.train_and_evaluate(exp, workdir)
  if result.interrupted_by is not None:
    return 128 + result.interrupted_by  # the shell's convention for "ended by a signal"
  if result.eval_metrics and jax.process_index() == 0:
    logging.info("Final eval: %s", json.dumps(result.eval_metrics))
  return 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  _quiet_library_info_logs()
  from alexnet_jax import cpu_runtime

  # Before anything starts a JAX backend: XLA reads its flags once, at that moment.
  for line in cpu_runtime.configure(_CONFIG.value.get("cpu_runtime_tuning", True)):
    logging.info("CPU runtime: %s", line)
  try:
    return run(_CONFIG.value, _WORKDIR.value, _MODE.value)
  except USER_ERRORS as e:
    if _TRACEBACK.value:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
  app.run(main)
