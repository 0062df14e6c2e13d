"""nnU-Net's raw layout and the Medical Segmentation Decathlon's: several input channels, 2-D
and 3-D, dataset.json's classes and ignore label, splits, one report of every bad file, and a
trained run predicting a folder of channel files."""

import json
import os

import nibabel
import numpy as np
import pytest
from PIL import Image

from regionloss_jax import data
from regionloss_jax.data import nnunet
from tests import tiers

SHAPE = (16, 20, 24)  # (D, H, W)
LABELS = {"background": 0, "PZ": 1, "TZ": 2, "ignore": 3}


def write_nifti(path, array_dhw, affine):
  """``array_dhw`` ``(D, H, W[, C])`` stored as NIfTI's ``(x, y, z[, c])``."""
  path.parent.mkdir(parents=True, exist_ok=True)
  array = np.moveaxis(array_dhw, -1, 0).T if array_dhw.ndim == 4 else array_dhw.T
  nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array), affine), path)
  return path


def write_json(root, **fields):
  meta = {
    "channel_names": {"0": "T2", "1": "ADC"},
    "labels": LABELS,
    "numTraining": 6,
    "file_ending": ".nii.gz",
  }
  meta.update(fields)
  root.mkdir(parents=True, exist_ok=True)
  (root / "dataset.json").write_text(json.dumps({k: v for k, v in meta.items() if v is not None}))


def affine_of(spacing_dhw, origin=(5.0, -3.0, 2.0)):
  affine = np.diag([spacing_dhw[2], spacing_dhw[1], spacing_dhw[0], 1.0])
  affine[:3, 3] = origin
  return affine


def case_labels(shape=SHAPE):
  labels = np.zeros(shape, np.uint8)
  labels[4:10, 5:12, 6:14] = 1
  labels[10:14, 12:18, 14:20] = 2
  labels[0, 0, :4] = 3  # the ignore label
  return labels


def channel_images(shape=SHAPE):
  """Channel 0 rises along D, channel 1 along W, on ranges 100x apart: each channel's order,
  orientation and own scaling show in the prepared image."""
  d, _, w = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
  return [d, 100.0 * w + 1000.0]


def write_case(root, name, *, images="imagesTr", labels="labelsTr", spacing=(2.0, 0.8, 0.9)):
  affine = affine_of(spacing)
  for c, array in enumerate(channel_images()):
    write_nifti(root / images / f"{name}_{c:04d}.nii.gz", array, affine)
  if labels:
    write_nifti(root / labels / f"{name}.nii.gz", case_labels(), affine)
  return affine


def write_3d(root, cases=6):
  """``cases`` two-channel cases whose spacings differ between cases."""
  write_json(root, numTraining=cases)
  return {
    f"case{i}": write_case(root, f"case{i}", spacing=(1.0 + 0.5 * i, 0.8, 0.9 + 0.1 * i))
    for i in range(cases)
  }


def load(root, tmp_path, split="train", **options):
  return data.load("nnunet", root=root, split=split, cache_dir=tmp_path / "c", **options)


def all_examples(root, tmp_path, **options):
  return {
    split: list(load(root, tmp_path, split, **options).source)
    for split in ("train", "validation", "test")
  }


def test_3d_two_channel_dataset_prepares_with_channels_in_order(tmp_path):
  root = tmp_path / "Dataset001_Prostate"
  affines = write_3d(root)
  splits = all_examples(root, tmp_path)
  assert {s: len(e) for s, e in splits.items()} == {"train": 4, "validation": 1, "test": 1}
  dataset = load(root, tmp_path)
  assert dataset.class_names == ("background", "PZ", "TZ")
  prep = dataset.preprocessing
  assert (prep.channels, prep.channel_files, prep.file_ending) == (2, 2, ".nii.gz")
  expected_labels = np.where(case_labels() == 3, 255, case_labels())
  names = set()
  for ex in (ex for examples in splits.values() for ex in examples):
    image = ex["image"]
    assert image.shape == SHAPE + (2,) and image.dtype == np.float32
    # Channel 0 varies along D only, channel 1 along W only; each spans [0, 1] on its own.
    assert np.ptp(image[..., 0], axis=(1, 2)).max() == 0 and np.ptp(image[..., 0], axis=0).min() > 0
    assert np.ptp(image[..., 1], axis=(0, 1)).max() == 0 and np.ptp(image[..., 1], axis=2).min() > 0
    assert np.all(np.diff(image[:, 0, 0, 0]) >= 0) and np.all(np.diff(image[0, 0, :, 1]) >= 0)
    for c in range(2):
      assert image[..., c].min() == 0.0 and image[..., c].max() == 1.0
    np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], expected_labels)
    name = ex["file_name"].decode()
    names.add(name)
    affine = affines[name.removesuffix(".nii.gz")]
    np.testing.assert_allclose(ex["affine"], affine, rtol=1e-6)
    np.testing.assert_allclose(ex["spacing"], [affine[2, 2], affine[1, 1], affine[0, 0]], rtol=1e-6)
  assert names == {f"case{i}.nii.gz" for i in range(6)}
  batch = next(
    iter(
      data.make_pipeline(
        dataset, global_batch_size=2, patch_size=(8, 8, 8), shard_index=0, shard_count=1
      )
    )
  )
  assert batch["image"].shape == (2, 8, 8, 8, 2) and batch["label"].shape == (2, 8, 8, 8)


