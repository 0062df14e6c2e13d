"""Evaluation metrics on hard segmentations, per image and per class (numpy / scipy, not jit).

Inputs are integer masks ``pred`` and ``labels`` of shape ``(B, *spatial)`` (2-D or 3-D;
numpy or jax arrays) with values in ``[0, num_classes)``; ``labels`` may also hold
``ignore_index``, and those pixels count nowhere: not in the counts, not in the surfaces, not
in the proportions. Every per-image function returns a float64 or int64 array ``(B, C)``.

No metric returns NaN or inf; empty masks follow these conventions (``P`` = predicted pixels
of class k, ``G`` = ground-truth pixels of class k, both within the valid pixels):

=================  ================================================================
Dice, IoU          1 when ``P`` and ``G`` are both empty (nothing to find, nothing found)
precision          ``|P| = 0``: 1 if ``G`` is also empty, else 0
recall             ``|G| = 0``: 1 if ``P`` is also empty, else 0
HD95               0 when both are empty; the image diagonal (the largest possible
                   distance) when exactly one is empty
NSD                1 when both are empty, 0 when exactly one is empty
proportions        0 for an image whose pixels are all ignored
=================  ================================================================

These per-image values are what :func:`evaluate_batch` returns. Averages over images
(:func:`summarize`) follow MONAI's ``DiceMetric(ignore_empty=True)`` and nnU-Net: a class's
Dice, IoU, HD95, NSD, precision and recall are means over the images where the class is present,
so that a class the model never predicts scores 0, not the share of images without it.
Beside them, ``detection_rate`` (images with the class where the prediction overlaps it)
and ``absent_false_positive_rate`` (images without the class where some of it is predicted)
say what happens on the other images, and ``ece`` is the class's expected calibration error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

PER_IMAGE_METRICS = ("dice", "iou", "precision", "recall", "hd95", "nsd")


def _as_int_masks(pred, labels, *, num_classes: int, ignore_index: int | None):
  """Validates and converts the inputs; returns ``(pred, labels, valid)`` numpy arrays."""
  if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
  pred = np.asarray(pred)
  labels = np.asarray(labels)
  if pred.shape != labels.shape:
    raise ValueError(
      f"pred and labels must have the same shape (B, *spatial); got pred {pred.shape} "
      f"and labels {labels.shape}."
    )
  if pred.ndim not in (3, 4):
    raise ValueError(
      f"expected integer masks of shape (B, H, W) or (B, D, H, W), got shape {pred.shape}."
    )
  for name, array in (("pred", pred), ("labels", labels)):
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
      raise ValueError(
        f"{name} must be an integer mask (take the argmax of logits first), "
        f"got dtype {array.dtype} with shape {array.shape}."
      )
  pred = pred.astype(np.int64)
  labels = labels.astype(np.int64)
  valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  for name, array in (("pred", pred[valid]), ("labels", labels[valid])):
    if array.size and (array.min() < 0 or array.max() >= num_classes):
      bad = array[(array < 0) | (array >= num_classes)][0]
      raise ValueError(
        f"{name} holds value {bad} outside [0, num_classes={num_classes})"
        + ("" if ignore_index is None else f" and != ignore_index={ignore_index}")
        + "."
      )
  return pred, labels, valid


def _confusion_matrices(pred, labels, valid, num_classes: int) -> np.ndarray:
  """``(B, C, C)`` counts, ``[b, true, predicted]``, over valid pixels."""
  batch = labels.shape[0]
  image = np.broadcast_to(np.arange(batch).reshape(-1, *([1] * (labels.ndim - 1))), labels.shape)
  # One bincount over a flat (image, true, predicted) index for the whole batch.
  flat = (image * num_classes + labels) * num_classes + pred
  counts = np.bincount(flat[valid], minlength=batch * num_classes * num_classes)
  return counts.reshape(batch, num_classes, num_classes)


def confusion(
  pred, labels, *, num_classes: int, ignore_index: int | None = None
) -> dict[str, np.ndarray]:
  """True positives, false positives and false negatives per image and class.

  ``tp[b, k] = |P_bk ∩ G_bk|``, ``fp[b, k] = |P_bk \\ G_bk|``, ``fn[b, k] = |G_bk \\ P_bk|``,
  counted over pixels whose label is not ``ignore_index``.

  Args:
    pred: predicted class per pixel, integer ``(B, *spatial)``.
    labels: true class per pixel, integer ``(B, *spatial)``; may hold ``ignore_index``.
    num_classes: number of classes C.
    ignore_index: label value of pixels to leave out.

  Returns:
    ``{"tp", "fp", "fn"}``, int64 arrays ``(B, C)``.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> counts = confusion(pred, labels, num_classes=2)
    >>> counts["tp"], counts["fp"], counts["fn"]
    (array([[2, 3]]), array([[1, 0]]), array([[0, 1]]))
  """
  pred, labels, valid = _as_int_masks(
    pred, labels, num_classes=num_classes, ignore_index=ignore_index
  )
  matrices = _confusion_matrices(pred, labels, valid, num_classes)
  tp = np.diagonal(matrices, axis1=1, axis2=2).copy()
  return {"tp": tp, "fp": matrices.sum(axis=1) - tp, "fn": matrices.sum(axis=2) - tp}


def _ratio(numerator, denominator, empty_value) -> np.ndarray:
  """``numerator / denominator``, with ``empty_value`` where the denominator is 0."""
  numerator = np.asarray(numerator, np.float64)
  denominator = np.asarray(denominator, np.float64)
  safe = np.where(denominator > 0, denominator, 1.0)
  return np.where(denominator > 0, numerator / safe, empty_value)


def _dice_from_counts(tp, fp, fn) -> np.ndarray:
  return _ratio(2 * tp, 2 * tp + fp + fn, 1.0)


def _iou_from_counts(tp, fp, fn) -> np.ndarray:
  return _ratio(tp, tp + fp + fn, 1.0)


def _precision_from_counts(tp, fp, fn) -> np.ndarray:
  # No predicted pixels: right if there was nothing to find, a miss otherwise.
  return _ratio(tp, tp + fp, np.where(fn == 0, 1.0, 0.0))


def _recall_from_counts(tp, fp, fn) -> np.ndarray:
  # Nothing to find: right if nothing was predicted, a false alarm otherwise.
  return _ratio(tp, tp + fn, np.where(fp == 0, 1.0, 0.0))


def dice_score(pred, labels, *, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
  """Dice score per image and class: ``2|P ∩ G| / (|P| + |G|) = 2tp / (2tp + fp + fn)``.

  Both ``P`` and ``G`` empty gives 1.0 (a perfect score for correctly predicting absence).

  Args:
    pred: integer ``(B, *spatial)``.
    labels: integer ``(B, *spatial)``, may hold ``ignore_index``.
    num_classes: number of classes C.
    ignore_index: label value of pixels to leave out.

  Returns:
    float64 ``(B, C)`` in ``[0, 1]``.

  References:
    L. R. Dice, "Measures of the amount of ecologic association between species", Ecology
    26(3), 1945, doi:10.2307/1932409. MONAI ``DiceMetric(ignore_empty=True)`` leaves the
    images without the class out of the mean, as :func:`summarize` does.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> dice_score(pred, labels, num_classes=2).round(4)
    array([[0.8   , 0.8571]])
  """
  return _dice_from_counts(
    **confusion(pred, labels, num_classes=num_classes, ignore_index=ignore_index)
  )


def iou(pred, labels, *, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
  """Intersection over union (Jaccard) per image and class: ``tp / (tp + fp + fn)``.

  Both ``P`` and ``G`` empty gives 1.0. Shapes as in :func:`dice_score`.

  References:
    P. Jaccard, "The distribution of the flora in the alpine zone", New Phytologist 11(2),
    1912, doi:10.1111/j.1469-8137.1912.tb05611.x.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> iou(pred, labels, num_classes=2).round(4)
    array([[0.6667, 0.75  ]])
  """
  return _iou_from_counts(
    **confusion(pred, labels, num_classes=num_classes, ignore_index=ignore_index)
  )


def precision(pred, labels, *, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
  """Precision per image and class: ``tp / (tp + fp)``.

  With no predicted pixels (``tp + fp = 0``): 1.0 if the ground truth is empty too, else 0.0.
  Shapes as in :func:`dice_score`.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> precision(pred, labels, num_classes=2).round(4)
    array([[0.6667, 1.    ]])
  """
  return _precision_from_counts(
    **confusion(pred, labels, num_classes=num_classes, ignore_index=ignore_index)
  )


def recall(pred, labels, *, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
  """Recall (sensitivity) per image and class: ``tp / (tp + fn)``.

  With an empty ground truth (``tp + fn = 0``): 1.0 if the prediction is empty too, else 0.0.
  Shapes as in :func:`dice_score`.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> recall(pred, labels, num_classes=2)
    array([[1.  , 0.75]])
  """
  return _recall_from_counts(
    **confusion(pred, labels, num_classes=num_classes, ignore_index=ignore_index)
  )


def _spacing_per_image(spacing, batch: int, spatial_dims: int) -> np.ndarray:
  """Pixel size of every image, float64 ``(B, spatial_dims)``.

  ``spacing`` is ``None`` (1 per axis), one number, one number per axis (the same for every
  image), or an array ``(B, spatial_dims)`` with one row per image.
  """
  if spacing is None:
    return np.ones((batch, spatial_dims))
  array = np.asarray(spacing, np.float64)
  if array.ndim == 0 or (array.ndim == 1 and array.shape[0] in (1, spatial_dims)):
    per_axis = np.broadcast_to(array.reshape(-1), (spatial_dims,))
    array = np.broadcast_to(per_axis, (batch, spatial_dims))
  elif array.shape != (batch, spatial_dims):
    raise ValueError(
      f"spacing must be one number, one per spatial axis ({spatial_dims}), or one row per "
      f"image of shape (B, spatial_dims) = {(batch, spatial_dims)}; got shape {array.shape}."
    )
  if not np.all(np.isfinite(array) & (array > 0)):
    raise ValueError(f"spacing must be positive and finite, got {array.tolist()}.")
  return np.array(array)


def _check_tolerance(tolerance) -> float:
  value = float(tolerance)
  if not (np.isfinite(value) and value >= 0):
    raise ValueError(f"the surface tolerance must be finite and >= 0, got {tolerance!r}.")
  return value


def _surface(mask: np.ndarray) -> np.ndarray:
  """Pixels of ``mask`` with a face-neighbour outside it (the image border counts as outside)."""
  structure = ndimage.generate_binary_structure(mask.ndim, 1)
  return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _surface_distances(pred_mask, true_mask, spacing) -> tuple[np.ndarray, np.ndarray]:
  """``(d(x, ∂G) for x in ∂P, d(y, ∂P) for y in ∂G)`` of two non-empty masks of one image."""
  pred_surface, true_surface = _surface(pred_mask), _surface(true_mask)
  # The nearest surface point of either surface lies in the surfaces' bounding box, so the
  # distance transforms on that crop are exact (for HD95 and for NSD at any tolerance).
  coords = np.argwhere(pred_surface | true_surface)
  box = tuple(slice(lo, hi + 1) for lo, hi in zip(coords.min(0), coords.max(0), strict=True))
  pred_surface, true_surface = pred_surface[box], true_surface[box]
  to_true = ndimage.distance_transform_edt(~true_surface, sampling=spacing)
  to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)
  return to_true[pred_surface], to_pred[true_surface]


# Distances are computed as sqrt(sum (n_i * s_i)**2) in floats, so a distance that is exactly
# the tolerance on paper (3 pixels of 0.1 mm against 0.3 mm) may come out a rounding error
# above it; this relative slack keeps such boundary pixels inside.
_TOLERANCE_SLACK = 1e-9


def _boundary_scores(
  pred, labels, valid, spacing: np.ndarray, num_classes: int, tolerance: float
) -> tuple[np.ndarray, np.ndarray]:
  """HD95 and NSD at ``tolerance``, float64 ``(B, C)`` each, from one pair of distance
  transforms per image and class."""
  batch, spatial = labels.shape[0], labels.shape[1:]
  hd = np.zeros((batch, num_classes))
  nsd = np.ones((batch, num_classes))
  within = tolerance * (1 + _TOLERANCE_SLACK)
  for b in range(batch):
    image_spacing = tuple(spacing[b])
    diagonal = float(np.sqrt(np.sum(((np.asarray(spatial) - 1) * spacing[b]) ** 2)))
    for k in range(num_classes):
      pred_mask, true_mask = (pred[b] == k) & valid[b], (labels[b] == k) & valid[b]
      pred_any, true_any = pred_mask.any(), true_mask.any()
      if not pred_any and not true_any:
        continue  # HD95 0, NSD 1
      if not pred_any or not true_any:
        hd[b, k], nsd[b, k] = diagonal, 0.0
        continue
      to_true, to_pred = _surface_distances(pred_mask, true_mask, image_spacing)
      hd[b, k] = max(np.percentile(to_true, 95), np.percentile(to_pred, 95))
      close = np.count_nonzero(to_true <= within) + np.count_nonzero(to_pred <= within)
      nsd[b, k] = close / (to_true.size + to_pred.size)
  return hd, nsd


def _boundary_inputs(pred, labels, *, num_classes, ignore_index, spacing):
  pred, labels, valid = _as_int_masks(
    pred, labels, num_classes=num_classes, ignore_index=ignore_index
  )
  spacing = _spacing_per_image(spacing, labels.shape[0], labels.ndim - 1)
  return pred, labels, valid, spacing


def hd95(
  pred,
  labels,
  *,
  num_classes: int,
  ignore_index: int | None = None,
  spacing=None,
) -> np.ndarray:
  """95th-percentile symmetric Hausdorff distance per image and class.

  With ``∂P`` and ``∂G`` the surfaces (pixels of the mask with a face-connected neighbour
  outside it or on the image border) and ``d(x, A) = min_{a in A} |x - a|`` in physical
  units (``spacing`` per spatial axis)::

      HD95 = max( q95{ d(x, ∂G) : x in ∂P },  q95{ d(y, ∂P) : y in ∂G } )

  where ``q95`` is the 95th percentile with linear interpolation (``np.percentile``); the
  max of the two directed percentiles is the usual (MONAI, medpy) convention. Ignored
  pixels are removed from both masks. Empty masks: both empty gives 0; exactly one empty
  gives the image diagonal ``sqrt(sum_i ((n_i - 1) * spacing_i)**2)``, the largest distance
  between two pixels of the image, so the result is always finite.

  Args:
    pred: integer ``(B, *spatial)``, 2-D or 3-D.
    labels: integer ``(B, *spatial)``, may hold ``ignore_index``.
    num_classes: number of classes C.
    ignore_index: label value of pixels to leave out.
    spacing: pixel size: one number or one per spatial axis for the whole batch, or an
      array ``(B, spatial_dims)`` with each image's own; default 1 (pixel units).

  Returns:
    float64 ``(B, C)``.

  References:
    D. P. Huttenlocher, G. A. Klanderman, W. J. Rucklidge, "Comparing images using the
    Hausdorff distance", IEEE TPAMI 15(9), 1993, doi:10.1109/34.232073.

  Examples:
    A 3x3 square shifted by one row: every surface pixel is within one row of the other
    surface, so the distance is one row, 0.5 in physical units with rows of 0.5 mm.

    >>> import numpy as np
    >>> labels = np.zeros((1, 8, 8), int)
    >>> labels[0, 2:5, 2:5] = 1
    >>> pred = np.roll(labels, 1, axis=1)
    >>> hd95(pred, labels, num_classes=2)
    array([[1., 1.]])
    >>> hd95(pred, labels, num_classes=2, spacing=(0.5, 1.0))
    array([[0.5, 0.5]])
  """
  pred, labels, valid, spacing = _boundary_inputs(
    pred, labels, num_classes=num_classes, ignore_index=ignore_index, spacing=spacing
  )
  return _boundary_scores(pred, labels, valid, spacing, num_classes, 0.0)[0]


def normalized_surface_dice(
  pred,
  labels,
  *,
  num_classes: int,
  tolerance: float,
  ignore_index: int | None = None,
  spacing=None,
) -> np.ndarray:
  """Normalized surface Dice (NSD) at a tolerance, per image and class.

  With the surfaces ``∂P``, ``∂G`` and distances ``d`` of :func:`hd95` (physical units), the
  share of both surfaces that lies within ``tolerance`` of the other one::

      NSD = ( |{x in ∂P : d(x, ∂G) <= tol}| + |{y in ∂G : d(y, ∂P) <= tol}| ) / (|∂P| + |∂G|)

  in ``[0, 1]``. Ignored pixels are removed from both masks. Empty masks: both empty gives
  1 (nothing to find, nothing found), exactly one empty gives 0.

  Args:
    pred: integer ``(B, *spatial)``, 2-D or 3-D.
    labels: integer ``(B, *spatial)``, may hold ``ignore_index``.
    num_classes: number of classes C.
    tolerance: largest distance (same units as ``spacing``) at which a surface pixel counts
      as matched; >= 0.
    ignore_index: label value of pixels to leave out.
    spacing: pixel size: one number or one per spatial axis for the whole batch, or an
      array ``(B, spatial_dims)`` with each image's own; default 1 (pixel units).

  Returns:
    float64 ``(B, C)``.

  References:
    S. Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for
    radiotherapy: deep learning algorithm development and validation study", J Med Internet
    Res 23(7), 2021, arXiv:1809.04430 (the voxel version, as MONAI's
    ``compute_surface_dice``).

  Examples:
    A 3x3 square shifted by one row: 8 surface pixels each, of which the 4 side pixels of
    the two shared rows lie on both surfaces; the other 4 of each are one row away from
    the other surface, so they count at tolerance 1 and not at tolerance 0.

    >>> import numpy as np
    >>> labels = np.zeros((1, 8, 8), int)
    >>> labels[0, 2:5, 2:5] = 1
    >>> pred = np.roll(labels, 1, axis=1)
    >>> normalized_surface_dice(pred, labels, num_classes=2, tolerance=0.0)[0, 1]
    np.float64(0.5)
    >>> normalized_surface_dice(pred, labels, num_classes=2, tolerance=1.0)[0, 1]
    np.float64(1.0)
  """
  tolerance = _check_tolerance(tolerance)
  pred, labels, valid, spacing = _boundary_inputs(
    pred, labels, num_classes=num_classes, ignore_index=ignore_index, spacing=spacing
  )
  return _boundary_scores(pred, labels, valid, spacing, num_classes, tolerance)[1]


def mask_proportions(
  pred,
  labels,
  *,
  num_classes: int,
  ignore_index: int | None = None,
  probs=None,
) -> dict[str, np.ndarray]:
  """Ground-truth and predicted region proportions of hard masks and their error, per image
  and class (the losses' differentiable proportions from logits are
  :func:`regionloss_jax.losses.region_proportions`).

  Over the N_b valid pixels of image b::

      tau[b, k]     = |G_bk| / N_b                 ground-truth proportion
      tauhat[b, k]  = |P_bk| / N_b                 hard predicted proportion
      tauhat_soft   = sum_p probs[b, p, k] / N_b   soft predicted proportion (if probs)
      error         = |tauhat - tau|,  bias = tauhat - tau

  An image with no valid pixel gets proportions 0.

  Args:
    pred: integer ``(B, *spatial)``.
    labels: integer ``(B, *spatial)``, may hold ``ignore_index``.
    num_classes: number of classes C.
    ignore_index: label value of pixels to leave out.
    probs: optional class probabilities ``(B, *spatial, C)`` (e.g. ``softmax(logits)``).

  Returns:
    float64 ``(B, C)`` arrays ``gt_proportion``, ``pred_proportion``,
    ``proportion_abs_error``, ``proportion_bias``, and with ``probs`` also
    ``pred_proportion_soft``, ``proportion_abs_error_soft``, ``proportion_bias_soft``.

  References:
    B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need dice? The hidden
    region-size biases of segmentation losses", Medical Image Analysis, 2024,
    arXiv:2104.08717.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> out = mask_proportions(pred, labels, num_classes=2)
    >>> out["gt_proportion"].round(4), out["proportion_bias"].round(4)
    (array([[0.3333, 0.6667]]), array([[ 0.1667, -0.1667]]))
  """
  pred, labels, valid = _as_int_masks(
    pred, labels, num_classes=num_classes, ignore_index=ignore_index
  )
  matrices = _confusion_matrices(pred, labels, valid, num_classes)
  return _proportions(matrices, valid, probs, num_classes)


def _proportions(matrices, valid, probs, num_classes) -> dict[str, np.ndarray]:
  n_valid = valid.reshape(valid.shape[0], -1).sum(axis=1).astype(np.float64)[:, None]
  gt = _ratio(matrices.sum(axis=2), n_valid, 0.0)
  hard = _ratio(matrices.sum(axis=1), n_valid, 0.0)
  out = {
    "gt_proportion": gt,
    "pred_proportion": hard,
    "proportion_abs_error": np.abs(hard - gt),
    "proportion_bias": hard - gt,
  }
  if probs is not None:
    probs = np.asarray(probs, np.float64)
    if probs.shape != (*valid.shape, num_classes):
      raise ValueError(
        f"probs must have shape (B, *spatial, num_classes) = "
        f"{(*valid.shape, num_classes)}, got {probs.shape}."
      )
    summed = (probs * valid[..., None]).reshape(valid.shape[0], -1, num_classes).sum(axis=1)
    soft = _ratio(summed, n_valid, 0.0)
    out |= {
      "pred_proportion_soft": soft,
      "proportion_abs_error_soft": np.abs(soft - gt),
      "proportion_bias_soft": soft - gt,
    }
  return out


def evaluate_batch(
  pred,
  labels,
  *,
  num_classes: int,
  ignore_index: int | None = None,
  probs=None,
  spacing=None,
  nsd_tolerance: float = 1.0,
) -> dict[str, np.ndarray]:
  """Every metric of this module, per image and class, for one batch.

  Args:
    pred: predicted classes, integer ``(B, *spatial)`` (the argmax of the logits).
    labels: true classes, integer ``(B, *spatial)``; may hold ``ignore_index``.
    num_classes: number of classes C (2 for a binary task with masks in {0, 1}).
    ignore_index: label value of pixels to leave out of every metric.
    probs: optional probabilities ``(B, *spatial, C)`` for the soft predicted proportion.
    spacing: pixel size for HD95 and NSD: one number or one per spatial axis for the whole
      batch, or an array ``(B, spatial_dims)`` with each image's own.
    nsd_tolerance: tolerance of :func:`normalized_surface_dice`, in the units of ``spacing``.

  Returns:
    A dict of ``(B, C)`` arrays: ``tp``, ``fp``, ``fn`` (int64); ``dice``, ``iou``,
    ``precision``, ``recall``, ``hd95``, ``nsd`` and the proportions of :func:`mask_proportions`
    (float64); with ``probs`` also ``calibration`` ``(B, C, bins, 3)``
    (:func:`calibration_bins`). Empty-mask conventions are in the module docstring.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> sorted(evaluate_batch(pred, labels, num_classes=2))[:6]
    ['dice', 'fn', 'fp', 'gt_proportion', 'hd95', 'iou']
  """
  nsd_tolerance = _check_tolerance(nsd_tolerance)
  pred, labels, valid, spacing = _boundary_inputs(
    pred, labels, num_classes=num_classes, ignore_index=ignore_index, spacing=spacing
  )
  matrices = _confusion_matrices(pred, labels, valid, num_classes)
  tp = np.diagonal(matrices, axis1=1, axis2=2).copy()
  counts = {"tp": tp, "fp": matrices.sum(axis=1) - tp, "fn": matrices.sum(axis=2) - tp}
  hd, nsd = _boundary_scores(pred, labels, valid, spacing, num_classes, nsd_tolerance)
  return {
    **counts,
    "dice": _dice_from_counts(**counts),
    "iou": _iou_from_counts(**counts),
    "precision": _precision_from_counts(**counts),
    "recall": _recall_from_counts(**counts),
    "hd95": hd,
    "nsd": nsd,
    **_proportions(matrices, valid, probs, num_classes),
    **(
      {}
      if probs is None
      else {
        "calibration": calibration_bins(
          probs, labels, num_classes=num_classes, ignore_index=ignore_index
        )
      }
    ),
  }


CALIBRATION_BINS = 15


def calibration_bins(
  probs, labels, *, num_classes: int, ignore_index: int | None = None, bins: int = CALIBRATION_BINS
) -> np.ndarray:
  """Per image and class, the reliability histogram of the predicted class probability.

  For class k, every valid pixel falls in the equal-width bin of ``probs[..., k]`` in
  ``[0, 1]`` (``bins`` bins, 1.0 in the last); per bin the pixel count, the sum of
  ``probs[..., k]`` (confidence) and the number of pixels whose label is k (accuracy).
  Summed over images they give :func:`expected_calibration_error`.

  Args:
    probs: class probabilities ``(B, *spatial, C)``.
    labels: integer ``(B, *spatial)``, may hold ``ignore_index``.
    num_classes: C.
    ignore_index: label value of pixels to leave out.
    bins: number of bins.

  Returns:
    float64 ``(B, C, bins, 3)``: ``[count, sum of probabilities, count of class k]``.

  References:
    C. Guo, G. Pleiss, Y. Sun, K. Q. Weinberger, "On Calibration of Modern Neural Networks",
    ICML 2017, arXiv:1706.04599.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> probs = np.stack([1 - 0.9 * labels, 0.9 * labels], axis=-1)
    >>> calibration_bins(probs, labels, num_classes=2).shape
    (1, 2, 15, 3)
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.shape != (*labels.shape, num_classes):
    raise ValueError(
      f"probs must have shape (B, *spatial, num_classes) = {(*labels.shape, num_classes)}, "
      f"got {probs.shape}."
    )
  batch = labels.shape[0]
  valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
  probs = probs.reshape(batch, -1, num_classes)
  valid = valid.reshape(batch, -1)
  labels = labels.reshape(batch, -1)
  which = np.minimum((probs * bins).astype(np.int64), bins - 1)  # (B, N, C)
  flat = which + bins * np.arange(num_classes)  # a bin index per (class, bin)
  out = np.zeros((batch, num_classes * bins, 3))
  for b in range(batch):
    index = flat[b][valid[b]].reshape(-1)
    p = probs[b][valid[b]].reshape(-1)
    hit = (labels[b][valid[b]][:, None] == np.arange(num_classes)).reshape(-1)
    size = num_classes * bins
    out[b, :, 0] = np.bincount(index, minlength=size)
    out[b, :, 1] = np.bincount(index, weights=p, minlength=size)
    out[b, :, 2] = np.bincount(index, weights=hit.astype(np.float64), minlength=size)
  return out.reshape(batch, num_classes, bins, 3)


