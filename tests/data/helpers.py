"""File writers and sizes shared by the data tests; their fixtures are in conftest.py."""

import pathlib

import numpy as np
from PIL import Image

TINY = dict(image_size=24, split_sizes=(24, 6, 6))


def write_png(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def write_pairs(
  root: pathlib.Path, split: str, count: int, *, size=(20, 30), binary_255=False, seed=0
):
  """``count`` PNG pairs in ``root/split``; masks hold 0/1/2 or 0/255 (``binary_255``).

  Each mask is a rectangle of one class on background; the image encodes the class in its
  red channel so tests can check image and mask stay aligned.
  """
  rng = np.random.default_rng(seed)
  h, w = size
  for i in range(count):
    mask = np.zeros((h, w), np.uint8)
    value = 255 if binary_255 else int(rng.integers(1, 3))
    mask[h // 4 : 3 * h // 4, w // 2 :] = value
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.where(mask > 0, 200, 20)
    image[..., 1] = rng.integers(0, 255)
    write_png(root / split / "images" / f"case{i:02d}.png", image)
    write_png(root / split / "masks" / f"case{i:02d}.png", mask)
  return root
