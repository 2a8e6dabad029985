"""Fashion-MNIST from its four IDX files, as the d2l textbook trains AlexNet on it.

Images stay 28x28 uint8 through the host pipeline; the trainer upsamples them to
`model.image_size` on the device (d2l resizes to 224 on the host), which keeps the host work
and the host-to-device copy 64x smaller.
"""

from __future__ import annotations

import dataclasses
import gzip
import pathlib

import numpy as np

from alexnet_jax.data import DataInfo, Split
from alexnet_jax.errors import MissingFileError, UserError

IMAGE_SIZE = 28  # pixels, square, one grey channel
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# The repository's own copy (data/fashion_mnist/, MIT): present in a source checkout.
REPO_COPY = pathlib.Path(__file__).resolve().parents[2] / "data" / "fashion_mnist"


def read_idx(path: pathlib.Path, expected_magic: int) -> np.ndarray:
  """Reads one gzipped IDX file (big-endian header, uint8 payload)."""
  with gzip.open(path, "rb") as f:
    data = f.read()
  magic = int.from_bytes(data[:4], "big")
  if magic != expected_magic:
    raise UserError(f"{path} is not an IDX file of the expected kind "
                     f"(magic {magic:#010x}, expected {expected_magic:#010x}).")
  ndim = magic & 0xFF
  dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
  payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if payload.size != int(np.prod(dims)):
    raise UserError(f"{path} is truncated: header says {dims}, found {payload.size} bytes.")
  return payload.reshape(dims)


def load_split(data_dir: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 (N, 28, 28, 1), labels uint8 (N,)) of 'train' (60,000) or 'test' (10,000)
  from the gzipped IDX files in data_dir. Raises MissingFileError naming a missing file,
  UserError for a truncated or foreign file."""
  image_file, label_file = (data_dir / name for name in FILES[split])
  for path in (image_file, label_file):
    if not path.exists():
      raise MissingFileError(
          f"Fashion-MNIST file {path} not found. Set --config.data.data_dir to a folder holding "
          f"{', '.join(FILES['train'] + FILES['test'])} (a source checkout has them in "
          "data/fashion_mnist/).")
  images = read_idx(image_file, 0x00000803)[..., None]  # NHWC, one channel
  labels = read_idx(label_file, 0x00000801).astype(np.int32)
  if len(images) != len(labels):
    raise UserError(f"{image_file} has {len(images)} images but {label_file} has "
                     f"{len(labels)} labels.")
  return images, labels


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """Random access to in-memory images (N, H, W, C) uint8 and labels (N,): {'image', 'label'}."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {"image": self.images[index], "label": self.labels[index]}


@dataclasses.dataclass(frozen=True)
class ToChannels:
  """The transform: the record's image, its channels repeated 3 times when `channels` is 3
  (e.g. for torchvision weights). Its batch form for an ArraySource is one gather."""
  channels: int

  def __call__(self, record, u):
    del u
    image = record["image"]
    if self.channels == 3:
      image = np.repeat(image, 3, axis=-1)
    return {"image": image, "label": record["label"]}

  def batch_loader(self, source):
    if not isinstance(source, ArraySource):
      return None

    def load(indices: np.ndarray, uniforms, empty) -> None:
      del uniforms
      images = source.images
      if self.channels == 3:
        gathered = np.take(images, indices, axis=0)
        np.copyto(empty("image", gathered.shape[1:-1] + (3 * gathered.shape[-1],),
                        images.dtype), np.repeat(gathered, 3, axis=-1))
      else:
        np.take(images, indices, axis=0, out=empty("image", images.shape[1:], images.dtype))
      empty("label", (), source.labels.dtype)[...] = source.labels[indices]
    return load


def to_rgb_if_needed(channels: int) -> ToChannels:
  """Transform repeating the grey channel when a model wants 3 (e.g. torchvision weights)."""
  return ToChannels(channels)


def build(config, split: str, *, ten_crop: bool = False) -> Split:
  """Fashion-MNIST's 'train' (60,000) or 'eval' (the 10,000 test images) split: uint8 28x28,
  1 channel, or the grey channel repeated to 3 when model.in_channels=3."""
  del ten_crop  # whole images: no crops
  data_dir = pathlib.Path(config.data.data_dir) if config.data.data_dir else REPO_COPY
  channels = config.model.in_channels
  if channels not in (1, 3):
    raise UserError(f"model.in_channels={channels}: Fashion-MNIST feeds 1 (grey) or 3 "
                    "(grey repeated) channels.")
  source = ArraySource(*load_split(data_dir, "train" if split == "train" else "test"))
  info = DataInfo(num_classes=10, channels=channels, class_names=CLASS_NAMES)
  return Split(source, to_rgb_if_needed(channels), info)
