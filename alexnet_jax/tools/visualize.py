"""Pictures of a trained AlexNet, as PNG files (matplotlib, Agg backend: no display needed).

  python -m alexnet_jax.tools.visualize filters     --workdir=DIR [--step=N]
  python -m alexnet_jax.tools.visualize activations --workdir=DIR --layer=conv2 IMAGE
  python -m alexnet_jax.tools.visualize occlusion   --workdir=DIR [--label=CLASS] [--patch=P]
                                                    [--stride=S] IMAGE
  python -m alexnet_jax.tools.visualize saliency    --workdir=DIR [--label=CLASS] IMAGE
  python -m alexnet_jax.tools.visualize gradcam     --workdir=DIR [--label=CLASS] IMAGE
  python -m alexnet_jax.tools.visualize curves      --workdir=DIR

The first argument is the picture: filters (conv1 filters as a grid, towers side by side),
activations (activation maps of one layer for an image), occlusion (class probability as a
grey square slides over the image), saliency (gradient of the class score with respect to the
pixels), gradcam (Grad-CAM on conv5), curves (loss and top-1 from DIR/metrics.jsonl).

`--torchvision=FILE.pth` replaces `--workdir` for torchvision weights (not for `curves`).
`--out=FILE.png` names the picture; by default it goes to DIR/pictures/ (or the current
directory with --torchvision) as `<picture>[_<image name>].png`. CLASS is an index or a class
name ('tabby', 'Sneaker'); without it the model's top class is used. The numbers come from
alexnet_jax.inference; this module only draws them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from absl import flags

from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.tools import cli

FLAGS = flags.FLAGS

DPI = 100
# Figure sizes in inches; the PNG is DPI times that in pixels (no tight bounding box, so the
# size is known in advance). filters: that width, and at most that height (filters_figure).
FIGSIZE = {
    "filters": (12.0, 6.0),
    "activations": (14.0, 6.0),
    "occlusion": (9.0, 5.0),
    "saliency": (9.0, 5.0),
    "gradcam": (9.0, 5.0),
    "curves": (12.0, 4.5),
}
PICTURES = tuple(FIGSIZE)


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")  # files only; never needs a display
  import matplotlib.pyplot as plt
  return plt


def save(fig, path: str | os.PathLike) -> pathlib.Path:
  """Writes `fig` as a PNG at DPI (its size in inches, FIGSIZE's, times DPI pixels), creating
  the folder; closes the figure and returns the path."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=DPI)
  _pyplot().close(fig)
  return path


def _show_image(ax, image: np.ndarray, title: str = "") -> None:
  """A float (H, W, C) image in pixel units (0-255)."""
  shown = np.clip(np.asarray(image, np.float32) / 255.0, 0.0, 1.0)
  if shown.shape[-1] == 1:
    ax.imshow(shown[..., 0], cmap="gray", vmin=0, vmax=1)
  else:
    ax.imshow(shown)
  ax.set_title(title)
  ax.axis("off")


def _figure(kind: str, columns: int, top: float = 0.78, width_ratios=None):
  """A row of `columns` axes, with room above them for a suptitle of up to three lines and
  for a colour bar on the right."""
  plt = _pyplot()
  fig, axes = plt.subplots(1, columns, figsize=FIGSIZE[kind], dpi=DPI,
                           width_ratios=width_ratios)
  fig.subplots_adjust(left=0.03, right=0.88, bottom=0.05, top=top, wspace=0.25)
  return fig, np.atleast_1d(axes)


def format_probability(p: float) -> str:
  """A probability for a title: 3 decimals from 0.001 up ('0.108'), scientific below
  ('3.2e-05'), so that a small one never reads as 'p=0.000'; exactly zero is '0'."""
  p = float(p)
  if p == 0.0:
    return "0"
  if abs(p) < 0.001:
    return f"{p:.1e}"
  return f"{p:.3f}"


def _colorbar(fig, mappable, ax, label: str):
  """A colour bar with plain tick labels: no offset ('1e-4 + 1.01e-1'), and a power-of-ten
  multiplier, when the values need one, written into the label ('... (x1e-6)') instead of
  above the bar, where it ran into the panel title."""
  from matplotlib.ticker import ScalarFormatter
  bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.03)
  formatter = ScalarFormatter(useOffset=False)
  bar.formatter = formatter
  bar.update_ticks()
  formatter.set_locs(bar.ax.yaxis.get_majorticklocs())  # decides orderOfMagnitude
  if formatter.orderOfMagnitude:
    label = f"{label} (\u00d71e{formatter.orderOfMagnitude})"
  bar.ax.yaxis.get_offset_text().set_visible(False)
  bar.set_label(label)
  return bar


