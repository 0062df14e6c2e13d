"""Soft targets in every loss and mode: one-hot soft targets are integer labels exactly."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from regionloss_jax import losses
from tests import tiers
from tests.losses.helpers import IGNORE, NUM_CLASSES, ignored_pixels, make_inputs


def _one_hot(labels, mode):
  """Float targets of the logits' shape for integer ``labels``; ignored pixels get zeros."""
  ignored = ignored_pixels(labels, mode)
  if mode == "multiclass":
    targets = jax.nn.one_hot(labels, NUM_CLASSES[mode])
  elif mode == "binary":
    targets = (labels == 1).astype(jnp.float32)[..., None]
  else:
    targets = (labels == 1).astype(jnp.float32)
  return jnp.where(ignored[..., None], 0.0, targets), ~ignored


def _soft(logits, mode, seed):
  """Random soft targets: distributions over channels (multiclass) or probabilities."""
  rng = np.random.default_rng(seed)
  raw = rng.standard_normal(logits.shape).astype(np.float32)
  if mode == "multiclass":
    return jax.nn.softmax(jnp.asarray(2.0 * raw), axis=-1)
  return jax.nn.sigmoid(jnp.asarray(2.0 * raw))


@functools.cache
def _all_losses(mode, fused_kernel=True):
  """Every registered loss of ``mode`` in one jitted function, for integer and soft labels."""
  fns = [
    losses.make_loss(name, mode=mode, ignore_index=IGNORE, fused_kernel=fused_kernel)
    for name in losses.loss_names()
  ]

  @jax.jit
  def run(logits, labels, targets, where):
    hard = [jax.value_and_grad(fn, has_aux=True)(logits, labels) for fn in fns]
    soft = [
      jax.value_and_grad(lambda x, f=fn: f(x, targets, where=where), has_aux=True)(logits)
      for fn in fns
    ]
    return hard, soft

  return run


MODE_SHAPES = [
  (mode, shape) for mode in losses.MODES for shape in [(2, 6, 5), (2, 3, 4, 5)]
]  # 2-D, 3-D


@tiers.parametrize(
  "mode, shape",
  MODE_SHAPES,
  ids=[f"{len(shape) - 1}d-{mode}" for mode, shape in MODE_SHAPES],
  fast_every=6,
)
def test_one_hot_soft_targets_equal_integer_labels(mode, shape):
  logits, labels = make_inputs(mode, shape=shape, seed=40)
  targets, where = _one_hot(labels, mode)
  hard, soft = _all_losses(mode)(logits, labels, targets, where)
  for name, ((v1, t1), g1), ((v2, t2), g2) in zip(losses.loss_names(), hard, soft, strict=True):
    np.testing.assert_allclose(v2, v1, rtol=2e-6, atol=1e-7, err_msg=name)
    for key in t1:
      np.testing.assert_allclose(t2[key], t1[key], rtol=2e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(g2, g1, atol=1e-6 * float(jnp.max(jnp.abs(g1))), err_msg=name)
    assert float(jnp.max(jnp.abs(g2[~where]))) == 0.0, name


@tiers.parametrize("mode", ["binary", "multiclass", "multilabel"], fast_every=3)
def test_soft_targets_give_finite_values_and_no_gradient_where_masked(mode):
  logits, labels = make_inputs(mode, seed=41)
  targets = _soft(logits, mode, seed=41)
  where = ~ignored_pixels(labels, mode)
  hard, soft = _all_losses(mode)(logits, labels, targets, where)
  del hard
  for name, ((value, terms), grad) in zip(losses.loss_names(), soft, strict=True):
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in (value, grad, *terms.values())), name
    assert float(jnp.max(jnp.abs(grad[~where]))) == 0.0, name
    assert float(jnp.max(jnp.abs(grad[where]))) > 0.0, name


@tiers.parametrize("term", ["l1", "kl", "db"], fast_every=3)
def test_fused_kernel_with_soft_targets_equals_the_plain_terms(term):
  logits, labels = make_inputs("multiclass", shape=(2, 7, 5), seed=42)
  targets = _soft(logits, "multiclass", seed=42)
  where = ~ignored_pixels(labels, "multiclass")
  options = dict(temperature=4.0, weight=0.3)
  fns = [losses.make_loss(f"ce+{term}", fused_kernel=f, **options) for f in (True, False)]
  (v1, t1), g1 = jax.jit(
    jax.value_and_grad(lambda x: fns[0](x, targets, where=where), has_aux=True)
  )(logits)
  (v2, t2), g2 = jax.value_and_grad(lambda x: fns[1](x, targets, where=where), has_aux=True)(logits)
  np.testing.assert_allclose(
    [v1, t1["ce"], t1[term]], [v2, t2["ce"], t2[term]], rtol=2e-6, atol=1e-7
  )
  # Soft CE gradients s - t cancel more than s - onehot, so float32 rounding is relatively
  # larger here than in test_fused.
  np.testing.assert_allclose(g1, g2, atol=1e-5 * float(jnp.max(jnp.abs(g2))))


