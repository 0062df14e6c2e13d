"""Tests for regionloss_jax.postprocessing against cases worked out by hand."""

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionloss_jax import metrics
from regionloss_jax.postprocessing import (
  MAX_THRESHOLDS,
  ClassScores,
  Postprocessing,
  PostprocessingSearch,
  Rule,
  apply_rules,
)


def blob(top, left, height, width, shape=(12, 12), value=1):
  mask = np.zeros(shape, int)
  mask[top : top + height, left : left + width] = value
  return mask


def first_threshold_above(smallest, largest):
  # The second of 16 geometric steps from the smallest to the largest component size.
  return smallest * (largest / smallest) ** (1 / (MAX_THRESHOLDS - 1))


# ---------------------------------------------------------------------------------------------
# Choosing on validation


def speck_search(spacing=None):
  # Image 0: a 4x4 lesion found exactly. Image 1: no lesion, a 3-pixel speck predicted.
  lesion = blob(1, 1, 4, 4)
  speck = blob(8, 5, 1, 3)
  search = PostprocessingSearch(num_classes=2)
  search.add(lesion, lesion, spacing=spacing)
  search.add(speck, np.zeros_like(speck), spacing=spacing)
  return search, lesion, speck


def test_speck_in_image_without_the_class_is_removed():
  search, lesion, speck = speck_search()
  chosen = search.choose()
  choice = chosen.classes[1]
  # The speck is the only (so the largest) component of image 1: only min_size removes it,
  # and any threshold in (3, 16] does; the smallest such candidate wins.
  assert choice.rule.kind == "min_size"
  assert choice.rule.min_size == pytest.approx(first_threshold_above(3, 16))
  assert search.evaluate(1, Rule("largest_component")).criterion == pytest.approx(0.5)
  # Before: image 0 Dice 1, image 1 Dice 0 (predicted, not there): 1/2. After: image 1 has
  # the class in neither mask and leaves the mean.
  assert choice.before == ClassScores(criterion=0.5, present_dice=1.0, absent_fp_rate=1.0)
  assert choice.after == ClassScores(criterion=1.0, present_dice=1.0, absent_fp_rate=0.0)
  assert (choice.num_images, choice.num_present) == (2, 1)
  assert not chosen.is_identity
  np.testing.assert_array_equal(chosen.apply(speck), np.zeros_like(speck))
  np.testing.assert_array_equal(chosen.apply(lesion), lesion)


def test_real_small_lesion_is_kept():
  # A 16-pixel and a 3-pixel lesion, both found exactly; a second image without any.
  labels = blob(1, 1, 4, 4) + blob(8, 8, 1, 3)
  search = PostprocessingSearch(num_classes=2)
  search.add(labels, labels)
  search.add(np.zeros_like(labels), np.zeros_like(labels))
  choice = search.choose().classes[1]
  assert choice.rule == Rule()
  assert choice.before == choice.after
  assert choice.before.criterion == 1.0  # image 1 is empty in both: left out
  # Dropping the small lesion: tp 16, fn 3, so 32 / 35.
  assert search.evaluate(1, Rule("largest_component")).criterion == pytest.approx(32 / 35)
  assert search.evaluate(1, Rule("min_size", 4.0)).criterion == pytest.approx(32 / 35)


def test_largest_component_when_min_size_would_remove_a_small_true_lesion():
  # Image 0: a 16-pixel lesion plus a 5-pixel false positive. Image 1: a real 4-pixel lesion.
  labels0 = blob(1, 1, 4, 4)
  pred0 = labels0 + blob(8, 1, 1, 5)
  labels1 = blob(3, 3, 2, 2)
  search = PostprocessingSearch(num_classes=2)
  search.add(pred0, labels0)
  search.add(labels1, labels1)
  choice = search.choose().classes[1]
  # none: (2*16 / (2*16 + 5) + 1) / 2. largest: both images exact, 1. A threshold above 5
  # also drops image 1's lesion: (1 + 0) / 2; in (4, 5] only that: (32/37 + 0) / 2.
  assert choice.before.criterion == pytest.approx((32 / 37 + 1) / 2)
  assert choice.rule == Rule("largest_component")
  assert choice.after.criterion == 1.0
  assert search.evaluate(1, Rule("min_size", 6.0)).criterion == pytest.approx(0.5)


