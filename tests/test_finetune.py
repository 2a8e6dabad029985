"""Fine-tuning: init_from a checkpoint or a torchvision .pth, head replacement, frozen layers.

torchvision-format files are written with the independent PyTorch reference model
(benchmarks/torch_reference.py: torchvision's module structure and state_dict keys; see
test_predict.write_torchvision_pth); there are no published weights offline.
"""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax import checkpoint as ckpt_lib, config_base, models, optim
from alexnet_jax.errors import UserError
from alexnet_jax.tools import cli, export
from alexnet_jax.transfer import finetune

try:  # tests/ on sys.path (pytest's default): the same module, so one shared run per session
  import test_predict as shared
except ImportError:
  from tests import test_predict as shared

REPO = pathlib.Path(__file__).resolve().parents[1]


def fresh_params(**model_config):
  """Zeros of the params tree `model_config` builds (shapes only: nothing is computed)."""
  model = models.create_model(**model_config)
  images = jnp.zeros((1, model.image_size, model.image_size, model.in_channels))
  abstract = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, images,
                                               train=False)["params"])
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)


def tree_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


TORCHVISION_10 = {**models.model_preset("torchvision"), "num_classes": 10,
                  "image_size": 63}


@pytest.fixture(scope="module")
def pth(tmp_path_factory):
  return shared.shared_torchvision_pth(tmp_path_factory)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  return shared.shared_run(tmp_path_factory)[0]  # d2l, 10 classes


# --------------------------------------------------------------------------------------------
# Head replacement is explicit


def test_thousand_classes_into_ten_needs_an_explicit_head_replacement(pth):
  pretrained = finetune.load_pretrained(str(pth), TORCHVISION_10)
  fresh = fresh_params(**TORCHVISION_10)
  with pytest.raises(ValueError, match=r"1000 classes but model.num_classes=10.*reinit=fc8"):
    finetune.merge_params(fresh, pretrained.params, "", pretrained.source)

  params, kept_fresh = finetune.merge_params(fresh, pretrained.params, "fc8",
                                             pretrained.source)
  assert kept_fresh == ["fc8/bias", "fc8/kernel"]
  assert params["fc8"]["kernel"].shape == (4096, 10)  # the new head
  assert not params["fc8"]["kernel"].any()  # ... from the fresh initialization
  for layer in ("conv1", "conv5", "fc6", "fc7"):
    assert tree_equal(params[layer], pretrained.params[layer])


def test_torchvision_file_is_read_exactly(pth):
  import torch
  state_dict = torch.load(pth, weights_only=True)
  pretrained = finetune.load_pretrained(str(pth), TORCHVISION_10)
  np.testing.assert_array_equal(  # OIHW -> HWIO, no other change
      pretrained.params["conv1"]["kernel"],
      state_dict["features.0.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(pretrained.params["fc8"]["bias"],
                                state_dict["classifier.6.bias"].numpy())


def test_user_mistakes_are_one_clear_sentence(pth, source_run, tmp_path):
  with pytest.raises(UserError, match="init_from='.*nowhere.pth' does not exist"):
    finetune.load_pretrained(str(tmp_path / "nowhere.pth"), TORCHVISION_10)
  d2l = models.model_preset("d2l")
  with pytest.raises(ValueError, match="torchvision AlexNet weights but model.variant='d2l'"):
    finetune.load_pretrained(str(pth), d2l)
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match="variant='d2l'"):
    finetune.load_pretrained(str(source_run), TORCHVISION_10)
  grey = {**TORCHVISION_10, "in_channels": 1}
  pretrained = finetune.load_pretrained(str(pth), grey)
  with pytest.raises(ValueError, match="3 input channels but model.in_channels=1"):
    finetune.merge_params(fresh_params(**grey), pretrained.params, "fc8", pretrained.source)
  with pytest.raises(ValueError, match="reinit='fc9' matches no parameter"):
    finetune.merge_params(fresh_params(**TORCHVISION_10), pretrained.params, "fc9", "x")


def test_freeze_and_reinit_patterns_are_checked():
  config = config_base.base_config()
  config.freeze = "conv["
  with pytest.raises(ValueError, match="freeze='conv\\[' is not a valid regular expression"):
    optim.make_optimizer(config.optimizer, config.freeze)
  config.freeze = "^nothing"
  params = {"conv1": {"kernel": jnp.ones((2, 2))}}
  with pytest.raises(ValueError, match="freeze='\\^nothing' matches no parameter"):
    optim.make_optimizer(config.optimizer, config.freeze).init(params)
  config.freeze, config.reinit = "", "fc8"
  with pytest.raises(ValueError, match="init_from is empty"):
    finetune.check_config(config)


def test_frozen_parameters_get_no_update_no_decay_and_no_momentum():
  config = config_base.base_config()
  config.freeze = "^conv"
  config.optimizer.weight_decay = 0.1  # large: any decay would show
  tx = optim.make_optimizer(config.optimizer, config.freeze)
  params = {"conv1": {"kernel": jnp.full((3, 3), 2.0), "bias": jnp.full((3,), -1.0)},
            "fc6": {"kernel": jnp.full((3, 2), 2.0), "bias": jnp.ones((2,))}}
  opt_state = tx.init(params)
  momentum = jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  assert sum(isinstance(x, optax.MaskedNode) for x in momentum) == 2  # conv1's two arrays
  grads = jax.tree.map(jnp.ones_like, params)
  new = params
  for _ in range(3):
    updates, opt_state = tx.update(grads, opt_state, new)
    new = optax.apply_updates(new, updates)
  assert tree_equal(new["conv1"], params["conv1"])
  assert not np.allclose(new["fc6"]["kernel"], params["fc6"]["kernel"])


