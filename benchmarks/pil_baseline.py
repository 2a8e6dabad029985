"""The plain way to load ImageNet for training: one process, one PIL call after another.

  python benchmarks/pil_baseline.py [--data_dir=PATH] [--num_images=1024]

Per image: read the file, `Image.open(...).convert('RGB')`, resize the shorter side to 256
(antialiased bilinear, torchvision's Resize), centre 256x256 crop, random 224x224 crop, random
horizontal flip, `np.asarray`. No draft mode, no threads, no colour noise. Prints one JSON line
with `images_per_sec`; benchmarks/input_pipeline.py measures the project's pipeline on the same
generated images (same flags), so the two lines compare directly.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import input_pipeline  # noqa: E402  (shares the dataset flags and generator)

flags.DEFINE_integer("resize_size", 256, "Shorter side before the crops.")
flags.DEFINE_integer("crop_size", 224, "Random crop.")
flags.DEFINE_integer("passes", 1, "Passes over the training images.")
FLAGS = flags.FLAGS


def load_train_image(path: pathlib.Path, resize_size: int, crop_size: int,
                     rng: np.random.Generator) -> np.ndarray:
  image = Image.open(path).convert("RGB")
  width, height = image.size
  scale = resize_size / min(width, height)
  resized_w = resize_size if width <= height else int(width * scale)
  resized_h = resize_size if height < width else int(height * scale)
  image = image.resize((resized_w, resized_h), Image.Resampling.BILINEAR)
  left, top = (resized_w - resize_size) // 2, (resized_h - resize_size) // 2
  image = image.crop((left, top, left + resize_size, top + resize_size))
  x, y = rng.integers(0, resize_size - crop_size + 1, size=2)
  image = image.crop((int(x), int(y), int(x) + crop_size, int(y) + crop_size))
  if rng.random() < 0.5:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return np.asarray(image)


def run(data_dir: pathlib.Path, description: dict) -> dict:
  """Times the loop; repeats it while other processes took CPU meanwhile (shared machine)."""
  for attempt in range(1, FLAGS.retries + 2):
    result = run_once(data_dir, description)
    result["attempt"] = attempt
    if result["other_processes_cpu_cores"] <= FLAGS.max_other_cores:
      break
  return result


def run_once(data_dir: pathlib.Path, description: dict) -> dict:
  paths = sorted((data_dir / "train").glob("*/*"))
  rng = np.random.default_rng(0)
  load_train_image(paths[0], FLAGS.resize_size, FLAGS.crop_size, rng)  # warm caches
  busy_before = input_pipeline.wait_for_idle(FLAGS.wait_for_idle_s)
  started = time.perf_counter()
  with input_pipeline.CpuMeter() as cpu:
    for _ in range(FLAGS.passes):
      for path in paths:
        load_train_image(path, FLAGS.resize_size, FLAGS.crop_size, rng)
  elapsed = time.perf_counter() - started
  images = len(paths) * FLAGS.passes
  return {"benchmark": "pil_baseline", "date": datetime.date.today().isoformat(),
          "workers": "1 process, 1 thread", "images_per_sec": round(images / elapsed, 1),
          "timed_images": images, "seconds": round(elapsed, 2),
          "cpu_cores_used": round(cpu.own_cores, 2),
          "other_processes_cpu_cores": round(cpu.other_cores, 2),
          "busy_cores_before": busy_before,
          "resize_size": FLAGS.resize_size, "crop_size": FLAGS.crop_size, **description,
          "note": FLAGS.note, "machine": input_pipeline.machine()}


def main(argv) -> None:
  del argv
  with tempfile.TemporaryDirectory(prefix="alexnet_jax_pil_") as tmp:
    if FLAGS.data_dir:
      data_dir, description = pathlib.Path(FLAGS.data_dir), {"data": FLAGS.data_dir}
    else:
      data_dir = input_pipeline.make_benchmark_dataset(
          pathlib.Path(tmp), num_images=FLAGS.num_images, num_unique=FLAGS.num_unique_images,
          width=FLAGS.image_width, height=FLAGS.image_height, quality=FLAGS.jpeg_quality)
      description = {"data": "generated",
                     "generated_image_wh": [FLAGS.image_width, FLAGS.image_height],
                     "jpeg_quality": FLAGS.jpeg_quality,
                     "mean_file_bytes": round(input_pipeline.mean_train_file_bytes(data_dir))}
    line = json.dumps(run(data_dir, description))
  print(line, flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
