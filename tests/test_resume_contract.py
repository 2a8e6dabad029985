"""The resume contract (checkpoint.RESUME_APPLIED / RESUME_REFUSED): a run resumed with an
edited config applies the change exactly as a fresh run restored from the checkpoint would,
or refuses it before anything is written or moved."""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from alexnet_jax import checkpoint as ckpt_lib, experiment, sharding, train
from alexnet_jax.config_base import base_config
from alexnet_jax.models import VARIANTS, model_preset
from configs import synthetic
from tests.helpers import SMALL, read_metrics, run_main


def test_every_config_field_is_in_exactly_one_resume_class():
  refused, applied = set(ckpt_lib.RESUME_REFUSED), set(ckpt_lib.RESUME_APPLIED)
  assert not refused & applied, refused & applied
  fields = set(ckpt_lib.flat_config(base_config()))
  for variant in VARIANTS:
    fields |= {f"model.{name}" for name in model_preset(variant)}
  assert fields - refused - applied == set(), "fields with no resume class"
  assert (refused | applied) - fields == set(), "resume classes name fields that do not exist"


def _small_config(**changes):
  c = synthetic.get_config()
  c.model.update(model_preset("d2l"))
  c.model.update(num_classes=10, in_channels=1, image_size=96)
  c.data.update(mean=(0.,), std=(255.,), num_train_examples=128, num_eval_examples=16)
  c.update(batch_size=16, eval_batch_size=16, log_every_steps=1, checkpoint_every_steps=2,
           eval_every_steps=1, eval_report=False)
  c.schedule.update(name="plateau", patience=1, min_delta=2.0)  # every eval but the first cuts
  c.optimizer.learning_rate = 0.01
  c.update_from_flattened_dict(changes)  # dotted names: {"optimizer.momentum": 0.5}
  return c


def _restore(exp, workdir: pathlib.Path, step: int):
  reader = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=3, read_only=True)
  try:
    return reader.restore(step, ckpt_lib.abstract_like(exp.abstract_state, exp.state_shardings))
  finally:
    reader.close()


def test_changed_schedule_weight_decay_and_momentum_apply_as_a_fresh_restore(tmp_path):
  one = jax.devices()[:1]
  first = tmp_path / "first"
  train.train_and_evaluate(experiment.build(_small_config(num_train_steps=4), devices=one),
                           first)
  lrs = [r["train/lr"] for r in read_metrics(first) if "train/lr" in r]
  assert lrs[-1] == pytest.approx(0.01 * 0.1 ** 2)  # the plateau rule cut the rate twice

  edited = dict(num_train_steps=6, **{"schedule.name": "constant",
                                      "optimizer.weight_decay": 0.0,
                                      "optimizer.momentum": 0.5})
  resumed = tmp_path / "resumed"
  shutil.copytree(first, resumed)
  exp = experiment.build(_small_config(**edited), devices=one)
  train.train_and_evaluate(exp, resumed)
  records = [r for r in read_metrics(resumed) if "train/lr" in r and r["step"] > 4]
  # The plateau's scale is plateau's own: a constant schedule trains at its rate.
  assert [r["train/lr"] for r in records] == pytest.approx([0.01, 0.01])

  # A fresh run restored from the step-4 state with the new values: the optimizer's
  # hyperparameters as a new optimizer state holds them, everything else as saved.
  state = _restore(exp, first, 4)
  fresh = jax.jit(exp.tx.init)(state["params"])
  state["opt_state"] = state["opt_state"]._replace(hyperparams=fresh.hyperparams)
  batches = exp.train_batches(start_step=4)
  try:
    for _ in range(2):
      state, _ = exp.train_step(state, next(batches))
  finally:
    batches.close()
  want = sharding.to_host(state["params"])
  got = sharding.to_host(_restore(exp, resumed, 6)["params"])
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  saved = sharding.to_host(_restore(exp, resumed, 6)["opt_state"].hyperparams)
  assert float(saved["weight_decay"]) == 0.0 and float(saved["momentum"]) == 0.5

  # And it is not what the old values give: the change did act.
  unchanged = tmp_path / "unchanged"
  shutil.copytree(first, unchanged)
  train.train_and_evaluate(
      experiment.build(_small_config(num_train_steps=6, **{"schedule.name": "constant"}),
                       devices=one), unchanged)
  other = sharding.to_host(_restore(exp, unchanged, 6)["params"])
  assert not np.array_equal(other["fc8"]["kernel"], got["fc8"]["kernel"])


def _tree_hash(directory: pathlib.Path) -> str:
  """Every file's name and bytes, but the workdir lock's (held by whoever runs there)."""
  digest = hashlib.sha256()
  for path in sorted(p for p in directory.rglob("*")
                     if p.is_file() and not p.name.startswith(ckpt_lib.layout.LOCK_FILE)):
    digest.update(str(path.relative_to(directory)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


_ARGS = SMALL + ("--config.checkpoint_every_steps=2", "--config.eval_at_end=false")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> pathlib.Path:
  """One 4-step run, copied by each refusal case."""
  workdir = tmp_path_factory.mktemp("trained")
  run_main("synthetic.py", workdir, *_ARGS, "--config.num_train_steps=4")
  return workdir


@pytest.mark.parametrize("change,field", [
    ("--config.optimizer.name=adamw", "optimizer.name"),
    ("--config.optimizer.decay_biases=false", "optimizer.decay_biases"),
    ("--config.freeze=^conv1", "freeze"),
    ("--config.seed=7", "seed"),
])
def test_a_refused_change_says_so_and_nothing_moves(tmp_path, trained_run, change, field):
  workdir = tmp_path / "run"
  shutil.copytree(trained_run, workdir)
  before = _tree_hash(workdir)
  result = run_main("synthetic.py", workdir, *_ARGS, "--config.num_train_steps=6", change,
                    check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(error) == 1 and "Traceback" not in result.stderr
  assert f"{field}=" in error[0] and "init_from=" in error[0] and "Resume with" in error[0]
  assert _tree_hash(workdir) == before  # no checkpoint moved, no config.json or metrics


def test_a_checkpoint_without_a_recorded_config_is_refused_by_its_state_tree(tmp_path):
  """Checkpoints written before format 3 record no config: the state tree decides, and a
  tree the config does not make is a refusal, not damage."""
  args = _ARGS
  run_main("synthetic.py", tmp_path, *args, "--config.num_train_steps=2")
  meta = tmp_path / "checkpoints" / "2" / "meta" / "metadata"
  recorded = json.loads(meta.read_text())
  del recorded["config"]
  recorded["format"] = 2
  meta.write_text(json.dumps(recorded))
  before = _tree_hash(tmp_path / "checkpoints")
  for change in ("--config.optimizer.decay_biases=false", "--config.optimizer.name=adamw"):
    result = run_main("synthetic.py", tmp_path, *args, "--config.num_train_steps=4", change,
                      check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "another train state" in result.stderr and "Traceback" not in result.stderr
    assert _tree_hash(tmp_path / "checkpoints") == before
  resumed = run_main("synthetic.py", tmp_path, *args, "--config.num_train_steps=4")
  assert "Resumed from step 2" in resumed.stderr
