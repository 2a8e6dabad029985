"""Random data through the full stack: smoke runs and the train-step benchmark.

The paper network and recipe on deterministic random uint8 images; nothing to download.
"""

from alexnet_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.source = "synthetic"
  c.data.num_train_examples = 1024
  c.data.num_eval_examples = 250
  c.batch_size = 32
  c.eval_batch_size = 64
  c.num_train_steps = 20
  c.log_every_steps = 5
  c.eval_every_steps = 10
  c.checkpoint_every_steps = 10
  c.model.variant = "paper"
  c.model.image_size = 227
  c.schedule.name = "constant"
  return c
