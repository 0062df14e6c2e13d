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
logits and writes the gradient in one fused elementwise sweep. Multiclass, integer labels or
soft targets, no class weights, label smoothing or ``reduction="none"`` (``make_loss``
falls back to the generic path otherwise).

Nothing of the logits' size is written but the gradient: the forward pass reads them three
times (per-pixel max; both normalisers; per-image soft counts), the backward pass twice
(normaliser and ``sum_k r_bk s^T_pk``; the gradient). Keeping it so on XLA:CPU takes the
care described at :func:`_sums`, :func:`_image_sums`, :func:`_pixel_max` and in the
comments: which fusions XLA forms decides whether intermediates of that size are written.
"""

from __future__ import annotations

import functools
import math

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


def _sums(operands, axes):
  """Sums of same-shape arrays over ``axes``, as one variadic reduction.

  One pass computes every sum from shared producers. It also keeps the pass in XLA's own
  reduce emitter, which fuses elementwise producers into the loop: XLA:CPU's YNNPACK reduce
  fusion (on by default) takes single-operand sums only, and materialises their producers
  (broadcasts of per-pixel or scalar values, one-hot targets) as full-size arrays first.
  """
  zeros = tuple(jnp.zeros((), a.dtype) for a in operands)
  axes = tuple(a % operands[0].ndim for a in axes)
  return jax.lax.reduce(
    tuple(operands), zeros, lambda a, b: tuple(u + v for u, v in zip(a, b, strict=True)), axes
  )


def _image_sums(operands):
  """Per-image sums over every pixel of same-shape ``(B, *spatial, C)`` arrays, ``(B, C)`` each.

  XLA:CPU loops over the reduced elements once per output element, so summing all pixels
  straight into ``C`` outputs walks the image ``C`` times with a stride of ``C``. Summing
  blocks of 16 neighbouring pixels first (one block's ``16 x C`` values stay in L1) reads it
  once; the ``(B, pixels / 16, C)`` partial sums left are small.
  """
  batch, num_classes = operands[0].shape[0], operands[0].shape[-1]
  pixels = math.prod(operands[0].shape[1:-1])
  block = math.gcd(pixels, 16)
  partial = _sums(
    tuple(a.reshape(batch, pixels // block, block, num_classes) for a in operands), (2,)
  )
  return tuple(jnp.sum(p, axis=1) for p in partial)


def _pixel_max(x):
  """``max_k x_pk`` ``(B, *spatial)``, fenced off from its consumers.

  Without the barrier XLA:CPU's YNNPACK reduce fusion also takes the shifted logits
  ``x - max`` as an output, writing a full-size array.
  """
  return jax.lax.optimization_barrier(jnp.max(x, axis=-1))


def _targets(labels, num_classes):
  """Boolean one-hot ``(B, *spatial, C)``; an out-of-range label matches no class."""
  return labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)


def _class_counts(labels, valid, num_classes):
  """Valid pixels per image and class, ``(B, C)``; an out-of-range label is in no class.

  A scatter-add over the labels. Summing one-hot targets in the pass over the logits that
  sums the soft counts made that pass about four times slower on XLA:CPU.
  """
  batch = labels.shape[0]
  labels = labels.reshape(batch, -1)
  # Bin ``C`` of each image collects its out-of-range labels; flat indices keep the
  # scatter one-dimensional (two-dimensional ones are written out as index pairs first).
  bins = jnp.where((labels >= 0) & (labels < num_classes), labels, num_classes)
  bins = bins + (num_classes + 1) * jnp.arange(batch, dtype=bins.dtype)[:, None]
  counts = (
    jnp.zeros(batch * (num_classes + 1), jnp.float32).at[bins.reshape(-1)].add(valid.reshape(-1))
  )
  return counts.reshape(batch, num_classes + 1)[:, :num_classes]


def _statistics(x, labels, valid, temperature):
  r"""One read of ``x`` per pass; only per-pixel and ``(B, C)`` arrays are written.

  Args:
    x: float32 logits ``(B, *spatial, C)``.
    labels: integer ``(B, *spatial)``, or float soft targets ``(B, *spatial, C)``.
    valid: float32 ``(B, *spatial)``.
    temperature: float32 scalar ``T``.

  Returns:
    ``nll_sum`` (scalar, :math:`\sum_V -\log s_{py_p}` over in-range labels, or
    :math:`-\sum_V \sum_k t_{pk} \log s_{pk}`); ``counts``,
    ``class_counts`` and ``soft_counts``, each ``(B, C)``: :math:`|V_b|` (in every column),
    :math:`\sum_V g_{pk}` and :math:`\sum_V s^T_{pk}`; and the per-pixel ``(B, *spatial)``
    pair ``(max_k x_pk, log sum_k exp(x_pk - max))`` that the backward pass reuses.
  """
  num_classes = x.shape[-1]
  m = _pixel_max(x)
  shifted = x - m[..., None]
  if inputs.is_soft(labels):
    soft_targets = labels.astype(jnp.float32)
    sum_exp, sum_exp_t, true_shifted, target_mass = _sums(
      (jnp.exp(shifted), jnp.exp(temperature * shifted), soft_targets * shifted, soft_targets),
      (-1,),
    )
    # -sum_k t_k log s_k = (sum_k t_k) log sum exp - sum_k t_k (x_k - m).
    nll = (jnp.log(sum_exp) * target_mass - true_shifted) * valid
  else:
    hit = _targets(labels, num_classes)
    in_range = (labels >= 0) & (labels < num_classes)
    sum_exp, sum_exp_t, true_shifted = _sums(
      (jnp.exp(shifted), jnp.exp(temperature * shifted), jnp.where(hit, shifted, 0.0)), (-1,)
    )
    nll = (jnp.log(sum_exp) - true_shifted) * jnp.where(in_range, valid, 0.0)
  # Normalised inside the exponent, so this exp is not the one summed above and XLA
  # cannot share (and so materialise) it between the two passes.
  tempered = jnp.exp(temperature * shifted - jnp.log(sum_exp_t)[..., None]) * valid[..., None]
  # ``counts`` comes out ``(B, C)`` rather than ``(B, 1)`` for the backward pass: dividing
  # by an array (XLA turns a division by a broadcast into a cheap multiplication) keeps the
  # region factor ``r`` expensive enough that XLA computes it once. Otherwise, for ``l1``,
  # whose derivative is all cheap ops, XLA fuses the ``(B, C)`` computation into the
  # per-pixel loops and repeats it for every pixel.
  if inputs.is_soft(labels):
    # Soft targets are already of the logits' size, so their per-image sums join this pass.
    soft_counts, counts, class_counts = _image_sums(
      (tempered, jnp.broadcast_to(valid[..., None], x.shape), soft_targets * valid[..., None])
    )
  else:
    soft_counts, counts = _image_sums((tempered, jnp.broadcast_to(valid[..., None], x.shape)))
    class_counts = _class_counts(labels, valid, num_classes)
  return jnp.sum(nll), counts, class_counts, soft_counts, (m, jnp.log(sum_exp))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce_and_region(term, x, labels, valid, temperature):
  return _forward(term, x, labels, valid, temperature)[0]


def _forward(term, x, labels, valid, temperature):
  xf = x.astype(jnp.float32)
  nll_sum, counts, class_counts, soft_counts, shifts = _statistics(xf, labels, valid, temperature)
  total = jnp.sum(counts[:, 0])
  ce = nll_sum / jnp.maximum(total, 1.0)
  tau = (class_counts + region.EPS) / (counts + region.EPS)
  tauhat = (soft_counts + region.EPS) / (counts + region.EPS)
  penalty, penalty_vjp = jax.vjp(lambda t: _size_penalty(term, tau, t), tauhat)
  (dpenalty_dtauhat,) = penalty_vjp(jnp.ones_like(penalty))
  residuals = (x, labels, valid, temperature, total, counts, dpenalty_dtauhat, shifts)
  return (ce, penalty), residuals


def _backward(term, residuals, cotangents):
  r"""Two passes over ``x``: the per-pixel sums, then the gradient, written once.

  With :math:`r_{bk}` the region factor of the module docstring (scaled by the cotangent),
  :math:`\partial/\partial x_{pj} = v_p [\bar{c} \, [0 \le y_p < C] (s_{pj} - g_{pj}) / |V|
  + s^T_{pj} (r_{bj} - \sum_k r_{bk} s^T_{pk})]`; soft targets ``t`` replace the CE part by
  :math:`\bar{c} (s_{pj} \sum_k t_{pk} - t_{pj}) / |V|`. No gradient flows to the targets.
  """
  del term  # its derivative is already in the residuals
  x, labels, valid, temperature, total, counts, dpenalty_dtauhat, shifts = residuals
  ce_bar, penalty_bar = cotangents
  broadcast = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
  r = (dpenalty_dtauhat * (penalty_bar * temperature) / (counts + region.EPS))[broadcast]
  # The forward pass computed the same expressions from the same values: without the
  # barrier XLA merges them, and an exp shared by two fusions is written out at full size.
  x, (m, log_sum_exp) = jax.lax.optimization_barrier((x, shifts))
  xf = x.astype(jnp.float32)
  num_classes = x.shape[-1]
  shifted = xf - m[..., None]
  exp_t = jnp.exp(temperature * shifted)
  sum_exp_t, r_exp_t = _sums((exp_t, r * exp_t), (-1,))
  # Recomputed from the normalisers rather than reused from the sums above, for the same
  # reason as in the forward pass: a shared exp would be written out.
  probs = jnp.exp(shifted - log_sum_exp[..., None])
  tempered = jnp.exp(temperature * shifted - jnp.log(sum_exp_t)[..., None])
  if inputs.is_soft(labels):
    soft_targets = labels.astype(jnp.float32)
    ce_scale = valid * (ce_bar / jnp.maximum(total, 1.0))
    target_mass = jnp.sum(soft_targets, axis=-1, keepdims=True)
    ce_grad = (probs * target_mass - soft_targets) * ce_scale[..., None]
  else:
    in_range = (labels >= 0) & (labels < num_classes)
    ce_scale = jnp.where(in_range, valid, 0.0) * (ce_bar / jnp.maximum(total, 1.0))
    ce_grad = (probs - _targets(labels, num_classes)) * ce_scale[..., None]
  region_grad = tempered * (r - (r_exp_t / sum_exp_t)[..., None]) * valid[..., None]
  return ((ce_grad + region_grad).astype(x.dtype), None, None, jnp.zeros_like(temperature))


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
    labels: integer ``(B, *spatial)``, or float soft targets of the logits' shape (no
      gradient flows to them).
    term: ``l1``, ``kl`` or ``db``.
    temperature: ``T`` of the region term's softmax (not of CE's).
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.

  Returns:
    ``(ce, region)``, float32 scalars.

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> ce, kl = losses.ce_with_region(logits, labels, term="kl", temperature=10.0)
    >>> print(f"{ce:.4f} {kl:.4f}")
    0.2631 0.1028
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
  if first_options.get("reduction", "mean") != "mean":
    return None
  return functools.partial(
    ce_with_region,
    term=second,
    temperature=second_options.get("temperature", 1.0),
    ignore_index=first_options.get("ignore_index"),
  )