ZERO_MAP_TEXT = "map is zero for this class"


def _zero_map_note(ax) -> None:
  """Says on the panel that its map is zero everywhere (instead of a flat colour wash)."""
  ax.text(0.5, 0.5, ZERO_MAP_TEXT, transform=ax.transAxes, ha="center", va="center",
          fontsize=13, color="black",
          bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.9})


# --------------------------------------------------------------------------------------------
# Figures: arrays in, matplotlib figures out


def filters_figure(kernel: np.ndarray, variant: str, title: str):
  """conv1's filters, a (kh, kw, channels, count) kernel, each scaled to its own min..max; the
  paper variant's two towers side by side (the paper's figure 3).

  FIGSIZE['filters'] wide; as tall as the grid drawn across the full width needs (at most
  FIGSIZE's height), so that no empty band lies between the title and the grid.
  """
  from alexnet_jax import inference
  towers = inference.towers_of(variant)
  halves = np.split(np.asarray(kernel), towers, axis=-1)
  width, most_height = FIGSIZE["filters"]
  # Inches: each tower's panel, and the tallest grid allowed (the box the grid's shape fits:
  # the panels' height in the earlier fixed layout, so grids keep their shapes).
  panel = width * (1 - 2 * _FILTERS_SIDE) / (towers + _FILTERS_WSPACE * (towers - 1))
  box = most_height * _FILTERS_BOX
  # The grid's shape fits the panel (96 d2l filters: 6 rows of 16), so that it fills it.
  grids = [inference.conv1_filter_grid(half, aspect=panel / box) for half in halves]
  grid_height, grid_width = grids[0].shape[:2]
  drawn = min(box, panel * grid_height / grid_width)  # the grid's height in inches
  plt = _pyplot()
  fig = plt.figure(figsize=(width, most_height), dpi=DPI)
  axes = [fig.add_axes((0, 0, 1, 1)) for _ in halves]
  for index, (ax, half, grid) in enumerate(zip(axes, halves, grids)):
    if grid.shape[-1] == 1:
      ax.imshow(grid[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
      ax.imshow(grid, interpolation="nearest")
    first = index * half.shape[-1]
    label = f"tower {index + 1}: " if towers > 1 else ""
    ax.set_title(f"{label}filters {first}-{first + half.shape[-1] - 1}")
    ax.axis("off")
  kh, kw, channels, count = np.shape(kernel)
  suptitle = fig.suptitle(f"{title}\nconv1: {count} filters of {kh}x{kw}x{channels}, each "
                          "scaled to its own min..max", va="top")
  # Lay out with room to spare, measure the blank between the titles, take it out.
  _place_filters(fig, axes, suptitle, panel, drawn, _FILTERS_HEADER)
  fig.canvas.draw()
  title_top = max(ax.title.get_window_extent().y1 for ax in axes)
  blank = (suptitle.get_window_extent().y0 - title_top) / DPI  # inches
  _place_filters(fig, axes, suptitle, panel, drawn,
                 _FILTERS_HEADER - max(0.0, blank - _FILTERS_TITLE_GAP))
  return fig


# The filters picture's layout, in inches (or fractions of the width: _FILTERS_SIDE, and
# _FILTERS_WSPACE of a panel's width between the towers).
_FILTERS_SIDE, _FILTERS_WSPACE = 0.03, 0.25
_FILTERS_HEADER, _FILTERS_FOOTER, _FILTERS_TOP = 1.2, 0.1, 0.08
_FILTERS_BOX = 0.73  # the tallest grid, a fraction of FIGSIZE's height
_FILTERS_TITLE_GAP = 0.08  # between the figure's title and the panels' titles


def _place_filters(fig, axes, suptitle, panel: float, drawn: float, header: float) -> None:
  """Sizes `fig` to `header` + the grid's `drawn` height + a footer and puts each tower's
  axes, `panel` inches wide, side by side under the title."""
  width = fig.get_size_inches()[0]
  height = header + drawn + _FILTERS_FOOTER
  fig.set_size_inches(width, height)
  used = panel * (len(axes) + _FILTERS_WSPACE * (len(axes) - 1))
  left = (width - used) / 2
  for index, ax in enumerate(axes):
    x = left + index * panel * (1 + _FILTERS_WSPACE)
    ax.set_position((x / width, _FILTERS_FOOTER / height, panel / width, drawn / height))
  suptitle.set_y(1 - _FILTERS_TOP / height)


def activations_figure(image: np.ndarray, maps: np.ndarray, layer: str, title: str,
                       max_channels: int = 32):
  """The uint8 or float (H, W, C) image (0-255) and the `max_channels` most active channels
  of one (h, w, C) stage output. UserError for a stage without spatial maps (fc layers)."""
  from alexnet_jax import inference
  maps = np.asarray(maps, np.float32)
  if maps.ndim != 3:
    raise UserError(f"layer={layer!r} has no spatial maps; choose a conv or pool stage.")
  strongest = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:max_channels]
  tiles = np.transpose(maps[..., strongest], (2, 0, 1))[..., None]
  high = float(tiles.max()) or 1.0
  columns = int(np.ceil(np.sqrt(len(strongest) * 2)))
  mosaic = inference.tile(tiles / high, columns, gap=1)[..., 0]
  # The 1-pixel separators are 1.0 from _tile; mark them NaN so that they show as blank.
  separators = inference.tile(np.zeros_like(tiles), columns, gap=1)[..., 0] == 1.0
  mosaic = np.where(separators, np.nan, mosaic * high)
  fig, axes = _figure("activations", 2, top=0.86, width_ratios=(1.0, 2.4))
  _show_image(axes[0], image, "input")
  shown = axes[1].imshow(mosaic, cmap="viridis", vmin=0, vmax=high, interpolation="nearest")
  axes[1].axis("off")
  h, w, c = maps.shape
  axes[1].set_title(f"{layer}: the {len(strongest)} most active of {c} channels ({h}x{w}), "
                    "strongest first")
  _colorbar(fig, shown, axes[1], "activation")
  fig.suptitle(title)
  return fig


def occlusion_figure(image: np.ndarray, heat: np.ndarray, class_name: str, baseline: float,
                     patch: int, stride: int, title: str):
  """The (H, W, C) image (0-255), and over it `heat`, the (H, W) class probability with the
  grey `patch`-pixel square covering each pixel (inference.occlusion_to_pixels)."""
  fig, axes = _figure("occlusion", 2, top=0.74)
  _show_image(axes[0], image, f"input: P({class_name}) = {format_probability(baseline)}")
  _show_image(axes[1], image, f"P({class_name}), square covering each pixel\n"
                              "(dark = the evidence the network used)")
  shown = axes[1].imshow(heat, cmap="inferno", alpha=0.65)
  _colorbar(fig, shown, axes[1], "probability (mean over squares)")
  fig.suptitle(f"{title}\nocclusion: a {patch}x{patch} grey square slides in steps of {stride}")
  return fig


def _heat_figure(kind: str, image: np.ndarray, heat: np.ndarray, heading: str, label: str,
                 cmap: str, title: str):
  """The image, and the image under `heat`; a map that is zero everywhere is said in words on
  the panel (no colour bar), not drawn as one flat colour."""
  fig, axes = _figure(kind, 2)
  _show_image(axes[0], image, "input")
  _show_image(axes[1], image, heading)
  heat = np.asarray(heat, np.float32)
  if not np.any(heat):
    _zero_map_note(axes[1])
  else:
    shown = axes[1].imshow(heat, cmap=cmap, alpha=0.6)
    _colorbar(fig, shown, axes[1], label)
  fig.suptitle(title)
  return fig


def saliency_figure(image: np.ndarray, sal: np.ndarray, class_name: str, title: str):
  """The (H, W, C) image and over it `sal`, (H, W) |d score / d pixel| (inference.saliency)."""
  return _heat_figure("saliency", image, sal, f"|d score({class_name}) / d pixel|",
                      "|gradient|, max over channels", "hot", title)


def gradcam_figure(image: np.ndarray, cam: np.ndarray, class_name: str, title: str):
  """The (H, W, C) image and over it `cam`, the (H, W) Grad-CAM map upsampled to the image;
  when `cam` is zero everywhere (no conv5 feature raises the class score), the words
  ZERO_MAP_TEXT instead."""
  return _heat_figure("gradcam", image, cam, f"Grad-CAM on conv5 for {class_name}",
                      "ReLU(sum_k alpha_k A_k), upsampled", "jet", title)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of DIR/metrics.jsonl (one JSON object per line, metrics_writer.py); UserError
  when the file is missing."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    raise UserError(f"No {path}: point --workdir at a training run.")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_figure(records: Sequence[dict[str, Any]], title: str):
  """Train and eval loss and top-1 against the step, with the epoch on the top axis; UserError
  when the records hold no train/ or eval/ metrics."""
  training = [r for r in records if "train/loss" in r]
  # Evaluations during training; --mode=eval records repeat a checkpoint's numbers.
  evaluations = [r for r in records if "eval/loss" in r and "eval/checkpoint_step" not in r]
  if not training and not evaluations:
    raise UserError("metrics.jsonl holds no train/ or eval/ metrics yet.")
  from matplotlib.ticker import MaxNLocator
  fig, axes = _figure("curves", 2)
  for ax, metric in zip(axes, ("loss", "top1")):
    for prefix, rows, style in (("train", training, "-"), ("eval", evaluations, "o-")):
      rows = sorted({r["step"]: r for r in rows}.values(), key=lambda r: r["step"])
      if rows:
        ax.plot([r["step"] for r in rows], [r[f"{prefix}/{metric}"] for r in rows], style,
                label=f"{prefix}/{metric}", markersize=4)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.set_ylabel("top-1 accuracy" if metric == "top1" else "cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    _add_epoch_axis(ax, records)
  fig.suptitle(title)
  fig.tight_layout()
  return fig


def _add_epoch_axis(ax, records) -> None:
  with_epoch = [r for r in records if r.get("train/epoch") and r.get("step")]
  if not with_epoch:
    return
  steps_per_epoch = with_epoch[-1]["step"] / with_epoch[-1]["train/epoch"]
  top = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch,
                                             lambda e: e * steps_per_epoch))
  top.set_xlabel("epoch")


