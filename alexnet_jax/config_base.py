"""Every config field the stack reads, with its default.

Each file in configs/ starts from `base_config()` and changes what its recipe needs; every
field can be overridden on the command line as `--config.field=value`. Nothing in the code has
a default that is not here.
"""

from __future__ import annotations

import ml_collections

from alexnet_jax.models.presets import model_preset

# Per-channel RGB mean of ImageNet training pixels, 0-255 (Caffe's ilsvrc_2012_mean, averaged
# over the image): the paper subtracted the mean image and did not divide.
IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
# torchvision's normalization (0-1 mean/std) expressed in 0-255 units.
TORCHVISION_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def base_config() -> ml_collections.ConfigDict:
  """Every config field with its default (the paper's ImageNet recipe on synthetic data);
  configs/*.py start here. Returns a fresh ml_collections.ConfigDict."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 128  # global, over all processes and devices
  c.eval_batch_size = 256  # global; the last batch is padded and masked, never dropped
  c.num_epochs = 90.0
  c.num_train_steps = -1  # > 0 overrides num_epochs
  c.log_every_steps = 100
  c.eval_every_steps = -1  # <= 0: once per epoch (and always at the end)
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_checkpoint_step = -1  # --mode=eval: -1 is the latest checkpoint
  c.eval_at_end = True
  # --mode=eval also writes DIR/eval_report.json (per-class accuracy, confused pairs, 10-crop
  # where the source has crops); it costs one more pass per view over the eval split.
  c.eval_report = True
  c.eval_report_confusions = 20  # how many of the most confused (true, predicted) pairs
  # Process settings for XLA:CPU, applied by the command line before JAX starts and only when
  # JAX's backend will be the CPU (alexnet_jax/runtime/cpu_runtime.py): glibc keeps freed memory
  # instead of page-faulting each step's scratch buffer back in. Speed only.
  c.cpu_runtime_tuning = True
  # Also send XLA:CPU's convolutions to its Eigen path (convolution gradients ~2x faster on the
  # machines measured; the paper net's step ~1.5x). 'auto': only with one process, one CPU
  # device and parallel.model=1, where it was measured safe; it costs memory (peak 4.6 vs
  # 2.6 GB at batch 32), and with several devices or the towers split (parallel.model=2) it
  # multiplied memory or failed. True/False force it. docs/model.md, "Process settings".
  c.cpu_eigen_convolutions = "auto"
  # Persistent XLA compilation cache: "" = the user's cache directory
  # ($XDG_CACHE_HOME or ~/.cache)/alexnet_jax/jax_compilation_cache; "off" disables it.
  c.compilation_cache_dir = ""
  # Seconds a multi-process job waits for all its processes to join (jax.distributed) before
  # it ends with one error line and status 1 (JAX alone would abort after 300 s with a C++
  # stack trace). Large jobs whose hosts start minutes apart may need more.
  c.distributed_timeout_s = 300
  # Warn once when the train loss stays within 1% of chance (ln num_classes) for this many
  # steps after warm-up; <= 0 never warns.
  c.stall_warning_steps = 200

  # Fine-tuning / transfer learning (docs/inference.md). Applied once, when a run starts with
  # no checkpoint of its own; a resumed run continues from its checkpoint.
  c.init_from = ""  # "" | a workdir (or its checkpoints/ or checkpoints/<step>) | a .pth file
  # Regex over '/'-joined parameter paths ('conv1/kernel', 'fc8/bias'): these keep their fresh
  # initialization instead of being loaded, e.g. 'fc8' to replace the classifier head.
  c.reinit = ""
  # Regex over the same paths: matching parameters are frozen (no update, no weight decay),
  # e.g. '^conv' to train only the fully connected layers.
  c.freeze = ""

  c.data = ml_collections.ConfigDict()
  c.data.source = "synthetic"  # synthetic | fashion_mnist | tfds | folder | auto
  c.data.data_dir = ""  # "" = the source's default location
  c.data.num_workers = 0  # Grain worker processes; 0 = load in the main process
  c.data.prefetch_batches = 2  # host batches loaded ahead of the step
  c.data.device_prefetch = 2  # batches already transferred to the devices ahead of the step
  # Normalization on the device: (uint8 image - mean) / std, per channel, 0-255 units.
  c.data.mean = IMAGENET_MEAN_RGB
  c.data.std = (1.0, 1.0, 1.0)
  c.data.num_train_examples = 1024  # synthetic source only
  c.data.num_eval_examples = 256  # synthetic source only
  c.data.synthetic_pool_size = 256  # synthetic: distinct pre-generated images, reused
  c.data.max_skip_fraction = 0.001  # stop when more than this share of records is unreadable
  c.data.train_transform = "paper"  # paper | inception
  c.data.resize_size = 256  # shorter side before the crop
  c.data.pca_std = 0.1  # std of the PCA colour noise coefficients; 0 turns it off
  c.data.ten_crop = False  # evaluate on 10 crops (4 corners + centre, and mirrors)
  # JPEGs much larger than the crop needs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT
  # scaling via PIL's draft mode), never below the crop's resolution; see docs/data.md.
  c.data.jpeg_draft = True
  # JPEG decoder: auto (simplejpeg when installed, else pillow) | pillow | simplejpeg; both
  # give the same pixels and refuse the same files (docs/data.md).
  c.data.jpeg_decoder = "auto"

  # Every model field and its default, from the models' table (models/presets.py).
  c.model = ml_collections.ConfigDict(model_preset("paper"))

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "sgd"  # sgd (the paper's momentum form) | adamw | lars
  c.optimizer.learning_rate = 0.01
  # > 0: learning_rate is the rate for this many images per step, and the run uses
  # learning_rate * batch_size / base_batch_size (linear scaling, Goyal et al. 2017).
  c.optimizer.base_batch_size = 0
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = False
  c.optimizer.weight_decay = 5e-4  # added to the gradient, as in the paper
  c.optimizer.decay_biases = True  # the paper's rule decays every weight
  c.optimizer.b1 = 0.9  # adamw only
  c.optimizer.b2 = 0.999  # adamw only
  # lars only (You et al. 2017): each weight's step is scaled by
  # trust_coefficient * ||w|| / ||g + weight_decay * w||; with decay_biases=False the 1-D
  # leaves (biases, BN scales/offsets) get neither the trust ratio nor weight decay.
  c.optimizer.trust_coefficient = 0.001

  c.schedule = ml_collections.ConfigDict()
  c.schedule.name = "plateau"  # constant | step | plateau | cosine | poly
  c.schedule.factor = 0.1  # step and plateau
  c.schedule.boundaries_epochs = (30.0, 60.0, 80.0)  # step
  c.schedule.patience = 3  # plateau: evaluations without a better eval/top1
  c.schedule.max_reductions = 3  # plateau: the paper divided by 10 three times
  c.schedule.min_delta = 0.0  # plateau: improvement smaller than this does not count
  c.schedule.warmup_epochs = 0.0  # linear warmup, any schedule
  c.schedule.end_factor = 0.0  # cosine and poly: final lr as a fraction of the peak
  c.schedule.power = 2.0  # poly: lr = peak * (1 - t)^power after warmup (You et al.: 2)

  # Parallelism beyond data parallelism (docs/parallel.md).
  c.parallel = ml_collections.ConfigDict()
  # 1: data parallelism. 2: the paper's two towers on the two devices of a 'model' mesh axis
  # (mesh: devices/2 x 2); two-tower variants (paper, alexnet_bn) only.
  c.parallel.model = 1
  # Also shard fc6's and fc7's kernels and their optimizer state over the 'data' axis
  # (gathered for use each step): about 4x less parameter memory per device at 8 devices.
  c.parallel.fsdp = False
  return c
