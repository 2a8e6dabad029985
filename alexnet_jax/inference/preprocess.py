"""One image file prepared exactly as a source's evaluation pipeline prepares its images.

A checkpoint records how its training images were made (`meta["preprocessing"]`, written by
checkpoint.layout.meta: `source`, `mean`, `std`, `image_size`, `resize_size`);
model.LoadedModel hands that record to `load_image` and gets the uint8 image the model's eval
transform would have produced from the same file. Normalization ((x - mean) / std) and any
resize to `image_size` happen on the device, as in training (steps.device_preprocess).

- ImageNet sources (data.IMAGENET_SOURCES) and torchvision weights: transforms.CentreCropTransform
  (shorter side to `resize_size`, central `image_size` crop, RGB);
- fashion_mnist: grey at Fashion-MNIST's 28x28, the grey channel repeated for 3-channel models
  (fashion_mnist.to_rgb_if_needed), as the d2l recipe feeds it;
- synthetic: the whole image resized to `image_size` (synthetic images are made at that size).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from PIL import Image, UnidentifiedImageError

from alexnet_jax import config_base
from alexnet_jax.data import IMAGENET_SOURCES, decode, fashion_mnist, pipeline, transforms
from alexnet_jax.errors import UserError

# Fashion-MNIST images are 28x28 (Xiao, Rasul & Vollgraf 2017; the IDX files' header).
# torchvision's AlexNet weights (AlexNet_Weights.IMAGENET1K_V1.transforms: ImageClassification
# with resize_size=256, crop_size=224); mean/std are config_base.TORCHVISION_*_RGB.
TORCHVISION_RESIZE, TORCHVISION_CROP = 256, 224
TORCHVISION_SOURCE = "torchvision"


def torchvision_preprocessing(image_size: int = TORCHVISION_CROP) -> dict[str, Any]:
  """The preprocessing record of torchvision's AlexNet weights at crop `image_size` pixels:
  resize to `image_size * 256 / 224` (rounded), central crop, torchvision's mean/std (0-255
  units)."""
  return {"source": TORCHVISION_SOURCE, "mean": list(config_base.TORCHVISION_MEAN_RGB),
          "std": list(config_base.TORCHVISION_STD_RGB), "image_size": int(image_size),
          "resize_size": round(image_size * TORCHVISION_RESIZE / TORCHVISION_CROP)}


def is_imagenet(preprocessing: Mapping[str, Any]) -> bool:
  """Whether the record describes ImageNet images (an ImageNet source or torchvision's)."""
  return preprocessing["source"] in IMAGENET_SOURCES + (TORCHVISION_SOURCE,)


def _read(path: str | os.PathLike) -> bytes:
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise UserError(f"cannot read image {decode.printable_name(path)}: "
                    f"{e.strerror or e}.") from e


def _to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 (H, W, 1 or 3) -> (H, W, channels): grey repeated, or RGB to grey (ITU-R 601-2
  luma, as PIL's convert('L'))."""
  if image.shape[-1] == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=-1)
  return np.asarray(Image.fromarray(image).convert("L"), np.uint8)[..., None]


def load_image(path: str | os.PathLike, preprocessing: Mapping[str, Any],
               channels: int) -> np.ndarray:
  """The image file at `path` as the uint8 (H, W, channels) array that the eval pipeline of
  `preprocessing["source"]` makes; H = W = `image_size` (28 for fashion_mnist).

  `preprocessing`: a checkpoint's `meta["preprocessing"]` or `torchvision_preprocessing()`.
  `channels`: the model's `in_channels` (1 or 3).
  Raises UserError for a file that cannot be read or decoded (naming it), one larger than
  decode.MAX_IMAGE_PIXELS (the large-image rule of training), and for an unknown source.
  A path that is not valid UTF-8 is read as it is and named with backslash escapes.
  """
  source = preprocessing["source"]
  key = decode.printable_name(path)
  data = _read(path)
  try:
    if is_imagenet(preprocessing):
      transform = transforms.CentreCropTransform(int(preprocessing["image_size"]),
                                                 int(preprocessing["resize_size"]))
      image = transform({"image": data, "label": 0, "file_name": key}, None)["image"]
    elif source == "fashion_mnist":
      grey = decode.decode_rgb(data, key).convert("L").resize(
          (fashion_mnist.IMAGE_SIZE, fashion_mnist.IMAGE_SIZE), decode.RESAMPLE)
      record = {"image": np.asarray(grey, np.uint8)[..., None], "label": 0}
      image = fashion_mnist.to_rgb_if_needed(channels)(record, None)["image"]
    elif source == "synthetic":
      size = int(preprocessing["image_size"])
      image = np.asarray(decode.decode_rgb(data, key).resize((size, size), decode.RESAMPLE))
    else:
      raise UserError(f"The checkpoint's preprocessing source {source!r} is not one this "
                      "version reads images for.")
  except pipeline.SkippableRecordError as e:
    if isinstance(e.__cause__, UnidentifiedImageError):
      raise UserError(f"cannot decode image {key}: not a JPEG or PNG file.") from e
    raise UserError(str(e)) from e
  image = np.asarray(image, np.uint8)
  if image.ndim == 2:
    image = image[..., None]
  return _to_channels(image, channels)
