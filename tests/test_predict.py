"""predict: recorded preprocessing, top-k output, torchvision weights, the command line, the
README's examples on the sample images in examples/images/.

Also the helpers the other inference tests share (test_finetune, test_interpret,
test_visualize, test_eval_report import them from here): one tiny training run on a 64-image
cut of Fashion-MNIST (d2l at 65x65, the smallest size the variant takes), trained once per
test session, and one torchvision-format .pth file.
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import config_base, experiment, inference, train
from alexnet_jax.data import fashion_mnist, transforms, wnids
from alexnet_jax.tools import cli, predict

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(**overrides):
  """A d2l model at 65x65 on synthetic grey images, batch 8 (divides the 8 test devices)."""
  c = config_base.base_config()
  c.data.source = "synthetic"
  c.data.mean, c.data.std = (0.0,), (255.0,)
  c.data.num_train_examples, c.data.num_eval_examples = 32, 20
  c.batch_size = c.eval_batch_size = 8
  c.num_train_steps = 2
  c.log_every_steps = 1
  c.eval_every_steps = 2
  c.checkpoint_every_steps = 2
  c.model.variant, c.model.num_classes, c.model.in_channels = "d2l", 10, 1
  c.model.image_size, c.model.init = 65, "xavier"
  c.schedule.name = "constant"
  c.update_from_flattened_dict(overrides)  # dotted names: {"data.source": ...}
  return c


def train_tiny_run(workdir, devices=None, **overrides):
  """Trains `tiny_config(**overrides)` into workdir in this process on `devices` (default:
  all 8); returns the config."""
  config = tiny_config(**overrides)
  train.train_and_evaluate(experiment.build(config, devices=devices), workdir)
  return config


def write_idx(path: pathlib.Path, array: np.ndarray, magic: int) -> None:
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def tiny_fashion_mnist(folder: pathlib.Path, train: int = 64, test: int = 40) -> pathlib.Path:
  """The first images of the repository's Fashion-MNIST, as the four IDX files."""
  folder.mkdir(parents=True, exist_ok=True)
  for split, count in (("train", train), ("test", test)):
    images, labels = fashion_mnist.load_split(fashion_mnist.REPO_COPY, split)
    image_file, label_file = fashion_mnist.FILES[split]
    write_idx(folder / image_file, images[:count, ..., 0], 0x00000803)
    write_idx(folder / label_file, labels[:count], 0x00000801)
  return folder


_SHARED: dict[str, object] = {}  # built once per session, whichever test module asks first


def shared_run(tmp_path_factory) -> tuple[pathlib.Path, object]:
  """(workdir, config): 2 steps of d2l on tiny Fashion-MNIST, evaluated and checkpointed at
  step 2. Read-only for the tests that use it. Trained on one device: replicated on all 8
  it took twice the time, and what reads it runs on its own devices."""
  if "run" not in _SHARED:
    root = tmp_path_factory.mktemp("shared_run")
    workdir = root / "run"
    config = train_tiny_run(workdir, jax.devices()[:1], **{
        "data.source": "fashion_mnist", "data.data_dir": str(tiny_fashion_mnist(root / "data"))})
    _SHARED["run"] = (workdir, config)
  return _SHARED["run"]


def write_torchvision_pth(path, num_classes: int = 1000, seed: int = 0) -> pathlib.Path:
  """A torchvision.models.alexnet-format state_dict of random weights, written with the
  independent PyTorch reference model (benchmarks/torch_reference.py)."""
  torch = pytest.importorskip("torch")
  sys.path.insert(0, str(REPO / "benchmarks"))
  from torch_reference import TorchAlexNetTorchvision
  torch.manual_seed(seed)
  torch.save(TorchAlexNetTorchvision(num_classes=num_classes).state_dict(), path)
  return pathlib.Path(path)


def shared_torchvision_pth(tmp_path_factory) -> pathlib.Path:
  """A 1000-class torchvision-format file (244 MB: written once per session)."""
  if "pth" not in _SHARED:
    _SHARED["pth"] = write_torchvision_pth(tmp_path_factory.mktemp("pth") / "alexnet-1000.pth")
  return _SHARED["pth"]


def write_image(path, width=40, height=30, mode="RGB", seed=0) -> pathlib.Path:
  rng = np.random.default_rng(seed)
  channels = 3 if mode == "RGB" else 1
  pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(path)
  return path


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory):
  return shared_run(tmp_path_factory)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  write_image(folder / "a.jpg", 40, 30, seed=1)
  write_image(folder / "nested" / "b.png", 25, 50, mode="L", seed=2)
  (folder / "notes.txt").write_text("not an image")
  return folder


