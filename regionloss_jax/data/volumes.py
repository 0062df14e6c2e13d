"""A folder of 3-D volumes and label volumes, prepared once into the cache as a TFDS dataset.

Layout ``root/{train,val,test}/{images,masks}/<stem>.{nii,nii.gz,npy}`` paired by stem.
NIfTI arrays (read with nibabel, axes ``x, y, z``) are transposed to ``(D, H, W) = (z, y, x)``;
``.npy`` arrays are taken as ``(D, H, W)``. Each volume is brought to ``shape`` either by
resampling (``resize``: linear for images, nearest for labels) or by centre crop / zero
padding (``crop_or_pad``). Image intensities are clipped to ``intensity_range`` (default: the
volume's 0.5 and 99.5 percentiles) and scaled to ``[0, 1]``; the prepared ``image`` is float32
``(D, H, W, 1)`` and ``segmentation_mask`` uint8 ``(D, H, W, 1)`` of class ids.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from scipy import ndimage

from regionloss_jax.data import pairing
from regionloss_jax.data.source import DataError, SegmentationData

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")
RESAMPLE_MODES = ("resize", "crop_or_pad")


def volume_stem(path: pathlib.Path) -> str | None:
  for suffix in VOLUME_SUFFIXES:
    if path.name.lower().endswith(suffix):
      return path.name[: -len(suffix)]
  return None


def read_volume(path) -> np.ndarray:
  """A volume file as a 3-D ``(D, H, W)`` array; raises ``ValueError`` for other ranks."""
  path = pathlib.Path(path)
  if path.name.lower().endswith(".npy"):
    array = np.load(path, allow_pickle=False)
  else:
    import nibabel  # Only volume users need it.

    array = np.asarray(nibabel.load(str(path)).dataobj).T
  if array.ndim == 4 and 1 in (array.shape[0], array.shape[-1]):
    array = array.squeeze(0 if array.shape[0] == 1 else -1)
  if array.ndim != 3:
    raise ValueError(f"expected a 3-D volume, got shape {array.shape}")
  return array


def fit_shape(volume: np.ndarray, shape, *, mode: str, order: int) -> np.ndarray:
  """Resample (``resize``) or centre crop / zero pad (``crop_or_pad``) to ``shape``."""
  if volume.shape == tuple(shape):
    return volume
  if mode == "resize":
    zoom = [t / s for t, s in zip(shape, volume.shape)]
    return ndimage.zoom(volume, zoom, order=order, mode="nearest", grid_mode=True)
  out = np.zeros(shape, volume.dtype)
  src, dst = [], []
  for size, target in zip(volume.shape, shape):
    if size >= target:
      start = (size - target) // 2
      src.append(slice(start, start + target))
      dst.append(slice(0, target))
    else:
      start = (target - size) // 2
      src.append(slice(0, size))
      dst.append(slice(start, start + size))
  out[tuple(dst)] = volume[tuple(src)]
  return out


def scale_intensity(volume: np.ndarray, intensity_range) -> np.ndarray:
  """Clip to ``intensity_range`` (default 0.5/99.5 percentiles) and scale to float32 [0, 1]."""
  volume = volume.astype(np.float32)
  lo, hi = intensity_range or np.percentile(volume, (0.5, 99.5))
  return np.clip((volume - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)


def check_volume_pairs(pairs: dict, lookup: dict[int, int], *, root) -> dict:
  """Read every volume; raise one :class:`DataError` naming every bad file."""
  problems = []
  foreground = {}
  for split, split_pairs in pairs.items():
    foreground[split] = False
    for image_path, mask_path in split_pairs:
      shapes = {}
      for path, what in ((image_path, "volume"), (mask_path, "label volume")):
        try:
          array = read_volume(path)
          shapes[what] = array.shape
        except Exception as e:
          problems.append(f"{path}: unreadable or corrupt {what} ({type(e).__name__}: {e})")
          continue
        if what == "label volume":
          if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(
              array, np.round(array)):
            problems.append(f"{path}: label volume holds non-integer values")
            continue
          values = np.unique(array).astype(np.int64)
          message = pairing.value_problem(path, values, lookup)
          if message:
            problems.append(message)
          elif any(lookup[v] not in (0, 255) for v in values.tolist()):
            foreground[split] = True
      if len(shapes) == 2 and shapes["volume"] != shapes["label volume"]:
        problems.append(f"{image_path} has shape {shapes['volume']} but its labels "
                        f"{mask_path} have shape {shapes['label volume']}")
  if problems:
    raise DataError(problems, root=str(root))
  pairing.warn_background_only(foreground, root)
  return pairs


@dataclasses.dataclass(kw_only=True)
class VolumeConfig(tfds.core.BuilderConfig):
  """What to write: the checked pairs, output shape, resampling and intensity options."""

  pairs: dict = dataclasses.field(default_factory=dict, repr=False)
  shape: tuple[int, int, int] = (32, 64, 64)
  mode: str = "resize"
  intensity_range: tuple[float, float] | None = None
  lookup: dict = dataclasses.field(default_factory=dict)
  class_names: tuple[str, ...] = ()


class SegmentationVolumes(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder that writes a checked volume folder to ``array_record`` files."""

  name = "segmentation_volumes"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def __init__(self, *, config: VolumeConfig, data_dir, **kwargs):
    super().__init__(config=config, data_dir=str(data_dir), file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    shape = tuple(self.builder_config.shape)
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=shape + (1,), dtype=np.float32),
            "segmentation_mask": tfds.features.Tensor(shape=shape + (1,), dtype=np.uint8),
            "file_name": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(class_names=list(self.builder_config.class_names)),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(pairs)
            for split, pairs in pairing.tfds_splits(self.builder_config.pairs).items()}

  def _generate_examples(self, pairs):
    config = self.builder_config
    for image_path, mask_path in pairs:
      image = scale_intensity(read_volume(image_path), config.intensity_range)
      labels = pairing.apply_lookup(np.round(read_volume(mask_path)).astype(np.int64),
                                    config.lookup)
      image = fit_shape(image, config.shape, mode=config.mode, order=1)
      labels = fit_shape(labels, config.shape, mode=config.mode, order=0)
      yield str(image_path), {"image": image[..., None], "segmentation_mask": labels[..., None],
                              "file_name": pathlib.Path(image_path).name}


