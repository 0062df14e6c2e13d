"""3-D volumes (``.nii``/``.nii.gz``/``.npy``) with the 3-D U-Net:
``--config.data.dir=ROOT --config.data.num_classes=N``."""

from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "volumes"
  config.data.image_size = (32, 64, 64)
  config.model.spatial_dims = 3
  config.model.depth = 3
  config.model.features = 16
  config.train.batch_size = 2
  config.train.eval_batch_size = 2
  config.train.steps = 5000
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  return config