def test_recorded_preprocessing_round_trips(fashion_run):
  workdir, config = fashion_run
  loaded = inference.load_model_from_workdir(workdir)
  assert loaded.preprocessing == {
      "source": "fashion_mnist", "mean": list(config.data.mean), "std": list(config.data.std),
      "image_size": config.model.image_size, "resize_size": config.data.resize_size}
  assert loaded.channels == 1
  assert loaded.model_config["variant"] == "d2l"
  assert loaded.class_names == fashion_mnist.CLASS_NAMES


def test_probabilities_are_sorted_and_sum_to_at_most_one(fashion_run, images):
  workdir, _ = fashion_run
  loaded = inference.load_model_from_workdir(workdir)
  files = inference.find_images([images])
  assert [f.name for f in files] == ["a.jpg", "b.png"]  # recursive, images only
  records = inference.predict_files(loaded, files, k=5, batch_size=4)
  for record in records:
    probabilities = [entry["probability"] for entry in record["top"]]
    assert len(probabilities) == 5
    assert probabilities == sorted(probabilities, reverse=True)
    assert 0.0 < sum(probabilities) <= 1.0 + 1e-6
    assert all(entry["name"] in fashion_mnist.CLASS_NAMES for entry in record["top"])


def test_batches_give_the_same_answers_as_one_by_one(fashion_run, images):
  loaded = inference.load_model_from_workdir(fashion_run[0])
  files = inference.find_images([images])
  together = inference.predict_files(loaded, files, k=3, batch_size=8)
  alone = [inference.predict_files(loaded, [f], k=3, batch_size=1)[0] for f in files]
  for a, b in zip(together, alone):
    assert [e["class"] for e in a["top"]] == [e["class"] for e in b["top"]]
    np.testing.assert_allclose([e["probability"] for e in a["top"]],
                               [e["probability"] for e in b["top"]], rtol=1e-5)


def test_each_source_is_preprocessed_its_own_way(tmp_path):
  path = write_image(tmp_path / "wide.png", 300, 200)
  paper = {"source": "folder", "mean": list(config_base.IMAGENET_MEAN_RGB),
           "std": [1.0, 1.0, 1.0], "image_size": 224, "resize_size": 256}
  out = inference.load_image(path, paper, 3)
  # Exactly the ImageNet eval transform, not a copy of it.
  want = transforms.CentreCropTransform(224, 256)(
      {"image": path.read_bytes(), "label": 0, "file_name": str(path)}, None)["image"]
  assert out.dtype == np.uint8 and np.array_equal(out, want)
  torchvision = inference.torchvision_preprocessing()
  assert (torchvision["resize_size"], torchvision["image_size"]) == (256, 224)
  assert tuple(torchvision["std"]) == config_base.TORCHVISION_STD_RGB
  assert inference.torchvision_preprocessing(112)["resize_size"] == 128
  grey = {"source": "fashion_mnist", "mean": [0.0], "std": [255.0], "image_size": 112,
          "resize_size": 256}
  assert inference.load_image(path, grey, 1).shape == (28, 28, 1)
  out = inference.load_image(path, grey, 3)
  assert out.shape == (28, 28, 3) and np.array_equal(out[..., 0], out[..., 2])
  synthetic = {**grey, "source": "synthetic", "image_size": 65}
  assert inference.load_image(path, synthetic, 3).shape == (65, 65, 3)
  assert inference.load_image(path, synthetic, 1).shape == (65, 65, 1)


def test_unreadable_images_are_user_errors(tmp_path):
  from alexnet_jax.errors import UserError
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not a jpeg")
  record = {"source": "tfds", "mean": [0.0] * 3, "std": [1.0] * 3, "image_size": 32,
            "resize_size": 36}
  with pytest.raises(UserError, match="bad.jpg"):
    inference.load_image(bad, record, 3)
  with pytest.raises(UserError, match="missing.png"):
    inference.load_image(tmp_path / "missing.png", record, 3)


def test_undecodable_file_is_reported_not_fatal(fashion_run, tmp_path):
  bad = tmp_path / "bad.jpg"
  bad.write_bytes(b"not a jpeg")
  good = write_image(tmp_path / "good.png")
  loaded = inference.load_model_from_workdir(fashion_run[0])
  bad_record, good_record = inference.predict_files(loaded, [bad, good])
  assert "bad.jpg" in bad_record["error"] and "top" in good_record


