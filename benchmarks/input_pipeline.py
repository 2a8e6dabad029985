"""Training-input throughput: the ImageNet train transform through the real Grain pipeline.

  python benchmarks/input_pipeline.py --config=configs/imagenet.py --workers=0,1,2 \
      [--data_dir=PATH] [--num_batches=10] [--storage=folder|arrayrecord] [--resize_shorter=256]

  # side by side in one run: bare decode of the stored bytes vs the pipeline on pre-resized
  # JPEG, and raw storage (prepare --format=raw); here from real photographs
  python benchmarks/input_pipeline.py --config=configs/imagenet.py --compare_decode \
      --photos_dir=DIR_OF_PHOTOS --num_images=181 --workers=0 --prefetch_batches=1
  # worker scaling: 1, 2, 4, 8, 16 workers (those the machine has cores for)
  python benchmarks/input_pipeline.py --config=configs/imagenet.py --worker_sweep ...

Prints one JSON line per worker count with `images_per_sec` (batches of
`config.batch_size` from `alexnet_jax.data.open_split` + `loading.to_iterator`, after
warm-up batches that absorb worker start-up). Without --data_dir it first writes its own
ImageNet-like folder dataset of JPEGs (default 500x375, quality 90, ~100 KB like the average
ImageNet file) in a temporary folder; `--storage=arrayrecord` then packs it with
`alexnet_jax.tools.prepare` (original bytes, or pre-resized with --resize_shorter) and reads it
through `data.source=tfds`. Config overrides work as usual:
`--config.data.jpeg_draft=false`, `--config.data.train_transform=inception`.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

from absl import app
from absl import flags
from ml_collections import config_flags
import numpy as np
from PIL import Image

# Runnable as a script from a source checkout without installing the package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/imagenet.py).")
flags.DEFINE_string("workers", "2", "Grain worker processes; a comma list runs each in turn.")
flags.DEFINE_string("data_dir", "", "ImageNet data_dir to read; empty: generate a dataset.")
flags.DEFINE_integer("num_batches", 24, "Timed batches per run.")
flags.DEFINE_integer("warmup_batches", -1,
                     "Untimed batches first; -1: one more than the batches loaded at once "
                     "(processes x threads), which all finish together at start-up.")
flags.DEFINE_integer("batch_size", 0, "Overrides config.batch_size when > 0.")
flags.DEFINE_integer("prefetch_batches", -1,
                     "Overrides config.data.prefetch_batches (= loader threads per process).")
flags.DEFINE_integer("num_images", 1024, "Generated dataset: training images.")
flags.DEFINE_integer("num_unique_images", 128, "Generated dataset: distinct pictures.")
flags.DEFINE_integer("image_width", 500, "Generated dataset: width.")
flags.DEFINE_integer("image_height", 375, "Generated dataset: height.")
flags.DEFINE_integer("jpeg_quality", 90, "Generated dataset: JPEG quality.")
flags.DEFINE_enum("storage", "folder", ["folder", "arrayrecord", "raw"],
                  "Generated dataset: read the folder, or pack it to ArrayRecord first (raw: "
                  "prepare --format=raw).")
flags.DEFINE_integer("resize_shorter", 0, "With --storage=arrayrecord: store pre-resized.")
flags.DEFINE_float("wait_for_idle_s", 300,
                   "Before each run, wait up to this long for the machine to be idle (other "
                   "jobs on a shared machine skew the numbers); the JSON records what it saw.")
flags.DEFINE_float("max_other_cores", 0.2,
                   "Repeat a run (up to --retries times) when other processes used more CPU "
                   "than this during it.")
flags.DEFINE_integer("retries", 3, "See --max_other_cores.")
flags.DEFINE_string("note", "", "Free text stored in the JSON line.")
flags.DEFINE_bool("compare_decode", False,
                  "Pack the folder dataset (generated, --photos_dir, or --data_dir when it is a "
                  "folder layout) as pre-resized JPEG (shorter side 256) and as raw storage, then "
                  "measure side by side, alternating batch by batch in one process: the "
                  "pipeline on the JPEG build vs bare decode of the same stored bytes (Pillow "
                  "and simplejpeg), and the pipeline on the raw build vs bare record reads; "
                  "images per CPU second and their ratios. Then, unless --workers=0, the "
                  "pipeline on both builds with --workers (or --worker_sweep).")
flags.DEFINE_bool("worker_sweep", False,
                  "Run 1, 2, 4, 8, 16 workers (those <= the machine's cores) instead of --workers.")
flags.DEFINE_string("photos_dir", "",
                    "Generated dataset from real photographs: every image file in this folder, "
                    "cut into --num_images ImageNet-like JPEGs (crops of 60-100%% of the photo, "
                    "longer side 500, quality --jpeg_quality).")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS

BENCHMARK_WNIDS = ("n01440764", "n01443537", "n01484850", "n01491361", "n01494475",
                   "n01496331", "n01498041", "n01514668")


# --------------------------------------------------------------------------------------------
# An ImageNet-like dataset


def photo_like_image(width: int, height: int, seed: int) -> Image.Image:
  """Colour structure at several scales plus fine grain: at quality 90 a 500x375 image
  compresses to ~100 KB and decodes about as fast as an average ImageNet photo."""
  rng = np.random.default_rng(seed)
  pixels = np.full((height, width, 3), 120.0, np.float32)
  for divisor, amplitude in ((64, 90.0), (16, 45.0), (4, 25.0)):
    coarse = rng.normal(0, 1, (height // divisor + 2, width // divisor + 2, 3))
    for c in range(3):
      layer = Image.fromarray(coarse[..., c].astype(np.float32))
      pixels[..., c] += amplitude * np.asarray(layer.resize((width, height),
                                                             Image.Resampling.BICUBIC))
  pixels += rng.normal(0, 16.0, pixels.shape)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_benchmark_dataset(root: pathlib.Path, *, num_images: int, num_unique: int,
                           width: int, height: int, quality: int,
                           num_val: int = 16) -> pathlib.Path:
  """root/train/<wnid>/*.JPEG (num_images, cycling num_unique pictures) and a flat root/val."""
  encoded = []
  for seed in range(min(num_unique, num_images)):
    buffer = io.BytesIO()
    photo_like_image(width, height, seed).save(buffer, "JPEG", quality=quality)
    encoded.append(buffer.getvalue())
  for i in range(num_images):
    wnid = BENCHMARK_WNIDS[i % len(BENCHMARK_WNIDS)]
    path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded[i % len(encoded)])
  (root / "val").mkdir(parents=True, exist_ok=True)
  for number in range(1, num_val + 1):
    (root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(encoded[number % len(encoded)])
  return root


def make_photo_dataset(root: pathlib.Path, photos_dir: str, *, num_images: int, quality: int,
                       num_val: int = 16, longer_side: int = 500) -> pathlib.Path:
  """Like make_benchmark_dataset, from real photographs: image i is a random crop (60-100% of
  each side) of photo i % n, scaled to longer side `longer_side` (ImageNet's typical 500x375),
  kept grey when the photo is grey, saved as JPEG `quality`."""
  photos = sorted(p for p in pathlib.Path(photos_dir).iterdir()
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  if not photos:
    raise SystemExit(f"no .jpg/.jpeg/.png photographs in {photos_dir}")
  images = [Image.open(p) for p in photos]
  images = [im.convert("L" if im.mode in ("L", "I;16", "I") else "RGB") for im in images]
  rng = np.random.default_rng(0)

  def one(i: int) -> bytes:
    image = images[i % len(images)]
    w, h = image.size
    cw, ch = (int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    scale = longer_side / max(cw, ch)
    crop = image.resize((max(1, round(cw * scale)), max(1, round(ch * scale))),
                        Image.Resampling.BICUBIC, box=(left, top, left + cw, top + ch))
    buffer = io.BytesIO()
    crop.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()

  for i in range(num_images):
    wnid = BENCHMARK_WNIDS[i % len(BENCHMARK_WNIDS)]
    path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(one(i))
  (root / "val").mkdir(parents=True, exist_ok=True)
  for number in range(1, num_val + 1):
    (root / "val" / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(one(num_images + number))
  return root


def mean_train_file_bytes(data_dir: str) -> float | None:
  train = pathlib.Path(data_dir) / "train"
  if not train.is_dir():
    return None
  sizes = [p.stat().st_size for p in list(train.glob("*/*"))[:2000]]
  return float(np.mean(sizes)) if sizes else None


