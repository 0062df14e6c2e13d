"""``reduction="none"``: one value per image, agreeing with the mean and with ``jax.vmap``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import losses
from tests import tiers
from tests.losses.helpers import IGNORE, make_inputs

# Losses that are means of per-image values (no ignored pixels for ce and focal, whose
# batch mean weighs images by their valid pixels).
PER_IMAGE_AVERAGED = ["ce", "focal", "dice", "tversky", "generalized_dice"] + [
  f"{a}+{b}"
  for a in ("ce", "focal")
  for b in ("dice", "tversky", "generalized_dice", "l1", "kl", "db")
]


MODE_SHAPES = [
  (mode, shape) for mode in losses.MODES for shape in [(3, 6, 5), (3, 3, 4, 5)]
]  # 2-D, 3-D


@tiers.SLOW
@pytest.mark.parametrize(
  "mode, shape",
  MODE_SHAPES,
  ids=[f"{len(shape) - 1}d-{mode}" for mode, shape in MODE_SHAPES],
)
def test_mean_of_per_image_values_is_the_mean(mode, shape):
  logits, labels = make_inputs(mode, shape=shape, seed=50, ignore_fraction=0.0)
  for name in PER_IMAGE_AVERAGED:
    mean_fn = losses.make_loss(name, mode=mode)
    none_fn = losses.make_loss(name, mode=mode, reduction="none")
    loss, terms = mean_fn(logits, labels)
    per_image, per_image_terms = none_fn(logits, labels)
    assert per_image.shape == (shape[0],), name
    np.testing.assert_allclose(jnp.mean(per_image), loss, rtol=2e-6, err_msg=name)
    for key, value in terms.items():
      assert per_image_terms[key].shape == (shape[0],)
      np.testing.assert_allclose(
        jnp.mean(per_image_terms[key]), value, rtol=2e-6, atol=1e-7, err_msg=f"{name}:{key}"
      )


@pytest.mark.parametrize(
  "name", ["ce", "focal", "dice", "generalized_dice", "ce+kl", "focal+l1", "ce+db", "ce+tversky"]
)
@pytest.mark.parametrize("soft", [False, True])
def test_per_image_values_equal_vmap_over_images(name, soft):
  logits, labels = make_inputs("multiclass", shape=(4, 6, 5), seed=51)
  where = labels != IGNORE
  if soft:
    labels = jax.nn.softmax(
      3.0 * jnp.asarray(np.random.default_rng(0).standard_normal(logits.shape), jnp.float32)
    )
  fn = losses.make_loss(name, ignore_index=IGNORE)
  none_fn = losses.make_loss(name, ignore_index=IGNORE, reduction="none")
  mapped = jax.jit(jax.vmap(lambda x, y, w: fn(x[None], y[None], where=w[None])[0]))(
    logits, labels, where
  )
  per_image = jax.jit(lambda x, y, w: none_fn(x, y, where=w)[0])(logits, labels, where)
  np.testing.assert_allclose(per_image, mapped, rtol=2e-6, atol=1e-7)


def test_per_image_gradients_sum_to_the_gradient_of_the_sum():
  logits, labels = make_inputs("binary", shape=(3, 6, 5), seed=52)
  fn = losses.make_loss("ce+kl", mode="binary", ignore_index=IGNORE, reduction="none")
  grad = jax.grad(lambda x: jnp.sum(fn(x, labels)[0]))(logits)
  rows = [jax.grad(lambda x, i=i: fn(x, labels)[0][i])(logits) for i in range(3)]
  np.testing.assert_allclose(grad, sum(rows), rtol=1e-6, atol=1e-8)
  for i, row in enumerate(rows):  # image i's value depends on image i only
    assert float(jnp.max(jnp.abs(jnp.delete(row, i, axis=0)))) == 0.0


@pytest.mark.parametrize("name", ["dice", "tversky", "generalized_dice", "ce+dice"])
def test_batch_dice_has_no_per_image_values(name):
  logits, labels = make_inputs("multiclass", seed=53, ignore_fraction=0.0)
  fn = losses.make_loss(name, batch=True, reduction="none")
  with pytest.raises(ValueError, match="batch=True"):
    fn(logits, labels)


def test_unknown_reduction():
  with pytest.raises(ValueError, match="Unknown reduction 'sum'.*mean, none"):
    losses.make_loss("ce+kl", reduction="sum")
  logits, labels = make_inputs("multiclass", seed=54)
  with pytest.raises(ValueError, match="Unknown reduction"):
    losses.focal_loss(logits, labels, reduction="sum")
