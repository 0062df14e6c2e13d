"""Loss options against hand-computed cases, optax and mathematical identities."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from regionloss_jax import losses, make_loss
from tests.losses.helpers import IGNORE, make_inputs


def test_cross_entropy_matches_optax_with_ignore_and_where():
  logits, labels = make_inputs("multiclass", seed=20)
  where = jnp.asarray(np.random.default_rng(0).random(labels.shape) > 0.4)
  valid = (labels != IGNORE) & where
  per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
  expected = jnp.sum(per_pixel * valid) / jnp.sum(valid)
  got = losses.cross_entropy(logits, labels, ignore_index=IGNORE, where=where)
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_cross_entropy_class_weights_are_a_weighted_mean():
  logits = jnp.log(jnp.array([[[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]]))
  labels = jnp.array([[[0, 2]]])
  weights = jnp.array([2.0, 1.0, 0.5])
  expected = (2.0 * -np.log(0.7) + 0.5 * -np.log(0.8)) / 2.5
  np.testing.assert_allclose(
    losses.cross_entropy(logits, labels, class_weights=weights), expected, rtol=1e-6
  )


def test_label_smoothing_equals_soft_targets():
  logits, labels = make_inputs("multiclass", seed=21, ignore_fraction=0.0)
  smooth = 0.1
  soft = optax.smooth_labels(jax.nn.one_hot(labels, 4), smooth)
  np.testing.assert_allclose(
    losses.cross_entropy(logits, labels, label_smoothing=smooth),
    losses.cross_entropy(logits, soft),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    losses.cross_entropy(logits, soft),
    jnp.mean(optax.softmax_cross_entropy(logits, soft)),
    rtol=1e-6,
  )


def test_multilabel_cross_entropy_is_mean_sigmoid_bce():
  logits, labels = make_inputs("multilabel", seed=22, ignore_fraction=0.0)
  expected = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32)))
  np.testing.assert_allclose(
    losses.cross_entropy(logits, labels, mode="multilabel"), expected, rtol=1e-6
  )


@pytest.mark.parametrize("mode", ["multiclass", "binary", "multilabel"])
def test_focal_with_gamma_zero_is_cross_entropy(mode):
  logits, labels = make_inputs(mode, seed=23)
  np.testing.assert_allclose(
    losses.focal_loss(logits, labels, mode=mode, gamma=0.0, ignore_index=IGNORE),
    losses.cross_entropy(logits, labels, mode=mode, ignore_index=IGNORE),
    rtol=1e-6,
  )


def test_binary_focal_alpha_by_hand():
  logits = jnp.array([[[[0.0], [2.0]]]])
  labels = jnp.array([[[1, 0]]])
  p = 1 / (1 + np.exp(-2.0))
  expected = (0.25 * 0.5**2 * np.log(2) + 0.75 * p**2 * -np.log(1 - p)) / 2
  np.testing.assert_allclose(
    losses.focal_loss(logits, labels, mode="binary", alpha=0.25), expected, rtol=1e-6
  )


def test_dice_and_jaccard_by_hand():
  # One image, binary: s = [0.8, 0.6, 0.1, 0.3], g = [1, 1, 0, 0].
  probs = jnp.array([0.8, 0.6, 0.1, 0.3])
  logits = jnp.log(probs / (1 - probs)).reshape(1, 2, 2, 1)
  labels = jnp.array([[[1, 1], [0, 0]]])
  inter, pred, target = 1.4, 1.8, 2.0
  kw = dict(mode="binary", smooth_nr=0.0, smooth_dr=0.0)
  np.testing.assert_allclose(
    losses.dice_loss(logits, labels, **kw), 1 - 2 * inter / (pred + target), rtol=1e-6
  )
  np.testing.assert_allclose(
    losses.dice_loss(logits, labels, jaccard=True, **kw),
    1 - inter / (pred + target - inter),
    rtol=1e-6,
  )
  np.testing.assert_allclose(
    losses.dice_loss(logits, labels, log=True, **kw),
    -np.log(2 * inter / (pred + target)),
    rtol=1e-6,
  )
  squared = (0.64 + 0.36 + 0.01 + 0.09) + 2.0
  np.testing.assert_allclose(
    losses.dice_loss(logits, labels, squared=True, **kw), 1 - 2 * inter / squared, rtol=1e-6
  )
  tversky = inter / (inter + 0.3 * (pred - inter) + 0.7 * (target - inter))
  np.testing.assert_allclose(
    losses.tversky_loss(logits, labels, alpha=0.3, beta=0.7, exponent=0.75, **kw),
    (1 - tversky) ** 0.75,
    rtol=1e-6,
  )


def test_tversky_with_halves_is_dice_and_with_ones_is_jaccard():
  logits, labels = make_inputs("multiclass", seed=24)
  kw = dict(ignore_index=IGNORE, smooth_nr=0.0, smooth_dr=0.0)
  np.testing.assert_allclose(
    losses.tversky_loss(logits, labels, alpha=0.5, beta=0.5, **kw),
    losses.dice_loss(logits, labels, **kw),
    rtol=1e-5,
  )
  np.testing.assert_allclose(
    losses.tversky_loss(logits, labels, alpha=1.0, beta=1.0, **kw),
    losses.dice_loss(logits, labels, jaccard=True, **kw),
    rtol=1e-5,
  )


def test_dice_empty_policy_and_class_weights():
  logits, labels = make_inputs("multiclass", seed=25, ignore_fraction=0.0)
  labels = jnp.where(labels == 3, 0, labels)  # class 3 absent everywhere
  kw = dict(batch=True, smooth_nr=0.0, smooth_dr=0.0)
  keep = losses.dice_loss(
    logits, labels, empty="keep", class_weights=jnp.array([1.0, 1, 1, 0]), **kw
  )
  zero = losses.dice_loss(logits, labels, empty="zero", **kw)
  np.testing.assert_allclose(keep, zero, rtol=1e-6)  # both drop class 3, both divide by 4
  no_bg = losses.dice_loss(logits, labels, include_background=False, empty="zero", **kw)
  with_bg = losses.dice_loss(
    logits, labels, empty="zero", class_weights=jnp.array([0.0, 1, 1, 1]), **kw
  )
  np.testing.assert_allclose(no_bg * 3, with_bg * 4, rtol=1e-6)


def test_generalized_dice_uniform_weights_by_hand():
  logits, labels = make_inputs("multiclass", seed=26, ignore_fraction=0.0, shape=(1, 6, 5))
  probs = jax.nn.softmax(logits)
  targets = jax.nn.one_hot(labels, 4)
  inter = jnp.sum(probs * targets)
  expected = 1 - 2 * inter / (jnp.sum(probs) + jnp.sum(targets))
  np.testing.assert_allclose(
    losses.generalized_dice_loss(logits, labels, weighting="uniform", smooth_nr=0.0, smooth_dr=0.0),
    expected,
    rtol=1e-6,
  )
  simple = losses.generalized_dice_loss(logits, labels, weighting="simple")
  assert 0.0 <= float(simple) <= 1.0


def test_region_proportions_by_hand():
  labels = jnp.array([[[0, 1], [1, IGNORE]]])
  logits = jnp.zeros((1, 2, 2, 2))
  tau, tauhat = losses.region_proportions(logits, labels, ignore_index=IGNORE)
  np.testing.assert_allclose(tau, [[1 / 3, 2 / 3]], rtol=1e-6)
  np.testing.assert_allclose(tauhat, [[0.5, 0.5]], rtol=1e-6)
  np.testing.assert_allclose(
    losses.region_l1_loss(logits, labels, ignore_index=IGNORE), 1 / 6, rtol=1e-5
  )
  kl = 1 / 3 * np.log(2 / 3) + 2 / 3 * np.log(4 / 3)
  np.testing.assert_allclose(
    losses.region_kl_loss(logits, labels, ignore_index=IGNORE), kl, rtol=1e-5
  )


def test_step_weight_schedule_and_no_recompilation():
  schedule = losses.step_weight_schedule(0.1, factor=2.0, step_size=10, max_weight=0.5)
  np.testing.assert_allclose(
    [schedule(s) for s in (0, 9, 10, 25, 30, 1000)], [0.1, 0.1, 0.2, 0.4, 0.5, 0.5], rtol=1e-6
  )
  fn = make_loss("ce+kl", weight=0.0)
  traces = []
  logits, labels = make_inputs("multiclass", seed=27, ignore_fraction=0.0)

  @jax.jit
  def step(step_number):
    traces.append(1)
    return fn(logits, labels, weight=schedule(step_number))

  values = [float(step(jnp.int32(s))[0]) for s in (0, 10, 20)]
  assert len(traces) == 1
  _, terms = fn(logits, labels)
  for value, weight in zip(values, (0.1, 0.2, 0.4), strict=True):
    np.testing.assert_allclose(value, terms["ce"] + weight * terms["kl"], rtol=1e-6)
  with pytest.raises(ValueError, match="step_size"):
    losses.step_weight_schedule(1.0, factor=2.0, step_size=0, max_weight=1.0)


def test_every_name_builds_and_names_its_terms():
  logits, labels = make_inputs("multiclass", seed=28)
  for name in losses.loss_names():
    loss, terms = make_loss(name, ignore_index=IGNORE)(logits, labels)
    assert len(terms) == len(name.split("+"))
    if "+" in name:
      np.testing.assert_allclose(loss, sum(terms.values()), rtol=1e-6)
  _, terms = make_loss("ce+dice", log=True)(logits, jnp.where(labels == IGNORE, 0, labels))
  assert set(terms) == {"ce", "logdice"}
