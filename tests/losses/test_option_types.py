"""``loss_option_types``: every make_loss term option and its config type, from signatures."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import losses
from regionloss_jax.losses import registry
from tests.losses.helpers import make_inputs

COMMON = {"mode", "ignore_index", "reduction", "weight"}


def test_every_term_option_of_every_name_has_a_type():
  types = losses.loss_option_types()
  every = set().union(*(losses.valid_options(n) for n in losses.loss_names()))
  assert set(types) == every - COMMON
  assert types["alpha"] is tuple and types["class_weights"] is tuple
  assert types["temperature"] is float and types["gamma"] is float
  assert types["batch"] is bool and types["empty"] is str and types["weighting"] is str


def test_types_follow_the_signatures():
  # Each option is a keyword-only parameter of each term function that takes it, with a
  # default of the type (or None for tuples).
  types = losses.loss_option_types()
  for term in registry._TERMS.values():
    parameters = inspect.signature(term.fn).parameters
    for option in term.options:
      parameter = parameters[option]
      assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
      default = parameter.default
      if types[option] is tuple:
        assert default is None or isinstance(default, float), option
      else:
        assert isinstance(default, types[option]), option


@pytest.mark.parametrize(
  "name, mode, options",
  [
    ("focal", "binary", {"alpha": (0.25,)}),
    ("focal", "multiclass", {"alpha": (0.1, 0.2, 0.3, 0.4)}),
    ("tversky", "multiclass", {"alpha": (0.3,), "beta": 0.7}),
    ("dice", "multiclass", {"class_weights": (1.0, 2.0, 1.0, 0.5)}),
  ],
)
def test_tuple_options_as_configs_hold_them(name, mode, options):
  logits, labels = make_inputs(mode, seed=60, ignore_fraction=0.0)
  scalar = {k: v[0] if isinstance(v, tuple) and len(v) == 1 else v for k, v in options.items()}
  from_tuple, _ = losses.make_loss(name, mode=mode, **options)(logits, labels)
  from_scalar, _ = losses.make_loss(name, mode=mode, **scalar)(logits, labels)
  assert np.isfinite(float(from_tuple))
  np.testing.assert_allclose(from_tuple, from_scalar, rtol=1e-6)
  if name == "focal" and mode == "binary":
    np.testing.assert_allclose(
      from_tuple, losses.focal_loss(logits, labels, mode=mode, alpha=jnp.float32(0.25)), rtol=1e-6
    )
