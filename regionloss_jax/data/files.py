"""Reading the users' image, mask and volume files, as they are on disk.

2-D images (PNG, JPEG, TIFF, BMP; Pillow) come back with the channels and bit depth they
have: grey-scale as one channel, colour as three (palette images expanded, alpha dropped),
8-bit as uint8 and 16-bit or float images in their own dtype. Volumes (NIfTI through
nibabel, or ``.npy``) come back as ``(D, H, W)`` with their affine and voxel spacing.
What the model sees is decided by :mod:`regionloss_jax.data.preprocess`, not here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import warnings
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".npy")
# Pillow modes of one channel; "I;16*", "I" and "F" are the high-bit-depth ones.
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def image_stem(path: pathlib.Path) -> str | None:
  return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None


def volume_stem(path: pathlib.Path) -> str | None:
  for suffix in VOLUME_SUFFIXES:
    if path.name.lower().endswith(suffix):
      return path.name[: -len(suffix)]
  return None


@contextlib.contextmanager
def open_image(path):
  """``Image.open`` that refuses, before decoding, a header declaring more pixels than
  ``PIL.Image.MAX_IMAGE_PIXELS``.

  Pillow only warns up to twice that limit and then decodes: a corrupt or hostile header of
  a few bytes would allocate gigabytes. ``MAX_IMAGE_PIXELS = None`` lifts the limit.
  """
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below instead
    im = Image.open(path)
  with im:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
      raise ValueError(
        f"header declares {im.width}x{im.height} pixels, more than the "
        f"{limit} PIL.Image.MAX_IMAGE_PIXELS allows (a corrupt file, or raise that limit)"
      )
    yield im


def read_image(path) -> np.ndarray:
  """An image file as ``(H, W, C)``: ``C = 1`` for grey-scale, 3 for colour.

  8-bit images are uint8; 16-bit ones uint16 (32-bit integer and float images keep their
  dtype). Palette images are expanded to RGB and an alpha channel is dropped.
  """
  with open_image(path) as im:
    im.load()
    mode = im.mode
    if mode in HIGH_DEPTH_MODES:
      array = np.asarray(im)
      if array.dtype.kind == "u" or mode.startswith("I;16"):
        array = array.astype(np.uint16)
      return array[..., None]
    if mode in GREY_MODES:
      return np.asarray(im.convert("L"))[..., None]
    return np.asarray(im.convert("RGB"))


def read_mask(path) -> np.ndarray:
  """A mask file as an integer ``(H, W)`` array of raw values (palette indices for ``P``).

  Raises ``ValueError`` for a colour mask whose channels differ.
  """
  with open_image(path) as im:
    im.load()
    array = np.asarray(im)
  if array.ndim == 3:
    if not all(np.array_equal(array[..., 0], array[..., c]) for c in range(1, array.shape[-1])):
      raise ValueError(
        f"colour mask with {array.shape[-1]} differing channels; masks must hold "
        "class ids in a single channel"
      )
    array = array[..., 0]
  return array


@dataclasses.dataclass(frozen=True)
class Volume:
  """A volume as read: ``array (D, H, W)``, its 4x4 ``affine`` (voxel index ``(x, y, z)`` to
  world millimetres, NIfTI's convention), ``spacing`` in millimetres in ``(D, H, W)`` order,
  and the NIfTI ``header`` (``None`` for ``.npy``)."""

  array: np.ndarray
  affine: np.ndarray
  spacing: tuple[float, float, float]
  header: Any = None


def read_volume(path, *, channels: bool = False) -> Volume:
  """A volume file (``.nii``, ``.nii.gz`` or ``.npy``) as a :class:`Volume`.

  NIfTI arrays, stored ``(x, y, z)``, are transposed to ``(D, H, W) = (z, y, x)``; ``.npy``
  arrays are taken as ``(D, H, W)`` with an identity affine (1 mm voxels). A trailing or
  leading axis of size 1 is dropped. Raises ``ValueError`` for other ranks.

  ``channels``: return ``(D, H, W, C)`` instead, ``C`` from a 4-D NIfTI's fourth axis
  (``(x, y, z, c)``, the Medical Segmentation Decathlon's multi-modal images) or a 4-D
  ``.npy``'s last; a 3-D file gives ``C = 1``.
  """
  path = pathlib.Path(path)
  if path.name.lower().endswith(".npy"):
    array, affine, header = np.load(path, allow_pickle=False), np.eye(4), None
  else:
    import nibabel  # Only volume users need it.

    image = nibabel.load(str(path))
    array, affine, header = np.asarray(image.dataobj), np.asarray(image.affine), image.header
    if array.ndim == 5 and array.shape[3] == 1:  # (x, y, z, time 1, c): NIfTI's vector data
      array = array[:, :, :, 0]
    if array.ndim == 4 and (channels or array.shape[-1] == 1):
      array = np.moveaxis(array, -1, 0)  # channels first, so that .T puts them last
    array = array.T
  if channels:
    array = _channels_last(array)
  else:
    if array.ndim == 4 and 1 in (array.shape[0], array.shape[-1]):
      array = array.squeeze(0 if array.shape[0] == 1 else -1)
    if array.ndim != 3:
      raise ValueError(f"expected a 3-D volume, got shape {array.shape}")
  # Columns of the affine's linear part are the voxel axes x, y, z; their lengths are the
  # voxel sizes, reversed into (D, H, W) = (z, y, x) order.
  sizes = np.sqrt((np.asarray(affine, np.float64)[:3, :3] ** 2).sum(axis=0))
  spacing = tuple(float(s) if s > 0 else 1.0 for s in sizes[::-1])
  return Volume(array, np.asarray(affine, np.float64), spacing, header)


def _channels_last(array: np.ndarray) -> np.ndarray:
  """``(D, H, W)`` -> ``(D, H, W, 1)``; ``(D, H, W, C)`` as it is; other ranks refused."""
  if array.ndim == 3:
    return array[..., None]
  if array.ndim != 4:
    raise ValueError(f"expected a 3-D volume (D, H, W) or (D, H, W, C), got shape {array.shape}")
  return array
