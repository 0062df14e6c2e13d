"""Every reference value and gradient (paper authors' code and MONAI), through ``jax.jit``."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import make_loss
from tests import tiers

REFERENCE = pathlib.Path(__file__).parent / "reference"
_CASES = json.loads((REFERENCE / "losses_reference.json").read_text())["cases"]
_ARRAYS = np.load(REFERENCE / "losses_reference.npz")
ENTRIES = [(case, result) for case in _CASES for result in case["results"]]


def _entry_id(entry):
  case, result = entry
  return f"{case['case']}-{result['reference']}-{result['grad_key'].split('.', 1)[1]}"


def test_all_344_entries_are_collected():
  assert len(ENTRIES) == 344


@functools.cache
def _case_outputs(case_index):
  """All of a case's losses in one jitted function: one compilation instead of ~15."""
  case = _CASES[case_index]
  logits = jnp.asarray(_ARRAYS[case["case"] + ".logits"])
  labels = jnp.asarray(_ARRAYS[case["case"] + ".labels"])
  assert logits.dtype == jnp.float32
  fns = [make_loss(**result["call"]) for result in case["results"]]

  @jax.jit
  def all_losses(logits, labels):
    return [jax.value_and_grad(fn, has_aux=True)(logits, labels) for fn in fns]

  return all_losses(logits, labels)


# The fast tier checks every entry of three cases (the cost is one compilation per case):
# the authors' losses in multiclass with an ignored label and in binary, and MONAI's in 3-D.
FAST_CASES = ("case000", "case002", "case003")


def _param(entry):
  marks = [pytest.mark.xdist_group(entry[0]["case"])]
  if entry[0]["case"] not in FAST_CASES:
    marks.append(tiers.SLOW)
  return pytest.param(entry, marks=marks, id=_entry_id(entry))


@pytest.mark.parametrize("entry", [_param(e) for e in ENTRIES])
def test_value_and_gradient_match_reference(entry):
  case, result = entry
  case_index = _CASES.index(case)
  (value, terms), grad = _case_outputs(case_index)[case["results"].index(result)]

  expected = result["value"]
  assert abs(float(value) - expected) <= 1e-5 * abs(expected)
  expected_grad = _ARRAYS[result["grad_key"]]
  assert grad.shape == expected_grad.shape
  assert np.max(np.abs(np.asarray(grad) - expected_grad)) <= 1e-4 * np.max(np.abs(expected_grad))
  if "terms" in result:
    first, second = terms.values()
    assert float(first) == pytest.approx(result["terms"]["term1"], rel=1e-5)
    assert float(second) == pytest.approx(result["terms"]["term2"], rel=1e-5, abs=1e-7)
