"""Colin27 brain structures (2-D slices): ``--config.data.dir=OUT/2d``.

Build the data first, offline, from Debian's ``mricron-data`` package:
``python -m regionloss_jax.data.colin27 --out=OUT`` (:mod:`regionloss_jax.data.colin27`).
Eight structures from 22% of the pixels (cortex) to 0.08% (pallidum, amygdala) on 181x217
sagittal slices of one brain, kept at their 1 mm resolution: the model trains on 128x128
patches, a third of them centred on a structure drawn uniformly among those in the slice,
and is evaluated on whole slices through sliding windows.
"""

from regionloss_jax.data import colin27
from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "folder"
  config.data.num_classes = len(colin27.STRUCTURES)
  config.data.class_names = colin27.STRUCTURES
  config.data.image_size = ()
  config.data.patch_size = (128, 128)
  config.model.depth = 4
  config.model.features = 16
  config.train.batch_size = 8
  config.train.eval_batch_size = 16
  config.train.steps = 600
  config.train.eval_every = 200
  config.train.checkpoint_every = 200
  return config
