"""The d2l textbook recipe: single-tower AlexNet on Fashion-MNIST upsampled to 224x224.

d2l trains 10 epochs at batch 128 with plain SGD (lr 0.01, no momentum, no weight decay) and
reports about 0.88 test accuracy. We keep its network, resolution, batch, epochs and rate, and
use the trainer's SGD with momentum 0.9 and no weight decay: with momentum at lr 0.01 the
network leaves its initial plateau within the first few hundred steps, where plain SGD can sit
at loss 2.30 for most of an epoch. `--config.optimizer.momentum=0` gives d2l's exact optimizer.
Slow on a laptop CPU (about 30 images/s on 2 cores): see configs/quickstart.py.
"""

from alexnet_jax.config_base import base_config, model_preset


def get_config():
  c = base_config()
  c.data.source = "fashion_mnist"
  c.data.mean = (0.0,)
  c.data.std = (255.0,)  # d2l's ToTensor: pixels in [0, 1]
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_epochs = 10.0
  c.log_every_steps = 50
  c.checkpoint_every_steps = 500
  c.model.update(model_preset("d2l"))  # single tower, 1 channel, 10 classes, xavier init
  c.model.image_size = 224
  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.schedule.name = "constant"
  return c
