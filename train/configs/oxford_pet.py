"""Oxford-IIIT Pet (downloaded by TFDS, ~800 MB): pet / background / border, 128x128."""

from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "oxford_iiit_pet"
  config.data.image_size = (128, 128)
  config.model.depth = 4
  config.model.features = 32
  config.train.steps = 10000
  config.train.eval_every = 1000
  config.train.checkpoint_every = 1000
  return config
