"""Users' image folders: pairing, value maps, resizing, carving, the cache, and errors that
name every offending file."""

import warnings

import numpy as np
import pytest

from regionloss_jax import data
from tests.data.helpers import write_pairs, write_png


def load(root, cache, **kwargs):
  kwargs = dict(num_classes=3, image_size=(10, 16), cache_dir=cache) | kwargs
  return data.load("folder", root=root, **kwargs)


def prepared_dirs(cache):
  folder = cache / "folder"
  return sorted(folder.iterdir()) if folder.exists() else []


def test_binary_255_masks_through_value_map(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", 10, binary_255=True)
  dataset = load(root, tmp_path / "c", num_classes=2, value_map={0: 0, 255: 1})
  assert len(dataset) == 8  # 1 carved to validation and 1 to test.
  mask = dataset.source[0]["segmentation_mask"][..., 0]
  image = dataset.source[0]["image"]
  assert mask.shape == (10, 16) and image.shape == (10, 16, 3)
  # The 20x30 masks have class 1 on rows 5-14, columns 15-29. Nearest neighbour takes output
  # pixel (r, c) from input ((r + .5) * 2, (c + .5) * 1.875), rounded down: rows 2-6, cols 8-15.
  expected = np.zeros((10, 16), np.uint8)
  expected[2:7, 8:] = 1
  np.testing.assert_array_equal(mask, expected)
  # Bilinear resizing blends the region's edge; its interior keeps the image's red = 200.
  assert (image[3:6, 9:15, 0] > 180).all() and (image[..., 0][mask == 0] < 100).mean() > 0.8
  batch = next(iter(data.make_pipeline(dataset, global_batch_size=4, shard_index=0, shard_count=1)))
  assert batch["label"].shape == (4, 10, 16)


def test_carved_and_given_splits(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", 20)
  sizes = {s: len(load(root, tmp_path / "c", split=s)) for s in ("train", "val", "test")}
  assert sizes == {"train": 16, "val": 2, "test": 2}
  names = {
    s: {bytes(ex["file_name"]) for ex in load(root, tmp_path / "c", split=s).source}
    for s in ("train", "validation", "test")
  }
  assert not names["train"] & names["validation"] and not names["train"] & names["test"]
  write_pairs(root, "val", 3, seed=1)
  write_pairs(root, "test", 4, seed=2)
  assert len(load(root, tmp_path / "c", split="val")) == 3
  assert len(load(root, tmp_path / "c", split="test")) == 4
  assert len(load(root, tmp_path / "c", split="train")) == 20


def test_second_run_reuses_and_change_is_noticed(tmp_path, monkeypatch):
  root = write_pairs(tmp_path / "ds", "train", 10)
  cache = tmp_path / "c"
  load(root, cache)
  (first,) = prepared_dirs(cache)
  stamp = {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()}
  monkeypatch.setattr(data.folder, "check_pairs", lambda *a, **k: pytest.fail("re-checked"))
  load(root, cache)
  assert prepared_dirs(cache) == [first]
  assert {p: p.stat().st_mtime_ns for p in first.rglob("*") if p.is_file()} == stamp
  monkeypatch.undo()
  write_pairs(root, "train", 11)  # One more pair: a new preparation.
  assert len(load(root, cache)) == 9
  assert len(prepared_dirs(cache)) == 2


def test_every_bad_file_is_named_and_nothing_is_written(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", 6)
  images, masks = root / "train" / "images", root / "train" / "masks"
  write_png(images / "lonely_image.png", np.zeros((20, 30, 3), np.uint8))
  write_png(masks / "lonely_mask.png", np.zeros((20, 30), np.uint8))
  cache = tmp_path / "c"
  with pytest.raises(data.DataError) as info:
    load(root, cache)
  message = str(info.value)
  assert "lonely_image.png: image without a mask" in message
  assert "lonely_mask.png: mask without an image" in message
  assert prepared_dirs(cache) == []

  (images / "lonely_image.png").unlink()
  (masks / "lonely_mask.png").unlink()
  (images / "case00.png").write_bytes(b"not a png at all")
  write_png(masks / "case01.png", np.zeros((12, 30), np.uint8))
  bad_values = np.zeros((20, 30), np.uint8)
  bad_values[0, :3] = [3, 7, 7]
  write_png(masks / "case02.png", bad_values)
  with pytest.raises(data.DataError) as info:
    load(root, cache)
  problems = info.value.problems
  assert len(problems) == 3
  assert any("case00.png: unreadable or corrupt image" in p for p in problems)
  assert any("case01.png is 30x20 but its mask" in p and "is 30x12" in p for p in problems)
  assert any("case02.png: mask values outside the declared classes: [3, 7]" in p for p in problems)
  assert prepared_dirs(cache) == []


def test_problems_of_every_kind_come_in_one_report(tmp_path):
  # Unpaired files used to stop the check before any image was read, hiding the rest.
  root = write_pairs(tmp_path / "ds", "train", 6)
  images, masks = root / "train" / "images", root / "train" / "masks"
  write_png(images / "lonely.png", np.zeros((20, 30, 3), np.uint8))
  (images / "case00.png").write_bytes(b"not a png at all")
  (masks / "case01.png").write_bytes(b"")
  write_png(masks / "case02.png", np.zeros((12, 30), np.uint8))
  bad_values = np.zeros((20, 30), np.uint8)
  bad_values[0, 0] = 9
  write_png(masks / "case03.png", bad_values)
  colour_mask = np.zeros((20, 30, 3), np.uint8)
  colour_mask[..., 1] = 1
  write_png(masks / "case04.png", colour_mask)
  cache = tmp_path / "c"
  with pytest.raises(data.DataError) as info:
    load(root, cache)
  problems = info.value.problems
  assert len(problems) == 6, problems
  expected = [
    "lonely.png: image without a mask",
    "case00.png: unreadable or corrupt image",
    "case01.png: empty mask file (0 bytes)",
    "case02.png is 30x20 but its mask",
    "case03.png: mask values outside the declared classes: [9]",
    "case04.png: unreadable or corrupt mask (ValueError: colour mask with 3 differing",
  ]
  for text in expected:
    assert sum(text in p for p in problems) == 1, (text, problems)
    assert text in str(info.value)
  assert not cache.exists()


def test_0_255_masks_without_value_map_get_a_hint(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", 4, binary_255=True)
  with pytest.raises(data.DataError, match=r"value_map=\{0: 0, 255: 1\}"):
    load(root, tmp_path / "c", num_classes=2)


def test_background_only_split_warns(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", 6)
  for i in range(2):
    write_png(root / "test" / "images" / f"t{i}.png", np.zeros((20, 30, 3), np.uint8))
    write_png(root / "test" / "masks" / f"t{i}.png", np.zeros((20, 30), np.uint8))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    dataset = load(root, tmp_path / "c", split="test")
  assert len(dataset) == 2
  assert any("'test' is background only" in str(w.message) for w in caught)


def test_failed_write_leaves_no_partial_dataset(tmp_path, monkeypatch):
  root = write_pairs(tmp_path / "ds", "train", 6)

  def broken(*args, **kwargs):
    raise OSError("disk vanished")

  # Fails while writing (every file was read and checked before).
  monkeypatch.setattr(data.preprocess, "stored_input", broken)
  with pytest.raises(OSError, match="disk vanished"):
    load(root, tmp_path / "c")
  assert prepared_dirs(tmp_path / "c") == []


def _write_image(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  from PIL import Image

  Image.fromarray(array).save(path)


def _mask(h, w):
  mask = np.zeros((h, w), np.uint8)
  mask[h // 3 : h // 2, w // 4 : w // 2] = 1
  mask[h - 2, w - 2] = 2
  return mask


def test_native_sizes_keep_every_image_as_it_is(tmp_path):
  root = tmp_path / "ds"
  sizes = [(20, 30), (33, 17), (40, 41), (25, 25)]
  rng = np.random.default_rng(0)
  originals = {}
  for i, (h, w) in enumerate(sizes):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    originals[f"c{i}.png"] = (image, _mask(h, w))
    _write_image(root / "train" / "images" / f"c{i}.png", image)
    _write_image(root / "train" / "masks" / f"c{i}.png", _mask(h, w))
  dataset = data.load(
    "folder",
    root=root,
    num_classes=3,
    image_size=None,
    cache_dir=tmp_path / "c",
    val_fraction=0.25,
    test_fraction=0.25,
  )
  assert dataset.spatial_shape is None and dataset.preprocessing.size is None
  every = [
    ex
    for split in ("train", "validation", "test")
    for ex in data.load(
      "folder",
      root=root,
      num_classes=3,
      image_size=None,
      split=split,
      cache_dir=tmp_path / "c",
      val_fraction=0.25,
      test_fraction=0.25,
    ).source
  ]
  assert len(every) == 4
  for ex in every:
    image, mask = originals[ex["file_name"].decode()]
    np.testing.assert_array_equal(ex["image"], image)
    np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], mask)
    assert tuple(ex["original_shape"]) == mask.shape
    np.testing.assert_array_equal(mask[tuple(ex["locations"].T)], ex["location_classes"])
    assert set(ex["location_classes"].tolist()) == {1, 2}


def test_grey_scale_and_16_bit_images_are_read_at_their_depth(tmp_path):
  root = tmp_path / "ds"
  rng = np.random.default_rng(1)
  grey8 = rng.integers(0, 256, (12, 16), dtype=np.uint8)
  grey16 = rng.integers(1000, 4000, (14, 18), dtype=np.uint16)  # a 12-bit sensor
  for name, image in (("a", grey8), ("b", grey16), ("c", grey8), ("d", grey8)):
    _write_image(root / "train" / "images" / f"{name}.png", image)
    _write_image(root / "train" / "masks" / f"{name}.png", _mask(*image.shape))
  options = dict(
    root=root,
    num_classes=3,
    image_size=None,
    cache_dir=tmp_path / "c",
    val_fraction=0.25,
    test_fraction=0.25,
  )
  splits = {s: data.load("folder", split=s, **options) for s in ("train", "val", "test")}
  prep = splits["train"].preprocessing
  assert (prep.channels, prep.bit_depth) == (1, 16)
  assert splits["train"].mean == (0.5,)
  by_name = {ex["file_name"].decode(): ex for d in splits.values() for ex in d.source}
  a, b = by_name["a.png"]["image"], by_name["b.png"]["image"]
  assert a.dtype == np.uint16 and a.shape == (12, 16, 1)
  np.testing.assert_array_equal(a[..., 0], grey8.astype(np.uint16) * 257)  # exact: 255 -> 65535
  # 16-bit: clipped to its 0.5 / 99.5 percentiles and spread over the whole uint16 range.
  lo, hi = np.percentile(grey16.astype(np.float32), (0.5, 99.5))
  expected = np.round(np.clip((grey16 - lo) / (hi - lo), 0, 1) * 65535)
  np.testing.assert_allclose(b[..., 0], expected, atol=1)
  assert (b % 257 != 0).mean() > 0.9  # not 8-bit values scaled up: no quantisation on the way


def test_grey_images_in_a_colour_folder_become_three_equal_channels(tmp_path):
  root = tmp_path / "ds"
  grey = np.tile(np.arange(20, dtype=np.uint8) * 10, (15, 1))
  _write_image(root / "train" / "images" / "grey.png", grey)
  _write_image(root / "train" / "masks" / "grey.png", _mask(15, 20))
  for i in range(3):
    _write_image(root / "train" / "images" / f"rgb{i}.png", np.zeros((15, 20, 3), np.uint8))
    _write_image(root / "train" / "masks" / f"rgb{i}.png", _mask(15, 20))
  dataset = data.load(
    "folder",
    root=root,
    num_classes=3,
    image_size=None,
    cache_dir=tmp_path / "c",
    val_fraction=0.25,
    test_fraction=0.25,
  )
  assert dataset.preprocessing.channels == 3
  splits = [
    data.load(
      "folder",
      root=root,
      num_classes=3,
      image_size=None,
      split=s,
      cache_dir=tmp_path / "c",
      val_fraction=0.25,
      test_fraction=0.25,
    )
    for s in ("train", "val", "test")
  ]
  (example,) = [ex for d in splits for ex in d.source if ex["file_name"] == b"grey.png"]
  np.testing.assert_array_equal(example["image"], np.repeat(grey[..., None], 3, axis=-1))


@pytest.mark.parametrize("image_size", [None, (10, 16)])
def test_a_new_file_prepared_by_preprocessing_matches_the_evaluation_input(tmp_path, image_size):
  # What predict feeds the model for a file equals what evaluation feeds it for the same
  # file in the prepared dataset: one preprocessing, two paths.
  root = write_pairs(tmp_path / "ds", "train", 6)
  dataset = load(root, tmp_path / "c", image_size=image_size, split="train")
  for example in data.eval_examples(dataset):
    path = root / "train" / "images" / example["name"]
    direct = data.preprocess.model_input(dataset.preprocessing, data.files.read_image(path))
    np.testing.assert_allclose(direct, example["image"], atol=1e-6)
