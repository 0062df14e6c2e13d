"""The loop's per-interval bookkeeping: means of the step metrics and non-finite steps."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from train import bookkeeping


def _metrics(values):
  return [{"loss": jnp.float32(v), "grad_norm": jnp.float32(2 * v)} for v in values]


def test_record_is_the_mean_of_the_interval_and_starts_a_new_one():
  means = bookkeeping.StepMeans()
  for m in _metrics([0.5, 1.5, 4.0]):
    means.add(m)
  record = means.record(batch_size=8)
  assert record["loss"] == pytest.approx(2.0) and record["grad_norm"] == pytest.approx(4.0)
  assert record["images_per_s"] > 0
  means.add(_metrics([7.0])[0])
  assert means.record(batch_size=8)["loss"] == pytest.approx(7.0)


def test_means_resumed_from_their_state_equal_uninterrupted_ones_exactly():
  values = np.random.default_rng(0).normal(size=9).astype(np.float32) * 1e3
  straight = bookkeeping.StepMeans()
  for m in _metrics(values):
    straight.add(m)
  first = bookkeeping.StepMeans()
  for m in _metrics(values[:4]):
    first.add(m)
  # Through JSON, as in a checkpoint.
  resumed = bookkeeping.StepMeans.from_state(json.loads(json.dumps(first.state())))
  for m in _metrics(values[4:]):
    resumed.add(m)
  a, b = straight.record(batch_size=1), resumed.record(batch_size=1)
  assert a.pop("images_per_s") > 0 and b.pop("images_per_s") > 0
  assert a == b


def test_divergence_is_the_step_of_the_limit_th_consecutive_flag():
  nonfinite = bookkeeping.NonfiniteSteps(limit=3)
  for flag in [1, 1, 0, 1, 1]:  # steps 1-5
    nonfinite.add(jnp.int32(flag))
  assert nonfinite.check(5) is None
  assert (nonfinite.consecutive, nonfinite.skipped) == (2, 4)
  for flag in [0, 1, 1, 1, 1]:  # steps 6-10: the third in a row is step 9
    nonfinite.add(jnp.int32(flag))
  assert nonfinite.check(10) == 9


def test_consecutive_flags_count_across_checks_and_a_resume():
  nonfinite = bookkeeping.NonfiniteSteps(limit=4)
  for flag in [0, 1, 1]:
    nonfinite.add(jnp.int32(flag))
  assert nonfinite.check(3) is None
  resumed = bookkeeping.NonfiniteSteps.from_state(nonfinite.state(), limit=4)
  resumed.add(jnp.int32(1))
  assert resumed.check(4) is None and resumed.consecutive == 3
  resumed.add(jnp.int32(1))
  assert resumed.check(5) == 5 and resumed.skipped == 4


def test_state_with_unread_flags_is_refused():
  nonfinite = bookkeeping.NonfiniteSteps(limit=2)
  nonfinite.add(jnp.int32(0))
  with pytest.raises(ValueError, match="check"):
    nonfinite.state()