# --------------------------------------------------------------------------------------------
# CPU accounting: on a shared machine, record how much CPU other processes took meanwhile.


def _clock_ticks() -> float:
  return float(os.sysconf("SC_CLK_TCK"))


def system_busy_seconds() -> float:
  """CPU seconds spent not idle, all cores, since boot (Linux /proc/stat)."""
  fields = [float(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
  idle = fields[3] + fields[4]  # idle + iowait
  return (sum(fields[:8]) - idle) / _clock_ticks()


def tree_cpu_seconds(pid: int | None = None) -> float:
  """CPU seconds of a process, its threads and all its descendants (alive ones)."""
  pid = pid or os.getpid()
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    total = (float(fields[11]) + float(fields[12])) / _clock_ticks()  # utime + stime
    children = set()
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
      children.update(int(c) for c in (task / "children").read_text().split())
  except (OSError, ValueError):
    return 0.0
  return total + sum(tree_cpu_seconds(child) for child in children)


class CpuMeter:
  """Cores used by this process tree, and by everything else, over a timed window."""

  def __enter__(self):
    self._started = (time.perf_counter(), tree_cpu_seconds(), system_busy_seconds())
    return self

  def __exit__(self, *exc):
    wall, ours, busy = (time.perf_counter(), tree_cpu_seconds(), system_busy_seconds())
    elapsed = wall - self._started[0]
    self.own_cores = (ours - self._started[1]) / elapsed
    self.other_cores = max(0.0, (busy - self._started[2]) / elapsed - self.own_cores)


def wait_for_idle(max_wait_s: float, max_busy_cores: float = 0.15) -> float:
  """Waits (up to max_wait_s) for 3 s in which the machine is nearly idle; returns the load
  (busy cores) of the last 3 s window."""
  deadline = time.time() + max_wait_s
  while True:
    with CpuMeter() as meter:
      time.sleep(3.0)
    busy = meter.other_cores + meter.own_cores
    if busy <= max_busy_cores or time.time() >= deadline:
      return round(busy, 2)


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  from PIL import features
  import grain
  try:
    import simplejpeg
    simplejpeg_version = simplejpeg.__version__
  except ImportError:
    simplejpeg_version = None
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "pillow": Image.__version__, "libjpeg_turbo": features.check("libjpeg_turbo"),
          "simplejpeg": simplejpeg_version,
          "grain": getattr(grain, "__version__", "?"), "system": platform.platform()}


# --------------------------------------------------------------------------------------------
# Measurement


def measure(config, num_workers: int, num_batches: int, warmup_batches: int) -> dict:
  """Steady-state images/s of the training iterator, and the CPU it and others used."""
  from alexnet_jax import data as data_lib
  from alexnet_jax.data import loading, pipeline
  if warmup_batches < 0:
    warmup_batches = max(num_workers, 1) * max(1, config.data.prefetch_batches) + 1
  split = data_lib.open_split(config, "train")
  dataset = pipeline.train_dataset(split.source, split.transform, seed=config.seed,
                                   global_batch_size=config.batch_size)
  iterator = loading.to_iterator(dataset, num_workers=num_workers,
                                 prefetch_batches=config.data.prefetch_batches)
  started = time.perf_counter()
  for _ in range(warmup_batches):
    next(iterator)
  first_batches_s = time.perf_counter() - started
  started = time.perf_counter()
  images = skipped = 0
  with CpuMeter() as cpu:
    for _ in range(num_batches):
      batch = next(iterator)
      images += batch["image"].shape[0]
      skipped += int(batch["skipped"])
  elapsed = time.perf_counter() - started
  del iterator  # stops the workers
  return {"images_per_sec": round(images / elapsed, 1), "timed_images": images,
          "cpu_cores_used": round(cpu.own_cores, 2),
          "images_per_sec_per_busy_core": round(images / elapsed / max(cpu.own_cores, 1e-9), 1),
          "other_processes_cpu_cores": round(cpu.other_cores, 2),
          "seconds": round(elapsed, 2), "warmup_batches": warmup_batches,
          "warmup_seconds": round(first_batches_s, 2),
          "skipped": skipped, "image_shape": list(batch["image"].shape[1:])}


def worker_counts() -> list[int]:
  if FLAGS.worker_sweep:
    return [w for w in (1, 2, 4, 8, 16) if w <= (os.cpu_count() or 1)]
  return [int(w) for w in FLAGS.workers.split(",")]


def emit(line: dict) -> None:
  text = json.dumps(line)
  print(text, flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(text + "\n")


def measured(fn):
  """fn() -> result dict with other_processes_cpu_cores; retried while others took CPU."""
  for attempt in range(1, FLAGS.retries + 2):
    busy_before = wait_for_idle(FLAGS.wait_for_idle_s)
    result = fn()
    result.update(busy_cores_before=busy_before, attempt=attempt)
    if result["other_processes_cpu_cores"] <= FLAGS.max_other_cores:
      break
  return result


def run_one(config, workers: int, description: dict) -> dict:
  """One measured pipeline run with `workers` worker processes, emitted as a JSON line."""
  result = measured(lambda: measure(config, workers, FLAGS.num_batches, FLAGS.warmup_batches))
  line = {"benchmark": "input_pipeline", "date": datetime.date.today().isoformat(),
          "workers": workers, **result,
          "images_per_sec_per_process": round(result["images_per_sec"] / max(workers, 1), 1),
          "batch_size": config.batch_size,
          "threads_per_process": max(1, config.data.prefetch_batches),
          "train_transform": config.data.train_transform,
          "resize_size": config.data.resize_size, **description,
          "note": FLAGS.note, "machine": machine()}
  if "raw" not in str(description.get("storage")):  # raw storage decodes nothing
    line.update(jpeg_draft=config.data.jpeg_draft, jpeg_decoder=config.data.jpeg_decoder)
  emit(line)
  return line


def run_all(config, description: dict) -> list[dict]:
  return [run_one(config, workers, description) for workers in worker_counts()]


# --------------------------------------------------------------------------------------------
# --compare_decode: bare decode of the stored bytes vs the pipeline, side by side


def stored_train_images(data_dir: str) -> list[bytes]:
  """The `image` bytes of every record of the train split of a tfds build."""
  from alexnet_jax.data import imagenet
  source = imagenet.tfds_split(data_dir, "train")
  return [source[i]["image"] for i in range(len(source))]


def interleaved(config, reference, num_batches: int) -> dict:
  """Pipeline batches and a reference workload alternating batch by batch in this process.

  The pipeline runs with no worker process and no prefetch (each `next` loads its batch in
  this thread), then `reference(batch_index, batch_size)` does the bare work for as many
  images; both sides are timed in CPU seconds of this process. Alternating every ~0.1 s keeps
  the ratio honest on a shared VM whose cores speed up and slow down by 20-40% over seconds
  (measured here: three 3-second rounds of the same comparison gave 0.59, 0.76 and 1.03)."""
  from alexnet_jax import data as data_lib
  from alexnet_jax.data import loading, pipeline
  split = data_lib.open_split(config, "train")
  dataset = pipeline.train_dataset(split.source, split.transform, seed=config.seed,
                                   global_batch_size=config.batch_size)
  iterator = loading.to_iterator(dataset, num_workers=0, prefetch_batches=0)
  for index in range(2):  # warm-up: first batch, caches
    next(iterator)
    reference(index, config.batch_size)
  pipeline_s = reference_s = 0.0
  images = skipped = 0
  with CpuMeter() as cpu:
    for index in range(num_batches):
      started = time.process_time()
      batch = next(iterator)
      middle = time.process_time()
      reference(index, config.batch_size)
      pipeline_s += middle - started
      reference_s += time.process_time() - middle
      images += batch["image"].shape[0]
      skipped += int(batch["skipped"])
  return {"pipeline_images_per_cpu_second": round(images / pipeline_s, 1),
          "reference_images_per_cpu_second": round(images / reference_s, 1),
          "ratio": round(reference_s / pipeline_s, 3), "timed_images": images,
          "skipped": skipped, "cpu_cores_used": round(cpu.own_cores, 2),
          "other_processes_cpu_cores": round(cpu.other_cores, 2)}


def bare_decoder(images: list[bytes], decoder: str):
  """reference(batch_index, count): decodes `count` of the stored JPEGs to RGB arrays in one
  thread, nothing else (Pillow's open, load, convert; or simplejpeg.decode_jpeg)."""
  if decoder == "pillow":
    def decode(data):
      return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  else:
    import simplejpeg

    def decode(data):
      return simplejpeg.decode_jpeg(data, colorspace="RGB")

  def reference(batch_index: int, count: int) -> None:
    for k in range(count):
      decode(images[(batch_index * count + k) % len(images)])
  return reference


def bare_reader(data_dir: str):
  """reference(batch_index, count): reads `count` serialized records in a random order through
  array_record, nothing else: the floor the storage library sets for any pipeline on it."""
  from alexnet_jax.data import imagenet
  records = imagenet.tfds_split(data_dir, "train")
  records = getattr(records, "inner", records)  # raw builds wrap the records in a size check
  order = np.random.default_rng(0).permutation(len(records)).tolist()

  def reference(batch_index: int, count: int) -> None:
    for k in range(count):
      records.serialized(order[(batch_index * count + k) % len(order)])
  return reference


def compare_decode(config, folder_dir: str, tmp: str, description: dict) -> None:
  """Packs `folder_dir` twice (JPEG at shorter side 256, raw 256x256) and measures, in one run,
  the pipeline against bare decode of the same stored bytes (JPEG) and against bare reads of
  the records (raw), alternating batch by batch (`interleaved`)."""
  from alexnet_jax.data import decode
  jpeg_dir = pack(folder_dir, str(pathlib.Path(tmp) / "jpeg256"), 256)
  raw_dir = pack(folder_dir, str(pathlib.Path(tmp) / "raw"), 0, storage_format="raw")
  images = stored_train_images(jpeg_dir)
  common = {"date": datetime.date.today().isoformat(), **description,
            "batch_size": config.batch_size, "train_transform": config.data.train_transform,
            "mean_stored_jpeg_bytes": round(float(np.mean([len(b) for b in images]))),
            "note": FLAGS.note, "machine": machine()}
  decoders = ["pillow"] + (["simplejpeg"] if decode.simplejpeg is not None else [])
  config.data.source = "tfds"
  for decoder in decoders:
    config.data.data_dir = jpeg_dir
    config.data.jpeg_decoder = decoder
    result = measured(lambda: interleaved(config, bare_decoder(images, decoder),
                                          FLAGS.num_batches))
    emit({"benchmark": "compare_decode", "storage": "jpeg256", "decoder": decoder,
          "pipeline_images_per_cpu_second": result["pipeline_images_per_cpu_second"],
          "bare_decode_images_per_cpu_second": result["reference_images_per_cpu_second"],
          "ratio_pipeline_to_bare_decode": result["ratio"], "target_ratio": 0.85,
          "target_images_per_cpu_second": 2000, **result, **common})
  config.data.data_dir = raw_dir
  result = measured(lambda: interleaved(config, bare_reader(raw_dir), FLAGS.num_batches))
  emit({"benchmark": "compare_decode", "storage": "raw256",
        "pipeline_images_per_cpu_second": result["pipeline_images_per_cpu_second"],
        "bare_read_images_per_cpu_second": result["reference_images_per_cpu_second"],
        "ratio_pipeline_to_bare_read": result["ratio"],
        "target_images_per_cpu_second": 10_000, **result, **common})
  if FLAGS.worker_sweep or FLAGS.workers != "0":
    for storage, data_dir in (("jpeg256", jpeg_dir), ("raw256", raw_dir)):
      config.data.data_dir = data_dir
      run_all(config, {"storage": storage, **description})


def main(argv) -> None:
  del argv
  # This process loads batches as a Grain worker does (data/loading.py: init_worker), with
  # the same allocator setting; garbage collection is frozen by loading.to_iterator.
  from alexnet_jax.runtime import host_memory
  host_memory.keep_freed_memory()
  config = _CONFIG.value
  if FLAGS.batch_size > 0:
    config.batch_size = FLAGS.batch_size
  if FLAGS.prefetch_batches >= 0:
    config.data.prefetch_batches = FLAGS.prefetch_batches
  description = {"data": "given", "data_dir": FLAGS.data_dir}
  with tempfile.TemporaryDirectory(prefix="alexnet_jax_bench_") as tmp:
    data_dir = FLAGS.data_dir
    if not data_dir and FLAGS.photos_dir:
      data_dir = str(make_photo_dataset(pathlib.Path(tmp) / "folder", FLAGS.photos_dir,
                                        num_images=FLAGS.num_images, quality=FLAGS.jpeg_quality))
      description = {"data": "real photographs", "photos_dir": FLAGS.photos_dir,
                     "num_images": FLAGS.num_images, "jpeg_quality": FLAGS.jpeg_quality,
                     "mean_file_bytes": round(mean_train_file_bytes(data_dir))}
    elif not data_dir:
      data_dir = str(make_benchmark_dataset(
          pathlib.Path(tmp) / "folder", num_images=FLAGS.num_images,
          num_unique=FLAGS.num_unique_images, width=FLAGS.image_width,
          height=FLAGS.image_height, quality=FLAGS.jpeg_quality))
      description = {"data": "generated", "generated_image_wh": [FLAGS.image_width,
                                                                 FLAGS.image_height],
                     "jpeg_quality": FLAGS.jpeg_quality,
                     "mean_file_bytes": round(mean_train_file_bytes(data_dir))}
    if FLAGS.compare_decode:
      compare_decode(config, data_dir, tmp, description)
      return
    if not FLAGS.data_dir:  # a dataset made here: read as a folder or packed first
      if FLAGS.storage in ("arrayrecord", "raw"):
        data_dir = pack(data_dir, str(pathlib.Path(tmp) / "tfds"), FLAGS.resize_shorter,
                        storage_format="raw" if FLAGS.storage == "raw" else "jpeg")
        description["storage"] = FLAGS.storage
        if FLAGS.storage == "arrayrecord":
          description["stored_resize_shorter"] = FLAGS.resize_shorter
      else:
        description["storage"] = "folder"
    config.data.data_dir = data_dir
    run_all(config, description)


def pack(folder_dir: str, out_dir: str, resize_shorter: int, storage_format: str = "jpeg") -> str:
  """The folder dataset written as a tfds ArrayRecord build by alexnet_jax.data.prepare."""
  from alexnet_jax.data import prepare
  started = time.perf_counter()
  shards = prepare.plan_folder(folder_dir, examples_per_shard=256)
  prepare.write_tfds_dataset(shards, out_dir, prepare.StoreOptions(resize_shorter,
                                                                   format=storage_format),
                             num_workers=os.cpu_count() or 1, origin=folder_dir,
                             progress=False)
  stored = {"side": 256} if storage_format == "raw" else {"resize_shorter": resize_shorter}
  print(json.dumps({"benchmark": "prepare", "format": storage_format, **stored,
                    "seconds": round(time.perf_counter() - started, 1)}), file=sys.stderr)
  return out_dir


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
