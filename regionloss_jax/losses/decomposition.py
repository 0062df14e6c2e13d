r"""The paper's decompositions, per image and class: where CE and log-Dice differ.

Notation per image: ``N`` valid pixels, ``Omega_k`` the pixels of class ``k``,
``I_k = sum_{Omega_k} s_k``, ``S_k = sum s_k``, ``tau_k = |Omega_k| / N``,
``tauhat_k = S_k / N``.

log-Dice (exact identity)::

    -log(2 I_k / (S_k + |Omega_k|)) = -log(I_k / N) + log(tau_k + tauhat_k) - log 2
                                       \__ matching __/  \_______ size ________/

CE (Jensen): with ``ce_k = -(1/N) sum_{Omega_k} log s_k`` (so ``CE = sum_k ce_k``)::

    ce_k >= -tau_k log(I_k / S_k) + tau_k log(tau_k / tauhat_k)
             \____ matching ____/   \_______ size (KL) _______/

with equality when ``s_k`` is constant on ``Omega_k``. The size term of log-Dice is concave
in ``tauhat`` (it rewards extreme region sizes); CE's is ``KL(tau || tauhat)``, minimised by
matching the ground-truth proportions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs

# Keeps every log finite for an absent class; it enters both sides of each identity the
# same way, so the identities stay exact.
_EPS = inputs.EPS


def _per_class_sums(logits, labels, *, mode, ignore_index, where):
  prepared = inputs.prepare(logits, labels, mode=mode, ignore_index=ignore_index, where=where)
  # An image without valid pixels has all its sums 0; dividing them by 1 keeps its terms
  # finite (0, or -log(eps) for the matching term) instead of NaN.
  count = jnp.maximum(prepared.count, 1.0)
  return prepared.probs, prepared.targets, prepared.axes, count


def log_dice_decomposition(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """Splits log-Dice per image and class into its matching and region-size terms.

  ``log_dice == matching + size - log(2)`` holds exactly (to float rounding), with
  ``matching = -log((I + eps) / N)``, ``size = log(tau + tauhat + 2 eps / N)`` and
  ``log_dice = -log((2 I + 2 eps) / (S + |Omega| + 2 eps))``, ``eps = 1e-10`` (log-Dice with
  a tiny smoothing, so absent classes stay finite).

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or float
      soft targets of the logits' shape (then ``I = sum s g`` and ``|Omega| = sum g``; the
      identity still holds).
    mode, ignore_index, where: as in the losses.

  Returns:
    A dict of float32 ``(B, C)`` arrays: ``log_dice``, ``matching``, ``size``, ``tau``,
    ``tauhat``.

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> parts = losses.log_dice_decomposition(logits, labels)
    >>> identity = parts["matching"] + parts["size"] - jnp.log(2.0)
    >>> print(" ".join(f"{v:.4f}" for v in parts["log_dice"][0]), "|",
    ...       " ".join(f"{v:.4f}" for v in identity[0]))
    0.3478 0.1618 | 0.3478 0.1618
  """
  probs, targets, axes, count = _per_class_sums(
    logits, labels, mode=mode, ignore_index=ignore_index, where=where
  )
  intersection = jnp.sum(probs * targets, axis=axes)
  pred_sum = jnp.sum(probs, axis=axes)
  target_sum = jnp.sum(targets, axis=axes)
  tau, tauhat = target_sum / count, pred_sum / count
  return {
    "log_dice": -jnp.log((2 * intersection + 2 * _EPS) / (pred_sum + target_sum + 2 * _EPS)),
    "matching": -jnp.log((intersection + _EPS) / count),
    "size": jnp.log(tau + tauhat + 2 * _EPS / count),
    "tau": tau,
    "tauhat": tauhat,
  }


def cross_entropy_decomposition(
  logits: jax.Array,
  labels: jax.Array,
  *,
  ignore_index: int | None = None,
  where: jax.Array | None = None,
) -> dict[str, jax.Array]:
  """CE per image and class, and the Jensen lower bound ``matching + size`` (multiclass).

  ``ce >= matching + size`` for every image and class (equality when the prediction is
  constant over the class's region), and ``ce.sum(-1)`` is the image's CE. ``size`` summed
  over classes is ``KL(tau || tauhat)``. An absent class has all three terms 0.

  Args:
    logits: ``(B, *spatial, C)``, softmax over ``C``.
    labels: integer ``(B, *spatial)``, or float soft targets ``(B, *spatial, C)``.
    ignore_index, where: as in the losses.

  Returns:
    A dict of float32 ``(B, C)`` arrays: ``ce``, ``matching``, ``size``, ``tau``, ``tauhat``.

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> parts = losses.cross_entropy_decomposition(logits, labels)
    >>> print(f"{parts['ce'].sum():.4f} {parts['size'].sum():.4f}")  # CE and KL(tau || tauhat)
    0.2631 0.0662
  """
  mode = "multiclass"
  probs, targets, axes, count = _per_class_sums(
    logits, labels, mode=mode, ignore_index=ignore_index, where=where
  )
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.sum(targets * log_probs, axis=axes) / count
  intersection = jnp.sum(probs * targets, axis=axes)
  pred_sum = jnp.sum(probs, axis=axes)
  tau = jnp.sum(targets, axis=axes) / count
  tauhat = pred_sum / count
  present = tau > 0
  matching = -tau * jnp.log((intersection + _EPS) / (pred_sum + _EPS))
  size = tau * (jnp.log(jnp.where(present, tau, 1.0)) - jnp.log(tauhat + _EPS))
  return {
    "ce": ce,
    "matching": jnp.where(present, matching, 0.0),
    "size": jnp.where(present, size, 0.0),
    "tau": tau,
    "tauhat": tauhat,
  }
