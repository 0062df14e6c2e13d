"""Focal loss (Lin et al. 2017) over pixels, softmax or sigmoid."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs


def _safe_power(base: jax.Array, exponent: float) -> jax.Array:
  """``base ** exponent`` for ``base >= 0`` whose gradient is finite at ``base == 0``."""
  positive = base > 0
  powered = jnp.where(positive, base, 1.0) ** exponent
  return jnp.where(positive, powered, 0.0 if exponent > 0 else 1.0)


def focal_loss(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mode: str = "multiclass",
    gamma: float = 2.0,
    alpha: float | jax.Array | None = None,
    ignore_index: int | None = None,
    where: jax.Array | None = None,
) -> jax.Array:
  r"""Mean focal loss over the valid pixels of the whole batch.

  Per pixel, with :math:`p_t` the probability of the true class (binary and multilabel:
  of the true side of each sigmoid),
  :math:`\ell = -\alpha_t (1 - p_t)^\gamma \log p_t`. ``gamma = 0`` and no ``alpha`` is
  cross-entropy. Binary and multilabel losses are averaged over valid pixels and channels.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode).
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    gamma: focusing exponent, ``>= 0``.
    alpha: multiclass: ``(C,)`` per-class weights ``alpha_t = alpha[y]``; binary and
      multilabel: a scalar, ``alpha`` for positives and ``1 - alpha`` for negatives
      (or ``(C,)``, one per channel).
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.

  Returns:
    A float32 scalar; 0 when no pixel is valid.
  """
  inputs.check_logits_labels(logits, labels, mode=mode, where=where)
  if gamma < 0:
    raise ValueError(f"gamma must be >= 0; got {gamma}.")
  x = logits.astype(jnp.float32)
  num_classes = x.shape[-1]
  valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  targets = inputs.one_hot_targets(labels, num_classes, mode=mode, valid=valid)

  if mode == "multiclass":
    log_probs = jax.nn.log_softmax(x, axis=-1)
    log_p_true = jnp.sum(targets * log_probs, axis=-1)
    # 1 - p_t as -expm1(log p_t) keeps precision when p_t is close to 1.
    modulator = _safe_power(-jnp.expm1(log_p_true), gamma)
    per_pixel = -modulator * log_p_true
    if alpha is not None:
      alpha = jnp.asarray(alpha, jnp.float32)
      if alpha.shape != (num_classes,):
        raise ValueError(f"multiclass alpha must have shape ({num_classes},); got {alpha.shape}.")
      per_pixel = per_pixel * jnp.sum(targets * alpha, axis=-1)
    normaliser = jnp.sum(valid)
  else:
    signed = jnp.where(targets > 0, x, -x)  # the logit of the true side
    log_p_true = jax.nn.log_sigmoid(signed)
    modulator = _safe_power(jax.nn.sigmoid(-signed), gamma)
    per_pixel = -modulator * log_p_true
    if alpha is not None:
      alpha = jnp.asarray(alpha, jnp.float32)
      if alpha.shape not in ((), (num_classes,)):
        raise ValueError(f"alpha must be a scalar or have shape ({num_classes},); got "
                         f"{alpha.shape}.")
      per_pixel = per_pixel * jnp.where(targets > 0, alpha, 1.0 - alpha)
    per_pixel = per_pixel * valid[..., None]
    normaliser = jnp.sum(valid) * num_classes
  return jnp.sum(per_pixel) / jnp.maximum(normaliser, 1.0)
