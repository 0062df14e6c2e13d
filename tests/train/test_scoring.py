"""Scoring a split leaves the dataset's ignored pixels out of the loss and of every metric
alike, whatever the ignore value (7 here, not the built-in datasets' 255)."""

import numpy as np
import pytest

from regionloss_jax.postprocessing import ClassChoice, ClassScores, Postprocessing, Rule
from train import predictor, scoring
from train.configs import default

IGNORE = 7
CLASS_NAMES = ("background", "a", "b")


class LogitsAsImages:
  """A stand-in for a trained model: each example's "image" is already its logits."""

  window, batch_size, binary = (8, 8), 4, False

  def logits(self, images):
    return np.asarray(images, np.float32)

  def probabilities(self, logits):
    return predictor.probabilities(logits, binary=False)


def _example(index: int, ignored_class: int) -> dict:
  label = np.zeros((8, 8), np.int32)
  label[:4, :4], label[4:, 4:] = 1, 2
  label[:2] = IGNORE  # 16 pixels, 8 of them over class 1
  logits = 6.0 * np.eye(3, dtype=np.float32)[np.where(label == IGNORE, 0, label)]
  # The model is confidently wrong where the label is ignored; that must count nowhere.
  logits[label == IGNORE] = 6.0 * np.eye(3, dtype=np.float32)[ignored_class]
  return {"image": logits, "label": label, "index": index, "name": f"case{index}"}


def test_ignored_pixels_count_in_neither_loss_nor_metrics():
  config = default.get_config()
  score_fn = scoring.make_score_fn(config, ignore_index=IGNORE)
  examples = [_example(0, ignored_class=2), _example(1, ignored_class=1)]
  losses = [
    float(score_fn(ex["image"][None], ex["label"][None], 1.0)["loss"][0]) for ex in examples
  ]
  assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # only ignored pixels differ

  result = scoring.evaluate_split(
    LogitsAsImages(), score_fn, examples, weight=1.0, class_names=CLASS_NAMES, ignore_index=IGNORE
  )
  per_image = result["per_image"]
  np.testing.assert_allclose(per_image["dice"][:, 1:], 1.0)
  valid = 64 - 16
  np.testing.assert_allclose(per_image["gt_proportion"][:, 1:], [[8 / valid, 16 / valid]] * 2)
  np.testing.assert_allclose(per_image["pred_proportion"], per_image["gt_proportion"])
  assert result["summary"]["loss"] == pytest.approx(losses[0], rel=1e-5)


class VolumeLogits(LogitsAsImages):
  window, batch_size = (4, 8, 8), 2


def _volume_example(index: int, *, spacing) -> dict:
  """A 4x8x8 block of class 1 and its prediction one slice deeper (D shifted by 1)."""
  label = np.zeros((4, 8, 8), np.int32)
  label[1:3, 2:6, 2:6] = 1
  pred = np.zeros_like(label)
  pred[2:4, 2:6, 2:6] = 1
  example = {
    "image": 6.0 * np.eye(2, dtype=np.float32)[pred],
    "label": label,
    "index": index,
    "name": f"vol{index}",
    "original_shape": np.asarray(label.shape),
  }
  if spacing is not None:
    example["spacing"] = np.asarray(spacing, np.float64)
  return example


def test_distances_are_in_mm_of_each_volumes_spacing_else_in_pixels():
  config = default.get_config()
  score_fn = scoring.make_score_fn(config, ignore_index=255)
  options = dict(weight=1.0, class_names=("background", "a"), ignore_index=255)
  # Slices 3 mm apart: the surfaces that moved are one slice, 3 mm, off.
  in_mm = scoring.evaluate_split(
    VolumeLogits(), score_fn, [_volume_example(0, spacing=(3.0, 1.0, 1.0))], **options
  )
  in_px = scoring.evaluate_split(
    VolumeLogits(), score_fn, [_volume_example(0, spacing=None)], **options
  )
  assert in_mm["summary"]["distance_unit"] == "mm"
  assert in_px["summary"]["distance_unit"] == "px"
  assert in_mm["summary"]["hd95"] == pytest.approx(3.0)
  assert in_px["summary"]["hd95"] == pytest.approx(1.0)
  # A tolerance of 1 px accepts every moved surface voxel; of 1 mm, with 3 mm slices, not
  # the caps (the side walls are unchanged where the two blocks overlap).
  assert in_px["summary"]["nsd"] == pytest.approx(1.0)
  assert in_mm["summary"]["nsd"] < 1.0
  wide = scoring.evaluate_split(
    VolumeLogits(),
    score_fn,
    [_volume_example(0, spacing=(3.0, 1.0, 1.0))],
    nsd_tolerance=3.0,
    **options,
  )
  assert wide["summary"]["nsd"] == pytest.approx(1.0)


def test_metrics_after_postprocessing_are_reported_beside_those_before():
  config = default.get_config()
  score_fn = scoring.make_score_fn(config, ignore_index=IGNORE)
  speck = {"image": np.zeros((8, 8, 3), np.float32), "label": np.zeros((8, 8), np.int32)}
  speck["image"][..., 0] = 6.0
  speck["image"][7, 7] = [0.0, 6.0, 0.0]  # one pixel of class a in an image without it
  speck.update(index=2, name="speck")
  examples = [_example(0, ignored_class=2), _example(1, ignored_class=1), speck]
  scores = ClassScores(None, None, None)
  chosen = Postprocessing(
    num_classes=3,
    classes={
      1: ClassChoice(Rule("min_size", 2.0), scores, scores, 3, 2),
      2: ClassChoice(Rule(), scores, scores, 3, 2),
    },
  )
  result = scoring.evaluate_split(
    LogitsAsImages(),
    score_fn,
    examples,
    weight=1.0,
    class_names=CLASS_NAMES,
    ignore_index=IGNORE,
    postprocessing=chosen,
  )
  before, after = result["summary"], result["summary"]["postprocessed"]
  assert before["per_class"]["a"]["absent_false_positive_rate"] == pytest.approx(1.0)
  assert after["per_class"]["a"]["absent_false_positive_rate"] == pytest.approx(0.0)
  # The 16-pixel block of class a in the other images is kept.
  assert after["per_class"]["a"]["dice"] == pytest.approx(1.0)
  assert after["per_class"]["b"]["dice"] == before["per_class"]["b"]["dice"]  # rule: none
