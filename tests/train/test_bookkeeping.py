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


def _stop_at(tracker, values):
  """The 1-based validation after which ``tracker`` says stop, or None."""
  for count, value in enumerate(values, 1):
    if tracker.update(value):
      return count
  return None


@pytest.mark.parametrize(
  "values, patience, stop",
  [
    ([0.1, 0.2, 0.2, 0.15, 0.3], 2, 4),  # an equal value is no improvement
    ([0.1, 0.2, 0.2, 0.3, 0.25, 0.25], 2, 6),  # the count restarts at a new best
    ([0.5, 0.4, 0.3], 1, 2),
    ([0.5, 0.4, 0.3, 0.2, 0.1], 0, None),  # patience 0 never stops
    ([0.1, 0.2, 0.3, 0.4], 1, None),
  ],
)
def test_early_stopping_stops_after_patience_validations_without_a_new_best(values, patience, stop):
  assert _stop_at(bookkeeping.EarlyStopping(patience), values) == stop


def test_only_a_gain_above_min_delta_is_an_improvement():
  # 0.54 is within 0.05 of 0.5; 0.56 is a new best (the best is the value, not 0.55), so
  # 0.6 is within 0.05 of it; a gain of exactly min_delta (0.25 -> 0.5) does not count.
  tracker = bookkeeping.EarlyStopping(2, 0.05)
  assert _stop_at(tracker, [0.5, 0.54, 0.56, 0.6]) is None
  assert (tracker.best, tracker.since_best) == (0.56, 1)
  assert _stop_at(tracker, [0.6]) == 1
  assert _stop_at(bookkeeping.EarlyStopping(1, 0.25), [0.25, 0.5]) == 2


def test_a_validation_without_dice_never_improves():
  assert _stop_at(bookkeeping.EarlyStopping(2), [None, None, 0.9]) == 2
  tracker = bookkeeping.EarlyStopping(2)
  assert _stop_at(tracker, [0.3, None, 0.31, None]) is None
  assert (tracker.best, tracker.since_best) == (0.31, 1)


def test_early_stopping_resumed_from_its_state_stops_where_an_uninterrupted_one_does():
  values = [0.2, 0.1, 0.3, 0.3, None, 0.29, 0.4]
  assert _stop_at(bookkeeping.EarlyStopping(3, 0.01), values) == 6
  for cut in range(1, 6):
    first = bookkeeping.EarlyStopping(3, 0.01)
    assert _stop_at(first, values[:cut]) is None
    # Through JSON, as in a checkpoint.
    state = json.loads(json.dumps(first.state()))
    resumed = bookkeeping.EarlyStopping.from_state(state, patience=3, min_delta=0.01)
    assert _stop_at(resumed, values[cut:]) == 6 - cut
    assert resumed.stopped