def test_spacing_resamples_every_channel_and_new_cases_match_the_evaluation_input(tmp_path):
  root = tmp_path / "Dataset001_Prostate"
  write_3d(root)
  dataset = load(root, tmp_path, spacing=(2.0, 1.6, 1.8))
  for example in data.eval_examples(dataset):
    case = example["name"].removesuffix(".nii.gz")
    paths = [root / "imagesTr" / f"{case}_{c:04d}.nii.gz" for c in range(2)]
    array, spacing, _, _ = nnunet.read_channels(paths, 3)
    direct = data.preprocess.model_input(dataset.preprocessing, array, spacing)
    assert direct.shape[-1] == 2 and direct.shape[1] == 10  # 20 rows of 0.8 mm at 1.6 mm
    np.testing.assert_allclose(direct, example["image"], atol=1e-6)


def write_png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


def test_2d_png_dataset_with_two_grey_channels(tmp_path):
  root = tmp_path / "Dataset120_Grey"
  write_json(root, file_ending=".png", numTraining=8, labels={"background": 0, "road": 1})
  rng = np.random.default_rng(0)
  stored = {}
  for i in range(8):
    grey = [rng.integers(0, 256, (20, 30), dtype=np.uint8) for _ in range(2)]
    grey[1][:, :5] = 7  # tells the channels apart
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:25] = 1
    for c in range(2):
      write_png(root / "imagesTr" / f"road{i}_{c:04d}.png", grey[c])
    write_png(root / "labelsTr" / f"road{i}.png", mask)
    stored[f"road{i}.png"] = (np.stack(grey, axis=-1), mask)
  dataset = load(root, tmp_path)
  assert dataset.class_names == ("background", "road")
  assert dataset.preprocessing.spatial_dims == 2 and dataset.preprocessing.channels == 2
  for ex in dataset.source:
    image, mask = stored[ex["file_name"].decode()]
    assert ex["image"].dtype == np.uint8
    np.testing.assert_array_equal(ex["image"], image)  # 8-bit channels kept as they are
    np.testing.assert_array_equal(ex["segmentation_mask"][..., 0], mask)


def test_rgb_natural_images_are_one_file_of_three_channels(tmp_path):
  root = tmp_path / "Dataset121_Rgb"
  write_json(
    root,
    channel_names={"0": "R", "1": "G", "2": "B"},
    file_ending=".png",
    numTraining=5,
    labels={"background": 0, "polyp": 1},
  )
  rgb = np.zeros((12, 16, 3), np.uint8)
  rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
  for i in range(5):
    write_png(root / "imagesTr" / f"p{i}_0000.png", rgb)
    write_png(root / "labelsTr" / f"p{i}.png", np.eye(12, 16, dtype=np.uint8))
  dataset = load(root, tmp_path)
  assert dataset.preprocessing.channel_files == 1 and dataset.preprocessing.channels == 3
  np.testing.assert_array_equal(dataset.source[0]["image"], rgb)


def test_decathlon_dataset_json_and_4d_images(tmp_path):
  root = tmp_path / "Task01_BrainTumour"
  root.mkdir()
  meta = {
    "name": "BRATS",
    "modality": {"0": "FLAIR", "1": "T1w"},
    "labels": {"0": "background", "1": "edema", "2": "tumour"},
    "numTraining": 5,
    "training": [],
  }
  (root / "dataset.json").write_text(json.dumps(meta))
  affine = affine_of((2.0, 1.0, 1.0))
  for i in range(5):
    write_nifti(root / "imagesTr" / f"BRATS_{i:03d}.nii.gz", np.stack(channel_images(), -1), affine)
    labels = case_labels()
    labels[labels == 3] = 0
    write_nifti(root / "labelsTr" / f"BRATS_{i:03d}.nii.gz", labels, affine)
  (root / "imagesTr" / "._BRATS_000.nii.gz").write_bytes(b"macOS metadata")  # skipped
  dataset = load(root, tmp_path)
  assert dataset.class_names == ("background", "edema", "tumour")
  assert dataset.preprocessing.channel_files == 0 and dataset.preprocessing.channels == 2
  image = dataset.source[0]["image"]
  assert image.shape == SHAPE + (2,)
  assert (
    np.ptp(image[..., 0], axis=(1, 2)).max() == 0 and np.ptp(image[..., 1], axis=(0, 1)).max() == 0
  )


