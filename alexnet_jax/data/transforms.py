"""ImageNet image transforms: a record's encoded image bytes -> uint8 crops, with numpy and PIL.

Every transform is a picklable callable `transform(record, u) -> {'image', 'label'}` that Grain
workers run. A record is a mapping with `image` (the encoded file: JPEG, or whatever PIL reads),
`label` (class index) and, for error messages, `file_name`. A train transform's class says how
many uniforms in [0, 1) it draws (`uniforms_per_example`); the loader passes them as `u`
(data/pipeline.py), eval transforms get None. Only the crop is chosen here: the mirror and
the PCA colour noise are done in the train step (data/augment.py).

Each transform chooses its crop in the original image's pixels (data/crops.py) and has only
that region decoded, at the size it needs (data/decode.py: draft-mode JPEG decoding,
simplejpeg, the large-image rule). Stored images that are already at the target scale (see
`python -m alexnet_jax.tools.prepare --resize_shorter=256`) are cropped without resampling.
A record that does not decode raises `pipeline.SkippableRecordError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from alexnet_jax.data import crops, decode, pipeline
from alexnet_jax.errors import UserError


def _region(record, choose: decode.ChooseBox, side: int, use_draft: bool,
            decoder: str) -> np.ndarray:
  """The record's image decoded at the `side` x `side` region `choose(width, height)` picks
  (possibly a read-only view)."""
  return decode.decode_region_array(record["image"], decode.record_key(record), choose,
                                    (side, side), use_draft, decoder)


def _train_example(array: np.ndarray, record) -> dict[str, Any]:
  return {"image": array, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class PaperTrainTransform:
  """Shorter side to `resize_size`, central square, random `image_size` crop.

  The mirror and the PCA colour noise follow in the train step (data/augment.py). Returns
  {'image': (image_size, image_size, 3) uint8 (possibly a read-only view), 'label': int32}.
  """
  image_size: int
  resize_size: int  # config.data.resize_size
  use_draft: bool = True
  decoder: str = "pillow"  # resolved: pillow | simplejpeg
  uniforms_per_example: ClassVar[int] = 2

  def __call__(self, record, u: np.ndarray):
    choose = lambda w, h: crops.paper_crop_box(w, h, self.resize_size, self.image_size, u)
    return _train_example(_region(record, choose, self.image_size, self.use_draft,
                                  self.decoder), record)


@dataclasses.dataclass(frozen=True)
class InceptionTrainTransform:
  """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3); mirror and PCA noise
  follow in the train step."""
  image_size: int
  use_draft: bool = True
  decoder: str = "pillow"
  uniforms_per_example: ClassVar[int] = 4 * crops.INCEPTION_TRIES

  def __call__(self, record, u: np.ndarray):
    choose = lambda w, h: crops.inception_crop_box(w, h, u)
    return _train_example(_region(record, choose, self.image_size, self.use_draft,
                                  self.decoder), record)


@dataclasses.dataclass(frozen=True)
class CentreCropTransform:
  """Evaluation: shorter side to `resize_size`, central `image_size` crop."""
  image_size: int
  resize_size: int  # config.data.resize_size
  use_draft: bool = True
  decoder: str = "pillow"

  def __call__(self, record, u=None):
    del u  # deterministic
    choose = lambda w, h: crops.centre_crop_box(w, h, self.resize_size, self.image_size)
    array = _region(record, choose, self.image_size, self.use_draft, self.decoder)
    return {"image": np.ascontiguousarray(array), "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class TenCropTransform:
  """Evaluation on 10 views: the central `resize_size` square, its 4 corner crops and centre
  crop of `image_size`, and their mirrors; image shape (10, S, S, 3)."""
  image_size: int
  resize_size: int  # config.data.resize_size
  use_draft: bool = True
  decoder: str = "pillow"

  def __call__(self, record, u=None):
    del u  # deterministic
    choose = lambda w, h: crops.centre_crop_box(w, h, self.resize_size, self.resize_size)
    square = _region(record, choose, self.resize_size, self.use_draft, self.decoder)
    return {"image": crops.ten_crops(square, self.image_size),
            "label": np.int32(record["label"])}


TRAIN_TRANSFORMS = ("paper", "inception")


def make_train_transform(name: str, *, image_size: int, resize_size: int, use_draft: bool,
                         decoder: str = "pillow") -> pipeline.Transform:
  """The train transform `name` (paper | inception); decoder: a `data.jpeg_decoder` value.

  Raises UserError for an unknown name or decoder."""
  decoder = decode.resolve_decoder(decoder)
  if name == "paper":
    return PaperTrainTransform(image_size, resize_size, use_draft, decoder)
  if name == "inception":
    return InceptionTrainTransform(image_size, use_draft, decoder)
  raise UserError(f"data.train_transform={name!r} is not one of "
                   f"{', '.join(map(repr, TRAIN_TRANSFORMS))}.")


def make_eval_transform(*, image_size: int, resize_size: int, ten_crop: bool,
                        use_draft: bool, decoder: str = "pillow") -> pipeline.Transform:
  """Centre crop, or the 10 views when `ten_crop`; decoder: a `data.jpeg_decoder` value."""
  decoder = decode.resolve_decoder(decoder)
  if ten_crop:
    return TenCropTransform(image_size, resize_size, use_draft, decoder)
  return CentreCropTransform(image_size, resize_size, use_draft, decoder)
