"""Tests for building a module as one compiled program."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from regionloss_jax.models import UNet, compiled_init
from tests import tiers


def _leaves(module):
  """Every array of ``module``'s state, keys as their raw data, with its path."""
  flat = jax.tree_util.tree_flatten_with_path(nnx.state(module))[0]
  return {
    jax.tree_util.keystr(path): np.asarray(
      jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    )
    for path, x in flat
  }


def _assert_same_module(built, eager):
  assert nnx.graphdef(built) == nnx.graphdef(eager)
  built_leaves, eager_leaves = _leaves(built), _leaves(eager)
  assert built_leaves.keys() == eager_leaves.keys()
  for path, value in eager_leaves.items():
    assert built_leaves[path].dtype == value.dtype, path
    if np.issubdtype(value.dtype, np.floating):
      # The random bits are identical; the float transforms of them may round
      # differently at another optimisation level.
      np.testing.assert_allclose(built_leaves[path], value, rtol=1e-6, atol=1e-7, err_msg=path)
    else:
      np.testing.assert_array_equal(built_leaves[path], value, err_msg=path)


def test_threefry_parameters_equal_those_of_eager_construction():
  def make():
    return nnx.Conv(3, 4, (3, 3), rngs=nnx.Rngs(7))

  _assert_same_module(compiled_init(make), make())


@tiers.SLOW
def test_unet_with_dropout_and_batch_norm_equals_eager_construction():
  # Dropout keeps its RNG stream in the module: key data and count must come through too.
  def make():
    return UNet(
      1,
      2,
      depth=1,
      features=2,
      norm="batch",
      dropout_rate=0.2,
      rngs=nnx.Rngs(jax.random.key(3, impl="unsafe_rbg")),
    )

  built = compiled_init(make)
  _assert_same_module(built, make())
  assert any("dropout" in path for path in _leaves(built))


def test_built_module_runs_and_switches_modes():
  model = compiled_init(
    lambda: UNet(
      1,
      3,
      depth=1,
      features=2,
      dropout_rate=0.5,
      rngs=nnx.Rngs(jax.random.key(0, impl="unsafe_rbg")),
    )
  )
  x = jnp.ones((2, 8, 8, 1))
  model.eval()
  np.testing.assert_array_equal(model(x), model(x))
  model.train()
  # Dropout draws from the stream carried over: two training calls differ.
  assert not np.array_equal(model(x), model(x))