# --------------------------------------------------------------------------------------------
# Command line


@dataclasses.dataclass(frozen=True)
class Request:
  """One picture to make: the command line's sub-command, IMAGE and flags."""
  picture: str
  image: str | None = None
  workdir: str | None = None
  step: int | None = None
  torchvision: str | None = None
  image_size: int | None = None
  out: str | None = None
  layer: str = "conv1"
  max_channels: int = 32
  label: str | None = None
  patch: int | None = None
  stride: int | None = None
  fill: float = 128.0


def _default_out(args: Request, picture: str) -> pathlib.Path:
  name = picture
  if getattr(args, "image", None):
    name += "_" + pathlib.Path(args.image).stem
  if picture == "activations":
    name += f"_{args.layer}"
  folder = pathlib.Path(args.workdir) / "pictures" if args.workdir else pathlib.Path(".")
  return folder / f"{name}.png"


def _load(args: Request):
  from alexnet_jax import inference
  return inference.load_model(args.workdir, args.torchvision, args.step, args.image_size)


def _input_image(loaded, path: str) -> np.ndarray:
  """The image as the model sees it, in pixel units at the model's input size."""
  from alexnet_jax import inference
  return inference.resize_to_model(loaded.load_image(path), loaded.image_size)


def _target(loaded, image: np.ndarray, label: str | None) -> tuple[int, str, float]:
  """(class, caption, its probability): the given class, or the top one."""
  probabilities = np.asarray(loaded.probe.probabilities(image[None]))[0]
  if label is None:
    index, how = int(np.argmax(probabilities)), "top class"
  else:
    index, how = loaded.class_index(label), "given class"
  name = loaded.class_name(index)
  probability = float(probabilities[index])
  return index, f"{name} ({how}, p={format_probability(probability)})", probability