# --------------------------------------------------------------------------------------------
# Through the trainer


def test_fine_tune_run_keeps_frozen_layers_bit_identical(source_run, tmp_path):
  run = tmp_path / "finetune"
  # On 2 devices: the restored parameters still go onto a multi-device mesh, in half the
  # time all 8 took (each simulated device updates every parameter).
  shared.train_tiny_run(run, jax.devices()[:2], init_from=str(source_run), reinit="fc8",
                        freeze="^conv", eval_at_end=False,
                        **{"model.num_classes": 5, "eval_every_steps": 100})
  before = ckpt_lib.read_for_inference(source_run).params
  restored = ckpt_lib.read_for_inference(run)
  after = restored.params
  assert restored.step == 2 and restored.meta["model"]["num_classes"] == 5
  for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
    for name in ("kernel", "bias"):  # bit-identical: no update, no weight decay
      np.testing.assert_array_equal(after[layer][name], before[layer][name])
  assert not np.array_equal(after["fc7"]["kernel"], before["fc7"]["kernel"])
  assert after["fc8"]["kernel"].shape == (4096, 5)


def test_restoring_into_another_head_without_reinit_is_an_error(source_run):
  """What the trainer calls after initializing a fresh 5-class model (train._init_state)."""
  config = shared.tiny_config(init_from=str(source_run), **{"model.num_classes": 5})
  fresh = jax.tree.map(jnp.asarray, fresh_params(**config.model.to_dict()))
  with pytest.raises(ValueError, match="10 classes but model.num_classes=5.*--config.reinit=fc8"):
    finetune.initialize_from({"params": fresh}, init_from=config.init_from,
                             reinit=config.reinit, freeze=config.freeze,
                             model_config=config.model.to_dict(), tx=None, shardings=None,
                             log=print)


def test_export_then_init_from_the_file_round_trips(source_run, tmp_path):
  pytest.importorskip("torch")  # .pth files are written and read with torch
  out = tmp_path / "exported.pth"
  args = [f"--workdir={source_run}", f"--export_torchvision={out}"]
  assert cli.call(export.define_flags, export.main, args) == 0
  restored = ckpt_lib.read_for_inference(source_run)
  again = finetune.load_pretrained(str(out), restored.meta["model"])
  assert tree_equal(again.params, restored.params)


def test_export_command_line(source_run, tmp_path):
  import subprocess
  import sys
  help_text = subprocess.run([sys.executable, "-m", "alexnet_jax.tools.export", "--help"],
                             capture_output=True, text=True, cwd=REPO, timeout=120)
  assert "--export_torchvision" in help_text.stdout  # absl's --help exits with status 1
  missing = subprocess.run([sys.executable, "-m", "alexnet_jax.tools.export",
                            f"--workdir={source_run}"],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
  assert missing.returncode == 2 and "--export_torchvision" in missing.stderr
  assert "needs PyTorch" in help_text.stdout


def test_export_without_torch_is_one_sentence_before_any_reading(monkeypatch, tmp_path, capsys):
  import sys
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  out = tmp_path / "x.pth"
  # The workdir does not exist either: PyTorch is checked before the checkpoint is read.
  args = [f"--workdir={tmp_path / 'nowhere'}", f"--export_torchvision={out}"]
  assert cli.call(export.define_flags, export.main, args) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "needs PyTorch" in err and "pip install torch" in err
  assert err.count("\n") == 1 and not out.exists()


# --------------------------------------------------------------------------------------------
# checkpoint.py's readers


def test_resolve_accepts_a_run_its_checkpoints_or_one_step(source_run):
  directory = source_run / "checkpoints"
  assert ckpt_lib.resolve(source_run) == (directory, 2)
  assert ckpt_lib.resolve(directory, -1) == (directory, 2)
  assert ckpt_lib.resolve(directory / "2") == (directory, 2)
  assert ckpt_lib.resolve(source_run, 2) == (directory, 2)


def test_resolve_errors_are_one_sentence(source_run, tmp_path):
  with pytest.raises(UserError, match="nowhere does not exist"):
    ckpt_lib.resolve(tmp_path / "nowhere")
  with pytest.raises(UserError, match="No checkpoints in"):
    ckpt_lib.resolve(tmp_path)
  with pytest.raises(UserError, match="step 7 is not in .*; available steps: 2"):
    ckpt_lib.resolve(source_run, 7)
  with pytest.raises(UserError, match="checkpoint of step 2, not step 3"):
    ckpt_lib.resolve(source_run / "checkpoints" / "2", 3)


def test_read_for_inference_gives_numpy_trees(source_run):
  restored = ckpt_lib.read_for_inference(source_run)
  assert restored.step == 2 and restored.directory == source_run / "checkpoints"
  assert restored.meta["model"]["variant"] == "d2l" and restored.batch_stats == {}
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(restored.params))
  assert restored.params["fc8"]["kernel"].shape == (4096, 10)


def test_the_fine_tune_config():
  spec = importlib.util.spec_from_file_location(
      "finetune_config", REPO / "configs" / "finetune_torchvision_fashion_mnist.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  assert config.init_from.endswith("alexnet-owt-7be5be79.pth")
  assert (config.reinit, config.freeze) == ("fc8", "^conv")
  assert (config.model.variant, config.model.in_channels, config.model.num_classes) == (
      "torchvision", 3, 10)
  assert config.data.source == "fashion_mnist"
  assert tuple(config.data.std) == config_base.TORCHVISION_STD_RGB
