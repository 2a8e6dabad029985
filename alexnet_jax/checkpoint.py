"""Orbax checkpoints of the whole training state.

One checkpoint step holds three items:
- `state`: params, optimizer state, step, RNG and schedule state (sharded arrays);
- `data`: the Grain iterator state of each process, so a resumed run sees the same batches;
- `meta`: JSON describing the model and its input preprocessing, checked before restoring so
  that a checkpoint of another model gives one clear error rather than a shape mismatch deep in
  Orbax, and so that tools know how to preprocess images for it.
Every process takes part in saves; saves are asynchronous.
"""

from __future__ import annotations

import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

# Fields of `meta["model"]` that change the parameter tree: a mismatch cannot be restored.
STRUCTURAL_MODEL_FIELDS = ("variant", "num_classes", "in_channels", "image_size")


class CheckpointMismatchError(ValueError):
  pass


class Checkpointer:

  def __init__(self, directory: str | pathlib.Path, *, keep: int, read_only: bool = False):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=not read_only, read_only=read_only,
        enable_async_checkpointing=not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator | None,
           meta: dict[str, Any]) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def read_meta(self, step: int) -> dict[str, Any]:
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

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def check_compatible(meta: dict[str, Any], model_config: dict[str, Any], where: str) -> None:
  """Raises one clear error when the checkpoint was written by a different model."""
  saved = meta.get("model", {})
  for field in STRUCTURAL_MODEL_FIELDS:
    if field in saved and saved[field] != model_config[field]:
      raise CheckpointMismatchError(
          f"The checkpoint in {where} was written by a model with model.{field}="
          f"{saved[field]!r}, but the config asks for model.{field}={model_config[field]!r}. "
          f"Use the config the checkpoint was trained with (its workdir holds config.json), or "
          f"pass --config.model.{field}={saved[field]!r}, or start a new workdir.")


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying the target shardings, as Orbax wants for restoring."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