def test_labels_ts_is_the_test_split(tmp_path):
  root = tmp_path / "Dataset002_X"
  write_3d(root, cases=5)
  for name in ("held0", "held1"):
    write_case(root, name, images="imagesTs", labels="labelsTs")
  write_case(root, "unlabelled", images="imagesTs", labels=None)
  (root / "imagesTs" / "unlabelled_0000.nii.gz").unlink()  # only under imagesTs: unused
  (root / "imagesTs" / "unlabelled_0001.nii.gz").unlink()
  splits = all_examples(root, tmp_path)
  names = {s: {ex["file_name"].decode() for ex in e} for s, e in splits.items()}
  assert names["test"] == {"held0.nii.gz", "held1.nii.gz"}
  assert names["train"] | names["validation"] == {f"case{i}.nii.gz" for i in range(5)}
  assert len(names["validation"]) == 1


def test_cache_is_reused_and_a_dataset_json_change_is_noticed(tmp_path):
  root = tmp_path / "Dataset003_X"
  write_3d(root)
  load(root, tmp_path)
  prepared = list((tmp_path / "c" / "nnunet").iterdir())
  load(root, tmp_path)
  assert list((tmp_path / "c" / "nnunet").iterdir()) == prepared
  write_json(root, labels={"background": 0, "peripheral": 1, "transition": 2, "ignore": 3})
  assert load(root, tmp_path).class_names == ("background", "peripheral", "transition")
  assert len(list((tmp_path / "c" / "nnunet").iterdir())) == 2


def test_every_bad_file_is_named_in_one_report_and_nothing_is_written(tmp_path):
  root = tmp_path / "Dataset004_Bad"
  write_3d(root, cases=4)
  images, labels = root / "imagesTr", root / "labelsTr"
  affine = write_case(root, "nochannel")
  (images / "nochannel_0001.nii.gz").unlink()
  write_case(root, "extra")
  write_nifti(images / "extra_0002.nii.gz", channel_images()[0], affine)
  write_case(root, "unlabelled", labels=None)
  write_nifti(labels / "orphan.nii.gz", case_labels(), affine)
  write_nifti(images / "other_0000.nii", channel_images()[0], affine)
  write_case(root, "shape")
  write_nifti(images / "shape_0001.nii.gz", np.zeros((16, 20, 23), np.float32), affine)
  write_case(root, "spacing", spacing=(2.0, 0.8, 0.9))
  write_nifti(images / "spacing_0001.nii.gz", channel_images()[1], affine_of((3.0, 0.8, 0.9)))
  write_case(root, "values")
  bad_labels = case_labels()
  bad_labels[1, 1, 1] = 7
  write_nifti(labels / "values.nii.gz", bad_labels, affine)
  write_case(root, "empty")
  (images / "empty_0000.nii.gz").write_bytes(b"")
  write_case(root, "corrupt")
  (labels / "corrupt.nii.gz").write_bytes(b"not a NIfTI file")
  write_case(root, "nan")
  with_nan = channel_images()[1]
  with_nan[3, 3, 3] = np.nan
  write_nifti(images / "nan_0001.nii.gz", with_nan, affine)
  with pytest.raises(data.DataError) as info:
    load(root, tmp_path)
  problems = info.value.problems
  expected = [
    f"case 'nochannel': missing channel 0001 (ADC): expected {images / 'nochannel_0001.nii.gz'}",
    "extra_0002.nii.gz: channel 0002 is not one of the dataset's channel files",
    "unlabelled_0000.nii.gz: images of case 'unlabelled' without a label",
    "orphan.nii.gz: label without images",
    "other_0000.nii: image with another ending than dataset.json's file_ending '.nii.gz'",
    "numTraining is 4 but labelsTr holds 13 label file(s)",
    "shape_0001.nii.gz has shape (16, 20, 23) but shape_0000.nii.gz of the same case",
    f"mixed spacings in case 'spacing': {images / 'spacing_0000.nii.gz'} has spacing (2, 0.8, "
    f"0.9) but {images / 'spacing_0001.nii.gz'} has (3, 0.8, 0.9)",
    "values.nii.gz: label values not in dataset.json's labels: [7]",
    "empty_0000.nii.gz: empty image file (0 bytes)",
    "corrupt.nii.gz: unreadable or corrupt label",
    "nan_0001.nii.gz: image holds 1 NaN or infinite value(s)",
  ]
  for text in expected:
    assert sum(text in p for p in problems) == 1, (text, problems)
  assert len(problems) == len(expected), problems
  assert not (tmp_path / "c").exists()


