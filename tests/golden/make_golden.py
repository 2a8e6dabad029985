"""Golden cases for the logits parity tests, and the script that regenerates logits.npz.

Parameters are NOT stored: they come from ``alexnet_jax.models.init`` at GOLDEN_SEED, so
the file stays small (about 1 MB). For each case logits.npz holds uint8 images, the float32
logits that the independent PyTorch reference (benchmarks/torch_reference.py) computes
from ``convert.to_torch_layout(params)``, and a checksum per parameter array, so that a
failure can tell "init changed" (checksums differ) from "forward pass changed".

    python tests/golden/make_golden.py        # needs torch; rewrites logits.npz

The tests import CASES, case_params, case_images and normalize from here, so that both
test files share one set of parameters (and one compile per config) in a pytest run.
"""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from alexnet_jax import models  # noqa: E402
from alexnet_jax.transfer import convert  # noqa: E402

GOLDEN_FILE = pathlib.Path(__file__).with_name("logits.npz")
GOLDEN_SEED = 2012

# name -> (variant, config.model overrides, batch). Xavier init keeps activations O(1)
# through the net, so the logits depend clearly on the input; the strong-LRN case
# (k=1, alpha=5) makes the LRN's nonlinearity and its tower boundary show in the logits.
# torchvision uses its default config (PyTorch init).
CASES = {
    "paper_224": ("paper", dict(image_size=224, init="xavier"), 2),
    "paper_227_strong_lrn": ("paper", dict(image_size=227, init="xavier", lrn_k=1.0,
                                           lrn_alpha=5.0), 2),
    "torchvision_224": ("torchvision", dict(), 2),
    "d2l_224": ("d2l", dict(), 2),
}


def normalize(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 of mean ~0 and std ~1.15, bit-identical everywhere (numpy)."""
    return (images_uint8.astype(np.float32) / np.float32(255.0) - np.float32(0.5)) \
        / np.float32(0.25)


def case_config(name: str) -> dict:
    """Full config.model dict of a case; float32, as the golden arrays were computed (the
    default dtype 'auto' is float32 on the CPU too, but says nothing of how they were made)."""
    variant, overrides, _ = CASES[name]
    return {**models.model_preset(variant), "dtype": "float32", **overrides}


def case_images(name: str) -> np.ndarray:
    cfg = case_config(name)
    batch = CASES[name][2]
    rng = np.random.default_rng(GOLDEN_SEED + list(CASES).index(name))
    shape = (batch, cfg["image_size"], cfg["image_size"], cfg["in_channels"])
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@functools.lru_cache(maxsize=None)
def case_params(name: str):
    variant, overrides, _ = CASES[name]
    return models.init(variant, GOLDEN_SEED, **overrides)


def param_checksums(params, variant: str) -> np.ndarray:
    """(sum, sum of squares) of every array, in the order of convert's layout keys."""
    arrays = convert.to_torch_layout(params, variant)
    return np.array([[np.sum(a, dtype=np.float64), np.sum(np.square(a, dtype=np.float64))]
                     for a in arrays.values()])


def torch_reference_kwargs(cfg: dict) -> dict:
    """Constructor kwargs of the PyTorch reference model for a config.model dict."""
    kwargs = dict(num_classes=cfg["num_classes"], in_channels=cfg["in_channels"],
                  dropout_rate=cfg["dropout_rate"])
    if cfg["variant"] != "torchvision":
        kwargs["image_size"] = cfg["image_size"]
    if cfg["variant"] == "paper":
        kwargs.update({k: cfg[k] for k in ("lrn_k", "lrn_size", "lrn_alpha", "lrn_beta",
                                           "lrn_alpha_divided_by_size")})
    return kwargs


def torch_logits(cfg: dict, params, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits of the PyTorch reference loaded with ``params`` (eval mode, float32)."""
    import torch
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from torch_reference import build_torch_model

    variant = cfg["variant"]
    model = build_torch_model(variant, **torch_reference_kwargs(cfg)).eval()
    state = convert.to_torch_layout(params, variant)
    if variant == "torchvision":
        layout_to_torchvision = {v: k for k, v in convert.TORCHVISION_KEYS.items()}
        state = {layout_to_torchvision[k]: v for k, v in state.items()}
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    nchw = torch.from_numpy(np.array(images_nhwc, np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(nchw.contiguous()).numpy()


def main() -> None:
    out = {"seed": np.array(GOLDEN_SEED)}
    for name in CASES:
        cfg, params, images = case_config(name), case_params(name), case_images(name)
        logits = torch_logits(cfg, params, normalize(images))
        out[f"{name}/images"] = images
        out[f"{name}/logits"] = logits
        out[f"{name}/param_checksums"] = param_checksums(params, cfg["variant"])
        out[f"{name}/config"] = np.array(json.dumps(cfg, sort_keys=True))
        print(f"{name}: images {images.shape}, logits std {logits.std():.4g}")
    np.savez_compressed(GOLDEN_FILE, **out)
    print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
