"""Patch training at native resolution: positions, foreground oversampling, padding, resume."""

import numpy as np
import pytest

from regionloss_jax import data
from regionloss_jax.data import augment, patches
from regionloss_jax.data.source import IGNORE_INDEX, SegmentationData


def _varied_source(count=6, seed=0):
  """Images of different sizes; class 1 covers a large block, class 2 a single pixel. The
  image's first channel holds the pixel's flat index, so a patch tells where it came from."""
  rng = np.random.default_rng(seed)
  source = []
  for i in range(count):
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2, : w // 2] = 1
    mask[h - 3, w - 5] = 2
    index = np.arange(h * w, dtype=np.float32).reshape(h, w)
    image = np.stack([index, np.full((h, w), i, np.float32)], axis=-1)
    source.append({"image": image, "segmentation_mask": mask[..., None]})
  return SegmentationData(
    source=source, class_names=("bg", "big", "dot"), mean=(0.0, 0.0), std=(1.0, 1.0)
  )


def _patches(dataset, steps=8, **kwargs):
  kwargs = (
    dict(
      global_batch_size=4,
      seed=0,
      shard_index=0,
      shard_count=1,
      augment=augment.Augment.none(),
      patch_size=(16, 24),
    )
    | kwargs
  )
  iterator = iter(data.make_pipeline(dataset, **kwargs))
  return [next(iterator) for _ in range(steps)]


def test_class_locations_sample_each_class():
  mask = np.zeros((50, 60), np.uint8)
  mask[:20, :30] = 1  # 600 pixels
  mask[40, 50] = 2
  mask[45, :] = IGNORE_INDEX
  coords, classes = patches.class_locations(mask, 4, max_per_class=100)
  assert np.bincount(classes, minlength=4).tolist() == [0, 100, 1, 0]
  np.testing.assert_array_equal(mask[tuple(coords.T)], classes)
  again = patches.class_locations(mask, 4, max_per_class=100)
  np.testing.assert_array_equal(again[0], coords)  # deterministic


def test_patches_have_one_shape_and_are_exact_crops_at_native_resolution():
  dataset = _varied_source()
  for batch in _patches(dataset):
    assert batch["image"].shape == (4, 16, 24, 2) and batch["label"].shape == (4, 16, 24)
    for image, label in zip(batch["image"], batch["label"], strict=True):
      inside = label != IGNORE_INDEX  # patches near a border reach beyond the image
      example = dataset.source[int(image[inside][0, 1])]
      full_mask = example["segmentation_mask"][..., 0]
      index = image[..., 0].astype(int)
      rows, cols = np.divmod(index, full_mask.shape[1])
      r, c = np.nonzero(inside)
      top, left = r.min(), c.min()
      # A crop, not a resample: the inside pixels are consecutive pixels of the image.
      np.testing.assert_array_equal(rows[inside] - rows[top, left], r - top)
      np.testing.assert_array_equal(cols[inside] - cols[top, left], c - left)
      np.testing.assert_array_equal(label[inside], full_mask[rows[inside], cols[inside]])
      assert (image[~inside] == 0).all()


def test_every_patch_centre_is_foreground_with_fraction_one_and_classes_are_balanced():
  dataset = _varied_source()
  centres = [b["label"][:, 8, 12] for b in _patches(dataset, steps=60, foreground_fraction=1.0)]
  centres = np.concatenate(centres)
  assert set(centres.tolist()) <= {1, 2}
  # The one-pixel class is the centre as often as the large one (classes drawn uniformly).
  share = (centres == 2).mean()
  assert 0.38 < share < 0.62, share


def test_without_oversampling_the_dot_is_rarely_the_centre():
  dataset = _varied_source()
  centres = np.concatenate(
    [b["label"][:, 8, 12] for b in _patches(dataset, steps=60, foreground_fraction=0.0)]
  )
  assert (centres == 2).mean() < 0.05
  assert 0.1 < (centres == 1).mean() < 0.6  # roughly the block's area fraction


def test_default_fraction_is_a_third():
  rng = np.random.default_rng(0)
  coords = np.array([[0, 0]], np.int32)
  classes = np.array([1], np.uint8)
  hits = [
    patches.patch_centre(
      rng, (100, 100), (10, 10), coords=coords, classes=classes, foreground_fraction=1 / 3
    ).tolist()
    == [0, 0]
    for _ in range(3000)
  ]
  assert abs(np.mean(hits) - 1 / 3) < 0.03


def test_image_smaller_than_the_patch_is_padded_and_ignored():
  mask = np.ones((6, 10), np.uint8)
  image = np.full((6, 10, 1), 200, np.uint8)
  dataset = SegmentationData(
    source=[{"image": image, "segmentation_mask": mask[..., None]}] * 4,
    class_names=("bg", "fg"),
    mean=(0.5,),
    std=(0.25,),
  )
  batch = _patches(dataset, steps=1, patch_size=(16, 16), foreground_fraction=0.0)[0]
  label, img = batch["label"][0], batch["image"][0, ..., 0]
  inside = label != IGNORE_INDEX
  assert inside.sum() == 60
  rows, cols = np.nonzero(inside)
  assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 10, 3, 12)  # centred
  np.testing.assert_allclose(img[inside], (200 / 255 - 0.5) / 0.25, rtol=1e-6)
  assert (img[~inside] == 0).all()  # what sliding-window inference pads with


