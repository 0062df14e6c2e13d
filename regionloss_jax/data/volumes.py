"""A folder of 3-D volumes and label volumes, prepared once into the cache as a TFDS dataset.

Layout ``root/{train,val,test}/{images,masks}/<stem>.{nii,nii.gz,npy}`` paired by stem.
NIfTI arrays (read with nibabel, axes ``x, y, z``) are transposed to ``(D, H, W) = (z, y, x)``;
``.npy`` arrays are taken as ``(D, H, W)`` with 1 mm voxels. Image intensities are clipped to
``intensity_range`` (default: the volume's 0.5 and 99.5 percentiles) and scaled to
``[0, 1]``. Each volume keeps its own shape (``shape=None``, native resolution) or is brought
to ``shape`` by resampling (``resize``: linear for images, nearest for labels) or by centre
crop / zero padding (``crop_or_pad``); with ``spacing``, volumes are first resampled to that
voxel spacing (in mm, ``(D, H, W)`` order).

Prepared features: ``image`` float32 ``(D, H, W, C)`` (``C = 1`` here; the nnU-Net layout of
:mod:`regionloss_jax.data.nnunet` writes several channels through :func:`volume_example`),
``segmentation_mask`` uint8 ``(D, H, W, 1)`` of class ids, ``file_name``, and the file's
geometry: ``original_shape``, ``affine`` (NIfTI's 4x4, identity for ``.npy``) and
``spacing``; ``locations`` / ``location_classes`` sample every class's voxels for
foreground patches.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from regionloss_jax.data import arrays, pairing, patches, preprocess
from regionloss_jax.data.files import read_volume, volume_stem
from regionloss_jax.data.source import DataError, SegmentationData

RESAMPLE_MODES = preprocess.FIT_MODES
MEAN, STD = 0.5, 0.25


def check_volume_pairs(
  pairs: dict, lookup: dict[int, int], *, root, problems=(), native: bool = False
) -> dict:
  """Read every volume; raise one :class:`DataError` naming every bad file, after
  ``problems`` already found (e.g. unpaired files). ``native``: volumes keep their own
  shape."""
  problems = list(problems)
  foreground = {}
  for split, split_pairs in pairs.items():
    foreground[split] = False
    for image_path, mask_path in split_pairs:
      shapes = {}
      for path, what in ((image_path, "volume"), (mask_path, "label volume")):
        empty = pairing.empty_file_problem(path, what)
        if empty:
          problems.append(empty)
          continue
        try:
          array = read_volume(path).array
          shapes[what] = array.shape
        except Exception as e:
          problems.append(f"{path}: unreadable or corrupt {what} ({type(e).__name__}: {e})")
          continue
        if what == "volume":
          nonfinite = pairing.nonfinite_problem(path, array, what)
          if nonfinite:
            problems.append(nonfinite)
        if what == "label volume":
          if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(
            array, np.round(array)
          ):
            problems.append(f"{path}: label volume holds non-integer values")
            continue
          small = pairing.too_small_problem(path, array.shape) if native else None
          if small:
            problems.append(small)
          values = np.unique(array).astype(np.int64)
          message = pairing.value_problem(path, values, lookup)
          if message:
            problems.append(message)
          elif any(lookup[v] not in (0, 255) for v in values.tolist()):
            foreground[split] = True
      if len(shapes) == 2 and shapes["volume"] != shapes["label volume"]:
        problems.append(
          f"{image_path} has shape {shapes['volume']} but its labels "
          f"{mask_path} have shape {shapes['label volume']}"
        )
  if problems:
    raise DataError(problems, root=str(root))
  pairing.warn_background_only(foreground, root)
  return pairs


@dataclasses.dataclass(kw_only=True)
class VolumeConfig(tfds.core.BuilderConfig):
  """What to write: the checked pairs and how each volume is brought to the model's grid."""

  pairs: dict = dataclasses.field(default_factory=dict, repr=False)
  preprocessing: preprocess.Preprocessing | None = None
  lookup: dict = dataclasses.field(default_factory=dict)
  class_names: tuple[str, ...] = ()


