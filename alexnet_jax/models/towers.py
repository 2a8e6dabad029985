"""Two towers on two devices (model parallelism, docs/parallel.md), and FSDP dense layers.

XLA's partitioner does not split a grouped convolution by its groups (measured: it
all-gathers input, kernel and output), so the tower-local layers are written per device
with ``jax.shard_map``: each device of the tower axis holds one tower's channels and runs an
ordinary convolution on them. The only communication is what the paper's GPUs did: conv3
and the fully connected layers all-gather their inputs from both towers.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from alexnet_jax.errors import UserError
from alexnet_jax.models.layers import ConvFn, conv as plain_conv

# The paper runs two towers (its two GTX 580s): every grouped conv and the LRN use this
# many groups (paper Section 3.2).
PAPER_TOWERS = 2


def _context_mesh():
  """The (abstract) mesh in context, or None."""
  get = getattr(jax.sharding, "get_abstract_mesh", None)
  mesh = get() if get is not None else None
  return mesh if mesh is not None and mesh.axis_names else None


def tower_mesh(tower_axis: str | None):
  """The mesh in context when it has ``tower_axis``, else None.

  None means every layer runs as one program and XLA places it from the parameter
  shardings (same values): the case under ``Module.init``, in ``models.logits``, and in
  any jit that is not run under the mesh (``sharding.mesh_context``).
  Raises ValueError when the axis exists but does not have exactly PAPER_TOWERS devices.
  """
  if tower_axis is None:
    return None
  mesh = _context_mesh()
  if mesh is None or tower_axis not in mesh.axis_names:
    return None
  size = dict(zip(mesh.axis_names, mesh.axis_sizes))[tower_axis]
  if size != PAPER_TOWERS:
    raise UserError(f"The mesh axis {tower_axis!r} has {size} devices; the two towers "
                     f"need exactly {PAPER_TOWERS}.")
  return mesh


def _batch_axes(mesh, tower_axis: str):
  """Mesh axes other than the tower axis: the batch is split over these."""
  axes = tuple(name for name in mesh.axis_names if name != tower_axis)
  return axes or None


def tower_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, stride: int,
               padding: int, groups: int, input_split: bool, mesh, tower_axis: str,
               conv_fn: ConvFn = plain_conv) -> jax.Array:
  """Conv with its output channels split over the towers, one tower per device.

  x: (N, H, W, C) global array; ``kernel`` (kh, kw, C / groups, O) and ``bias`` (O,), or
  None, are the global arrays, split on their last axis. ``input_split``: ``x`` holds one
  tower's channels per device (after conv1). Grouped convs (groups=2) then stay local; a
  full conv (conv3) all-gathers both towers' inputs. ``conv_fn`` is the conv form chosen by
  ``models.resolve_kernels`` (``layers.conv`` or ``cpu_kernels.conv``). Returns
  (N, H', W', O) split over ``tower_axis`` on its last axis, x's dtype.
  Raises ValueError for groups other than 1 or PAPER_TOWERS, or a grouped conv on
  unsplit input.
  """
  batch = _batch_axes(mesh, tower_axis)
  split = P(batch, None, None, tower_axis)
  if groups not in (1, PAPER_TOWERS) or (groups > 1 and not input_split):
    raise UserError(f"tower_conv: {groups} groups do not map onto {PAPER_TOWERS} towers.")

  def body(x, kernel, *maybe_bias):
    if input_split and groups == 1:
      x = jax.lax.all_gather(x, tower_axis, axis=3, tiled=True)  # both towers' maps
    y = conv_fn(x, kernel, stride=stride, padding=padding, groups=1)  # one group per device
    return y + maybe_bias[0] if maybe_bias else y

  args = (x, kernel) + (() if bias is None else (bias,))
  in_specs = (split if input_split else P(batch), P(None, None, None, tower_axis),
              P(tower_axis))[:len(args)]
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=split)(*args)


def sharded_dense(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, mesh,
                  tower_axis: str | None, fsdp_axis: str | None,
                  gather_output: bool = False) -> jax.Array:
  """Dense layer x @ kernel + bias, written per device. x (N, in), kernel (in, out), bias
  (out,), all of one dtype; returns (N, out).

  ``tower_axis``: the output features are split over the towers (the paper split every
  fully connected layer's neurons over its two GPUs); each device sees the whole input,
  and ``gather_output`` all-gathers the result (fc8: whole logits on every device).
  ``fsdp_axis``: the kernel's rows are stored sharded over this axis; each device gathers
  them for the matmul, and the transpose of that gather reduce-scatters the gradient back
  onto the shards (FSDP), instead of all-reducing a full-size gradient.
  """
  batch = _batch_axes(mesh, tower_axis) if tower_axis else (mesh.axis_names or None)

  def body(x, kernel, bias):
    if fsdp_axis is not None:
      kernel = jax.lax.all_gather(kernel, fsdp_axis, axis=0, tiled=True)
    return x @ kernel + bias

  y = jax.shard_map(
      body, mesh=mesh, in_specs=(P(batch, None), P(fsdp_axis, tower_axis), P(tower_axis)),
      out_specs=P(batch, tower_axis))(x, kernel, bias)
  if gather_output and tower_axis is not None:
    # The gathered logits are replicated over the towers; XLA's all-gather says so to the
    # partitioner (an all_gather inside shard_map would count as varying over the axis).
    return jax.lax.with_sharding_constraint(y, P(batch, None))
  return y


def tower_local(fn: Callable[[jax.Array], jax.Array], x: jax.Array, *, mesh,
                tower_axis: str) -> jax.Array:
  """``fn`` applied to each tower's channels on its own device (LRN within a tower).

  x: (N, H, W, C) with C split over ``tower_axis``; fn maps one tower's (n, H, W, C/2) to
  the same shape. Returns x's shape and sharding.
  """
  split = P(_batch_axes(mesh, tower_axis), None, None, tower_axis)
  return jax.shard_map(fn, mesh=mesh, in_specs=split, out_specs=split)(x)
