"""Device mesh, shardings, and turning per-process host batches into global jax.Arrays.

Data parallelism over every device of every process: the batch is split over the mesh axis
'data', parameters and optimizer state are replicated. Shardings are declared explicitly on the
jitted functions (no pmap).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all devices (or the given ones), axis 'data'."""
  devices = jax.devices() if devices is None else devices
  # Auto axes keep classic in_shardings/out_shardings propagation on jax >= 0.9, where the
  # default axis type became Explicit.
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is not None:
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(axis_type.Auto,))
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(name: str, global_batch_size: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch_size % devices:
    raise ValueError(
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
