"""Cross-entropy over pixels: softmax (multiclass) or sigmoid (binary, multilabel)."""

from __future__ import annotations

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
    class_weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
) -> jax.Array:
  r"""Mean cross-entropy over the valid pixels of the whole batch.

  Multiclass, per pixel with targets ``t`` (one-hot, or soft):
  :math:`\ell = -\sum_c w_c t_c \log \mathrm{softmax}(x)_c`, and the loss is
  :math:`\sum_V \ell / \sum_V w_{y}` for integer labels (PyTorch's weighted mean;
  :math:`w = 1` without ``class_weights``) or :math:`\sum_V \ell / |V|` for soft targets.
  Binary and multilabel: binary cross-entropy with logits,
  :math:`\ell_c = w_c(\log(1 + e^{x_c}) - t_c x_c)`, averaged over valid pixels and channels.
  No valid pixel at all gives 0.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)`` (``(B, *spatial, C)`` multi-hot in multilabel mode),
      or float soft targets with the logits' shape.
    mode: ``multiclass``, ``binary`` or ``multilabel``.
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    class_weights: optional ``(C,)`` per-class weights.
    label_smoothing: ``eps``; targets become ``(1 - eps) t + eps / K`` with ``K = C`` classes
      (``K = 2`` sides of each sigmoid).

  Returns:
    A float32 scalar.
  """
  inputs.check_logits_labels(logits, labels, mode=mode, where=where, soft_ok=True)
  x = logits.astype(jnp.float32)
  num_classes = x.shape[-1]
  soft = jnp.issubdtype(labels.dtype, jnp.floating)
  if soft:
    valid = jnp.ones(x.shape[:-1], jnp.float32) if where is None else where.astype(jnp.float32)
    targets = labels.astype(jnp.float32) * valid[..., None]
  else:
    valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
    targets = inputs.one_hot_targets(labels, num_classes, mode=mode, valid=valid)
  weights = None
  if class_weights is not None:
    weights = jnp.asarray(class_weights, jnp.float32)
    if weights.shape != (num_classes,):
      raise ValueError(
          f"class_weights must have shape ({num_classes},) for logits {tuple(x.shape)}; got "
          f"{weights.shape}.")

  if mode == "multiclass":
    if label_smoothing:
      targets = (1.0 - label_smoothing) * targets + label_smoothing / num_classes * valid[..., None]
    log_probs = jax.nn.log_softmax(x, axis=-1)
    weighted_targets = targets if weights is None else targets * weights
    total = -jnp.sum(weighted_targets * log_probs)
    if soft or weights is None:
      normaliser = jnp.sum(valid)
    else:
      normaliser = jnp.sum(inputs.one_hot_targets(labels, num_classes, mode=mode, valid=valid)
                           * weights)
  else:
    if label_smoothing:
      targets = (1.0 - label_smoothing) * targets + 0.5 * label_smoothing
    per_element = jax.nn.softplus(x) - targets * x
    if weights is not None:
      per_element = per_element * weights
    total = jnp.sum(per_element * valid[..., None])
    normaliser = jnp.sum(valid) * num_classes
  return total / jnp.maximum(normaliser, 1e-12) * (normaliser > 0)
