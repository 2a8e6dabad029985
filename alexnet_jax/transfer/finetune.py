"""Start training from existing weights: fine-tuning and transfer learning.

`config.init_from` names where the weights come from:
- a run directory of this project (its `checkpoints/`, or `checkpoints/<step>`): the params
  of the latest (or that) checkpoint, from a model of the same `model.variant`;
- a PyTorch state_dict file (`.pth`): torchvision's AlexNet keys (`features.0.weight`, ...,
  e.g. the published `alexnet-owt-7be5be79.pth`) or this project's layout keys
  (`conv1.weight`, ..., see convert.py).

Every parameter of the new model is then either loaded or, when its path matches
`config.reinit` (e.g. 'fc8'), left at its fresh initialization: that is how a 1000-class
classifier becomes a 10-class one. A shape that differs and is not in `reinit` is an error
naming the field to change, never a silent re-initialization. `config.freeze` (optim.py) then
decides which of the loaded layers train.

The readers here (`resolve_checkpoint`, `read_checkpoint`, `read_torch_state_dict`) are also
what predict.py and visualize.py load models with.

Export a checkpoint as a torchvision-format file (for PyTorch, or as an `init_from`):

  python -m alexnet_jax.finetune --workdir=DIR [--step=N] --export_torchvision=FILE.pth
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import sys
from typing import Any, Callable, Mapping

import jax
import numpy as np

from alexnet_jax import checkpoint as ckpt_lib, convert, models, optim

# Layouts of a PyTorch file, told apart by their keys.
LAYOUT_KEYS = tuple(f"{layer}.{kind}" for layer in convert.CONV_LAYERS + convert.FC_LAYERS
                    for kind in ("weight", "bias"))


@dataclasses.dataclass(frozen=True)
class Pretrained:
  params: dict[str, Any]  # the Flax tree, numpy float32
  source: str  # for messages: where the weights came from
  meta: dict[str, Any] | None = None  # a checkpoint's meta; None for a PyTorch file
  batch_stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # alexnet_bn's


def to_host(tree: Any) -> Any:
  """numpy copies of (possibly sharded, possibly multi-process) arrays; on several processes
  every process must call it (it gathers)."""
  from jax.experimental import multihost_utils

  def one(x):
    if getattr(x, "is_fully_addressable", True):
      return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


# --------------------------------------------------------------------------------------------
# Checkpoints of this project


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[pathlib.Path, int]:
  """(checkpoints directory, step) for a workdir, its checkpoints/ or one checkpoints/<step>."""
  path = pathlib.Path(os.path.expanduser(os.fspath(path))).absolute()
  if not path.exists():
    raise FileNotFoundError(f"{path} does not exist.")
  if (path / "state").is_dir() and (path / "meta").is_dir() and path.name.isdigit():
    if step is not None and step != int(path.name):
      raise ValueError(f"{path} is the checkpoint of step {path.name}, not step {step}.")
    return path.parent, int(path.name)
  directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
  steps = sorted(int(p.name) for p in directory.iterdir()
                 if p.name.isdigit() and (p / "state").is_dir())
  if not steps:
    raise FileNotFoundError(f"No checkpoints in {path}: point at a run directory (the "
                            "--workdir of a training run) or its checkpoints/ folder.")
  if step is None or step < 0:
    return directory, steps[-1]
  if step not in steps:
    raise FileNotFoundError(f"Checkpoint step {step} is not in {directory}; available steps: "
                            f"{steps}.")
  return directory, step


def read_meta(directory: pathlib.Path, step: int) -> dict[str, Any]:
  checkpointer = ckpt_lib.Checkpointer(directory, keep=1, read_only=True)
  try:
    return checkpointer.read_meta(step)
  finally:
    checkpointer.close()


def _read_state_items(directory: pathlib.Path, step: int, names: tuple[str, ...]) -> dict:
  """Some top-level items of a checkpoint's train state, as numpy arrays on the host.

  A partial restore: works on any device count and whatever optimizer the run used, and
  never reads the optimizer state.
  """
  import orbax.checkpoint as ocp

  path = directory / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  saved = checkpointer.metadata(path)
  tree = getattr(saved, "item_metadata", saved)
  if "params" not in tree:
    raise ValueError(f"{path} holds no 'params': not a checkpoint of this project.")
  wanted = {name: tree[name] for name in names if name in tree and tree[name]}
  if not wanted:
    return {}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
  restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item=target, restore_args=restore_args, partial_restore=True))
  return jax.tree.map(np.asarray, dict(restored))


def read_checkpoint_params(directory: pathlib.Path, step: int) -> dict[str, Any]:
  """The params of one checkpoint as numpy arrays (no optimizer state)."""
  return _read_state_items(directory, step, ("params",))["params"]


def read_checkpoint(path: str | os.PathLike, step: int | None = None) -> tuple[dict, dict, int]:
  """(params, meta, step) of a checkpoint of this project."""
  directory, step = resolve_checkpoint(path, step)
  return read_checkpoint_params(directory, step), read_meta(directory, step), step


def read_batch_stats(path: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
  """A checkpoint's running BN statistics (alexnet_bn); {} for models without BN."""
  directory, step = resolve_checkpoint(path, step)
  return _read_state_items(directory, step, ("batch_stats",)).get("batch_stats", {})


