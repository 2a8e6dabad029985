"""Convert AlexNet parameters between this project's Flax tree and PyTorch's layout.

Flax tree (models/)                          PyTorch layout (this module)
  conv{i}: kernel (kh, kw, in/groups, out)     conv{i}.weight (out, in/groups, kh, kw)
           bias   (out,)                       conv{i}.bias   (out,)
  fc{j}:   kernel (in, out)                    fc{j}.weight   (out, in)
           bias   (out,)                       fc{j}.bias     (out,)

Grouped convs need no reshuffling: both frameworks give group g the g-th slice of the
input channels and of the output channels. The one real reordering is fc6's input: the
Flax model flattens the last feature map as (H, W, C), PyTorch as (C, H, W).

Files (torch is imported only where a file is read or written):
- ``read_layout_file(path)``: a state_dict file with torchvision's keys ('features.0.weight',
  ..., e.g. the published alexnet-owt-7be5be79.pth) or the layout keys ('conv1.weight', ...),
  `module.` segments of DataParallel wrappers dropped; ``params_from_file(path, model_config)``
  turns it into a params tree (predict, visualize, init_from read .pth files through these);
- ``to_torchvision_state_dict`` / ``save_state_dict``: the way back (tools/export.py);
- ``load_torchvision(path)``: a torchvision file straight into the 'torchvision' variant.
``torchvision_keys_to_layout`` does the key renaming without torch.
"""

from __future__ import annotations

import math
import os
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import models
from alexnet_jax.errors import UserError

CONV_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
FC_LAYERS = ("fc6", "fc7", "fc8")

# torchvision.models.alexnet state_dict key -> layout key (torchvision/models/alexnet.py:
# features = Sequential(conv, relu, pool, conv, ...), classifier = Sequential(dropout, linear,
# ...): the convs and linears sit at these indices).
TORCHVISION_KEYS = {
    f"{tv}.{kind}": f"{ours}.{kind}"
    for tv, ours in (
        ("features.0", "conv1"), ("features.3", "conv2"), ("features.6", "conv3"),
        ("features.8", "conv4"), ("features.10", "conv5"),
        ("classifier.1", "fc6"), ("classifier.4", "fc7"), ("classifier.6", "fc8"),
    )
    for kind in ("weight", "bias")
}

# Every key of the layout (this module's PyTorch-style names), conv1.weight ... fc8.bias.
LAYOUT_KEYS = tuple(f"{layer}.{kind}" for layer in CONV_LAYERS + FC_LAYERS
                    for kind in ("weight", "bias"))


# --------------------------------------------------------------------------------------
# Per-array layout changes
# --------------------------------------------------------------------------------------