def test_ties_go_to_the_least_aggressive_rule():
  # Image 0: a 16-pixel lesion and a 3-pixel false positive; image 1: a 9-pixel lesion.
  # Largest component and min_size in (3, 9] are both perfect: min_size, smallest, wins.
  labels0 = blob(1, 1, 4, 4)
  labels1 = blob(2, 2, 3, 3)
  search = PostprocessingSearch(num_classes=2)
  search.add(labels0 + blob(9, 1, 1, 3), labels0)
  search.add(labels1, labels1)
  choice = search.choose().classes[1]
  assert search.evaluate(1, Rule("largest_component")).criterion == 1.0
  assert choice.rule.kind == "min_size"
  assert choice.rule.min_size == pytest.approx(first_threshold_above(3, 16))
  assert choice.after.criterion == 1.0


def test_candidates():
  search, _, _ = speck_search()
  candidates = search.candidates(1)
  assert candidates[:2] == [Rule(), Rule("largest_component")]
  thresholds = [rule.min_size for rule in candidates[2:]]
  np.testing.assert_allclose(thresholds, np.geomspace(3, 16, MAX_THRESHOLDS))
  assert thresholds[0] == 3.0 and thresholds[-1] == 16.0
  # Every component of one size: one threshold. No prediction at all: no threshold.
  same = PostprocessingSearch(num_classes=3)
  same.add(blob(0, 0, 2, 2) + blob(5, 5, 2, 2), np.zeros((12, 12), int))
  assert same.candidates(1) == [Rule(), Rule("largest_component"), Rule("min_size", 4.0)]
  assert same.candidates(2) == [Rule(), Rule("largest_component")]
  assert same.choose().classes[2].rule == Rule()


def test_class_never_in_the_truth_keeps_none():
  # With no image holding the class, removing every prediction leaves no image to score:
  # no criterion, so validation cannot justify it.
  search = PostprocessingSearch(num_classes=2)
  search.add(blob(0, 0, 1, 2), np.zeros((12, 12), int))
  choice = search.choose().classes[1]
  assert choice.rule == Rule()
  assert choice.before == ClassScores(criterion=0.0, present_dice=None, absent_fp_rate=1.0)
  assert search.evaluate(1, Rule("min_size", 3.0)).criterion is None


def test_only_foreground_classes_and_background_untouched():
  # Class 2's speck lies in an image without class 2; class 1 is exact everywhere.
  labels = blob(1, 1, 4, 4)
  pred = labels + blob(8, 8, 2, 1, value=2)
  search = PostprocessingSearch(num_classes=3)
  search.add(pred, labels)
  search.add(blob(2, 2, 5, 5, value=2), blob(2, 2, 5, 5, value=2))
  chosen = search.choose()
  assert set(chosen.classes) == {1, 2}
  assert chosen.rules[1] == Rule() and chosen.rules[2].kind == "min_size"
  np.testing.assert_array_equal(chosen.apply(pred), labels)


# ---------------------------------------------------------------------------------------------
# Connectivity, spacing, ignore_index, 3-D


def test_diagonal_pixels_are_one_component():
  # A 2x2 block (4 pixels) and a diagonal line of 5 pixels: 8-connected, the line is one
  # component, the largest; 4-connected it would be 5 single pixels.
  block = blob(0, 0, 2, 2)
  line = np.zeros((12, 12), int)
  line[np.arange(4, 9), np.arange(4, 9)] = 1
  mask = block + line
  np.testing.assert_array_equal(apply_rules(mask, {1: Rule("largest_component")}), line)
  np.testing.assert_array_equal(apply_rules(mask, {1: Rule("min_size", 2.0)}), mask)
  np.testing.assert_array_equal(apply_rules(mask, {1: Rule("min_size", 5.0)}), line)
  search = PostprocessingSearch(num_classes=2)
  search.add(mask, np.zeros_like(mask))
  np.testing.assert_array_equal(search.stats(1)[0].sizes, [4, 5])  # raster order


def test_largest_component_ties_keep_the_first():
  mask = blob(0, 0, 2, 2) + blob(6, 6, 2, 2)
  np.testing.assert_array_equal(apply_rules(mask, {1: Rule("largest_component")}), blob(0, 0, 2, 2))