def load_volumes(root, *, split: str = "train", num_classes: int,
                 class_names: tuple[str, ...] | None = None,
                 shape: tuple[int, int, int] = (32, 64, 64), mode: str = "resize",
                 intensity_range: tuple[float, float] | None = None,
                 value_map: dict[int, int] | None = None, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, split_seed: int = 0,
                 cache_dir=None) -> SegmentationData:
  """Check and prepare (once per folder content and options) a volume folder; open a split.

  Args:
    root: ``root/{train,val,test}/{images,masks}/*.{nii,nii.gz,npy}``.
    split: ``train``, ``validation`` (or ``val``), ``test``, or a TFDS slice of one.
    num_classes: classes including background.
    class_names: defaults to ``background, class_1, ...``.
    shape: output ``(D, H, W)``.
    mode: ``resize`` (resample) or ``crop_or_pad`` (centre crop / zero pad).
    intensity_range: fixed ``(low, high)`` intensity window (e.g. CT Hounsfield units);
      default per-volume 0.5/99.5 percentiles.
    value_map, val_fraction, test_fraction, split_seed, cache_dir: as in
      :func:`regionloss_jax.data.load_folder`.

  Returns:
    A :class:`SegmentationData` over float32 ``(D, H, W, 1)`` images in ``[0, 1]``.

  Raises:
    DataError: naming every unpaired, unreadable, shape-mismatched or out-of-range file.
  """
  if mode not in RESAMPLE_MODES:
    raise ValueError(f"mode must be one of {RESAMPLE_MODES}, got {mode!r}")
  root = pathlib.Path(root).expanduser().resolve()
  class_names = pairing.class_names_for(num_classes, class_names)
  lookup = pairing.value_lookup(num_classes, value_map)
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3:
    raise ValueError(f"shape must be (D, H, W), got {shape}")
  options = dict(shape=shape, mode=mode, intensity_range=intensity_range,
                 lookup=sorted(lookup.items()), class_names=class_names,
                 val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                 version=str(SegmentationVolumes.VERSION))

  def check():
    pairs, problems = pairing.find_pairs(root, stem=volume_stem)
    if problems:
      raise DataError(problems, root=str(root))
    check_volume_pairs(pairs, lookup, root=root)
    return pairing.carve_splits(pairs, val_fraction=val_fraction, test_fraction=test_fraction,
                                seed=split_seed)

  def make_builder(data_dir, pairs):
    config = VolumeConfig(name="default", pairs=pairs or {}, shape=shape, mode=mode,
                          intensity_range=intensity_range, lookup=lookup,
                          class_names=class_names)
    return SegmentationVolumes(config=config, data_dir=data_dir)

  builder = pairing.prepare_cached(kind="volumes", root=root, options=options,
                                   cache_dir=cache_dir, check=check, make_builder=make_builder)
  return SegmentationData(
      source=builder.as_data_source(pairing.split_name(split)),
      class_names=class_names,
      spatial_shape=shape,
      mean=(0.5,),
      std=(0.25,),
      info=builder.info,
  )
