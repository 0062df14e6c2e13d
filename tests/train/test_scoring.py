"""Scoring a split leaves the dataset's ignored pixels out of the loss and of every metric
alike, whatever the ignore value (7 here, not the built-in datasets' 255)."""

import numpy as np
import pytest

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
