"""Region proportions and the region-size terms of Liu et al. (MedIA 2024).

Per image, over its valid pixels ``V``:
``tau_k = (sum_V g_k + eps) / (|V| + eps)`` (ground truth) and
``tauhat_k = (sum_V s_k + eps) / (|V| + eps)`` (prediction, ``s = softmax(T x)`` or
``sigmoid(T x)``). The terms penalise the gap between the two: ``l1`` and ``kl`` are the
paper's proposal, ``db`` is the size term hidden inside log-Dice.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs

EPS = 1e-10


def region_proportions(
    logits: jax.Array,
    labels: jax.Array,
    *,
    mode: str = "multiclass",
    ignore_index: int | None = None,
    where: jax.Array | None = None,
    temperature: float | jax.Array = 1.0,
) -> tuple[jax.Array, jax.Array]:
  r"""Ground-truth and predicted (soft) region proportions per image and class.

  :math:`\tau_k = (\sum_V g_k + \epsilon)/(|V| + \epsilon)`,
  :math:`\hat\tau_k = (\sum_V s^T_k + \epsilon)/(|V| + \epsilon)`, :math:`\epsilon = 10^{-10}`.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode).
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    temperature: ``T``, multiplies the logits before the softmax / sigmoid.

  Returns:
    ``(tau, tauhat)``, each float32 ``(B, C)``.
  """
  inputs.check_logits_labels(logits, labels, mode=mode, where=where)
  valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  targets = inputs.one_hot_targets(labels, logits.shape[-1], mode=mode, valid=valid)
  probs = inputs.probabilities(logits, mode=mode, temperature=temperature) * valid[..., None]
  axes = inputs.spatial_axes(probs)
  count = jnp.sum(valid.reshape(valid.shape[0], -1), axis=1)[:, None]
  tau = (jnp.sum(targets, axis=axes) + EPS) / (count + EPS)
  tauhat = (jnp.sum(probs, axis=axes) + EPS) / (count + EPS)
  return tau, tauhat


def _complement_proportions(logits, labels, *, mode, ignore_index, where, temperature):
  """``1 - tau`` and ``1 - tauhat`` of each sigmoid, summed from the negative side.

  Summing ``sigmoid(-T x)`` instead of subtracting ``tauhat`` from 1 keeps the complement
  exact when ``tauhat`` rounds to 1 (saturated logits), where ``log(1 - tauhat)`` would be
  ``-inf``. It differs from ``1 - tauhat`` by ``eps / (|V| + eps)`` only.
  """
  negative_labels = jnp.where(labels == 1, 0, 1).astype(labels.dtype)
  if ignore_index is not None:
    negative_labels = jnp.where(labels == ignore_index, labels, negative_labels)
  return region_proportions(-logits, negative_labels, mode=mode, ignore_index=ignore_index,
                            where=where, temperature=temperature)


def _kl_divergence(p, q):
  """``sum_k p_k log(p_k / q_k)`` over the last axis; ``0 log 0 = 0``."""
  return jnp.sum(jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(q)), 0.0),
                 axis=-1)


def l1_from_proportions(tau: jax.Array, tauhat: jax.Array) -> jax.Array:
  """Mean over images and channels of ``|tauhat - tau|``; both ``(B, C)``."""
  return jnp.mean(jnp.abs(tauhat - tau))


def kl_from_proportions(tau: jax.Array, tauhat: jax.Array, *, tau_neg: jax.Array | None = None,
                        tauhat_neg: jax.Array | None = None) -> jax.Array:
  """Mean over images of ``KL(tau || tauhat)`` (categorical over the channels of ``(B, C)``).

  Given the complements ``tau_neg``, ``tauhat_neg`` (sigmoid modes), each channel is a
  Bernoulli variable instead and the KLs of the channels are summed.
  """
  if tau_neg is None:
    return jnp.mean(_kl_divergence(tau, tauhat))
  per_channel = (_kl_divergence(tau[..., None], tauhat[..., None])
                 + _kl_divergence(tau_neg[..., None], tauhat_neg[..., None]))
  return jnp.mean(jnp.sum(per_channel, axis=-1))


def db_from_proportions(tau: jax.Array, tauhat: jax.Array) -> jax.Array:
  """Mean over images and channels of ``log(tauhat + tau + eps)``."""
  return jnp.mean(jnp.log(tauhat + tau + EPS))


def region_l1_loss(logits, labels, *, mode="multiclass", ignore_index=None, where=None,
                   temperature=1.0) -> jax.Array:
  r"""Mean over images and channels of :math:`|\hat\tau_k - \tau_k|`.

  Args and shapes as in :func:`region_proportions`. Returns a float32 scalar.
  """
  return l1_from_proportions(*region_proportions(
      logits, labels, mode=mode, ignore_index=ignore_index, where=where,
      temperature=temperature))


def region_kl_loss(logits, labels, *, mode="multiclass", ignore_index=None, where=None,
                   temperature=1.0) -> jax.Array:
  r"""Mean over images of :math:`\mathrm{KL}(\tau \,\|\, \hat\tau)`.

  Multiclass: :math:`\sum_k \tau_k \log(\tau_k/\hat\tau_k)`. Binary and multilabel: the
  Bernoulli KL of each sigmoid channel, :math:`\tau\log(\tau/\hat\tau) +
  (1-\tau)\log((1-\tau)/(1-\hat\tau))`, summed over channels.

  Args and shapes as in :func:`region_proportions`. Returns a float32 scalar.
  """
  kwargs = dict(mode=mode, ignore_index=ignore_index, where=where, temperature=temperature)
  tau, tauhat = region_proportions(logits, labels, **kwargs)
  if mode == "multiclass":
    return kl_from_proportions(tau, tauhat)
  tau_neg, tauhat_neg = _complement_proportions(logits, labels, **kwargs)
  return kl_from_proportions(tau, tauhat, tau_neg=tau_neg, tauhat_neg=tauhat_neg)


def region_db_loss(logits, labels, *, mode="multiclass", ignore_index=None, where=None,
                   temperature=1.0) -> jax.Array:
  r"""Mean over images and channels of :math:`\log(\hat\tau_k + \tau_k + \epsilon)`.

  The region-size part of log-Dice on its own (see :mod:`regionloss_jax.losses.decomposition`):
  concave in :math:`\hat\tau`, so minimising it pushes predictions towards extreme sizes.

  Args and shapes as in :func:`region_proportions`. Returns a float32 scalar.
  """
  return db_from_proportions(*region_proportions(
      logits, labels, mode=mode, ignore_index=ignore_index, where=where,
      temperature=temperature))
