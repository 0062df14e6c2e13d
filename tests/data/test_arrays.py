"""Native-resolution splits as memory-mapped arrays: the same examples and batches as the
TFDS records, written once and never half-written, and a patch reads only its own box."""

import dataclasses
import itertools
import os
import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from regionloss_jax import data
from regionloss_jax.data import arrays, augment
from regionloss_jax.data.pipeline import preprocess_example
from regionloss_jax.data.source import SegmentationData, identity_lut
from tests.data.test_volumes import write_case


def _volumes(tmp_path, *, shape=None):
  root = tmp_path / "vols"
  for i in range(5):
    write_case(root, "train", f"case{i}", shape=(6 + i, 10, 12))
  write_case(root, "val", "v")
  write_case(root, "test", "t")
  return data.load(
    "volumes", root=root, num_classes=2, shape=shape, split="train", cache_dir=tmp_path / "c"
  )


def test_native_splits_are_memory_mapped_and_equal_the_records(tmp_path):
  dataset = _volumes(tmp_path)
  assert isinstance(dataset.source, arrays.ArraySource)
  # The TFDS records the arrays were exported from.
  tfds_source = tfds.builder_from_directory(dataset.info.data_dir).as_data_source("train")
  assert len(dataset.source) == len(tfds_source) == 5
  for index in range(len(tfds_source)):
    mapped, stored = dataset.source[index], tfds_source[index]
    assert set(mapped) == set(stored)
    assert isinstance(mapped["image"], np.memmap) and not mapped["image"].flags.writeable
    assert isinstance(mapped["segmentation_mask"], np.memmap)
    assert mapped["file_name"] == stored["file_name"]  # bytes, as TFDS gives text
    for key in set(stored) - {"file_name"}:
      np.testing.assert_array_equal(mapped[key], stored[key], err_msg=key)
      assert np.asarray(mapped[key]).dtype == np.asarray(stored[key]).dtype, key
  assert dataset.source[-1]["file_name"] == tfds_source[4]["file_name"]
  with pytest.raises(IndexError, match="example 5 of 5"):
    dataset.source[5]
  again = pickle.loads(pickle.dumps(dataset.source))  # grain may send it to workers
  np.testing.assert_array_equal(again[2]["image"], dataset.source[2]["image"])


def test_resized_datasets_keep_the_records(tmp_path):
  dataset = _volumes(tmp_path, shape=(4, 8, 8))
  assert not isinstance(dataset.source, arrays.ArraySource)


def test_patch_batches_are_those_of_the_records(tmp_path):
  mapped = _volumes(tmp_path)
  tfds_source = tfds.builder_from_directory(mapped.info.data_dir).as_data_source("train")
  records = dataclasses.replace(mapped, source=tfds_source)
  options = dict(global_batch_size=2, seed=3, patch_size=(4, 8, 8), shard_index=0, shard_count=1)
  pairs = zip(
    iter(data.make_pipeline(mapped, **options)),
    iter(data.make_pipeline(records, **options)),
    strict=True,
  )
  for a, b in itertools.islice(pairs, 4):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_export_is_written_once_and_never_half_written(tmp_path):
  examples = [
    {"image": np.full((3, 4, 1), i, np.float32), "segmentation_mask": np.zeros((3, 4, 1), np.uint8)}
    for i in range(3)
  ]

  class Failing:
    def __len__(self):
      return 3

    def __getitem__(self, index):
      if index == 2:
        raise OSError("disk gone")
      return examples[index]

  target = tmp_path / "arrays" / "train"
  with pytest.raises(OSError, match="disk gone"):
    arrays.export(Failing(), target)
  assert not target.exists() and os.listdir(tmp_path / "arrays") == []  # no partial split

  arrays.export(examples, target)
  first = os.stat(target / "000001.image.npy").st_mtime_ns
  arrays.export(Failing(), target)  # complete already: not read again
  assert os.stat(target / "000001.image.npy").st_mtime_ns == first
  source = arrays.ArraySource(target)
  assert [float(source[i]["image"][0, 0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]
  with pytest.raises(FileNotFoundError, match="not a complete exported split"):
    arrays.ArraySource(tmp_path / "elsewhere")


def _channel(key) -> bool:
  return isinstance(key, tuple) and len(key) == 2 and key[0] is Ellipsis and key[1] == 0


class _Recorded(np.ndarray):
  """An array that records how it is indexed; what a slice returns is a plain array."""

  def __array_finalize__(self, obj):
    self.keys = getattr(obj, "keys", None)

  def __getitem__(self, key):
    self.keys.append(key)
    out = super().__getitem__(key)
    if _channel(key):  # the mask's channel axis: still a view of the whole
      return out
    return np.asarray(out)

  def __array_ufunc__(self, *args, **kwargs):
    raise AssertionError("the whole array was computed on")


def _recorded(array):
  view = array.view(_Recorded)
  view.keys = []
  return view


def test_a_patch_reads_only_its_bounding_box():
  rng = np.random.default_rng(0)
  shape = (40, 60, 50)
  image = _recorded(rng.normal(size=(*shape, 1)).astype(np.float32))
  mask = _recorded((rng.random((*shape, 1)) < 0.1).astype(np.uint8))
  lut = identity_lut()
  lut[0], lut[1] = 1, 0  # swapped: the patch must be relabelled after it is cut
  dataset = SegmentationData(source=None, class_names=("bg", "fg"), label_lut=lut)
  example = {
    "image": image,
    "segmentation_mask": mask,
    "locations": np.array([[20, 30, 25]], np.int32),
    "location_classes": np.array([1], np.uint8),
  }
  patch = (8, 12, 10)
  out = preprocess_example(
    example,
    np.random.default_rng(1),
    data=dataset,
    spatial_shape=None,
    augment=augment.Augment(flip_axes=(-1,), scale=(0.9, 1.1), max_rotation_deg=0.0),
    mean=np.zeros(1, np.float32),
    std=np.ones(1, np.float32),
    patch_size=patch,
  )
  assert out["image"].shape == (*patch, 1) and out["label"].shape == patch
  for recorded in (image, mask):
    boxes = [key for key in recorded.keys if not _channel(key)]
    assert boxes, "the patch was not sliced out"
    for box in boxes:
      assert all(isinstance(s, slice) for s in box), box
      sizes = [s.stop - s.start for s in box]
      # The footprint of a patch zoomed by at most 1.1, plus the bilinear margin.
      assert all(n <= int(p * 1.1) + 4 for n, p in zip(sizes, patch, strict=True)), sizes
  # A tenth of the raw mask is 1: swapped, nine tenths of the patch are class 1.
  labels = out["label"]
  assert set(np.unique(labels)) <= {0, 1, 255}
  assert np.mean(labels[labels != 255] == 1) > 0.75
