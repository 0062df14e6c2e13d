"""3-D volumes (``.nii``/``.nii.gz``/``.npy``) with the 3-D U-Net:
``--config.data.dir=ROOT --config.data.num_classes=N``.

Every volume keeps its own shape (optionally resampled to ``data.spacing`` mm, (D, H, W)
order, as nnU-Net does); the model trains on 96x96x96 patches (a third centred on a
foreground class) and is evaluated on whole volumes through sliding windows. For CT, set a
Hounsfield window, e.g. ``--config.data.intensity_range="(-200.0,300.0)"``. On a laptop,
lower ``data.patch_size`` (e.g. ``(48,48,48)`` with ``model.depth=3``), ``model.features``
or ``train.batch_size`` (benchmarks/RESULTS.md: what the native-resolution configs cost).
"""

from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "volumes"
  config.data.image_size = ()
  config.data.patch_size = (96, 96, 96)
  config.model.spatial_dims = 3
  config.model.depth = 4
  config.model.features = 32
  config.model.max_features = 320
  config.train.batch_size = 2
  config.train.eval_batch_size = 2
  config.train.steps = 5000
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  return config