@pytest.mark.parametrize("rotate", [False, True])
def test_padding_takes_the_datasets_own_ignore_index(rotate):
  # A dataset whose ignored pixels are labelled 7 must get 7, not 255, where a patch leaves
  # the image: the loss and the metrics skip the dataset's value only. The exact crop and
  # the warped (rotated) patch take different paths.
  mask = np.ones((6, 10), np.uint8)
  dataset = SegmentationData(
    source=[{"image": np.full((6, 10, 1), 200, np.uint8), "segmentation_mask": mask[..., None]}]
    * 4,
    class_names=("bg", "fg"),
    mean=(0.5,),
    std=(0.25,),
    ignore_index=7,
  )
  augment_options = augment.Augment(
    flip_axes=(), scale=(1.0, 1.0), zoom=(1.0, 1.0), max_rotation_deg=30.0 if rotate else 0.0
  )
  batch = _patches(
    dataset, steps=1, patch_size=(16, 16), foreground_fraction=0.0, augment=augment_options
  )[0]
  values = set(np.unique(batch["label"]).tolist())
  assert values == {1, 7}


def test_augmented_patches_keep_image_and_mask_aligned():
  mask = np.zeros((120, 90), np.uint8)
  mask[20:70, 10:60] = 1
  mask[80:110, 50:85] = 2
  image = np.repeat((40.0 * mask)[..., None], 3, axis=-1).astype(np.uint8)
  dataset = SegmentationData(
    source=[{"image": image, "segmentation_mask": mask[..., None]}] * 8,
    class_names=("a", "b", "c"),
    mean=(0.0,) * 3,
    std=(1.0,) * 3,
  )
  settings = augment.Augment(
    flip_axes=(0, 1), max_rotation_deg=25, zoom=(0.7, 1.4), brightness=0, contrast=0
  )
  batch = _patches(dataset, steps=1, augment=settings, global_batch_size=8, patch_size=(32, 32))[0]
  labels, red = batch["label"], batch["image"][..., 0] * 255
  valid = labels != IGNORE_INDEX
  assert (np.abs(red - 40 * labels) < 1)[valid].mean() > 0.9
  assert len({b.tobytes() for b in labels}) == 8


def test_same_seed_same_patches_and_resume_is_exact(tmp_path):
  dataset = _varied_source()
  settings = augment.Augment(max_rotation_deg=10)
  first = _patches(dataset, steps=10, augment=settings)
  again = _patches(dataset, steps=10, augment=settings)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  other = _patches(dataset, steps=1, augment=settings, seed=1)[0]
  assert not np.array_equal(first[0]["image"], other["image"])

  iterator = iter(
    data.make_pipeline(
      dataset,
      global_batch_size=4,
      seed=0,
      shard_index=0,
      shard_count=1,
      augment=settings,
      patch_size=(16, 24),
    )
  )
  for _ in range(6):
    next(iterator)
  data.save_state(iterator, tmp_path / "state.json")
  resumed = iter(
    data.make_pipeline(
      dataset,
      global_batch_size=4,
      seed=0,
      shard_index=0,
      shard_count=1,
      augment=settings,
      patch_size=(16, 24),
    )
  )
  data.restore_state(resumed, tmp_path / "state.json")
  for expected in first[6:]:
    np.testing.assert_array_equal(next(resumed)["image"], expected["image"])


def test_3d_patches_use_stored_locations():
  mask = np.zeros((20, 30, 25), np.uint8)
  mask[15, 22, 20] = 2
  mask[:5, :5, :5] = 1
  coords, classes = patches.class_locations(mask, 3)
  example = {
    "image": np.zeros((20, 30, 25, 1), np.float32),
    "segmentation_mask": mask[..., None],
    "locations": coords,
    "location_classes": classes,
  }
  dataset = SegmentationData(
    source=[example] * 4, class_names=("a", "b", "c"), mean=(0.0,), std=(1.0,)
  )
  batches = _patches(
    dataset, steps=20, patch_size=(8, 8, 8), foreground_fraction=1.0, global_batch_size=2
  )
  centres = np.concatenate([b["label"][:, 4, 4, 4] for b in batches])
  assert set(centres.tolist()) == {1, 2}


def test_bad_patch_options_are_named():
  dataset = _varied_source()
  with pytest.raises(ValueError, match="foreground_fraction must be in"):
    data.make_pipeline(
      dataset,
      global_batch_size=2,
      patch_size=(8, 8),
      foreground_fraction=2,
      shard_index=0,
      shard_count=1,
    )
  with pytest.raises(ValueError, match="patch_size is for training"):
    data.make_pipeline(
      dataset, global_batch_size=2, patch_size=(8, 8), train=False, shard_index=0, shard_count=1
    )
  with pytest.raises(ValueError, match="pass spatial_shape.*or patch_size"):
    data.make_pipeline(dataset, global_batch_size=2, shard_index=0, shard_count=1)


def test_eval_examples_are_whole_images_in_order_with_names():
  dataset = _varied_source(count=5)
  examples = list(data.eval_examples(dataset))
  assert [e["index"] for e in examples] == list(range(5))
  assert [e["name"] for e in examples] == [f"{i:05d}" for i in range(5)]
  for example, raw in zip(examples, dataset.source, strict=True):
    np.testing.assert_array_equal(example["image"], raw["image"])
    np.testing.assert_array_equal(example["label"], raw["segmentation_mask"][..., 0])
  shares = [
    [e["index"] for e in data.eval_examples(dataset, shard_index=i, shard_count=2)]
    for i in range(2)
  ]
  assert shares == [[0, 2, 4], [1, 3]]
