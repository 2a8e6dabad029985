"""The resume contract (docs/resume.md): which config changes a resumed run applies, which it
refuses, and the one-sentence refusals.

Every config field is in exactly one of two classes (tests/test_resume_contract.py checks that
config_base has no field in neither). A field of RESUME_APPLIED takes effect on resume exactly
as in a fresh run started from the checkpoint's state with the new value; a change of a field
of RESUME_REFUSED is refused before anything is written or moved, in one sentence that names
the field, both values, and how to branch instead (init_from in a new workdir). REFUSED are
the fields that change the state tree, or what the saved state means, or that only act when
a run starts (so a new value could not be applied).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from alexnet_jax.checkpoint import layout
from alexnet_jax.errors import UserError

# Fields of `meta["model"]` that change the parameter tree: a mismatch cannot be restored.
STRUCTURAL_MODEL_FIELDS = ("variant", "num_classes", "in_channels", "image_size")


class CheckpointMismatchError(UserError):
  """A checkpoint written by a model whose parameter tree differs from the configured one."""


class ResumeRefused(UserError):
  """The config changes a field the checkpoint to resume cannot take (RESUME_REFUSED)."""


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


def tree_refusal(where: pathlib.Path, saved: dict, wanted: dict) -> ResumeRefused:
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
      f"config that wrote it is in {where.parent.parent / layout.CONFIG_FILE}. Resume with that "
      f"config, or branch: train in a new --workdir with --config.init_from={where} (weights "
      f"only).")