def _short(name: str) -> str:
  return name.split(",")[0]


def make_picture(args: Request) -> pathlib.Path:
  """Computes and writes the picture `args.picture`; returns its path. UserError for a
  missing IMAGE, --workdir or class, an unreadable image, or an unknown picture."""
  out = pathlib.Path(args.out) if args.out else _default_out(args, args.picture)
  if args.picture == "curves":
    if not args.workdir:
      raise UsageError("curves needs --workdir (the run whose metrics.jsonl to draw).")
    return save(curves_figure(read_metrics(args.workdir), f"training curves: {args.workdir}"),
                out)
  loaded = _load(args)
  if args.picture == "filters":
    fig = filters_figure(loaded.params["conv1"]["kernel"], loaded.model_config["variant"],
                         loaded.description)
    return save(fig, out)
  if not args.image:
    raise UsageError(f"{args.picture} needs an IMAGE path.")
  image = _input_image(loaded, args.image)
  title = f"{pathlib.Path(args.image).name} | {loaded.description}"
  if args.picture == "activations":  # before any computing: a refused layer fails fast
    maps = np.asarray(loaded.probe.maps(image[None], args.layer))[0]
  index, caption, probability = _target(loaded, image, args.label)
  name = _short(loaded.class_name(index))
  title = f"{title}\nclass: {caption}"
  if args.picture == "activations":
    return save(activations_figure(image, maps, args.layer, title, args.max_channels), out)
  if args.picture == "occlusion":
    size = loaded.image_size
    patch = args.patch or max(1, round(size / 7))
    stride = args.stride or max(1, patch // 2)
    from alexnet_jax import inference
    values = loaded.probe.occlusion(image, index, patch=patch, stride=stride, fill=args.fill)
    heat = inference.occlusion_to_pixels(values, (size, size), patch=patch, stride=stride)
    return save(occlusion_figure(image, heat, name, probability, patch, stride, title), out)
  if args.picture == "saliency":
    return save(saliency_figure(image, loaded.probe.saliency(image, index), name, title), out)
  if args.picture == "gradcam":
    from alexnet_jax import inference
    cam = inference.upsample(loaded.probe.grad_cam(image, index), image.shape[:2])
    return save(gradcam_figure(image, cam, name, title), out)
  raise UsageError(f"unknown picture {args.picture!r}; choose one of {', '.join(PICTURES)}.")


def define_flags() -> None:
  """visualize's flags (absl); the picture and IMAGE are the positional arguments."""
  from alexnet_jax.tools import predict
  predict.define_model_flags()
  cli.define("string", "out", None, "output PNG (default DIR/pictures/<picture>_<image>.png)")
  cli.define("string", "layer", "conv1",
             "activations: a stage with maps: conv1, pool1, conv2, pool2, conv3, conv4, conv5, "
             "pool5 (and avgpool for torchvision)")
  cli.define("integer", "max_channels", 32, "activations: how many channels to show")
  cli.define("string", "label", None,
             "occlusion, saliency, gradcam (and the class named in the activations title): "
             "class index or name (default: the top predicted class)")
  cli.define("integer", "patch", None, "occlusion: square side (default size/7)")
  cli.define("integer", "stride", None, "occlusion: step (default patch/2)")
  cli.define("float", "fill", 128.0, "occlusion: grey level, 0-255")


def request_from_flags(argv: Sequence[str]) -> Request:
  """The Request of absl's leftover `argv` (program, PICTURE [IMAGE]) and the parsed flags;
  UsageError for a missing or unknown picture or extra arguments."""
  positional = list(argv[1:])
  if not positional:
    raise UsageError(f"Name the picture first: one of {', '.join(PICTURES)}.")
  picture, rest = positional[0], positional[1:]
  if picture not in PICTURES:
    raise UsageError(f"Unknown picture {picture!r}; choose one of {', '.join(PICTURES)}.")
  if len(rest) > 1 or (rest and picture in ("filters", "curves")):
    raise UsageError(f"Unexpected arguments for {picture}: {' '.join(rest)}.")
  fields = {f.name for f in dataclasses.fields(Request)} - {"picture", "image"}
  return Request(picture=picture, image=rest[0] if rest else None,
                 **{name: FLAGS[name].value for name in fields})


@cli.report_user_errors
def main(argv: Sequence[str]) -> int:
  """Writes one picture and prints `wrote PATH`; returns 0, or 1 (2) on a UserError
  (UsageError)."""
  from alexnet_jax.runtime import logs
  logs.quiet_library_logs()
  path = make_picture(request_from_flags(argv))
  print(f"wrote {path}")
  return 0


def run() -> None:
  """`python -m alexnet_jax.tools.visualize`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