def expected_calibration_error(histogram) -> np.ndarray:
  """Per class, ``ECE = sum_b (n_b / N) |acc_b - conf_b|`` from a :func:`calibration_bins`
  histogram ``(..., C, bins, 3)`` summed over images (``(C, bins, 3)``); 0 for a class
  with no pixel. Returns float64 ``(C,)``.

  References:
    M. P. Naeini, G. F. Cooper, M. Hauskrecht, "Obtaining Well Calibrated Probabilities
    Using Bayesian Binning", AAAI 2015; C. Guo et al., "On Calibration of Modern Neural
    Networks", ICML 2017, arXiv:1706.04599.

  Examples:
    Class 1 is predicted with probability 0.9 where it is, and always right: the gap is 0.1
    on its two thirds of the pixels.

    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> probs = np.stack([1 - 0.9 * labels, 0.9 * labels], axis=-1)
    >>> histogram = calibration_bins(probs, labels, num_classes=2).sum(axis=0)
    >>> expected_calibration_error(histogram).round(4)
    array([0.0667, 0.0667])
  """
  histogram = np.asarray(histogram, np.float64)
  count = histogram[..., 0].sum(axis=-1)
  gaps = np.abs(histogram[..., 2] - histogram[..., 1]).sum(axis=-1)
  return _ratio(gaps, count, 0.0)


