"""The optimizer and learning-rate schedules.

SGD in the paper's exact form: v <- momentum * v - lr * (g + wd * w); w <- w + v. The rate
sits inside the momentum buffer (optax.sgd scales after it), which matters as soon as the rate
changes. The rate and the other numeric hyperparameters (momentum, weight decay, ...) are injected
(optax.inject_hyperparams) and set from the config at every step, so a resumed run trains with
the values its config gives. With schedule.name='plateau' the rate is `schedule(step) * scale`;
the scale lives in the train state so that the plateau rule (a decision made on the host after
an evaluation) survives checkpoints.

`config.freeze` (a regex over parameter paths such as 'conv1/kernel') routes the matching
parameters to `optax.set_to_zero()` inside the injected optimizer: they get no update, no weight
decay and no momentum buffer, and XLA drops their now unused gradients.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from alexnet_jax.errors import UserError

SCHEDULES = ("constant", "step", "plateau", "cosine", "poly")
OPTIMIZERS = ("sgd", "adamw", "lars")


def _ndim_mask(params):
  """Decay kernels only: biases are the 1-D leaves."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def param_paths(params) -> Any:
  """The tree of '/'-joined names of each leaf: {'conv1': {'kernel': 'conv1/kernel'}, ...}."""
  def name(path, _):
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)
  return jax.tree_util.tree_map_with_path(name, params)


def compile_pattern(field: str, pattern: str) -> re.Pattern:
  """re.compile(pattern), or UserError naming the config `field` for an invalid regex."""
  try:
    return re.compile(pattern)
  except re.error as e:
    raise UserError(f"{field}={pattern!r} is not a valid regular expression: {e}.") from e


def freeze_labels(pattern: str) -> Callable[[Any], Any]:
  """params -> 'frozen' / 'trainable' per leaf, by `re.search` of `pattern` in its path."""
  regex = compile_pattern("freeze", pattern)

  def labels(params):
    paths = param_paths(params)
    names = jax.tree.leaves(paths)
    if not any(regex.search(n) for n in names):
      raise UserError(f"freeze={pattern!r} matches no parameter; names look like "
                       f"{', '.join(names[:4])}, ...")
    return jax.tree.map(lambda n: "frozen" if regex.search(n) else "trainable", paths)
  return labels


def _with_freeze(tx: optax.GradientTransformation, freeze: str) -> optax.GradientTransformation:
  if not freeze:
    return tx
  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                               freeze_labels(freeze))


def paper_sgd(learning_rate: float, momentum: float, weight_decay: float, nesterov: bool,
              decay_biases: bool, freeze: str = "") -> optax.GradientTransformation:
  """The paper's update: v <- momentum v - lr (g + weight_decay w); w <- w + v (Krizhevsky
  et al. 2012, Section 5), weight decay added to the gradient; `freeze` (regex) parameters
  get no update."""
  return _with_freeze(optax.chain(
      optax.add_decayed_weights(weight_decay, mask=None if decay_biases else _ndim_mask),
      optax.scale_by_learning_rate(learning_rate),
      optax.trace(decay=momentum, nesterov=nesterov),
  ), freeze)


def adamw(learning_rate: float, b1: float, b2: float, weight_decay: float,
          decay_biases: bool, freeze: str = "") -> optax.GradientTransformation:
  """optax.adamw with decoupled weight decay (not on biases unless decay_biases), `freeze`d
  parameters get no update."""
  return _with_freeze(optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay,
                                  mask=None if decay_biases else _ndim_mask), freeze)


def lars(learning_rate: float, momentum: float, weight_decay: float, trust_coefficient: float,
         nesterov: bool, decay_biases: bool, freeze: str = "") -> optax.GradientTransformation:
  """LARS (You, Gitman & Ginsburg 2017), optax's form: u = g + wd * w, scaled per weight
  array by trust_coefficient * ||w|| / ||u||, then v <- momentum * v - lr * u (the rate inside
  the momentum buffer, as in paper_sgd). decay_biases=False exempts the 1-D leaves (biases,
  BN scales and offsets) from both the decay and the trust ratio."""
  mask = None if decay_biases else _ndim_mask
  return _with_freeze(optax.lars(
      learning_rate, weight_decay=weight_decay, weight_decay_mask=mask or True,
      trust_coefficient=trust_coefficient, trust_ratio_mask=mask or True, momentum=momentum,
      nesterov=nesterov), freeze)


def hyperparams(opt: Any) -> dict[str, float]:
  """The optimizer's numeric hyperparameters other than the rate, by the names its injected
  state uses (optax.inject_hyperparams), from `opt` (config.optimizer): set at every step
  (steps.py), so a run resumed with new values trains with them, not with those its
  checkpoint recorded. Raises UserError for an unknown optimizer.name."""
  names = {"sgd": ("momentum", "weight_decay"),
           "lars": ("momentum", "weight_decay", "trust_coefficient"),
           "adamw": ("b1", "b2", "weight_decay")}
  if opt.name not in names:
    raise UserError(f"optimizer.name={opt.name!r} is not one of "
                    f"{', '.join(map(repr, OPTIMIZERS))}.")
  return {name: float(opt[name]) for name in names[opt.name]}


