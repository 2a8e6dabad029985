"""The train state (a plain dict) and its sharded creation.

{'step', 'params', 'opt_state', 'rng', 'schedule'}: everything a resumed run needs besides the
data iterator. Created with `jax.eval_shape` and a jitted init whose outputs land directly on
their shardings, never as full arrays on one device first.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from alexnet_jax import optim, parallel


def _init_fn(model: nn.Module, tx: optax.GradientTransformation, input_shape: tuple[int, ...]):
  def init(seed_array):
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed_array))
    params = model.init({"params": init_rng}, jnp.zeros(input_shape, jnp.float32),
                        train=False)["params"]
    schedule = {k: jnp.asarray(v, jnp.float32)
                for k, v in optim.Plateau.initial_state().items()}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
            "rng": dropout_rng, "schedule": schedule}
  return init


def state_shardings(abstract_state: Any, mesh: Mesh) -> Any:
  # Pure data parallelism: everything replicated.
  return jax.tree.map(lambda _: parallel.replicated(mesh), abstract_state)


def abstract_train_state(model, tx, input_shape, mesh: Mesh) -> tuple[Any, Any]:
  """(abstract state, shardings) without allocating anything."""
  abstract = jax.eval_shape(_init_fn(model, tx, input_shape), jnp.uint32(0))
  return abstract, state_shardings(abstract, mesh)


def create_train_state(model, tx, input_shape, mesh: Mesh, seed: int) -> Any:
  init = _init_fn(model, tx, input_shape)
  _, shardings = abstract_train_state(model, tx, input_shape, mesh)
  return jax.jit(init, out_shardings=shardings)(jnp.asarray(seed, jnp.uint32))
