"""Reading checkpoints back: the restore of a run (resume and --mode=eval share one checked
path), and the host-side reads of the tools and `init_from` (params and BN statistics as numpy,
any device count, no optimizer state).

Only a checkpoint unreadable under the tree it was written with (its own metadata) counts as
damaged: on resume it is renamed <step>.damaged with one log line of at most DAMAGE_LINE_CHARS
characters, and the next older one is tried. Any other difference is a refusal
(contract.py), before anything is moved.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from alexnet_jax.checkpoint import contract, layout
from alexnet_jax.checkpoint.store import Checkpointer, reading_quietly
from alexnet_jax.errors import UserError

DAMAGE_LINE_CHARS = 200


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (a matching tree): what a
  restore (and a compile) lowers onto."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def restore_for_resume(checkpointer: Checkpointer, abstract_state: Any, config: Any,
                       log: Callable[[str], None]) -> tuple[Any, int] | None:
  """(state, step) of the newest checkpoint of `checkpointer` that the config may resume and
  that reads back onto `abstract_state` (`abstract_like`); None when there is none. Every
  process must call it.

  Raises contract.ResumeRefused (nothing moved) when the config changes a RESUME_REFUSED field
  or the state tree, and contract.CheckpointMismatchError for a checkpoint of another model.
  A damaged checkpoint is set aside and the next older one tried.
  """
  wanted_tree = _leaves(abstract_state)
  for step in sorted(checkpointer.all_steps(), reverse=True):
    where = checkpointer.directory / str(step)
    try:
      meta = checkpointer.read_meta(step)
    except Exception as e:  # noqa: BLE001 - an unreadable meta item is damage
      _set_aside(checkpointer, step, "meta", e)
      continue
    applied = contract.check_resume(meta, config, where)
    contract.check_compatible(meta, config.model.to_dict(), str(checkpointer.directory))
    saved_tree = _saved_leaves(where / "state")
    if saved_tree is not None and saved_tree != wanted_tree:
      raise contract.tree_refusal(where, saved_tree, wanted_tree)
    try:
      state = checkpointer.restore(step, abstract_state)
    except Exception as e:  # noqa: BLE001 - damage, or a state tree today's config changes
      if saved_tree is not None and _readable_as_written(where / "state"):
        raise contract.tree_refusal(where, saved_tree, wanted_tree) from e
      _set_aside(checkpointer, step, "state", e)
      continue
    for field, old, new in applied:
      log(f"Resuming with {field}={new!r} (the checkpoint was trained with {old!r}).")
    return state, step
  return None


def restore_for_eval(path: str | os.PathLike, step: int | None, abstract_state: Any,
                     model_config: dict[str, Any]) -> tuple[dict[str, Any], int, pathlib.Path]:
  """({'params', 'batch_stats'} on the shardings of `abstract_state`'s, the step, the
  checkpoints directory) of the checkpoint `resolve(path, step)` names, whatever optimizer
  trained it: the optimizer state is never read. Every process must call it. Raises UserError
  as `resolve`, contract.CheckpointMismatchError for a checkpoint of another model."""
  directory, step = resolve(path, step)
  meta = read_meta(directory, step)
  contract.check_compatible(meta, model_config, str(directory))
  wanted = {name: abstract_state[name] for name in ("params", "batch_stats")
            if abstract_state[name]}
  args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, global_shape=a.shape,
                                                     dtype=a.dtype), wanted)
  with reading_quietly():
    restored = ocp.PyTreeCheckpointer().restore(
        directory / str(step) / "state",
        args=ocp.args.PyTreeRestore(item=wanted, restore_args=args, partial_restore=True))
  restored = dict(restored)
  restored.setdefault("batch_stats", {})
  return restored, step, directory


def _set_aside(checkpointer: Checkpointer, step: int, item: str, error: BaseException) -> None:
  damaged = checkpointer.directory / f"{step}{layout.DAMAGED_SUFFIX}"
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
    with reading_quietly():
      return _leaves(_metadata_tree(ocp.PyTreeCheckpointer(), state_dir))
  except Exception:  # noqa: BLE001 - damaged metadata: the restore below will say so
    return None


def _readable_as_written(state_dir: pathlib.Path) -> bool:
  """Whether every array of the state reads back under the checkpoint's own tree (to host
  numpy, on any device count): the test that tells damage from a changed config."""
  try:
    with reading_quietly():
      checkpointer = ocp.PyTreeCheckpointer()
      tree = _metadata_tree(checkpointer, state_dir)
      args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
      checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(restore_args=args))
    return True
  except Exception:  # noqa: BLE001 - any failure to read means damage
    return False


@dataclasses.dataclass(frozen=True)
class Restored:
  """What inference needs from one checkpoint, as numpy arrays on the host.

  params: the Flax params tree (float32 or the dtype saved; shapes as models.init makes them).
  batch_stats: alexnet_bn's running BN statistics ({} for models without batch norm).
  meta: the `meta` item (`model`, `preprocessing`, `class_names`; layout.meta).
  step: the training step the checkpoint was written at.
  directory: the checkpoints/ folder holding it (the checkpoint is directory/<step>/).
  """
  params: dict[str, Any]
  batch_stats: dict[str, Any]
  meta: dict[str, Any]
  step: int
  directory: pathlib.Path


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
  directory = path / layout.CHECKPOINTS_DIR if (path / layout.CHECKPOINTS_DIR).is_dir() else path
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
  checkpointer = Checkpointer(directory, keep=1, read_only=True)  # quiet while it reads
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
  with reading_quietly():
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