@pytest.mark.parametrize("mode", losses.MODES)
@pytest.mark.parametrize(
  "options", [{}, {"squared": True}, {"jaccard": True}, {"log": True}, {"batch": True}]
)
def test_dice_is_zero_when_the_targets_are_the_prediction(mode, options):
  # The semimetric form: 0 at s == g for any soft g (the sum s g form is not).
  logits, _ = make_inputs(mode, seed=43)
  probs = jax.nn.softmax(logits) if mode == "multiclass" else jax.nn.sigmoid(logits)
  kw = dict(mode=mode, smooth_nr=0.0, smooth_dr=0.0)
  assert abs(float(losses.dice_loss(logits, probs, **kw, **options))) < 1e-6
  assert abs(float(losses.tversky_loss(logits, probs, alpha=0.3, beta=0.7, **kw))) < 1e-6
  assert abs(float(losses.generalized_dice_loss(logits, probs, **kw))) < 1e-6
  assert float(losses.dice_loss(logits, 0.5 * (probs + jnp.round(probs)), **kw)) > 1e-3


def test_soft_dice_by_hand():
  probs = jnp.array([0.8, 0.6, 0.1, 0.3])
  logits = jnp.log(probs / (1 - probs)).reshape(1, 2, 2, 1)
  targets = jnp.array([0.9, 0.5, 0.2, 0.0]).reshape(1, 2, 2, 1)
  pred, target = 1.8, 1.6
  inter = (pred + target - (0.1 + 0.1 + 0.1 + 0.3)) / 2
  kw = dict(mode="binary", smooth_nr=0.0, smooth_dr=0.0)
  np.testing.assert_allclose(
    losses.dice_loss(logits, targets, **kw), 1 - 2 * inter / (pred + target), rtol=1e-6
  )
  tversky = inter / (inter + 0.3 * (pred - inter) + 0.7 * (target - inter))
  np.testing.assert_allclose(
    losses.tversky_loss(logits, targets, alpha=0.3, beta=0.7, **kw), 1 - tversky, rtol=1e-6
  )


@pytest.mark.parametrize("mode", losses.MODES)
def test_soft_focal_with_gamma_zero_is_soft_cross_entropy(mode):
  logits, _ = make_inputs(mode, seed=44)
  targets = _soft(logits, mode, seed=44)
  np.testing.assert_allclose(
    losses.focal_loss(logits, targets, mode=mode, gamma=0.0),
    losses.cross_entropy(logits, targets, mode=mode),
    rtol=1e-6,
  )


def test_binary_soft_focal_by_hand():
  logits = jnp.array([[[[0.5], [-1.0]]]])
  targets = jnp.array([[[[0.7], [0.2]]]])
  p = 1 / (1 + np.exp(-np.array([0.5, -1.0])))
  t = np.array([0.7, 0.2])
  alpha, gamma = 0.25, 2.0
  per_pixel = -(
    alpha * t * (1 - p) ** gamma * np.log(p) + (1 - alpha) * (1 - t) * p**gamma * np.log(1 - p)
  )
  np.testing.assert_allclose(
    losses.focal_loss(logits, targets, mode="binary", alpha=alpha, gamma=gamma),
    per_pixel.mean(),
    rtol=1e-6,
  )


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_region_proportions_of_soft_targets_are_their_means(mode):
  logits, labels = make_inputs(mode, seed=45)
  targets = _soft(logits, mode, seed=45)
  where = ~ignored_pixels(labels, mode)
  tau, _ = losses.region_proportions(logits, targets, mode=mode, where=where)
  w = where[..., None].astype(jnp.float32)
  expected = jnp.sum(targets * w, axis=(1, 2)) / jnp.sum(w, axis=(1, 2))
  np.testing.assert_allclose(tau, expected, rtol=1e-6)
  # The region terms vanish when the prediction is the soft target.
  probs_logits = jnp.log(targets) if mode == "multiclass" else jnp.log(targets / (1 - targets))
  for term in ("l1", "kl"):
    value = getattr(losses, f"region_{term}_loss")(probs_logits, targets, mode=mode, where=where)
    assert abs(float(value)) < 1e-5, term


def test_soft_targets_of_the_wrong_shape_name_both_shapes():
  logits = jnp.zeros((2, 4, 4, 3))
  for name in ("focal", "dice", "tversky", "generalized_dice", "ce+kl", "focal+l1", "ce"):
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 2\).*\(2, 4, 4, 3\)"):
      jax.jit(losses.make_loss(name))(logits, jnp.zeros((2, 4, 4, 2)))


def test_validate_labels_checks_soft_target_values():
  good = jnp.full((1, 2, 2, 3), 1 / 3)
  assert losses.validate_labels(good, num_classes=3) is good
  with pytest.raises(ValueError, match=r"finite and in \[0, 1\].*1.5"):
    losses.validate_labels(good.at[0, 0, 0, 0].set(1.5), num_classes=3)
  with pytest.raises(ValueError, match="nan"):
    losses.validate_labels(good.at[0, 0, 0, 0].set(jnp.nan), num_classes=3)
  checked = jax.jit(checkify.checkify(lambda t: losses.validate_labels(t, num_classes=3)))
  checked(good)[0].throw()
  err, _ = checked(good.at[0, 1, 1, 2].set(-0.5))
  with pytest.raises(checkify.JaxRuntimeError, match="min -0.5"):
    err.throw()
