"""Per-example augmentation in NumPy: one random affine map shared by image and mask.

Flips, a random resized crop (whole images) or a random zoom around the patch's centre
(patches at native resolution) and a small rotation are composed into a single affine map
from output to input coordinates, so the image is resampled once (bilinear) and the mask once
(nearest, so class ids stay class ids). Pixels mapped from outside the input become the
dataset's ignore index (``IGNORE_INDEX`` unless it says otherwise) in the mask.
Brightness/contrast jitter touches the image only. The same code serves 2-D ``(H, W, C)``
and 3-D ``(D, H, W, C)`` examples; rotation is in the (H, W) plane.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from regionloss_jax.data.source import IGNORE_INDEX


@dataclasses.dataclass(frozen=True, kw_only=True)
class Augment:
  """Random augmentation settings; ``Augment.none()`` only resizes.

  Attributes:
    flip_axes: spatial axes flipped with probability 1/2 each (``-1`` is width).
    scale: range of the crop area as a fraction of the input (random resized crop of a
      whole image).
    aspect_ratio: range of the crop's width/height ratio, sampled log-uniformly.
    zoom: range of the input pixels per patch pixel along each axis, sampled log-uniformly
      (patches; 1 is native resolution, above 1 zooms out).
    max_rotation_deg: rotation angle drawn uniformly in ``[-max, max]``, in the (H, W) plane.
    brightness: additive shift drawn in ``[-b, b]`` on images scaled to ``[0, 1]``.
    contrast: factor drawn in ``[1 - c, 1 + c]`` around each image's mean.
  """

  flip_axes: tuple[int, ...] = (-1,)
  scale: tuple[float, float] = (0.6, 1.0)
  aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  zoom: tuple[float, float] = (0.85, 1.25)
  max_rotation_deg: float = 15.0
  brightness: float = 0.1
  contrast: float = 0.1

  @classmethod
  def none(cls) -> Augment:
    return cls(
      flip_axes=(),
      scale=(1.0, 1.0),
      aspect_ratio=(1.0, 1.0),
      zoom=(1.0, 1.0),
      max_rotation_deg=0.0,
      brightness=0.0,
      contrast=0.0,
    )


def sample_affine(rng: np.random.Generator, in_shape, out_shape, augment: Augment):
  """A random map from output to input spatial coordinates: ``in = matrix @ out + offset``.

  Args:
    rng: the example's random generator.
    in_shape: input spatial shape ``(H, W)`` or ``(D, H, W)``.
    out_shape: output spatial shape, same length.
    augment: the settings.

  Returns:
    ``(matrix, offset)``, float64 ``(n, n)`` and ``(n,)``; pixel centres map to pixel
    centres, so with ``Augment.none()`` this is a plain resize.
  """
  n = len(in_shape)
  in_shape = np.asarray(in_shape, np.float64)
  out_shape = np.asarray(out_shape, np.float64)
  # Crop box (in input pixels): the area fraction spreads over the (H, W) plane with the
  # aspect ratio; leading (depth) axes are cropped by the same linear factor.
  area = rng.uniform(*augment.scale)
  log_lo, log_hi = np.log(augment.aspect_ratio)
  aspect = math.exp(rng.uniform(log_lo, log_hi))
  linear = math.sqrt(area)
  factors = np.full(n, linear)
  factors[-2] = min(linear / math.sqrt(aspect), 1.0)
  factors[-1] = min(linear * math.sqrt(aspect), 1.0)
  crop = in_shape * factors
  start = rng.uniform(0.0, 1.0, n) * (in_shape - crop)
  in_centre = start + crop / 2 - 0.5
  out_centre = (out_shape - 1) / 2

  matrix = _flips_and_rotation(rng, n, augment) @ np.diag(crop / out_shape)
  offset = in_centre - matrix @ out_centre
  return matrix, offset


def _flips_and_rotation(rng: np.random.Generator, n: int, augment: Augment) -> np.ndarray:
  signs = np.ones(n)
  for axis in augment.flip_axes:
    if rng.random() < 0.5:
      signs[axis] = -1.0
  angle = math.radians(rng.uniform(-augment.max_rotation_deg, augment.max_rotation_deg))
  rotation = np.eye(n)
  c, s = math.cos(angle), math.sin(angle)
  rotation[-2:, -2:] = [[c, -s], [s, c]]
  return rotation @ np.diag(signs)


def sample_patch_affine(rng: np.random.Generator, centre, patch_shape, augment: Augment):
  """A random map from patch to input coordinates that puts ``centre`` at the patch's pixel
  ``patch_shape // 2``: ``in = matrix @ (out - patch_shape // 2) + centre``.

  The matrix composes flips, a rotation in the (H, W) plane and a zoom (input pixels per
  patch pixel, the same on every axis but for the aspect-ratio jitter in (H, W)). With
  ``Augment.none()`` it is the identity and the offset an integer: the patch is an exact
  crop, at native resolution.

  Returns:
    ``(matrix, offset)``, float64 ``(n, n)`` and ``(n,)``, as :func:`sample_affine`.
  """
  n = len(patch_shape)
  log_lo, log_hi = np.log(augment.zoom)
  zoom = math.exp(rng.uniform(log_lo, log_hi))
  log_lo, log_hi = np.log(augment.aspect_ratio)
  aspect = math.exp(rng.uniform(log_lo, log_hi))
  factors = np.full(n, zoom)
  factors[-2] = zoom / math.sqrt(aspect)
  factors[-1] = zoom * math.sqrt(aspect)
  matrix = _flips_and_rotation(rng, n, augment) @ np.diag(factors)
  out_centre = np.asarray(patch_shape, np.float64) // 2
  offset = np.asarray(centre, np.float64) - matrix @ out_centre
  return matrix, offset


def warp(
  image: np.ndarray, mask: np.ndarray, matrix, offset, out_shape, *, ignore_index=IGNORE_INDEX
):
  """Resample ``image (*spatial, C)`` bilinearly and ``mask (*spatial)`` by nearest neighbour.

  Returns float32 ``(*out_shape, C)`` and uint8 ``(*out_shape)``; mask pixels that come
  from outside the input are ``ignore_index`` (the dataset's value of pixels that count
  nowhere).
  """
  out_shape = tuple(int(s) for s in out_shape)
  if (
    image.shape[:-1] == out_shape
    and np.allclose(matrix, np.eye(len(out_shape)))
    and (np.allclose(offset, 0.0))
  ):
    return image.astype(np.float32), mask
  # One call per channel: cheaper than a (n+1)-D transform with an identity channel axis.
  image = image.astype(np.float32, copy=False)
  warped = np.stack(
    [
      ndimage.affine_transform(
        image[..., c],
        matrix,
        offset=offset,
        output_shape=out_shape,
        order=1,
        mode="nearest",
        prefilter=False,
      )
      for c in range(image.shape[-1])
    ],
    axis=-1,
  )
  warped_mask = ndimage.affine_transform(
    mask, matrix, offset=offset, output_shape=out_shape, order=0, mode="nearest", prefilter=False
  )
  # A pixel is outside when its centre maps beyond the input's outer pixel edges (not its
  # outer pixel centres, or upsampling would ignore a half-pixel border).
  grid = np.indices(out_shape, dtype=np.float64).reshape(len(out_shape), -1)
  source = matrix @ grid + np.asarray(offset, np.float64)[:, None]
  limits = np.asarray(mask.shape, np.float64)[:, None] - 0.5
  inside = np.all((source >= -0.5) & (source <= limits), axis=0).reshape(out_shape)
  warped_mask[~inside] = ignore_index
  return warped, warped_mask


def warp_patch(
  image: np.ndarray, mask: np.ndarray, matrix, offset, patch_shape, *, ignore_index=IGNORE_INDEX
):
  """Resample a patch of a possibly much larger image: cost in proportion to the patch.

  Like :func:`warp`, but only the part of the input that the patch reads is touched, and
  pixels from outside the input are reported instead of filled: the mask gets
  ``ignore_index`` there and ``inside`` is false, so that the caller can give the image the
  value that inference pads with.

  Returns:
    float32 ``(*patch_shape, C)``, uint8 ``(*patch_shape)`` and bool ``inside
    (*patch_shape)``.
  """
  patch_shape = tuple(int(s) for s in patch_shape)
  n = len(patch_shape)
  matrix = np.asarray(matrix, np.float64)
  offset = np.asarray(offset, np.float64)
  # Bounding box of the patch's footprint (its corners mapped into the input), one pixel of
  # margin for the bilinear neighbours, clipped to the input.
  corners = np.array(np.meshgrid(*[[0, s - 1] for s in patch_shape], indexing="ij"))
  source = matrix @ corners.reshape(n, -1) + offset[:, None]
  lo = np.clip(np.floor(source.min(axis=1)).astype(int) - 1, 0, mask.shape)
  hi = np.clip(np.ceil(source.max(axis=1)).astype(int) + 2, 0, mask.shape)
  box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
  image, mask = image[box], mask[box]
  offset = offset - lo
  if np.array_equal(matrix, np.eye(n)) and np.array_equal(offset, np.round(offset)):
    return _shifted_crop(image, mask, offset.astype(int), patch_shape, ignore_index)
  if image.size == 0:  # the footprint misses the input entirely
    return (
      np.zeros((*patch_shape, image.shape[-1]), np.float32),
      np.full(patch_shape, ignore_index, np.uint8),
      np.zeros(patch_shape, bool),
    )
  image = image.astype(np.float32, copy=False)
  warped = np.stack(
    [
      ndimage.affine_transform(
        image[..., c],
        matrix,
        offset=offset,
        output_shape=patch_shape,
        order=1,
        mode="nearest",
        prefilter=False,
      )
      for c in range(image.shape[-1])
    ],
    axis=-1,
  )
  # "grid-constant" at order 0 counts a point as inside when it lies within the input's
  # outer pixel edges, the rule of warp().
  common = dict(
    offset=offset, output_shape=patch_shape, order=0, mode="grid-constant", prefilter=False
  )
  warped_mask = ndimage.affine_transform(mask, matrix, cval=ignore_index, **common)
  inside = ndimage.affine_transform(np.ones(mask.shape, np.uint8), matrix, cval=0, **common).astype(
    bool
  )
  return warped, warped_mask, inside


def _shifted_crop(image, mask, start, patch_shape, ignore_index):
  """The exact crop ``input[start : start + patch_shape]``, with outside pixels marked."""
  out = np.zeros((*patch_shape, image.shape[-1]), np.float32)
  out_mask = np.full(patch_shape, ignore_index, np.uint8)
  inside = np.zeros(patch_shape, bool)
  src, dst = [], []
  for begin, size, length in zip(start, patch_shape, mask.shape, strict=True):
    a, b = max(begin, 0), min(begin + size, length)
    src.append(slice(a, max(a, b)))
    dst.append(slice(a - begin, a - begin + max(b - a, 0)))
  src, dst = tuple(src), tuple(dst)
  out[dst] = image[src]
  out_mask[dst] = mask[src]
  inside[dst] = True
  return out, out_mask, inside


def jitter(image: np.ndarray, rng: np.random.Generator, augment: Augment) -> np.ndarray:
  """Random brightness and contrast on a float image scaled to ``[0, 1]`` (not clipped)."""
  if augment.contrast:
    factor = rng.uniform(1 - augment.contrast, 1 + augment.contrast)
    mean = image.mean()
    image = (image - mean) * factor + mean
  if augment.brightness:
    image = image + rng.uniform(-augment.brightness, augment.brightness)
  return image.astype(np.float32, copy=False)
