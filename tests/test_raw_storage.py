"""The paper's raw storage (`prepare --format=raw`) and the simplejpeg decoder path."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from alexnet_jax import data as data_lib, sharding
from alexnet_jax.data import crops, decode, imagenet, pipeline, prepare, raw, transforms
from alexnet_jax.data.prepare import finish
from alexnet_jax.errors import UserError

try:  # tests/ on sys.path (pytest's default for a folder without __init__.py)
  import imagenet_fixtures as fx
except ImportError:  # tests/ as a package
  from tests import imagenet_fixtures as fx

flags.FLAGS.mark_as_parsed()  # Grain reads absl flags.

needs_simplejpeg = pytest.mark.skipif(decode.simplejpeg is None,
                                      reason="simplejpeg is not installed")


def raw_build(tmp_path, **folder_kwargs) -> tuple[pathlib.Path, pathlib.Path]:
  """(folder dataset, data_dir of its raw build): 12 train files, 3 validation files."""
  folder = fx.make_folder_dataset(tmp_path / "folder", **folder_kwargs)
  out = tmp_path / "raw"
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 5), str(out),
                             prepare.StoreOptions(format="raw"), progress=False)
  return folder, out


def raw_config(data_dir, image_size: int = 16, batch_size: int = 4):
  return fx.imagenet_config(str(data_dir), image_size=image_size, resize_size=256,
                            batch_size=batch_size, source="auto")


# --------------------------------------------------------------------------------------------
# Preparing and reading


def test_raw_build_records_its_format_and_stores_the_central_square(tmp_path):
  folder, out = raw_build(tmp_path, corrupt_train={"n01440764_1.JPEG": "truncated"})
  version_dir = out / "imagenet2012" / imagenet.prepared_tfds_versions(str(out))[-1]
  info = json.loads((version_dir / imagenet.PREPARE_INFO_FILE).read_text())
  assert info["format"] == "raw" and info["image_shape"] == [256, 256, 3]
  assert info["num_examples"] == {"train": 11, "validation": 3}
  assert info["skipped"] == ["n01440764_1.JPEG"]
  source = imagenet.tfds_split(str(out), "train")
  assert isinstance(source, raw.RawSource) and len(source) == 11
  record = source[0]
  assert len(record["image"]) == 196_608
  # The stored square is what the JPEG path's resize + centre crop gives.
  original = (folder / "train" / "n01440764" / record["file_name"].decode()).read_bytes()
  expected = np.asarray(decode.decode_region(
      original, "x", lambda w, h: crops.centre_crop_box(w, h, 256, 256), (256, 256)))
  np.testing.assert_array_equal(raw.pixels(record), expected)


def test_raw_build_trains_and_evaluates_with_exact_counts(tmp_path):
  _, out = raw_build(tmp_path)
  config = raw_config(out)
  mesh = sharding.make_mesh(jax.devices()[:1])
  train = data_lib.open_split(config, "train")
  assert isinstance(train.transform, raw.RawPaperTrainTransform)
  params = jnp.zeros((3, 1000))

  @jax.jit
  def step(params, images, labels):
    def loss_fn(p):
      features = images.astype(jnp.float32).mean(axis=(1, 2)) / 255.0
      logits = features @ p
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(labels.shape[0]), labels])
    loss, grads = jax.value_and_grad(loss_fn)(params)
    return params - 1.0 * grads, loss

  losses = []
  loading = data_lib.Loading.of(config.data)
  batches = data_lib.train_batches(train, mesh, seed=config.seed, batch_size=config.batch_size,
                                   loading=loading)
  for _ in range(3):
    batch = next(batches)
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == jnp.uint8
    params, loss = step(params, batch["image"], batch["label"])
    losses.append(float(loss))
  assert losses[-1] < losses[0]
  for ten_crop, shape in ((False, (16, 16, 3)), (True, (10, 16, 16, 3))):
    evaluation = data_lib.open_split(config, "eval", ten_crop=ten_crop)
    batches = list(data_lib.eval_batches(evaluation, mesh, batch_size=config.eval_batch_size,
                                         loading=loading))
    assert sum(int(np.asarray(b["mask"]).sum()) for b in batches) == 3
    assert all(b["image"].shape[1:] == shape for b in batches)
    labels = sorted(int(l) for b in batches for l, m in zip(np.asarray(b["label"]),
                                                             np.asarray(b["mask"])) if m)
    assert labels == sorted(fx.VALIDATION_LABELS.values())


def test_raw_train_transform_draws_like_the_jpeg_paper_transform():
  """Same uniforms, same crop as the JPEG path on stored 256x256 (mirror and colour noise are
  the train step's, the same for both storages)."""
  pixels = np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)
  png = fx.encode(Image.fromarray(pixels), fmt="PNG")
  assert raw.RawPaperTrainTransform.uniforms_per_example == 2
  for seed in range(6):
    u = np.random.default_rng(seed).random(2)
    from_raw = raw.RawPaperTrainTransform(32)({"image": pixels.tobytes(), "label": 3}, u)
    from_png = transforms.PaperTrainTransform(32, 256)({"image": png, "label": 3}, u)
    np.testing.assert_array_equal(from_raw["image"], from_png["image"])
  centre = raw.RawCentreCropTransform(32)({"image": pixels.tobytes(), "label": 1}, None)
  np.testing.assert_array_equal(centre["image"], pixels[112:144, 112:144])
  ten = raw.RawTenCropTransform(32)({"image": pixels.tobytes(), "label": 1}, None)
  np.testing.assert_array_equal(ten["image"], crops.ten_crops(pixels, 32))