def test_torchvision_weights_get_imagenet_names(tmp_path, tmp_path_factory):
  pth = shared_torchvision_pth(tmp_path_factory)
  loaded = inference.load_model_from_torchvision(pth, image_size=63)
  assert loaded.preprocessing["source"] == "torchvision"
  assert loaded.class_names == wnids.class_names()
  record = inference.predict_files(loaded, [write_image(tmp_path / "x.jpg", 80, 70)], k=5)[0]
  probabilities = [e["probability"] for e in record["top"]]
  assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
  assert record["top"][0]["name"] == wnids.class_names()[record["top"][0]["class"]]


def _run_cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "alexnet_jax.tools.predict", *map(str, args)],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def test_command_line_json_and_errors(fashion_run, images):
  workdir, _ = fashion_run
  result = _run_cli(f"--workdir={workdir}", "--json", "--top_k=3", images)
  assert result.returncode == 0, result.stderr
  output = json.loads(result.stdout)
  assert output["preprocessing"]["source"] == "fashion_mnist"
  assert [len(p["top"]) for p in output["predictions"]] == [3, 3]

  missing = _run_cli(f"--workdir={workdir}", images / "missing.jpg")
  assert missing.returncode == 1
  assert "missing.jpg" in missing.stderr and "Traceback" not in missing.stderr
  no_run = _run_cli(f"--workdir={workdir / 'nowhere'}", images)
  assert no_run.returncode == 1 and "nowhere" in no_run.stderr
  assert "Traceback" not in no_run.stderr
  both = _run_cli(f"--workdir={workdir}", "--torchvision=x.pth", images)
  assert both.returncode == 2 and "exactly one of --workdir" in both.stderr
  bad_flag = _run_cli("--top_k=many", images)
  assert bad_flag.returncode == 2 and "top_k" in bad_flag.stderr


def test_help_lists_the_tool_flags():
  result = _run_cli("--help")  # absl's --help exits with status 1, as main.py's does
  assert "Classify image files" in result.stdout
  for flag in ("--workdir", "--torchvision", "--top_k", "--json"):
    assert flag in result.stdout


# --------------------------------------------------------------------------------------------
# The README's door: its examples run as written on the sample images


SAMPLES = REPO / "examples" / "images"
# examples/images/README.md: Fashion-MNIST test image index of each sample.
SAMPLE_TEST_INDEX = {"ankle_boot": 0, "pullover": 1, "trouser": 2, "sneaker": 9, "bag": 18}


def doc_texts() -> dict[str, str]:
  return {path.name: path.read_text() for path in [REPO / "README.md",
                                                    *sorted((REPO / "docs").glob("*.md"))]}


def test_every_example_image_the_docs_name_exists():
  named = {(name, path) for name, text in doc_texts().items()
           for path in re.findall(r"examples/images/[\w./-]*", text)}
  assert {path for _, path in named} >= {"examples/images/", "examples/images/sneaker.png"}
  missing = [(name, path) for name, path in named if not (REPO / path).exists()]
  assert not missing
  for stale in ("shoe.png", "cat.jpg", "photos/"):  # the names the examples used to give
    assert not [name for name, text in doc_texts().items() if stale in text], stale


def test_sample_images_are_the_fashion_mnist_test_images_their_readme_names():
  images, labels = fashion_mnist.load_split(fashion_mnist.REPO_COPY, "test")
  assert sorted(p.stem for p in SAMPLES.glob("*.png")) == sorted(SAMPLE_TEST_INDEX)
  for stem, index in SAMPLE_TEST_INDEX.items():
    path = SAMPLES / f"{stem}.png"
    assert path.stat().st_size < 1000  # a few hundred bytes each
    assert np.array_equal(np.asarray(Image.open(path)), images[index, ..., 0])
    name = fashion_mnist.CLASS_NAMES[labels[index]]
    assert name.lower().replace(" ", "_") == stem


def test_readme_predict_example_runs_as_written(fashion_run, monkeypatch, capsys):
  # The README's predict line, its workdir swapped for this session's tiny run.
  (line,) = [line for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith("python -m alexnet_jax.tools.predict")]
  args = shlex.split(line, comments=True)[3:]
  args = [a.replace("workdirs/quickstart", str(fashion_run[0])) for a in args]
  monkeypatch.chdir(REPO)  # the README runs from the clone's root
  assert cli.call(predict.define_flags, predict.main, args) == 0
  out = capsys.readouterr().out
  for stem in SAMPLE_TEST_INDEX:
    assert f"examples/images/{stem}.png" in out
