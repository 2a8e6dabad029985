"""Orbax checkpoints of the whole training state.

One checkpoint step holds three items:
- `state`: params, optimizer state, step, RNG and schedule state (sharded arrays);
- `data`: the Grain iterator state of each process, so a resumed run sees the same batches;
- `meta`: JSON describing the model and its input preprocessing, checked before restoring so
  that a checkpoint of another model gives one clear error rather than a shape mismatch deep in
  Orbax, and so that tools know how to preprocess images for it.
Every process takes part in saves; saves are asynchronous.

This is the only module that talks to Orbax. Training saves and restores through
`Checkpointer`; the tools (predict, visualize, export) and `init_from` read through
`resolve` (which checkpoint a path names) and `read_for_inference` (params, BN statistics and
meta as numpy trees, on any device count, without the optimizer state).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging as std_logging
import os
import pathlib
import re
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from alexnet_jax.errors import UserError

# Fields of `meta["model"]` that change the parameter tree: a mismatch cannot be restored.
STRUCTURAL_MODEL_FIELDS = ("variant", "num_classes", "in_channels", "image_size")


class CheckpointMismatchError(UserError):
  """A checkpoint written by a model whose parameter tree differs from the configured one."""


class Checkpointer:
  """Saves and restores the items `state`, `data` and `meta` of `directory/<step>/`.

  `keep`: how many recent steps Orbax keeps (older ones are deleted after a save).
  `read_only`: never creates or deletes anything, and saves synchronously (evaluation, tools).
  """

  def __init__(self, directory: str | pathlib.Path, *, keep: int, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    # A read-only manager makes Orbax warn on every open and read although nothing is wrong:
    # its warnings are dropped while this reader lives (errors still show).
    self._quiet = _DropOrbaxWarnings() if read_only else None
    if self._quiet is not None:
      std_logging.getLogger("absl").addFilter(self._quiet)
    # cleanup_tmp_directories: a save abandoned mid-way (a second Ctrl-C exits at once, a
    # kill) leaves a temporary directory that no step lists; the next writer removes it.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only, cleanup_tmp_directories=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    """The largest saved step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Every saved step, ascending."""
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of `step` (every process must call it); `wait` ends it."""
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def reached_preemption(self, step: int) -> bool:
    """Whether the job scheduler asked to stop (Orbax's preemption sync point) at `step`."""
    return self._manager.reached_preemption(step)

  def read_meta(self, step: int) -> dict[str, Any]:
    """The JSON `meta` item of `step` (model fields, preprocessing, class names)."""
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any,
              data_iterator: grain.DatasetIterator | None = None) -> Any:
    """Restores onto the shardings of `abstract_state` (any device count) and, if given,
    sets `data_iterator` to where the saved run was."""
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    return self._manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def reload(self) -> None:
    """Re-reads the steps on disk (after a damaged step directory was moved aside)."""
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until the asynchronous saves in flight are written."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads."""
    self._manager.close()
    if self._quiet is not None:
      std_logging.getLogger("absl").removeFilter(self._quiet)
      self._quiet = None


def check_compatible(meta: dict[str, Any], model_config: dict[str, Any], where: str) -> None:
  """Raises CheckpointMismatchError (one sentence) when the checkpoint in `where` was
  written by a model whose STRUCTURAL_MODEL_FIELDS differ from `model_config`'s."""
  saved = meta.get("model", {})
  for field in STRUCTURAL_MODEL_FIELDS:
    if field in saved and saved[field] != model_config[field]:
      raise CheckpointMismatchError(
          f"The checkpoint in {where} was written by a model with model.{field}="
          f"{saved[field]!r}, but the config asks for model.{field}={model_config[field]!r}. "
          f"Use the config the checkpoint was trained with (its workdir holds config.json), or "
          f"pass --config.model.{field}={saved[field]!r}, or start a new workdir.")


# --------------------------------------------------------------------------------------------
# The resume contract (docs/resume.md)
#
# Every config field is in exactly one of two classes (tests/test_resume_contract.py checks that
# config_base has no field in neither). A field of RESUME_APPLIED takes effect on resume exactly
# as in a fresh run started from the checkpoint's state with the new value; a change of a field
# of RESUME_REFUSED is refused before anything is written or moved, in one sentence that names
# the field, both values, and how to branch instead (init_from in a new workdir). REFUSED are
# the fields that change the state tree, or what the saved state means, or that only act when
# a run starts (so a new value could not be applied).

