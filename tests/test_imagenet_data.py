"""ImageNet sources, transforms and the prepare tool, on tiny data made in the test."""

from __future__ import annotations

import collections
import io
import json
import os
import pathlib
import pickle
import subprocess
import sys

from absl import flags
import jax
import numpy as np
from PIL import Image
from PIL import JpegImagePlugin
import pytest

from alexnet_jax import data as data_lib, experiment, sharding
from alexnet_jax.errors import UserError
from alexnet_jax.plan import make_plan
from alexnet_jax.data import crops, decode, imagenet, pipeline, prepare, transforms, wnids
from alexnet_jax.data.prepare import storage

try:  # tests/ on sys.path (pytest's default for a folder without __init__.py)
  import imagenet_fixtures as fx
except ImportError:  # tests/ as a package
  from tests import imagenet_fixtures as fx

flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.

RECORD_KEY = "some/file.JPEG"


def record(data: bytes, label: int = 5) -> dict:
  return {"image": data, "label": label, "file_name": RECORD_KEY}


def decode_array(data: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def uniforms(seed: int) -> np.ndarray:
  """A train transform's per-example uniforms, as the loader draws them (enough for any)."""
  return np.random.default_rng(seed).random(transforms.InceptionTrainTransform.uniforms_per_example)


def numbered_png(width: int, height: int) -> tuple[bytes, np.ndarray]:
  """A lossless image whose pixels all differ, to compare crops exactly."""
  pixels = np.arange(width * height * 3, dtype=np.int64).reshape(height, width, 3)
  pixels = (pixels * 7919 % 256).astype(np.uint8)
  return fx.encode(Image.fromarray(pixels), fmt="PNG"), pixels


# --------------------------------------------------------------------------------------------
# Class lists


def test_standard_class_order_matches_tfds_and_names():
  order = wnids.standard_wnids()
  assert len(order) == 1000 and len(set(order)) == 1000
  assert order[0] == "n01440764" and order[999] == "n15075141"
  import tensorflow_datasets as tfds
  tfds_labels = (pathlib.Path(tfds.__file__).parent / "datasets/imagenet2012/labels.txt")
  assert tuple(tfds_labels.read_text().split()) == order
  assert wnids.class_names()[0].startswith("tench")
  assert wnids.class_names()[207] == "golden retriever"


def test_validation_labels_come_from_the_tfds_package():
  assert len(wnids.validation_wnids()) == 50_000
  for number, label in fx.VALIDATION_LABELS.items():
    assert wnids.validation_label(f"ILSVRC2012_val_{number:08d}.JPEG") == label
  with pytest.raises(ValueError, match="ILSVRC2012_val_XXXXXXXX"):
    wnids.validation_label("val_1.JPEG")


# --------------------------------------------------------------------------------------------
# Folder source and layout errors


def test_folder_labels_follow_the_standard_order_not_the_listing(tmp_path):
  fx.make_folder_dataset(tmp_path, per_class=2)
  source = imagenet.folder_split(str(tmp_path), "train")
  assert len(source) == 8
  paths = [p.decode() for p in source.relative_paths]
  assert paths == sorted(paths)
  for path, label in zip(paths, source.labels):
    assert label == fx.WNIDS[path.split("/")[0]]
  assert source[0]["image"] == (tmp_path / "train" / paths[0]).read_bytes()


@pytest.mark.parametrize("layout", ["flat", "wnid"])
def test_both_validation_layouts(tmp_path, layout):
  fx.make_folder_dataset(tmp_path, val_layout=layout, num_val=3)
  source = imagenet.folder_split(str(tmp_path), "val")
  labels = [int(label) for label in source.labels]
  if layout == "flat":
    assert labels == [fx.VALIDATION_LABELS[n] for n in (1, 2, 3)]
  else:  # fixtures put val number n under the wnid at position n % 4
    wnids = list(fx.WNIDS)
    assert sorted(labels) == sorted(fx.WNIDS[wnids[n % 4]] for n in (1, 2, 3))


def test_unknown_class_folder_is_a_clear_error(tmp_path):
  fx.make_folder_dataset(tmp_path)
  fx.write(tmp_path / "train" / "cats" / "a.JPEG", fx.jpeg_bytes(20, 20))
  with pytest.raises(ValueError, match=r"cats is not an ILSVRC-2012 class folder"):
    _both(fx.imagenet_config(tmp_path, source="folder"))


def test_mixed_validation_layout_is_an_error(tmp_path):
  fx.make_folder_dataset(tmp_path, val_layout="wnid")
  fx.write(tmp_path / "val" / "ILSVRC2012_val_00000009.JPEG", fx.jpeg_bytes(20, 20))
  with pytest.raises(ValueError, match="mixes class folders and loose images"):
    imagenet.folder_split(str(tmp_path), "val")


def assert_explains_layouts(message: str) -> None:
  assert "imagenet2012/<version>/dataset_info.json" in message
  assert "train/<wnid>/*.JPEG" in message
  assert "val/ILSVRC2012_val_XXXXXXXX.JPEG" in message
  assert "python -m alexnet_jax.tools.prepare" in message


@pytest.mark.parametrize("source", ["auto", "tfds", "folder"])
def test_missing_data_dir_is_one_clear_error(tmp_path, source):
  config = fx.imagenet_config(tmp_path / "nowhere", source=source)
  with pytest.raises(FileNotFoundError) as error:
    data_lib.open_split(config, "train")
  assert_explains_layouts(str(error.value))


@pytest.mark.parametrize("source", ["auto", "tfds", "folder"])
def test_wrong_layout_is_one_clear_error(tmp_path, source):
  (tmp_path / "images").mkdir()
  with pytest.raises(ValueError) as error:
    data_lib.open_split(fx.imagenet_config(tmp_path, source=source), "train")
  assert_explains_layouts(str(error.value))


def test_folder_source_needs_a_data_dir():
  with pytest.raises(ValueError, match="needs --config.data.data_dir"):
    _both(fx.imagenet_config("", source="folder"))


def test_tfrecord_build_asks_for_conversion(tmp_path):
  version_dir = tmp_path / "imagenet2012" / "5.1.0"
  fx.write(version_dir / "dataset_info.json", json.dumps({"fileFormat": "tfrecord"}).encode())
  with pytest.raises(ValueError, match="tfds convert_format"):
    _both(fx.imagenet_config(tmp_path, source="auto"))


def test_config_must_ask_for_1000_rgb_classes(tmp_path):
  fx.make_folder_dataset(tmp_path)
  config = fx.imagenet_config(tmp_path)
  config.model.num_classes = 10
  with pytest.raises(ValueError, match="model.num_classes=10 but data.source='auto' has 1000 classes"):
    experiment.build(config)
  config.model.num_classes, config.model.in_channels = 1000, 1
  with pytest.raises(ValueError, match="model.in_channels=1 but data.source='auto' gives 3-channel"):
    experiment.build(config)


# --------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("kind", sorted(fx.GOOD_IMAGES))
def test_every_image_kind_decodes_to_rgb(kind):
  transform = transforms.PaperTrainTransform(image_size=16, resize_size=20)
  out = transform(record(fx.GOOD_IMAGES[kind]()), uniforms(0))
  assert out["image"].shape == (16, 16, 3) and out["image"].dtype == np.uint8
  assert out["label"] == 5 and out["label"].dtype == np.int32


def test_cmyk_colours_survive():
  red = Image.new("RGB", (24, 24), (220, 30, 30))
  data = fx.encode(red.convert("CMYK"))
  out = transforms.CentreCropTransform(16, 20)(record(data), None)
  assert np.abs(out["image"].astype(int).mean(axis=(0, 1)) - (220, 30, 30)).max() < 12


@pytest.mark.parametrize("kind", sorted(fx.CORRUPT_IMAGES))
@pytest.mark.parametrize("transform", [
    transforms.PaperTrainTransform(16, 20), transforms.InceptionTrainTransform(16),
    transforms.CentreCropTransform(16, 20), transforms.TenCropTransform(16, 20)])
def test_corrupt_images_are_skippable_and_named(kind, transform):
  with pytest.raises(pipeline.SkippableRecordError, match=RECORD_KEY):
    transform(record(fx.CORRUPT_IMAGES[kind]()), uniforms(0))


def test_jpeg_missing_only_its_end_marker_is_refused():
  data = fx.jpeg_bytes(64, 48)[:-2]
  with pytest.raises(pipeline.SkippableRecordError, match="truncated"):
    decode.decode_rgb(data, "x.JPEG")


def test_draft_mode_decodes_large_jpegs_at_reduced_scale(monkeypatch):
  data = fx.jpeg_bytes(640, 480, seed=3)
  scales = []
  original_draft = JpegImagePlugin.JpegImageFile.draft

  def spy(self, mode, size):
    result = original_draft(self, mode, size)
    scales.append(self.decoderconfig[0])
    return result

  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
  drafted = transforms.CentreCropTransform(56, 64, use_draft=True)(record(data), None)["image"]
  assert scales == [4]  # 480/4 = 120 rows still cover the 64-row scale the crop needs
  full = transforms.CentreCropTransform(56, 64, use_draft=False)(record(data), None)["image"]
  assert drafted.shape == full.shape == (56, 56, 3)
  assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 3


def test_no_draft_below_the_needed_resolution(monkeypatch):
  data = fx.jpeg_bytes(120, 90)
  scales = []
  original_draft = JpegImagePlugin.JpegImageFile.draft
  monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft",
                      lambda self, *a: scales.append(1) or original_draft(self, *a))
  transforms.PaperTrainTransform(56, 64)(record(data), uniforms(0))
  assert scales == []  # 90 rows < 2 x 64: a 1/2 decode would be too small


