"""The jitted train step learns: on one fixed batch the loss falls, for each kind of loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import tiers
from train import optim, step
from train.configs import binary, default


@tiers.parametrize(
  "make_config, loss_name, deep_supervision, precision",
  fast_every=4,
  cases=[
    (default.get_config, "ce+kl", False, "float32"),
    (default.get_config, "ce+dice", True, "float32"),
    (binary.get_config, "ce+l1", False, "float32"),
    (default.get_config, "ce+kl", False, "bfloat16"),
  ],
)
def test_overfitting_one_batch_lowers_the_loss(make_config, loss_name, deep_supervision, precision):
  config = make_config()
  config.loss.name = loss_name
  config.precision = precision
  config.model.update(depth=2, features=4, deep_supervision=deep_supervision)
  config.optimizer.update(warmup_steps=0, schedule="constant", learning_rate=1e-2)
  config.train.steps = 40
  rng = np.random.default_rng(0)
  num_classes = 2 if config.loss.mode == "binary" else 5
  labels = rng.integers(0, num_classes, (4, 16, 16)).astype(np.int32)
  images = np.eye(3, dtype=np.float32)[labels % 3] + 0.1 * rng.standard_normal((4, 16, 16, 3))
  batch = {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels)}
  model = step.make_model(config, in_channels=3, num_classes=num_classes, seed=0)
  optimizer = optim.make_optimizer(config)
  graphdef, _, state = step.init_state(model, optimizer)
  train_step = step.make_train_step(config, graphdef, optimizer, ignore_index=255)
  losses = []
  for _ in range(config.train.steps):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.6 * losses[0]
  assert int(state.step) == config.train.steps
  # Parameters and optimiser state stay float32 whatever the compute precision.
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))


def _curve(precision: str, steps: int = 15):
  config = default.get_config()
  config.precision = precision
  config.model.update(depth=2, features=8)
  config.optimizer.update(warmup_steps=0, schedule="constant", learning_rate=3e-3)
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 5, (4, 32, 32)).astype(np.int32)
  images = np.eye(3, dtype=np.float32)[labels % 3] + 0.1 * rng.standard_normal((4, 32, 32, 3))
  batch = {"image": jnp.asarray(images, jnp.float32), "label": jnp.asarray(labels)}
  model = step.make_model(config, in_channels=3, num_classes=5, seed=0)
  optimizer = optim.make_optimizer(config)
  graphdef, _, state = step.init_state(model, optimizer)
  train_step = step.make_train_step(config, graphdef, optimizer, ignore_index=255)
  jaxpr = str(jax.make_jaxpr(train_step)(state, batch))
  losses = []
  for _ in range(steps):
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return np.array(losses), jaxpr, state


@tiers.SLOW
def test_bfloat16_follows_the_float32_training_curve():
  full, full_jaxpr, _ = _curve("float32")
  half, half_jaxpr, state = _curve("bfloat16")
  # Convolutions run in bfloat16; parameters, optimiser state and the loss stay float32.
  assert "conv_general_dilated" in half_jaxpr and "bf16[4,32,32" in half_jaxpr
  assert "bf16" not in full_jaxpr
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
  assert all(
    leaf.dtype == jnp.float32
    for leaf in jax.tree.leaves(state.opt_state)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  )
  assert half[0] == pytest.approx(full[0], rel=1e-2)  # same weights, same batch
  np.testing.assert_allclose(half, full, rtol=5e-2)
  assert half[-1] < 0.9 * half[0]