_CHANGES_STATE = "it changes the optimizer state the checkpoint holds"
_CHANGES_PARAMS = "it changes the parameters the checkpoint holds"
_CHANGES_MEANING = "the saved weights were trained for the old value"
_ONLY_AT_START = "it only acts when a run starts from nothing"
RESUME_REFUSED: dict[str, str] = {
    "seed": "the initial weights, the dropout stream and the data order come from it",
    "batch_size": "steps, the data position and the schedule are counted in batches of it",
    "init_from": _ONLY_AT_START,
    "reinit": _ONLY_AT_START,
    "freeze": _CHANGES_STATE,
    "data.mean": _CHANGES_MEANING,
    "data.std": _CHANGES_MEANING,
    "model.variant": _CHANGES_PARAMS,
    "model.num_classes": _CHANGES_PARAMS,
    "model.in_channels": _CHANGES_PARAMS,
    "model.image_size": _CHANGES_PARAMS,
    "model.init": _ONLY_AT_START,
    "model.lrn_k": _CHANGES_MEANING,
    "model.lrn_size": _CHANGES_MEANING,
    "model.lrn_alpha": _CHANGES_MEANING,
    "model.lrn_beta": _CHANGES_MEANING,
    "model.lrn_alpha_divided_by_size": _CHANGES_MEANING,
    "optimizer.name": _CHANGES_STATE,
    "optimizer.decay_biases": _CHANGES_STATE,
}
RESUME_APPLIED: tuple[str, ...] = (
    # Length, cadences, evaluation, process settings: read afresh by every run.
    "eval_batch_size", "num_epochs", "num_train_steps", "log_every_steps", "eval_every_steps",
    "checkpoint_every_steps", "keep_checkpoints", "eval_checkpoint_step", "eval_at_end",
    "eval_report", "eval_report_confusions", "cpu_runtime_tuning", "cpu_eigen_convolutions",
    "compilation_cache_dir", "stall_warning_steps", "distributed_timeout_s",
    # Data: where it is, how it is loaded and augmented (the position is the step).
    "data.source", "data.data_dir", "data.num_workers", "data.prefetch_batches",
    "data.device_prefetch", "data.num_train_examples", "data.num_eval_examples",
    "data.synthetic_pool_size", "data.max_skip_fraction", "data.train_transform",
    "data.resize_size", "data.pca_std", "data.ten_crop", "data.jpeg_draft", "data.jpeg_decoder",
    # Model fields that change neither the parameters nor what they compute (layer forms are
    # equal in value), or act only in training.
    "model.dropout_rate", "model.dtype", "model.group_impl", "model.kernels",
    # The optimizer's numbers, written into its state at every step (steps.make_train_step),
    # and the schedule, computed from the step (the plateau scale is plateau's alone).
    "optimizer.learning_rate", "optimizer.base_batch_size", "optimizer.momentum",
    "optimizer.nesterov", "optimizer.weight_decay", "optimizer.b1", "optimizer.b2",
    "optimizer.trust_coefficient",
    "schedule.name", "schedule.factor", "schedule.boundaries_epochs", "schedule.patience",
    "schedule.max_reductions", "schedule.min_delta", "schedule.warmup_epochs",
    "schedule.end_factor", "schedule.power",
    # Layout only: a checkpoint restores onto any mesh.
    "parallel.model", "parallel.fsdp",
)


class ResumeRefused(UserError):
  """The config changes a field the checkpoint to resume cannot take (RESUME_REFUSED)."""


def flat_config(config: Any) -> dict[str, Any]:
  """{'optimizer.momentum': 0.9, ...}: a ConfigDict or a nested dict (as `meta['config']`
  holds it) flattened to dotted field names, values as JSON gives them back (tuples as
  lists), so a saved and a live config compare equal when their values are."""
  tree = config.to_dict() if hasattr(config, "to_dict") else config
  tree = json.loads(json.dumps(tree, default=str))
  flat = {}

  def walk(prefix: str, node: Any) -> None:
    for key, value in node.items():
      name = f"{prefix}{key}"
      if isinstance(value, dict):
        walk(name + ".", value)
      else:
        flat[name] = value
  walk("", tree)
  return flat


