"""Properties every registered loss must have, in every mode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionloss_jax import losses
from tests import tiers
from tests.losses.helpers import (
  IGNORE,
  NUM_CLASSES,
  all_configs,
  ignored_pixels,
  make_inputs,
  value_and_grad,
)

CONFIGS = all_configs()
CONFIG_IDS = [f"{name}-{mode}" for name, mode in CONFIGS]
# Terms whose value is 0 at a perfect prediction (up to smoothing and saturation); db is
# the exception the paper is about: its size term is not minimised by the ground truth.
ZERO_AT_PERFECT = ("ce", "focal", "dice", "tversky", "generalized_dice", "l1", "kl")


def _finite(tree):
  return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(tree))


@tiers.parametrize("name, mode", CONFIGS, ids=CONFIG_IDS, fast_every=6)
def test_ignored_pixels_get_no_gradient_and_all_ignored_gives_zero_gradient(name, mode):
  step = value_and_grad(name, mode)
  logits, labels = make_inputs(mode, seed=1)
  (loss, terms), grad = step(logits, labels)
  assert _finite((loss, terms, grad))
  ignored = ignored_pixels(labels, mode)
  assert bool(jnp.any(ignored)) and bool(jnp.any(~ignored))
  assert float(jnp.max(jnp.abs(grad[ignored]))) == 0.0
  assert float(jnp.max(jnp.abs(grad[~ignored]))) > 0.0

  all_ignored = jnp.full_like(labels, IGNORE)
  (loss, terms), grad = step(logits, all_ignored)
  assert _finite((loss, terms))
  assert float(jnp.max(jnp.abs(grad))) == 0.0


@tiers.parametrize("name, mode", CONFIGS, ids=CONFIG_IDS, fast_every=6)
def test_saturated_logits_give_finite_values_and_gradients(name, mode):
  step = value_and_grad(
    name,
    mode,
    **({"temperature": 10.0} if "+" in name and name.split("+")[1] in ("l1", "kl", "db") else {}),
  )
  logits, labels = make_inputs(mode, seed=2)
  for scale in (1e4, -1e4):
    out = step(logits * scale, labels)
    assert _finite(out), f"scale {scale}"
  # All-foreground and all-background images: the 0 * log 0 cases of the Bernoulli KL.
  for fill in (0, 1):
    filled = jnp.where(
      ignored_pixels(labels, mode)[..., None]
      if mode == "multilabel"
      else ignored_pixels(labels, mode),
      labels,
      fill,
    )
    assert _finite(step(logits * 1e4, filled)), f"labels all {fill}"


@tiers.parametrize("name, mode", CONFIGS, ids=CONFIG_IDS, fast_every=6)
def test_bfloat16_logits_follow_float32(name, mode):
  step = value_and_grad(name, mode)
  logits, labels = make_inputs(mode, seed=3)
  logits_bf16 = logits.astype(jnp.bfloat16)
  (loss16, terms16), grad16 = step(logits_bf16, labels)
  (loss32, _), _ = step(logits_bf16.astype(jnp.float32), labels)
  assert loss16.dtype == jnp.float32
  assert grad16.dtype == jnp.bfloat16
  assert _finite((loss16, terms16, grad16.astype(jnp.float32)))
  assert abs(float(loss16) - float(loss32)) <= 2e-2 * max(1.0, abs(float(loss32)))


@tiers.parametrize("name, mode", CONFIGS, ids=CONFIG_IDS, fast_every=6)
def test_three_dimensional_inputs(name, mode):
  step = value_and_grad(name, mode)
  logits, labels = make_inputs(mode, shape=(2, 3, 4, 5), seed=4)
  (loss, _), grad = step(logits, labels)
  assert grad.shape == logits.shape
  assert _finite((loss, grad))


@tiers.parametrize("name, mode", CONFIGS, ids=CONFIG_IDS, fast_every=6)
def test_perfect_prediction_minimises_the_loss(name, mode):
  step = value_and_grad(name, mode)
  _, labels = make_inputs(mode, seed=5, ignore_fraction=0.0)
  channels = NUM_CLASSES[mode]
  if mode == "multiclass":
    targets = jax.nn.one_hot(labels, channels)
  elif mode == "binary":
    targets = labels[..., None].astype(jnp.float32)
  else:
    targets = labels.astype(jnp.float32)
  perfect = 30.0 * (2.0 * targets - 1.0)
  (best, terms), _ = step(perfect, labels)
  rng = np.random.default_rng(0)
  for _ in range(3):
    noisy = perfect + jnp.asarray(20.0 * rng.standard_normal(perfect.shape), jnp.float32)
    assert float(step(noisy, labels)[0][0]) >= float(best) - 1e-6
  for term_name, value in terms.items():
    if any(term_name.endswith(t) for t in ZERO_AT_PERFECT):
      assert abs(float(value)) < 1e-4, term_name


@tiers.parametrize(
  "name",
  ["dice", "tversky", "generalized_dice", "ce+l1", "ce+kl", "ce+db", "focal+kl"],
  fast_every=2,
)
def test_vmap_over_images_equals_the_loop(name):
  fn = losses.make_loss(name, mode="multiclass", ignore_index=IGNORE)
  logits, labels = make_inputs("multiclass", shape=(4, 6, 5), seed=6)

  def per_image(x, y):
    return fn(x[None], y[None])[0]

  mapped = jax.jit(jax.vmap(per_image))(logits, labels)
  looped = jnp.stack([per_image(logits[i], labels[i]) for i in range(4)])
  np.testing.assert_allclose(mapped, looped, rtol=1e-6, atol=1e-7)


@tiers.parametrize(
  "name, options",
  [
    ("dice", {"batch": False}),
    ("dice", {"batch": False, "log": True}),
    ("generalized_dice", {"batch": False}),
    ("tversky", {"batch": False}),
  ],
  fast_every=2,
)
def test_per_image_losses_average_over_images(name, options):
  fn = losses.make_loss(name, mode="multiclass", **options)
  logits, labels = make_inputs("multiclass", shape=(4, 6, 5), seed=7, ignore_fraction=0.0)
  per_image = jax.vmap(lambda x, y: fn(x[None], y[None])[0])(logits, labels)
  np.testing.assert_allclose(fn(logits, labels)[0], jnp.mean(per_image), rtol=1e-6)


@pytest.mark.parametrize("term", ["l1", "kl", "db"])
def test_region_terms_are_means_over_images(term):
  fn = getattr(losses, f"region_{term}_loss")
  logits, labels = make_inputs("multiclass", shape=(4, 6, 5), seed=8)
  per_image = jax.vmap(lambda x, y: fn(x[None], y[None], ignore_index=IGNORE))(logits, labels)
  np.testing.assert_allclose(
    fn(logits, labels, ignore_index=IGNORE), jnp.mean(per_image), rtol=1e-6
  )


@settings(max_examples=25, deadline=None)
@given(
  seed=st.integers(0, 2**31 - 1),
  scale=st.floats(0.1, 20.0),
  mode=st.sampled_from(["multiclass", "binary"]),
)
def test_log_dice_identity_and_ce_bound(seed, scale, mode):
  logits, labels = make_inputs(mode, seed=seed, scale=scale)
  parts = losses.log_dice_decomposition(logits, labels, mode=mode, ignore_index=IGNORE)
  np.testing.assert_allclose(
    parts["log_dice"], parts["matching"] + parts["size"] - np.log(2), rtol=1e-5, atol=1e-5
  )
  if mode == "multiclass":
    bound = losses.cross_entropy_decomposition(logits, labels, ignore_index=IGNORE)
    assert bool(jnp.all(bound["ce"] >= bound["matching"] + bound["size"] - 1e-5))
    assert bool(jnp.all(bound["matching"] >= -1e-6))
    # Per image, CE summed over classes is the image's CE.
    for i in range(logits.shape[0]):
      expected = losses.cross_entropy(logits[i : i + 1], labels[i : i + 1], ignore_index=IGNORE)
      np.testing.assert_allclose(jnp.sum(bound["ce"][i]), expected, rtol=1e-5)


def test_ce_bound_is_tight_for_constant_predictions():
  # A prediction constant over each class region makes Jensen's inequality an equality.
  labels = jnp.array([[[0, 0, 1], [1, 2, 2]]])
  logits = jnp.broadcast_to(jnp.array([0.3, -1.0, 2.0]), labels.shape + (3,))
  bound = losses.cross_entropy_decomposition(logits, labels)
  np.testing.assert_allclose(bound["ce"], bound["matching"] + bound["size"], rtol=1e-6)
  np.testing.assert_allclose(
    jnp.sum(bound["size"]), losses.region_kl_loss(logits, labels), rtol=1e-5
  )
