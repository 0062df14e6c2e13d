"""The loss over deep-supervision heads: labels picked down to each head, nnU-Net's weights."""

import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax.losses import deep_supervision_loss
from regionloss_jax.losses.deep_supervision import deep_supervision_weights


def test_deep_supervision_weights_halve_and_sum_to_one():
  for n in range(1, 6):
    w = deep_supervision_weights(n)
    np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[1:] / w[:-1], 0.5, rtol=1e-6)
  np.testing.assert_allclose(deep_supervision_weights(2), [2 / 3, 1 / 3], rtol=1e-6)


def test_deep_supervision_loss_downsamples_labels_and_weights_terms():
  labels = jnp.arange(2 * 8 * 8, dtype=jnp.int32).reshape(2, 8, 8)
  outputs = [jnp.zeros((2, 8, 8, 3)), jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 2, 2, 3))]
  seen = []

  def label_mean_loss(logits, head_labels):
    seen.append(np.asarray(head_labels))
    value = jnp.mean(head_labels.astype(jnp.float32))
    return value, {"mean_label": value, "pixels": jnp.float32(head_labels.size)}

  loss, terms = deep_supervision_loss(label_mean_loss, outputs, labels)

  full = np.arange(2 * 8 * 8).reshape(2, 8, 8)
  np.testing.assert_array_equal(seen[0], full)
  np.testing.assert_array_equal(seen[1], full[:, ::2, ::2])
  np.testing.assert_array_equal(seen[2], full[:, ::4, ::4])
  w = np.array([4, 2, 1]) / 7
  means = np.array([full.mean(), full[:, ::2, ::2].mean(), full[:, ::4, ::4].mean()])
  np.testing.assert_allclose(loss, w @ means, rtol=1e-6)
  np.testing.assert_allclose(terms["mean_label"], w @ means, rtol=1e-6)
  np.testing.assert_allclose(terms["pixels"], w @ np.array([128, 32, 8]), rtol=1e-6)

  # Explicit weights are used as given; a single array is one head.
  loss, _ = deep_supervision_loss(label_mean_loss, outputs, labels, weights=[1.0, 0.0, 0.0])
  np.testing.assert_allclose(loss, full.mean(), rtol=1e-6)
  loss, _ = deep_supervision_loss(label_mean_loss, outputs[0], labels)
  np.testing.assert_allclose(loss, full.mean(), rtol=1e-6)


def test_deep_supervision_loss_bad_inputs_raise():
  labels = jnp.zeros((1, 8, 8), jnp.int32)

  def loss_fn(logits, head_labels):
    return jnp.float32(0), {}

  with pytest.raises(ValueError, match="one entry per head"):
    deep_supervision_loss(loss_fn, [jnp.zeros((1, 8, 8, 2))], labels, weights=[0.5, 0.5])
  with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(3, 3\)"):
    deep_supervision_loss(loss_fn, [jnp.zeros((1, 3, 3, 2))], labels)
