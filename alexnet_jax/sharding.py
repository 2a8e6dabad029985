"""Device mesh, shardings, and turning per-process host batches into global jax.Arrays.

By default, data parallelism over every device of every process: a 1-D mesh, the batch split
over its axis 'data', parameters and optimizer state replicated. `config.parallel` adds
(docs/parallel.md):
- `model=2`: a 2-D mesh ('data', 'model') with the paper's two towers on the two devices of
  'model': every layer's output channels / features (and their parameters, optimizer state and
  BN statistics) are split in two halves, one per tower, as on the paper's two GPUs;
- `fsdp=True`: fc6's and fc7's kernels (90% of the parameters) and their optimizer state are
  also sharded over 'data' (FSDP / ZeRO-3 style), gathered for use in each step.
Shardings are declared explicitly on the jitted functions (no pmap).
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import models
from alexnet_jax.errors import UserError

DATA_AXIS = "data"
MODEL_AXIS = "model"
MODEL_PARALLEL_SIZES = (1, models.PAPER_TOWERS)


def check_parallel_config(model_parallel: int, num_devices: int, variant: str | None = None) -> None:
  """One clear error for a `parallel.model` the devices or the model cannot take."""
  if isinstance(model_parallel, bool) or model_parallel not in MODEL_PARALLEL_SIZES:
    raise UserError(f"parallel.model={model_parallel!r} is not one of 1 (data parallelism) "
                     f"or {models.PAPER_TOWERS} (the paper's two towers on two devices).")
  if num_devices % model_parallel:
    raise UserError(f"parallel.model={model_parallel} does not divide the {num_devices} "
                     f"devices; use parallel.model=1 or an even device count.")
  if model_parallel > 1 and variant is not None and variant not in models.TWO_TOWER_VARIANTS:
    raise UserError(f"parallel.model={model_parallel} splits the two towers of the paper's "
                     f"network over devices; model.variant={variant!r} has no towers. Use "
                     f"model.variant in {models.TWO_TOWER_VARIANTS} or parallel.model=1.")


def make_mesh(devices: list[jax.Device] | None = None, model_parallel: int = 1) -> Mesh:
  """A 1-D mesh over all devices (or the given ones), axis 'data'; with model_parallel=2 a
  2-D mesh of shape (devices / 2, 2), axes ('data', 'model').

  Neighbouring devices (same host first) form the 'model' pairs: the towers exchange
  activations every layer, the data replicas only gradients once a step."""
  devices = jax.devices() if devices is None else devices
  check_parallel_config(model_parallel, len(devices))
  if model_parallel == 1:
    shape, names = (len(devices),), (DATA_AXIS,)
  else:
    shape, names = (len(devices) // model_parallel, model_parallel), (DATA_AXIS, MODEL_AXIS)
  # Auto axes keep classic in_shardings/out_shardings propagation on jax >= 0.9, where the
  # default axis type became Explicit.
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is not None:
    return jax.make_mesh(shape, names, devices=devices, axis_types=(axis_type.Auto,) * len(shape))
  return Mesh(np.asarray(devices).reshape(shape), names)


def model_axes(mesh: Mesh, config: Any) -> dict[str, str | None]:
  """`create_model` keywords for this mesh and `config.parallel`: which mesh axis holds the
  towers and which one fc6/fc7's kernels are sharded over (None: not used)."""
  parallel = config.get("parallel", {})
  tower = MODEL_AXIS if MODEL_AXIS in mesh.axis_names else None
  return {"tower_axis": tower, "fsdp_axis": DATA_AXIS if parallel.get("fsdp", False) else None}


def mesh_context(mesh: Mesh):
  """Context for tracing a step: puts the mesh in context, so that the model's two-tower
  code (models.tower_mesh) and its sharding constraints can name its axes."""
  use_abstract_mesh = getattr(jax.sharding, "use_abstract_mesh", None)
  if use_abstract_mesh is None:  # older jax: the model falls back to XLA's placement
    return contextlib.nullcontext()
  return use_abstract_mesh(mesh.abstract_mesh)


