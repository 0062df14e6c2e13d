"""A loss summed over the heads of a deep-supervised model (nnU-Net's weighting).

A U-Net with deep supervision (:class:`regionloss_jax.models.UNet` with
``deep_supervision=True``) returns one logits array per decoder level in training, full
resolution first; each head is scored against the labels picked down to its size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def deep_supervision_weights(num_heads: int) -> np.ndarray:
  """nnU-Net's deep-supervision loss weights: ``w_i = 2**-i / sum_j 2**-j``, i = 0..n-1.

  Head 0 is full resolution; each following head has half the resolution of the previous.

  References:
    C.-Y. Lee, S. Xie, P. Gallagher, Z. Zhang, Z. Tu, "Deeply-Supervised Nets", AISTATS 2015,
    arXiv:1409.5185; F. Isensee et al., "nnU-Net: a self-configuring method for deep
    learning-based biomedical image segmentation", Nature Methods 18, 2021,
    doi:10.1038/s41592-020-01008-z (the weights ``2**-i``).

  Examples:
    >>> deep_supervision_weights(3)
    array([0.5714286 , 0.2857143 , 0.14285715], dtype=float32)
  """
  if num_heads < 1:
    raise ValueError(f"num_heads must be >= 1, got {num_heads}.")
  weights = 0.5 ** np.arange(num_heads, dtype=np.float64)
  return (weights / weights.sum()).astype(np.float32)


def _downsample_labels(labels: Array, spatial: Sequence[int]) -> Array:
  """Nearest (strided) selection of ``labels (B, *S)`` down to ``(B, *spatial)``."""
  full = labels.shape[1:]
  if len(full) != len(spatial) or any(f % s for f, s in zip(full, spatial, strict=True)):
    raise ValueError(
      f"cannot downsample labels of shape {tuple(labels.shape)} to spatial size "
      f"{tuple(spatial)}: each size must divide the label size."
    )
  strides = [f // s for f, s in zip(full, spatial, strict=True)]
  return labels[(slice(None), *(slice(None, None, k) for k in strides))]


def deep_supervision_loss(
  loss_fn: Callable[[Array, Array], tuple[Array, dict[str, Array]]],
  outputs: Array | Sequence[Array],
  labels: Array,
  *,
  weights: Sequence[float] | Array | None = None,
) -> tuple[Array, dict[str, Array]]:
  """Weighted sum of a loss over deep-supervision heads.

  ``loss = sum_i w_i * loss_fn(outputs[i], labels_i)``, where ``labels_i`` picks every
  ``S / S_i``-th pixel of ``labels`` along each spatial axis (nearest selection, so
  ``ignore_index`` values survive), and each term is averaged with the same weights.

  Args:
    loss_fn: ``fn(logits, labels) -> (loss, terms)``, ``terms`` a dict of scalars.
    outputs: logits ``(B, *S_i, C)`` per head, full resolution first; a single array is
      treated as one head.
    labels: integer labels ``(B, *S)`` at full resolution.
    weights: one weight per head, used as given; default
      :func:`deep_supervision_weights` (``2**-i`` normalised to sum to 1).

  Returns:
    ``(loss, terms)``: a scalar and the weighted average of each head's terms.

  References:
    C.-Y. Lee, S. Xie, P. Gallagher, Z. Zhang, Z. Tu, "Deeply-Supervised Nets", AISTATS 2015,
    arXiv:1409.5185; F. Isensee et al., "nnU-Net: a self-configuring method for deep
    learning-based biomedical image segmentation", Nature Methods 18, 2021,
    doi:10.1038/s41592-020-01008-z (the weights ``2**-i``).

  Examples:
    Uniform logits over two classes cost ``log 2`` at every head, so the weighted sum does too:

    >>> import jax.numpy as jnp
    >>> from regionloss_jax.losses import make_loss
    >>> labels = jnp.zeros((1, 4, 4), jnp.int32)
    >>> outputs = [jnp.zeros((1, 4, 4, 2)), jnp.zeros((1, 2, 2, 2))]
    >>> loss, terms = deep_supervision_loss(make_loss("ce"), outputs, labels)
    >>> round(float(loss), 4), sorted(terms)
    (0.6931, ['ce'])
  """
  if not isinstance(outputs, (list, tuple)):
    outputs = [outputs]
  if weights is None:
    weights = deep_supervision_weights(len(outputs))
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (len(outputs),):
    raise ValueError(
      f"weights must have one entry per head ({len(outputs)}), got shape {weights.shape}."
    )
  losses, terms = [], []
  for logits in outputs:
    head_labels = _downsample_labels(labels, logits.shape[1:-1])
    loss, head_terms = loss_fn(logits, head_labels)
    losses.append(jnp.asarray(loss, jnp.float32))
    terms.append(head_terms)
  total = jnp.sum(weights * jnp.stack(losses))
  averaged = jax.tree.map(
    lambda *ts: jnp.sum(weights * jnp.stack([jnp.asarray(t, jnp.float32) for t in ts])),
    *terms,
  )
  return total, averaged
