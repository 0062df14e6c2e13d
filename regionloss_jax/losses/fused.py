r"""Cross-entropy plus a region-size term in one pass, with a hand-written VJP.

The straightforward ``jax.grad`` of ``ce + weight * region`` keeps the softmax, the
tempered softmax and the one-hot targets of every pixel alive between the forward and the
backward pass, and walks them several times. Both gradients have a closed form that needs
only per-pixel softmax statistics and a tiny ``(B, C)`` vector:

- CE: :math:`\partial/\partial x_{pj} = v_p (s_{pj} - g_{pj}) / |V|`.
- A region term :math:`R(\hat\tau)` with :math:`\hat\tau_{bk} = (\sum_V s^T_{pk} + \epsilon)
  / (|V_b| + \epsilon)`, :math:`r = \partial R / \partial \hat\tau` ``(B, C)``:
  :math:`\partial/\partial x_{pj} = v_p \, T / (|V_b| + \epsilon) \; s^T_{pj}
  (r_{bj} - \sum_k r_{bk} s^T_{pk})`.

So the forward pass only reduces, and the backward pass recomputes both softmaxes from the
logits and writes the gradient in one fused elementwise sweep. Multiclass, integer labels,
no class weights or label smoothing (``make_loss`` falls back to the generic path otherwise).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from regionloss_jax.losses import inputs, region

REGION_TERMS = ("l1", "kl", "db")


def _size_penalty(term, tau, tauhat):
  if term == "l1":
    return region.l1_from_proportions(tau, tauhat)
  if term == "kl":
    return region.kl_from_proportions(tau, tauhat)
  return region.db_from_proportions(tau, tauhat)


def _statistics(x, labels, valid, temperature):
  """Per-image reductions: CE sum, pixel counts, class counts and soft tempered counts."""
  num_classes = x.shape[-1]
  axes = inputs.spatial_axes(x)
  in_range = (labels >= 0) & (labels < num_classes)
  safe_labels = jnp.where(in_range, labels, 0)
  true_logit = jnp.take_along_axis(x, safe_labels[..., None], axis=-1)[..., 0]
  nll = (jax.nn.logsumexp(x, axis=-1) - true_logit) * (valid * in_range)
  tempered = jax.nn.softmax(x * temperature, axis=-1) * valid[..., None]
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * valid[..., None]
  counts = jnp.sum(valid.reshape(valid.shape[0], -1), axis=1)[:, None]
  return jnp.sum(nll), counts, jnp.sum(targets, axis=axes), jnp.sum(tempered, axis=axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce_and_region(term, x, labels, valid, temperature):
  return _forward(term, x, labels, valid, temperature)[0]


def _forward(term, x, labels, valid, temperature):
  xf = x.astype(jnp.float32)
  nll_sum, counts, class_counts, soft_counts = _statistics(xf, labels, valid, temperature)
  total = jnp.sum(counts)
  ce = nll_sum / jnp.maximum(total, 1.0)
  tau = (class_counts + region.EPS) / (counts + region.EPS)
  tauhat = (soft_counts + region.EPS) / (counts + region.EPS)
  penalty, penalty_vjp = jax.vjp(lambda t: _size_penalty(term, tau, t), tauhat)
  (dpenalty_dtauhat,) = penalty_vjp(jnp.ones_like(penalty))
  residuals = (x, labels, valid, temperature, total, counts, dpenalty_dtauhat)
  return (ce, penalty), residuals


def _backward(term, residuals, cotangents):
  del term  # its derivative is already in the residuals
  x, labels, valid, temperature, total, counts, dpenalty_dtauhat = residuals
  ce_bar, penalty_bar = cotangents
  xf = x.astype(jnp.float32)
  num_classes = x.shape[-1]
  broadcast = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  ce_grad = (jax.nn.softmax(xf, axis=-1) - targets) * (ce_bar / jnp.maximum(total, 1.0))
  # An out-of-range label is a valid pixel with an all-zero target: it adds nothing to CE.
  in_range = jnp.sum(targets, axis=-1, keepdims=True)
  tempered = jax.nn.softmax(xf * temperature, axis=-1)
  r = (dpenalty_dtauhat * (penalty_bar * temperature) / (counts + region.EPS))[broadcast]
  region_grad = tempered * (r - jnp.sum(r * tempered, axis=-1, keepdims=True))
  grad = (ce_grad * in_range + region_grad) * valid[..., None]
  return (grad.astype(x.dtype), None, None, jnp.zeros_like(temperature))


_ce_and_region.defvjp(_forward, _backward)


def ce_with_region(
    logits: jax.Array,
    labels: jax.Array,
    *,
    term: str = "kl",
    temperature: float | jax.Array = 1.0,
    ignore_index: int | None = None,
    where: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
  """Multiclass CE and a region-size term, with the fused gradient of the module docstring.

  Values and gradients equal ``cross_entropy(...)`` and ``region_{term}_loss(...)`` of the
  same arguments (tested); this is only faster and lighter on memory.

  Args:
    logits: ``(B, *spatial, C)``, ``C >= 2``.
    labels: integer ``(B, *spatial)``.
    term: ``l1``, ``kl`` or ``db``.
    temperature: ``T`` of the region term's softmax (not of CE's).
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.

  Returns:
    ``(ce, region)``, float32 scalars.
  """
  if term not in REGION_TERMS:
    raise ValueError(f"Unknown region term {term!r}; valid: {', '.join(REGION_TERMS)}.")
  inputs.check_logits_labels(logits, labels, mode="multiclass", where=where)
  valid = inputs.valid_mask(labels, mode="multiclass", ignore_index=ignore_index, where=where)
  return _ce_and_region(term, logits, labels, valid, jnp.asarray(temperature, jnp.float32))


def select(parts: tuple[str, ...], term_options: list[dict]):
  """The fused ``fn(logits, labels, *, where) -> (ce, region)`` for a compound, or None."""
  (first, second), (first_options, second_options) = parts, term_options
  if first != "ce" or second not in REGION_TERMS:
    return None
  if first_options.get("mode", "multiclass") != "multiclass":
    return None
  if first_options.get("class_weights") is not None or first_options.get("label_smoothing"):
    return None
  return functools.partial(ce_with_region, term=second,
                           temperature=second_options.get("temperature", 1.0),
                           ignore_index=first_options.get("ignore_index"))
