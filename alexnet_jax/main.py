"""Command line: train (and resume), or evaluate a checkpoint.

  python -m alexnet_jax.main --config=configs/quickstart.py --workdir=DIR            # train/resume
  python -m alexnet_jax.main --config=configs/quickstart.py --workdir=DIR --mode=eval
  ... --config.batch_size=256 --config.model.dtype=bfloat16                         # overrides

A mistake the user can fix (`errors.UserError`) prints one sentence and exits 1 (2 for a wrong
command line; `errors.report`, the policy the tools share); anything else is an internal error
and keeps its traceback.
"""

from __future__ import annotations

import json
import re
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from alexnet_jax import errors
from alexnet_jax.errors import CheckpointWriteError, UserError, help_asked
from alexnet_jax.runtime import cpu_runtime, distributed, interrupts, logs

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

REPORT_BUG = ("This is an internal error of alexnet_jax (or a library under it), not a "
              "mistake in your input: please report it with the traceback above and the command "
              "you ran.")


def _usage_sentence(error: BaseException) -> str:
  """One sentence for a command line that could not be parsed."""
  text = str(error)
  suggestion = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text.replace("\\", ""))
  if suggestion:
    return (f"--config.{suggestion.group(2)} is not a config field; did you mean "
            f"--config.{suggestion.group(1)}? (every field: alexnet_jax/config_base.py)")
  missing = re.search(r"Attempted \[[^\]]*\]:\s*(\S+)\s*\n\s*\[Errno 2\]", text)
  if missing or "Failed loading config file" in text:
    path = missing.group(1) if missing else "the --config file"
    return f"--config={path} does not exist: name a config file such as configs/quickstart.py."
  return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with one sentence and exit status 2 for a wrong command line (instead of
  a library traceback). First of all, the process's signal policy: the config file's imports
  (jax, flax) take seconds, and a Ctrl-C there must stop the process too."""
  logs.quiet_library_logs()
  # SIGTERM/Ctrl-C for the process's whole life: before the training loop a signal stops
  # start-up with one line; in the loop, the step finishes and a checkpoint is written; a
  # second Ctrl-C exits at once (runtime/interrupts.py).
  interrupts.install()
  try:
    argv = flags.FLAGS(argv)
    _CONFIG.value.keys()  # ml_collections defers a config file's load error to here
    return argv
  # ml_collections reports a bad --config.field as AttributeError/KeyError/TypeError/
  # ValueError and a missing config file as OSError, all while parsing the command line.
  except (flags.Error, AttributeError, KeyError, OSError, TypeError, ValueError) as e:
    print(f"error: {_usage_sentence(e)}\nPass --help for the flags.", file=sys.stderr)
    sys.exit(2)
  except SystemExit:
    if help_asked(argv):
      sys.exit(0)
    raise
  except interrupts.StoppedEarly as e:
    interrupts.exit_now(128 + e.signum, interrupts.stopped_early_message(e.signum))


def run(config, workdir: str, mode: str) -> int:
  """Builds the experiment and trains or evaluates; returns the exit status."""
  # Imported here, after parse_flags installed the signal policy and cpu_runtime set XLA's
  # flags: these imports take seconds, and a Ctrl-C during them must stop the process cleanly.
  import jax

  from alexnet_jax import evaluate, experiment, train
  from alexnet_jax.runtime import compilation_cache

  distributed.maybe_initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               timeout_s=config.distributed_timeout_s)
  cache = compilation_cache.enable(config.compilation_cache_dir)
  logging.info("Compilation cache: %s", cache or "off")
  exp = experiment.build(config, mode)
  if mode == "eval":
    metrics = evaluate.evaluate_checkpoint(exp, workdir)
    if jax.process_index() == 0:
      print(json.dumps(metrics), flush=True)
    return 0
  result = train.train_and_evaluate(exp, workdir)
  if result.interrupted_by is not None:
    return 128 + result.interrupted_by  # the shell's convention for "ended by a signal"
  return 0


def main(argv):
  """absl entry point: applies the CPU settings before JAX starts, then trains or evaluates
  with the user-error policy of this module. Returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  interrupts.install()  # parse_flags did, unless main is called directly
  config = _CONFIG.value
  try:
    # Before anything starts a JAX backend: XLA reads its flags once, at that moment. The
    # process count comes from the flags or, on Slurm/TPU/JAX_COORDINATOR_ADDRESS jobs, from
    # the environment (under Slurm, --num_processes is never passed).
    for line in cpu_runtime.configure(config.cpu_runtime_tuning, config.cpu_eigen_convolutions,
                                      model_parallel=config.parallel.model,
                                      num_processes=distributed.process_count(
                                          _NUM_PROCESSES.value)):
      logging.info("CPU runtime: %s", line)
    status = run(config, _WORKDIR.value, _MODE.value)
    received = interrupts.current().signum
    if status == 0 and received is not None:
      # A signal Python dropped before it could stop start-up or an evaluation (raised inside a
      # garbage-collection callback): the run is not reported as complete.
      interrupts.exit_now(128 + received, interrupts.stopped_early_message(received))
    if received is not None:  # stopped by it, checkpoint written: a second press stays 130
      interrupts.exit_after_stop(status)
    return status
  except interrupts.StoppedEarly as e:
    # Leave without unwinding: XLA's threads may still be busy (a compile, a restore).
    interrupts.exit_now(128 + e.signum, interrupts.stopped_early_message(e.signum))
  except UserError as e:
    if _TRACEBACK.value:
      traceback.print_exc()
    if isinstance(e, CheckpointWriteError):
      # Orbax's writer threads are left mid-failure; letting the interpreter tear them down
      # aborted the process ('terminate called ...') after this message. Leave at once: the
      # message is out, the last complete checkpoint is on disk, Grain workers follow us.
      interrupts.exit_now(1, f"error: {e}")
    return errors.report(e)
  except Exception:
    traceback.print_exc()
    print(f"error: {REPORT_BUG}", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
