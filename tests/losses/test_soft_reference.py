"""MONAI 1.6.1's soft-label Dice, Tversky and generalised Dice losses, through ``jax.jit``.

The values come from ``reference/make_monai_soft_references.py`` (see ``reference/README.md``).
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from regionloss_jax import make_loss
from tests import tiers

REFERENCE = pathlib.Path(__file__).parent / "reference"
_META = json.loads((REFERENCE / "soft_reference.json").read_text())
_CASES = _META["cases"]
_ARRAYS = np.load(REFERENCE / "soft_reference.npz")
ENTRIES = [(i, j) for i, case in enumerate(_CASES) for j in range(len(case["results"]))]


def test_the_references_cover_the_options():
  assert _META["monai"].startswith("1.6")
  assert {c["spatial_dims"] for c in _CASES} == {2, 3}
  assert {c["mode"] for c in _CASES} == {"multiclass", "binary", "multilabel"}
  calls = [r["call"] for c in _CASES for r in c["results"]]
  for option in ("include_background", "squared", "jaccard", "batch"):
    assert {c.get(option) for c in calls if c["name"] == "dice"} >= {True, False}, option
  assert len({(c["alpha"], c["beta"]) for c in calls if c["name"] == "tversky"}) >= 3
  assert len(ENTRIES) == 112


@functools.cache
def _case_outputs(case_index):
  """All of a case's losses in one jitted function: one compilation for the case."""
  case = _CASES[case_index]
  logits = jnp.asarray(_ARRAYS[case["case"] + ".logits"])
  targets = jnp.asarray(_ARRAYS[case["case"] + ".targets"])
  assert logits.dtype == targets.dtype == jnp.float32
  fns = [make_loss(**result["call"]) for result in case["results"]]

  @jax.jit
  def all_losses(logits, targets):
    return [jax.value_and_grad(fn, has_aux=True)(logits, targets) for fn in fns]

  return all_losses(logits, targets)


@tiers.parametrize(
  "entry",
  ENTRIES,
  ids=[f"{_CASES[i]['case']}-{_CASES[i]['results'][j]['reference']}" for i, j in ENTRIES],
  fast_every=30,
)
def test_value_and_gradient_match_monai_soft_label(entry):
  case_index, result_index = entry
  result = _CASES[case_index]["results"][result_index]
  (value, _), grad = _case_outputs(case_index)[result_index]
  expected = result["value"]
  assert abs(float(value) - expected) <= 1e-5 * abs(expected)
  expected_grad = _ARRAYS[result["grad_key"]]
  assert grad.shape == expected_grad.shape
  assert np.max(np.abs(np.asarray(grad) - expected_grad)) <= 1e-4 * np.max(np.abs(expected_grad))
