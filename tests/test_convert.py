"""Tests of alexnet_jax.convert: exact round trips, PyTorch parity, golden logits, errors.

Parity runs against benchmarks/torch_reference.py, a PyTorch implementation written
without alexnet_jax. Where torch is absent, the golden logits (computed by that reference
and stored in tests/golden/logits.npz) still check the forward pass.
"""

from __future__ import annotations

import json
import pathlib
import sys

import jax
import numpy as np
import pytest

from alexnet_jax import models
from alexnet_jax.errors import UserError
from alexnet_jax.transfer import convert

TESTS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS / "golden"))
import make_golden as golden  # noqa: E402

GOLDEN = np.load(golden.GOLDEN_FILE)
CASE_NAMES = list(golden.CASES)


def variant_of(case: str) -> str:
  return golden.CASES[case][0]


def overrides_of(case: str) -> dict:
  return golden.CASES[case][1]


def assert_trees_equal(a, b):
  assert sorted(a) == sorted(b)
  for layer in a:
    assert sorted(a[layer]) == sorted(b[layer])
    for name in a[layer]:
      np.testing.assert_array_equal(np.asarray(a[layer][name]), np.asarray(b[layer][name]))


# --------------------------------------------------------------------------------------
# Layout and round trips (no torch needed)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["paper_224", "torchvision_224", "d2l_224"])
def test_round_trips_are_exact(case):
  variant, params = variant_of(case), golden.case_params(case)
  arrays = convert.to_torch_layout(params, variant)
  assert all(a.dtype == np.float32 for a in arrays.values())
  back = convert.from_torch_layout(arrays, variant, **overrides_of(case))
  # params == back, so to_torch_layout(back) == arrays: both directions are exact.
  assert_trees_equal(back, params)


def test_torch_layout_shapes_of_the_paper_variant():
  arrays = convert.to_torch_layout(golden.case_params("paper_224"), "paper")
  assert list(arrays) == [f"{layer}.{kind}" for layer in models.LAYER_NAMES
                          for kind in ("weight", "bias")]
  assert arrays["conv1.weight"].shape == (96, 3, 11, 11)
  assert arrays["conv2.weight"].shape == (256, 48, 5, 5)  # (O, I/groups, kH, kW)
  assert arrays["fc6.weight"].shape == (4096, 9216)
  assert arrays["fc8.weight"].shape == (1000, 4096)


def test_fc6_rows_follow_pytorch_flatten_order():
  """x_nhwc.flatten() @ K equals x_nchw.flatten() @ K_torch for the same feature map."""
  rng = np.random.default_rng(0)
  feature_map = rng.standard_normal((5, 5, 8)).astype(np.float32)  # (H, W, C)
  kernel = rng.standard_normal((200, 3)).astype(np.float32)
  torch_rows = convert._fc6_nhwc_rows_to_nchw(kernel, channels=8)
  np.testing.assert_allclose(feature_map.reshape(-1) @ kernel,
                             feature_map.transpose(2, 0, 1).reshape(-1) @ torch_rows,
                             rtol=1e-5)
  np.testing.assert_array_equal(convert._fc6_nchw_rows_to_nhwc(torch_rows, 8), kernel)


def test_missing_key_is_named():
  arrays = convert.to_torch_layout(golden.case_params("d2l_224"), "d2l")
  del arrays["conv3.bias"]
  with pytest.raises(ValueError, match="Missing key 'conv3.bias'"):
    convert.from_torch_layout(arrays, "d2l")


def test_mismatched_shape_names_key_and_shapes():
  arrays = convert.to_torch_layout(golden.case_params("d2l_224"), "d2l")
  arrays["fc8.weight"] = np.zeros((7, 4096), np.float32)
  with pytest.raises(ValueError) as err:
    convert.from_torch_layout(arrays, "d2l")
  message = str(err.value)
  assert "'fc8.weight'" in message and "(10, 4096)" in message and "(7, 4096)" in message


def test_arrays_of_another_variant_are_rejected():
  arrays = convert.to_torch_layout(golden.case_params("torchvision_224"), "torchvision")
  with pytest.raises(ValueError, match=r"'conv1.weight'.*expected \(96, 3, 11, 11\), "
                                       r"found \(64, 3, 11, 11\)"):
    convert.from_torch_layout(arrays, "paper")