def _flag(field: str, value: Any) -> str:
  if isinstance(value, list):
    value = "(" + ", ".join(map(repr, value)) + ("," if len(value) == 1 else "") + ")"
  elif isinstance(value, bool):
    value = str(value).lower()
  return f"--config.{field}={value}" if not isinstance(value, str) or value else \
      f"--config.{field}=''"


def config_changes(saved: dict[str, Any], config: Any) -> list[tuple[str, Any, Any]]:
  """(field, checkpoint's value, config's value) for every field whose value differs; a field
  the checkpoint does not record (written before the field existed) is not a change."""
  old, new = flat_config(saved), flat_config(config)
  return [(f, old[f], new[f]) for f in sorted(new) if f in old and old[f] != new[f]]


def check_resume(meta: dict[str, Any], config: Any, checkpoint_dir: pathlib.Path,
                 ) -> list[tuple[str, Any, Any]]:
  """Enforces the resume contract between `meta['config']` (the config that wrote the
  checkpoint `checkpoint_dir`, format 3 on) and `config`. Returns the applied changes
  (field, old, new) for the log; raises ResumeRefused naming every refused change.
  Checkpoints that record no config are checked by their state tree only (restore)."""
  if "config" not in meta:
    return []
  changes = config_changes(meta["config"], config)
  refused = [(f, old, new) for f, old, new in changes if f in RESUME_REFUSED]
  if refused:
    what = "; ".join(f"{f}={old!r} in the checkpoint, {new!r} now ({RESUME_REFUSED[f]})"
                     for f, old, new in refused)
    keep = " ".join(_flag(f, old) for f, old, _ in refused)
    workdir = checkpoint_dir.parent.parent
    raise ResumeRefused(
        f"Cannot resume {checkpoint_dir} with this config: {what}. Resume with {keep}, or "
        f"branch: train in a new --workdir with --config.init_from={checkpoint_dir} (weights "
        f"only; {workdir} is left as it is).")
  return [(f, old, new) for f, old, new in changes if f not in RESUME_REFUSED]


# Suffix a damaged checkpoint directory is renamed with, so the run can go on from an earlier
# step and the user can still inspect it (Orbax ignores names that are not integers).
DAMAGED_SUFFIX = ".damaged"
# The one log line for a damaged checkpoint stays within this many characters.
DAMAGE_LINE_CHARS = 200


def restore_for_resume(checkpointer: Checkpointer, abstract_state: Any, config: Any,
                       log: Callable[[str], None]) -> tuple[Any, int] | None:
  """(state, step) of the newest checkpoint of `checkpointer` that the config may resume and
  that reads back onto `abstract_state` (ShapeDtypeStructs with shardings); None when there is
  none. Every process must call it.

  Raises ResumeRefused (nothing moved) when the config changes a RESUME_REFUSED field or the
  state tree, and CheckpointMismatchError for a checkpoint of another model. Only a
  checkpoint that is unreadable under the tree it was written with (its own metadata) counts
  as damaged: it is renamed <step>.damaged with one log line, and the next older one is tried.
  """
  wanted_tree = _leaves(abstract_state)
  for step in sorted(checkpointer.all_steps(), reverse=True):
    where = checkpointer.directory / str(step)
    try:
      meta = checkpointer.read_meta(step)
    except Exception as e:  # noqa: BLE001 - an unreadable meta item is damage
      _set_aside(checkpointer, step, "meta", e)
      continue
    applied = check_resume(meta, config, where)
    check_compatible(meta, config.model.to_dict(), str(checkpointer.directory))
    saved_tree = _saved_leaves(where / "state")
    if saved_tree is not None and saved_tree != wanted_tree:
      raise _tree_refusal(where, saved_tree, wanted_tree)
    try:
      state = checkpointer.restore(step, abstract_state)
    except Exception as e:  # noqa: BLE001 - damage, or a state tree today's config changes
      if saved_tree is not None and _readable_as_written(where / "state"):
        raise _tree_refusal(where, saved_tree, wanted_tree) from e
      _set_aside(checkpointer, step, "state", e)
      continue
    for field, old, new in applied:
      log(f"Resuming with {field}={new!r} (the checkpoint was trained with {old!r}).")
    return state, step
  return None