def test_an_affine_differing_within_a_case_is_named(tmp_path):
  root = tmp_path / "Dataset005_Shifted"
  write_3d(root, cases=4)
  affine = write_case(root, "case0")
  shifted = affine.copy()
  shifted[:3, 3] += 5.0
  write_nifti(root / "labelsTr" / "case0.nii.gz", case_labels(), shifted)
  with pytest.raises(data.DataError, match=r"case0.nii.gz: its affine .* differs from"):
    load(root, tmp_path)


@pytest.mark.parametrize(
  "meta, message",
  [
    (None, "dataset.json: missing"),
    ("{not json", "dataset.json: not valid JSON"),
    ({"labels": LABELS}, "missing key 'channel_names'"),
    (
      {"channel_names": {"0": "T2"}, "labels": LABELS, "numTraining": 1},
      "missing key 'file_ending'",
    ),
    (
      {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "a": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
      },
      "label values [0, 2] must be consecutive from 0",
    ),
    (
      {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "ignore": 1, "a": 2},
        "numTraining": 1,
        "file_ending": ".nii.gz",
      },
      "the 'ignore' label is 1; it must have the highest value (2)",
    ),
    (
      {
        "channel_names": {"0": "T2"},
        "labels": {"background": 0, "whole": [1, 2], "core": 2},
        "regions_class_order": [1, 2],
        "numTraining": 1,
        "file_ending": ".nii.gz",
      },
      "region-based labels",
    ),
    (
      {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "a": 1},
        "numTraining": 1,
        "file_ending": ".nrrd",
      },
      "file_ending '.nrrd' is not supported",
    ),
    (
      {
        "channel_names": {"1": "T2"},
        "labels": {"background": 0, "a": 1},
        "numTraining": 1,
        "file_ending": ".nii.gz",
      },
      "channel_names must map channel indices '0', '1', ...",
    ),
  ],
)
def test_dataset_json_problems_are_named(tmp_path, meta, message):
  root = tmp_path / "Dataset006_Json"
  write_case(root, "case0")
  if isinstance(meta, dict):
    (root / "dataset.json").write_text(json.dumps(meta))
  elif meta is not None:
    (root / "dataset.json").write_text(meta)
  with pytest.raises(data.DataError) as info:
    load(root, tmp_path)
  assert any(message in p and "dataset.json" in p for p in info.value.problems), info.value
  assert not (tmp_path / "c").exists()


def test_config_checks_compare_the_config_with_dataset_json(tmp_path):
  from train import config_checks
  from train.configs import nnunet as nnunet_config
  from train.user_errors import ConfigError

  root = tmp_path / "Dataset007_X"
  write_3d(root)
  config = nnunet_config.get_config()
  config.data.dir = str(root)
  config_checks.check_config(config)  # the shipped config, dataset.json giving the classes
  config.data.num_classes = 4
  with pytest.raises(ConfigError, match=r"num_classes=4 but .*dataset.json declares 3 classes"):
    config_checks.check_config(config)
  config.data.num_classes = None
  config.data.class_names = ("background", "a", "b")
  with pytest.raises(ConfigError, match=r"class_names=.*'a'.* but .*'PZ'"):
    config_checks.check_config(config)
  config.data.class_names = None
  config.model.spatial_dims = 2
  config.data.patch_size = (64, 64)
  with pytest.raises(ConfigError, match=r"spatial_dims=2 does not fit .*'.nii.gz' is 3-D"):
    config_checks.check_config(config)


