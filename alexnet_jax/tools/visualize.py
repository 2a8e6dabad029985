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
name ('tabby', 'Sneaker'); without it the model's top class is used. This module is the
command line: the numbers come from alexnet_jax.inference, the drawing from
alexnet_jax.inference.figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from absl import flags

from alexnet_jax import inference
from alexnet_jax.checkpoint import layout
from alexnet_jax.errors import UsageError, UserError
from alexnet_jax.inference import figures
from alexnet_jax.runtime import logs
from alexnet_jax.tools import cli, predict

FLAGS = flags.FLAGS

# The pictures, named as the first argument.
PICTURES = tuple(figures.FIGSIZE)


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of DIR/metrics.jsonl (one JSON object per line, metrics_writer.py); UserError
  when the file is missing."""
  path = pathlib.Path(workdir) / layout.METRICS_FILE
  if not path.is_file():
    raise UserError(f"No {path}: point --workdir at a training run.")
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
  return inference.load_model(args.workdir, args.torchvision, args.step, args.image_size)


def _input_image(loaded, path: str) -> np.ndarray:
  """The image as the model sees it, in pixel units at the model's input size."""
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
  return index, f"{name} ({how}, p={figures.format_probability(probability)})", probability


def _short(name: str) -> str:
  return name.split(",")[0]


def make_picture(args: Request) -> pathlib.Path:
  """Computes and writes the picture `args.picture`; returns its path. UserError for a
  missing IMAGE, --workdir or class, an unreadable image, or an unknown picture."""
  out = pathlib.Path(args.out) if args.out else _default_out(args, args.picture)
  if args.picture == "curves":
    if not args.workdir:
      raise UsageError("curves needs --workdir (the run whose metrics.jsonl to draw).")
    return figures.save(
        figures.curves_figure(read_metrics(args.workdir), f"training curves: {args.workdir}"),
        out)
  loaded = _load(args)
  if args.picture == "filters":
    fig = figures.filters_figure(loaded.params["conv1"]["kernel"],
                                 loaded.model_config["variant"], loaded.description)
    return figures.save(fig, out)
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
    return figures.save(
        figures.activations_figure(image, maps, args.layer, title, args.max_channels), out)
  if args.picture == "occlusion":
    size = loaded.image_size
    patch = args.patch or max(1, round(size / 7))
    stride = args.stride or max(1, patch // 2)
    values = loaded.probe.occlusion(image, index, patch=patch, stride=stride, fill=args.fill)
    heat = inference.occlusion_to_pixels(values, (size, size), patch=patch, stride=stride)
    return figures.save(
        figures.occlusion_figure(image, heat, name, probability, patch, stride, title), out)
  if args.picture == "saliency":
    return figures.save(
        figures.saliency_figure(image, loaded.probe.saliency(image, index), name, title), out)
  if args.picture == "gradcam":
    cam = inference.upsample(loaded.probe.grad_cam(image, index), image.shape[:2])
    return figures.save(figures.gradcam_figure(image, cam, name, title), out)
  raise UsageError(f"unknown picture {args.picture!r}; choose one of {', '.join(PICTURES)}.")


def define_flags() -> None:
  """visualize's flags (absl); the picture and IMAGE are the positional arguments."""
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
  logs.quiet_library_logs()
  path = make_picture(request_from_flags(argv))
  print(f"wrote {path}")
  return 0


def run() -> None:
  """`python -m alexnet_jax.tools.visualize`: absl flags, then main."""
  cli.run(define_flags, main)


if __name__ == "__main__":
  run()