class SegmentationVolumes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder that writes a checked volume folder to ``array_record`` files."""

  name = "segmentation_volumes"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "1.0.0": "First version.",
    "2.0.0": "Native shapes, voxel spacing, the file's geometry and class locations.",
  }

  def __init__(self, *, config: VolumeConfig, data_dir, **kwargs):
    super().__init__(config=config, data_dir=str(data_dir), file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.preprocessing.size
    shape = tuple(size) if size is not None else (None, None, None)
    encoding = "bytes" if size is None else "none"
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(
            shape=shape + (self.builder_config.preprocessing.channels,),
            dtype=np.float32,
            encoding=encoding,
          ),
          "segmentation_mask": tfds.features.Tensor(
            shape=shape + (1,), dtype=np.uint8, encoding=encoding
          ),
          "file_name": tfds.features.Text(),
          "original_shape": tfds.features.Tensor(shape=(3,), dtype=np.int32),
          "affine": tfds.features.Tensor(shape=(4, 4), dtype=np.float64),
          "spacing": tfds.features.Tensor(shape=(3,), dtype=np.float64),
          "locations": tfds.features.Tensor(shape=(None, 3), dtype=np.int32),
          "location_classes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
        }
      ),
      metadata=tfds.core.MetadataDict(class_names=list(self.builder_config.class_names)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {
      split: self._generate_examples(pairs)
      for split, pairs in pairing.tfds_splits(self.builder_config.pairs).items()
    }

  def _generate_examples(self, pairs):
    config = self.builder_config
    for image_path, mask_path in pairs:
      labels = pairing.apply_lookup(
        np.round(read_volume(mask_path).array).astype(np.int64), config.lookup
      )
      yield (
        str(image_path),
        volume_example(
          config.preprocessing,
          read_volume(image_path),
          labels,
          file_name=pathlib.Path(image_path).name,
          num_classes=len(config.class_names),
        ),
      )


def volume_example(
  prep: preprocess.Preprocessing, volume, labels: np.ndarray, *, file_name: str, num_classes: int
) -> dict:
  """The prepared example of one case.

  Args:
    prep: how the volume is brought to the model's grid.
    volume: a :class:`regionloss_jax.data.files.Volume` of ``(D, H, W)`` (one channel) or
      ``(D, H, W, C)``; its affine and spacing are the case's geometry.
    labels: uint8 class ids ``(D, H, W)`` on the volume's grid.
    file_name: the name the case's predictions and metrics go by.
    num_classes: classes including background.

  Returns:
    The features of :class:`SegmentationVolumes`: ``image`` float32 ``(*grid, C)``,
    ``segmentation_mask`` uint8 ``(*grid, 1)``, the file's geometry and class locations.
  """
  image = preprocess.stored_volume(prep, volume.array, volume.spacing)
  if image.ndim == 3:
    image = image[..., None]
  shapes = preprocess.grid_shapes(prep, labels.shape, volume.spacing)
  if prep.spacing is not None:
    labels = preprocess.resample(labels, shapes[1], order=0)
  if prep.size is not None:
    labels = preprocess.fit_shape(labels, prep.size, mode=prep.fit_mode, order=0)
  coords, classes = patches.class_locations(labels, num_classes)
  return {
    "image": image.astype(np.float32),
    "segmentation_mask": labels[..., None],
    "file_name": file_name,
    "original_shape": np.asarray(volume.array.shape[:3], np.int32),
    "affine": volume.affine,
    "spacing": np.asarray(volume.spacing, np.float64),
    "locations": coords,
    "location_classes": classes,
  }


def load_volumes(
  root,
  *,
  split: str = "train",
  num_classes: int,
  class_names: tuple[str, ...] | None = None,
  shape: tuple[int, int, int] | None = (32, 64, 64),
  mode: str = "resize",
  spacing: tuple[float, float, float] | None = None,
  intensity_range: tuple[float, float] | None = None,
  value_map: dict[int, int] | None = None,
  val_fraction: float = 0.1,
  test_fraction: float = 0.1,
  split_seed: int = 0,
  cache_dir=None,
) -> SegmentationData:
  """Check and prepare (once per folder content and options) a volume folder; open a split.

  Args:
    root: ``root/{train,val,test}/{images,masks}/*.{nii,nii.gz,npy}``.
    split: ``train``, ``validation`` (or ``val``), ``test``, or a TFDS slice of one.
    num_classes: classes including background.
    class_names: defaults to ``background, class_1, ...``.
    shape: output ``(D, H, W)``, or ``None`` to keep every volume's own shape.
    mode: with ``shape``, ``resize`` (resample) or ``crop_or_pad`` (centre crop / zero pad).
    spacing: voxel spacing in mm, ``(D, H, W)`` order, to resample every volume to first
      (linear for images, nearest for labels); ``None`` keeps the files' spacing.
    intensity_range: fixed ``(low, high)`` intensity window (e.g. CT Hounsfield units);
      default per-volume 0.5/99.5 percentiles.
    value_map, val_fraction, test_fraction, split_seed, cache_dir: as in
      :func:`regionloss_jax.data.load_folder`.

  Returns:
    A :class:`SegmentationData` over float32 ``(D, H, W, 1)`` images in ``[0, 1]``.

  Raises:
    DataError: naming every unpaired, empty, unreadable, shape-mismatched or out-of-range
      file in one report.
  """
  if mode not in RESAMPLE_MODES:
    raise ValueError(f"mode must be one of {RESAMPLE_MODES}, got {mode!r}")
  root = pathlib.Path(root).expanduser().resolve()
  class_names = pairing.class_names_for(num_classes, class_names)
  lookup = pairing.value_lookup(num_classes, value_map)
  shape = None if not shape else tuple(int(s) for s in shape)
  if shape is not None and len(shape) != 3:
    raise ValueError(f"shape must be (D, H, W), got {shape}")
  spacing = None if not spacing else tuple(float(s) for s in spacing)
  if spacing is not None and (len(spacing) != 3 or min(spacing) <= 0):
    raise ValueError(f"spacing must be three positive voxel sizes in mm (D, H, W), got {spacing}")
  prep = preprocess.Preprocessing(
    spatial_dims=3,
    channels=1,
    mean=(MEAN,),
    std=(STD,),
    size=shape,
    fit_mode=mode,
    spacing=spacing,
    intensity_range=None if intensity_range is None else tuple(intensity_range),
  )
  options = dict(
    preprocessing=prep.to_dict(),
    lookup=sorted(lookup.items()),
    class_names=class_names,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    split_seed=split_seed,
    version=str(SegmentationVolumes.VERSION),
  )

  def check():
    pairs, problems = pairing.find_pairs(root, stem=volume_stem)
    # The paired volumes are read even when some are unpaired, so one report names them all.
    check_volume_pairs(pairs, lookup, root=root, problems=problems, native=shape is None)
    return pairing.carve_splits(
      pairs, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )

  def make_builder(data_dir, pairs):
    config = VolumeConfig(
      name="default", pairs=pairs or {}, preprocessing=prep, lookup=lookup, class_names=class_names
    )
    return SegmentationVolumes(config=config, data_dir=data_dir)

  builder = pairing.prepare_cached(
    kind="volumes",
    root=root,
    options=options,
    cache_dir=cache_dir,
    check=check,
    make_builder=make_builder,
  )
  return SegmentationData(
    source=arrays.split_source(builder, pairing.split_name(split), memory_mapped=shape is None),
    class_names=class_names,
    spatial_shape=shape,
    mean=prep.mean,
    std=prep.std,
    info=builder.info,
    preprocessing=prep,
  )
