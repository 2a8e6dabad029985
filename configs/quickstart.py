"""The README's first command: the d2l AlexNet on the bundled Fashion-MNIST, in minutes on a CPU.

Same network as configs/fashion_mnist.py (d2l variant: 96/256/384/384/256, no LRN, one input
channel, 10 classes), trained offline from the repository's own copy of Fashion-MNIST. Changed
to fit a 10-minute budget on a 2-core laptop CPU, compilation and a final evaluation on all
10,000 test images included:
- images upsampled to 112 instead of 224 (on the device): about 5x fewer FLOPs per image;
  fc6 then takes 2x2x256 = 1024 features instead of 6400;
- 500 steps at batch 128 (64,000 images, 1.07 epochs) instead of 10 epochs;
- SGD with momentum 0.9 at lr 0.02 (d2l: plain SGD at 0.01), no weight decay.
See README "Quickstart" for the measured accuracy and time.
"""

from alexnet_jax.config_base import base_config, model_preset


def get_config():
  c = base_config()
  c.data.source = "fashion_mnist"
  c.data.mean = (0.0,)
  c.data.std = (255.0,)  # pixels in [0, 1], as d2l's ToTensor
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_train_steps = 500
  c.log_every_steps = 20
  c.eval_every_steps = 100000  # one evaluation, at the end
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2
  c.model.update(model_preset("d2l"))  # single tower, 1 channel, 10 classes, xavier init
  c.model.image_size = 112
  c.optimizer.learning_rate = 0.02
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 0.0
  c.schedule.name = "constant"
  return c
