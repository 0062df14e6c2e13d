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
  dataset = data.load(
    "volumes", root=root, num_classes=2, shape=(6, 10, 12), cache_dir=tmp_path / "c"
  )
  assert len(dataset) == 6
  example = next(ex for ex in dataset.source if bytes(ex["file_name"]) == b"a.nii.gz")
  np.testing.assert_array_equal(example["segmentation_mask"][..., 0], labels)
  assert example["image"].dtype == np.float32 and 0 <= example["image"].min() <= 1
  batch = next(iter(data.make_pipeline(dataset, global_batch_size=2, shard_index=0, shard_count=1)))
  assert batch["image"].shape == (2, 6, 10, 12, 1) and batch["label"].shape == (2, 6, 10, 12)
  small = data.load("volumes", root=root, num_classes=2, shape=(3, 5, 6), cache_dir=tmp_path / "c")
  assert small.source[0]["image"].shape == (3, 5, 6, 1)


def test_crop_or_pad_keeps_voxels(tmp_path):
  root = tmp_path / "vols"
  labels = write_case(root, "train", "a")
  for i in range(4):
    write_case(root, "train", f"b{i}")
  dataset = data.load(
    "volumes",
    root=root,
    num_classes=2,
    shape=(4, 14, 8),
    mode="crop_or_pad",
    cache_dir=tmp_path / "c",
    split="train",
  )
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


def test_nifti_problems_of_every_kind_come_in_one_report(tmp_path):
  root = tmp_path / "vols"
  for i in range(4):
    write_case(root, "train", f"b{i}", shape=(3, 4, 5), nifti=True)
  write_case(root, "train", "mismatch", shape=(3, 4, 5), nifti=True, label_shape=(3, 4, 4))
  write_case(root, "train", "lonely", shape=(3, 4, 5), nifti=True)
  (root / "train" / "masks" / "lonely.nii.gz").unlink()
  (root / "train" / "images" / "b0.nii.gz").write_bytes(b"not gzip, not nifti")
  (root / "train" / "masks" / "b1.nii.gz").write_bytes(b"")
  two_channels = np.zeros((5, 4, 3, 2), np.float32)  # NIfTI (x, y, z, channel).
  nibabel.save(
    nibabel.Nifti1Image(two_channels, np.eye(4)), root / "train" / "images" / "b2.nii.gz"
  )
  cache = tmp_path / "c"
  with pytest.raises(data.DataError) as info:
    data.load("volumes", root=root, num_classes=2, shape=None, cache_dir=cache)
  problems = info.value.problems
  assert len(problems) == 5, problems
  expected = [
    "b2.nii.gz: unreadable or corrupt volume (ValueError: expected a 3-D volume",
    "lonely.nii.gz: image without a mask",
    "b0.nii.gz: unreadable or corrupt volume",
    "b1.nii.gz: empty label volume file (0 bytes)",
    "mismatch.nii.gz has shape (3, 4, 5) but its labels",
  ]
  for text in expected:
    assert sum(text in p for p in problems) == 1, (text, problems)
  assert not cache.exists()


def _write_nifti(path, array_dhw, affine):
  path.parent.mkdir(parents=True, exist_ok=True)
  nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array_dhw.T), affine), path)


def test_native_volumes_keep_shape_affine_and_spacing(tmp_path):
  root = tmp_path / "vols"
  affines = {}
  for i, shape in enumerate([(6, 10, 12), (8, 9, 11), (5, 12, 10), (7, 7, 7)]):
    affine = np.diag([0.8, 0.9, 2.5 + i, 1.0])
    affine[:3, 3] = [10, -20, 30 + i]
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 2:5, 3:6] = 1
    rng = np.random.default_rng(i)
    _write_nifti(
      root / "train" / "images" / f"v{i}.nii.gz",
      rng.normal(100, 20, shape).astype(np.float32),
      affine,
    )
    _write_nifti(root / "train" / "masks" / f"v{i}.nii.gz", labels, affine)
    affines[f"v{i}.nii.gz"] = (affine, shape, labels)
  options = dict(
    root=root,
    num_classes=2,
    shape=None,
    cache_dir=tmp_path / "c",
    val_fraction=0.25,
    test_fraction=0.25,
  )
  examples = [
    ex for s in ("train", "val", "test") for ex in data.load("volumes", split=s, **options).source
  ]
  assert len(examples) == 4
  for ex in examples:
    affine, shape, labels = affines[ex["file_name"].decode()]
    assert ex["image"].shape == shape + (1,)
    np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], labels)
    np.testing.assert_allclose(ex["affine"], affine, rtol=1e-6)  # NIfTI stores float32
    # (D, H, W) = (z, y, x)
    np.testing.assert_allclose(ex["spacing"], [affine[2, 2], 0.9, 0.8], rtol=1e-6)
    assert tuple(ex["original_shape"]) == shape


def test_spacing_resamples_images_linearly_and_labels_by_nearest(tmp_path):
  root = tmp_path / "vols"
  affine = np.diag([1.0, 1.0, 2.0, 1.0])  # 2 mm slices
  labels = np.zeros((5, 8, 8), np.uint8)
  labels[2, 2:6, 2:6] = 1
  image = np.linspace(0, 1, 5, dtype=np.float32)[:, None, None] * np.ones((5, 8, 8), np.float32)
  for i in range(4):
    _write_nifti(root / "train" / "images" / f"v{i}.nii.gz", image, affine)
    _write_nifti(root / "train" / "masks" / f"v{i}.nii.gz", labels, affine)
  dataset = data.load(
    "volumes",
    root=root,
    num_classes=2,
    shape=None,
    spacing=(1.0, 1.0, 1.0),
    intensity_range=(0.0, 1.0),
    cache_dir=tmp_path / "c",
    split="train[:1]",
    val_fraction=0.25,
    test_fraction=0.25,
  )
  (ex,) = list(dataset.source)
  assert ex["image"].shape == (10, 8, 8, 1)  # 5 slices of 2 mm -> 10 of 1 mm
  assert tuple(ex["original_shape"]) == (5, 8, 8)
  profile = ex["image"][:, 4, 4, 0]
  assert np.all(np.diff(profile) >= 0) and len(np.unique(profile)) > 5  # linear, not steps
  resampled = ex["segmentation_mask"][..., 0]
  assert set(np.unique(resampled)) == {0, 1}  # nearest: no new values
  assert resampled[:, 4, 4].sum() == 2  # the one 2-mm slice became two 1-mm slices
  # Back to the file's grid, one-hot probabilities give the labels again.
  probs = np.eye(2, dtype=np.float32)[resampled]
  back = data.preprocess.to_original(dataset.preprocessing, probs, (5, 8, 8), tuple(ex["spacing"]))
  np.testing.assert_array_equal(back.argmax(-1), labels)


def test_new_volume_prepared_by_preprocessing_matches_the_evaluation_input(tmp_path):
  root = tmp_path / "vols"
  for i in range(4):
    write_case(root, "train", f"b{i}", nifti=True)
  dataset = data.load(
    "volumes",
    root=root,
    num_classes=2,
    shape=(4, 6, 6),
    split="train",
    cache_dir=tmp_path / "c",
    val_fraction=0.25,
    test_fraction=0.25,
  )
  for example in data.eval_examples(dataset):
    volume = data.files.read_volume(root / "train" / "images" / example["name"])
    direct = data.preprocess.model_input(dataset.preprocessing, volume.array, volume.spacing)
    np.testing.assert_allclose(direct, example["image"], atol=1e-6)
