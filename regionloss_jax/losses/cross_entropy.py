"""Cross-entropy over pixels: softmax (multiclass) or sigmoid (binary, multilabel)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs


def cross_entropy(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  class_weights: Sequence[float] | jax.Array | None = None,
  label_smoothing: float = 0.0,
  reduction: str = "mean",
) -> jax.Array:
  r"""Mean cross-entropy over the valid pixels of the whole batch.

  Multiclass, per pixel with targets ``t`` (one-hot, or soft):
  :math:`\ell = -\sum_c w_c t_c \log \mathrm{softmax}(x)_c`, and the loss is
  :math:`\sum_V \ell / \sum_V w_{y}` for integer labels (PyTorch's weighted mean;
  :math:`w = 1` without ``class_weights``) or :math:`\sum_V \ell / |V|` for soft targets.
  Binary and multilabel: binary cross-entropy with logits,
  :math:`\ell_c = w_c(\log(1 + e^{x_c}) - t_c x_c)`, averaged over valid pixels and channels.
  No valid pixel at all gives 0. With ``reduction="none"`` the same ratio is taken per
  image (its mean over images equals the batch mean when every image has as many valid
  pixels, and no ``class_weights``).

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` multi-hot in multilabel mode),
      or float soft targets with the logits' shape.
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere (integer labels only).
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    class_weights: optional ``(C,)`` per-class weights.
    label_smoothing: ``eps``; targets become ``(1 - eps) t + eps / K`` with ``K = C`` classes
      (``K = 2`` sides of each sigmoid).
    reduction: ``"mean"`` (over the batch's valid pixels) or ``"none"`` (per image).

  Returns:
    A float32 scalar, or ``(B,)`` with ``reduction="none"``.

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
    >>> print(f"{losses.cross_entropy(logits, labels):.4f}")
    0.2631
    >>> print(f"{losses.cross_entropy(logits, soft):.4f}")
    0.4781
  """
  inputs.check_logits_labels(logits, labels, mode=mode, where=where)
  inputs.check_reduction(reduction)
  x = logits.astype(jnp.float32)
  num_classes = x.shape[-1]
  soft = inputs.is_soft(labels)
  valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  targets = inputs.one_hot_targets(labels, num_classes, mode=mode, valid=valid)
  weights = None
  if class_weights is not None:
    weights = jnp.asarray(class_weights, jnp.float32)
    if weights.shape != (num_classes,):
      raise ValueError(
        f"class_weights must have shape ({num_classes},) for logits {tuple(x.shape)}; got "
        f"{weights.shape}."
      )

  pixel_axes = tuple(range(1, x.ndim))
  if mode == "multiclass":
    hard_targets = targets
    if label_smoothing:
      targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes * valid[..., None]
    log_probs = jax.nn.log_softmax(x, axis=-1)
    weighted_targets = targets if weights is None else targets * weights
    total = -jnp.sum(weighted_targets * log_probs, axis=pixel_axes)
    if soft or weights is None:
      normaliser = jnp.sum(valid, axis=pixel_axes[:-1])
    else:
      normaliser = jnp.sum(hard_targets * weights, axis=pixel_axes)
  else:
    if label_smoothing:
      targets = (1.0 - label_smoothing) * targets + 0.5 * label_smoothing
    per_element = jax.nn.softplus(x) - targets * x
    if weights is not None:
      per_element = per_element * weights
    total = jnp.sum(per_element * valid[..., None], axis=pixel_axes)
    normaliser = jnp.sum(valid, axis=pixel_axes[:-1]) * num_classes
  if reduction == "none":
    return inputs.safe_divide(total, normaliser)
  return inputs.safe_divide(jnp.sum(total), jnp.sum(normaliser))