def _set_aside(checkpointer: Checkpointer, step: int, item: str, error: BaseException) -> None:
  damaged = checkpointer.directory / f"{step}{DAMAGED_SUFFIX}"
  if jax.process_index() == 0:
    os.replace(checkpointer.directory / str(step), damaged)
  head = f"Checkpoint step {step} is unreadable ("
  tail = f"); moved to {damaged.name}, trying the previous one."
  detail = f"{item}/{_unreadable_part(error)}"
  room = DAMAGE_LINE_CHARS - len(head) - len(tail)
  logging.warning("%s%s%s", head, detail if len(detail) <= room else detail[:room - 3] + "...",
                  tail)
  checkpointer.reload()


def _unreadable_part(error: BaseException) -> str:
  """The array TensorStore failed on ('params.fc6.kernel: read failed'), else the error's
  first line: Orbax's message carries a whole TensorStore spec."""
  text = str(error)
  names = [n for n in re.findall(r"'path': '([^'/][^']*)/?'", text)]
  if names:
    return f"{names[-1].rstrip('/')}: read failed"
  first = text.strip().splitlines()[0] if text.strip() else ""
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _keys(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _leaves(tree: Any) -> dict[tuple[str, ...], tuple[tuple[int, ...], str]]:
  """{path: (shape, dtype)} of a tree's array leaves; containers of any kind (dicts, optax's
  named tuples, Orbax's metadata) give the same paths for the same state."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_keys(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for path, leaf in flat}


def _metadata_tree(checkpointer: ocp.PyTreeCheckpointer, state_dir: pathlib.Path) -> Any:
  """The tree of ArrayMetadata a checkpoint's state item records (nothing is read)."""
  saved = checkpointer.metadata(state_dir)
  tree = getattr(saved, "item_metadata", saved)
  return getattr(tree, "tree", tree)


def _saved_leaves(state_dir: pathlib.Path):
  """`_leaves` of the state a checkpoint holds, from its metadata (nothing is read); None
  when the metadata itself cannot be read (then the restore decides)."""
  try:
    with _reading_quietly():
      return _leaves(_metadata_tree(ocp.PyTreeCheckpointer(), state_dir))
  except Exception:  # noqa: BLE001 - damaged metadata: the restore below will say so
    return None


def _readable_as_written(state_dir: pathlib.Path) -> bool:
  """Whether every array of the state reads back under the checkpoint's own tree (to host
  numpy, on any device count): the test that tells damage from a changed config."""
  try:
    with _reading_quietly():
      checkpointer = ocp.PyTreeCheckpointer()
      tree = _metadata_tree(checkpointer, state_dir)
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=args))
    return True
  except Exception:  # noqa: BLE001 - any failure to read means damage
    return False


def _tree_refusal(where: pathlib.Path, saved: dict, wanted: dict) -> ResumeRefused:
  only_saved = sorted(set(saved) - set(wanted))
  only_wanted = sorted(set(wanted) - set(saved))
  reshaped = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
  examples = [f"{'/'.join(k)} only in the checkpoint" for k in only_saved[:1]]
  examples += [f"{'/'.join(k)} only in this config's state" for k in only_wanted[:1]]
  examples += [f"{'/'.join(k)} is {saved[k][0]} {saved[k][1]} there, {wanted[k][0]} "
               f"{wanted[k][1]} here" for k in reshaped[:1]]
  detail = "; ".join(examples) or "the same arrays in another structure"
  return ResumeRefused(
      f"Cannot resume {where} with this config: it makes another train state ({detail}), as "
      f"a change of optimizer.name, optimizer.decay_biases, freeze or a model field does; the "
      f"config that wrote it is in {where.parent.parent / 'config.json'}. Resume with that "
      f"config, or branch: train in a new --workdir with --config.init_from={where} (weights "
      f"only).")


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (a matching tree), as Orbax's
  StandardRestore wants them to restore onto those devices."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --------------------------------------------------------------------------------------------
# Reading one checkpoint (tools, init_from): numpy on the host, no optimizer state


@dataclasses.dataclass(frozen=True)
class Restored:
  """What inference needs from one checkpoint, as numpy arrays on the host.

  params: the Flax params tree (float32 or the dtype saved; shapes as models.init makes them).
  batch_stats: alexnet_bn's running BN statistics ({} for models without batch norm).
  meta: the `meta` item (`model`, `preprocessing`, `class_names`; experiment.checkpoint_meta).
  step: the training step the checkpoint was written at.
  directory: the checkpoints/ folder holding it (the checkpoint is directory/<step>/).
  """
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  meta: dict[str, Any]
  step: int
  directory: pathlib.Path