# --------------------------------------------------------------------------------------------
# Crops (the mirror and the colour noise are the train step's: tests/test_augment.py)


def test_paper_crop_equals_resize_then_centre_then_random_crop():
  image = fx.smooth_image(80, 60, seed=9)
  data = fx.encode(image, fmt="PNG")
  transform = transforms.PaperTrainTransform(32, 40, use_draft=False)
  for seed in range(5):
    u = uniforms(seed)
    out = transform(record(data), u)["image"]
    dx, dy = int(u[0] * 9), int(u[1] * 9)  # 40 - 32 + 1 offsets, horizontal then vertical
    resized = np.asarray(image.resize((53, 40), decode.RESAMPLE))  # shorter side 40
    square = resized[:, 6:46]  # central 40x40 (torchvision rounding)
    expected = square[dy:dy + 32, dx:dx + 32]
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_pre_resized_images_are_cropped_without_resampling():
  data, pixels = numbered_png(20, 26)  # shorter side already 20
  transform = transforms.PaperTrainTransform(16, 20)
  outs = {transform(record(data), uniforms(s))["image"].tobytes() for s in range(60)}
  square = pixels[3:23]  # central 20x20 of 26 rows
  expected = {square[y:y + 16, x:x + 16].tobytes() for y in range(5) for x in range(5)}
  assert outs <= expected and len(outs) > 15


