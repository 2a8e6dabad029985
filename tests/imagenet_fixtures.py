"""Tiny ImageNet-shaped data made on the fly: image bytes, corrupt files, folder trees, tars.

Nothing here needs the real ImageNet or TensorFlow.
"""

from __future__ import annotations

import importlib.util
import io
import pathlib
import tarfile

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]

# Four classes spread over the standard order (labels 0, 1, 207 and 999): a partial copy whose
# listing order differs from the class order only through the missing classes.
WNIDS = {"n01440764": 0, "n01443537": 1, "n02099601": 207, "n15075141": 999}
# The first validation images and their standard labels (from tfds's validation_labels.txt):
# ILSVRC2012_val_00000001 is n01751748 (label 65), 00000002 is n09193705 (970),
# 00000003 is n02105855 (230).
VALIDATION_LABELS = {1: 65, 2: 970, 3: 230}


def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
  """An RGB image of smooth random colour blobs (compresses like a photo, not like noise)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
  return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


def encode(image: Image.Image, fmt: str = "JPEG", quality: int = 90) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def jpeg_bytes(width: int, height: int, mode: str = "RGB", seed: int = 0) -> bytes:
  return encode(smooth_image(width, height, seed).convert(mode))


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
  """A PNG (to be saved under a .JPEG name, like one file of the real train set)."""
  return encode(smooth_image(width, height, seed), fmt="PNG")


def truncated_jpeg(width: int = 64, height: int = 48) -> bytes:
  data = jpeg_bytes(width, height, seed=7)
  return data[:len(data) // 2]


# Good images of several sizes and modes, keyed by file stem.
GOOD_IMAGES = {
    "rgb_wide": lambda: jpeg_bytes(40, 30, "RGB", seed=1),
    "rgb_tall": lambda: jpeg_bytes(24, 36, "RGB", seed=2),
    "grey": lambda: jpeg_bytes(32, 32, "L", seed=3),
    "cmyk": lambda: jpeg_bytes(36, 28, "CMYK", seed=4),
    "png_inside": lambda: png_bytes(30, 40, seed=5),
}
CORRUPT_IMAGES = {
    "truncated": truncated_jpeg,
    "empty": lambda: b"",
    "not_an_image": lambda: b"this is not an image\n" * 4,
}


def write(path: pathlib.Path, data: bytes) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return path


def make_folder_dataset(root: pathlib.Path, *, val_layout: str = "flat",
                        per_class: int = 3, num_val: int = 3,
                        corrupt_train: dict[str, str] | None = None) -> pathlib.Path:
  """root/train/<wnid>/<wnid>_<i>.JPEG for the four WNIDS, and root/val/ in `val_layout`.

  `corrupt_train` maps a train file name to a CORRUPT_IMAGES kind written in its place.
  Returns root.
  """
  corrupt_train = corrupt_train or {}
  makers = list(GOOD_IMAGES.values())
  for c, wnid in enumerate(WNIDS):
    for i in range(per_class):
      name = f"{wnid}_{i}.JPEG"
      data = (CORRUPT_IMAGES[corrupt_train[name]]() if name in corrupt_train
              else makers[(c + i) % len(makers)]())
      write(root / "train" / wnid / name, data)
  for number in range(1, num_val + 1):
    name = f"ILSVRC2012_val_{number:08d}.JPEG"
    data = jpeg_bytes(32 + number, 30, seed=100 + number)
    if val_layout == "flat":
      write(root / "val" / name, data)
    else:
      wnid = list(WNIDS)[number % len(WNIDS)]
      write(root / "val" / wnid / name, data)
  return root


def make_imagenet_tars(tars_dir: pathlib.Path, per_class: int = 2,
                       num_val: int = 3) -> pathlib.Path:
  """ILSVRC2012_img_train.tar (a tar of <wnid>.tar) and ILSVRC2012_img_val.tar, tiny."""
  tars_dir.mkdir(parents=True, exist_ok=True)
  with tarfile.open(tars_dir / "ILSVRC2012_img_train.tar", "w") as outer:
    for c, wnid in enumerate(WNIDS):
      inner_buffer = io.BytesIO()
      with tarfile.open(fileobj=inner_buffer, mode="w") as inner:
        for i in range(per_class):
          _add_bytes(inner, f"{wnid}_{i}.JPEG", jpeg_bytes(48 + 8 * i, 40, seed=10 * c + i))
      _add_bytes(outer, f"{wnid}.tar", inner_buffer.getvalue())
  with tarfile.open(tars_dir / "ILSVRC2012_img_val.tar", "w") as val:
    for number in range(num_val, 0, -1):  # tar order differs from name order
      _add_bytes(val, f"ILSVRC2012_val_{number:08d}.JPEG", jpeg_bytes(50, 44, seed=number))
  return tars_dir


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def imagenet_config(data_dir: str, *, image_size: int = 16, resize_size: int = 20,
                    batch_size: int = 4, source: str | None = None):
  """configs/imagenet.py's get_config() with the overrides a tiny dataset needs."""
  spec = importlib.util.spec_from_file_location("imagenet_config", REPO / "configs" / "imagenet.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.data.data_dir = str(data_dir)
  config.data.resize_size = resize_size
  config.data.num_workers = 0
  config.model.image_size = image_size
  config.batch_size = batch_size
  config.eval_batch_size = batch_size
  if source is not None:
    config.data.source = source
  return config
