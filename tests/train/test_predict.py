"""Native resolution end to end: patch training on images and volumes of their own sizes,
whole-image evaluation through sliding windows, ``train.evaluate`` and ``train.predict``
writing masks by stem on each input's own grid."""

import dataclasses
import json
import shutil
import subprocess
import sys

import nibabel
import numpy as np
import pytest
from PIL import Image

from regionloss_jax.postprocessing import Postprocessing, Rule
from tests import tiers
from tests.train.helpers import REPO
from train import postprocess, runs
from train.user_errors import ConfigError

SIZES = [
  (36, 52),
  (44, 40),
  (28, 60),
  (40, 33),
  (52, 47),
  (31, 38),
  (45, 45),
  (33, 57),
  (48, 29),
  (38, 50),
]
TINY = {
  "data.num_threads": 1,
  "model.depth": 2,
  "model.features": 4,
  "train.batch_size": 4,
  "train.eval_batch_size": 4,
  "train.steps": 6,
  "train.eval_every": 3,
  "train.checkpoint_every": 3,
  "train.log_every": 2,
  "train.num_overlays": 2,
  "optimizer.warmup_steps": 2,
}


def _run(module, *args, check=True):
  command = [sys.executable, "-m", module, *args]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
  return result


def _flags(fields: dict) -> list[str]:
  return [f"--config.{k}={str(v).replace(' ', '')}" for k, v in fields.items()]