def test_uniform_int_covers_every_value_and_never_the_count():
  assert crops.uniform_int(0.0, 33) == 0
  assert crops.uniform_int(np.nextafter(1.0, 0.0), 33) == 32
  values = {crops.uniform_int(u, 5) for u in np.random.default_rng(0).random(200)}
  assert values == set(range(5))


def test_inception_crop_boxes_follow_torchvision_bounds():
  for seed in range(500):
    left, top, right, bottom = crops.inception_crop_box(500, 375, uniforms(seed))
    w, h = right - left, bottom - top
    assert 0 <= left and 0 <= top and right <= 500 and bottom <= 375
    assert 0.08 * 0.95 <= w * h / (500 * 375) <= 1.0
    assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_inception_crop_falls_back_to_a_central_crop():
  # No crop of ratio 3/4..4/3 with 8% of the area fits a 1000x10 strip.
  box = crops.inception_crop_box(1000, 10, uniforms(0))
  assert box == (493, 0, 506, 10)  # width round(10 * 4/3) = 13, centred
  out = transforms.InceptionTrainTransform(16)(record(fx.jpeg_bytes(60, 30)), uniforms(0))
  assert out["image"].shape == (16, 16, 3)


def test_centre_crop_for_evaluation():
  data, pixels = numbered_png(20, 24)
  out = transforms.CentreCropTransform(16, 20)(record(data), None)
  np.testing.assert_array_equal(out["image"], pixels[4:20, 2:18])