def test_spacing_scales_sizes():
  pixels, lesion, speck = speck_search()
  millimetres, _, _ = speck_search(spacing=0.5)  # pixels of 0.25 mm^2
  rule_px = pixels.choose().rules[1]
  rule_mm = millimetres.choose().rules[1]
  assert rule_mm.kind == "min_size"
  assert rule_mm.min_size == pytest.approx(rule_px.min_size * 0.25)
  assert millimetres.choose().classes[1].after == pixels.choose().classes[1].after
  # Applied with its spacing, the millimetre rule does what the pixel rule does.
  four = blob(8, 5, 1, 4)  # 4 pixels = 1 mm^2: above both thresholds
  for mask in (lesion, speck, four, lesion + four):
    np.testing.assert_array_equal(
      apply_rules(mask, {1: rule_mm}, spacing=0.5), apply_rules(mask, {1: rule_px})
    )
  # Anisotropic pixels: only the area counts. 4 pixels of 0.25 x 1.5 mm are 1.5 mm^2,
  # dropped; of 0.25 x 2 mm exactly 2 mm^2, kept (a component of min_size survives).
  rule = {1: Rule("min_size", 2.0)}
  np.testing.assert_array_equal(apply_rules(four, rule, spacing=(0.25, 1.5)), np.zeros_like(four))
  np.testing.assert_array_equal(apply_rules(four, rule, spacing=(0.25, 2.0)), four)
  np.testing.assert_array_equal(apply_rules(four, rule, spacing=(2.0, 0.25)), four)


def test_ignored_pixels_count_nowhere():
  # The truth is a 4x4 lesion whose last column is ignored (12 valid pixels); the prediction
  # adds a fifth column, background in the truth: one component of 20 pixels, 16 valid, 12
  # of them in the truth.
  labels = blob(2, 2, 4, 4)
  labels[:, 5] = 255
  pred = blob(2, 2, 4, 5)
  search = PostprocessingSearch(num_classes=2, ignore_index=255)
  search.add(pred, labels)
  (stats,) = search.stats(1)
  assert stats.gt_count == 12
  np.testing.assert_array_equal(stats.sizes, [20])
  np.testing.assert_array_equal(stats.overlaps, [12])
  np.testing.assert_array_equal(stats.valid_counts, [16])
  counts = metrics.confusion(pred[None], labels[None], num_classes=2, ignore_index=255)
  got = search.counts(1, Rule())
  for key in ("tp", "fp", "fn"):
    np.testing.assert_array_equal(got[key], counts[key][:, 1], err_msg=key)


def test_speck_in_ignored_pixels_is_not_a_false_positive():
  lesion = blob(1, 1, 4, 4)
  speck = blob(8, 5, 1, 3)
  truth = np.zeros_like(speck)
  truth[7:10, :] = 255  # the speck lies in ignored pixels
  search = PostprocessingSearch(num_classes=2, ignore_index=255)
  search.add(lesion, lesion)
  search.add(speck, truth)
  choice = search.choose().classes[1]
  assert choice.rule == Rule()
  assert choice.before == ClassScores(criterion=1.0, present_dice=1.0, absent_fp_rate=0.0)
  # Counted as background, the same speck is worth removing (as in the first test).
  counted = PostprocessingSearch(num_classes=2)
  counted.add(lesion, lesion)
  counted.add(speck, np.where(truth == 255, 0, truth))
  assert counted.choose().rules[1].kind == "min_size"


def test_3d_corner_neighbours_and_voxel_volume():
  cube = np.zeros((6, 6, 6), int)
  cube[1:4, 1:4, 1:4] = 1  # 27 voxels, found exactly
  pair = np.zeros_like(cube)
  pair[4, 4, 4] = pair[5, 5, 5] = 1  # touch at a corner: one 26-connected component of 2
  single = np.zeros_like(cube)
  single[0, 0, 5] = 1
  np.testing.assert_array_equal(apply_rules(pair + single, {1: Rule("largest_component")}), pair)
  np.testing.assert_array_equal(apply_rules(pair + single, {1: Rule("min_size", 2.0)}), pair)
  for spacing, volume in ((None, 1.0), ((1.0, 1.0, 2.0), 2.0)):
    search = PostprocessingSearch(num_classes=2)
    search.add(cube, cube, spacing=spacing)
    search.add(pair, np.zeros_like(pair), spacing=spacing)
    choice = search.choose().classes[1]
    assert choice.rule.kind == "min_size"
    assert choice.rule.min_size == pytest.approx(first_threshold_above(2, 27) * volume)
    assert (choice.before.absent_fp_rate, choice.after.absent_fp_rate) == (1.0, 0.0)
    assert (choice.before.criterion, choice.after.criterion) == (0.5, 1.0)