# --------------------------------------------------------------------------------------------
# PyTorch files


def read_torch_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str | None]:
  """(arrays in convert.py's layout, 'torchvision' or None) from a state_dict file.

  torchvision's keys mean the torchvision variant; layout keys (conv1.weight ...) fit any
  variant (None).
  """
  arrays = convert.read_state_dict_file(path)
  if all(k in arrays for k in convert.TORCHVISION_KEYS):
    return convert.torchvision_keys_to_layout(arrays), "torchvision"
  if all(k in arrays for k in LAYOUT_KEYS):
    return {k: arrays[k] for k in LAYOUT_KEYS}, None
  raise ValueError(f"{path} is not an AlexNet state_dict: it has neither torchvision's keys "
                   f"(features.0.weight, ...) nor conv1.weight ... fc8.bias (found "
                   f"{sorted(arrays)[:6]} ...).")


def params_from_torch(path: str | os.PathLike, model_config: Mapping[str, Any]) -> Pretrained:
  """A state_dict file as the Flax params of `model_config`'s variant.

  The number of classes and input channels are read from the file; whether they fit the new
  model is `merge_params`'s question.
  """
  arrays, file_variant = read_torch_state_dict(path)
  variant = model_config["variant"]
  if file_variant is not None and variant != file_variant:
    raise ValueError(f"{path} holds {file_variant} AlexNet weights but model.variant="
                     f"{variant!r}; set --config.model.variant={file_variant}.")
  kwargs = {k: v for k, v in model_config.items() if k != "variant"}
  kwargs["num_classes"] = int(arrays["fc8.bias"].shape[0])
  kwargs["in_channels"] = int(arrays["conv1.weight"].shape[1])  # conv1 is never grouped
  try:
    params = convert.from_torch_layout(arrays, variant, **kwargs)
  except ValueError as err:
    raise ValueError(f"{path} does not fit the {variant} variant: {err}") from err
  return Pretrained(jax.tree.map(np.asarray, params), str(path))


# --------------------------------------------------------------------------------------------
# init_from


def load_pretrained(init_from: str, model_config: Mapping[str, Any]) -> Pretrained:
  """The weights `config.init_from` names, as a params tree of the configured variant."""
  path = os.path.expanduser(init_from)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"init_from={init_from!r} does not exist: give a run directory of this project or a "
        "PyTorch .pth file (e.g. torchvision's alexnet-owt-7be5be79.pth) with "
        "--config.init_from=PATH.")
  if os.path.isfile(path):
    return params_from_torch(path, model_config)
  params, meta, step = read_checkpoint(path)
  saved_variant = meta.get("model", {}).get("variant")
  if saved_variant != model_config["variant"]:
    raise ckpt_lib.CheckpointMismatchError(
        f"init_from={init_from!r} is a checkpoint of a model.variant={saved_variant!r} model, "
        f"but model.variant={model_config['variant']!r}; weights only carry over within one "
        "variant.")
  return Pretrained(params, f"{path} (step {step})", meta, read_batch_stats(path, step))


def _mismatch_hint(name: str, wanted: tuple, found: tuple) -> str:
  if name.startswith("fc8/"):
    return (f"it has {found[-1]} classes but model.num_classes={wanted[-1]}: add "
            "--config.reinit=fc8 to train a new classifier head, or set "
            f"--config.model.num_classes={found[-1]}")
  if name == "conv1/kernel":
    return (f"it takes {found[2]} input channels but model.in_channels={wanted[2]}: set "
            f"--config.model.in_channels={found[2]} (Fashion-MNIST repeats its grey channel)")
  if name == "fc6/kernel":
    return ("its fc6 sees another feature map size: set the model.image_size the weights were "
            "trained at, or add fc6 to --config.reinit")
  return "set the model.* fields the weights were trained with, or add it to --config.reinit"


