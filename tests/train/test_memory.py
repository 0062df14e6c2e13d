"""The step-memory estimate against XLA's own memory analysis of the compiled train step."""

import jax
import jax.numpy as jnp
from flax import nnx

from tests import tiers
from train import memory, optim
from train import step as step_lib
from train.configs import base


def _compiled_bytes(config, in_channels, num_classes) -> int:
  """Temporaries plus arguments of the real train step, compiled for this CPU."""
  optimizer = optim.make_optimizer(config)
  model = nnx.eval_shape(
    step_lib.model_factory(config, in_channels=in_channels, num_classes=num_classes, seed=0)
  )
  train_graphdef, _, params, rest = step_lib._split(model)
  state = step_lib.TrainState(
    jax.ShapeDtypeStruct((), jnp.int32), params, rest, jax.eval_shape(optimizer.init, params)
  )
  step = step_lib.make_train_step(config, train_graphdef, optimizer, ignore_index=255)
  patch = tuple(config.data.patch_size)
  batch = {
    "image": jax.ShapeDtypeStruct((config.train.batch_size, *patch, in_channels), jnp.float32),
    "label": jax.ShapeDtypeStruct((config.train.batch_size, *patch), jnp.int32),
  }
  analysis = step.lower(state, batch).compile().memory_analysis()
  return analysis.temp_size_in_bytes + analysis.argument_size_in_bytes


@tiers.parametrize(
  "dims, patch, batch, depth, features, pooling, in_channels",
  [
    (2, (64, 64), 4, 3, 16, None, 1),
    (3, (16, 32, 32), 2, 3, 8, ((1, 2, 2), (2, 2, 2), (2, 2, 2)), 2),
    (2, (128, 96), 2, 4, 16, None, 3),
  ],
  fast_every=3,
)
def test_estimate_bounds_the_compiled_step_from_above_within_a_third(
  dims, patch, batch, depth, features, pooling, in_channels
):
  config = base.get_config()
  config.model.spatial_dims, config.model.depth, config.model.features = dims, depth, features
  config.model.pooling = pooling
  config.data.patch_size, config.train.batch_size = patch, batch
  measured = _compiled_bytes(config, in_channels, num_classes=4)
  estimated = memory.config_step_memory(config, in_channels=in_channels, num_classes=4).total
  assert measured <= estimated <= 1.35 * measured, (measured, estimated)


def test_memory_grows_with_batch_and_patch_as_counted():
  one = memory.step_memory(
    patch=(32, 32),
    batch_size=1,
    depth=2,
    features=8,
    max_features=None,
    in_channels=1,
    num_classes=2,
  )
  two = memory.step_memory(
    patch=(32, 32),
    batch_size=2,
    depth=2,
    features=8,
    max_features=None,
    in_channels=1,
    num_classes=2,
  )
  assert two.activations == 2 * one.activations and two.parameters == one.parameters
  # Level voxels: 32x32, 16x16, 8x8 at widths 8, 16, 32; and 1 + 2 channels at full size.
  blocks, edges = 8 * 1024 + 16 * 256 + 32 * 64, 3 * 1024
  floats = memory.ACTIVATION_FACTOR * blocks + memory.EDGE_FACTOR * edges
  assert one.activations == int(floats * memory.FLOAT_BYTES)


def test_device_memory_of_this_cpu_is_half_the_host():
  limit, where = memory.device_memory(jax.devices()[0])
  assert limit > 0 and "host" in where
