"""The pictures of a trained AlexNet drawn with matplotlib: arrays in, figures out, each at its
stated size (FIGSIZE inches x DPI), written as PNG files by `save` (Agg backend: no display).

filters (conv1's filters as a grid, towers side by side), activations (the most active maps of
one stage), occlusion (class probability as a grey square slides over the image), saliency and
gradcam (a map over the image), curves (loss and top-1 of metrics.jsonl's records). The numbers
come from the rest of alexnet_jax.inference; `python -m alexnet_jax.tools.visualize` is the
command line.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Sequence

import numpy as np

from alexnet_jax.errors import UserError
from alexnet_jax.inference import filters

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


def _pyplot():
  """matplotlib.pyplot on the Agg backend, imported on first drawing (not with this module: it
  is heavy, and choosing the backend at import would change it for whoever imports us)."""
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
  from matplotlib.ticker import ScalarFormatter  # matplotlib only when drawing (_pyplot)
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


def filters_figure(kernel: np.ndarray, variant: str, title: str):
  """conv1's filters, a (kh, kw, channels, count) kernel, each scaled to its own min..max; the
  paper variant's two towers side by side (the paper's figure 3).

  FIGSIZE['filters'] wide; as tall as the grid drawn across the full width needs (at most
  FIGSIZE's height), so that no empty band lies between the title and the grid.
  """
  towers = filters.towers_of(variant)
  halves = np.split(np.asarray(kernel), towers, axis=-1)
  width, most_height = FIGSIZE["filters"]
  # Inches: each tower's panel, and the tallest grid allowed (the box the grid's shape fits:
  # the panels' height in the earlier fixed layout, so grids keep their shapes).
  panel = width * (1 - 2 * _FILTERS_SIDE) / (towers + _FILTERS_WSPACE * (towers - 1))
  box = most_height * _FILTERS_BOX
  # The grid's shape fits the panel (96 d2l filters: 6 rows of 16), so that it fills it.
  grids = [filters.conv1_filter_grid(half, aspect=panel / box) for half in halves]
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
  maps = np.asarray(maps, np.float32)
  if maps.ndim != 3:
    raise UserError(f"layer={layer!r} has no spatial maps; choose a conv or pool stage.")
  strongest = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")[:max_channels]
  tiles = np.transpose(maps[..., strongest], (2, 0, 1))[..., None]
  high = float(tiles.max()) or 1.0
  columns = int(np.ceil(np.sqrt(len(strongest) * 2)))
  mosaic = filters.tile(tiles / high, columns, gap=1)[..., 0]
  # The 1-pixel separators are 1.0 from _tile; mark them NaN so that they show as blank.
  separators = filters.tile(np.zeros_like(tiles), columns, gap=1)[..., 0] == 1.0
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


def curves_figure(records: Sequence[dict[str, Any]], title: str):
  """Train and eval loss and top-1 against the step, with the epoch on the top axis; UserError
  when the records hold no train/ or eval/ metrics."""
  training = [r for r in records if "train/loss" in r]
  # Evaluations during training; --mode=eval records repeat a checkpoint's numbers.
  evaluations = [r for r in records if "eval/loss" in r and "eval/checkpoint_step" not in r]
  if not training and not evaluations:
    raise UserError("metrics.jsonl holds no train/ or eval/ metrics yet.")
  from matplotlib.ticker import MaxNLocator  # matplotlib only when drawing (_pyplot)
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