def _grey_case(rng, h, w):
  mask = np.zeros((h, w), np.uint8)
  top, left = rng.integers(2, h // 2), rng.integers(2, w // 2)
  mask[top : top + h // 3, left : left + w // 3] = 1
  mask[h - 4, w - 6] = 2  # a one-pixel structure
  image = (60 + 80 * mask + rng.integers(0, 30, (h, w))).astype(np.uint8)
  return image, mask


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, cache_dir):
  """A finished 6-step patch-trained run on grey-scale images of ten different sizes."""
  root = tmp_path_factory.mktemp("native") / "data"
  rng = np.random.default_rng(0)
  for split, sizes in (("train", SIZES[:6]), ("val", SIZES[6:8]), ("test", SIZES[8:])):
    for i, (h, w) in enumerate(sizes):
      image, mask = _grey_case(rng, h, w)
      for sub, array in (("images", image), ("masks", mask)):
        (root / split / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(root / split / sub / f"{split}{i}.png")
  workdir = root.parent / "run"
  _run(
    "train",
    "--config=train/configs/folder.py",
    f"--workdir={workdir}",
    *_flags(
      {
        **TINY,
        "data.dir": root,
        "data.num_classes": 3,
        "data.image_size": "()",
        "data.patch_size": (16, 16),
        "data.cache_dir": cache_dir,
      }
    ),
  )
  return root, workdir


@tiers.SLOW
def test_validation_and_test_metrics_are_computed_on_whole_native_images(folder_run):
  root, workdir = folder_run
  summary = json.loads((workdir / "summary.json").read_text())["test"]
  assert summary["num_images"] == 2
  inference = json.loads((workdir / "inference.json").read_text())
  assert inference["window"] == [16, 16]
  assert inference["preprocessing"]["channels"] == 1  # grey-scale images: one channel
  assert inference["preprocessing"]["size"] is None
  # The per-image ground-truth proportions are those of the mask files at their own size.
  per_image = np.load(workdir / "test_per_image.npz")
  assert sorted(per_image["name"]) == ["test0.png", "test1.png"]
  for name, proportions in zip(per_image["name"], per_image["gt_proportion"], strict=True):
    mask = np.asarray(Image.open(root / "test" / "masks" / name))
    expected = np.bincount(mask.ravel(), minlength=3) / mask.size
    np.testing.assert_allclose(proportions, expected, rtol=1e-12)
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in records if r["split"] == "val"]
  assert [r["num_images"] for r in val] == [2, 2]


@tiers.SLOW
def test_evaluate_writes_masks_named_by_stem_at_their_size(folder_run):
  root, workdir = folder_run
  _run("train.evaluate", f"--workdir={workdir}")
  predictions = workdir / "predictions" / "test"
  for i, (h, w) in enumerate(SIZES[8:]):
    mask = np.asarray(Image.open(predictions / f"test{i}.png"))
    assert mask.shape == (h, w) and mask.dtype == np.uint8 and mask.max() <= 2
  evaluated = json.loads((predictions / "summary.json").read_text())
  trained = json.loads((workdir / "summary.json").read_text())["test"]
  assert evaluated["dice"] == pytest.approx(trained["dice"], abs=1e-12)


@tiers.SLOW
def test_predict_writes_every_readable_input_and_names_every_bad_one(folder_run, tmp_path):
  root, workdir = folder_run
  inputs = tmp_path / "new"
  inputs.mkdir()
  rng = np.random.default_rng(5)
  grey, _ = _grey_case(rng, 61, 23)
  Image.fromarray(grey).save(inputs / "wide.png")
  Image.fromarray(grey.astype(np.uint16) * 200).save(inputs / "sixteen.png")  # 16-bit
  np.save(inputs / "array.npy", rng.normal(size=(19, 70)).astype(np.float32))
  for name in ("test0.png", "test1.png"):  # the test images: masks must equal evaluate's
    (inputs / name).write_bytes((root / "test" / "images" / name).read_bytes())
  (inputs / "broken.png").write_bytes(b"not an image")
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(inputs / "colour.png")
  (inputs / "notes.txt").write_text("not an input")
  out = tmp_path / "masks"

  result = _run(
    "train.predict",
    f"--workdir={workdir}",
    f"--input={inputs}",
    f"--out={out}",
    "--save_probabilities",
    check=False,
  )
  assert result.returncode == 1
  message = result.stderr.strip().splitlines()
  assert "5 mask(s) written" in result.stderr and "3 input(s) failed" in result.stderr
  assert any("broken.png" in line and "UnidentifiedImageError" in line for line in message)
  assert any(
    "colour.png" in line and "has 3 channels; the model takes 1" in line for line in message
  )
  assert any("notes.txt: not a image file" in line for line in message)
  assert "Traceback" not in result.stderr
  for name, shape in (("wide", (61, 23)), ("sixteen", (61, 23)), ("array", (19, 70))):
    mask = np.asarray(Image.open(out / f"{name}.png"))
    assert mask.shape == shape
    probs = np.load(out / f"{name}.npz")["probabilities"]
    assert probs.shape == shape + (3,)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(mask, _expected_mask(workdir, probs))
  _run("train.evaluate", f"--workdir={workdir}", f"--out={tmp_path / 'evaluated'}")
  for name in ("test0", "test1"):
    np.testing.assert_array_equal(
      np.asarray(Image.open(out / f"{name}.png")),
      np.asarray(Image.open(tmp_path / "evaluated" / f"{name}.png")),
    )

  mirrored = _run(
    "train.predict",
    f"--workdir={workdir}",
    f"--input={inputs / 'wide.png'}",
    f"--out={tmp_path / 'tta'}",
    "--tta",
    "--checkpoint=latest",
  )
  assert "1 mask(s) written" in mirrored.stdout
  assert np.asarray(Image.open(tmp_path / "tta" / "wide.png")).shape == (61, 23)


@tiers.SLOW
def test_predict_refuses_to_overwrite_its_inputs(folder_run, tmp_path):
  _, workdir = folder_run
  inputs = tmp_path / "new"
  inputs.mkdir()
  image = np.full((20, 24), 100, np.uint8)
  Image.fromarray(image).save(inputs / "a.png")
  np.save(inputs / "a.npy", image)
  result = _run(
    "train.predict", f"--workdir={workdir}", f"--input={inputs}", f"--out={inputs}", check=False
  )
  assert result.returncode == 1
  assert "nothing was written" in result.stderr and "would overwrite an input" in result.stderr
  assert np.array_equal(np.asarray(Image.open(inputs / "a.png")), image)


def _nifti(path, array_dhw, affine, description=b""):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = nibabel.Nifti1Image(np.ascontiguousarray(array_dhw.T), affine)
  image.header["descrip"] = description
  nibabel.save(image, path)


@tiers.SLOW
def test_volumes_at_their_own_spacing_come_back_on_their_own_grid(tmp_path, cache_dir):
  root = tmp_path / "vols"
  rng = np.random.default_rng(1)
  shapes = [
    (6, 14, 12),
    (7, 12, 13),
    (5, 13, 14),
    (6, 12, 12),
    (7, 14, 13),
    (6, 13, 12),
    (5, 12, 15),
    (6, 14, 14),
  ]
  for i, shape in enumerate(shapes):
    split = "train" if i < 5 else ("val" if i < 6 else "test")
    affine = np.diag([0.9, 0.9, 2.0, 1.0])  # 2 mm slices
    affine[:3, 3] = [-30.0, 12.0, 5.0 * i]
    labels = np.zeros(shape, np.uint8)
    labels[2:4, 3:8, 4:9] = 1
    image = (rng.normal(0, 1, shape) + 3 * labels).astype(np.float32)
    _nifti(root / split / "images" / f"case{i}.nii.gz", image, affine)
    _nifti(root / split / "masks" / f"case{i}.nii.gz", labels, affine)
  workdir = tmp_path / "run"
  _run(
    "train",
    "--config=train/configs/volumes3d.py",
    f"--workdir={workdir}",
    *_flags(
      {
        **TINY,
        "model.features": 2,
        "model.max_features": 8,
        "train.batch_size": 2,
        "train.eval_batch_size": 2,
        "data.dir": root,
        "data.num_classes": 2,
        "data.image_size": "()",
        "data.patch_size": (8, 8, 8),
        "data.spacing": (1.0, 1.0, 1.0),
        "data.cache_dir": cache_dir,
      }
    ),
  )
  inference = json.loads((workdir / "inference.json").read_text())
  assert inference["preprocessing"]["spacing"] == [1.0, 1.0, 1.0]

  _run("train.evaluate", f"--workdir={workdir}")
  written = nibabel.load(workdir / "predictions" / "test" / "case6.nii.gz")
  source = nibabel.load(root / "test" / "images" / "case6.nii.gz")
  assert written.shape == source.shape  # back from the 1 mm grid to the file's own
  np.testing.assert_allclose(written.affine, source.affine)

  new = tmp_path / "new" / "scan.nii.gz"
  affine = np.diag([0.9, 0.9, 2.0, 1.0])
  affine[:3, 3] = [1.0, 2.0, 3.0]
  _nifti(new, rng.normal(0, 1, (9, 17, 11)).astype(np.float32), affine, b"a new scan")
  _run(
    "train.predict",
    f"--workdir={workdir}",
    f"--input={new}",
    f"--out={tmp_path / 'out'}",
    "--save_probabilities",
  )
  mask = nibabel.load(tmp_path / "out" / "scan.nii.gz")
  assert mask.shape == (11, 17, 9) and mask.get_data_dtype() == np.uint8
  np.testing.assert_allclose(mask.affine, affine)
  assert bytes(mask.header["descrip"]).rstrip(b"\0") == b"a new scan"
  probs = np.load(tmp_path / "out" / "scan.npz")["probabilities"]
  assert probs.shape == (9, 17, 11, 2)  # (D, H, W) of the input's own grid
  expected = _expected_mask(workdir, probs, spacing=(2.0, 0.9, 0.9))  # (D, H, W) in mm
  np.testing.assert_array_equal(np.asarray(mask.dataobj).T, expected)


def _expected_mask(workdir, probs, spacing=None):
  """The mask ``train.predict`` writes for saved ``probs``: their argmax after the rules the
  run chose on validation, if any (the probabilities are saved before post-processing)."""
  classes = probs.argmax(-1)
  chosen = postprocess.read(str(workdir))
  if chosen is None:
    return classes
  prep = runs.read_run(str(workdir)).preprocessing
  pixel = postprocess.original_grid_spacing(prep, classes.shape, spacing)
  return chosen.apply(classes, spacing=pixel)


def _run_dir(path):
  path.mkdir(parents=True)
  (path / "config.json").write_text("{}")
  return str(path)


def test_a_cross_validation_directory_stands_for_its_folds_in_order(tmp_path):
  cv = tmp_path / "cv"
  folds = [_run_dir(cv / name) for name in ("fold_0", "fold_2", "fold_10", "fold_final")]
  (cv / "fold_3").mkdir()  # no config.json: not a run, not a member
  run = _run_dir(tmp_path / "run")
  assert runs.member_workdirs([str(cv), run]) == [*folds, run]
  missing = str(tmp_path / "none")  # neither: kept, for opening it to name what is missing
  assert runs.member_workdirs([missing]) == [missing]
  with pytest.raises(ConfigError, match=f"{folds[1]} is in the ensemble twice"):
    runs.member_workdirs([str(cv), folds[1]])


@tiers.SLOW
def test_postprocessing_is_chosen_on_validation_reported_on_test_and_applied(folder_run, tmp_path):
  _, workdir = folder_run
  record = json.loads((workdir / "postprocessing.json").read_text())
  chosen = Postprocessing.from_dict(record["postprocessing"])
  assert chosen.classes[1].num_images == 2  # the two validation images
  summary = json.loads((workdir / "summary.json").read_text())["test"]
  assert summary["postprocessing"]["is_identity"] == chosen.is_identity
  assert summary["distance_unit"] == "px"  # PNG files have no spacing
  assert ("postprocessed" in summary) != chosen.is_identity

  # A copy of the run whose record drops every component of class 1: predict must apply it.
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  forced = _with_rule(chosen, 1, Rule("min_size", 1e9))
  postprocess.write(str(copy), forced, np.load(workdir / postprocess.STATS_FILE), ["b", "x", "y"])
  inputs = tmp_path / "in"
  inputs.mkdir()
  rng = np.random.default_rng(5)
  image, _ = _grey_case(rng, 30, 41)
  Image.fromarray(image).save(inputs / "new.png")
  _run("train.predict", f"--workdir={copy}", f"--input={inputs}", f"--out={tmp_path / 'pp'}")
  _run(
    "train.predict",
    f"--workdir={copy}",
    f"--input={inputs}",
    f"--out={tmp_path / 'raw'}",
    "--nopostprocess",
  )
  raw = np.asarray(Image.open(tmp_path / "raw" / "new.png"))
  cleaned = np.asarray(Image.open(tmp_path / "pp" / "new.png"))
  assert not (cleaned == 1).any()
  np.testing.assert_array_equal(cleaned, forced.apply(raw))


def _with_rule(chosen, class_id, rule):
  classes = dict(chosen.classes)
  classes[class_id] = dataclasses.replace(classes[class_id], rule=rule)
  return dataclasses.replace(chosen, classes=classes)