def test_ten_crop_is_corners_centre_and_their_mirrors():
  data, pixels = numbered_png(20, 20)
  out = transforms.TenCropTransform(16, 20)(record(data), None)["image"]
  assert out.shape == (10, 16, 16, 3) and out.dtype == np.uint8
  expected = [pixels[:16, :16], pixels[:16, 4:], pixels[4:, :16], pixels[4:, 4:],
              pixels[2:18, 2:18]]
  for i, crop in enumerate(expected):
    np.testing.assert_array_equal(out[i], crop)
    np.testing.assert_array_equal(out[5 + i], crop[:, ::-1])


def test_ten_crop_uses_the_central_square_of_non_square_images():
  data, pixels = numbered_png(30, 20)  # resized square is columns 5..25
  out = transforms.TenCropTransform(16, 20)(record(data), None)["image"]
  np.testing.assert_array_equal(out[0], pixels[:16, 5:21])
  np.testing.assert_array_equal(out[3], pixels[4:, 9:25])


# --------------------------------------------------------------------------------------------
# Through the shared pipeline


def test_corrupt_records_are_skipped_and_counted(tmp_path):
  corrupt = {"n01440764_1.JPEG": "truncated", "n02099601_0.JPEG": "empty",
             "n15075141_2.JPEG": "not_an_image"}
  fx.make_folder_dataset(tmp_path, per_class=3, corrupt_train=corrupt)
  source = imagenet.folder_split(str(tmp_path), "train")
  transform = transforms.PaperTrainTransform(16, 20)
  whole_epoch = pipeline.train_dataset(source, transform, seed=0, global_batch_size=12)
  batch = whole_epoch[0]
  assert int(batch["skipped"]) == 3
  assert batch["image"].shape == (12, 16, 16, 3)
  halves = pipeline.train_dataset(source, transform, seed=0, global_batch_size=6)
  assert int(halves[0]["skipped"]) + int(halves[1]["skipped"]) == 3


@pytest.mark.parametrize("batch_size,process_count", [(4, 1), (4, 2), (4, 4), (6, 3), (8, 2)])
def test_evaluation_counts_every_example_exactly_once(tmp_path, batch_size, process_count):
  fx.make_folder_dataset(tmp_path, num_val=7)  # 7: no batch size here divides it
  source = imagenet.folder_split(str(tmp_path), "val")
  transform = transforms.CentreCropTransform(16, 20)
  seen = collections.Counter()
  for process_index in range(process_count):
    dataset = pipeline.eval_dataset(source, transform, global_batch_size=batch_size,
                                    process_index=process_index, process_count=process_count)
    for batch in dataset:
      seen.update(batch["label"][batch["mask"]].tolist())
  assert sum(seen.values()) == 7
  assert seen == collections.Counter(int(label) for label in source.labels)


def test_splits_with_the_imagenet_config(tmp_path):
  fx.make_folder_dataset(tmp_path, num_val=5)
  config = fx.imagenet_config(tmp_path, image_size=16, resize_size=20, batch_size=4)
  train, evaluation = data_lib.open_split(config, "train"), data_lib.open_split(config, "eval")
  assert train.info.num_classes == 1000 and len(train.info.class_names) == 1000
  assert train.info.has_crops
  assert (train.num_examples, evaluation.num_examples) == (12, 5)
  mesh = sharding.make_mesh(jax.devices()[:1])
  loading = data_lib.Loading.of(config.data)
  batch = next(data_lib.train_batches(train, mesh, seed=config.seed,
                                      batch_size=config.batch_size, loading=loading))
  assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.uint8
  labels = np.asarray(batch["label"])
  assert labels.dtype == np.int32 and set(labels.tolist()) <= set(fx.WNIDS.values())
  batches = list(data_lib.eval_batches(evaluation, mesh, batch_size=config.eval_batch_size,
                                       loading=loading))
  assert len(batches) == 2 and sum(int(np.asarray(b["mask"]).sum()) for b in batches) == 5


def test_ten_crop_evaluation_batches(tmp_path):
  fx.make_folder_dataset(tmp_path, num_val=3)
  config = fx.imagenet_config(tmp_path, batch_size=4)
  config.data.ten_crop = True
  mesh = sharding.make_mesh(jax.devices()[:1])
  evaluation = data_lib.open_split(config, "eval")
  plan = make_plan(config, num_devices=1, num_processes=1, train_examples=None,
                   eval_examples=evaluation.num_examples)
  batch = next(data_lib.eval_batches(evaluation, mesh, batch_size=plan.eval_batch,
                                     loading=data_lib.Loading.of(config.data)))
  # 3 images: the eval batch is cut to what the split needs, not padded to 4 rows.
  assert batch["image"].shape == (3, 10, 16, 16, 3)


