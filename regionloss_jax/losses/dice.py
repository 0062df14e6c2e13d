"""The Dice family on soft predictions: Dice, log-Dice, Jaccard, Tversky, focal-Tversky,
generalised Dice.

All of them reduce a prediction ``s`` (softmax or sigmoid, zeroed on ignored pixels) and
one-hot targets ``g`` to per-class sums over the spatial axes (and over the batch when
``batch``): ``I = sum s g``, ``S = sum s`` and ``G = sum g``. One core turns those into a
per-class score and a loss; the functions below only choose the score.

Soft targets ``g`` (floats of the logits' shape) use the semimetric intersection of Wang &
Blaschko, ``I = (S + G - sum |s - g|) / 2`` (MONAI's ``soft_label=True``): the loss is 0 when
``g == s`` and equals the hard-label loss for one-hot ``g``.

``_MIN_DENOMINATOR`` (1e-7) is part of the Dice definition (the reference's clamp of the
denominator), not a numerical epsilon; it only matters with ``smooth_dr == 0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs

EMPTY_POLICIES = ("keep", "zero")
WEIGHTINGS = ("square", "simple", "uniform")
_MIN_DENOMINATOR = 1e-7


def _class_sums(
  logits, labels, *, mode, ignore_index, where, batch, include_background, squared=False
):
  r"""Returns ``(I, S, G)``, each ``(B, C')`` or ``(C',)`` with ``batch``, in float32.

  ``C'`` drops the background channel 0 in multiclass mode when ``include_background`` is
  false. ``squared`` sums ``s**2`` and ``g**2`` into ``S`` and ``G`` instead.

  With soft targets the intersection takes the semimetric form of Wang & Blaschko (2023),
  :math:`I = (S + G - \sum |s - g|^p) / 2` (``p = 2`` when ``squared``, else 1): it equals
  :math:`\sum s g` for hard targets, and makes the Dice loss 0 exactly when ``s == g``.
  """
  prepared = inputs.prepare(logits, labels, mode=mode, ignore_index=ignore_index, where=where)
  probs, targets = prepared.probs, prepared.targets
  if mode == "multiclass" and not include_background:
    probs, targets = probs[..., 1:], targets[..., 1:]
  axes = prepared.axes
  if batch:
    axes = (0,) + axes
  if squared:
    pred_sum, target_sum = jnp.sum(probs * probs, axis=axes), jnp.sum(targets * targets, axis=axes)
  else:
    pred_sum, target_sum = jnp.sum(probs, axis=axes), jnp.sum(targets, axis=axes)
  if prepared.soft:
    difference = jnp.abs(probs - targets)
    if squared:
      difference = difference * difference
    intersection = 0.5 * (pred_sum + target_sum - jnp.sum(difference, axis=axes))
  else:
    intersection = jnp.sum(probs * targets, axis=axes)
  return intersection, pred_sum, target_sum


def _check_batch_reduction(batch, reduction):
  inputs.check_reduction(reduction)
  if batch and reduction == "none":
    raise ValueError(
      "reduction='none' gives one value per image, but batch=True sums over "
      "the batch before the ratio (one score per class, no per-image value); "
      "use batch=False for per-image values."
    )


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; valid: {', '.join(map(repr, choices))}.")


def _loss_from_scores(
  scores, target_sums, *, log, exponent, empty, class_weights, reduction="mean"
):
  """Per-class scores ``(..., C')`` to the loss: the part every overlap loss shares.

  ``reduction="mean"``: the mean over all entries; ``"none"``: the mean over classes of
  ``(B, C')`` scores, ``(B,)``.
  """
  _check_choice("empty", empty, EMPTY_POLICIES)
  if log:
    per_class = -jnp.log(jnp.maximum(scores, _MIN_DENOMINATOR))
  else:
    per_class = 1.0 - scores
    if exponent != 1.0:
      per_class = jnp.maximum(per_class, 0.0) ** exponent
  if empty == "zero":
    per_class = jnp.where(target_sums > 0, per_class, 0.0)
  if class_weights is not None:
    weights = jnp.asarray(class_weights, jnp.float32)
    if weights.shape != per_class.shape[-1:]:
      raise ValueError(
        f"class_weights must have shape {per_class.shape[-1:]} (one per scored class); got "
        f"{weights.shape}."
      )
    per_class = per_class * weights
  if reduction == "none":
    return jnp.mean(per_class, axis=-1)
  return jnp.mean(per_class)


def dice_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  batch: bool = False,
  include_background: bool = True,
  squared: bool = False,
  jaccard: bool = False,
  log: bool = False,
  smooth_nr: float = 1e-5,
  smooth_dr: float = 1e-5,
  empty: str = "keep",
  class_weights: Sequence[float] | jax.Array | None = None,
  reduction: str = "mean",
) -> jax.Array:
  r"""Soft Dice loss (or log-Dice, or soft Jaccard).

  Per class (per image, or over the whole batch with ``batch``):
  :math:`D = S + G` (``squared``: :math:`\sum s^2 + \sum g^2`),
  ``jaccard`` replaces :math:`D` by :math:`2(D - I)`,
  :math:`\mathrm{score} = (2I + \mathrm{smooth\_nr}) / \max(D + \mathrm{smooth\_dr}, 10^{-7})`,
  per-class loss :math:`1 - \mathrm{score}` or, with ``log``,
  :math:`-\log\max(\mathrm{score}, 10^{-7})`; the loss is the mean over images and classes
  (each class's loss multiplied by ``class_weights`` first, if given).

  Defaults follow MONAI's ``DiceLoss``; the paper authors' setting is ``batch=True,
  empty="zero", smooth_nr=smooth_dr=0``.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode (the foreground channel).
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or float
      soft targets of the logits' shape (semimetric form, module docstring).
    mode: ``multiclass`` (softmax), ``binary`` or ``multilabel`` (sigmoid).
    ignore_index: label value whose pixels count nowhere (integer labels only).
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    batch: sum over the batch before the ratio (one score per class) instead of per image.
    include_background: multiclass only: keep channel 0.
    squared: square ``s`` and ``g`` in the denominator.
    jaccard: soft Jaccard (IoU) instead of Dice.
    log: ``-log(score)`` instead of ``1 - score``.
    smooth_nr: added to the numerator.
    smooth_dr: added to the denominator.
    empty: ``"keep"`` scores a class absent from the ground truth like any other;
      ``"zero"`` gives it loss 0 (it still counts in the mean).
    class_weights: optional ``(C',)`` weights, one per scored class.
    reduction: ``"mean"`` or ``"none"`` (``(B,)``, each image's mean over classes;
      ``batch=True`` has no per-image value and raises).

  Returns:
    A float32 scalar, or ``(B,)`` with ``reduction="none"``.

  References:
    - F. Milletari, N. Navab, S.-A. Ahmadi, "V-Net: Fully Convolutional Neural Networks for
      Volumetric Medical Image Segmentation", 3DV 2016, arXiv:1606.04797.
    - Z. Wang, M. B. Blaschko, "Dice Semimetric Losses: Optimizing the Dice Score with Soft
      Labels", MICCAI 2023, arXiv:2303.16296 (the soft-target form).
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> soft = jnp.array([[[[0.9, 0.1], [0.2, 0.8]], [[0.0, 1.0], [0.3, 0.7]]]])
    >>> print(f"{losses.dice_loss(logits, labels):.4f}")
    0.2216
    >>> print(f"{losses.dice_loss(logits, labels, log=True):.4f}")
    0.2548
    >>> print(f"{losses.dice_loss(logits, soft):.4f}")
    0.1736
    >>> import jax
    >>> probs = jax.nn.softmax(logits)  # soft targets equal to the prediction: loss 0
    >>> print(f"{losses.dice_loss(logits, probs, smooth_nr=0.0, smooth_dr=0.0):.4f}")
    0.0000
  """
  _check_batch_reduction(batch, reduction)
  sums = _class_sums(
    logits,
    labels,
    mode=mode,
    ignore_index=ignore_index,
    where=where,
    batch=batch,
    include_background=include_background,
    squared=squared,
  )
  return dice_from_sums(
    *sums,
    jaccard=jaccard,
    log=log,
    smooth_nr=smooth_nr,
    smooth_dr=smooth_dr,
    empty=empty,
    class_weights=class_weights,
    reduction=reduction,
  )


def dice_from_sums(
  intersection: jax.Array,
  pred_sum: jax.Array,
  target_sum: jax.Array,
  *,
  jaccard: bool = False,
  log: bool = False,
  smooth_nr: float = 1e-5,
  smooth_dr: float = 1e-5,
  empty: str = "keep",
  class_weights: Sequence[float] | jax.Array | None = None,
  reduction: str = "mean",
) -> jax.Array:
  """:func:`dice_loss` from its per-class sums ``I, S, G`` (each ``(B, C')`` or ``(C',)``).

  The part of the loss after the sweep over the pixels, shared with the fused path.
  """
  denominator = pred_sum + target_sum
  if jaccard:
    denominator = 2.0 * (denominator - intersection)
  scores = (2.0 * intersection + smooth_nr) / jnp.maximum(denominator + smooth_dr, _MIN_DENOMINATOR)
  return _loss_from_scores(
    scores,
    target_sum,
    log=log,
    exponent=1.0,
    empty=empty,
    class_weights=class_weights,
    reduction=reduction,
  )


def tversky_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  alpha: float = 0.5,
  beta: float = 0.5,
  exponent: float = 1.0,
  batch: bool = False,
  include_background: bool = True,
  smooth_nr: float = 1e-5,
  smooth_dr: float = 1e-5,
  empty: str = "keep",
  class_weights: Sequence[float] | jax.Array | None = None,
  reduction: str = "mean",
) -> jax.Array:
  r"""Tversky loss (Salehi et al. 2017); focal-Tversky (Abraham & Khan 2019) with ``exponent``.

  Per class: :math:`tp = I`, :math:`fp = S - I = \sum s(1 - g)`,
  :math:`fn = G - I = \sum (1 - s) g`,
  :math:`\mathrm{score} = (tp + \mathrm{smooth\_nr}) /
  (tp + \alpha\,fp + \beta\,fn + \mathrm{smooth\_dr})`, per-class loss
  :math:`(1 - \mathrm{score})^{\mathrm{exponent}}`, then the mean. ``alpha = beta = 0.5`` is
  Dice; ``alpha = beta = 1`` is Jaccard.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or float
      soft targets of the logits' shape (semimetric form, module docstring).
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere (integer labels only).
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    alpha: weight of false positives (a scalar; a one-element tuple, as configs hold it,
      works too).
    beta: weight of false negatives.
    exponent: focal-Tversky exponent (1 is plain Tversky; Abraham & Khan use 4/3).
    batch, include_background, smooth_nr, smooth_dr, empty, class_weights, reduction: as in
      :func:`dice_loss`.

  Returns:
    A float32 scalar, or ``(B,)`` with ``reduction="none"``.

  References:
    - S. S. M. Salehi, D. Erdogmus, A. Gholipour, "Tversky loss function for image
      segmentation using 3D fully convolutional deep networks", MLMI 2017, arXiv:1706.05721.
    - N. Abraham, N. M. Khan, "A Novel Focal Tversky loss function with improved Attention
      U-Net for lesion segmentation", ISBI 2019, arXiv:1810.07842.
    - Z. Wang, M. B. Blaschko, "Dice Semimetric Losses: Optimizing the Dice Score with Soft
      Labels", MICCAI 2023, arXiv:2303.16296 (the soft-target form).

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> soft = jnp.array([[[[0.9, 0.1], [0.2, 0.8]], [[0.0, 1.0], [0.3, 0.7]]]])
    >>> print(f"{losses.tversky_loss(logits, labels, alpha=0.3, beta=0.7):.4f}")
    0.2021
    >>> print(f"{losses.tversky_loss(logits, soft, alpha=0.3, beta=0.7):.4f}")
    0.1681
  """
  _check_batch_reduction(batch, reduction)
  sums = _class_sums(
    logits,
    labels,
    mode=mode,
    ignore_index=ignore_index,
    where=where,
    batch=batch,
    include_background=include_background,
  )
  return tversky_from_sums(
    *sums,
    alpha=alpha,
    beta=beta,
    exponent=exponent,
    smooth_nr=smooth_nr,
    smooth_dr=smooth_dr,
    empty=empty,
    class_weights=class_weights,
    reduction=reduction,
  )


def tversky_from_sums(
  intersection: jax.Array,
  pred_sum: jax.Array,
  target_sum: jax.Array,
  *,
  alpha: float = 0.5,
  beta: float = 0.5,
  exponent: float = 1.0,
  smooth_nr: float = 1e-5,
  smooth_dr: float = 1e-5,
  empty: str = "keep",
  class_weights: Sequence[float] | jax.Array | None = None,
  reduction: str = "mean",
) -> jax.Array:
  """:func:`tversky_loss` from its per-class sums ``I, S, G`` (each ``(B, C')`` or ``(C',)``)."""
  alpha, beta = jnp.asarray(alpha, jnp.float32), jnp.asarray(beta, jnp.float32)
  false_pos = pred_sum - intersection
  false_neg = target_sum - intersection
  denominator = intersection + alpha * false_pos + beta * false_neg + smooth_dr
  scores = (intersection + smooth_nr) / jnp.maximum(denominator, _MIN_DENOMINATOR)
  return _loss_from_scores(
    scores,
    target_sum,
    log=False,
    exponent=exponent,
    empty=empty,
    class_weights=class_weights,
    reduction=reduction,
  )


def generalized_dice_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  weighting: str = "square",
  batch: bool = False,
  include_background: bool = True,
  smooth_nr: float = 1e-5,
  smooth_dr: float = 1e-5,
  reduction: str = "mean",
) -> jax.Array:
  r"""Generalised Dice loss (Sudre et al. 2017): one ratio of class-weighted sums.

  :math:`1 - (2\sum_c w_c I_c + \mathrm{smooth\_nr}) /
  (\sum_c w_c (S_c + G_c) + \mathrm{smooth\_dr})` per image (over the batch with ``batch``),
  then the mean over images. Weights come from the ground truth only (no gradient):
  ``square`` :math:`w_c = 1/G_c^2`, ``simple`` :math:`1/G_c`, ``uniform`` 1. A class absent
  from the ground truth gets the largest finite weight of its image (0 when every class is
  absent), as in MONAI.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or float
      soft targets of the logits' shape (semimetric form, module docstring).
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere (integer labels only).
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    weighting: ``square``, ``simple`` or ``uniform``.
    batch: one ratio over the whole batch instead of one per image.
    include_background: multiclass only: keep channel 0.
    smooth_nr: added to the numerator.
    smooth_dr: added to the denominator.
    reduction: ``"mean"`` or ``"none"`` (``(B,)``; not with ``batch=True``).

  Returns:
    A float32 scalar, or ``(B,)`` with ``reduction="none"``.

  References:
    - C. H. Sudre, W. Li, T. Vercauteren, S. Ourselin, M. J. Cardoso, "Generalised Dice
      overlap as a deep learning loss function for highly unbalanced segmentations",
      DLMIA 2017, arXiv:1707.03237.
    - Z. Wang, M. B. Blaschko, "Dice Semimetric Losses: Optimizing the Dice Score with Soft
      Labels", MICCAI 2023, arXiv:2303.16296 (the soft-target form).

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> print(f"{losses.generalized_dice_loss(logits, labels):.4f}")
    0.2679
  """
  _check_choice("weighting", weighting, WEIGHTINGS)
  _check_batch_reduction(batch, reduction)
  sums = _class_sums(
    logits,
    labels,
    mode=mode,
    ignore_index=ignore_index,
    where=where,
    batch=batch,
    include_background=include_background,
  )
  return generalized_dice_from_sums(
    *sums, weighting=weighting, smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction=reduction
  )


def generalized_dice_from_sums(
  intersection: jax.Array,
  pred_sum: jax.Array,
  target_sum: jax.Array,
  *,
  weighting: str = "square",
  smooth_nr: float = 1e-5,
  smooth_dr: float = 1e-5,
  reduction: str = "mean",
) -> jax.Array:
  """:func:`generalized_dice_loss` from its per-class sums (each ``(B, C')`` or ``(C',)``)."""
  present = target_sum > 0
  safe_sum = jnp.where(present, target_sum, 1.0)
  if weighting == "square":
    weights = 1.0 / (safe_sum * safe_sum)
  elif weighting == "simple":
    weights = 1.0 / safe_sum
  else:
    weights = jnp.ones_like(target_sum)
  weights = jnp.where(present, weights, 0.0)
  largest = jnp.max(weights, axis=-1, keepdims=True)
  weights = jax.lax.stop_gradient(jnp.where(present, weights, largest))
  numerator = 2.0 * jnp.sum(weights * intersection, axis=-1) + smooth_nr
  denominator = jnp.sum(weights * (pred_sum + target_sum), axis=-1) + smooth_dr
  per_image = 1.0 - numerator / jnp.maximum(denominator, _MIN_DENOMINATOR)
  return per_image if reduction == "none" else jnp.mean(per_image)
