"""A folder of 2-D images and masks, prepared once into the cache as a TFDS dataset.

Layout ``root/{train,val,test}/{images,masks}/<stem>.<ext>`` (PNG, JPEG, TIFF, BMP; read
with Pillow), images and masks paired by stem. Masks hold class ids (``value_map`` maps
other raw values, e.g. ``{0: 0, 255: 1}`` for 0/255 binary masks). Images are resized
bilinearly and masks by nearest neighbour to ``image_size``; the prepared ``image`` is
uint8 ``(H, W, 3)`` and ``segmentation_mask`` uint8 ``(H, W, 1)`` holding class ids.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from regionloss_jax.data import pairing
from regionloss_jax.data.source import DataError, SegmentationData

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def image_stem(path: pathlib.Path) -> str | None:
  return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None


def read_image(path) -> np.ndarray:
  """An image file as uint8 ``(H, W, 3)``; 16-bit and float images are min-max scaled."""
  with Image.open(path) as im:
    im.load()
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
      array = np.asarray(im, np.float64)
      lo, hi = array.min(), array.max()
      array = (array - lo) / (hi - lo if hi > lo else 1.0) * 255
      return np.repeat(np.round(array).astype(np.uint8)[..., None], 3, axis=-1)
    return np.asarray(im.convert("RGB"))


def read_mask(path) -> np.ndarray:
  """A mask file as an integer ``(H, W)`` array of raw values (palette indices for ``P``).

  Raises ``ValueError`` for a colour mask whose channels differ.
  """
  with Image.open(path) as im:
    im.load()
    array = np.asarray(im)
  if array.ndim == 3:
    if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
      raise ValueError(f"colour mask with {array.shape[-1]} differing channels; masks must hold "
                       "class ids in a single channel")
    array = array[..., 0]
  return array


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]):
  """Image bilinear, mask (uint8 class ids) nearest, both to ``size = (H, W)``."""
  h, w = size
  if image.shape[:2] != (h, w):
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
  if mask.shape != (h, w):
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
  return image, mask


def check_pairs(pairs: dict, lookup: dict[int, int], *, root) -> dict:
  """Open every file, compare sizes and mask values; raise one :class:`DataError` naming
  every bad file. Warns for splits whose masks are all background."""
  problems = []
  foreground = {}
  for split, split_pairs in pairs.items():
    foreground[split] = False
    for image_path, mask_path in split_pairs:
      try:
        with Image.open(image_path) as im:
          im.load()
          image_size = im.size
      except Exception as e:  # Pillow raises many types for bad files.
        problems.append(f"{image_path}: unreadable or corrupt image ({type(e).__name__}: {e})")
        image_size = None
      try:
        mask = read_mask(mask_path)
      except Exception as e:
        problems.append(f"{mask_path}: unreadable or corrupt mask ({type(e).__name__}: {e})")
        continue
      if image_size is not None and image_size != (mask.shape[1], mask.shape[0]):
        problems.append(f"{image_path} is {image_size[0]}x{image_size[1]} but its mask "
                        f"{mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height)")
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
  """What to write: the checked pairs per split, the output size and the value lookup."""

  pairs: dict = dataclasses.field(default_factory=dict, repr=False)
  image_size: tuple[int, int] = (128, 128)
  lookup: dict = dataclasses.field(default_factory=dict)
  class_names: tuple[str, ...] = ()


class SegmentationFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """TFDS builder that writes a checked image folder to ``array_record`` files."""

  name = "segmentation_folder"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}

  def __init__(self, *, config: FolderConfig, data_dir, **kwargs):
    super().__init__(config=config, data_dir=str(data_dir), file_format="array_record", **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    h, w = self.builder_config.image_size
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(h, w, 3), dtype=np.uint8),
            "segmentation_mask": tfds.features.Tensor(shape=(h, w, 1), dtype=np.uint8),
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
      mask = pairing.apply_lookup(read_mask(mask_path), config.lookup)
      image, mask = resize_pair(read_image(image_path), mask, config.image_size)
      yield str(image_path), {"image": image, "segmentation_mask": mask[..., None],
                              "file_name": pathlib.Path(image_path).name}


def load_folder(root, *, split: str = "train", num_classes: int,
                class_names: tuple[str, ...] | None = None,
                image_size: tuple[int, int] = (128, 128),
                value_map: dict[int, int] | None = None, val_fraction: float = 0.1,
                test_fraction: float = 0.1, split_seed: int = 0,
                cache_dir=None) -> SegmentationData:
  """Check and prepare (once per folder content and options) an image folder; open a split.

  Args:
    root: ``root/{train,val,test}/{images,masks}/*``; ``val``/``test`` optional.
    split: ``train``, ``validation`` (or ``val``), ``test``, or a TFDS slice of one.
    num_classes: classes including background; mask class ids are ``0..num_classes-1``.
    class_names: defaults to ``background, class_1, ...``.
    image_size: output ``(H, W)``.
    value_map: raw mask value -> class id (or 255 = ignore), e.g. ``{0: 0, 255: 1}``.
    val_fraction, test_fraction: parts of train carved out when ``val``/``test`` is absent.
    split_seed: seed of that carving.
    cache_dir: cache root; files go in ``<cache_dir>/folder/<name>-<key>``.

  Raises:
    DataError: naming every unpaired, unreadable, size-mismatched or out-of-range file;
      nothing is written to the cache then.
  """
  root = pathlib.Path(root).expanduser().resolve()
  class_names = pairing.class_names_for(num_classes, class_names)
  lookup = pairing.value_lookup(num_classes, value_map)
  image_size = tuple(int(s) for s in image_size)
  options = dict(image_size=image_size, lookup=sorted(lookup.items()), class_names=class_names,
                 val_fraction=val_fraction, test_fraction=test_fraction, split_seed=split_seed,
                 version=str(SegmentationFolder.VERSION))

  def check():
    pairs, problems = pairing.find_pairs(root, stem=image_stem)
    if problems:
      raise DataError(problems, root=str(root))
    check_pairs(pairs, lookup, root=root)
    return pairing.carve_splits(pairs, val_fraction=val_fraction, test_fraction=test_fraction,
                                seed=split_seed)

  def make_builder(data_dir, pairs):
    config = FolderConfig(name="default", pairs=pairs or {}, image_size=image_size,
                          lookup=lookup, class_names=class_names)
    return SegmentationFolder(config=config, data_dir=data_dir)

  builder = pairing.prepare_cached(kind="folder", root=root, options=options,
                                   cache_dir=cache_dir, check=check, make_builder=make_builder)
  return SegmentationData(
      source=builder.as_data_source(pairing.split_name(split)),
      class_names=class_names,
      spatial_shape=image_size,
      info=builder.info,
  )