def test_torchvision_keys_to_layout_without_torch():
  arrays = convert.to_torch_layout(golden.case_params("torchvision_224"), "torchvision")
  layout_to_torchvision = {v: k for k, v in convert.TORCHVISION_KEYS.items()}
  state = {"module." + layout_to_torchvision[k]: v for k, v in arrays.items()}
  renamed = convert.torchvision_keys_to_layout(state)
  assert sorted(renamed) == sorted(arrays)
  del state["module.features.8.weight"]
  with pytest.raises(ValueError, match="missing key 'features.8.weight'"):
    convert.torchvision_keys_to_layout(state)


@pytest.mark.parametrize("key,stripped", [
    ("features.0.weight", "features.0.weight"),
    ("module.features.0.weight", "features.0.weight"),  # nn.DataParallel(model)
    ("features.module.0.weight", "features.0.weight"),  # pytorch/examples imagenet (issue 12)
    ("module.conv1.weight", "conv1.weight"),
])
def test_strip_wrapper_prefix_anywhere_in_the_key(key, stripped):
  assert convert._strip_wrapper_prefix(key) == stripped


def test_pytorch_examples_checkpoint_is_read(tmp_path):
  """pytorch/examples' imagenet/main.py saves {'epoch', 'arch', 'state_dict', ...} with
  `model.features` wrapped in DataParallel: keys 'features.module.0.weight' (issue 12)."""
  torch = pytest.importorskip("torch")
  arrays = convert.to_torch_layout(golden.case_params("torchvision_224"), "torchvision")
  layout_to_torchvision = {v: k for k, v in convert.TORCHVISION_KEYS.items()}
  state_dict = {}
  for key, value in arrays.items():
    name = layout_to_torchvision[key]
    if name.startswith("features."):
      name = name.replace("features.", "features.module.", 1)
    state_dict[name] = torch.from_numpy(value)
  path = tmp_path / "model_best.pth.tar"
  torch.save({"epoch": 90, "arch": "alexnet", "state_dict": state_dict, "best_acc1": 0.5}, path)
  layout, variant = convert.read_layout_file(path)
  assert variant == "torchvision" and sorted(layout) == sorted(arrays)
  for key in arrays:
    np.testing.assert_array_equal(layout[key], arrays[key])


class _FakeTensor:
  """Just what read_state_dict_file calls on a tensor."""

  def __init__(self, array):
    self.array = array

  def detach(self):
    return self

  def float(self):
    return self

  def cpu(self):
    return self

  def numpy(self):
    return self.array


def test_pytorch_examples_keys_are_read_without_torch(monkeypatch, tmp_path):
  """The same file as above through a stand-in `torch.load` (torch is optional)."""
  import types
  arrays = convert.to_torch_layout(golden.case_params("torchvision_224"), "torchvision")
  layout_to_torchvision = {v: k for k, v in convert.TORCHVISION_KEYS.items()}
  state_dict = {layout_to_torchvision[k].replace("features.", "features.module.", 1):
                _FakeTensor(v) for k, v in arrays.items()}
  saved = {"epoch": 90, "arch": "alexnet", "state_dict": state_dict}
  fake_torch = types.SimpleNamespace(load=lambda *args, **kwargs: saved)
  monkeypatch.setitem(sys.modules, "torch", fake_torch)
  path = tmp_path / "checkpoint.pth.tar"
  path.write_bytes(b"")
  layout, variant = convert.read_layout_file(path)
  assert variant == "torchvision" and sorted(layout) == sorted(arrays)
  params, config = convert.params_from_file(
      path, {**models.model_preset("torchvision"), "image_size": 224})
  assert config["num_classes"] == 1000 and config["in_channels"] == 3
  assert_trees_equal(params, golden.case_params("torchvision_224"))
  saved["state_dict"] = {"encoder.weight": _FakeTensor(np.zeros(3))}
  with pytest.raises(UserError, match="not an AlexNet state_dict"):
    convert.read_layout_file(path)


