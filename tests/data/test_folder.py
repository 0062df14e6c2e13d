"""Users' image folders: pairing, value maps, resizing, carving, the cache, and errors that
name every offending file."""

import warnings

import numpy as np
import pytest

from regionloss_jax import data

from .conftest import write_pairs, write_png


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
  assert (image[3:6, 9:15, 0] > 180).all() and (image[..., 0][mask == 0] < 100).mean() > .8
  batch = next(iter(data.make_pipeline(dataset, global_batch_size=4, shard_index=0,
                                       shard_count=1)))
  assert batch["label"].shape == (4, 10, 16)


def test_carved_and_given_splits(tmp_path):
  root = write_pairs(tmp_path / "ds", "train", 20)
  sizes = {s: len(load(root, tmp_path / "c", split=s)) for s in ("train", "val", "test")}
  assert sizes == {"train": 16, "val": 2, "test": 2}
  names = {s: {bytes(ex["file_name"]) for ex in load(root, tmp_path / "c", split=s).source}
           for s in ("train", "validation", "test")}
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
  assert any("case02.png: mask values outside the declared classes: [3, 7]" in p
             for p in problems)
  assert prepared_dirs(cache) == []


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

  def broken(path):
    raise OSError("disk vanished")

  monkeypatch.setattr(data.folder, "read_image", broken)
  with pytest.raises(OSError, match="disk vanished"):
    load(root, tmp_path / "c")
  assert prepared_dirs(tmp_path / "c") == []