# ---------------------------------------------------------------------------------------------
# apply_rules, serialization


def test_none_is_a_no_op_and_apply_is_pure():
  mask = blob(0, 0, 2, 2) + blob(6, 6, 1, 1) + blob(9, 9, 2, 2, value=2)
  original = mask.copy()
  for rules in ({}, {1: Rule()}, {1: Rule(), 2: Rule()}):
    out = apply_rules(mask, rules)
    assert out is not mask
    np.testing.assert_array_equal(out, mask)
  out = apply_rules(mask.astype(np.uint8), {1: Rule("largest_component")})
  assert out.dtype == np.uint8
  np.testing.assert_array_equal(out, blob(0, 0, 2, 2) + blob(9, 9, 2, 2, value=2))
  np.testing.assert_array_equal(mask, original)


def test_json_round_trip():
  search = PostprocessingSearch(num_classes=3)
  search.add(blob(1, 1, 4, 4) + blob(9, 9, 1, 1, value=2), blob(1, 1, 4, 4))
  search.add(blob(3, 3, 3, 3, value=2), blob(3, 3, 3, 3, value=2))
  chosen = search.choose()
  data = json.loads(json.dumps(chosen.to_dict()))
  assert set(data["classes"]) == {"1", "2"}
  restored = Postprocessing.from_dict(data)
  assert restored == chosen
  assert restored.rules == chosen.rules and restored.rules[2].kind != "none"
  for rule in (Rule(), Rule("largest_component"), Rule("min_size", 2.5)):
    assert Rule.from_dict(json.loads(json.dumps(rule.to_dict()))) == rule


def test_summary():
  search, _, _ = speck_search()
  summary = search.choose().summary(class_names=["background", "lesion"])
  row = summary["per_class"]["lesion"]
  assert summary["is_identity"] is False
  assert row["rule"].startswith("min_size(")
  assert (row["criterion_before"], row["criterion_after"]) == (0.5, 1.0)
  assert (row["absent_fp_rate_before"], row["absent_fp_rate_after"]) == (1.0, 0.0)
  assert (row["present_dice_before"], row["present_dice_after"]) == (1.0, 1.0)
  assert (row["num_images"], row["num_present"]) == (2, 1)
  json.dumps(summary)
  single = PostprocessingSearch(num_classes=1)
  single.add(np.zeros((4, 4), int), np.zeros((4, 4), int))
  assert single.choose().is_identity and single.choose().classes == {}


# ---------------------------------------------------------------------------------------------
# The search scores a rule exactly as the post-processed masks score


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(9, 11), (5, 6, 7)]))
def test_search_matches_metrics_on_postprocessed_masks(seed, shape):
  rng = np.random.default_rng(seed)
  num_classes, num_images = 3, 4
  # Blocky random masks so that components of several sizes exist.
  coarse = rng.integers(0, num_classes, size=(num_images, *[(n + 1) // 2 for n in shape]))
  labels = coarse.repeat(2, axis=1).repeat(2, axis=2)
  if len(shape) == 3:
    labels = labels.repeat(2, axis=3)
  labels = labels[(slice(None), *[slice(0, n) for n in shape])]
  flip = rng.random(labels.shape) < 0.15
  pred = np.where(flip, rng.integers(0, num_classes, labels.shape), labels)
  labels = np.where(rng.random(labels.shape) < 0.1, 255, labels)
  labels[0] = np.where(labels[0] == 2, 0, labels[0])  # image 0 lacks class 2
  spacing = tuple(rng.choice([0.5, 1.0, 2.0], size=len(shape)))
  search = PostprocessingSearch(num_classes, ignore_index=255)
  for p, t in zip(pred, labels, strict=True):
    search.add(p, t, spacing=spacing)
  for k in (1, 2):
    candidates = search.candidates(k)
    picked = [candidates[0], candidates[1], *rng.choice(candidates[2:], 2)]
    for rule in picked:
      processed = np.stack([apply_rules(p, {k: rule}, spacing=spacing) for p in pred])
      counts = metrics.confusion(processed, labels, num_classes=num_classes, ignore_index=255)
      got = search.counts(k, rule)
      for key in ("tp", "fp", "fn"):
        np.testing.assert_array_equal(got[key], counts[key][:, k], err_msg=f"{key} {rule}")
      summary = metrics.summarize(
        metrics.evaluate_batch(processed, labels, num_classes=num_classes, ignore_index=255)
      )["per_class"][k]
      tp, fp, fn = (counts[key][:, k] for key in ("tp", "fp", "fn"))
      counted = tp + fp + fn > 0
      expected = (2 * tp / np.maximum(2 * tp + fp + fn, 1))[counted]
      scores = search.evaluate(k, rule)
      assert scores.criterion == (pytest.approx(expected.mean()) if counted.any() else None)
      assert scores.present_dice == pytest.approx(summary["dice"])
      assert scores.absent_fp_rate == pytest.approx(summary["absent_false_positive_rate"])


# ---------------------------------------------------------------------------------------------
# Bad input, imports


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(kind="biggest"), "biggest"),
    (dict(kind="min_size", min_size=-1.0), "-1.0"),
    (dict(kind="min_size", min_size=float("inf")), "inf"),
    (dict(kind="largest_component", min_size=3.0), "only used by kind='min_size'"),
  ],
)
def test_bad_rule_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    Rule(**kwargs)