# summary key -> evaluate_batch key. The first group is averaged over the images where the
# class is present, the proportions over every image.
_PRESENT_ONLY_KEYS = ("dice", "iou", "hd95", "nsd", "precision", "recall")
# Per-image results kept before NSD existed, or by callers that keep a subset of the keys,
# lack these; they are summarized when every result has them.
_OPTIONAL_KEYS = frozenset({"nsd"})
_PROPORTION_KEYS = {
  "proportion_mae": "proportion_abs_error",
  "proportion_bias": "proportion_bias",
}
_SOFT_PROPORTION_KEYS = {
  "proportion_mae_soft": "proportion_abs_error_soft",
  "proportion_bias_soft": "proportion_bias_soft",
}


def _mean_where(values: np.ndarray, where: np.ndarray) -> float | None:
  """Mean of ``values`` over ``where``; ``None`` when ``where`` selects nothing."""
  return float(values[where].mean()) if where.any() else None


def _mean_of_defined(values) -> float | None:
  defined = [v for v in values if v is not None]
  return float(np.mean(defined)) if defined else None


def summarize(
  results: Mapping[str, Any] | Sequence[Mapping[str, Any]],
  *,
  class_names: Sequence[str] | None = None,
  include_background: bool = False,
) -> dict[str, Any]:
  """Aggregates :func:`evaluate_batch` outputs over images and classes.

  Per class k, with ``present`` the images whose ground truth holds k (``tp + fn > 0``):

  * ``dice``, ``iou``, ``hd95``, ``nsd``, ``precision``, ``recall``: means over the present
    images (MONAI's ``ignore_empty=True``, nnU-Net); ``None`` when no image holds the class
    (``nsd`` only when every result has it);
  * ``detection_rate``: share of the present images where the prediction overlaps the
    class (``tp > 0``); ``absent_false_positive_rate``: share of the other images where
    some of it is predicted (``fp > 0``); ``None`` when there is no such image;
  * ``num_present``; ``dice_all_images``: the older convention, the mean Dice over every
    image, counting an image without the class and without its prediction as 1;
  * ``proportion_mae`` = mean ``|tauhat - tau|`` and ``proportion_bias`` = mean
    ``tauhat - tau`` (negative: under-segmentation) over every image, soft ones too when
    every batch had ``probs``; ``ece`` when every batch had ``calibration``.

  The top-level values are the means of the per-class values over the foreground classes
  ``1..C-1`` (all classes with ``include_background=True``, and always when C = 1),
  leaving out classes whose value is ``None``.

  Args:
    results: one dict from :func:`evaluate_batch` or a sequence of them (same C).
    class_names: optional name per class, used as ``per_class`` keys (default: the index).
    include_background: also average class 0.

  Returns:
    ``{metric: float | None, "num_images": int, "per_class": {name: {metric: ...}}}``.

  Examples:
    >>> import numpy as np
    >>> labels = np.array([[[0, 1, 1], [0, 1, 1]]])
    >>> pred = np.array([[[0, 0, 1], [0, 1, 1]]])
    >>> result = evaluate_batch(pred, labels, num_classes=2)
    >>> summary = summarize(result, class_names=("background", "organ"))
    >>> round(summary["dice"], 4), summary["per_class"]["organ"]["num_present"]
    (0.8571, 1)
  """
  if isinstance(results, Mapping):
    results = [results]
  if not results:
    raise ValueError("summarize needs at least one evaluate_batch result, got none.")
  present_only = [
    key for key in _PRESENT_ONLY_KEYS if key not in _OPTIONAL_KEYS or all(key in r for r in results)
  ]
  keys = ["tp", "fp", "fn", *present_only, *_PROPORTION_KEYS.values()]
  soft = all(_SOFT_PROPORTION_KEYS["proportion_mae_soft"] in r for r in results)
  if soft:
    keys += list(_SOFT_PROPORTION_KEYS.values())
  calibrated = all("calibration" in r for r in results)
  stacked = {}
  for key in keys + (["calibration"] if calibrated else []):
    arrays = [np.asarray(r[key], np.float64) for r in results]
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1 or (key != "calibration" and arrays[0].ndim != 2):
      raise ValueError(
        f"every result must hold (B, C) arrays with the same C; got {key} "
        f"shapes {[a.shape for a in arrays]}."
      )
    stacked[key] = np.concatenate(arrays, axis=0)
  num_images, num_classes = stacked["dice"].shape
  if class_names is not None and len(class_names) != num_classes:
    raise ValueError(
      f"class_names has {len(class_names)} entries for {num_classes} classes: {list(class_names)}."
    )
  names = list(class_names) if class_names is not None else list(range(num_classes))
  present = (stacked["tp"] + stacked["fn"]) > 0
  proportion_keys = dict(_PROPORTION_KEYS) | (_SOFT_PROPORTION_KEYS if soft else {})
  ece = expected_calibration_error(stacked["calibration"].sum(axis=0)) if calibrated else None

  per_class = {}
  for k, name in enumerate(names):
    here, absent = present[:, k], ~present[:, k]
    values: dict[str, Any] = {key: _mean_where(stacked[key][:, k], here) for key in present_only}
    values["detection_rate"] = _mean_where(stacked["tp"][:, k] > 0, here)
    values["absent_false_positive_rate"] = _mean_where(stacked["fp"][:, k] > 0, absent)
    values["num_present"] = int(here.sum())
    values["dice_all_images"] = float(stacked["dice"][:, k].mean()) if num_images else None
    for key, source in proportion_keys.items():
      values[key] = float(stacked[source][:, k].mean()) if num_images else 0.0
    if ece is not None:
      values["ece"] = float(ece[k])
    per_class[name] = values

  averaged = names[0 if include_background or num_classes == 1 else 1 :]
  summary: dict[str, Any] = {
    key: _mean_of_defined(per_class[name][key] for name in averaged)
    for key in per_class[names[0]]
    if key != "num_present"
  }
  summary["num_images"] = int(num_images)
  summary["per_class"] = per_class
  return summary
