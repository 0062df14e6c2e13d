"""Bad input is a ValueError at trace time that names the offending shape, value or option."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from regionloss_jax import losses, make_loss

LOGITS = jnp.zeros((2, 4, 4, 3))
LABELS = jnp.zeros((2, 4, 4), jnp.int32)


@pytest.mark.parametrize(
  "name", ["ce", "focal", "dice", "tversky", "generalized_dice", "ce+kl", "focal+l1"]
)
def test_mismatched_shapes_name_both_shapes(name):
  with pytest.raises(ValueError, match=r"\(2, 4, 5\).*\(2, 4, 4, 3\)"):
    jax.jit(make_loss(name))(LOGITS, jnp.zeros((2, 4, 5), jnp.int32))


@pytest.mark.parametrize("mode, channels", [("binary", 3), ("multiclass", 1)])
def test_channel_count_that_does_not_fit_the_mode(mode, channels):
  logits = jnp.zeros((2, 4, 4, channels))
  with pytest.raises(ValueError, match=f"mode='{mode}'.*{channels}"):
    make_loss("dice", mode=mode)(logits, LABELS)


def test_float_labels_where_integers_are_expected():
  with pytest.raises(ValueError, match="labels must be integers.*float32"):
    make_loss("dice")(LOGITS, LABELS.astype(jnp.float32))
  with pytest.raises(ValueError, match="labels must be integers"):
    make_loss("ce")(LOGITS, LABELS.astype(jnp.float32))  # wrong shape for soft targets


def test_where_mask_shape_is_checked():
  with pytest.raises(ValueError, match=r"where must have shape.*\(2, 4, 4\).*\(4, 4\)"):
    make_loss("ce")(LOGITS, LABELS, where=jnp.ones((4, 4), bool))


def test_logits_without_spatial_axes():
  with pytest.raises(ValueError, match=r"\(2, 3\)"):
    make_loss("ce")(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32))


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"'cee'.*ce, focal, dice.*ce\+kl"):
    make_loss("cee")
  with pytest.raises(ValueError, match="Unknown loss name 'dice\\+ce'"):
    make_loss("dice+ce")


def test_unknown_option_lists_valid_options():
  with pytest.raises(ValueError, match=r"\['temprature'\].*temperature"):
    make_loss("ce+kl", temprature=10.0)
  with pytest.raises(ValueError, match=r"\['weight'\].*mode, ignore_index"):
    make_loss("ce", weight=0.5)  # a single loss has no second term to weigh


@pytest.mark.parametrize(
  "options, match",
  [
    ({"mode": "softmax"}, "Unknown mode 'softmax'.*multiclass"),
    ({"empty": "drop"}, "Unknown empty 'drop'.*'keep', 'zero'"),
    ({"ignore_index": 2.5}, "ignore_index must be an int"),
  ],
)
def test_bad_option_values(options, match):
  with pytest.raises(ValueError, match=match):
    make_loss("ce+dice", **options)


def test_ambiguous_compound_option_is_refused():
  with pytest.raises(ValueError, match="'alpha'.*'focal' and 'tversky'"):
    make_loss("focal+tversky", alpha=0.3)


def test_validate_labels_eager_lists_the_bad_values():
  labels = jnp.array([[[0, 1], [7, 255]], [[3, -1], [0, 0]]])
  with pytest.raises(ValueError, match=r"\[-1, 3, 7\].*\[0, 3\).*ignore_index=255"):
    losses.validate_labels(labels, num_classes=3, ignore_index=255)
  ok = jnp.array([[[0, 2], [255, 1]]])
  assert losses.validate_labels(ok, num_classes=3, ignore_index=255) is ok
  with pytest.raises(ValueError, match=r"\[2\]"):
    losses.validate_labels(jnp.array([[[0, 2]]]), num_classes=1, mode="binary")


def test_validate_labels_under_jit_with_checkify():
  fn = make_loss("ce", ignore_index=255)

  def checked_loss(logits, labels):
    labels = losses.validate_labels(labels, num_classes=3, ignore_index=255)
    return fn(logits, labels)[0]

  checked = jax.jit(checkify.checkify(checked_loss))
  err, value = checked(LOGITS, LABELS)
  err.throw()  # in range: no error
  assert np.isfinite(float(value))
  err, _ = checked(LOGITS, LABELS.at[0, 0, 0].set(5))
  with pytest.raises(checkify.JaxRuntimeError, match="max 5"):
    err.throw()
