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

EPS = inputs.EPS


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
  With soft targets ``g`` is the target probability, so :math:`\tau` is the expected
  proportion under the targets.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or float
      soft targets of the logits' shape.
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere (integer labels only).
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    temperature: ``T``, multiplies the logits before the softmax / sigmoid.

  Returns:
    ``(tau, tauhat)``, each float32 ``(B, C)``.

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> soft = jnp.array([[[[0.9, 0.1], [0.2, 0.8]], [[0.0, 1.0], [0.3, 0.7]]]])
    >>> tau, tauhat = losses.region_proportions(logits, labels)
    >>> print(" ".join(f"{v:.4f}" for v in tau[0]), "|", " ".join(f"{v:.4f}" for v in tauhat[0]))
    0.2500 0.7500 | 0.4244 0.5756
    >>> tau, _ = losses.region_proportions(logits, soft)
    >>> print(" ".join(f"{v:.4f}" for v in tau[0]))
    0.3500 0.6500
  """
  prepared = inputs.prepare(
    logits, labels, mode=mode, ignore_index=ignore_index, where=where, temperature=temperature
  )
  count = prepared.count + EPS
  tau = (jnp.sum(prepared.targets, axis=prepared.axes) + EPS) / count
  tauhat = (jnp.sum(prepared.probs, axis=prepared.axes) + EPS) / count
  return tau, tauhat


def _complement_proportions(logits, labels, *, mode, ignore_index, where, temperature):
  """``1 - tau`` and ``1 - tauhat`` of each sigmoid, summed from the negative side.

  Summing ``sigmoid(-T x)`` instead of subtracting ``tauhat`` from 1 keeps the complement
  exact when ``tauhat`` rounds to 1 (saturated logits), where ``log(1 - tauhat)`` would be
  ``-inf``. It differs from ``1 - tauhat`` by ``eps / (|V| + eps)`` only.
  """
  if inputs.is_soft(labels):
    negative_labels = 1.0 - labels
  else:
    negative_labels = jnp.where(labels == 1, 0, 1).astype(labels.dtype)
    if ignore_index is not None:
      negative_labels = jnp.where(labels == ignore_index, labels, negative_labels)
  return region_proportions(
    -logits,
    negative_labels,
    mode=mode,
    ignore_index=ignore_index,
    where=where,
    temperature=temperature,
  )


def _kl_divergence(p, q):
  """``sum_k p_k log(p_k / q_k)`` over the last axis; ``0 log 0 = 0``."""
  return jnp.sum(
    jnp.where(p > 0, p * (jnp.log(jnp.where(p > 0, p, 1.0)) - jnp.log(q)), 0.0), axis=-1
  )


def l1_per_image(tau: jax.Array, tauhat: jax.Array) -> jax.Array:
  """Mean over channels of ``|tauhat - tau|``, ``(B,)``; both ``(B, C)``."""
  return jnp.mean(jnp.abs(tauhat - tau), axis=-1)


def kl_per_image(
  tau: jax.Array,
  tauhat: jax.Array,
  *,
  tau_neg: jax.Array | None = None,
  tauhat_neg: jax.Array | None = None,
) -> jax.Array:
  """``KL(tau || tauhat)`` per image, ``(B,)`` (categorical over the channels of ``(B, C)``).

  Given the complements ``tau_neg``, ``tauhat_neg`` (sigmoid modes), each channel is a
  Bernoulli variable instead and the KLs of the channels are summed.
  """
  if tau_neg is None:
    return _kl_divergence(tau, tauhat)
  per_channel = _kl_divergence(tau[..., None], tauhat[..., None]) + _kl_divergence(
    tau_neg[..., None], tauhat_neg[..., None]
  )
  return jnp.sum(per_channel, axis=-1)


def db_per_image(tau: jax.Array, tauhat: jax.Array) -> jax.Array:
  """Mean over channels of ``log(tauhat + tau + eps)``, ``(B,)``."""
  return jnp.mean(jnp.log(tauhat + tau + EPS), axis=-1)


def l1_from_proportions(tau: jax.Array, tauhat: jax.Array) -> jax.Array:
  """Mean over images and channels of ``|tauhat - tau|``; both ``(B, C)``."""
  return jnp.mean(l1_per_image(tau, tauhat))


def kl_from_proportions(
  tau: jax.Array,
  tauhat: jax.Array,
  *,
  tau_neg: jax.Array | None = None,
  tauhat_neg: jax.Array | None = None,
) -> jax.Array:
  """Mean over images of :func:`kl_per_image`."""
  return jnp.mean(kl_per_image(tau, tauhat, tau_neg=tau_neg, tauhat_neg=tauhat_neg))


def db_from_proportions(tau: jax.Array, tauhat: jax.Array) -> jax.Array:
  """Mean over images and channels of ``log(tauhat + tau + eps)``."""
  return jnp.mean(db_per_image(tau, tauhat))


def region_l1_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  temperature: float | jax.Array = 1.0,
  reduction: str = "mean",
) -> jax.Array:
  r"""Mean over images and channels of :math:`|\hat\tau_k - \tau_k|`.

  Args and shapes as in :func:`region_proportions`; ``reduction``: ``"mean"`` (a float32
  scalar) or ``"none"`` (``(B,)``, each image's mean over channels).

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> print(f"{losses.region_l1_loss(logits, labels):.4f}")
    0.1744
  """
  inputs.check_reduction(reduction)
  tau, tauhat = region_proportions(
    logits, labels, mode=mode, ignore_index=ignore_index, where=where, temperature=temperature
  )
  return inputs.reduce_per_image(l1_per_image(tau, tauhat), reduction)


def region_kl_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  temperature: float | jax.Array = 1.0,
  reduction: str = "mean",
) -> jax.Array:
  r"""Mean over images of :math:`\mathrm{KL}(\tau \,\|\, \hat\tau)`.

  Multiclass: :math:`\sum_k \tau_k \log(\tau_k/\hat\tau_k)`. Binary and multilabel: the
  Bernoulli KL of each sigmoid channel, :math:`\tau\log(\tau/\hat\tau) +
  (1-\tau)\log((1-\tau)/(1-\hat\tau))`, summed over channels.

  Args and shapes as in :func:`region_proportions`; ``reduction``: ``"mean"`` (a float32
  scalar) or ``"none"`` (``(B,)``, each image's KL).

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> print(f"{losses.region_kl_loss(logits, labels):.4f}")
    0.0662
  """
  inputs.check_reduction(reduction)
  kwargs = dict(mode=mode, ignore_index=ignore_index, where=where, temperature=temperature)
  tau, tauhat = region_proportions(logits, labels, **kwargs)
  if mode == "multiclass":
    per_image = kl_per_image(tau, tauhat)
  else:
    tau_neg, tauhat_neg = _complement_proportions(logits, labels, **kwargs)
    per_image = kl_per_image(tau, tauhat, tau_neg=tau_neg, tauhat_neg=tauhat_neg)
  return inputs.reduce_per_image(per_image, reduction)


def region_db_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  temperature: float | jax.Array = 1.0,
  reduction: str = "mean",
) -> jax.Array:
  r"""Mean over images and channels of :math:`\log(\hat\tau_k + \tau_k + \epsilon)`.

  The region-size part of log-Dice on its own (see :mod:`regionloss_jax.losses.decomposition`):
  concave in :math:`\hat\tau`, so minimising it pushes predictions towards extreme sizes.

  Args and shapes as in :func:`region_proportions`; ``reduction``: ``"mean"`` (a float32
  scalar) or ``"none"`` (``(B,)``, each image's mean over channels).

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> print(f"{losses.region_db_loss(logits, labels):.4f}")
    -0.0560
  """
  inputs.check_reduction(reduction)
  tau, tauhat = region_proportions(
    logits, labels, mode=mode, ignore_index=ignore_index, where=where, temperature=temperature
  )
  return inputs.reduce_per_image(db_per_image(tau, tauhat), reduction)
