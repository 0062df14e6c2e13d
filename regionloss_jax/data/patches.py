"""Where training patches are taken: random positions, and foreground oversampling.

nnU-Net's scheme: a fraction of the patches (``foreground_fraction``, 1/3 by default) is
centred on a pixel of a foreground class, the class chosen uniformly among those present in
the image, so that a class covering 0.05% of the image is the centre of as many patches as
one covering 30%; the other patches are placed uniformly at random. Finding a class's
pixels in a large volume is itself costly, so preparation stores a sample of them per class
(:func:`class_locations`); for small images the pipeline computes them on the fly.
"""

from __future__ import annotations

import numpy as np

# nnU-Net keeps 10,000 locations per class: plenty to spread patches over a structure.
MAX_LOCATIONS_PER_CLASS = 10_000


def class_locations(
  mask: np.ndarray, num_classes: int, *, max_per_class: int = MAX_LOCATIONS_PER_CLASS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """A sample of the pixel coordinates of every foreground class present in ``mask``.

  Args:
    mask: class ids ``(*spatial)``; 0 is background and values ``>= num_classes`` (the
      ignore index) belong to no class.
    num_classes: classes including background.
    max_per_class: at most this many coordinates per class, drawn without replacement.
    seed: seed of that draw (fixed, so that preparation is deterministic).

  Returns:
    ``(coords, classes)``: int32 ``(N, ndim)`` pixel coordinates and uint8 ``(N,)`` their
    class ids, grouped by class in increasing order.
  """
  rng = np.random.default_rng(seed)
  coords, classes = [], []
  flat = mask.reshape(-1)
  for k in range(1, num_classes):
    where = np.flatnonzero(flat == k)
    if where.size > max_per_class:
      where = np.sort(rng.choice(where, max_per_class, replace=False))
    coords.append(np.stack(np.unravel_index(where, mask.shape), axis=-1).astype(np.int32))
    classes.append(np.full(where.size, k, np.uint8))
  if not coords:
    return np.zeros((0, mask.ndim), np.int32), np.zeros((0,), np.uint8)
  return np.concatenate(coords), np.concatenate(classes)


def patch_centre(
  rng: np.random.Generator,
  shape,
  patch_size,
  *,
  coords: np.ndarray,
  classes: np.ndarray,
  foreground_fraction: float,
) -> np.ndarray:
  """The pixel on which a training patch is centred.

  With probability ``foreground_fraction`` (and when the image holds any foreground): a
  location of a class drawn uniformly among the classes in ``classes``. Otherwise a uniform
  position such that the patch lies inside the image along every axis where the image is at
  least as large as the patch; along a smaller axis, the position that puts the image in
  the patch's middle.

  Args:
    rng: the example's random generator.
    shape: the image's spatial shape.
    patch_size: the patch's spatial shape.
    coords, classes: from :func:`class_locations`.
    foreground_fraction: in ``[0, 1]``.

  Returns:
    int64 ``(ndim,)``: the pixel that the patch's pixel ``patch_size // 2`` shows.
  """
  shape = np.asarray(shape, np.int64)
  patch = np.asarray(patch_size, np.int64)
  # Both draws are made every time, so the random stream does not depend on the branch.
  take_foreground = rng.random() < foreground_fraction
  uniform = rng.random(len(shape))
  if take_foreground and len(classes):
    present = np.unique(classes)
    chosen = present[rng.integers(len(present))]
    rows = np.flatnonzero(classes == chosen)
    return coords[rows[rng.integers(len(rows))]].astype(np.int64)
  # Patch start in [0, shape - patch] where it fits; the centre is start + patch // 2.
  room = np.maximum(shape - patch, 0)
  start = np.floor(uniform * (room + 1)).astype(np.int64)
  centre = start + patch // 2
  # Where the image is smaller, it sits in the patch's middle, padded as sliding-window
  # inference pads it: (patch - shape) // 2 pixels before.
  small = shape < patch
  centre[small] = (patch // 2 - (patch - shape) // 2)[small]
  return centre