def test_inception_on_raw_storage_is_one_clear_error(tmp_path):
  _, out = raw_build(tmp_path)
  config = raw_config(out)
  config.data.train_transform = "inception"
  with pytest.raises(UserError, match="needs the whole image.*train_transform=paper"):
    data_lib.open_split(config, "train")
  config.data.train_transform = "paper"
  config.data.resize_size = 20
  with pytest.raises(UserError, match="resize_size=256"):
    data_lib.open_split(config, "train")


def test_a_raw_record_of_the_wrong_size_is_an_error_naming_the_shard(tmp_path):
  _, out = raw_build(tmp_path)
  source = imagenet.tfds_split(str(out), "train")

  class Short:
    def __len__(self):
      return len(source.inner)

    def __getitem__(self, index):
      record = dict(source.inner[index])
      if index == 7:
        record["image"] = record["image"][:1000]
      return record

    locate = source.inner.locate

  damaged = raw.RawSource(Short())
  damaged[6]
  with pytest.raises(raw.RawRecordError,
                     match=r"record 7 .*record 2 of shard imagenet2012-train\.array_record-"
                           r"00001-of-00003\) holds 1000 bytes, not 196608.*--overwrite"):
    damaged[7]
  # Not a skip: the loader lets it through instead of substituting the next record.
  with pytest.raises(raw.RawRecordError):
    pipeline._load_with_skips(damaged, raw.RawCentreCropTransform(16), 7, None)


def test_prepare_refuses_an_existing_build_without_overwrite(tmp_path):
  folder, out = raw_build(tmp_path)
  shards = prepare.plan_folder(str(folder), 5)
  with pytest.raises(UserError, match="already holds a build; pass --overwrite"):
    prepare.write_tfds_dataset(shards, str(out), prepare.StoreOptions(), progress=False)
  # --overwrite replaces it (here raw -> JPEG), and no incomplete folder is left behind.
  prepare.write_tfds_dataset(shards, str(out), prepare.StoreOptions(resize_shorter=24),
                             overwrite=True, progress=False)
  assert not isinstance(imagenet.tfds_split(str(out), "train"), raw.RawSource)
  assert sorted(p.name for p in (out / "imagenet2012").iterdir()) == ["5.1.0"]


def test_an_interrupted_prepare_leaves_no_build_a_run_could_read(tmp_path, monkeypatch):
  folder = fx.make_folder_dataset(tmp_path / "folder")
  out = tmp_path / "raw"

  def fail(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(finish, "finish_dataset", fail)
  with pytest.raises(KeyboardInterrupt):
    prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 5), str(out),
                               prepare.StoreOptions(format="raw"), progress=False)
  assert imagenet.prepared_tfds_versions(str(out)) == []
  with pytest.raises(UserError, match="ImageNet not found"):
    data_lib.open_split(raw_config(out), "train")


def test_prepare_command_line_raw_with_workers(tmp_path):
  folder = fx.make_folder_dataset(tmp_path / "folder")
  out = tmp_path / "out"
  command = [sys.executable, "-m", "alexnet_jax.tools.prepare", f"--folder_dir={folder}",
             f"--data_dir={out}", "--format=raw", "--num_workers=2", "--examples_per_shard=4"]
  env = {**os.environ, "PYTHONPATH": str(fx.REPO)}
  result = subprocess.run(command, capture_output=True, text=True, cwd=fx.REPO, timeout=120,
                          env=env)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "'train': 12" in result.stdout and "'validation': 3" in result.stdout
  assert "img/s" in result.stderr  # the progress bar
  again = subprocess.run(command, capture_output=True, text=True, cwd=fx.REPO, timeout=120,
                         env=env)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1].startswith("error: ")
  assert "--overwrite" in again.stderr


