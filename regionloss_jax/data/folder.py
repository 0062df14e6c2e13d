"""A folder of 2-D images and masks, prepared once into the cache as a TFDS dataset.

Layout ``root/{train,val,test}/{images,masks}/<stem>.<ext>`` (PNG, JPEG, TIFF, BMP; read
with Pillow), images and masks paired by stem. Masks hold class ids (``value_map`` maps
other raw values, e.g. ``{0: 0, 255: 1}`` for 0/255 binary masks).

Images keep their own size (``image_size=None``, native resolution; the sizes may differ
within a folder) or are resized bilinearly, masks by nearest neighbour, to ``image_size``.
Channels and values follow :mod:`regionloss_jax.data.preprocess`: one channel when every
image is grey-scale, else three; uint8 when every image is 8-bit, else uint16. The prepared
features: ``image`` ``(H, W, C)``, ``segmentation_mask`` uint8 ``(H, W, 1)`` of class ids,
``file_name``, ``original_shape`` (the file's ``(H, W)``), and ``locations`` /
``location_classes``, a sample of every class's pixels for foreground patches.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from regionloss_jax.data import arrays, pairing, patches, preprocess
from regionloss_jax.data.files import (
  GREY_MODES,
  HIGH_DEPTH_MODES,
  image_stem,
  open_image,
  read_image,
  read_mask,
)
from regionloss_jax.data.source import DataError, SegmentationData

MEAN, STD = 0.5, 0.25


def image_format(paths) -> tuple[int, int]:
  """``(channels, bit_depth)`` of a dataset from its images' headers: 1 channel when all are
  grey-scale (else 3), bit depth 8 when all are 8-bit (else 16). Unreadable files are
  skipped here; the full check names them."""
  grey, high = True, False
  for path in paths:
    try:
      with open_image(path) as im:
        mode = im.mode
    except Exception:  # noqa: BLE001  (check_pairs reports it)
      continue
    grey &= mode in GREY_MODES
    high |= mode in HIGH_DEPTH_MODES
  return (1 if grey else 3), (16 if high else 8)


def check_pairs(
  pairs: dict, lookup: dict[int, int], *, root, problems=(), native: bool = False
) -> dict:
  """Open every file, compare sizes and mask values; raise one :class:`DataError` naming
  every bad file, after ``problems`` already found (e.g. unpaired files). Warns for splits
  whose masks are all background. ``native``: images keep their own size."""
  problems = list(problems)
  foreground = {}
  for split, split_pairs in pairs.items():
    foreground[split] = False
    for image_path, mask_path in split_pairs:
      image_size = None
      empty = pairing.empty_file_problem(image_path, "image")
      if empty:
        problems.append(empty)
      else:
        try:
          image = read_image(image_path)
        except Exception as e:  # Pillow raises many types for bad files.
          problems.append(f"{image_path}: unreadable or corrupt image ({type(e).__name__}: {e})")
        else:
          image_size = (image.shape[1], image.shape[0])
          nonfinite = pairing.nonfinite_problem(image_path, image, "image")
          if nonfinite:
            problems.append(nonfinite)
      empty = pairing.empty_file_problem(mask_path, "mask")
      if empty:
        problems.append(empty)
        continue
      try:
        mask = read_mask(mask_path)
      except Exception as e:
        problems.append(f"{mask_path}: unreadable or corrupt mask ({type(e).__name__}: {e})")
        continue
      if image_size is not None and image_size != (mask.shape[1], mask.shape[0]):
        problems.append(
          f"{image_path} is {image_size[0]}x{image_size[1]} but its mask "
          f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height)"
        )
      small = pairing.too_small_problem(mask_path, mask.shape) if native else None
      if small:
        problems.append(small)
      values = np.unique(mask)
      message = pairing.value_problem(mask_path, values, lookup)
      if message:
        problems.append(message)
      elif any(lookup[v] not in (0, 255) for v in values.tolist()):
        foreground[split] = True
  if problems:
    raise DataError(problems, root=str(root))
  pairing.warn_background_only(foreground, root)
  return pairs


@dataclasses.dataclass(kw_only=True)
class FolderConfig(tfds.core.BuilderConfig):
  """What to write: the checked pairs per split, how images are stored (size, channels,
  bit depth) and the value lookup."""

  pairs: dict = dataclasses.field(default_factory=dict, repr=False)
  preprocessing: preprocess.Preprocessing | None = None
  lookup: dict = dataclasses.field(default_factory=dict)
  class_names: tuple[str, ...] = ()


class SegmentationFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder that writes a checked image folder to ``array_record`` files."""

  name = "segmentation_folder"
  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {
    "1.0.0": "First version.",
    "2.0.0": "Native sizes, grey-scale and 16-bit images, original_shape and class locations.",
  }

  def __init__(self, *, config: FolderConfig, data_dir, **kwargs):
    super().__init__(config=config, data_dir=str(data_dir), file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    prep = config.preprocessing
    h, w = prep.size or (None, None)
    dtype = np.uint8 if prep.bit_depth == 8 else np.uint16
    # Several unknown dimensions need the bytes encoding, which also stores each shape.
    encoding = "bytes" if prep.size is None else "none"
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(
            shape=(h, w, prep.channels), dtype=dtype, encoding=encoding
          ),
          "segmentation_mask": tfds.features.Tensor(
            shape=(h, w, 1), dtype=np.uint8, encoding=encoding
          ),
          "file_name": tfds.features.Text(),
          "original_shape": tfds.features.Tensor(shape=(2,), dtype=np.int32),
          "locations": tfds.features.Tensor(shape=(None, 2), dtype=np.int32),
          "location_classes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
        }
      ),
      metadata=tfds.core.MetadataDict(class_names=list(config.class_names)),
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
      mask = pairing.apply_lookup(read_mask(mask_path), config.lookup)
      yield (
        str(image_path),
        image_example(
          config.preprocessing,
          read_image(image_path),
          mask,
          file_name=pathlib.Path(image_path).name,
          num_classes=len(config.class_names),
        ),
      )


