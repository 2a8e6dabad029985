"""visualize: every picture is written, at its stated size, from a real run and from arrays."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from alexnet_jax.inference import figures
from alexnet_jax.tools import cli, visualize

try:  # tests/ on sys.path (pytest's default): the same module, so one shared run per session
  import test_predict as shared
except ImportError:
  from tests import test_predict as shared


def visualize_main(args) -> int:
  """The command line `python -m alexnet_jax.tools.visualize ARGS`, in this process."""
  return cli.call(visualize.define_flags, visualize.main, args)


def expected_size(picture: str) -> tuple[int, int]:
  width, height = figures.FIGSIZE[picture]
  return round(width * figures.DPI), round(height * figures.DPI)


def assert_picture(path, picture: str) -> None:
  """A PNG of FIGSIZE x DPI pixels (filters: that width, as tall as its grid needs, at most
  that height), not blank."""
  path = pathlib.Path(path)
  assert path.is_file(), path
  with Image.open(path) as image:
    assert image.format == "PNG"
    if picture == "filters":
      width, height = expected_size(picture)
      assert image.size[0] == width and 0.5 * height < image.size[1] <= height
    else:
      assert image.size == expected_size(picture)
    assert np.asarray(image.convert("L")).std() > 0  # not a blank canvas


def longest_blank_band(path) -> int:
  """The most consecutive rows of the PNG that are all white (pixels)."""
  with Image.open(path) as image:
    blank = (np.asarray(image.convert("L")) >= 250).all(axis=1)
  longest = run = 0
  for row in blank:
    run = run + 1 if row else 0
    longest = max(longest, run)
  return longest


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


def test_activations_title_names_the_class(run, image, tmp_path, monkeypatch):
  titles = []
  real_save = figures.save

  def save(fig, path):
    titles.append(fig._suptitle.get_text())
    return real_save(fig, path)
  monkeypatch.setattr(figures, "save", save)
  assert visualize_main(["activations", f"--workdir={run}", f"--out={tmp_path / 'a.png'}",
                         "--layer=pool1", "--max_channels=4", str(image)]) == 0
  assert "\nclass: " in titles[0] and "(top class, p=" in titles[0]


def test_curves_go_to_the_run_folder_by_default(run, capsys):
  assert visualize_main(["curves", f"--workdir={run}"]) == 0
  assert_picture(run / "pictures" / "curves.png", "curves")


def test_filters_of_the_paper_variant_show_two_towers(tmp_path):
  kernel = np.random.default_rng(0).normal(size=(11, 11, 3, 96))
  fig = figures.filters_figure(kernel, "paper", "paper variant")
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["tower 1: filters 0-47", "tower 2: filters 48-95"]
  assert_picture(figures.save(fig, tmp_path / "f.png"), "filters")


def test_filters_of_the_d2l_variant_fill_the_canvas(tmp_path):
  kernel = np.random.default_rng(0).normal(size=(11, 11, 1, 96))
  fig = figures.filters_figure(kernel, "d2l", "d2l variant")
  (ax,) = fig.axes
  # 96 filters of 11x11 with 1-pixel gaps: 6 rows of 16 (not 8 of 12, which left ~40% of the
  # canvas empty), filling the panel's width.
  assert ax.get_images()[0].get_array().shape == (6 * 12 - 1, 16 * 12 - 1)
  fig.canvas.draw()
  drawn = ax.get_window_extent()
  width, _ = fig.get_size_inches() * figures.DPI
  assert drawn.width > 0.9 * width
  assert_picture(figures.save(fig, tmp_path / "f.png"), "filters")


@pytest.mark.parametrize("variant,shape", [("paper", (11, 11, 3, 96)), ("d2l", (11, 11, 1, 96)),
                                           ("torchvision", (11, 11, 3, 64))])
def test_filters_picture_has_no_empty_band(tmp_path, variant, shape):
  # The figure is as tall as its grid: the fixed 6-inch canvas left 71 (d2l) and 93 (paper)
  # blank rows between the title and the grid (the grid centred in a taller box).
  kernel = np.random.default_rng(0).normal(size=shape)
  path = figures.save(figures.filters_figure(kernel, variant, variant), tmp_path / "f.png")
  assert_picture(path, "filters")
  assert longest_blank_band(path) <= 15


@pytest.mark.parametrize("p,text", [(0.1077, "0.108"), (1.0, "1.000"), (0.001, "0.001"),
                                    (3.2e-05, "3.2e-05"), (0.00099, "9.9e-04"), (0.0, "0")])
def test_probabilities_below_a_thousandth_use_scientific_notation(p, text):
  assert figures.format_probability(p) == text


def _grey(size=32):
  return np.random.default_rng(1).uniform(0, 255, (size, size, 1))


def test_a_zero_gradcam_map_is_said_in_words_without_a_colour_bar(tmp_path):
  zero = figures.gradcam_figure(_grey(), np.zeros((32, 32)), "Bag", "t")
  texts = [t.get_text() for ax in zero.axes for t in ax.texts]
  assert texts == [figures.ZERO_MAP_TEXT]
  assert len(zero.axes) == 2  # input and map, no colour bar
  assert_picture(figures.save(zero, tmp_path / "zero.png"), "gradcam")
  some = figures.gradcam_figure(_grey(), np.eye(32), "Bag", "t")
  assert len(some.axes) == 3 and not [t for ax in some.axes for t in ax.texts]


def test_a_colour_bar_multiplier_goes_into_its_label_not_over_the_title(tmp_path):
  heat = 3e-6 + 2e-6 * np.random.default_rng(0).random((32, 32))
  fig = figures.occlusion_figure(_grey(), heat, "Sneaker", 3.2e-6, 8, 4, "t")
  bar = fig.axes[2]
  assert bar.get_ylabel().endswith("(\u00d71e-6)")
  assert not bar.yaxis.get_offset_text().get_visible()
  assert fig.axes[0].get_title() == "input: P(Sneaker) = 3.2e-06"
  figures.save(fig, tmp_path / "o.png")


def test_curves_from_metrics_records(tmp_path):
  records = [{"step": s, "train/loss": 2.0 / s, "train/top1": 0.1 * s, "train/epoch": s / 10}
             for s in range(1, 6)]
  records += [{"step": 5, "eval/loss": 0.5, "eval/top1": 0.6, "train/epoch": 0.5},
              {"step": 5, "eval/loss": 0.5, "eval/top1": 0.6, "eval/checkpoint_step": 5}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  fig = figures.curves_figure(visualize.read_metrics(tmp_path), "run")
  lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
  assert set(lines) == {"train/loss", "eval/loss", "train/top1", "eval/top1"}
  assert list(lines["eval/top1"].get_xdata()) == [5]  # the --mode=eval repeat is left out
  for ax in fig.axes[:2]:  # whole steps only, even on a 5-step run
    ticks = ax.get_xticks()
    assert len(ticks) > 1 and np.all(ticks == np.round(ticks))
  assert_picture(figures.save(fig, tmp_path / "c.png"), "curves")


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
  err = capsys.readouterr().err
  assert "no spatial maps" in err and "choose one of conv1, pool1" in err
  assert "fc" not in err.split("choose one of")[1] and "flatten" not in err
  assert visualize_main(["occlusion", f"--workdir={run}", "--label=giraffe",
                         str(tmp_path / "x.png")]) == 1
  assert "label='giraffe'" in capsys.readouterr().err
  assert visualize_main(["curves", f"--workdir={tmp_path}"]) == 1
  assert "metrics.jsonl" in capsys.readouterr().err
  assert visualize_main(["mosaic", f"--workdir={run}"]) == 2
  assert "choose one of filters" in capsys.readouterr().err
  assert visualize_main(["saliency", f"--workdir={run}"]) == 2
  assert "needs an IMAGE" in capsys.readouterr().err
