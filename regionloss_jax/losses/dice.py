"""The Dice family on soft predictions: Dice, log-Dice, Jaccard, Tversky, focal-Tversky,
generalised Dice.

All of them reduce a prediction ``s`` (softmax or sigmoid, zeroed on ignored pixels) and
one-hot targets ``g`` to per-class sums over the spatial axes (and over the batch when
``batch``): ``I = sum s g``, ``S = sum s`` and ``G = sum g``. One core turns those into a
per-class score and a loss; the functions below only choose the score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs

EMPTY_POLICIES = ("keep", "zero")
WEIGHTINGS = ("square", "simple", "uniform")
_MIN_DENOMINATOR = 1e-7


def _class_sums(logits, labels, *, mode, ignore_index, where, batch, include_background,
                squared=False):
  """Returns ``(I, S, G)``, each ``(B, C')`` or ``(C',)`` with ``batch``, in float32.

  ``C'`` drops the background channel 0 in multiclass mode when ``include_background`` is
  false. ``squared`` sums ``s**2`` and ``g**2`` into ``S`` and ``G`` instead.
  """
  inputs.check_logits_labels(logits, labels, mode=mode, where=where)
  valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  probs = inputs.probabilities(logits, mode=mode) * valid[..., None]
  targets = inputs.one_hot_targets(labels, logits.shape[-1], mode=mode, valid=valid)
  if mode == "multiclass" and not include_background:
    probs, targets = probs[..., 1:], targets[..., 1:]
  axes = inputs.spatial_axes(probs)
  if batch:
    axes = (0,) + axes
  intersection = jnp.sum(probs * targets, axis=axes)
  if squared:
    probs, targets = probs * probs, targets * targets
  return intersection, jnp.sum(probs, axis=axes), jnp.sum(targets, axis=axes)


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; valid: {', '.join(map(repr, choices))}.")


def _loss_from_scores(scores, target_sums, *, log, exponent, empty, class_weights):
  """Per-class scores ``(..., C')`` to the mean loss: the part every overlap loss shares."""
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
          f"{weights.shape}.")
    per_class = per_class * weights
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
    class_weights: jax.Array | None = None,
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
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode).
    mode: ``multiclass`` (softmax), ``binary`` or ``multilabel`` (sigmoid).
    ignore_index: label value whose pixels count nowhere.
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

  Returns:
    A float32 scalar.
  """
  intersection, pred_sum, target_sum = _class_sums(
      logits, labels, mode=mode, ignore_index=ignore_index, where=where, batch=batch,
      include_background=include_background, squared=squared)
  denominator = pred_sum + target_sum
  if jaccard:
    denominator = 2.0 * (denominator - intersection)
  scores = (2.0 * intersection + smooth_nr) / jnp.maximum(denominator + smooth_dr,
                                                          _MIN_DENOMINATOR)
  return _loss_from_scores(scores, target_sum, log=log, exponent=1.0, empty=empty,
                           class_weights=class_weights)


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
    class_weights: jax.Array | None = None,
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
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode).
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    alpha: weight of false positives.
    beta: weight of false negatives.
    exponent: focal-Tversky exponent (1 is plain Tversky; Abraham & Khan use 4/3).
    batch, include_background, smooth_nr, smooth_dr, empty, class_weights: as in
      :func:`dice_loss`.

  Returns:
    A float32 scalar.
  """
  intersection, pred_sum, target_sum = _class_sums(
      logits, labels, mode=mode, ignore_index=ignore_index, where=where, batch=batch,
      include_background=include_background)
  false_pos = pred_sum - intersection
  false_neg = target_sum - intersection
  denominator = intersection + alpha * false_pos + beta * false_neg + smooth_dr
  scores = (intersection + smooth_nr) / jnp.maximum(denominator, _MIN_DENOMINATOR)
  return _loss_from_scores(scores, target_sum, log=False, exponent=exponent, empty=empty,
                           class_weights=class_weights)


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
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode).
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    weighting: ``square``, ``simple`` or ``uniform``.
    batch: one ratio over the whole batch instead of one per image.
    include_background: multiclass only: keep channel 0.
    smooth_nr: added to the numerator.
    smooth_dr: added to the denominator.

  Returns:
    A float32 scalar.
  """
  _check_choice("weighting", weighting, WEIGHTINGS)
  intersection, pred_sum, target_sum = _class_sums(
      logits, labels, mode=mode, ignore_index=ignore_index, where=where, batch=batch,
      include_background=include_background)
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
  return jnp.mean(1.0 - numerator / jnp.maximum(denominator, _MIN_DENOMINATOR))
