"""An nnU-Net raw dataset (or a Medical Segmentation Decathlon one) with the 3-D U-Net:
``--config=train/configs/nnunet.py --config.data.dir=Dataset001_X``.

``Dataset001_X/`` holds ``dataset.json``, ``imagesTr/<case>_0000.nii.gz`` (one file per input
channel), ``labelsTr/<case>.nii.gz`` and optionally ``imagesTs/`` (for ``python -m
train.predict``) and ``labelsTs/`` (then the test split). dataset.json gives the classes
(``data.num_classes`` and ``data.class_names`` need not be set) and the channels, each scaled
on its own. As ``volumes3d.py``: every case keeps its own shape (optionally resampled to
``data.spacing`` mm, (D, H, W) order), the model trains on 96x96x96 patches and is
evaluated on whole volumes through sliding windows.

2-D datasets (``"file_ending": ".png"``, ``.bmp``, ``.tif``) need a 2-D model::

  python -m train --config=train/configs/nnunet.py --config.data.dir=Dataset120_Roads \\
    --config.model.spatial_dims=2 --config.data.patch_size="(256,256)"
"""

from train.configs import volumes3d


def get_config():
  # The volumes config's 3-D U-Net, patches and schedule; dataset.json gives the classes.
  config = volumes3d.get_config()
  config.data.name = "nnunet"
  return config