class _DropOrbaxWarnings(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.ERROR or "/orbax/" not in record.pathname


@contextlib.contextmanager
def _reading_quietly():
  """Orbax warns on every read-only open ('Given directory is read only', 'read_only=True,
  setting max_to_keep=None', 'Metadata file does not exist'): expected here, so dropped while
  the readers below run; its errors still show."""
  logger = std_logging.getLogger("absl")  # absl.logging's logger, which Orbax logs through
  drop = _DropOrbaxWarnings()
  logger.addFilter(drop)
  try:
    yield
  finally:
    logger.removeFilter(drop)


def _saved_steps(directory: pathlib.Path) -> list[int]:
  return sorted(int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and (p / "state").is_dir())


def resolve(path: str | os.PathLike, step: int | None = None) -> tuple[pathlib.Path, int]:
  """(checkpoints directory, step) of the checkpoint that `path` and `step` name.

  `path` is a run directory (the training `--workdir`), its `checkpoints/` folder, or one
  `checkpoints/<step>/`; `~` is expanded. `step` None or negative means the latest.
  Raises UserError (one sentence) for a path that does not exist, a folder without
  checkpoints, or a step that is not saved (listing the saved steps).
  """
  path = pathlib.Path(os.path.expanduser(os.fspath(path))).absolute()
  if not path.exists():
    raise UserError(f"{path} does not exist: give a run directory (the --workdir of a "
                    "training run), its checkpoints/ folder or one checkpoints/<step>.")
  if path.name.isdigit() and (path / "state").is_dir() and (path / "meta").is_dir():
    if step is not None and step >= 0 and step != int(path.name):
      raise UserError(f"{path} is the checkpoint of step {path.name}, not step {step}.")
    return path.parent, int(path.name)
  directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = _saved_steps(directory) if directory.is_dir() else []
  if not steps:
    raise UserError(f"No checkpoints in {path}: point at a run directory (the --workdir of a "
                    "training run) or its checkpoints/ folder.")
  if step is None or step < 0:
    return directory, steps[-1]
  if step not in steps:
    raise UserError(f"Checkpoint step {step} is not in {directory}; available steps: "
                    f"{', '.join(map(str, steps))}.")
  return directory, step


def read_meta(directory: str | os.PathLike, step: int) -> dict[str, Any]:
  """The JSON `meta` item of `directory/<step>` (a `resolve` result), read-only."""
  with _reading_quietly():
    checkpointer = Checkpointer(directory, keep=1, read_only=True)
    try:
      return checkpointer.read_meta(step)
    finally:
      checkpointer.close()


def read_state_items(directory: str | os.PathLike, step: int,
                     names: tuple[str, ...]) -> dict[str, Any]:
  """Top-level items `names` (e.g. 'params', 'batch_stats') of a checkpoint's train state,
  as numpy arrays on the host; names that are absent or empty are left out.

  A partial restore: works on any device count and whatever optimizer the run used, and never
  reads the optimizer state. Raises UserError when the state holds no 'params' (not a
  checkpoint of this project).
  """
  path = pathlib.Path(directory) / str(step) / "state"
  with _reading_quietly():
    return _read_state_items(path, names)


def _read_state_items(path: pathlib.Path, names: tuple[str, ...]) -> dict[str, Any]:
  checkpointer = ocp.PyTreeCheckpointer()
  tree = _metadata_tree(checkpointer, path)
  if "params" not in tree:
    raise UserError(f"{path} holds no 'params': not a checkpoint of this project.")
  wanted = {name: tree[name] for name in names if name in tree and tree[name]}
  if not wanted:
    return {}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True))
  return jax.tree.map(np.asarray, dict(restored))


def read_for_inference(path: str | os.PathLike, step: int | None = None) -> Restored:
  """The params, BN statistics and meta of the checkpoint `resolve(path, step)` names.

  Raises UserError as `resolve` does, and when the checkpoint records no `model` fields (not
  written by alexnet_jax).
  """
  directory, step = resolve(path, step)
  meta = read_meta(directory, step)
  if "model" not in meta:
    raise UserError(f"The checkpoint {directory / str(step)} records no model fields; it was "
                    "not written by alexnet_jax.")
  items = read_state_items(directory, step, ("params", "batch_stats"))
  return Restored(params=items["params"], batch_stats=items.get("batch_stats", {}), meta=meta,
                  step=step, directory=directory)
