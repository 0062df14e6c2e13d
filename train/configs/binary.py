"""Lesion-like binary task: ``imbalanced_shapes/binary`` with one sigmoid channel, CE + KL."""

from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "imbalanced_shapes/binary"
  config.loss.mode = "binary"
  return config
