"""``imbalanced_shapes``: determinism, region-size spread per class, TFDS features."""

import numpy as np
import pytest
from scipy import ndimage

from regionloss_jax import data
from regionloss_jax.data import imbalanced_shapes as shapes
from tests.data.helpers import TINY


def proportions(task, count, *, split="train", size=96):
  """Per-image class proportions ``(count, num_classes)`` of rendered examples."""
  num_classes = len(shapes.CLASS_NAMES[task])
  rows = []
  for i in range(count):
    _, mask = shapes.render(task, seed=0, split=split, index=i, image_size=size)
    rows.append(np.bincount(mask.ravel(), minlength=num_classes) / mask.size)
  return np.array(rows)


@pytest.mark.parametrize("task", shapes.TASKS)
def test_render_is_deterministic_and_split_seeded(task):
  a_image, a_mask = shapes.render(task, seed=0, split="train", index=3)
  b_image, b_mask = shapes.render(task, seed=0, split="train", index=3)
  np.testing.assert_array_equal(a_image, b_image)
  np.testing.assert_array_equal(a_mask, b_mask)
  other, _ = shapes.render(task, seed=0, split="test", index=3)
  assert not np.array_equal(a_image, other)
  assert a_image.dtype == np.uint8 and a_image.shape == (96, 96, 3)
  assert a_mask.dtype == np.uint8 and a_mask.shape == (96, 96)


def test_binary_foreground_spans_log_range():
  p = proportions("binary", 300)[:, 1]
  assert 0.03 < np.mean(p == 0) < 0.25  # Some images have no lesion.
  lesion = p[p > 0]
  # Log-uniform over [0.1%, 40%]: every decade is populated.
  assert lesion.min() < 0.003 and lesion.max() > 0.25
  for lo, hi in ((0.001, 0.01), (0.01, 0.1), (0.1, 0.45)):
    assert np.mean((lesion >= lo) & (lesion < hi)) > 0.15, (lo, hi)


def test_multiclass_sizes_differ_by_orders_of_magnitude():
  p = proportions("multiclass", 200)
  medians = {}
  for k, name in enumerate(shapes.CLASS_NAMES["multiclass"][1:], start=1):
    present = p[:, k] > 0
    assert 0.3 < present.mean() < 0.95, name  # Presence varies per image.
    medians[name] = np.median(p[present, k])
  assert 0.18 < medians["organ"] < 0.32
  assert 0.001 < medians["nodule"] < 0.005
  assert medians["organ"] > 50 * medians["nodule"]
  assert medians["organ"] > medians["cyst"] > medians["vessel"] > medians["nodule"]


def test_multiclass_intensity_overlaps_between_classes():
  # No single intensity threshold separates organ from background: their red-channel
  # ranges overlap on many images.
  overlaps = 0
  for i in range(40):
    image, mask = shapes.render("multiclass", seed=0, split="train", index=i)
    if (mask == 1).any():
      organ, background = image[mask == 1, 0], image[mask == 0, 0]
      overlaps += np.percentile(organ, 5) < np.percentile(background, 95)
  assert overlaps > 10


def test_prepared_dataset_is_deterministic_and_described(tmp_path, tiny_shapes):
  again = data.load("imbalanced_shapes/multiclass", split="train", cache_dir=tmp_path, **TINY)
  assert len(again) == len(tiny_shapes) == 24
  for i in (0, 7, 23):
    for key in ("image", "segmentation_mask"):
      np.testing.assert_array_equal(again.source[i][key], tiny_shapes.source[i][key])
  example = again.source[0]
  assert example["image"].dtype == np.uint8 and example["image"].shape == (24, 24, 3)
  assert example["segmentation_mask"].shape == (24, 24, 1)
  assert again.class_names == ("background", "organ", "cyst", "vessel", "nodule")
  assert again.info.metadata["class_names"] == list(again.class_names)
  assert (
    len(data.load("imbalanced_shapes/multiclass", split="val", cache_dir=tmp_path, **TINY)) == 6
  )


def test_bad_options_are_named():
  with pytest.raises(ValueError, match="task"):
    shapes.shapes_config("trinary")
  with pytest.raises(ValueError, match="split_sizes"):
    shapes.shapes_config("binary", split_sizes=(10, 0, 1))


def test_multiclass_small_classes_stand_out_from_their_surroundings():
  # Cysts are darker, vessels and nodules brighter than a 3-pixel ring around them, so a
  # model can find them; their size, not their visibility, is what makes them hard.
  contrasts = {3: [], 4: [], 2: []}
  for i in range(40):
    image, mask = shapes.render("multiclass", seed=0, split="train", index=i)
    grey = image.astype(float).mean(-1) / 255
    for class_id in contrasts:
      region = mask == class_id
      if region.any():
        ring = ndimage.binary_dilation(region, iterations=3) & (mask != class_id)
        contrasts[class_id].append(grey[region].mean() - grey[ring].mean())
  assert np.median(contrasts[2]) < -0.15
  assert np.median(contrasts[3]) > 0.1 and np.median(contrasts[4]) > 0.1
