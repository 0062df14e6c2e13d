"""The default run: ``imbalanced_shapes/multiclass``, a small 2-D U-Net, CE + KL size term."""

from train.configs import base


def get_config():
  return base.get_config()
