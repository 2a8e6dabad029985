"""Large-batch ImageNet training: AlexNet-BN with LARS at global batch 8192.

Follows You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks" (2017), who
trained AlexNet with batch normalization (AlexNet-BN) at batch 8K-32K with LARS (layer-wise
adaptive rate scaling): with linear rate scaling and warmup alone, large batches lost accuracy;
LARS scales each layer's step by trust * ||w|| / ||g + wd * w||, so no layer's update outgrows
its weights. The recipe (docs/parallel.md, "Large batch"):

- model: `alexnet_bn` (the paper's two towers, BN after every conv instead of LRN), the
  network You et al. ran their large-batch AlexNet experiments on;
- batch 8192: the largest batch at which, as we read their results, AlexNet-BN with LARS
  matched its small-batch accuracy (16K and 32K lost a little); 64 per device on 128 GPUs;
- learning rate: linear scaling, `learning_rate` is the rate for `base_batch_size` images and
  the run uses learning_rate * batch_size / base_batch_size. Anchored at You et al.'s tuned
  LARS rate for 8K (14), so the default batch runs their number; other batch sizes scale it
  linearly (4096 -> 7, 16384 -> 28). Their own tuned rates grew more slowly than linearly
  (2 at 512, 10 at 4K, 14 at 8K, 23 at 16K, as we read their AlexNet-BN table), so far from
  8K treat the scaled rate as a starting point to tune;
- LARS: trust coefficient 0.001, momentum 0.9, weight decay 5e-4; biases and BN scales and
  offsets take neither the trust ratio nor weight decay (decay_biases=False);
- schedule: linear warmup for 5 epochs, then polynomial decay with power 2 to 0 (You et al.'s
  "poly" policy), 100 epochs in all.

  python -m alexnet_jax.main --config=configs/imagenet_large_batch.py --workdir=runs/lars8k \\
      --config.data.data_dir=/data/imagenet256

On one machine with fewer devices, keep the global batch (and so the recipe) only if it fits;
`--config.batch_size=4096` rescales the rate linearly by itself.
"""

from alexnet_jax.config_base import base_config

BATCH_SIZE = 8192
LARS_RATE_AT_8K = 14.0  # You et al. 2017, AlexNet-BN with LARS at batch 8K


def get_config():
  c = base_config()
  c.data.source = "auto"  # tfds or folder, whichever data_dir holds
  c.data.num_workers = 8
  c.data.prefetch_batches = 4
  c.batch_size = BATCH_SIZE
  c.eval_batch_size = 1024
  c.num_epochs = 100.0
  c.log_every_steps = 20
  c.checkpoint_every_steps = 500  # ~156 steps per epoch at 8192

  c.model.variant = "alexnet_bn"
  c.model.image_size = 227  # Caffe's BVLC AlexNet crops, which You et al. started from
  c.model.init = "caffe"

  c.optimizer.name = "lars"
  c.optimizer.learning_rate = LARS_RATE_AT_8K
  c.optimizer.base_batch_size = BATCH_SIZE  # linear scaling from 8K
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.optimizer.trust_coefficient = 0.001
  c.optimizer.decay_biases = False  # 1-D leaves: no trust ratio, no decay

  c.schedule.name = "poly"
  c.schedule.power = 2.0
  c.schedule.end_factor = 0.0
  c.schedule.warmup_epochs = 5.0
  return c
