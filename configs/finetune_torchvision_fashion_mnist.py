"""Transfer learning: torchvision-layout AlexNet weights fine-tuned on Fashion-MNIST.

Starts from a torchvision `alexnet` state_dict (`init_from`), replaces the 1000-class head by a
fresh 10-class one (`reinit='fc8'`), freezes the five conv layers (`freeze='^conv'`: no update,
no weight decay) and trains fc6-fc8. Fashion-MNIST's grey images are repeated to 3 channels and
normalized with torchvision's mean/std, as the weights expect; they are upsampled to 112x112
(torchvision trained at 224; 112 is 4x cheaper and its adaptive pool still gives 6x6 features).

The default `init_from` is where torchvision caches its published weights
(`torchvision.models.alexnet(weights="IMAGENET1K_V1")` downloads alexnet-owt-7be5be79.pth);
point it at your copy:

  python -m alexnet_jax.main --config=configs/finetune_torchvision_fashion_mnist.py \
      --workdir=workdirs/finetune --config.init_from=/path/to/alexnet-owt-7be5be79.pth

Fine-tune every layer instead: --config.freeze=''. See docs/inference.md for a measured run.
"""

from alexnet_jax.config_base import TORCHVISION_MEAN_RGB, TORCHVISION_STD_RGB, base_config


def get_config():
  c = base_config()
  c.init_from = "~/.cache/torch/hub/checkpoints/alexnet-owt-7be5be79.pth"
  c.reinit = "fc8"  # a new 10-class head
  c.freeze = "^conv"  # feature extractor fixed; fc6, fc7, fc8 train

  c.data.source = "fashion_mnist"
  c.data.mean = TORCHVISION_MEAN_RGB
  c.data.std = TORCHVISION_STD_RGB
  c.batch_size = 128
  c.eval_batch_size = 500
  c.num_train_steps = 300
  c.log_every_steps = 25
  c.eval_every_steps = 100000  # one evaluation, at the end
  c.checkpoint_every_steps = 100
  c.keep_checkpoints = 2

  c.model.variant = "torchvision"
  c.model.num_classes = 10
  c.model.in_channels = 3  # grey repeated, as the weights take RGB
  c.model.image_size = 112
  c.model.init = "torch"

  c.optimizer.learning_rate = 0.01
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 5e-4
  c.schedule.name = "cosine"
  return c
