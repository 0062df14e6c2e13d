r"""Compound losses ``a + weight * b`` in one sweep each way, with a hand-written VJP.

The straightforward ``jax.grad`` of ``ce + weight * dice`` (or ``kl``, ...) keeps the
softmax, the tempered softmax and the one-hot targets of every pixel alive between the
forward and the backward pass, and walks them several times. Every compound here has a
gradient that needs only per-pixel statistics and tiny ``(B, C)`` vectors. With ``v_p`` the
valid mask, ``s = softmax(x)`` and ``g`` the one-hot targets of label ``y_p``:

- First term, a per-pixel function :math:`h_p(\log s_{py_p})` over the normaliser ``N``
  (CE: :math:`h = -w_y \log s_y`; focal: :math:`h = -\alpha_y (1 - s_y)^\gamma \log s_y`):
  :math:`\partial/\partial x_{pj} = k_p (s_{pj} - g_{pj})` with
  :math:`k_p = -v_p h_p'(\log s_{py_p}) / N` (CE: :math:`k_p = v_p w_{y_p} / N`).
- A region term :math:`R(\hat\tau)` with :math:`\hat\tau_{bk} = (\sum_V s^T_{pk} + \epsilon)
  / (|V_b| + \epsilon)`, :math:`r = \partial R / \partial \hat\tau` ``(B, C)``:
  :math:`\partial/\partial x_{pj} = v_p \, T / (|V_b| + \epsilon) \; s^T_{pj}
  (r_{bj} - \sum_k r_{bk} s^T_{pk})`.
- A Dice-family term :math:`D(I, S, G)` of the per-class sums :math:`I_{bc} = \sum_V s g`,
  :math:`S_{bc} = \sum_V s` (``squared``: :math:`\sum_V s^2`), :math:`G_{bc} = \sum_V g`;
  with :math:`a = \partial D / \partial I`, :math:`b = \partial D / \partial S` ``(B, C)``
  the derivative w.r.t. the probabilities is per pixel,
  :math:`u_{pj} = v_p (a_{bj} g_{pj} + b_{bj})` (``squared``: :math:`2 b_{bj} s_{pj}`), and
  :math:`\partial/\partial x_{pj} = s_{pj} (u_{pj} - \sum_k u_{pk} s_{pk})`. ``batch``,
  ``include_background``, ``empty`` and ``class_weights`` only change ``D``, which is the
  plain term's own function of the sums (:func:`regionloss_jax.losses.dice.dice_from_sums`
  and its siblings), so ``a`` and ``b`` come from ``jax.vjp`` of it on ``(B, C)`` arrays.

So the forward pass only reduces, and the backward pass recomputes the softmaxes from the
logits and writes the gradient in one fused elementwise sweep. In binary mode every term
is elementwise in the one sigmoid channel, so the backward pass is the VJP of the
per-pixel operands of the sums, recomputed from the logits.

Fused: ``ce`` or ``focal`` with ``l1``, ``kl``, ``db``, ``dice``, ``tversky`` or
``generalized_dice``, multiclass or binary, ``reduction="mean"``. Falls back to the plain
term functions (:func:`select`): multilabel mode, ``reduction="none"``, CE label smoothing;
and, in multiclass mode only, soft targets with a focal or Dice-family term or with CE
class weights. Soft focal is a sum over every class of :math:`h`, not :math:`k_p (s - g)`;
the soft Dice intersection (semimetric, :mod:`regionloss_jax.losses.dice`) has the
derivative :math:`(1 - \operatorname{sign}(s - g)) / 2` in place of ``g``, which needs the
targets in every pass; soft CE with class weights is simply not written here. Binary soft
targets are fused (every binary term is elementwise).

Nothing of the logits' size is written but the gradient: the forward pass reads them three
times (per-pixel max; the normalisers; per-image sums), the backward pass twice
(per-pixel sums of the ``(B, C)`` factors; the gradient). Keeping it so on XLA:CPU takes the
care described at :func:`_sums`, :func:`_image_sums`, :func:`_pixel_max`,
:func:`_computed_once` and in the comments: which fusions XLA forms decides whether
intermediates of that size are written, and whether per-pixel or per-image factors are
recomputed for every element.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from regionloss_jax.losses import dice, inputs, region

REGION_TERMS = ("l1", "kl", "db")
OVERLAP_TERMS = ("dice", "tversky", "generalized_dice")
FIRST_TERMS = ("ce", "focal")
_FROM_SUMS = {
  "dice": dice.dice_from_sums,
  "tversky": dice.tversky_from_sums,
  "generalized_dice": dice.generalized_dice_from_sums,
}


class _Spec(NamedTuple):
  """The static part of a compound: which terms, and the options that shape the sweeps."""

  first: str  # "ce" or "focal"
  gamma: float  # focal exponent
  second: str  # a region or overlap term
  squared: bool  # dice: sums of squares
  batch: bool  # overlap: sums over the batch too
  include_background: bool  # overlap, multiclass: keep channel 0
  options: tuple  # (name, value) pairs for the overlap term's ``*_from_sums``


def _region_penalty(mode, term, counts, class_counts, soft_counts, neg=None):
  """The region term from per-image sums ``(B, C)``; ``neg``: the binary complements."""
  tau = (class_counts + region.EPS) / (counts + region.EPS)
  tauhat = (soft_counts + region.EPS) / (counts + region.EPS)
  if term == "l1":
    return region.l1_from_proportions(tau, tauhat)
  if term == "db":
    return region.db_from_proportions(tau, tauhat)
  if mode == "multiclass":
    return region.kl_from_proportions(tau, tauhat)
  neg_class_counts, neg_soft_counts = neg
  return region.kl_from_proportions(
    tau,
    tauhat,
    tau_neg=(neg_class_counts + region.EPS) / (counts + region.EPS),
    tauhat_neg=(neg_soft_counts + region.EPS) / (counts + region.EPS),
  )


def _overlap_penalty(spec, intersection, pred_sum, target_sum, weights):
  """The Dice-family term from per-image sums ``(B, C)``, as the plain loss reduces them."""
  sums = (intersection, pred_sum, target_sum)
  if spec.batch:
    sums = tuple(jnp.sum(a, axis=0) for a in sums)
  if not spec.include_background:
    sums = tuple(a[..., 1:] for a in sums)
  options = dict(spec.options)
  if weights is not None:
    options["class_weights"] = weights
  return _FROM_SUMS[spec.second](*sums, **options)


def _focal_term(gamma, log_p):
  """``-(1 - p)^gamma log p`` of ``log p``, written as :func:`focal_loss` writes it."""
  return -inputs.safe_power(-jnp.expm1(log_p), gamma) * log_p


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


def _computed_once(x):
  """``x``, as the output of a reduction.

  XLA fuses cheap elementwise producers into every loop that reads them, so a ``(B, C)``
  factor broadcast over the pixels is recomputed for every element (on XLA:CPU it made a
  pass over the logits 6x slower). A reduction is never fused into its consumers, and an
  optimisation barrier does not stop fusion.
  """
  return jnp.sum(jnp.stack([x, jnp.zeros_like(x)]), axis=0)


def _targets(labels, num_classes):
  """Boolean one-hot ``(B, *spatial, C)``; an out-of-range label matches no class."""
  return labels[..., None] == jnp.arange(num_classes, dtype=labels.dtype)


def _label_sums(labels, values, num_classes):
  """Per-pixel ``values`` summed per image and label, ``(B, C)``; out-of-range labels drop.

  A scatter-add over the labels. Summing one-hot targets in the pass over the logits that
  sums the soft counts made that pass about four times slower on XLA:CPU.
  """
  batch = labels.shape[0]
  labels = labels.reshape(batch, -1)
  # Bin ``C`` of each image collects its out-of-range labels; flat indices keep the
  # scatter one-dimensional (two-dimensional ones are written out as index pairs first).
  bins = jnp.where((labels >= 0) & (labels < num_classes), labels, num_classes)
  bins = bins + (num_classes + 1) * jnp.arange(batch, dtype=bins.dtype)[:, None]
  sums = (
    jnp.zeros(batch * (num_classes + 1), jnp.float32).at[bins.reshape(-1)].add(values.reshape(-1))
  )
  return sums.reshape(batch, num_classes + 1)[:, :num_classes]


def _label_values(labels, table):
  """``table[b, y_p]`` ``(B, *spatial)`` of a ``(B, C)`` table; 0 for a label outside ``[0, C)``."""
  batch, num_classes = table.shape
  in_range = (labels >= 0) & (labels < num_classes)
  rows = num_classes * jnp.arange(batch, dtype=labels.dtype).reshape(
    (batch,) + (1,) * (labels.ndim - 1)
  )
  values = table.reshape(-1)[rows + jnp.clip(labels, 0, num_classes - 1)]
  return jnp.where(in_range, values, 0.0)


def _label_weights(labels, weights, num_classes):
  """``weights[y_p]`` ``(B, *spatial)``; 0 for a label outside ``[0, C)``."""
  in_range = (labels >= 0) & (labels < num_classes)
  if weights is None:
    return in_range.astype(jnp.float32)
  return jnp.where(in_range, weights[jnp.clip(labels, 0, num_classes - 1)], 0.0)


def _first_term(spec, log_p, labels, valid, weights, num_classes):
  """Per-pixel value and gradient factor of the first term (multiclass, integer labels).

  Args:
    log_p: ``log s_{p y_p}`` ``(B, *spatial)`` (any finite value where the label is out of
      range).
    weights: CE ``class_weights`` or focal ``alpha``, ``(C,)``, or None.

  Returns:
    ``(values, slopes, normaliser)``: the term is ``sum(values) / normaliser`` (0 without a
    valid pixel) and its gradient ``slopes_p (s_pj - g_pj) / normaliser``.
  """
  pixel_weights = _label_weights(labels, weights, num_classes) * valid
  if spec.first == "ce":
    # PyTorch's weighted mean: the weights of the valid pixels' classes normalise.
    normaliser = jnp.sum(pixel_weights if weights is not None else valid)
    return -log_p * pixel_weights, pixel_weights, normaliser
  values, derivative = jax.jvp(
    functools.partial(_focal_term, spec.gamma), (log_p,), (jnp.ones_like(log_p),)
  )
  return values * pixel_weights, -derivative * pixel_weights, jnp.sum(valid)


def _safe_inverse(normaliser):
  return jnp.where(normaliser > 0, 1.0 / jnp.where(normaliser > 0, normaliser, 1.0), 0.0)


def _multiclass_forward(spec, x, labels, valid, params):
  r"""One read of ``x`` per pass; only per-pixel and ``(B, C)`` arrays are written.

  Returns ``((first, second), residuals)``. The residuals hold the per-pixel pair
  ``(max_k x_pk, log sum_k exp(x_pk - max))``, the first term's per-pixel gradient factor
  ``k_p`` and the second term's ``(B, C)`` factors.
  """
  num_classes = x.shape[-1]
  xf = x.astype(jnp.float32)
  temperature = params["temperature"]
  soft = inputs.is_soft(labels)
  is_region = spec.second in REGION_TERMS
  m = _pixel_max(xf)
  shifted = xf - m[..., None]
  operands = [jnp.exp(shifted)]
  if is_region:
    operands.append(jnp.exp(temperature * shifted))
  if soft:
    soft_targets = labels.astype(jnp.float32)
    operands += [soft_targets * shifted, soft_targets]
  else:
    operands.append(jnp.where(_targets(labels, num_classes), shifted, 0.0))
  sums = _sums(tuple(operands), (-1,))
  log_sum_exp = jnp.log(sums[0])
  if soft:
    # -sum_k t_k log s_k = (sum_k t_k) log sum exp - sum_k t_k (x_k - m); CE only.
    true_shifted, target_mass = sums[-2:]
    first_values = (log_sum_exp * target_mass - true_shifted) * valid
    slopes, normaliser = valid, jnp.sum(valid)
  else:
    log_p = sums[-1] - log_sum_exp
    first_values, slopes, normaliser = _first_term(
      spec, log_p, labels, valid, params["first_weights"], num_classes
    )
  inverse = _safe_inverse(normaliser)
  first = jnp.sum(first_values) * inverse
  broadcast_valid = jnp.broadcast_to(valid[..., None], x.shape)
  if is_region:
    # Normalised inside the exponent, so this exp is not the one summed above and XLA
    # cannot share (and so materialise) it between the two passes.
    tempered = jnp.exp(temperature * shifted - jnp.log(sums[1])[..., None]) * valid[..., None]
    # ``counts`` is summed here, ``(B, C)``, rather than from ``valid`` alone: a lone sum of
    # the tempered softmax would go to the YNNPACK reduce fusion (see :func:`_sums`).
    if soft:
      # Soft targets are already of the logits' size, so their sums join this pass.
      soft_counts, counts, class_counts = _image_sums(
        (tempered, broadcast_valid, soft_targets * valid[..., None])
      )
    else:
      soft_counts, counts = _image_sums((tempered, broadcast_valid))
      class_counts = _label_sums(labels, valid, num_classes)
    second, second_vjp = jax.vjp(
      lambda t: _region_penalty("multiclass", spec.second, counts, class_counts, t), soft_counts
    )
    (factors,) = second_vjp(jnp.ones_like(second))
    factors = (factors * temperature,)
  else:
    # Again normalised inside the exponent, for the reason above.
    probs = jnp.exp(shifted - log_sum_exp[..., None]) * valid[..., None]
    pred_operand = probs * probs if spec.squared else probs
    # The intersection joins this pass as a second operand: cheaper than a scatter-add of
    # s_py, and a lone sum would go to the YNNPACK reduce fusion (see :func:`_sums`).
    pred_sum, intersection = _image_sums(
      (pred_operand, jnp.where(_targets(labels, num_classes), probs, 0.0))
    )
    target_sum = _label_sums(labels, valid, num_classes)
    second, second_vjp = jax.vjp(
      lambda i, s: _overlap_penalty(spec, i, s, target_sum, params["second_weights"]),
      intersection,
      pred_sum,
    )
    factors = second_vjp(jnp.ones_like(second))
  # ``x_y - m`` (0 where the label is out of range): the backward pass of a Dice-family term
  # takes ``a_y exp(x_y - m)`` from it, which also keeps this pass's sum of it alive, and the
  # pass out of the YNNPACK fusion (:func:`_sums`), when only the gradient is wanted.
  true_shifted = None if soft else sums[-1]
  residuals = (x, labels, valid, params, (m, log_sum_exp, true_shifted), slopes * inverse, factors)
  return (first, second), residuals


def _multiclass_backward(spec, residuals, cotangents):
  r"""Two passes over ``x``: the per-pixel sums, then the gradient, written once.

  :math:`\partial/\partial x_{pj} = \bar{c}_1 k_p (s_{pj} - g_{pj}) + \bar{c}_2 \times`
  (the second term's gradient of the module docstring); soft targets ``t`` (CE) replace
  the first part by :math:`\bar{c}_1 v_p (s_{pj} \sum_k t_{pk} - t_{pj}) / |V|`. No
  gradient flows to the targets or the options.
  """
  x, labels, valid, params, shifts, slopes, factors = residuals
  first_bar, second_bar = cotangents
  broadcast = (slice(None),) + (None,) * (x.ndim - 2) + (slice(None),)
  factors = tuple(_computed_once(f * second_bar) for f in factors)
  # The forward pass computed the same expressions from the same values: without the
  # barrier XLA merges them, and an exp shared by two fusions is written out at full size.
  x, (m, log_sum_exp, true_shifted) = jax.lax.optimization_barrier((x, shifts))
  xf = x.astype(jnp.float32)
  k = slopes * first_bar
  if spec.second in REGION_TERMS:
    (r,) = (f[broadcast] for f in factors)
    temperature = params["temperature"]
    shifted = xf - m[..., None]
    exp_t = jnp.exp(temperature * shifted)
    sum_exp_t, r_exp_t = _sums((exp_t, r * exp_t), (-1,))
    # Recomputed from the normalisers rather than reused from the sums above, for the same
    # reason as in the forward pass: a shared exp would be written out.
    probs = jnp.exp(shifted - log_sum_exp[..., None])
    tempered = jnp.exp(temperature * shifted - jnp.log(sum_exp_t)[..., None])
    k = k[..., None]
    if inputs.is_soft(labels):
      soft_targets = labels.astype(jnp.float32)
      first_grad = (probs * jnp.sum(soft_targets, axis=-1, keepdims=True) - soft_targets) * k
    else:
      first_grad = (probs - _targets(labels, x.shape[-1])) * k
    second_grad = tempered * (r - (r_exp_t / sum_exp_t)[..., None]) * valid[..., None]
    grad = first_grad + second_grad
  else:
    a_true = _label_values(labels, factors[0]) * jnp.exp(true_shifted)  # a_y exp(x_y - m)
    hit = _targets(labels, x.shape[-1])
    grad = _overlap_gradient(spec, xf, m, hit, valid, k, a_true, factors[1][broadcast])
  param_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  return grad.astype(x.dtype), None, None, param_grads


def _overlap_gradient(spec, xf, m, hit, valid, k, a_true, b):
  r"""The gradient of ``first + second`` (a Dice-family term) w.r.t. the logits.

  With :math:`u_{pj} = v_p (a_j g_{pj} + b_j)` (``squared``: :math:`2 b_j s_{pj}` for
  :math:`b_j`) and :math:`U_p = \sum_k u_{pk} s_{pk}`, the gradient
  :math:`s_{pj} (u_{pj} - U_p) + k_p (s_{pj} - g_{pj})` is regrouped as
  :math:`e_{pj} (b_j \alpha_p + \beta_p) + g_{pj} \delta_p` (``squared``:
  :math:`e_{pj} (b_j \alpha_p e_{pj} + \beta_p)`), :math:`e_{pj} = \exp(x_{pj} - m_p)`,
  with per-pixel :math:`\alpha_p, \beta_p, \delta_p` from one pass of class sums, so that
  the sweep that writes the gradient costs an exp and a few operations per element.

  Args:
    a_true: :math:`a_{y_p} e_{py_p}` ``(B, *spatial)`` (0 for labels out of range).
    b: ``(B, 1.., C)``.
  """
  exp_shifted = jnp.exp(xf - m[..., None])
  pred_operand = b * exp_shifted * exp_shifted if spec.squared else b * exp_shifted
  # sum_k b_k e_k (squared: e_k^2), and the softmax's normaliser summed again here so that
  # the divisions below stay divisions (XLA rewrites a division by an exp into a product).
  b_sum, sum_exp = _sums((pred_operand, exp_shifted), (-1,))
  # Each per-pixel factor ends in a division: XLA does not fuse an expensive producer into a
  # consumer that reuses its elements, so they are computed once per pixel, not per class.
  # U_p times sum_exp: v (a_y e_y + b_sum) (squared: v (a_y e_y + 2 b_sum / sum_exp)).
  u_dot_e = valid * (a_true + (2.0 * b_sum / sum_exp if spec.squared else b_sum))
  alpha = (2.0 * valid / sum_exp if spec.squared else valid) / sum_exp
  beta = (k - u_dot_e / sum_exp) / sum_exp
  delta = (valid * a_true - k * sum_exp) / sum_exp  # v a_y s_y - k
  xf, m = jax.lax.optimization_barrier((xf, m))
  e = jnp.exp(xf - m[..., None])
  scale = b * alpha[..., None] * e if spec.squared else b * alpha[..., None]
  return e * (scale + beta[..., None]) + jnp.where(hit, delta[..., None], 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _multiclass(spec, x, labels, valid, params):
  return _multiclass_forward(spec, x, labels, valid, params)[0]


_multiclass.defvjp(_multiclass_forward, _multiclass_backward)


def _sigmoid_pair(x, exp_minus_abs):
  """``(sigmoid(x), sigmoid(-x))`` from ``exp(-|x|)``, each to full relative precision.

  One exp serves both sides, and the softplus of :func:`_binary_operands`: XLA:CPU's
  binary compounds are bound by their transcendental functions, not by memory.
  """
  large = 1.0 / (1.0 + exp_minus_abs)  # sigmoid(|x|)
  small = exp_minus_abs * large  # sigmoid(-|x|)
  return jnp.where(x >= 0, large, small), jnp.where(x >= 0, small, large)


def _binary_targets(labels):
  """``t``, the probability of each pixel's positive side ``(B, *spatial, 1)``."""
  if inputs.is_soft(labels):
    return labels.astype(jnp.float32)
  return (labels == 1).astype(jnp.float32)[..., None]


def _binary_operands(spec, x, targets, valid, params, soft):
  """The per-pixel operands of every sum the binary terms take, each ``(B, *spatial, 1)``.

  Elementwise in ``x``: their VJP is the whole backward pass. The first is the first term's
  per-pixel value; then the prediction's operands of the region or overlap sums (the targets'
  own sums take no gradient and are computed once, outside).
  """
  v = valid[..., None]
  exp_minus_abs = jnp.exp(-jnp.abs(x))
  log1p_exp = jnp.log1p(exp_minus_abs)  # softplus(x) = max(x, 0) + log1p(exp(-|x|))
  sigmoid, sigmoid_minus = _sigmoid_pair(x, exp_minus_abs)
  if spec.first == "ce":
    first = jnp.maximum(x, 0.0) + log1p_exp - targets * x
    if params["first_weights"] is not None:
      first = first * params["first_weights"]
  else:
    log_sigmoid = -(jnp.maximum(-x, 0.0) + log1p_exp)
    log_sigmoid_minus = -(jnp.maximum(x, 0.0) + log1p_exp)
    positive = -inputs.safe_power(sigmoid_minus, spec.gamma) * log_sigmoid
    negative = -inputs.safe_power(sigmoid, spec.gamma) * log_sigmoid_minus
    if params["first_weights"] is not None:
      alpha = params["first_weights"]
      positive, negative = alpha * positive, (1.0 - alpha) * negative
    first = targets * positive + (1.0 - targets) * negative
  first = first * v
  if spec.second in REGION_TERMS:
    tx = params["temperature"] * x
    positive, negative = _sigmoid_pair(tx, jnp.exp(-jnp.abs(tx)))
    return first, positive * v, negative * v
  probs, target_values = sigmoid * v, targets * v
  pred = probs * probs if spec.squared else probs
  if soft:
    # The semimetric intersection of the plain path, summed per pixel (it is linear).
    difference = jnp.abs(probs - target_values)
    if spec.squared:
      difference, target_values = difference * difference, target_values * target_values
    return first, pred, 0.5 * (pred + target_values - difference)
  return first, pred, probs * target_values


def _binary_target_operands(spec, targets, valid):
  """The targets' per-pixel operands, each ``(B, *spatial, 1)``: the valid pixels, ``t``
  (``squared``: ``t^2``), and for the region terms ``1 - t``, all zero where not valid."""
  v = valid[..., None]
  t = targets * v
  operands = (jnp.broadcast_to(v, targets.shape), t * t if spec.squared else t)
  if spec.second in REGION_TERMS:
    operands += ((1.0 - targets) * v,)
  return operands


def _binary_image_sums(operands):
  """Per-image sums ``(B,)`` of same-shape ``(B, *spatial, 1)`` arrays, in one pass.

  With one channel the targets are as large as the logits: each lone sum would read them
  again (and go to the YNNPACK reduce fusion, see :func:`_sums`).
  """
  batch = operands[0].shape[0]
  return _sums(tuple(a.reshape(batch, -1) for a in operands), (1,))


def _binary_values(spec, first_sums, pred_sums, target_sums, params):
  """``(first, second)`` from per-image sums ``(B,)``: of the first term's per-pixel values,
  of the prediction's operands (both :func:`_binary_operands`) and of the targets' operands
  (:func:`_binary_target_operands`)."""
  counts, target_sum, *neg_target_sum = (s[:, None] for s in target_sums)
  pred_sums = tuple(s[:, None] for s in pred_sums)
  first = jnp.sum(first_sums) * _safe_inverse(jnp.sum(counts))
  if spec.second in REGION_TERMS:
    neg = (neg_target_sum[0], pred_sums[1])
    second = _region_penalty("binary", spec.second, counts, target_sum, pred_sums[0], neg)
  else:
    second = _overlap_penalty(
      spec, pred_sums[1], pred_sums[0], target_sum, params["second_weights"]
    )
  return first, second


def _binary_forward(spec, x, labels, valid, params):
  """One pass over ``x`` and the labels: every per-image sum in one variadic reduction."""
  targets = _binary_targets(labels)
  soft = inputs.is_soft(labels)
  predicted = _binary_operands(spec, x.astype(jnp.float32), targets, valid, params, soft)
  sums = _binary_image_sums(predicted + _binary_target_operands(spec, targets, valid))
  predicted_sums, target_sums = sums[: len(predicted)], sums[len(predicted) :]
  values, values_vjp = jax.vjp(
    lambda s: _binary_values(spec, s[0], s[1:], target_sums, params), predicted_sums
  )
  return values, (x, labels, valid, params, values_vjp)


def _binary_backward(spec, residuals, cotangents):
  """The VJP of the per-pixel operands, recomputed from ``x``, under the per-image
  cotangents of their sums: one elementwise pass that writes the gradient."""
  x, labels, valid, params, values_vjp = residuals
  (sum_bars,) = values_vjp(cotangents)
  # As in the multiclass backward pass: without the barrier XLA merges the per-pixel
  # expressions (the sigmoids, the targets) with the forward pass's and writes them out.
  x, labels, valid = jax.lax.optimization_barrier((x, labels, valid))
  batch_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  sum_bars = tuple(
    jnp.broadcast_to(_computed_once(b).reshape(batch_shape), x.shape) for b in sum_bars
  )
  targets = _binary_targets(labels)
  soft = inputs.is_soft(labels)
  _, operands_vjp = jax.vjp(
    lambda z: _binary_operands(spec, z, targets, valid, params, soft), x.astype(jnp.float32)
  )
  (grad,) = operands_vjp(sum_bars)
  param_grads = jax.tree_util.tree_map(jnp.zeros_like, params)
  return grad.astype(x.dtype), None, None, param_grads


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _binary(spec, x, labels, valid, params):
  return _binary_forward(spec, x, labels, valid, params)[0]


_binary.defvjp(_binary_forward, _binary_backward)


def _as_array(value):
  return None if value is None else jnp.asarray(value, jnp.float32)


def compound_loss(
  logits: jax.Array,
  labels: jax.Array,
  *,
  first: str = "ce",
  second: str = "kl",
  mode: str = "multiclass",
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  gamma: float = 2.0,
  first_weights: jax.Array | None = None,
  temperature: float | jax.Array = 1.0,
  second_options: dict | None = None,
) -> tuple[jax.Array, jax.Array]:
  """A compound's two terms, with the fused gradient of the module docstring.

  Values and gradients equal those of the plain term functions of the same arguments
  (tested); this is only faster and lighter on memory. No fallback happens here: see
  :func:`select` for what it cannot take.

  Args:
    logits: ``(B, *spatial, C)``; ``C == 1`` in binary mode.
    labels: integer ``(B, *spatial)``, or float soft targets of the logits' shape (no
      gradient flows to them; multiclass: CE with a region term only).
    first: ``ce`` or ``focal``.
    second: ``l1``, ``kl``, ``db``, ``dice``, ``tversky`` or ``generalized_dice``.
    mode: ``multiclass`` or ``binary``.
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    gamma: focal exponent.
    first_weights: CE ``class_weights`` or focal ``alpha``, as those terms take them.
    temperature: ``T`` of a region term's softmax (not of the first term's).
    second_options: the Dice-family term's options, as :func:`dice_loss` and its siblings
      take them (``reduction`` must be ``"mean"``).

  Returns:
    ``(first, second)``, float32 scalars.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax.losses import fused
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> ce, dice = fused.compound_loss(logits, labels, first="ce", second="dice")
    >>> print(f"{ce:.4f} {dice:.4f}")
    0.2631 0.2216
    >>> focal, log_dice = fused.compound_loss(
    ...   logits, labels, first="focal", second="dice", second_options={"log": True}
    ... )
    >>> print(f"{focal:.4f} {log_dice:.4f}")
    0.0609 0.2548
  """
  if first not in FIRST_TERMS:
    raise ValueError(f"Unknown first term {first!r}; valid: {', '.join(FIRST_TERMS)}.")
  if second not in REGION_TERMS + OVERLAP_TERMS:
    valid_terms = ", ".join(REGION_TERMS + OVERLAP_TERMS)
    raise ValueError(f"Unknown second term {second!r}; valid: {valid_terms}.")
  if mode not in ("multiclass", "binary"):
    raise ValueError(f"The fused path takes mode 'multiclass' or 'binary'; got {mode!r}.")
  inputs.check_logits_labels(logits, labels, mode=mode, where=where)
  options = dict(second_options or {})
  options.pop("reduction", None)
  second_weights = options.pop("class_weights", None)
  if second == "generalized_dice" and second_weights is not None:
    raise ValueError("generalized_dice takes no class_weights.")
  spec = _Spec(
    first=first,
    gamma=float(gamma),
    second=second,
    squared=bool(options.pop("squared", False)),
    batch=bool(options.pop("batch", False)),
    # Only multiclass mode has a background channel to drop.
    include_background=bool(options.pop("include_background", True)) or mode != "multiclass",
    options=tuple(sorted(options.items())),
  )
  params = {
    "first_weights": _as_array(first_weights),
    "second_weights": _as_array(second_weights),
    "temperature": jnp.asarray(temperature, jnp.float32),
  }
  if first == "focal" and gamma < 0:
    raise ValueError(f"gamma must be >= 0; got {gamma}.")
  allowed_shapes = ((), (1,)) if mode == "binary" else ((logits.shape[-1],),)
  if params["first_weights"] is not None and params["first_weights"].shape not in allowed_shapes:
    raise ValueError(
      f"The {first} term's per-class weights must have shape {allowed_shapes[-1]}; got "
      f"{params['first_weights'].shape}."
    )
  valid = inputs.valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  if mode == "binary":
    return _binary(spec, logits, labels, valid, params)
  return _multiclass(spec, logits, labels, valid, params)


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
  return compound_loss(
    logits,
    labels,
    first="ce",
    second=term,
    temperature=temperature,
    ignore_index=ignore_index,
    where=where,
  )


def select(parts: tuple[str, ...], term_options: list[dict], *, fallback=None):
  """The fused ``fn(logits, labels, *, where) -> (first, second)`` for a compound, or None.

  None where no input could take the fused path (multilabel mode, ``reduction="none"``,
  label smoothing). Where only some labels cannot (multiclass soft targets with a focal or
  Dice-family term, or with CE class weights), the returned function calls ``fallback``
  (the plain ``fn(logits, labels, *, where)``) for them; without one, it raises.
  """
  (first, second), (first_options, second_options) = parts, term_options
  if first not in FIRST_TERMS or second not in REGION_TERMS + OVERLAP_TERMS:
    return None
  mode = first_options.get("mode", "multiclass")
  if mode not in ("multiclass", "binary"):
    return None
  if first_options.get("label_smoothing") or first_options.get("reduction", "mean") != "mean":
    return None
  weights = first_options.get("class_weights" if first == "ce" else "alpha")
  options = {k: v for k, v in second_options.items() if k not in ("mode", "ignore_index")}
  fused_fn = functools.partial(
    compound_loss,
    first=first,
    second=second,
    mode=mode,
    ignore_index=first_options.get("ignore_index"),
    gamma=first_options.get("gamma", 2.0),
    first_weights=weights,
    temperature=options.pop("temperature", 1.0),
    second_options=options,
  )
  plain_only = first != "ce" or second not in REGION_TERMS or weights is not None

  def fn(logits, labels, *, where=None):
    if mode == "multiclass" and plain_only and inputs.is_soft(labels):
      if fallback is None:
        raise ValueError(f"No fused path for {first}+{second} with these soft targets.")
      return fallback(logits, labels, where=where)
    return fused_fn(logits, labels, where=where)

  return fn