def test_progress_log_counts_each_split_on_its_own(tmp_path, caplog):
  folder = fx.make_folder_dataset(tmp_path / "folder", per_class=2, num_val=3)
  caplog.set_level("INFO")
  prepare.write_tfds_dataset(prepare.plan_folder(str(folder), 100), str(tmp_path / "out"),
                             prepare.StoreOptions(resize_shorter=24), progress=False)
  lines = [r.getMessage() for r in caplog.records if "shard 2/2 done" in r.getMessage()]
  assert lines and "validation shard 0: 3 images" in lines[0]
  assert "train 8 so far, validation 3 so far" in lines[0]


# --------------------------------------------------------------------------------------------
# The JPEG decoder: simplejpeg decodes what Pillow decodes, refuses what Pillow refuses


def _both(data: bytes, out_size=(24, 24), box=None, use_draft=True):
  side = out_size[0]
  choose = lambda w, h: box or crops.centre_crop_box(w, h, side + 4, side)
  results = []
  for decoder in ("pillow", "simplejpeg"):
    try:
      results.append(np.asarray(decode.decode_region_array(
          data, "f.JPEG", choose, out_size, use_draft, decoder)))
    except pipeline.SkippableRecordError as e:
      results.append(type(e))
  return results


@needs_simplejpeg
@pytest.mark.parametrize("kind", ["rgb_wide", "rgb_tall", "grey", "cmyk", "png_inside"])
def test_simplejpeg_gives_pillows_pixels_on_every_good_kind(kind):
  pillow, fast = _both(fx.GOOD_IMAGES[kind]())
  assert pillow.shape == fast.shape == (24, 24, 3)
  assert np.abs(pillow.astype(int) - fast.astype(int)).max() <= 1


@needs_simplejpeg
@pytest.mark.parametrize("kind", ["truncated", "empty", "not_an_image"])
def test_simplejpeg_refuses_what_pillow_refuses(kind):
  assert _both(fx.CORRUPT_IMAGES[kind]()) == [pipeline.SkippableRecordError] * 2


@needs_simplejpeg
def test_simplejpeg_sixteen_bit_grey_and_missing_end_marker_match_pillow():
  wide = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
  png16 = fx.encode(Image.fromarray(wide), fmt="PNG")
  pillow, fast = _both(png16)
  np.testing.assert_array_equal(pillow, fast)
  assert pillow.max() > 200  # scaled, not clipped to white (decode.wide_grey_to_l)
  no_end = fx.jpeg_bytes(40, 30, seed=9)[:-2]
  assert _both(no_end) == [pipeline.SkippableRecordError] * 2


@needs_simplejpeg
def test_simplejpeg_draft_scaling_matches_pillow_draft():
  big = fx.jpeg_bytes(800, 600, seed=11)
  for out in ((100, 100), (64, 64), (300, 300)):
    pillow, fast = _both(big, out_size=out)
    assert np.abs(pillow.astype(int) - fast.astype(int)).max() <= 1


@needs_simplejpeg
def test_skips_through_the_fast_decoder_are_counted_as_today(tmp_path):
  folder = fx.make_folder_dataset(tmp_path, corrupt_train={
      "n01440764_1.JPEG": "truncated", "n01443537_0.JPEG": "empty"})
  config = fx.imagenet_config(str(folder), source="folder")
  counts = {}
  for decoder in ("pillow", "simplejpeg"):
    config.data.jpeg_decoder = decoder
    split = data_lib.open_split(config, "train")
    assert split.transform.decoder == decoder
    dataset = pipeline.train_dataset(split.source, split.transform, seed=0,
                                     global_batch_size=12)
    counts[decoder] = [int(dataset[k]["skipped"]) for k in range(3)]
  assert counts["pillow"] == counts["simplejpeg"] == [2, 2, 2]


def test_unknown_decoder_is_a_user_error():
  with pytest.raises(UserError, match="jpeg_decoder='turbo'"):
    decode.resolve_decoder("turbo")
  expected = "simplejpeg" if decode.simplejpeg is not None else "pillow"
  assert decode.resolve_decoder("auto") == expected
