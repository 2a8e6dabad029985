"""Issue 19's inputs, as a user meets them: file names that are not UTF-8, very large images
(the one large-image rule of data/decode.py), and skip lines that name the file.

The command-line tests share one folder tree and one training run (module fixtures), so the
whole file runs main, prepare and predict once each.
"""

from __future__ import annotations

import io
import json
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image, JpegImagePlugin
import pytest
import simplejpeg

from alexnet_jax import inference
from alexnet_jax.data import decode, imagenet, pipeline, records, transforms
from alexnet_jax.errors import UserError

try:  # tests/ on sys.path (pytest's default for a folder without __init__.py)
  import imagenet_fixtures as fx
  from helpers import read_metrics, run_main
except ImportError:  # tests/ as a package
  from tests import imagenet_fixtures as fx
  from tests.helpers import read_metrics, run_main

# Names whose bytes are not valid UTF-8 (Latin-1 e-acute, a lone 0xff), as an extracted tar
# from an old Windows or Latin-1 machine can hold them; how they are shown in messages.
CAFE, CAFE_SHOWN = b"caf\xe9.JPEG", "caf\\xe9.JPEG"
EMPTY, EMPTY_SHOWN = b"vide\xff.JPEG", "vide\\xff.JPEG"
VAL_CAFE = b"val_caf\xe9.JPEG"
# Over the rule: 20000 x 14000 = 280 Mpx > 2**28 (268 Mpx).
HUGE_SIZE = (20000, 14000)
# Under it, but over Pillow's own limit (179 Mpx refused) that made the decoders disagree.
BIG_SIZE = (16000, 11200)


