"""Oxford-IIIT Pet through TFDS's own ``oxford_iiit_pet`` builder, read without TensorFlow.

The trimaps hold 1 = pet, 2 = background, 3 = border (unclassified). They become classes
``background`` (0) and ``pet`` (1), the border being class ``border`` (2) or ``IGNORE_INDEX``
(``border="ignore"``); any other value is ignored. Images and trimaps vary in size: the
pipeline resizes them to ``image_size``.

Reading needs no TensorFlow: the TFDS data source decodes the stored JPEG/PNG bytes with
Pillow. Preparing (download, then write ``array_record`` files) runs TFDS's builder, except
that its generator re-encodes a dozen known-bad JPEGs with ``tf.image``; without TensorFlow
installed, :func:`tf_free_builder` gives the same builder with that step done by Pillow,
writing files the stock builder reads.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from regionloss_jax.data import cache, preprocess
from regionloss_jax.data.source import IGNORE_INDEX, SegmentationData

NAME = "oxford_iiit_pet"
BORDER_OPTIONS = ("class", "ignore")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def trimap_lut(border: str) -> np.ndarray:
  """``uint8[256]``: trimap value -> class id (``IGNORE_INDEX`` for anything unexpected)."""
  if border not in BORDER_OPTIONS:
    raise ValueError(f"border must be one of {BORDER_OPTIONS}, got {border!r}")
  lut = np.full(256, IGNORE_INDEX, np.uint8)
  lut[1] = 1  # pet
  lut[2] = 0  # background
  lut[3] = 2 if border == "class" else IGNORE_INDEX
  return lut


def _pillow_jpeg(data: bytes) -> bytes:
  """Decode any image Pillow reads and re-encode it as a clean 3-channel JPEG."""
  with Image.open(io.BytesIO(data)) as im:
    buffer = io.BytesIO()
    im.convert("RGB").save(buffer, format="JPEG", quality=95)
  return buffer.getvalue()


def tf_free_builder(**kwargs) -> tfds.core.DatasetBuilder:
  """TFDS's ``oxford_iiit_pet`` builder whose example generator needs no TensorFlow.

  Same name, version, features and download; writes ``array_record`` files by default.
  The subclass is made on call (and not registered) so importing this module changes
  nothing in TFDS.
  """
  stock = tfds.builder_cls(NAME)
  module = sys.modules[stock.__module__]

  class PetWithoutTF(stock, skip_registration=True):
    name = NAME
    # Metadata and download checksums are the stock builder's.
    pkg_dir_path = stock._get_pkg_dir_path()
    _checksums_path = stock._checksums_path

    def _generate_examples(self, images_dir_path, annotations_dir_path, images_list_file):
      # Mirrors the stock generator; the known-bad files are re-encoded with Pillow.
      trimaps = os.path.join(annotations_dir_path, "trimaps")
      xmls = os.path.join(annotations_dir_path, "xmls")
      with epath.Path(images_list_file).open("r") as lines:
        for line in lines:
          stem, label, species, _ = line.strip().split(" ")
          data = epath.Path(os.path.join(images_dir_path, stem + ".jpg")).read_bytes()
          if stem in module._CORRUPT_SAMPLES:
            data = _pillow_jpeg(data)
          try:
            head_bbox = module._get_head_bbox(os.path.join(xmls, stem + ".xml"))
          except FileNotFoundError:  # Test images have no head box.
            head_bbox = module._EMPTY_BBOX
          yield (
            stem + ".jpg",
            {
              "image": io.BytesIO(data),
              "label": int(label) - 1,
              "species": int(species) - 1,
              "file_name": stem + ".jpg",
              "segmentation_mask": os.path.join(trimaps, stem + ".png"),
              "head_bbox": head_bbox,
            },
          )

  kwargs.setdefault("file_format", "array_record")
  return PetWithoutTF(**kwargs)


def load_oxford_pet(
  *,
  split: str = "train",
  border: str = "class",
  image_size: tuple[int, int] | None = (128, 128),
  data_dir=None,
  download: bool = True,
) -> SegmentationData:
  """Open a split of Oxford-IIIT Pet as pet / background (/ border) segmentation.

  Args:
    split: ``train`` or ``test`` (TFDS slicing such as ``train[:90%]`` works).
    border: ``class`` (a third class) or ``ignore`` (``IGNORE_INDEX``).
    image_size: the ``(H, W)`` the pipeline resizes to by default; ``None`` keeps every
      image's own size.
    data_dir: TFDS data directory; default ``<cache_dir>/tfds``.
    download: download and prepare if not prepared yet (needs internet, ~800 MB).

  Returns:
    A :class:`SegmentationData` over variable-size uint8 images and raw trimaps, with the
    trimap lookup table and ImageNet normalisation statistics.
  """
  lut = trimap_lut(border)
  data_dir = str(data_dir or cache.cache_dir() / "tfds")
  builder = tfds.builder(NAME, data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    if not download:
      raise FileNotFoundError(f"{NAME} is not prepared in {data_dir}; pass download=True")
    has_tf = importlib.util.find_spec("tensorflow") is not None
    (builder if has_tf else tf_free_builder(data_dir=data_dir)).download_and_prepare()
    builder = tfds.builder(NAME, data_dir=data_dir, file_format="array_record")
  class_names = ("background", "pet", "border") if border == "class" else ("background", "pet")
  image_size = tuple(image_size) if image_size else None
  return SegmentationData(
    source=builder.as_data_source(split),
    class_names=class_names,
    label_lut=lut,
    spatial_shape=image_size,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    info=builder.info,
    preprocessing=preprocess.Preprocessing(
      spatial_dims=2,
      channels=3,
      mean=IMAGENET_MEAN,
      std=IMAGENET_STD,
      size=image_size,
      resampler="affine",
    ),
  )