def test_load_torchvision_without_torch_says_how_to_install(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
  with pytest.raises(UserError, match="pip install torch"):
    convert.load_torchvision(tmp_path / "alexnet.pth")


# --------------------------------------------------------------------------------------
# Golden logits (no torch needed)
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASE_NAMES)
def test_golden_logits(case):
  variant, params = variant_of(case), golden.case_params(case)
  assert json.loads(str(GOLDEN[f"{case}/config"])) == golden.case_config(case)
  np.testing.assert_allclose(
      golden.param_checksums(params, variant), GOLDEN[f"{case}/param_checksums"],
      rtol=1e-5, atol=1e-3,
      err_msg="models.init no longer reproduces the golden parameters; if the init "
              "change is intended, rerun tests/golden/make_golden.py")
  images = golden.normalize(GOLDEN[f"{case}/images"])
  got = np.asarray(models.logits(variant, params, images, **overrides_of(case)))
  want = GOLDEN[f"{case}/logits"]
  assert want.std() > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------
# Live parity with the PyTorch reference
# --------------------------------------------------------------------------------------

def random_normal_images(cfg, batch=2, seed=0):
  rng = np.random.default_rng(seed)
  shape = (batch, cfg["image_size"], cfg["image_size"], cfg["in_channels"])
  return rng.standard_normal(shape).astype(np.float32)


def glorot_random_params(variant, seed=0, **model_kwargs):
  """Random params in numpy (no init compile): Glorot-uniform kernels, small biases."""
  rng = np.random.default_rng(seed)
  model = models.create_model(variant=variant, **model_kwargs)
  images = np.zeros((1, model.image_size, model.image_size, model.in_channels), np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), images, train=False))
  params = {}
  for layer, leaves in shapes["params"].items():
    kernel_shape = leaves["kernel"].shape
    receptive = int(np.prod(kernel_shape[:-2]))
    bound = np.sqrt(6.0 / (receptive * (kernel_shape[-2] + kernel_shape[-1])))
    params[layer] = {
        "kernel": rng.uniform(-bound, bound, kernel_shape).astype(np.float32),
        "bias": rng.uniform(-0.1, 0.1, leaves["bias"].shape).astype(np.float32),
    }
  return params


def assert_parity(cfg, params, images):
  overrides = {k: v for k, v in cfg.items() if k != "variant"}
  got = np.asarray(models.logits(cfg["variant"], params, images, **overrides))
  want = golden.torch_logits(cfg, params, images)
  assert want.std() > 1e-3
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_logits_match_pytorch_reference(case):
  pytest.importorskip("torch")
  cfg = golden.case_config(case)
  assert_parity(cfg, golden.case_params(case), random_normal_images(cfg, seed=1))


@pytest.mark.parametrize("image_size", [100, 300])
def test_torchvision_adaptive_pool_matches_pytorch(image_size):
  """pool5 is 2x2 at 100 (bins repeat) and 8x8 at 300 (bins overlap)."""
  pytest.importorskip("torch")
  cfg = {**golden.case_config("torchvision_224"), "image_size": image_size}
  images = random_normal_images(cfg, batch=1, seed=image_size)
  assert_parity(cfg, golden.case_params("torchvision_224"), images)


def test_d2l_at_another_image_size_matches_pytorch():
  pytest.importorskip("torch")
  cfg = {**models.model_preset("d2l"), "image_size": 128}  # 2x2x256 into fc6
  assert_parity(cfg, glorot_random_params("d2l", image_size=128),
                random_normal_images(cfg, batch=2, seed=2))


def test_load_torchvision_state_dict_file(tmp_path):
  torch = pytest.importorskip("torch")
  sys.path.insert(0, str(TESTS.parent / "benchmarks"))
  from torch_reference import TorchAlexNetTorchvision

  torch.manual_seed(0)
  model = TorchAlexNetTorchvision(num_classes=10).eval()
  path = tmp_path / "alexnet.pth"
  torch.save(model.state_dict(), path)
  params = convert.load_torchvision(path)  # num_classes read from the file
  assert params["fc8"]["kernel"].shape == (4096, 10)
  cfg = {**models.model_preset("torchvision"), "num_classes": 10,
         "image_size": 100}
  images = random_normal_images(cfg, batch=1, seed=3)
  got = np.asarray(models.logits("torchvision", params, images, num_classes=10,
                                 image_size=100))
  with torch.no_grad():
    want = model(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_load_torchvision_errors(tmp_path):
  pytest.importorskip("torch")
  with pytest.raises(UserError, match="missing.pth"):
    convert.load_torchvision(tmp_path / "missing.pth")
  corrupt = tmp_path / "corrupt.pth"
  corrupt.write_bytes(b"not a checkpoint")
  with pytest.raises(ValueError, match="corrupt.pth"):
    convert.load_torchvision(corrupt)