def with_header_size(data: bytes, width: int, height: int) -> bytes:
  """A baseline JPEG whose frame header (SOF0) claims width x height: the rule is checked from
  the header, before any pixel is decoded, so the rest need not match."""
  at = data.index(b"\xff\xc0")
  return (data[:at + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big")
          + data[at + 9:])


def huge_jpeg() -> bytes:
  return with_header_size(fx.jpeg_bytes(40, 30, seed=11), *HUGE_SIZE)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
  """A real 16000x11200 JPEG (greyscale, flat with a few rectangles): ~2 MB, made in ~0.5 s
  from a numpy array (an RGB PIL image that size takes ~2 s just to allocate)."""
  pixels = np.full(BIG_SIZE[::-1], 128, np.uint8)
  for i in range(6):
    top, left = 800 + 1700 * i, 1000 + 2400 * i
    pixels[top:top + 1300, left:left + 1800] = 40 * i
  pixels[5000:5600] = np.linspace(0, 255, BIG_SIZE[0], dtype=np.uint8)  # a ramp across
  buffer = io.BytesIO()
  Image.frombuffer("L", BIG_SIZE, pixels, "raw", "L", 0, 1).save(buffer, "JPEG", quality=75)
  return buffer.getvalue()


def record(data: bytes, name: str = "n01440764/photo.JPEG") -> dict:
  return {"image": data, "label": 0, "file_name": name}


def write(path: pathlib.Path | bytes, data: bytes) -> None:
  """Writes a file whose name may be bytes (not UTF-8)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def child(folder: pathlib.Path, name: bytes) -> bytes:
  return os.path.join(os.fsencode(folder), name)


# --------------------------------------------------------------------------------------------
# The large-image rule, both decoders


def test_the_rule_is_a_pixel_count():
  decode.check_image_size(16384, 16384, "x")  # exactly 2**28
  with pytest.raises(decode.ImageTooLargeError, match="x is 16385x16384 pixels"):
    decode.check_image_size(16385, 16384, "x")


def test_both_decoders_take_a_16000x11200_jpeg_at_reduced_scale(big_jpeg, monkeypatch):
  scales, shapes = [], []
  original_draft = JpegImagePlugin.JpegImageFile.draft
  original_decode = simplejpeg.decode_jpeg

  def draft(self, mode, size):
    result = original_draft(self, mode, size)
    scales.append(self.decoderconfig[0])
    return result

  def counting_decode(*args, **kwargs):
    array = original_decode(*args, **kwargs)
    shapes.append(array.shape)
    return array

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)
  monkeypatch.setattr(simplejpeg, "decode_jpeg", counting_decode)
  u = np.array([0.3, 0.8])
  out = {}
  for decoder in ("pillow", "simplejpeg"):
    for transform in (transforms.CentreCropTransform(224, 256, decoder=decoder),
                      transforms.PaperTrainTransform(224, 256, decoder=decoder)):
      out[decoder, type(transform).__name__] = transform(record(big_jpeg), u)["image"]
  assert scales == [8, 8]  # Pillow's two decodes, at 1/8: 2000 x 1400 pixels
  assert shapes == [(1400, 2000, 3)] * 2  # simplejpeg's two, the same
  for name in ("CentreCropTransform", "PaperTrainTransform"):
    pillow, fast = out["pillow", name], out["simplejpeg", name]
    assert pillow.shape == fast.shape == (224, 224, 3)
    assert np.abs(pillow.astype(int) - fast.astype(int)).max() <= 1
    assert pillow.std() > 10  # the crop holds the picture's edges, not just flat grey


@pytest.mark.parametrize("decoder", ["pillow", "simplejpeg"])
def test_over_the_rule_is_a_counted_skip_naming_the_file(decoder, caplog):
  good = fx.jpeg_bytes(40, 30)
  source = [record(good, "n01440764/a.JPEG"), record(huge_jpeg(), "n01440764/huge.JPEG"),
            record(good, "n01440764/b.JPEG")]
  transform = transforms.CentreCropTransform(16, 20, decoder=decoder)
  batch = pipeline.eval_dataset(source, transform, global_batch_size=3)[0]
  assert int(batch[pipeline.SKIPPED_KEY]) == 1 and batch["mask"].tolist() == [True, False, True]
  with caplog.at_level(logging.WARNING):
    pipeline.log_skipped(batch[pipeline.SKIPPED_NOTES_KEY])
  assert caplog.messages == [
      "skipping record 1: image n01440764/huge.JPEG is 20000x14000 pixels (280 megapixels), "
      "more than the 268 megapixels alexnet_jax decodes (its large-image rule, "
      "docs/data.md); shrink the file if it is meant to be used."]


def test_prepare_resizes_a_big_jpeg_and_skips_a_huge_one(big_jpeg):
  from alexnet_jax.data.prepare import storage
  for decoder in ("pillow", "simplejpeg"):
    options = storage.StoreOptions(resize_shorter=256, decoder=decoder)
    stored = Image.open(io.BytesIO(storage.stored_image(big_jpeg, "big.JPEG", options)))
    assert stored.size == (365, 256)
    raw = storage.StoreOptions(format="raw", decoder=decoder)
    assert len(storage.stored_image(big_jpeg, "big.JPEG", raw)) == 256 * 256 * 3
    for options in (options, raw):
      with pytest.raises(decode.ImageTooLargeError, match="huge.JPEG is 20000x14000"):
        storage.stored_image(huge_jpeg(), "huge.JPEG", options)


# --------------------------------------------------------------------------------------------
# Skip lines name the file


@pytest.mark.parametrize("decoder", ["pillow", "simplejpeg"])
def test_every_skip_line_names_the_file(tmp_path, decoder, caplog):
  root = tmp_path / "imagenet"
  bad = {"truncated.JPEG": fx.truncated_jpeg(), "empty.JPEG": b"",
         "text.JPEG": b"this is not an image\n", "huge.JPEG": huge_jpeg(), "gone.JPEG": b""}
  for name, data in bad.items():
    write(root / "val" / "n01440764" / name, data)
  write(child(root / "val" / "n01440764", EMPTY), b"")
  write(root / "val" / "n01440764" / "z_good.JPEG", fx.jpeg_bytes(40, 30))
  source = imagenet.folder_split(str(root), "val")
  os.remove(root / "val" / "n01440764" / "gone.JPEG")  # deleted after the listing
  transform = transforms.CentreCropTransform(16, 20, decoder=decoder)
  batch = pipeline.eval_dataset(source, transform, global_batch_size=len(source))[0]
  assert int(batch[pipeline.SKIPPED_KEY]) == 6
  with caplog.at_level(logging.WARNING):
    pipeline.log_skipped(batch[pipeline.SKIPPED_NOTES_KEY])
  lines = caplog.messages
  expected = ["empty.JPEG: the file is empty", "gone.JPEG: No such file or directory",
              "huge.JPEG is 20000x14000 pixels",
              "text.JPEG: not a JPEG, PNG or other image format Pillow reads",
              "truncated.JPEG: image file is truncated", f"{EMPTY_SHOWN}: the file is empty"]
  assert len(lines) == len(expected)
  for line, part in zip(lines, expected):
    assert line.startswith("skipping record ") and part in line, line
    assert "object at 0x" not in line


# --------------------------------------------------------------------------------------------
# From the command line: main, prepare and predict on a tree with odd names and sizes


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory) -> pathlib.Path:
  """The fixture tree (12 train, 3 val images in class folders) plus, in train/, a good image
  and an empty one under names that are not UTF-8 and an image over the large-image rule;
  in val/, a good image under such a name and one over the rule: 15 train, 5 val files."""
  root = fx.make_folder_dataset(tmp_path_factory.mktemp("odd") / "imagenet",
                                val_layout="class_folders")
  write(child(root / "train" / "n01440764", CAFE), fx.jpeg_bytes(40, 30, seed=21))
  write(child(root / "train" / "n01443537", EMPTY), b"")
  write(root / "train" / "n02099601" / "huge.JPEG", huge_jpeg())
  write(child(root / "val" / "n01443537", VAL_CAFE), fx.jpeg_bytes(36, 30, seed=22))
  write(root / "val" / "n15075141" / "huge_val.JPEG", huge_jpeg())
  return root


# torchvision's network at 64x64 (seconds per run); batch 5: 3 steps are one epoch of the 15.
TINY = ("--config.model.variant=torchvision", "--config.model.init=torch",
        "--config.model.image_size=64", "--config.data.resize_size=72",
        "--config.data.num_workers=0", "--config.batch_size=5", "--config.eval_batch_size=5",
        "--config.log_every_steps=1", "--config.num_train_steps=3",
        "--config.eval_every_steps=3")


@pytest.fixture(scope="module")
def odd_run(odd_tree, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("odd_run") / "run"
  result = run_main("imagenet.py", workdir, *TINY, f"--config.data.data_dir={odd_tree}")
  return workdir, result


def test_main_trains_and_evaluates_on_odd_names_and_sizes(odd_run):
  workdir, result = odd_run
  metrics = read_metrics(workdir)
  assert [r["step"] for r in metrics if "train/loss" in r] == [1, 2, 3]
  assert [r["data/skipped"] for r in metrics if "data/skipped" in r][-1] == 2
  assert [r["eval/num_examples"] for r in metrics if "eval/num_examples" in r] == [4]
  skips = [line for line in result.stderr.splitlines() if "skipping record" in line]
  assert len(skips) == 3, result.stderr[-3000:]
  assert sum(f"n01443537/{EMPTY_SHOWN}: the file is empty" in line for line in skips) == 1
  assert sum("n02099601/huge.JPEG is 20000x14000 pixels" in line for line in skips) == 1
  assert sum("n15075141/huge_val.JPEG is 20000x14000 pixels" in line for line in skips) == 1
  assert "Traceback" not in result.stderr and "\\udc" not in result.stderr
  # The console's step line carries the total once it is non-zero.
  step3 = [line for line in result.stderr.splitlines() if "step 3/3" in line]
  assert len(step3) == 1 and "| 2 files skipped" in step3[0], step3


def test_prepare_folder_dir_keeps_the_names_bytes(odd_tree, tmp_path):
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.tools.prepare", f"--folder_dir={odd_tree}",
       f"--data_dir={out}", "--resize_shorter=24", "--num_workers=0"],
      capture_output=True, text=True, cwd=fx.REPO, timeout=120,
      env={**os.environ, "PYTHONPATH": str(fx.REPO)})
  assert result.returncode == 0, result.stderr[-3000:]
  version_dir = out / imagenet.TFDS_NAME / "5.1.0"
  train, validation = (records.open_split(str(version_dir), split)
                       for split in ("train", "validation"))
  train_names = [train[i]["file_name"] for i in range(len(train))]
  assert len(train_names) == 13 and CAFE in train_names  # the name's own bytes
  assert VAL_CAFE in [validation[i]["file_name"] for i in range(len(validation))]
  assert len(validation) == 4
  info = json.loads((version_dir / imagenet.PREPARE_INFO_FILE).read_text())
  assert info["skipped"] == sorted(["huge.JPEG", "huge_val.JPEG", EMPTY_SHOWN])
  assert f"skipping {EMPTY_SHOWN}: cannot decode image {EMPTY_SHOWN}: the file is empty" in (
      result.stderr)
  assert "skipping huge.JPEG: image huge.JPEG is 20000x14000 pixels" in result.stderr
  assert "Traceback" not in result.stderr


def test_predict_reads_odd_names_and_refuses_a_huge_image_in_one_sentence(odd_run, odd_tree):
  workdir, _ = odd_run
  cafe = child(odd_tree / "train" / "n01440764", CAFE)
  huge = odd_tree / "train" / "n02099601" / "huge.JPEG"
  result = subprocess.run(
      [sys.executable.encode(), b"-m", b"alexnet_jax.tools.predict",
       f"--workdir={workdir}".encode(), b"--top_k=2", cafe, os.fsencode(huge)],
      capture_output=True, cwd=fx.REPO, timeout=300)
  stdout, stderr = result.stdout.decode(), result.stderr.decode()
  assert result.returncode == 1, stderr[-3000:]  # one file could not be used
  lines = stdout.splitlines()
  at = lines.index(decode.printable_name(cafe))  # the path, its odd byte escaped
  assert lines[at].endswith(f"n01440764/{CAFE_SHOWN}") and lines[at + 1].startswith("  1. ")
  assert f"  error: image {huge} is 20000x14000 pixels (280 megapixels), more than the 268 " \
         "megapixels alexnet_jax decodes (its large-image rule, docs/data.md); shrink the " \
         "file if it is meant to be used." in lines
  assert "Traceback" not in stderr


def test_inference_refuses_a_huge_image_as_a_user_error(tmp_path):
  huge = tmp_path / "huge.JPEG"
  huge.write_bytes(huge_jpeg())
  preprocessing = {"source": "folder", "mean": [0.0] * 3, "std": [1.0] * 3,
                   "image_size": 32, "resize_size": 36}
  with pytest.raises(UserError, match=r"huge.JPEG is 20000x14000 pixels .*\.$"):
    inference.load_image(huge, preprocessing, 3)