@tiers.SLOW
def test_trained_run_predicts_a_folder_of_channel_files(tmp_path):
  from tests.train.helpers import run_program
  from train import prediction

  root = tmp_path / "Dataset008_Tiny"
  write_3d(root)
  affines = {
    f"new{i}": write_case(
      root, f"new{i}", images="imagesTs", labels=None, spacing=(1.5, 0.7, 0.9 + i)
    )
    for i in range(2)
  }
  write_case(root, "broken", images="imagesTs", labels=None)
  (root / "imagesTs" / "broken_0001.nii.gz").unlink()
  workdir = tmp_path / "run"
  run_program(
    workdir,
    str(tmp_path / "c"),
    **{
      "data.name": "nnunet",
      "data.dir": str(root),
      "data.image_size": "()",
      "data.patch_size": (8, 8, 8),
      "model.spatial_dims": 3,
      "train.steps": 4,
      "train.eval_every": 4,
      "train.checkpoint_every": 4,
      "train.batch_size": 2,
      "train.eval_batch_size": 4,
    },
  )
  inference = json.loads((workdir / "inference.json").read_text())["preprocessing"]
  assert (inference["channels"], inference["channel_files"], inference["file_ending"]) == (
    2,
    2,
    ".nii.gz",
  )
  out = tmp_path / "out"
  with pytest.raises(prediction.PredictionError) as info:
    prediction.predict(str(workdir), str(root / "imagesTs"), str(out))
  assert "2 mask(s) written" in str(info.value)
  assert "case 'broken': missing channel 0001" in str(info.value)
  assert sorted(os.listdir(out)) == ["new0.nii.gz", "new1.nii.gz"]
  for case, affine in affines.items():
    mask = nibabel.load(out / f"{case}.nii.gz")
    np.testing.assert_allclose(mask.affine, affine, rtol=1e-6)
    assert mask.shape == SHAPE[::-1]  # NIfTI's (x, y, z)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
  single = tmp_path / "single"
  written = prediction.predict(
    str(workdir), str(root / "imagesTs" / "new1_0000.nii.gz"), str(single)
  )
  assert [os.path.basename(w) for w in written] == ["new1.nii.gz"]
  np.testing.assert_array_equal(
    np.asarray(nibabel.load(single / "new1.nii.gz").dataobj),
    np.asarray(nibabel.load(out / "new1.nii.gz").dataobj),
  )


def test_predict_groups_channel_files_into_cases_and_names_masks_by_case(tmp_path):
  from train import prediction

  prep = data.Preprocessing(
    spatial_dims=2,
    channels=2,
    mean=(0.5,) * 2,
    std=(0.25,) * 2,
    channel_files=2,
    file_ending=".png",
  )
  folder = tmp_path / "imagesTs"
  grey = [np.full((6, 8), 40, np.uint8), np.full((6, 8), 90, np.uint8)]
  for case in ("a", "b", "lonely"):
    for c in range(2):
      write_png(folder / f"{case}_{c:04d}.png", grey[c])
  (folder / "lonely_0000.png").unlink()
  (folder / "notes.txt").write_text("not an image")
  inputs, problems = prediction.list_inputs(str(folder), 2, prep)
  assert inputs == [folder / "a_0000.png", folder / "b_0000.png"]
  assert len(problems) == 2
  assert any("notes.txt: not a .png file of this run" in p for p in problems)
  assert any(
    f"case 'lonely': missing channel 0000: expected {folder / 'lonely_0000.png'}" in p
    for p in problems
  )
  # One channel file of a case stands for the case.
  assert prediction.list_inputs(str(folder / "b_0001.png"), 2, prep) == (
    [folder / "b_0000.png"],
    [],
  )
  assert (
    "missing channel file" in prediction.list_inputs(str(folder / "lonely_0001.png"), 2, prep)[1][0]
  )
  array, spacing, _, _ = prediction.read_input(folder / "a_0000.png", 2, prep)
  assert spacing is None
  np.testing.assert_array_equal(array, np.stack(grey, axis=-1))
  assert nnunet.case_name(folder / "a_0000.png", prep) == "a.png"


def test_predict_reads_a_decathlon_4d_volume_as_its_channels(tmp_path):
  from train import prediction

  prep = data.Preprocessing(spatial_dims=3, channels=2, mean=(0.5,) * 2, std=(0.25,) * 2)
  stacked = np.stack(channel_images(), axis=-1)
  path = write_nifti(tmp_path / "BRATS_100.nii.gz", stacked, affine_of((2.0, 1.0, 1.0)))
  array, spacing, affine, _ = prediction.read_input(path, 3, prep)
  np.testing.assert_array_equal(array, stacked)
  assert spacing == (2.0, 1.0, 1.0) and nnunet.case_name(path, prep) == "BRATS_100.nii.gz"
  assert data.preprocess.model_input(prep, array, spacing).shape == SHAPE + (2,)
