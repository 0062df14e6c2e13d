"""Sliding-window inference: a model that sees fixed-size windows, applied to images of any size.

Each image is padded to at least the window size, covered by windows spread evenly with at
least the requested overlap (the first at the image's start, the last at its end), and the
windows' outputs are blended with importance weights: a Gaussian centred on the window
(``sigma = window / 8`` per axis, nnU-Net's choice, so that the less reliable window borders
count less) or constant weights (a plain average). For every pixel::

    out[p] = sum_w weight_w(p) * f(window_w)[p] / sum_w weight_w(p)

over the windows ``w`` that contain ``p``. Optional mirroring averages ``f`` over every
combination of flips along ``mirror_axes`` (test-time augmentation).

Tiling and blending run on the host in NumPy; only ``apply_fn`` runs on the device, and only
on arrays of one shape, ``(batch_size, *window, C)``. A jitted ``apply_fn`` therefore
compiles once and serves every image size, where a jitted tiling would compile anew for each.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

BLENDS = ("gaussian", "constant")


def window_starts(size: int, window: int, overlap: float) -> list[int]:
  """Start offsets of the windows along one axis of ``size >= window`` pixels.

  The first window starts at 0 and the last ends at ``size``; the ones between are spread
  evenly, with consecutive windows overlapping by at least ``overlap * window`` pixels
  (``overlap = 0`` tiles a multiple of the window exactly, without overlap).

  Examples:
    >>> window_starts(10, 4, 0.5)
    [0, 2, 4, 6]
    >>> window_starts(8, 4, 0.0)
    [0, 4]
  """
  if size < window:
    raise ValueError(f"size {size} is smaller than the window {window}; pad the image first.")
  if size == window:
    return [0]
  step = max(window * (1.0 - overlap), 1.0)
  count = math.ceil((size - window) / step) + 1
  return [round(i * (size - window) / (count - 1)) for i in range(count)]


def gaussian_weights(window: Sequence[int], *, sigma_scale: float = 0.125) -> np.ndarray:
  """Importance of each pixel of a window: ``prod_i exp(-(x_i - c_i)^2 / (2 s_i^2))``.

  ``c_i = (window_i - 1) / 2`` is the window's centre and ``s_i = sigma_scale * window_i``.
  The maximum is 1 and every value is positive, so every pixel of a window counts.

  Returns:
    float32 ``window``-shaped array.

  References:
    F. Isensee, P. F. Jaeger, S. A. A. Kohl, J. Petersen, K. H. Maier-Hein, "nnU-Net: a
    self-configuring method for deep learning-based biomedical image segmentation", Nature
    Methods 18, 2021, doi:10.1038/s41592-020-01008-z (Gaussian importance weights with
    sigma = window / 8, mirroring).

  Examples:
    >>> gaussian_weights((5,)).round(3)
    array([0.006, 0.278, 1.   , 0.278, 0.006], dtype=float32)
  """
  weights = np.ones((), np.float64)
  for size in window:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    axis = np.exp(-0.5 * (x / (sigma_scale * size)) ** 2)
    weights = np.multiply.outer(weights, axis / axis.max())
  return weights.astype(np.float32)


def _check(
  images: np.ndarray,
  window: tuple[int, ...],
  overlap: float,
  blend: str,
  batch_size: int,
  mirror_axes: tuple[int, ...],
) -> None:
  n = len(window)
  if images.ndim != n + 2:
    raise ValueError(
      f"images must be (B, *spatial, C) with {n} spatial axes for window "
      f"{window}; got shape {images.shape}."
    )
  if any(w < 1 for w in window):
    raise ValueError(f"window sizes must be positive, got {window}.")
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"overlap must be in [0, 1), got {overlap!r}.")
  if blend not in BLENDS:
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}.")
  if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
  if any(not 0 <= a < n for a in mirror_axes) or len(set(mirror_axes)) != len(mirror_axes):
    raise ValueError(f"mirror_axes must be distinct spatial axes in [0, {n}), got {mirror_axes}.")


def _mirrored(apply_fn: Callable, mirror_axes: tuple[int, ...]) -> Callable:
  """``apply_fn`` averaged over every subset of flips along ``mirror_axes`` (batch excluded)."""
  if not mirror_axes:
    return apply_fn
  subsets = [
    tuple(1 + a for a in subset)
    for r in range(len(mirror_axes) + 1)
    for subset in itertools.combinations(mirror_axes, r)
  ]

  def averaged(windows):
    total = 0.0
    for axes in subsets:
      flipped = jnp.flip(windows, axes) if axes else windows
      out = apply_fn(flipped)
      total = total + (jnp.flip(out, axes) if axes else out)
    return total / len(subsets)

  return averaged


def sliding_window(
  apply_fn: Callable,
  images,
  *,
  window: Sequence[int],
  overlap: float = 0.5,
  blend: str = "gaussian",
  batch_size: int = 4,
  mirror_axes: Sequence[int] = (),
  pad_value: float = 0.0,
  sigma_scale: float = 0.125,
) -> np.ndarray:
  """Applies ``apply_fn`` to every image of any size through fixed-size windows and blends.

  Args:
    apply_fn: ``f(windows) -> outputs``, ``(batch_size, *window, C) -> (batch_size, *window,
      K)`` (logits or probabilities; they are blended as they come). It is always called with
      that one shape: the last batch of windows is filled with ``pad_value`` windows whose
      outputs are dropped. Pass a jitted function; it then compiles once for every image.
    images: ``(B, *spatial, C)``, any spatial sizes (2-D or 3-D), ``B`` images of one size.
    window: the window's spatial size, one entry per spatial axis.
    overlap: fraction of the window shared by neighbouring windows, in ``[0, 1)``.
    blend: ``"gaussian"`` (importance weights, see :func:`gaussian_weights`) or
      ``"constant"`` (plain average).
    batch_size: windows per call of ``apply_fn``; windows of every image are pooled.
    mirror_axes: spatial axes (0 = the first spatial axis) to mirror for test-time
      augmentation; ``apply_fn`` runs on all ``2**len(mirror_axes)`` flip combinations.
    pad_value: value of the pixels added where an image is smaller than the window (0 is the
      mean of an image normalised to zero mean).
    sigma_scale: the Gaussian's standard deviation as a fraction of the window.

  Returns:
    float32 NumPy array ``(B, *spatial, K)``: the blended outputs at the images' own size.

  References:
    F. Isensee, P. F. Jaeger, S. A. A. Kohl, J. Petersen, K. H. Maier-Hein, "nnU-Net: a
    self-configuring method for deep learning-based biomedical image segmentation", Nature
    Methods 18, 2021, doi:10.1038/s41592-020-01008-z (Gaussian importance weights with
    sigma = window / 8, mirroring).

  Examples:
    A pointwise model gives the same output through windows as on the whole image, for any
    image size:

    >>> import numpy as np
    >>> images = np.arange(2 * 9 * 7, dtype=np.float32).reshape(2, 9, 7, 1)
    >>> out = sliding_window(lambda w: 2 * w, images, window=(4, 4), batch_size=3)
    >>> out.shape, bool(np.allclose(out, 2 * images))
    ((2, 9, 7, 1), True)
  """
  images = np.asarray(images, np.float32)
  window = tuple(int(w) for w in window)
  mirror_axes = tuple(int(a) for a in mirror_axes)
  _check(images, window, overlap, blend, batch_size, mirror_axes)
  spatial = images.shape[1:-1]
  padded_shape = tuple(max(s, w) for s, w in zip(spatial, window, strict=True))
  # Padding is split evenly between both ends, so that a small image sits in the middle of
  # its window, where the Gaussian weights the output most.
  before = [(p - s) // 2 for p, s in zip(padded_shape, spatial, strict=True)]
  if padded_shape != spatial:
    widths = [(0, 0)] + [
      (b, p - s - b) for b, p, s in zip(before, padded_shape, spatial, strict=True)
    ]
    images = np.pad(images, widths + [(0, 0)], constant_values=pad_value)
  origins = list(
    itertools.product(
      *(window_starts(p, w, overlap) for p, w in zip(padded_shape, window, strict=True))
    )
  )
  tasks = [(b, origin) for b in range(images.shape[0]) for origin in origins]
  predict = _mirrored(apply_fn, mirror_axes)
  single = len(origins) == 1  # one window per image: weights cancel, none is applied
  weights = (
    gaussian_weights(window, sigma_scale=sigma_scale)
    if blend == "gaussian"
    else np.ones(window, np.float32)
  )
  device_weights = None if single else jnp.asarray(weights)[None, ..., None]

  out = None
  for first in range(0, len(tasks), batch_size):
    chunk = tasks[first : first + batch_size]
    windows = np.full((batch_size, *window, images.shape[-1]), pad_value, np.float32)
    for i, (b, origin) in enumerate(chunk):
      windows[i] = images[(b, *(slice(o, o + w) for o, w in zip(origin, window, strict=True)))]
    result = predict(windows)
    if result.ndim != len(window) + 2 or tuple(result.shape[:-1]) != windows.shape[:-1]:
      raise ValueError(
        f"apply_fn must map windows {windows.shape} to (batch_size, *window, "
        f"K) = {windows.shape[:-1] + ('K',)}; it returned {result.shape}."
      )
    if not single:
      result = result * device_weights
    result = np.asarray(result, np.float32)
    if out is None:
      out = np.zeros((images.shape[0], *padded_shape, result.shape[-1]), np.float32)
    for i, (b, origin) in enumerate(chunk):
      region = (b, *(slice(o, o + w) for o, w in zip(origin, window, strict=True)))
      if single:
        out[region] = result[i]
      else:
        out[region] += result[i]
  if not single:
    coverage = np.zeros(padded_shape, np.float32)
    for origin in origins:
      coverage[tuple(slice(o, o + w) for o, w in zip(origin, window, strict=True))] += weights
    out /= coverage[None, ..., None]
  crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
  return out[(slice(None), *crop)]
