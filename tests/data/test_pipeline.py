"""The grain pipeline: determinism, exact resume, sharding, aligned augmentation."""

import numpy as np
import pytest

from regionloss_jax import data
from regionloss_jax.data import augment
from regionloss_jax.data.source import SegmentationData


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_same(batches_a, batches_b):
  for a, b in zip(batches_a, batches_b, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def pipeline(dataset, **kwargs):
  kwargs = dict(global_batch_size=4, seed=1, shard_index=0, shard_count=1) | kwargs
  return data.make_pipeline(dataset, **kwargs)


def test_batch_shapes_and_label_values(tiny_shapes):
  batch = next(iter(pipeline(tiny_shapes)))
  assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (4, 24, 24) and batch["label"].dtype == np.int32
  assert set(np.unique(batch["label"])) <= {0, 1, 2, 3, 4, 255}
  assert np.isfinite(batch["image"]).all()


def test_same_seed_same_batches_other_seed_other_batches(tiny_shapes):
  # 10 steps of batch 4 cover two epochs of 24 examples, so reshuffling is exercised too.
  first = take(iter(pipeline(tiny_shapes)), 10)
  assert_same(first, take(iter(pipeline(tiny_shapes)), 10))
  other = take(iter(pipeline(tiny_shapes, seed=2)), 1)[0]
  assert not np.array_equal(first[0]["image"], other["image"])
  # Epochs are reshuffled: epoch 2 is not epoch 1 again.
  assert not np.array_equal(first[0]["image"], first[6]["image"])


def test_restored_state_gives_the_uninterrupted_batches(tiny_shapes, tmp_path):
  uninterrupted = take(iter(pipeline(tiny_shapes)), 12)
  iterator = iter(pipeline(tiny_shapes))
  take(iterator, 7)
  data.save_state(iterator, tmp_path / "state.json")
  resumed = iter(pipeline(tiny_shapes))  # A new process would build a fresh pipeline.
  data.restore_state(resumed, tmp_path / "state.json")
  assert_same(uninterrupted[7:], take(resumed, 5))


def test_eval_reads_every_example_once_in_order(tiny_shapes):
  batches = list(pipeline(tiny_shapes, train=False, global_batch_size=5, drop_remainder=False))
  assert [len(b["label"]) for b in batches] == [5, 5, 5, 5, 4]
  labels = np.concatenate([b["label"] for b in batches])
  expected = np.stack([tiny_shapes.source[i]["segmentation_mask"][..., 0] for i in range(24)])
  np.testing.assert_array_equal(labels, expected)  # No augmentation, no ignored pixels.
  assert len(list(pipeline(tiny_shapes, train=False, global_batch_size=5))) == 4


def test_shards_are_disjoint_and_split_the_global_batch(tiny_shapes):
  def images(shard):
    batches = list(
      pipeline(tiny_shapes, train=False, global_batch_size=4, shard_index=shard, shard_count=2)
    )
    assert all(b["image"].shape[0] == 2 for b in batches)
    return {b["image"][i].tobytes() for b in batches for i in range(2)}

  a, b = images(0), images(1)
  assert len(a) == len(b) == 12 and not a & b
  with pytest.raises(ValueError, match="multiple of the shard count"):
    pipeline(tiny_shapes, global_batch_size=3, shard_count=2)


def test_augmentation_moves_image_and_mask_together():
  # Red channel = 40 * class, so after any warp each labelled pixel's colour gives its class
  # back, except on the few pixels where bilinear interpolation mixes two regions.
  mask = np.zeros((48, 48), np.uint8)
  mask[5:30, 10:40] = 1
  mask[30:45, 3:20] = 2
  image = np.repeat((40 * mask)[..., None], 3, axis=-1).astype(np.uint8)
  source = [{"image": image, "segmentation_mask": mask[..., None]}] * 8
  dataset = SegmentationData(
    source=source,
    class_names=("a", "b", "c"),
    spatial_shape=(32, 32),
    mean=(0.0,) * 3,
    std=(1.0,) * 3,
  )
  settings = augment.Augment(flip_axes=(0, 1), max_rotation_deg=20, brightness=0, contrast=0)
  batch = next(
    iter(
      data.make_pipeline(
        dataset, global_batch_size=8, augment=settings, shard_index=0, shard_count=1
      )
    )
  )
  labels, red = batch["label"], batch["image"][..., 0] * 255
  valid = labels != 255
  agree = np.abs(red - 40 * labels) < 1
  assert agree[valid].mean() > 0.9
  assert (labels == 255).any()  # Rotation brought in pixels from outside: ignored.
  assert len({b.tobytes() for b in labels}) > 1  # Every example got its own geometry.


def test_each_shard_draws_its_own_augmentation():
  # Every example is the same image, so batches differ only by their augmentation.
  mask = np.zeros((32, 32), np.uint8)
  mask[4:20, 6:28] = 1
  image = np.repeat((100 * mask)[..., None], 3, axis=-1).astype(np.uint8)
  source = [{"image": image, "segmentation_mask": mask[..., None]}] * 16
  dataset = SegmentationData(source=source, class_names=("a", "b"), spatial_shape=(32, 32))
  settings = augment.Augment(flip_axes=(0, 1), max_rotation_deg=30)

  def labels(shard):
    batches = data.make_pipeline(
      dataset, global_batch_size=8, augment=settings, seed=3, shard_index=shard, shard_count=2
    )
    return next(iter(batches))["label"]

  first, second = labels(0), labels(1)
  assert not any(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
  one_process = next(
    iter(
      data.make_pipeline(
        dataset, global_batch_size=4, augment=settings, seed=3, shard_index=0, shard_count=1
      )
    )
  )
  np.testing.assert_array_equal(one_process["label"], first)  # shard 0 keeps the seed


def test_none_augment_is_a_plain_resize():
  matrix, offset = augment.sample_affine(
    np.random.default_rng(0), (10, 10), (10, 10), augment.Augment.none()
  )
  np.testing.assert_allclose(matrix, np.eye(2))
  np.testing.assert_allclose(offset, 0.0, atol=1e-12)
  mask = np.arange(16, dtype=np.uint8).reshape(4, 4)
  matrix, offset = augment.sample_affine(
    np.random.default_rng(0), (4, 4), (8, 8), augment.Augment.none()
  )
  _, up = augment.warp(np.zeros((4, 4, 1)), mask, matrix, offset, (8, 8))
  np.testing.assert_array_equal(up, np.repeat(np.repeat(mask, 2, 0), 2, 1))


def test_variable_size_source_needs_a_shape():
  source = [
    {"image": np.zeros((10, 12, 3), np.uint8), "segmentation_mask": np.zeros((10, 12, 1), np.uint8)}
  ] * 4
  dataset = SegmentationData(source=source, class_names=("a", "b"))
  with pytest.raises(ValueError, match="spatial_shape"):
    data.make_pipeline(dataset, global_batch_size=2, shard_index=0, shard_count=1)