def _hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def _oihw_to_hwio(weight: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def _fc6_feature_map(in_features: int, channels: int) -> tuple[int, int, int]:
  """(H, W, C) of the square feature map that fc6 flattens."""
  side = math.isqrt(in_features // channels)
  if side * side * channels != in_features:
    raise UserError(f"fc6 has {in_features} inputs, which is not a square feature map "
                    f"of {channels} channels.")
  return side, side, channels


def _fc6_nhwc_rows_to_nchw(kernel: np.ndarray, channels: int) -> np.ndarray:
  """Reorder fc6 kernel rows (in, out) from (H, W, C) flatten order to (C, H, W)."""
  h, w, c = _fc6_feature_map(kernel.shape[0], channels)
  return kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(kernel.shape)


def _fc6_nchw_rows_to_nhwc(kernel: np.ndarray, channels: int) -> np.ndarray:
  h, w, c = _fc6_feature_map(kernel.shape[0], channels)
  return kernel.reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(kernel.shape)


def _last_conv_channels(conv5_bias_shape) -> int:
  return int(conv5_bias_shape[0])


# --------------------------------------------------------------------------------------
# Whole-tree conversion
# --------------------------------------------------------------------------------------

def _check_no_batch_norm(variant: str) -> None:
  if variant in models.BATCH_NORM_VARIANTS:
    raise UserError(f"There is no PyTorch layout for the {variant} variant: its batch "
                    "norm layers (and conv layers without biases) have no counterpart "
                    "in the conv/fc keys this module reads and writes.")


def to_torch_layout(params, variant: str) -> dict[str, np.ndarray]:
  """Flax params -> {'conv1.weight': (O, I/groups, kH, kW), ..., 'fc8.bias'}, float32.

  fc6.weight's inputs follow PyTorch's NCHW flatten of the (C, H, W) feature map.
  """
  models.model_preset(variant)  # UserError naming model.variant for an unknown one
  _check_no_batch_norm(variant)
  arrays = {}
  for layer in CONV_LAYERS:
    arrays[f"{layer}.weight"] = _hwio_to_oihw(np.asarray(params[layer]["kernel"], np.float32))
    arrays[f"{layer}.bias"] = np.asarray(params[layer]["bias"], np.float32)
  channels = _last_conv_channels(arrays["conv5.bias"].shape)
  for layer in FC_LAYERS:
    kernel = np.asarray(params[layer]["kernel"], np.float32)
    if layer == "fc6":
      kernel = _fc6_nhwc_rows_to_nchw(kernel, channels)
    arrays[f"{layer}.weight"] = np.ascontiguousarray(kernel.T)
    arrays[f"{layer}.bias"] = np.asarray(params[layer]["bias"], np.float32)
  return arrays


def expected_torch_shapes(variant: str, **model_kwargs) -> dict[str, tuple]:
  """Shapes of every layout key for a model config (computed abstractly, no FLOPs)."""
  model = models.create_model(variant=variant, **model_kwargs)
  _check_no_batch_norm(variant)
  images = jax.ShapeDtypeStruct(
      (1, model.image_size, model.image_size, model.in_channels), jnp.float32)
  abstract = jax.eval_shape(
      lambda x: model.init({"params": jax.random.key(0)}, x, train=False), images)["params"]
  shapes = {}
  for layer in CONV_LAYERS + FC_LAYERS:
    kernel = abstract[layer]["kernel"].shape
    order = (3, 2, 0, 1) if layer in CONV_LAYERS else (1, 0)
    shapes[f"{layer}.weight"] = tuple(kernel[i] for i in order)
    shapes[f"{layer}.bias"] = tuple(abstract[layer]["bias"].shape)
  return shapes


def _check_layout(arrays: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
                  variant: str, model_kwargs: Mapping) -> None:
  config_note = (f"variant {variant!r}" +
                 (f" with {dict(model_kwargs)}" if model_kwargs else " with default config"))
  missing = [key for key in expected if key not in arrays]
  if missing:
    raise UserError(f"Missing key {missing[0]!r} for {config_note} "
                    f"(all missing: {missing}).")
  unexpected = sorted(set(arrays) - set(expected))
  if unexpected:
    raise UserError(f"Unexpected key(s) {unexpected} for {config_note}; "
                    f"expected exactly {list(expected)}.")
  for key, shape in expected.items():
    found = tuple(np.shape(arrays[key]))
    if found != shape:
      hint = ""
      if key.startswith("fc8"):
        hint = " (pass num_classes=... to match the file)"
      elif key == "conv1.weight":
        hint = " (pass in_channels=... to match the file)"
      elif key == "fc6.weight" and variant == "d2l":
        hint = " (pass the image_size the weights were trained at)"
      raise UserError(f"Shape mismatch for {key!r} with {config_note}: expected "
                      f"{shape}, found {found}{hint}.")


def from_torch_layout(arrays: Mapping[str, np.ndarray], variant: str, **model_kwargs) -> dict:
  """Exact inverse of ``to_torch_layout``; returns the Flax params tree (float32).

  ``model_kwargs`` (config.model fields: num_classes, in_channels, image_size, ...)
  give the expected shapes; each key and shape is checked, with a one-sentence UserError.
  """
  expected = expected_torch_shapes(variant, **model_kwargs)
  _check_layout(arrays, expected, variant, model_kwargs)
  channels = _last_conv_channels(expected["conv5.bias"])
  params = {}
  for layer in CONV_LAYERS:
    weight = np.asarray(arrays[f"{layer}.weight"], np.float32)
    params[layer] = {"kernel": _oihw_to_hwio(weight),
                     "bias": np.asarray(arrays[f"{layer}.bias"], np.float32)}
  for layer in FC_LAYERS:
    kernel = np.ascontiguousarray(np.asarray(arrays[f"{layer}.weight"], np.float32).T)
    if layer == "fc6":
      kernel = _fc6_nchw_rows_to_nhwc(kernel, channels)
    params[layer] = {"kernel": kernel,
                     "bias": np.asarray(arrays[f"{layer}.bias"], np.float32)}
  return jax.tree_util.tree_map(jnp.asarray, params)


# --------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------

def _strip_wrapper_prefix(key: str) -> str:
  """`key` without any `module.` path segment: 'features.module.0.weight' -> 'features.0.weight'.

  nn.DataParallel and DistributedDataParallel put `module.` in front of every key
  ('module.features.0.weight'); pytorch/examples' ImageNet script (main.py, `--arch alexnet`)
  wraps only `model.features` in DataParallel, so its keys read 'features.module.0.weight'
  (issue 12). Both are the same weights; torchvision's own keys never have a `module` segment.
  """
  return ".".join(part for part in key.split(".") if part != "module")


def torchvision_keys_to_layout(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rename torchvision alexnet keys ('features.0.weight', ...) to layout keys.

  Works on any mapping of array-likes (no torch needed); raises UserError naming the
  first missing torchvision key.
  """
  renamed = {_strip_wrapper_prefix(k): v for k, v in state_dict.items()}
  missing = [k for k in TORCHVISION_KEYS if k not in renamed]
  if missing:
    raise UserError(f"Not a torchvision alexnet state_dict: missing key {missing[0]!r} "
                    f"(all missing: {missing}).")
  return {ours: np.asarray(renamed[tv], np.float32) for tv, ours in TORCHVISION_KEYS.items()}


def read_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state_dict file as float32 numpy arrays ({key: array}, `module.` segments dropped).

  torch is imported here only; every way the file can be wrong is one clear error.
  """
  path = os.path.expanduser(os.fspath(path))
  try:
    import torch
  except ImportError as err:
    raise UserError(f"Reading {path!r} needs PyTorch: `pip install torch` "
                    "(or `pip install alexnet_jax[torch]`).") from err
  if not os.path.isfile(path):
    raise UserError(f"No PyTorch state_dict file at {path!r}.")
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as err:  # pickle/zip errors from a corrupt or foreign file
    raise UserError(f"Could not read {path!r} as a PyTorch state_dict: {err}") from err
  if isinstance(loaded, Mapping) and "state_dict" in loaded:
    loaded = loaded["state_dict"]
  if not isinstance(loaded, Mapping):
    raise UserError(f"{path!r} holds a {type(loaded).__name__}, not a state_dict; "
                    "save it with torch.save(model.state_dict(), path).")
  return {_strip_wrapper_prefix(k): v.detach().float().cpu().numpy()
          for k, v in loaded.items() if hasattr(v, "detach")}


def load_torchvision(path: str | os.PathLike, **model_kwargs) -> dict:
  """Read a torchvision ``alexnet`` state_dict file into 'torchvision'-variant params.

  num_classes and in_channels are taken from the file unless given in ``model_kwargs``.
  """
  arrays = torchvision_keys_to_layout(read_state_dict_file(path))
  model_kwargs.setdefault("num_classes", int(arrays["fc8.bias"].shape[0]))
  model_kwargs.setdefault("in_channels", int(arrays["conv1.weight"].shape[1]))
  return from_torch_layout(arrays, "torchvision", **model_kwargs)


def read_layout_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str | None]:
  """(float32 arrays under LAYOUT_KEYS, 'torchvision' or None) from a state_dict file.

  torchvision's keys mean the torchvision variant; layout keys (conv1.weight ...) fit any
  variant without batch norm (None). Raises UserError for a file that is neither (naming a
  few of its keys), or that `read_state_dict_file` cannot read.
  """
  arrays = read_state_dict_file(path)
  if all(k in arrays for k in TORCHVISION_KEYS):
    return torchvision_keys_to_layout(arrays), "torchvision"
  if all(k in arrays for k in LAYOUT_KEYS):
    return {k: arrays[k] for k in LAYOUT_KEYS}, None
  raise UserError(f"{os.fspath(path)} is not an AlexNet state_dict: it has neither "
                  "torchvision's keys (features.0.weight, ...) nor conv1.weight ... fc8.bias "
                  f"(found {sorted(arrays)[:6]} ...).")


def params_from_file(path: str | os.PathLike,
                     model_config: Mapping) -> tuple[dict, dict]:
  """(numpy float32 params tree, the model config they fit) from a state_dict file.

  `model_config` gives the variant and the other model fields; num_classes and in_channels
  are read from the file (fc8's rows, conv1's input channels) and set in the returned config.
  Raises UserError when the file is not AlexNet weights, holds torchvision weights for
  another variant, or does not fit the variant (a shape mismatch).
  """
  arrays, file_variant = read_layout_file(path)
  variant = model_config["variant"]
  if file_variant is not None and variant != file_variant:
    raise UserError(f"{os.fspath(path)} holds {file_variant} AlexNet weights but model.variant="
                    f"{variant!r}; set --config.model.variant={file_variant}.")
  config = dict(model_config)
  config["num_classes"] = int(arrays["fc8.bias"].shape[0])
  config["in_channels"] = int(arrays["conv1.weight"].shape[1])  # conv1 is never grouped
  kwargs = {k: v for k, v in config.items() if k != "variant"}
  try:
    params = from_torch_layout(arrays, variant, **kwargs)
  except UserError as err:
    raise UserError(f"{os.fspath(path)} does not fit the {variant} variant: {err}") from err
  return jax.tree.map(np.asarray, params), config


def to_torchvision_state_dict(params: Mapping, variant: str) -> dict[str, np.ndarray]:
  """Flax params -> float32 arrays under torchvision.models.alexnet's state_dict keys (the
  torchvision variant) or the layout keys conv1.weight ... (other variants, which torchvision
  cannot build). Raises UserError for variants with batch norm (no PyTorch layout)."""
  arrays = to_torch_layout(params, variant)
  if variant != "torchvision":
    return arrays
  ours_to_tv = {ours: tv for tv, ours in TORCHVISION_KEYS.items()}
  return {ours_to_tv[k]: v for k, v in arrays.items()}


def save_state_dict(arrays: Mapping[str, np.ndarray], path: str | os.PathLike) -> None:
  """Writes `arrays` as a PyTorch state_dict file (torch.save of CPU tensors).

  Raises UserError when PyTorch is not installed.
  """
  try:
    import torch
  except ImportError as err:
    raise UserError(f"Writing {os.fspath(path)!r} needs PyTorch: `pip install torch` "
                    "(or `pip install alexnet_jax[torch]`).") from err
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
             os.fspath(path))
