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
import logging
import os
import pathlib
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

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
      logging.getLogger("absl").addFilter(self._quiet)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only)
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
      logging.getLogger("absl").removeFilter(self._quiet)
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


class _DropOrbaxWarnings(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "/orbax/" not in record.pathname


@contextlib.contextmanager
def _reading_quietly():
  """Orbax warns on every read-only open ('Given directory is read only', 'read_only=True,
  setting max_to_keep=None', 'Metadata file does not exist'): expected here, so dropped while
  the readers below run; its errors still show."""
  logger = logging.getLogger("absl")  # absl.logging's logger, which Orbax logs through
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
  saved = checkpointer.metadata(path)
  tree = getattr(saved, "item_metadata", saved)
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
