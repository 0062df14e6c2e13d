"""Writing predictions where a user can open them beside the input: a PNG of class ids at the
image's own height and width, or a NIfTI volume with the input's affine and header, named
by the input's stem; optionally the class probabilities as ``.npz``."""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

from regionloss_jax.data import files


def stem(name: str) -> str:
  """``case07.png`` -> ``case07``, ``ct_3.nii.gz`` -> ``ct_3``; other names as they are."""
  path = pathlib.Path(name)
  return files.volume_stem(path) or files.image_stem(path) or name


def write_mask(classes: np.ndarray, out_dir: str, name: str, *, affine=None, header=None) -> str:
  """Writes ``classes`` (``(H, W)`` or ``(D, H, W)`` class ids) as ``out_dir/<stem>.png`` or
  ``out_dir/<stem>.nii.gz`` and returns the path.

  Volumes are written in NIfTI's ``(x, y, z)`` order with ``affine`` (identity if none) and,
  when given, the input's ``header`` (its data type set to uint8).
  """
  classes = np.asarray(classes)
  if classes.max(initial=0) > 255:
    raise ValueError(f"{classes.max()} classes do not fit a uint8 mask")
  classes = classes.astype(np.uint8)
  base = os.path.join(out_dir, stem(name))
  if classes.ndim == 3:
    import nibabel  # Only volume users need it.

    header = header.copy() if header is not None else None
    image = nibabel.Nifti1Image(
      np.ascontiguousarray(classes.T), np.eye(4) if affine is None else np.asarray(affine), header
    )
    image.set_data_dtype(np.uint8)
    if header is not None:  # a mask holds class ids: no intensity scaling
      image.header.set_slope_inter(1.0, 0.0)
    path = base + ".nii.gz"
    nibabel.save(image, path)
    return path
  path = base + ".png"
  Image.fromarray(classes).save(path)
  return path


def write_probabilities(probs: np.ndarray, out_dir: str, name: str, class_names) -> str:
  """``out_dir/<stem>.npz`` with ``probabilities`` (float32 ``(*spatial, K)``, the input's
  own grid, ``(D, H, W)`` order for volumes) and ``class_names``."""
  path = os.path.join(out_dir, stem(name) + ".npz")
  np.savez_compressed(
    path, probabilities=np.asarray(probs, np.float32), class_names=np.asarray(list(class_names))
  )
  return path
