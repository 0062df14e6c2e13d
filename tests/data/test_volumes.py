"""Users' 3-D volumes (.npy, .nii.gz): shapes, resampling modes, errors, 3-D batches."""

import nibabel
import numpy as np
import pytest

from regionloss_jax import data


def write_case(root, split, name, shape=(6, 10, 12), *, nifti=False, label_shape=None):
  rng = np.random.default_rng(len(name))
  image = rng.normal(100, 20, shape).astype(np.float32)
  labels = np.zeros(label_shape or shape, np.uint8)
  labels[2:4, 3:7, 4:9] = 1
  for sub, array in (("images", image), ("masks", labels)):
    folder = root / split / sub
    folder.mkdir(parents=True, exist_ok=True)
    if nifti:  # NIfTI stores (x, y, z): the reader transposes back to (D, H, W).
      nibabel.save(nibabel.Nifti1Image(array.T.copy(), np.eye(4)), folder / f"{name}.nii.gz")
    else:
      np.save(folder / f"{name}.npy", array)
  return labels


def test_npy_and_nifti_volumes_resized_and_batched(tmp_path):
  root = tmp_path / "vols"
  labels = write_case(root, "train", "a", nifti=True)
  for i in range(5):
    write_case(root, "train", f"b{i}")
  write_case(root, "val", "v")
  write_case(root, "test", "t")
  dataset = data.load("volumes", root=root, num_classes=2, shape=(6, 10, 12),
                      cache_dir=tmp_path / "c")
  assert len(dataset) == 6
  example = next(ex for ex in dataset.source if bytes(ex["file_name"]) == b"a.nii.gz")
  np.testing.assert_array_equal(example["segmentation_mask"][..., 0], labels)
  assert example["image"].dtype == np.float32 and 0 <= example["image"].min() <= 1
  batch = next(iter(data.make_pipeline(dataset, global_batch_size=2, shard_index=0,
                                       shard_count=1)))
  assert batch["image"].shape == (2, 6, 10, 12, 1) and batch["label"].shape == (2, 6, 10, 12)
  small = data.load("volumes", root=root, num_classes=2, shape=(3, 5, 6),
                    cache_dir=tmp_path / "c")
  assert small.source[0]["image"].shape == (3, 5, 6, 1)


def test_crop_or_pad_keeps_voxels(tmp_path):
  root = tmp_path / "vols"
  labels = write_case(root, "train", "a")
  for i in range(4):
    write_case(root, "train", f"b{i}")
  dataset = data.load("volumes", root=root, num_classes=2, shape=(4, 14, 8),
                      mode="crop_or_pad", cache_dir=tmp_path / "c", split="train")
  example = next(ex for ex in dataset.source if bytes(ex["file_name"]) == b"a.npy")
  # Depth 6 -> 4 crops one slice each side; height 10 -> 14 pads 2; width 12 -> 8 crops 2.
  np.testing.assert_array_equal(example["segmentation_mask"][:, 2:12, :, 0], labels[1:5, :, 2:10])


def test_volume_errors_name_files(tmp_path):
  root = tmp_path / "vols"
  for i in range(4):
    write_case(root, "train", f"b{i}")
  write_case(root, "train", "mismatch", label_shape=(6, 10, 11))
  np.save(root / "train" / "images" / "flat.npy", np.zeros((4, 4)))
  np.save(root / "train" / "masks" / "flat.npy", np.zeros((4, 4)))
  with pytest.raises(data.DataError) as info:
    data.load("volumes", root=root, num_classes=2, cache_dir=tmp_path / "c")
  message = str(info.value)
  assert "mismatch.npy has shape (6, 10, 12) but its labels" in message
  assert "flat.npy: unreadable or corrupt volume" in message and "3-D" in message
  assert not (tmp_path / "c" / "volumes").exists()