def test_eval_only_needs_the_validation_split(tmp_path):
  fx.make_folder_dataset(tmp_path, num_val=3)
  import shutil
  shutil.rmtree(tmp_path / "train")
  config = fx.imagenet_config(tmp_path, batch_size=4)
  assert data_lib.open_split(config, "eval").num_examples == 3
  with pytest.raises(UserError, match="no images|no train"):
    data_lib.open_split(config, "train")



def test_inception_transform_from_the_config(tmp_path):
  fx.make_folder_dataset(tmp_path)
  config = fx.imagenet_config(tmp_path)
  config.data.train_transform = "inception"
  spec = _both(config)
  assert isinstance(spec.train_transform, transforms.InceptionTrainTransform)
  config.data.train_transform = "fancy"
  with pytest.raises(ValueError, match="train_transform"):
    _both(config)


def test_sources_and_transforms_pickle_for_grain_workers(tmp_path):
  fx.make_folder_dataset(tmp_path)
  spec = _both(fx.imagenet_config(tmp_path))
  for thing in (spec.train_source, spec.eval_source, spec.train_transform, spec.eval_transform):
    copy = pickle.loads(pickle.dumps(thing))
    assert type(copy) is type(thing)
  source = pickle.loads(pickle.dumps(spec.train_source))
  assert source[3]["image"] == spec.train_source[3]["image"]


# --------------------------------------------------------------------------------------------
# tfds ArrayRecord builds written by alexnet_jax.data.prepare (no TensorFlow)


def test_packed_folder_reads_back_through_tfds(tmp_path):
  folder = fx.make_folder_dataset(tmp_path / "folder", num_val=3)
  out = tmp_path / "tfds"
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), examples_per_shard=5),
                             str(out), prepare.StoreOptions())
  spec = _both(fx.imagenet_config(out, source="tfds"))
  folder_spec = _both(fx.imagenet_config(folder, source="folder"))
  assert len(spec.train_source) == 12 and len(spec.eval_source) == 3
  for i in range(12):  # same order, same bytes, same labels
    packed, original = spec.train_source[i], folder_spec.train_source[i]
    assert packed["image"] == original["image"]
    assert int(packed["label"]) == int(original["label"])
  assert [int(spec.eval_source[i]["label"]) for i in range(3)] == [65, 970, 230]
  out_example = spec.train_transform(spec.train_source[0], uniforms(0))
  assert out_example["image"].shape == (16, 16, 3)
  assert imagenet.resolve_source("auto", str(out)) == ("tfds", str(out))
  source = pickle.loads(pickle.dumps(spec.train_source))
  assert source[1]["image"] == spec.train_source[1]["image"]


def test_prepare_resizes_and_skips_unreadable_files(tmp_path):
  folder = fx.make_folder_dataset(tmp_path / "folder",
                                  corrupt_train={"n01443537_0.JPEG": "truncated"})
  out = tmp_path / "tfds"
  version_dir = prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 4), str(out),
                                           prepare.StoreOptions(resize_shorter=20))
  source, _ = _tfds_both(str(out))
  assert len(source) == 11
  sizes = [Image.open(io.BytesIO(source[i]["image"])).size for i in range(len(source))]
  assert all(min(size) == 20 for size in sizes)
  info = json.loads((version_dir / imagenet.PREPARE_INFO_FILE).read_text())
  assert info["resize_shorter"] == 20 and info["skipped"] == ["n01443537_0.JPEG"]
  assert info["num_examples"] == {"train": 11, "validation": 3}


def test_prepare_from_the_two_tars_without_tensorflow(tmp_path):
  tars = fx.make_imagenet_tars(tmp_path / "tars", per_class=2, num_val=3)
  out = tmp_path / "tfds"
  prepare.write_tfds_dataset(prepare.plan_tars(str(tars), examples_per_shard=2), str(out),
                             prepare.StoreOptions(resize_shorter=32))
  train, evaluation = _tfds_both(str(out))
  assert [int(train[i]["label"]) for i in range(8)] == [0, 0, 1, 1, 207, 207, 999, 999]
  assert [int(evaluation[i]["label"]) for i in range(3)] == [65, 970, 230]
  assert evaluation[0]["file_name"] == b"ILSVRC2012_val_00000001.JPEG"


