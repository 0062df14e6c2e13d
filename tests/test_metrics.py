"""Tests for regionloss_jax.metrics against cases worked out by hand."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from regionloss_jax import metrics

# ---------------------------------------------------------------------------------------------
# Overlap metrics


# Binary task (classes {0, 1}) on a 3x3 image.
#   G (class 1)   P (class 1)
#   1 1 0         1 0 0
#   1 0 0         1 1 0
#   0 0 0         0 0 0
# class 1: tp = 2 ((0,0), (1,0)), fp = 1 ((1,1)), fn = 1 ((0,1)).
# class 0: 5 pixels are 0 in both, fp = (0,1), fn = (1,1).
BINARY_LABELS = np.array([[[1, 1, 0], [1, 0, 0], [0, 0, 0]]])
BINARY_PRED = np.array([[[1, 0, 0], [1, 1, 0], [0, 0, 0]]])


def test_confusion_binary_by_hand():
  counts = metrics.confusion(BINARY_PRED, BINARY_LABELS, num_classes=2)
  np.testing.assert_array_equal(counts["tp"], [[5, 2]])
  np.testing.assert_array_equal(counts["fp"], [[1, 1]])
  np.testing.assert_array_equal(counts["fn"], [[1, 1]])


def test_overlap_metrics_binary_by_hand():
  kw = dict(num_classes=2)
  np.testing.assert_allclose(
    metrics.dice_score(BINARY_PRED, BINARY_LABELS, **kw), [[10 / 12, 4 / 6]]
  )
  np.testing.assert_allclose(metrics.iou(BINARY_PRED, BINARY_LABELS, **kw), [[5 / 7, 2 / 4]])
  np.testing.assert_allclose(metrics.precision(BINARY_PRED, BINARY_LABELS, **kw), [[5 / 6, 2 / 3]])
  np.testing.assert_allclose(metrics.recall(BINARY_PRED, BINARY_LABELS, **kw), [[5 / 6, 2 / 3]])


def test_overlap_metrics_multiclass_two_images_by_hand():
  # Image 0: one class-1 pixel predicted as class 2. Image 1: all class 2, exactly right,
  # so classes 0 and 1 are empty in both prediction and truth (score 1 by convention).
  labels = np.array([[[0, 1, 1, 2]], [[2, 2, 2, 2]]])
  pred = np.array([[[0, 1, 2, 2]], [[2, 2, 2, 2]]])
  kw = dict(num_classes=3)
  np.testing.assert_allclose(metrics.dice_score(pred, labels, **kw), [[1, 2 / 3, 2 / 3], [1, 1, 1]])
  np.testing.assert_allclose(metrics.iou(pred, labels, **kw), [[1, 1 / 2, 1 / 2], [1, 1, 1]])
  np.testing.assert_allclose(metrics.precision(pred, labels, **kw), [[1, 1, 1 / 2], [1, 1, 1]])
  np.testing.assert_allclose(metrics.recall(pred, labels, **kw), [[1, 1 / 2, 1], [1, 1, 1]])


def test_accepts_jax_arrays():
  dice = metrics.dice_score(jnp.asarray(BINARY_PRED), jnp.asarray(BINARY_LABELS), num_classes=2)
  np.testing.assert_allclose(dice, [[10 / 12, 4 / 6]])


# ---------------------------------------------------------------------------------------------
# Empty-mask conventions (8x6 image: diagonal sqrt(7**2 + 5**2))

DIAGONAL_8x6 = math.hypot(7, 5)


def test_both_empty_is_perfect():
  zeros = np.zeros((1, 8, 6), int)
  result = metrics.evaluate_batch(zeros, zeros, num_classes=2)
  for name in ("dice", "iou", "precision", "recall"):
    assert result[name][0, 1] == 1.0, name
  assert result["hd95"][0, 1] == 0.0


def test_false_positive_on_empty_truth():
  labels = np.zeros((1, 8, 6), int)
  pred = labels.copy()
  pred[0, 2, 3] = 1
  result = metrics.evaluate_batch(pred, labels, num_classes=2)
  assert result["dice"][0, 1] == 0.0 and result["iou"][0, 1] == 0.0
  assert result["precision"][0, 1] == 0.0  # 0 of 1 predicted pixels right
  assert result["recall"][0, 1] == 0.0  # nothing to find, but something predicted
  assert result["hd95"][0, 1] == pytest.approx(DIAGONAL_8x6)


def test_missed_object_with_empty_prediction():
  pred = np.zeros((1, 8, 6), int)
  labels = pred.copy()
  labels[0, 2:4, 3] = 1
  result = metrics.evaluate_batch(pred, labels, num_classes=2)
  assert result["dice"][0, 1] == 0.0 and result["iou"][0, 1] == 0.0
  assert result["precision"][0, 1] == 0.0  # nothing predicted, but something to find
  assert result["recall"][0, 1] == 0.0
  assert result["hd95"][0, 1] == pytest.approx(DIAGONAL_8x6)


def test_diagonal_uses_spacing():
  pred = np.zeros((1, 8, 6), int)
  labels = pred.copy()
  labels[0, 0, 0] = 1
  result = metrics.hd95(pred, labels, num_classes=2, spacing=(2.0, 0.5))
  assert result[0, 1] == pytest.approx(math.hypot(7 * 2.0, 5 * 0.5))


# ---------------------------------------------------------------------------------------------
# HD95


def square(top, left, side, shape=(32, 32)):
  mask = np.zeros(shape, int)
  mask[top : top + side, left : left + side] = 1
  return mask[None]


def test_hd95_square_against_itself_is_zero():
  mask = square(8, 8, 12)
  np.testing.assert_array_equal(metrics.hd95(mask, mask, num_classes=2), [[0.0, 0.0]])


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_hd95_squares_offset_by_k(k):
  # Every surface pixel of one square has a surface pixel of the other within k (its
  # translate), and the pixels in the middle of the leading/trailing sides are exactly k
  # away: far more than 5% of the surface, so the 95th percentile is k.
  pred = square(8, 8, 12)
  labels = square(8, 8 + k, 12)
  assert metrics.hd95(pred, labels, num_classes=2)[0, 1] == pytest.approx(k)
  # Symmetric, and with spacing the distance is in physical units.
  assert metrics.hd95(labels, pred, num_classes=2)[0, 1] == pytest.approx(k)
  assert metrics.hd95(pred, labels, num_classes=2, spacing=0.5)[0, 1] == pytest.approx(k / 2)
  # Coarser rows do not change a shift along the columns.
  assert metrics.hd95(pred, labels, num_classes=2, spacing=(3.0, 1.0))[0, 1] == pytest.approx(k)


def test_hd95_single_pixels_3_4_5():
  pred = np.zeros((1, 10, 10), int)
  labels = pred.copy()
  pred[0, 1, 1] = 1
  labels[0, 4, 5] = 1  # 3 rows and 4 columns away
  assert metrics.hd95(pred, labels, num_classes=2)[0, 1] == pytest.approx(5.0)
  spaced = metrics.hd95(pred, labels, num_classes=2, spacing=(2.0, 1.0))
  assert spaced[0, 1] == pytest.approx(math.hypot(6, 4))


def test_hd95_3d_cubes_offset_and_single_voxels():
  shape = (20, 20, 20)
  pred = np.zeros((2, *shape), int)
  labels = np.zeros((2, *shape), int)
  pred[0, 5:13, 5:13, 5:13] = 1
  labels[0, 5:13, 5:13, 7:15] = 1  # the same cube moved 2 voxels along the last axis
  pred[1, 2, 2, 2] = 1
  labels[1, 3, 4, 4] = 1  # (1, 2, 2) away: distance 3
  np.testing.assert_allclose(metrics.hd95(pred, labels, num_classes=2)[:, 1], [2.0, 3.0])
  itself = metrics.hd95(pred, pred, num_classes=2)
  np.testing.assert_array_equal(itself, np.zeros((2, 2)))


def test_hd95_ignores_ignored_pixels():
  # The prediction spills 4 columns into an ignored band: ignored, it matches exactly;
  # counted as background, the spill is 4 pixels away.
  labels_no_band = square(8, 8, 12)
  pred = labels_no_band.copy()
  pred[0, 8:20, 20:24] = 1
  labels = labels_no_band.copy()
  labels[0, :, 20:] = 255
  assert metrics.hd95(pred, labels, num_classes=2, ignore_index=255)[0, 1] == 0.0
  assert metrics.hd95(pred, labels_no_band, num_classes=2)[0, 1] == pytest.approx(4.0)


# ---------------------------------------------------------------------------------------------
# Normalized surface Dice


def nsd(pred, labels, **kwargs):
  return metrics.normalized_surface_dice(pred, labels, num_classes=2, **kwargs)[0, 1]


def test_nsd_square_shifted_by_one_column():
  # 12x12 squares at columns 8..19 (truth) and 9..20 (prediction): 44 surface pixels each.
  # On both surfaces: rows 8 and 19 at columns 9..19, 22 pixels of each. The rest (the
  # leading/trailing columns and the two outer corners) is exactly one column away.
  pred, labels = square(8, 9, 12), square(8, 8, 12)
  assert nsd(pred, labels, tolerance=0.0) == pytest.approx(44 / 88)
  assert nsd(pred, labels, tolerance=0.99) == pytest.approx(44 / 88)
  assert nsd(pred, labels, tolerance=1.0) == 1.0
  assert nsd(labels, pred, tolerance=0.0) == pytest.approx(0.5)  # symmetric


def test_nsd_anisotropic_spacing_by_hand():
  pred, labels = square(8, 9, 12), square(8, 8, 12)
  # Columns of 2 mm: the one-column gap is 2 mm, except for the side pixels of rows 9 and 18,
  # which are 1 mm (one row) from the top/bottom row of the other surface: 22 + 2 of 44 on
  # each side are within 1 mm.
  assert nsd(pred, labels, tolerance=1.0, spacing=(1.0, 2.0)) == pytest.approx(48 / 88)
  assert nsd(pred, labels, tolerance=2.0, spacing=(1.0, 2.0)) == 1.0
  # Coarser rows do not lengthen a gap along the columns.
  assert nsd(pred, labels, tolerance=1.0, spacing=(2.0, 1.0)) == 1.0
  # Isotropic 0.5 mm halves every distance.
  assert nsd(pred, labels, tolerance=0.5, spacing=0.5) == 1.0
  assert nsd(pred, labels, tolerance=0.49, spacing=0.5) == pytest.approx(0.5)


def test_nsd_tolerance_is_inclusive_despite_rounding():
  # Three columns of 0.1 mm compute as 0.30000000000000004 mm: still within 0.3 mm.
  pred = np.zeros((1, 6, 6), int)
  labels = pred.copy()
  pred[0, 1, 1] = 1
  labels[0, 1, 4] = 1
  assert nsd(pred, labels, tolerance=0.3, spacing=0.1) == 1.0
  assert nsd(pred, labels, tolerance=0.29, spacing=0.1) == 0.0


def test_nsd_empty_conventions():
  zeros = np.zeros((1, 8, 6), int)
  one = zeros.copy()
  one[0, 2, 3] = 1
  assert nsd(zeros, zeros, tolerance=1.0) == 1.0
  assert nsd(one, zeros, tolerance=100.0) == 0.0  # false positive on an empty truth
  assert nsd(zeros, one, tolerance=100.0) == 0.0  # missed object
  result = metrics.evaluate_batch(one, zeros, num_classes=2)
  assert result["nsd"][0, 1] == 0.0
  # Background: the border ring (24 pixels) on both surfaces, plus the hole's 4 neighbours
  # on the prediction's; (1, 3) and (2, 4) are 1 px from the border, (2, 2) and (3, 3) 2 px.
  assert result["nsd"][0, 0] == pytest.approx(50 / 52)


def test_nsd_ignores_ignored_pixels():
  # As in the HD95 test: the prediction spills 4 columns into an ignored band.
  labels_no_band = square(8, 8, 12)
  pred = labels_no_band.copy()
  pred[0, 8:20, 20:24] = 1
  labels = labels_no_band.copy()
  labels[0, :, 20:] = 255
  assert nsd(pred, labels, tolerance=0.0, ignore_index=255) == 1.0
  # Counted, the prediction's surface has 52 pixels: rows 8 and 19 at columns 8..20 (13 +
  # 13) and column 8 (10) are within 1 px; the truth's 44: all but its column 19 (pred
  # interior, 4 px from column 23) except its rows 9 and 18 (1 px from row 8/19): 36 each.
  assert nsd(pred, labels_no_band, tolerance=1.0) == pytest.approx(72 / 96)


def test_nsd_3d_cubes_by_hand():
  shape = (20, 20, 20)
  pred = np.zeros((2, *shape), int)
  labels = np.zeros((2, *shape), int)
  pred[0, 5:13, 5:13, 5:13] = 1
  labels[0, 5:13, 5:13, 7:15] = 1  # 8^3 cubes (296 surface voxels) 2 apart on the last axis
  pred[1, 2, 2, 2] = 1
  labels[1, 3, 4, 4] = 1  # single voxels 3 apart
  kw = dict(num_classes=2)
  # Tolerance 0: the 28-voxel rings of the 6 shared slices. Tolerance 1: also the ring one
  # slice out (28) and the end face's 20 voxels next to the ring (its 16 central ones are 2
  # from everything).
  np.testing.assert_allclose(
    metrics.normalized_surface_dice(pred, labels, tolerance=0.0, **kw)[:, 1], [168 / 296, 0]
  )
  np.testing.assert_allclose(
    metrics.normalized_surface_dice(pred, labels, tolerance=1.0, **kw)[:, 1], [216 / 296, 0]
  )
  np.testing.assert_allclose(
    metrics.normalized_surface_dice(pred, labels, tolerance=3.0, **kw)[:, 1], [1, 1]
  )
  # Voxels of (1, 1, 0.5) mm: the 2-voxel shift is 1 mm.
  np.testing.assert_allclose(
    metrics.normalized_surface_dice(pred, labels, tolerance=1.0, spacing=(1, 1, 0.5), **kw)[0, 1],
    1.0,
  )


def test_evaluate_batch_nsd_and_hd95_match_the_functions():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, size=(3, 9, 7))
  pred = np.where(rng.random(labels.shape) < 0.3, rng.integers(0, 3, labels.shape), labels)
  labels[0, :2] = 255
  kw = dict(num_classes=3, ignore_index=255, spacing=(0.7, 1.3))
  out = metrics.evaluate_batch(pred, labels, nsd_tolerance=1.5, **kw)
  np.testing.assert_array_equal(out["hd95"], metrics.hd95(pred, labels, **kw))
  np.testing.assert_array_equal(
    out["nsd"], metrics.normalized_surface_dice(pred, labels, tolerance=1.5, **kw)
  )
  default = metrics.evaluate_batch(pred, labels, **kw)["nsd"]
  np.testing.assert_array_equal(
    default, metrics.normalized_surface_dice(pred, labels, tolerance=1.0, **kw)
  )
  assert np.all((out["nsd"] >= 0) & (out["nsd"] <= 1))


def test_per_image_spacing_equals_one_image_at_a_time():
  labels = np.zeros((3, 16, 12), int)
  labels[:, 4:10, 3:8] = 1
  pred = np.roll(labels, 2, axis=2)
  pred[2] = 0  # an empty prediction: its HD95 is this image's own diagonal
  labels[1, 12, 10] = 2
  pred[1, 13, 9] = 2
  spacing = np.array([[0.5, 2.0], [1.0, 1.0], [3.0, 0.25]])
  kw = dict(num_classes=3, nsd_tolerance=1.0)
  together = metrics.evaluate_batch(pred, labels, spacing=spacing, **kw)
  for b in range(3):
    alone = metrics.evaluate_batch(pred[b : b + 1], labels[b : b + 1], spacing=spacing[b], **kw)
    for key in ("hd95", "nsd", "dice"):
      np.testing.assert_array_equal(together[key][b], alone[key][0], err_msg=f"{key} image {b}")
  # The spacings differ enough to change the answers (the test would not see a mix-up).
  assert len({float(v) for v in together["hd95"][:, 1]}) == 3
  assert together["hd95"][2, 1] == pytest.approx(math.hypot(15 * 3.0, 11 * 0.25))
  np.testing.assert_array_equal(
    metrics.hd95(pred, labels, num_classes=3, spacing=spacing), together["hd95"]
  )
  np.testing.assert_array_equal(
    metrics.normalized_surface_dice(pred, labels, num_classes=3, tolerance=1.0, spacing=spacing),
    together["nsd"],
  )
  # One row per image, the same row for all: as one spacing for the batch.
  same = metrics.hd95(pred, labels, num_classes=3, spacing=np.tile([0.5, 2.0], (3, 1)))
  np.testing.assert_array_equal(same, metrics.hd95(pred, labels, num_classes=3, spacing=(0.5, 2)))


@pytest.mark.parametrize(
  "spacing, message",
  [
    (np.ones((2, 2)), r"\(3, 2\).*\(2, 2\)"),  # rows for 2 images, batch of 3
    (np.ones((3, 3)), r"\(3, 2\).*\(3, 3\)"),  # 3 axes for 2-D images
    ((1.0, 2.0, 3.0), r"\(3,\)"),
    (np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), "positive"),
    (np.array([[1.0, 1.0], [1.0, np.nan], [1.0, 1.0]]), "finite"),
  ],
)
def test_bad_spacing_raises(spacing, message):
  masks = np.zeros((3, 4, 4), int)
  for fn in (metrics.evaluate_batch, metrics.hd95):
    with pytest.raises(ValueError, match=message):
      fn(masks, masks, num_classes=2, spacing=spacing)


@pytest.mark.parametrize("tolerance", [-1.0, math.inf, math.nan])
def test_bad_tolerance_raises(tolerance):
  masks = np.zeros((1, 4, 4), int)
  with pytest.raises(ValueError, match="tolerance"):
    metrics.normalized_surface_dice(masks, masks, num_classes=2, tolerance=tolerance)
  with pytest.raises(ValueError, match="tolerance"):
    metrics.evaluate_batch(masks, masks, num_classes=2, nsd_tolerance=tolerance)


def test_summarize_averages_nsd_over_present_images():
  base = square(8, 8, 12)[0]
  labels = np.stack([base, np.zeros_like(base), base])
  pred = np.stack([np.roll(base, 1, axis=1), base, base])  # NSD 1/2, (absent, FP), 1
  result = metrics.evaluate_batch(pred, labels, num_classes=2, nsd_tolerance=0.0)
  np.testing.assert_allclose(result["nsd"][:, 1], [0.5, 0.0, 1.0])
  summary = metrics.summarize(result)
  assert summary["per_class"][1]["nsd"] == pytest.approx(0.75)  # image 1 left out
  assert summary["nsd"] == pytest.approx(0.75)
  never = metrics.summarize(metrics.evaluate_batch(pred[1:2], labels[1:2], num_classes=2))
  assert never["per_class"][1]["nsd"] is None
  # Results without "nsd" (kept before it existed) still summarize, without it.
  older = {key: value for key, value in result.items() if key != "nsd"}
  summary_older = metrics.summarize(older)
  assert "nsd" not in summary_older and "nsd" not in summary_older["per_class"][1]
  assert summary_older["dice"] == summary["dice"]
  mixed = metrics.summarize([result, older])
  assert "nsd" not in mixed


# ---------------------------------------------------------------------------------------------
# Region proportions


def test_proportions_by_hand():
  # 8 pixels; truth has 3 of class 1, the prediction 5: over-segmentation by 2/8.
  labels = np.array([[[0, 0, 1, 1], [0, 0, 0, 1]]])
  pred = np.array([[[0, 1, 1, 1], [0, 0, 1, 1]]])
  probs = np.full((1, 2, 4, 2), 0.5)
  out = metrics.mask_proportions(pred, labels, num_classes=2, probs=probs)
  np.testing.assert_allclose(out["gt_proportion"], [[5 / 8, 3 / 8]])
  np.testing.assert_allclose(out["pred_proportion"], [[3 / 8, 5 / 8]])
  np.testing.assert_allclose(out["proportion_abs_error"], [[0.25, 0.25]])
  np.testing.assert_allclose(out["proportion_bias"], [[-0.25, 0.25]])
  np.testing.assert_allclose(out["pred_proportion_soft"], [[0.5, 0.5]])
  np.testing.assert_allclose(out["proportion_bias_soft"], [[-0.125, 0.125]])
  np.testing.assert_allclose(out["proportion_abs_error_soft"], [[0.125, 0.125]])


def test_no_soft_proportions_without_probs():
  out = metrics.evaluate_batch(BINARY_PRED, BINARY_LABELS, num_classes=2)
  assert "pred_proportion_soft" not in out


# ---------------------------------------------------------------------------------------------
# ignore_index


def test_ignored_pixels_count_nowhere():
  # The prediction is wrong only on the ignored column.
  labels = np.array([[[1, 1, 255], [0, 0, 255]]])
  pred = np.array([[[1, 1, 1], [0, 0, 1]]])
  probs = np.zeros((1, 2, 3, 2))
  probs[..., 1] = [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
  probs[..., 0] = 1 - probs[..., 1]
  out = metrics.evaluate_batch(pred, labels, num_classes=2, ignore_index=255, probs=probs)
  np.testing.assert_array_equal(out["tp"], [[2, 2]])
  np.testing.assert_array_equal(out["fp"] + out["fn"], [[0, 0]])
  for name in ("dice", "iou", "precision", "recall"):
    np.testing.assert_array_equal(out[name], [[1.0, 1.0]], err_msg=name)
  np.testing.assert_array_equal(out["hd95"], [[0.0, 0.0]])
  np.testing.assert_allclose(out["gt_proportion"], [[0.5, 0.5]])
  np.testing.assert_allclose(out["pred_proportion"], [[0.5, 0.5]])
  np.testing.assert_allclose(out["pred_proportion_soft"], [[0.5, 0.5]])

  # The same masks with the column counted as background are scored worse.
  counted = metrics.dice_score(pred, np.where(labels == 255, 0, labels), num_classes=2)
  assert np.all(counted < 1.0)


def test_all_ignored_image_gives_finite_values():
  labels = np.full((1, 4, 4), 255)
  pred = np.ones((1, 4, 4), int)
  out = metrics.evaluate_batch(pred, labels, num_classes=2, ignore_index=255)
  for name, value in out.items():
    assert np.all(np.isfinite(value)), name
  np.testing.assert_array_equal(out["gt_proportion"], [[0.0, 0.0]])


# ---------------------------------------------------------------------------------------------
# summarize


def test_summarize_means_over_images_and_foreground_classes():
  labels = np.array([[[0, 1, 1, 2]], [[2, 2, 2, 2]]])
  pred = np.array([[[0, 1, 2, 2]], [[2, 2, 2, 2]]])
  probs = np.full((2, 1, 4, 3), 1 / 3)
  first = metrics.evaluate_batch(pred[:1], labels[:1], num_classes=3, probs=probs[:1])
  second = metrics.evaluate_batch(pred[1:], labels[1:], num_classes=3, probs=probs[1:])
  summary = metrics.summarize([first, second], class_names=["bg", "liver", "tumour"])

  # Per image and class dice: [[1, 2/3, 2/3], [1, 1, 1]], but class 1 (liver) is absent
  # from image 1 and counts only in image 0; class 2 (tumour) is in both.
  assert summary["per_class"]["liver"]["dice"] == pytest.approx(2 / 3)
  assert summary["per_class"]["tumour"]["dice"] == pytest.approx((2 / 3 + 1) / 2)
  assert summary["dice"] == pytest.approx((2 / 3 + 5 / 6) / 2)
  assert summary["iou"] == pytest.approx((1 / 2 + (1 / 2 + 1) / 2) / 2)
  assert summary["per_class"]["liver"]["dice_all_images"] == pytest.approx((2 / 3 + 1) / 2)
  assert summary["num_images"] == 2
  assert summary["per_class"]["liver"]["num_present"] == 1
  assert set(summary["per_class"]) == {"bg", "liver", "tumour"}
  assert summary["per_class"]["tumour"]["recall"] == pytest.approx(1.0)
  # Image 0: tau = (1/4, 2/4, 1/4), tauhat = (1/4, 1/4, 2/4): bias (0, -1/4, +1/4); image 1
  # exact. Proportions average over every image, present or not.
  assert summary["per_class"]["liver"]["proportion_bias"] == pytest.approx(-1 / 8)
  assert summary["per_class"]["tumour"]["proportion_bias"] == pytest.approx(1 / 8)
  assert summary["proportion_bias"] == pytest.approx(0.0)
  assert summary["proportion_mae"] == pytest.approx((1 / 4 + 1 / 4) / 4)
  # Image 0, class 1: truth at columns {1, 2}, prediction {1}: directed distances [0, 1]
  # and [0], whose 95th percentiles (linear interpolation) are 0.95 and 0; class 2 mirrors
  # it. Image 1: class 2 exact (0); class 1 absent there, so not counted.
  assert summary["per_class"]["liver"]["hd95"] == pytest.approx(0.95)
  assert summary["hd95"] == pytest.approx((0.95 + 0.95 / 2) / 2)
  # Soft proportions: 1/3 for every class.
  assert summary["per_class"]["tumour"]["proportion_bias_soft"] == pytest.approx(
    ((1 / 3 - 1 / 4) + (1 / 3 - 1)) / 2
  )

  with_background = metrics.summarize([first, second], include_background=True)
  # background: present in image 0 only, where it is exact.
  assert with_background["dice"] == pytest.approx((1 + 2 / 3 + 5 / 6) / 3)
  assert set(with_background["per_class"]) == {0, 1, 2}


def test_absent_classes_follow_monai_and_nnunet():
  # One row of 4 pixels per image; class 1 (the "lesion") in images 0 and 1 only.
  labels = np.array([[[1, 1, 0, 0]], [[1, 0, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 0]]])
  pred = np.array(
    [
      [[1, 0, 0, 0]],  # present, found half: Dice 2/3
      [[0, 0, 0, 0]],  # present and missed: Dice 0
      [[0, 0, 1, 0]],  # absent and predicted: a false positive
      [[0, 0, 0, 0]],  # absent and not predicted: nothing to count
    ]
  )
  result = metrics.evaluate_batch(pred, labels, num_classes=2)
  np.testing.assert_allclose(result["dice"][:, 1], [2 / 3, 0, 0, 1])  # per image, as is
  lesion = metrics.summarize(result)["per_class"][1]
  assert lesion["dice"] == pytest.approx(1 / 3)  # images 0 and 1 only
  assert lesion["dice_all_images"] == pytest.approx((2 / 3 + 0 + 0 + 1) / 4)
  assert lesion["detection_rate"] == pytest.approx(1 / 2)
  assert lesion["absent_false_positive_rate"] == pytest.approx(1 / 2)
  assert lesion["num_present"] == 2
  assert lesion["recall"] == pytest.approx((1 / 2 + 0) / 2)
  # HD95 of image 1 (missed) is the diagonal, 3 px; image 0: 0.95 (as above).
  assert lesion["hd95"] == pytest.approx((0.95 + 3.0) / 2)


def test_class_never_present_has_no_overlap_scores():
  labels = np.zeros((2, 1, 4), int)
  pred = np.array([[[0, 2, 0, 0]], [[0, 0, 0, 0]]])
  summary = metrics.summarize(metrics.evaluate_batch(pred, labels, num_classes=3))
  for key in ("dice", "iou", "hd95", "detection_rate"):
    assert summary["per_class"][1][key] is None and summary["per_class"][2][key] is None
    assert summary[key] is None  # no foreground class is present anywhere
  assert summary["per_class"][2]["absent_false_positive_rate"] == pytest.approx(1 / 2)
  assert summary["absent_false_positive_rate"] == pytest.approx((0 + 1 / 2) / 2)


def test_calibration_error_by_hand():
  # Class 1 probabilities 0.95 (label 1), 0.95 (label 0), 0.05 (label 0), 0.05 (label 0).
  p1 = np.array([0.95, 0.95, 0.05, 0.05])
  probs = np.stack([1 - p1, p1], axis=-1).reshape(1, 1, 4, 2)
  labels = np.array([[[1, 0, 0, 0]]])
  hist = metrics.calibration_bins(probs, labels, num_classes=2)
  assert hist.shape == (1, 2, 15, 3)
  # Bin 14 (0.933-1): 2 pixels, confidence 1.9, one of class 1; bin 0: 2, 0.1, none.
  np.testing.assert_allclose(hist[0, 1, 14], [2, 1.9, 1])
  np.testing.assert_allclose(hist[0, 1, 0], [2, 0.1, 0])
  ece = metrics.expected_calibration_error(hist.sum(0))
  # (2/4) |1/2 - 0.95| + (2/4) |0 - 0.05| = 0.225 + 0.025; background mirrors it.
  np.testing.assert_allclose(ece, [0.25, 0.25])
  summary = metrics.summarize(
    metrics.evaluate_batch(np.array([[[1, 1, 0, 0]]]), labels, num_classes=2, probs=probs)
  )
  assert summary["per_class"][1]["ece"] == pytest.approx(0.25)
  # Ignored pixels count nowhere.
  ignored = metrics.calibration_bins(
    probs, np.array([[[1, 255, 0, 0]]]), num_classes=2, ignore_index=255
  )
  assert ignored[..., 0].sum() == 2 * 3


def test_summarize_binary_uses_class_one():
  result = metrics.evaluate_batch(BINARY_PRED, BINARY_LABELS, num_classes=2)
  summary = metrics.summarize(result)
  assert summary["dice"] == pytest.approx(2 / 3)
  assert summary["per_class"][0]["dice"] == pytest.approx(10 / 12)
  assert "proportion_mae_soft" not in summary


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
  "pred, labels, kwargs, message",
  [
    (np.zeros((1, 4, 4), int), np.zeros((1, 4, 5), int), {}, r"\(1, 4, 4\).*\(1, 4, 5\)"),
    (np.zeros((1, 4, 4)), np.zeros((1, 4, 4), int), {}, r"argmax.*float64"),
    (np.zeros((4, 4), int), np.zeros((4, 4), int), {}, r"\(4, 4\)"),
    (np.full((1, 4, 4), 2), np.zeros((1, 4, 4), int), {}, r"value 2"),
    (np.zeros((1, 4, 4), int), np.full((1, 4, 4), 255), {}, r"value 255"),
    (np.zeros((1, 4, 4), int), np.zeros((1, 4, 4), int), {"spacing": (1.0, -1.0)}, "spacing"),
    (
      np.zeros((1, 4, 4), int),
      np.zeros((1, 4, 4), int),
      {"probs": np.zeros((1, 4, 4, 3))},
      r"\(1, 4, 4, 2\).*\(1, 4, 4, 3\)",
    ),
  ],
)
def test_bad_input_raises(pred, labels, kwargs, message):
  with pytest.raises(ValueError, match=message):
    metrics.evaluate_batch(pred, labels, num_classes=2, **kwargs)


def test_summarize_bad_input_raises():
  result = metrics.evaluate_batch(BINARY_PRED, BINARY_LABELS, num_classes=2)
  with pytest.raises(ValueError, match="class_names"):
    metrics.summarize(result, class_names=["a", "b", "c"])
  other = metrics.evaluate_batch(np.zeros((1, 3, 3), int), np.zeros((1, 3, 3), int), num_classes=3)
  with pytest.raises(ValueError, match="same C"):
    metrics.summarize([result, other])
  with pytest.raises(ValueError, match="at least one"):
    metrics.summarize([])


# ---------------------------------------------------------------------------------------------
# Properties


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4))
def test_random_masks_are_finite_bounded_and_consistent(seed, num_classes):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=(2, 6, 5))
  pred = rng.integers(0, num_classes, size=(2, 6, 5))
  labels[rng.random(labels.shape) < 0.2] = -1
  out = metrics.evaluate_batch(pred, labels, num_classes=num_classes, ignore_index=-1)
  for name in ("dice", "iou", "precision", "recall"):
    assert np.all((out[name] >= 0) & (out[name] <= 1)), name
  assert np.all(np.isfinite(out["hd95"])) and np.all(out["hd95"] >= 0)
  assert np.all((out["nsd"] >= 0) & (out["nsd"] <= 1))
  # Dice and IoU are monotone transforms of each other: D = 2J / (1 + J).
  np.testing.assert_allclose(out["dice"], 2 * out["iou"] / (1 + out["iou"]))
  # Counts partition the valid pixels.
  np.testing.assert_array_equal(
    out["tp"].sum(1) + out["fn"].sum(1), (labels != -1).reshape(2, -1).sum(1)
  )
  np.testing.assert_allclose(out["gt_proportion"].sum(1), 1.0)
  swapped = metrics.hd95(
    np.where(labels == -1, pred, labels),
    np.where(labels == -1, -1, pred),
    num_classes=num_classes,
    ignore_index=-1,
  )
  np.testing.assert_allclose(swapped, out["hd95"])
  swapped_nsd = metrics.normalized_surface_dice(
    np.where(labels == -1, pred, labels),
    np.where(labels == -1, -1, pred),
    num_classes=num_classes,
    ignore_index=-1,
    tolerance=1.0,
  )
  np.testing.assert_allclose(swapped_nsd, out["nsd"])
