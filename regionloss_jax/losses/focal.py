"""Focal loss (Lin et al. 2017) over pixels, softmax or sigmoid."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs


def focal_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  gamma: float = 2.0,
  alpha: float | Sequence[float] | jax.Array | None = None,
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  reduction: str = "mean",
) -> jax.Array:
  r"""Mean focal loss over the valid pixels of the whole batch.

  Per pixel, with :math:`p_t` the probability of the true class (binary and multilabel:
  of the true side of each sigmoid),
  :math:`\ell = -\alpha_t (1 - p_t)^\gamma \log p_t`. ``gamma = 0`` and no ``alpha`` is
  cross-entropy. Binary and multilabel losses are averaged over valid pixels and channels.

  Soft targets ``t`` weight every class's focal term as soft cross-entropy weights its log:
  multiclass :math:`\ell = -\sum_c \alpha_c t_c (1 - p_c)^\gamma \log p_c`; sigmoid
  :math:`\ell = -\alpha t (1 - p)^\gamma \log p - (1 - \alpha)(1 - t) p^\gamma \log(1 - p)`.
  One-hot targets give the formula above.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or float
      soft targets of the logits' shape.
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    gamma: focusing exponent, ``>= 0``.
    alpha: multiclass: ``(C,)`` per-class weights ``alpha_t = alpha[y]``; binary and
      multilabel: a scalar, ``alpha`` for positives and ``1 - alpha`` for negatives
      (or ``(C,)``, one per channel).
    ignore_index: label value whose pixels count nowhere (integer labels only).
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    reduction: ``"mean"`` (over the batch's valid pixels) or ``"none"`` (per image).

  Returns:
    A float32 scalar, or ``(B,)`` with ``reduction="none"``; 0 when no pixel is valid.

  References:
    - T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss for Dense Object
      Detection", ICCV 2017, arXiv:1708.02002.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> soft = jnp.array([[[[0.9, 0.1], [0.2, 0.8]], [[0.0, 1.0], [0.3, 0.7]]]])
    >>> print(f"{losses.focal_loss(logits, labels, gamma=2.0):.4f}")
    0.0609
    >>> print(f"{losses.focal_loss(logits, soft):.4f}")
    0.2477
  """
  inputs.check_logits_labels(logits, labels, mode=mode, where=where)
  inputs.check_reduction(reduction)
  if gamma < 0:
    raise ValueError(f"gamma must be >= 0; got {gamma}.")
  x = logits.astype(jnp.float32)
  num_classes = x.shape[-1]
  valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  targets = inputs.one_hot_targets(labels, num_classes, mode=mode, valid=valid)

  if mode == "multiclass":
    log_probs = jax.nn.log_softmax(x, axis=-1)
    # 1 - p as -expm1(log p) keeps precision when p is close to 1.
    per_class = -inputs.safe_power(-jnp.expm1(log_probs), gamma) * log_probs
    if alpha is not None:
      alpha = jnp.asarray(alpha, jnp.float32)
      if alpha.shape != (num_classes,):
        raise ValueError(f"multiclass alpha must have shape ({num_classes},); got {alpha.shape}.")
      per_class = per_class * alpha
    # One-hot targets pick the true class's term: the integer-label focal loss exactly.
    per_pixel = jnp.sum(targets * per_class, axis=-1)
    normaliser = jnp.sum(valid.reshape(valid.shape[0], -1), axis=1)
  else:
    # Both sides of each sigmoid, weighted by the target's share of each side; a hard
    # target keeps one side only.
    positive = -inputs.safe_power(jax.nn.sigmoid(-x), gamma) * jax.nn.log_sigmoid(x)
    negative = -inputs.safe_power(jax.nn.sigmoid(x), gamma) * jax.nn.log_sigmoid(-x)
    if alpha is not None:
      alpha = jnp.asarray(alpha, jnp.float32)
      if alpha.shape not in ((), (1,), (num_classes,)):
        raise ValueError(
          f"alpha must be a scalar or have shape ({num_classes},); got {alpha.shape}."
        )
      positive, negative = alpha * positive, (1.0 - alpha) * negative
    per_pixel = (targets * positive + (1.0 - targets) * negative) * valid[..., None]
    normaliser = jnp.sum(valid.reshape(valid.shape[0], -1), axis=1) * num_classes
  total = jnp.sum(per_pixel.reshape(per_pixel.shape[0], -1), axis=1)
  if reduction == "none":
    return inputs.safe_divide(total, normaliser)
  return inputs.safe_divide(jnp.sum(total), jnp.sum(normaliser))