def test_prepare_refuses_to_overwrite(tmp_path):
  folder = fx.make_folder_dataset(tmp_path / "folder")
  shards = prepare.plan_folder(str(folder), 100)
  prepare.write_tfds_dataset(shards, str(tmp_path / "out"), prepare.StoreOptions())
  with pytest.raises(FileExistsError, match="--overwrite"):
    prepare.write_tfds_dataset(shards, str(tmp_path / "out"), prepare.StoreOptions())


def test_prepare_command_line_with_worker_processes(tmp_path):
  folder = fx.make_folder_dataset(tmp_path / "folder")
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.tools.prepare", f"--folder_dir={folder}",
       f"--data_dir={out}", "--resize_shorter=24", "--num_workers=2",
       "--examples_per_shard=4"],
      capture_output=True, text=True, cwd=fx.REPO, timeout=120,
      env={**os.environ, "PYTHONPATH": str(fx.REPO)})
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--config.data.data_dir=" in result.stdout
  train, evaluation = _tfds_both(str(out))
  assert (len(train), len(evaluation)) == (12, 3)


def test_prepare_names_a_source_that_does_not_exist(tmp_path):
  for flag in ("folder_dir", "tars_dir"):
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_jax.tools.prepare", f"--{flag}={tmp_path / 'nope'}",
         f"--data_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, cwd=fx.REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(fx.REPO)})
    assert result.returncode == 1
    assert f"--{flag}={tmp_path / 'nope'} is not a directory." in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()
  (tmp_path / "empty").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "alexnet_jax.tools.prepare", f"--folder_dir={tmp_path / 'empty'}",
       f"--data_dir={tmp_path / 'out'}"],
      capture_output=True, text=True, cwd=fx.REPO, timeout=120,
      env={**os.environ, "PYTHONPATH": str(fx.REPO)})
  assert result.returncode == 1 and "has no train/ folder" in result.stderr
  assert "--config.data" not in result.stderr  # no training advice for a prepare command


def test_prepare_keeps_small_jpegs_and_re_encodes_odd_ones():
  options = storage.StoreOptions(resize_shorter=20)
  small = fx.jpeg_bytes(18, 16)
  assert storage.stored_image(small, "small.JPEG", options) == small
  cmyk = fx.jpeg_bytes(18, 16, "CMYK")
  stored = Image.open(io.BytesIO(storage.stored_image(cmyk, "cmyk.JPEG", options)))
  assert (stored.format, stored.mode, stored.size) == ("JPEG", "RGB", (18, 16))
  with pytest.raises(pipeline.SkippableRecordError, match="broken.JPEG"):
    storage.stored_image(fx.truncated_jpeg(), "broken.JPEG", options)


def test_empty_data_dir_means_the_tfds_default_location(tmp_path, monkeypatch):
  folder = fx.make_folder_dataset(tmp_path / "folder")
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 100), str(tmp_path / "default"),
                             prepare.StoreOptions())
  monkeypatch.setattr(imagenet, "tfds_default_data_dir", lambda: str(tmp_path / "default"))
  for source in ("auto", "tfds"):
    split = imagenet.build(fx.imagenet_config("", source=source), "train")
    assert split.num_examples == 12


def test_sixteen_bit_grey_png_is_scaled_not_clipped():
  # PIL's convert('RGB') clips I;16 at 255: a 16-bit photo came out 95% white, silently.
  ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(ramp).save(buffer, format="PNG")
  assert Image.open(io.BytesIO(buffer.getvalue())).mode == "I;16"
  rgb = np.asarray(decode.decode_rgb(buffer.getvalue(), "ramp.png"))
  assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
  np.testing.assert_allclose(rgb[..., 0], ramp / 257.0, atol=0.51)


def _both(config):
  """Both splits, as the tests above read them: train_source, train_transform, ..."""
  import types
  train, evaluation = imagenet.build(config, "train"), imagenet.build(config, "eval")
  return types.SimpleNamespace(train_source=train.source, train_transform=train.transform,
                               eval_source=evaluation.source,
                               eval_transform=evaluation.transform, info=train.info)


def _tfds_both(data_dir):
  return imagenet.tfds_split(data_dir, "train"), imagenet.tfds_split(data_dir, "eval")