def make_optimizer(opt: Any, freeze: str) -> optax.GradientTransformation:
  """The optimizer `opt` (config.optimizer) names, with its rate and `hyperparams(opt)`
  injected so each step sets them; `freeze` (config.freeze) parameters get no update. Raises
  UserError for an unknown optimizer.name or an invalid `freeze` regex."""
  numeric = dict(hyperparams(opt), learning_rate=opt.learning_rate)
  if freeze:
    compile_pattern("freeze", freeze)  # a bad pattern fails here, before any tracing
  static = dict(decay_biases=opt.decay_biases, freeze=freeze)
  if opt.name in ("sgd", "lars"):
    static["nesterov"] = opt.nesterov
  factory = {"sgd": paper_sgd, "lars": lars, "adamw": adamw}[opt.name]
  return optax.inject_hyperparams(factory, static_args=tuple(static))(**numeric, **static)


def learning_rate_fn(opt: Any, sched: Any, *, batch_size: int, steps_per_epoch: int,
                     total_steps: int, warmup_steps: int) -> Callable:
  """(step, schedule state) -> the step's learning rate: `make_schedule`'s rate, times the
  plateau rule's scale when sched.name is 'plateau' (the scale is that rule's alone: a run
  resumed under another schedule does not inherit a plateau's reductions). `opt`, `sched`:
  config.optimizer and config.schedule; the counts from the run's plan."""
  base = make_schedule(opt, sched, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                       total_steps=total_steps, warmup_steps=warmup_steps)
  if sched.name == "plateau":
    return lambda step, schedule_state: base(step) * schedule_state["scale"]
  return lambda step, schedule_state: base(step)


def make_schedule(opt: Any, sched: Any, *, batch_size: int, steps_per_epoch: int,
                  total_steps: int, warmup_steps: int) -> Callable:
  """step -> base learning rate (before the plateau scale). Raises UserError for an unknown
  schedule.name."""
  peak = opt.learning_rate
  if opt.base_batch_size > 0:  # linear scaling: learning_rate is the rate for base_batch images
    peak = peak * batch_size / opt.base_batch_size
  warmup = warmup_steps
  if sched.name in ("constant", "plateau"):
    main = optax.constant_schedule(peak)
  elif sched.name == "step":
    boundaries = {int(round(e * steps_per_epoch)): sched.factor
                  for e in sched.boundaries_epochs}
    main = optax.piecewise_constant_schedule(peak, boundaries)
  elif sched.name == "cosine":
    cosine = optax.cosine_decay_schedule(peak, max(1, total_steps - warmup),
                                         alpha=sched.end_factor)
    main = lambda step: cosine(jnp.maximum(step - warmup, 0))  # decays once warmup is over
  elif sched.name == "poly":  # You et al.'s LARS runs: peak * (1 - t)^power, t from 0 to 1
    poly = optax.polynomial_schedule(peak, peak * sched.end_factor, sched.power,
                                     max(1, total_steps - warmup))
    main = lambda step: poly(jnp.maximum(step - warmup, 0))
  else:
    raise UserError(f"schedule.name={sched.name!r} is not one of "
                     f"{', '.join(map(repr, SCHEDULES))}.")
  if warmup <= 0:
    return main
  # Linear warmup multiplies any schedule, so step boundaries stay at their absolute epochs.
  return lambda step: main(step) * jnp.minimum(1.0, (step + 1) / warmup)


@dataclasses.dataclass
class Plateau:
  """The paper's rule: divide the rate by 10 when eval top-1 stops improving.

  Kept as plain numbers in the train state: best top-1 so far, evaluations since it improved,
  reductions made, and the current scale.
  """
  factor: float
  patience: int
  max_reductions: int
  min_delta: float

  @classmethod
  def of(cls, sched: Any) -> "Plateau":
    """The rule of `sched` (config.schedule)."""
    return cls(sched.factor, sched.patience, sched.max_reductions, sched.min_delta)

  @staticmethod
  def initial_state() -> dict[str, float]:
    """The rule's state before any evaluation: best top-1, evaluations since, reductions, scale."""
    return {"best": -math.inf, "bad_evals": 0, "reductions": 0, "scale": 1.0}

  def update(self, state: dict[str, float], top1: float) -> tuple[dict[str, float], bool]:
    """(new state, whether the rate was reduced) after an evaluation with top-1 `top1`."""
    state = dict(state)
    if top1 > state["best"] + self.min_delta:
      state["best"], state["bad_evals"] = top1, 0
      return state, False
    state["bad_evals"] += 1
    if state["bad_evals"] >= self.patience and state["reductions"] < self.max_reductions:
      state["scale"] *= self.factor
      state["reductions"] += 1
      state["bad_evals"] = 0
      return state, True
    return state, False
