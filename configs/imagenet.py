"""The 2012 paper's recipe on ImageNet (ILSVRC-2012), two-tower network.

SGD, batch 128, momentum 0.9, weight decay 5e-4 added to the gradient, lr 0.01 divided by 10
when validation accuracy stops improving (at most 3 times), 90 epochs; random 224 crops of the
256x256 centre, horizontal flips, PCA colour noise, mean subtraction; N(0, 0.01) init with
biases 1 in conv2/4/5/fc6/fc7.

Default schedule: `plateau`, because it is the paper's own rule (the authors divided the rate by
10 by hand when the validation error stopped improving). With one evaluation per epoch and
patience 3 it reduces about as often as the paper did; `--config.schedule.name=step` gives the
fixed 30/60/80 boundaries that torchvision-style recipes use, when reproducible wall-clock
matters more than fidelity.

Data: `--config.data.data_dir=PATH` holding either the TFDS ArrayRecord build of `imagenet2012`
or the extracted folder layout (train/<wnid>/*.JPEG, val/...); see README "ImageNet".
"""

from alexnet_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.source = "auto"  # tfds or folder, whichever data_dir holds
  c.data.num_workers = 8
  c.data.prefetch_batches = 4
  c.num_epochs = 90.0
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000
  c.model.variant = "paper"
  c.model.image_size = 224
  c.model.init = "paper"
  c.schedule.name = "plateau"
  return c
