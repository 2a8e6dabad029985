"""visualize: every picture is written, at its stated size, from a real run and from arrays."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.tools import cli, visualize

try:  # tests/ on sys.path (pytest's default): the same module, so one shared run per session
  import test_predict as shared
except ImportError:
  from tests import test_predict as shared


def visualize_main(args) -> int:
  """The command line `python -m alexnet_jax.visualize ARGS`, in this process."""
  return cli.call(visualize.define_flags, visualize.main, args)


def expected_size(picture: str) -> tuple[int, int]:
  width, height = visualize.FIGSIZE[picture]
  return round(width * visualize.DPI), round(height * visualize.DPI)


def assert_picture(path, picture: str) -> None:
  path = pathlib.Path(path)
  assert path.is_file(), path
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == expected_size(picture)
    assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return shared.shared_run(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  return shared.write_image(tmp_path_factory.mktemp("vis") / "shirt.png", 50, 40, mode="L")


@pytest.mark.parametrize("picture,extra", [
    ("filters", []),
    ("activations", ["--layer=conv2", "--max_channels=12"]),
    ("occlusion", ["--patch=16", "--stride=16", "--label=Sneaker"]),
    ("saliency", ["--label=3"]),
    ("gradcam", []),
])
def test_pictures_of_a_checkpoint(run, image, tmp_path, capsys, picture, extra):
  out = tmp_path / f"{picture}.png"
  args = [picture, f"--workdir={run}", f"--out={out}", *extra]
  if picture != "filters":
    args.append(str(image))
  assert visualize_main(args) == 0
  assert capsys.readouterr().out.strip() == f"wrote {out}"
  assert_picture(out, picture)


def test_curves_go_to_the_run_folder_by_default(run, capsys):
  assert visualize_main(["curves", f"--workdir={run}"]) == 0
  assert_picture(run / "pictures" / "curves.png", "curves")


def test_filters_of_the_paper_variant_show_two_towers(tmp_path):
  kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 96))
  fig = visualize.filters_figure(kernel, "paper", "paper variant")
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["tower 1: filters 0-47", "tower 2: filters 48-95"]
  assert_picture(visualize.save(fig, tmp_path / "f.png"), "filters")


def test_curves_from_metrics_records(tmp_path):
  records = [{"step": s, "train/loss": 2.0 / s, "train/top1": 0.1 * s, "train/epoch": s / 10}
             for s in range(1, 6)]
  records += [{"step": 5, "eval/loss": 0.5, "eval/top1": 0.6, "train/epoch": 0.5},
              {"step": 5, "eval/loss": 0.5, "eval/top1": 0.6, "eval/checkpoint_step": 5}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  fig = visualize.curves_figure(visualize.read_metrics(tmp_path), "run")
  lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
  assert set(lines) == {"train/loss", "eval/loss", "train/top1", "eval/top1"}
  assert list(lines["eval/top1"].get_xdata()) == [5]  # the --mode=eval repeat is left out
  assert_picture(visualize.save(fig, tmp_path / "c.png"), "curves")


def test_the_filters_image_goes_to_tensorboard_at_each_evaluation(run):
  from tensorboardX.proto import event_pb2
  import struct
  images = []
  for path in (run / "tensorboard").iterdir():
    data = path.read_bytes()
    offset = 0
    while offset < len(data):  # TFRecord framing: length, crc, event, crc
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      images += [(event.step, v.tag) for v in event.summary.value if v.HasField("image")]
  assert images == [(2, "filters/conv1")]  # the one evaluation, at step 2


def test_user_mistakes_are_one_line(run, tmp_path, capsys):
  assert visualize_main(["saliency", f"--workdir={run}", str(tmp_path / "none.png")]) == 1
  assert "none.png" in capsys.readouterr().err
  assert visualize_main(["activations", f"--workdir={run}", "--layer=fc7",
                         str(shared.write_image(tmp_path / "x.png"))]) == 1
  assert "no spatial maps" in capsys.readouterr().err
  assert visualize_main(["occlusion", f"--workdir={run}", "--label=giraffe",
                         str(tmp_path / "x.png")]) == 1
  assert "label='giraffe'" in capsys.readouterr().err
  assert visualize_main(["curves", f"--workdir={tmp_path}"]) == 1
  assert "metrics.jsonl" in capsys.readouterr().err
  assert visualize_main(["mosaic", f"--workdir={run}"]) == 2
  assert "choose one of filters" in capsys.readouterr().err
  assert visualize_main(["saliency", f"--workdir={run}"]) == 2
  assert "needs an IMAGE" in capsys.readouterr().err
