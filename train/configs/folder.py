"""Your own images and masks: ``--config.data.dir=ROOT --config.data.num_classes=N``.

``ROOT/{train,val,test}/{images,masks}/*`` paired by file stem (``val`` and ``test``
optional); masks hold class ids (0/255 binary masks are accepted). Every image keeps its own
size: the model trains on 256x256 patches (a third centred on a foreground class) and is
evaluated on whole images through sliding windows. On a laptop without a GPU, lower
``data.patch_size`` (e.g. ``(128,128)`` with ``model.depth=4``), ``model.features`` and
``train.batch_size`` (benchmarks/RESULTS.md: what the native-resolution configs cost).
"""

from train.configs import base


def get_config():
  config = base.get_config()
  config.data.name = "folder"
  config.data.image_size = ()
  config.data.patch_size = (256, 256)
  config.model.depth = 5
  config.model.features = 32
  config.model.max_features = 512
  config.train.batch_size = 8
  config.train.eval_batch_size = 8
  config.train.steps = 5000
  config.train.eval_every = 500
  config.train.checkpoint_every = 500
  return config
