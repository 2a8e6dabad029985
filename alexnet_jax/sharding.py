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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(devices: list[jax.Device] | None = None, model_parallel: int = 1) -> Mesh:
  """A 1-D mesh over all devices (or the given ones), axis 'data'; with model_parallel=2 a
  2-D mesh of shape (devices / 2, 2), axes ('data', 'model').

  Neighbouring devices (same host first) form the 'model' pairs: the towers exchange
  activations every layer, the data replicas only gradients once a step."""
  devices = jax.devices() if devices is None else devices
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


def model_axes(mesh: Mesh, *, fsdp: bool) -> dict[str, str | None]:
  """`create_model` keywords for this mesh: which mesh axis holds the towers and which one
  fc6/fc7's kernels are sharded over (`fsdp`: config.parallel.fsdp; None: not used)."""
  tower = MODEL_AXIS if MODEL_AXIS in mesh.axis_names else None
  return {"tower_axis": tower, "fsdp_axis": DATA_AXIS if fsdp else None}


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
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def layer_leaf_shapes(abstract_state: Any) -> dict[tuple[str, str], tuple[int, ...]]:
  """{(layer, kind): shape} of the state's params and BN statistics, e.g. ('conv1', 'kernel'),
  ('bn1', 'mean'): what models.partition_specs places."""
  trees = [abstract_state["params"], abstract_state["batch_stats"]]
  return {_path_keys(path)[-2:]: tuple(leaf.shape)
          for tree in trees for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def state_shardings(abstract_state: Any, mesh: Mesh,
                    specs: dict[tuple[str, str], P]) -> Any:
  """NamedShardings for every leaf of the train state, from the partition rules `specs`
  ({(layer, kind): PartitionSpec}, models.partition_specs).

  A leaf whose path ends in a (layer, kind) of `specs` and has that parameter's shape is
  placed like it: the params themselves, BN statistics, and the optimizer's per-parameter
  state (momentum, Adam moments, under any wrapper). Everything else is replicated."""
  shapes = layer_leaf_shapes(abstract_state)

  def sharding(path, leaf):
    keys = _path_keys(path)[-2:]
    if keys in specs and shapes.get(keys) == tuple(getattr(leaf, "shape", ())):
      return NamedSharding(mesh, specs[keys])
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
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a global batch: its first axis split over 'data'."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A value held whole on every device of the mesh."""
  return NamedSharding(mesh, P())


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


def global_sum(value: int) -> int:
  """Sum of a host integer over all processes (every process must call it)."""
  if jax.process_count() == 1:
    return int(value)
  return int(multihost_utils.process_allgather(np.int64(value)).sum())