def merge_params(fresh: Mapping, loaded: Mapping, reinit: str, source: str, *,
                 require_match: bool = True) -> tuple[dict[str, Any], list[str]]:
  """(params, names kept fresh): `loaded` everywhere except where `reinit` matches.

  Raises ValueError for a parameter that is missing from `loaded` or has another shape and
  is not matched by `reinit`, and (`require_match`) for a `reinit` that matches nothing.
  """
  regex = optim.compile_pattern("reinit", reinit) if reinit else None
  names = optim.param_paths(fresh)
  all_names = jax.tree.leaves(names)
  kept_fresh = [n for n in all_names if regex is not None and regex.search(n)]
  if regex is not None and not kept_fresh and require_match:
    raise ValueError(f"reinit={reinit!r} matches no parameter; names look like "
                     f"{', '.join(all_names[:4])}, ...")
  flat_loaded = dict(zip(jax.tree.leaves(optim.param_paths(loaded)), jax.tree.leaves(loaded)))

  def choose(name: str, fresh_value):
    if name in kept_fresh:
      return np.asarray(fresh_value)
    if name not in flat_loaded:
      raise ValueError(f"{source} has no parameter {name}; add it to --config.reinit to "
                       "initialize it fresh.")
    value = np.asarray(flat_loaded[name], np.float32)
    if value.shape != tuple(fresh_value.shape):
      hint = _mismatch_hint(name, tuple(fresh_value.shape), value.shape)
      raise ValueError(f"{source}: {name} has shape {value.shape}, the model wants "
                       f"{tuple(fresh_value.shape)}; {hint}.")
    return value

  return jax.tree.map(choose, names, fresh), kept_fresh


def initialize_from(state: dict[str, Any], config: Any, tx, shardings: Any,
                    log: Callable[[str], None]) -> dict[str, Any]:
  """The freshly initialized train `state` with its params (and BN statistics, when both
  models have them) replaced per `config.init_from`."""
  from alexnet_jax import state as state_lib

  pretrained = load_pretrained(config.init_from, config.model.to_dict())
  params, kept_fresh = merge_params(to_host(state["params"]), pretrained.params,
                                    config.reinit, pretrained.source)
  batch_stats = None
  if state.get("batch_stats") and pretrained.batch_stats:
    # Running statistics follow their layers: reinit a layer and its statistics start over.
    batch_stats, _ = merge_params(to_host(state["batch_stats"]), pretrained.batch_stats,
                                  config.reinit, pretrained.source, require_match=False)
  log(f"Initialized from {pretrained.source}: loaded "
      f"{len(jax.tree.leaves(params)) - len(kept_fresh)} arrays"
      + (f"; fresh: {', '.join(kept_fresh)}" if kept_fresh else "")
      + ("; with its BN statistics" if batch_stats is not None else "")
      + (f"; frozen: parameters matching {config.freeze!r}" if config.freeze else "") + ".")
  return state_lib.with_params(state, params, tx, shardings, batch_stats)


def check_config(config: Any) -> None:
  """Mistakes in reinit / freeze, caught before any data is read.

  Whether init_from exists is checked when a run starts without a checkpoint of its own: a
  resumed run or --mode=eval does not need the file.
  """
  for field in ("reinit", "freeze"):
    if config.get(field, ""):
      optim.compile_pattern(field, config[field])
  init_from = config.get("init_from", "")
  if config.get("reinit", "") and not init_from:
    raise ValueError(f"reinit={config.reinit!r} is set but init_from is empty; reinit names "
                     "the layers NOT loaded from --config.init_from.")


# --------------------------------------------------------------------------------------------
# Export


def to_torchvision_state_dict(params: Mapping, variant: str) -> dict[str, np.ndarray]:
  """Flax params -> torchvision.models.alexnet state_dict keys (torchvision variant) or the
  layout keys conv1.weight ... (other variants, which torchvision cannot build)."""
  arrays = convert.to_torch_layout(params, variant)
  if variant != "torchvision":
    return arrays
  ours_to_tv = {ours: tv for tv, ours in convert.TORCHVISION_KEYS.items()}
  return {ours_to_tv[k]: v for k, v in arrays.items()}


def save_torch_state_dict(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  import torch
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
             os.fspath(path))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m alexnet_jax.finetune",
      description="Export a checkpoint as a PyTorch state_dict (torchvision keys for the "
                  "torchvision variant).")
  parser.add_argument("--workdir", required=True, help="run directory (or its checkpoints/)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
  parser.add_argument("--export_torchvision", required=True, metavar="FILE.pth")
  args = parser.parse_args(argv)
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's read-only directory warnings
  try:
    params, meta, step = read_checkpoint(args.workdir, args.step)
    variant = meta["model"]["variant"]
    if variant in getattr(models, "BATCH_NORM_VARIANTS", ()):
      raise ValueError(f"{args.workdir} holds a {variant} model, which has no PyTorch layout "
                       "here (its batch norms are not part of convert.py).")
    save_torch_state_dict(to_torchvision_state_dict(params, variant), args.export_torchvision)
  except (ValueError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {args.export_torchvision} ({variant} variant, step {step})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
