"""Your own images and masks: ``--config.data.dir=ROOT --config.data.num_classes=N``.

``ROOT/{train,val,test}/{images,masks}/*`` paired by file stem (``val`` and ``test``
optional); masks hold class ids (0/255 binary masks are accepted).
"""

from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "folder"
  config.data.image_size = (128, 128)
  config.model.depth = 4
  config.model.features = 32
  config.train.steps = 5000
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  return config