def test_bad_input_raises():
  mask = np.zeros((4, 4), int)
  with pytest.raises(ValueError, match="key 0"):
    apply_rules(mask, {0: Rule("largest_component")})
  with pytest.raises(ValueError, match="must be a Rule"):
    apply_rules(mask, {1: "largest_component"})
  with pytest.raises(ValueError, match=r"\(4,\)"):
    apply_rules(np.zeros(4, int), {})
  with pytest.raises(ValueError, match="float64"):
    apply_rules(np.zeros((4, 4)), {})
  with pytest.raises(ValueError, match="spacing"):
    apply_rules(mask, {}, spacing=(1.0, 1.0, 1.0))
  with pytest.raises(ValueError, match="spacing"):
    apply_rules(mask, {}, spacing=0.0)
  search = PostprocessingSearch(num_classes=2, ignore_index=255)
  with pytest.raises(ValueError, match="add"):
    search.choose()
  with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
    search.add(mask, np.zeros((4, 5), int))
  with pytest.raises(ValueError, match="pred holds value 2"):
    search.add(np.full((4, 4), 2), mask)
  with pytest.raises(ValueError, match="labels holds value 7"):
    search.add(mask, np.full((4, 4), 7))
  with pytest.raises(ValueError, match="class_id"):
    search.counts(2, Rule())
  with pytest.raises(ValueError, match="num_classes"):
    PostprocessingSearch(num_classes=0)
  with pytest.raises(ValueError, match="keys"):
    Postprocessing.from_dict({"classes": {}})
  with pytest.raises(ValueError, match="keys"):
    Rule.from_dict({"kind": "none", "size": 1})
  with pytest.raises(ValueError, match="class ids"):
    Postprocessing(num_classes=2, classes={2: None})


def test_import_needs_no_training_stack():
  code = (
    "import sys, regionloss_jax.postprocessing\n"
    "heavy = ('flax', 'grain', 'tensorflow_datasets', 'tensorflow')\n"
    "heavy = [m for m in heavy if m in sys.modules]\n"
    "assert not heavy, heavy\n"
  )
  subprocess.run([sys.executable, "-c", code], check=True)


def test_a_limit_on_the_present_image_dice_drop_keeps_the_small_true_components():
  """A 1-pixel speck in an image without the class, and a 1-pixel true component beside a
  large one: min_size(2) removes both. nnU-Net's criterion takes it (the absent image leaves
  the mean); with a limit on the drop of the present-image Dice it is refused."""
  absent = np.zeros((8, 8), int)
  speck = absent.copy()
  speck[7, 7] = 1
  present = np.zeros((8, 8), int)
  present[0:4, 0:4] = 1
  present[7, 0] = 1
  search = PostprocessingSearch(num_classes=2)
  search.add(speck, absent)
  search.add(present, present)
  nnunet = search.choose()
  assert nnunet.rules[1].kind == "min_size"
  # Present Dice 1 -> 2*16/(2*16 + 1) after dropping the true 1-pixel component.
  assert nnunet.classes[1].after.present_dice == pytest.approx(32 / 33)
  limited = search.choose(max_present_dice_drop=0.01)
  assert limited.rules[1].kind == "none"
  assert search.choose(max_present_dice_drop=0.05).rules[1].kind == "min_size"
  with pytest.raises(ValueError, match="max_present_dice_drop"):
    search.choose(max_present_dice_drop=-0.1)
