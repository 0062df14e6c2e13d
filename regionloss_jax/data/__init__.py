"""Datasets and the grain input pipeline, with no TensorFlow anywhere.

``load(name, split=...)`` returns a :class:`SegmentationData` (a random-access TFDS data
source plus class names, label lookup and the :class:`Preprocessing` of its files);
``make_pipeline(data, global_batch_size=...)`` turns it into batches ``{"image": float32
(B, *spatial, C), "label": int32 (B, *spatial)}`` with 255 for ignored pixels, of whole
images or of patches (``patch_size``) at native resolution; ``eval_examples(data)`` yields
whole images one by one for evaluation.

Datasets: ``imbalanced_shapes/binary`` and ``imbalanced_shapes/multiclass`` (procedural,
embedded), ``folder`` (the user's images and masks), ``volumes`` (the user's 3-D volumes),
``nnunet`` (nnU-Net's raw layout or the Medical Segmentation Decathlon's: several input
channels, 2-D or 3-D) and ``oxford_iiit_pet`` (downloaded by TFDS).
"""

# The training stack (TFDS, grain, PIL, nibabel, ...) is the `train` extra, not a dependency of
# the losses: say so instead of failing on the first missing module.
_TRAIN_EXTRA = {
  "PIL",
  "array_record",
  "etils",
  "flax",
  "grain",
  "nibabel",
  "optax",
  "tensorflow_datasets",
}

try:
  from regionloss_jax.data.augment import Augment
  from regionloss_jax.data.cache import cache_dir
  from regionloss_jax.data.folder import SegmentationFolder, load_folder
  from regionloss_jax.data.imbalanced_shapes import (
    ImbalancedShapes,
    ImbalancedShapesConfig,
    load_imbalanced_shapes,
    shapes_config,
  )
  from regionloss_jax.data.nnunet import load_nnunet
  from regionloss_jax.data.oxford_pet import load_oxford_pet
  from regionloss_jax.data.pipeline import eval_examples, make_pipeline, restore_state, save_state
  from regionloss_jax.data.preprocess import Preprocessing
  from regionloss_jax.data.source import IGNORE_INDEX, DataError, SegmentationData
  from regionloss_jax.data.volumes import SegmentationVolumes, load_volumes
except ModuleNotFoundError as error:
  if (error.name or "").partition(".")[0] not in _TRAIN_EXTRA:
    raise
  raise ModuleNotFoundError(
    f"regionloss_jax.data needs {error.name!r}, part of the training extra: "
    "pip install 'regionloss_jax[train]'",
    name=error.name,
  ) from error

DATASETS = (
  "imbalanced_shapes/binary",
  "imbalanced_shapes/multiclass",
  "folder",
  "volumes",
  "nnunet",
  "oxford_iiit_pet",
)


def load(name: str, *, split: str = "train", **options) -> SegmentationData:
  """Open ``split`` of dataset ``name`` (one of ``DATASETS``), preparing it if needed.

  ``options`` go to the dataset's loader: :func:`load_imbalanced_shapes`,
  :func:`load_folder` (``root``, ``num_classes``, ...), :func:`load_volumes`,
  :func:`load_nnunet` or :func:`load_oxford_pet`.
  """
  if name.startswith("imbalanced_shapes"):
    task = name.partition("/")[2] or "binary"
    return load_imbalanced_shapes(task, split=split, **options)
  if name == "folder":
    return load_folder(split=split, **options)
  if name == "volumes":
    return load_volumes(split=split, **options)
  if name == "nnunet":
    return load_nnunet(split=split, **options)
  if name == "oxford_iiit_pet":
    return load_oxford_pet(split=split, **options)
  raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


__all__ = [
  "Augment",
  "DATASETS",
  "DataError",
  "IGNORE_INDEX",
  "ImbalancedShapes",
  "ImbalancedShapesConfig",
  "Preprocessing",
  "SegmentationData",
  "SegmentationFolder",
  "SegmentationVolumes",
  "cache_dir",
  "eval_examples",
  "load",
  "load_folder",
  "load_imbalanced_shapes",
  "load_nnunet",
  "load_oxford_pet",
  "load_volumes",
  "make_pipeline",
  "restore_state",
  "save_state",
  "shapes_config",
]
