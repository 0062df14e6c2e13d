"""Shared fixtures for the data tests: a tiny prepared ``imbalanced_shapes`` and file writers.

Every cache lives under pytest's ``tmp_path``; nothing touches ``~/.cache``.
"""

import pathlib

import numpy as np
import pytest
from PIL import Image

from regionloss_jax import data

TINY = dict(image_size=24, split_sizes=(24, 6, 6))


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch, tmp_path):
  # A loader called without cache_dir must still stay inside the test's tmp_path.
  monkeypatch.setenv("REGIONLOSS_JAX_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
  """``imbalanced_shapes/multiclass`` train split, 24 examples of 24x24."""
  cache = tmp_path_factory.mktemp("shapes-cache")
  return data.load("imbalanced_shapes/multiclass", split="train", cache_dir=cache, **TINY)


def write_png(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def write_pairs(root: pathlib.Path, split: str, count: int, *, size=(20, 30), binary_255=False,
                seed=0):
  """``count`` PNG pairs in ``root/split``; masks hold 0/1/2 or 0/255 (``binary_255``).

  Each mask is a rectangle of one class on background; the image encodes the class in its
  red channel so tests can check image and mask stay aligned.
  """
  rng = np.random.default_rng(seed)
  h, w = size
  for i in range(count):
    mask = np.zeros((h, w), np.uint8)
    value = 255 if binary_255 else int(rng.integers(1, 3))
    mask[h // 4: 3 * h // 4, w // 2:] = value
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.where(mask > 0, 200, 20)
    image[..., 1] = rng.integers(0, 255)
    write_png(root / split / "images" / f"case{i:02d}.png", image)
    write_png(root / split / "masks" / f"case{i:02d}.png", mask)
  return root