def image_example(
  prep: preprocess.Preprocessing,
  image: np.ndarray,
  mask: np.ndarray,
  *,
  file_name: str,
  num_classes: int,
) -> dict:
  """The prepared example of one image.

  Args:
    prep: how the image is stored (channels, bit depth, size).
    image: the file's ``(H, W, C)`` (as read; several channel files stacked).
    mask: uint8 class ids ``(H, W)``.
    file_name: the name its predictions and metrics go by.
    num_classes: classes including background.

  Returns:
    The features of :class:`SegmentationFolder`.
  """
  stored = preprocess.stored_input(prep, image)
  original_shape = np.asarray(mask.shape, np.int32)
  if prep.size is not None:
    mask = preprocess.resize_mask(mask, prep.size)
  coords, classes = patches.class_locations(mask, num_classes)
  return {
    "image": stored,
    "segmentation_mask": mask[..., None],
    "file_name": file_name,
    "original_shape": original_shape,
    "locations": coords,
    "location_classes": classes,
  }


def load_folder(
  root,
  *,
  split: str = "train",
  num_classes: int,
  class_names: tuple[str, ...] | None = None,
  image_size: tuple[int, int] | None = (128, 128),
  value_map: dict[int, int] | None = None,
  val_fraction: float = 0.1,
  test_fraction: float = 0.1,
  split_seed: int = 0,
  cache_dir=None,
) -> SegmentationData:
  """Check and prepare (once per folder content and options) an image folder; open a split.

  Args:
    root: ``root/{train,val,test}/{images,masks}/*``; ``val``/``test`` optional.
    split: ``train``, ``validation`` (or ``val``), ``test``, or a TFDS slice of one.
    num_classes: classes including background; mask class ids are ``0..num_classes-1``.
    class_names: defaults to ``background, class_1, ...``.
    image_size: output ``(H, W)``, or ``None`` to keep every image's own size.
    value_map: raw mask value -> class id (or 255 = ignore), e.g. ``{0: 0, 255: 1}``.
    val_fraction, test_fraction: parts of train carved out when ``val``/``test`` is absent.
    split_seed: seed of that carving.
    cache_dir: cache root; files go in ``<cache_dir>/folder/<name>-<key>``.

  Returns:
    A :class:`SegmentationData` whose ``spatial_shape`` is ``image_size`` (``None`` at
    native resolution) and whose ``preprocessing`` prepares new images the same way.

  Raises:
    DataError: naming every unpaired, empty, unreadable, size-mismatched or out-of-range
      file in one report; nothing is written to the cache then.
  """
  root = pathlib.Path(root).expanduser().resolve()
  class_names = pairing.class_names_for(num_classes, class_names)
  lookup = pairing.value_lookup(num_classes, value_map)
  image_size = None if not image_size else tuple(int(s) for s in image_size)
  images = [p for p in pairing.list_files(root) if p.parent.name == "images" and image_stem(p)]
  channels, bit_depth = image_format(images)
  prep = preprocess.Preprocessing(
    spatial_dims=2,
    channels=channels,
    mean=(MEAN,) * channels,
    std=(STD,) * channels,
    bit_depth=bit_depth,
    size=image_size,
    resampler="pil",
  )
  options = dict(
    preprocessing=prep.to_dict(),
    lookup=sorted(lookup.items()),
    class_names=class_names,
    val_fraction=val_fraction,
    test_fraction=test_fraction,
    split_seed=split_seed,
    version=str(SegmentationFolder.VERSION),
  )

  def check():
    pairs, problems = pairing.find_pairs(root, stem=image_stem)
    # The paired files are read even when some are unpaired, so one report names them all.
    check_pairs(pairs, lookup, root=root, problems=problems, native=image_size is None)
    return pairing.carve_splits(
      pairs, val_fraction=val_fraction, test_fraction=test_fraction, seed=split_seed
    )

  def make_builder(data_dir, pairs):
    config = FolderConfig(
      name="default", pairs=pairs or {}, preprocessing=prep, lookup=lookup, class_names=class_names
    )
    return SegmentationFolder(config=config, data_dir=data_dir)

  builder = pairing.prepare_cached(
    kind="folder",
    root=root,
    options=options,
    cache_dir=cache_dir,
    check=check,
    make_builder=make_builder,
  )
  return SegmentationData(
    source=arrays.split_source(
      builder, pairing.split_name(split), memory_mapped=image_size is None
    ),
    class_names=class_names,
    spatial_shape=image_size,
    mean=prep.mean,
    std=prep.std,
    info=builder.info,
    preprocessing=prep,
  )
