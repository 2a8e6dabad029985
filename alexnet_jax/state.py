"""The train state (a plain dict) and its sharded creation.

{'step', 'params', 'batch_stats', 'opt_state', 'rng', 'schedule'}: everything a resumed run
needs (the data position is the step). `batch_stats` holds alexnet_bn's running BN statistics
and is an empty dict for the other variants, so the tree has the same keys for every model.
Created with `jax.eval_shape` and a jitted init whose outputs land directly on their
shardings, never as full arrays on one device first.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from alexnet_jax import optim


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...]):
  def init(seed_array):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed_array))
    variables = model.init({"params": init_rng}, jnp.zeros(input_shape, jnp.float32),
                           train=False)
    params = variables["params"]
    schedule = {k: jnp.asarray(v, jnp.float32)
                for k, v in optim.Plateau.initial_state().items()}
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "batch_stats": dict(variables.get("batch_stats", {})),
            "opt_state": tx.init(params), "rng": dropout_rng, "schedule": schedule}
  return init


def abstract_train_state(model, tx, input_shape) -> Any:
  """The train state as ShapeDtypeStructs, without allocating anything."""
  return jax.eval_shape(_init_fn(model, tx, input_shape), jnp.uint32(0))


def create_train_state(model, tx, input_shape, shardings: Any, seed: int) -> Any:
  """A fresh train state from `seed`, created directly on `shardings` by a jitted init
  (never whole on one device first)."""
  init = _init_fn(model, tx, input_shape)
  return jax.jit(init, out_shardings=shardings)(jnp.asarray(seed, jnp.uint32))


def _place(tree: Any, shardings: Any) -> Any:
  """Host arrays (identical on every process) onto their shardings, any device layout."""
  return jax.tree.map(
      lambda value, sharding: jax.make_array_from_callback(
          value.shape, sharding, lambda index: value[index]),
      tree, shardings)


def with_params(state: Any, params: Any, tx: optax.GradientTransformation,
                shardings: Any, batch_stats: Any = None) -> Any:
  """`state` with host `params` (numpy, same tree) placed on their shardings and a fresh
  optimizer state for them (and, if given, host `batch_stats`): how init_from (finetune.py)
  replaces a fresh initialization."""
  placed = _place(params, shardings["params"])
  opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(placed)
  new_state = dict(state, params=placed, opt_state=opt_state)
  if batch_stats is not None:
    new_state["batch_stats"] = _place(batch_stats, shardings["batch_stats"])
  return new_state
