"""Start training from existing weights: fine-tuning and transfer learning (`init_from`).

`config.init_from` names where the weights come from:
- a run directory of this project (its `checkpoints/`, or `checkpoints/<step>`): the params
  (and alexnet_bn's BN statistics) of the latest (or that) checkpoint, from a model of the same
  `model.variant`, read with checkpoint.read_for_inference;
- a PyTorch state_dict file (`.pth`): torchvision's AlexNet keys (`features.0.weight`, ...,
  e.g. the published `alexnet-owt-7be5be79.pth`) or this project's layout keys
  (`conv1.weight`, ...), read with convert.params_from_file.

Every parameter of the new model is then either loaded or, when its path matches
`config.reinit` (e.g. 'fc8'), left at its fresh initialization: that is how a 1000-class
classifier becomes a 10-class one. A shape that differs and is not in `reinit` is an error
naming the field to change, never a silent re-initialization. `config.freeze` (optim.py) then
decides which of the loaded layers train.

Exporting a checkpoint as a .pth file is tools/export.py (`python -m alexnet_jax.tools.export
--workdir=DIR --export_torchvision=FILE.pth` still runs it).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

import jax
import numpy as np

from alexnet_jax import checkpoint as ckpt_lib, optim, sharding, state as state_lib
from alexnet_jax.errors import UserError
from alexnet_jax.transfer import convert


@dataclasses.dataclass(frozen=True)
class Pretrained:
  """Weights to start from, as numpy trees on the host.

  params: the Flax params tree (float32; shapes of the source model, which may differ from the
  new model's where `reinit` replaces layers).
  source: where the weights came from, for messages ('DIR (step N)' or the .pth path).
  meta: the checkpoint's meta (checkpoint.Restored.meta); None for a PyTorch file.
  batch_stats: alexnet_bn's running BN statistics; {} for a PyTorch file or a model without BN.
  """
  params: dict[str, Any]
  source: str
  meta: dict[str, Any] | None = None
  batch_stats: dict[str, Any] = dataclasses.field(default_factory=dict)


def load_pretrained(init_from: str, model_config: Mapping[str, Any]) -> Pretrained:
  """The weights `config.init_from` names, as a params tree of the configured variant.

  A file is read as a PyTorch state_dict (convert.params_from_file), a directory as a
  checkpoint of this project (checkpoint.read_for_inference). Raises UserError for a path that
  does not exist or cannot be read, and checkpoint.CheckpointMismatchError for a checkpoint of
  another `model.variant`.
  """
  path = os.path.expanduser(init_from)
  if not os.path.exists(path):
    raise UserError(
        f"init_from={init_from!r} does not exist: give a run directory of this project or a "
        "PyTorch .pth file (e.g. torchvision's alexnet-owt-7be5be79.pth) with "
        "--config.init_from=PATH.")
  if os.path.isfile(path):
    params, _ = convert.params_from_file(path, model_config)
    return Pretrained(params, str(path))
  restored = ckpt_lib.read_for_inference(path)
  saved_variant = restored.meta["model"].get("variant")
  if saved_variant != model_config["variant"]:
    raise ckpt_lib.CheckpointMismatchError(
        f"init_from={init_from!r} is a checkpoint of a model.variant={saved_variant!r} model, "
        f"but model.variant={model_config['variant']!r}; weights only carry over within one "
        "variant.")
  return Pretrained(restored.params, f"{path} (step {restored.step})", restored.meta,
                    restored.batch_stats)


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

  `fresh`: the new model's params tree (its shapes and, for reinit layers, its values);
  `loaded`: the pretrained tree; both numpy or jax arrays. The result is a numpy tree with
  `fresh`'s structure (loaded values as float32). Names are optim.param_paths' ('fc8/kernel').
  Raises UserError for a parameter that is missing from `loaded` or has another shape and is
  not matched by `reinit`, and (`require_match`) for a `reinit` that matches nothing.
  """
  regex = optim.compile_pattern("reinit", reinit) if reinit else None
  names = optim.param_paths(fresh)
  all_names = jax.tree.leaves(names)
  kept_fresh = [n for n in all_names if regex is not None and regex.search(n)]
  if regex is not None and not kept_fresh and require_match:
    raise UserError(f"reinit={reinit!r} matches no parameter; names look like "
                    f"{', '.join(all_names[:4])}, ...")
  flat_loaded = dict(zip(jax.tree.leaves(optim.param_paths(loaded)), jax.tree.leaves(loaded)))

  def choose(name: str, fresh_value):
    if name in kept_fresh:
      return np.asarray(fresh_value)
    if name not in flat_loaded:
      raise UserError(f"{source} has no parameter {name}; add it to --config.reinit to "
                      "initialize it fresh.")
    value = np.asarray(flat_loaded[name], np.float32)
    if value.shape != tuple(fresh_value.shape):
      hint = _mismatch_hint(name, tuple(fresh_value.shape), value.shape)
      raise UserError(f"{source}: {name} has shape {value.shape}, the model wants "
                      f"{tuple(fresh_value.shape)}; {hint}.")
    return value

  return jax.tree.map(choose, names, fresh), kept_fresh


def initialize_from(state: dict[str, Any], *, init_from: str, reinit: str, freeze: str,
                    model_config: Mapping[str, Any], tx, shardings: Any,
                    log: Callable[[str], None]) -> dict[str, Any]:
  """The freshly initialized train `state` with its params (and BN statistics, when both
  models have them) replaced from `init_from` but for the `reinit` ones (config.init_from,
  config.reinit; `freeze` and `model_config`, config.freeze and config.model, are for the
  log line and the checks).

  Every process must call it (sharding.to_host gathers). `tx` and `shardings` are the train
  state's optimizer and shardings (state.with_params rebuilds the optimizer state); `log`
  gets one line saying what was loaded. Raises UserError as load_pretrained and merge_params do.
  """
  pretrained = load_pretrained(init_from, model_config)
  params, kept_fresh = merge_params(sharding.to_host(state["params"]), pretrained.params,
                                    reinit, pretrained.source)
  batch_stats = None
  if state.get("batch_stats") and pretrained.batch_stats:
    # Running statistics follow their layers: reinit a layer and its statistics start over.
    batch_stats, _ = merge_params(sharding.to_host(state["batch_stats"]), pretrained.batch_stats,
                                  reinit, pretrained.source, require_match=False)
  log(f"Initialized from {pretrained.source}: loaded "
      f"{len(jax.tree.leaves(params)) - len(kept_fresh)} arrays"
      + (f"; fresh: {', '.join(kept_fresh)}" if kept_fresh else "")
      + ("; with its BN statistics" if batch_stats is not None else "")
      + (f"; frozen: parameters matching {freeze!r}" if freeze else "") + ".")
  return state_lib.with_params(state, params, tx, shardings, batch_stats)


def check_config(config: Any) -> None:
  """Raises UserError for mistakes in reinit / freeze, caught before any data is read.

  Whether init_from exists is checked when a run starts without a checkpoint of its own: a
  resumed run or --mode=eval does not need the file.
  """
  for field in ("reinit", "freeze"):
    if config[field]:
      optim.compile_pattern(field, config[field])
  if config.reinit and not config.init_from:
    raise UserError(f"reinit={config.reinit!r} is set but init_from is empty; reinit names "
                    "the layers NOT loaded from --config.init_from.")