def with_mesh(fn, mesh: Mesh):
  """`fn` traced under `mesh_context(mesh)` (wrap before jax.jit)."""
  def traced(*args):
    with mesh_context(mesh):
      return fn(*args)
  return traced


# --------------------------------------------------------------------------------------------
# Parameter and train-state shardings


def _path_keys(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))) for k in path)


def param_spec(layer: str, kind: str, shape: tuple[int, ...], mesh: Mesh, *,
               tower_axis: str | None = None, fsdp_axis: str | None = None) -> P:
  """Where one parameter (or BN statistic) `layer/kind` of AlexNet lives.

  Towers: the last axis (conv output channels, dense output features, BN channels) is split
  over `tower_axis`: conv1 and the grouped conv2/4/5 as on the paper's GPUs, conv3 and the
  fully connected layers by their outputs (fc8 only when num_classes is even).
  FSDP: the first axis (input features) of fc6's and fc7's kernels over `fsdp_axis`.
  """
  spec = [None] * len(shape)
  if tower_axis is not None and tower_axis in mesh.axis_names and shape:
    if shape[-1] % models.PAPER_TOWERS == 0 and layer.startswith(("conv", "bn", "fc")):
      spec[-1] = tower_axis
  if fsdp_axis is not None and layer in models.FSDP_LAYERS and kind == "kernel":
    size = dict(zip(mesh.axis_names, mesh.devices.shape))[fsdp_axis]
    if shape[0] % size:
      raise UserError(
          f"parallel.fsdp=True shards {layer}'s kernel rows ({shape[0]}) over the {size} "
          f"devices of the '{fsdp_axis}' axis, which do not divide them; use a device count "
          f"that does, or parallel.fsdp=False.")
    spec[0] = fsdp_axis
  return P(*spec)


def state_shardings(abstract_state: Any, mesh: Mesh, *, tower_axis: str | None = None,
                    fsdp_axis: str | None = None) -> Any:
  """NamedShardings for every leaf of the train state (or any tree holding parameters).

  A leaf whose path ends in a parameter's `(layer, kind)` and has its shape is placed like
  that parameter: the params themselves, BN statistics, and the optimizer's per-parameter
  state (momentum, Adam moments, under any wrapper). Everything else is replicated."""
  params = abstract_state.get("params", {}) if isinstance(abstract_state, dict) else {}
  shapes = {_path_keys(path)[-2:]: tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(params)}

  def sharding(path, leaf):
    keys = _path_keys(path)
    shape = tuple(getattr(leaf, "shape", ()))
    if len(keys) >= 2 and (keys[-2:] in shapes and shapes[keys[-2:]] == shape
                           or keys[0] == "batch_stats"):
      layer, kind = keys[-2:]
      return NamedSharding(mesh, param_spec(str(layer), str(kind), shape, mesh,
                                            tower_axis=tower_axis, fsdp_axis=fsdp_axis))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(sharding, abstract_state)


def shard_bytes(tree: Any, shardings: Any) -> int:
  """Bytes of `tree` (arrays or ShapeDtypeStructs) held by one device (the first) under
  `shardings`."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    shape = sharding.shard_shape(tuple(leaf.shape))
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def to_host(tree: Any) -> Any:
  """Whole values of a tree of (possibly sharded) arrays as numpy arrays, same shapes and
  dtypes. Replicated and fully addressable arrays are copied from this process's devices; an
  array spread over several processes is gathered (multihost_utils.process_allgather,
  tiled=True), so then every process must call it. Non-jax leaves go through np.asarray."""
  def fetch(x):
    if not isinstance(x, jax.Array):
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a global batch: its first axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A value held whole on every device of the mesh."""
  return NamedSharding(mesh, P())


def check_batch_size(name: str, global_batch_size: int, mesh: Mesh) -> None:
  """Raises UserError naming `name` when the global batch does not divide over the devices."""
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise UserError(
        f"{name}={global_batch_size} is not divisible by the {devices} devices of the mesh; "
        f"use a multiple of {devices}.")


def to_global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Each process's rows become its part of one global array sharded over 'data'."""
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in local_batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host values (identical on every process) as replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
