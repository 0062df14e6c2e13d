"""python -m train.plan: the fingerprint, the planning rules, and a run trained from a plan."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tests import tiers
from tests.train.helpers import REPO
from train import memory, planning


def _case(name, shape, spacing=None, value=1, channels=1):
  label = np.zeros(shape, np.uint8)
  label[tuple(slice(1, s - 1) for s in shape)] = value
  image = np.stack([label * 10.0 + c for c in range(channels)], axis=-1)
  return planning.Case(name, image, label, spacing)


def test_target_spacing_is_the_median_and_a_thick_axis_takes_its_tenth_percentile():
  assert planning.target_spacing([(1.0, 1.0, 1.0), (1.2, 1.0, 0.8), (1.4, 1.0, 0.8)]) == (
    1.2,
    1.0,
    0.8,
  )
  # Median 5 mm slices against 0.8 mm pixels (ratio > 3): the slice axis takes its 10th
  # percentile, the thinner slices of the two 2.5 mm cases.
  thick = [(5.0, 0.8, 0.8)] * 8 + [(2.5, 0.8, 0.8)] * 2
  assert planning.target_spacing(thick) == (2.5, 0.8, 0.8)


def test_a_thick_axis_is_pooled_once_the_others_have_caught_up():
  # In-plane 0.8 mm -> 1.6 -> 3.2 mm: only then is 5 mm within twice the finest, and the
  # slice axis, 20 -> 10 -> 5, stops when halving would leave fewer than 4 voxels.
  pooling = planning.pooling_for((20, 256, 256), (5.0, 0.8, 0.8), max_depth=5)
  assert pooling == [(1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2)]
  # 64 -> 32 -> 16 -> 8 -> 4; 48 -> 24 -> 12 -> 6, which cannot be halved again.
  assert planning.pooling_for((64, 48), None, max_depth=6) == [(2, 2)] * 3 + [(2, 1)]


def test_fingerprint_counts_classes_and_foreground_intensities_by_hand():
  cases = [_case("a", (4, 6), value=1), _case("b", (4, 6), value=2, channels=1)]
  cases[1].label[0, 0] = 255  # ignored: counted in no class
  fp = planning.fingerprint(cases, class_names=("bg", "one", "two"), channel_names=["CT"])
  voxels = [c["voxels"] for c in fp["classes"]]
  assert voxels == [16 + 15, 8, 8]  # interiors of 2x4 pixels; borders background
  assert [c["cases_present"] for c in fp["classes"]] == [2, 1, 1]
  # Foreground pixels hold 10 (label 1) and 20 (label 2): eight of each.
  assert fp["intensity"][0]["mean"] == pytest.approx(15.0)
  assert fp["median_shape"] == [4.0, 6.0] and fp["spacings"] is None
  with pytest.raises(planning.PlanError, match="2 channels, the first case has 1"):
    planning.fingerprint(
      [_case("a", (4, 6)), _case("b", (4, 6), channels=2)], class_names=("bg", "fg")
    )


def _fingerprint_3d(cases=10, shape=(40, 160, 160), spacing=(1.0, 1.0, 1.0), channels=("MR",)):
  return {
    "spatial_dims": 3,
    "channels": list(channels),
    "shapes": [list(shape)] * cases,
    "spacings": [list(spacing)] * cases,
    "intensity": [
      {"channel": c, "percentile_00_5": -100.0, "percentile_99_5": 300.0} for c in channels
    ],
  }


def test_a_smaller_budget_gives_a_smaller_patch_that_fits_it():
  fp = _fingerprint_3d()
  plans = [
    planning.make_plan(fp, budget_bytes=int(g * 2**30), num_classes=3, model_channels=3)
    for g in (16, 2, 0.5)
  ]
  voxels = [np.prod(p["config"]["data.patch_size"]) for p in plans]
  assert voxels[0] >= voxels[1] > voxels[2]
  for plan, g in zip(plans, (16, 2, 0.5), strict=True):
    assert plan["estimated_step_bytes"] <= g * 2**30
    patch, pooling = plan["config"]["data.patch_size"], plan["config"]["model.pooling"]
    divisor = [int(np.prod(axis)) for axis in zip(*pooling, strict=True)]
    assert all(p % d == 0 for p, d in zip(patch, divisor, strict=True))
  # The whole median volume fits 16 GiB: the patch is the median shape (40 slices: pooled
  # three times, divisor 8).
  assert plans[0]["config"]["data.patch_size"] == (40, 160, 160)


def test_batch_is_capped_by_the_dataset_and_divides_over_the_devices():
  small = _fingerprint_3d(cases=4, shape=(16, 32, 32))
  plan = planning.make_plan(small, budget_bytes=64 * 2**30, num_classes=2, model_channels=2)
  # The patch covers a whole case, and 5% of four cases' voxels is less than one patch.
  assert plan["config"]["train.batch_size"] == planning.MIN_BATCH
  fp2d = {
    "spatial_dims": 2,
    "channels": ["grey"],
    "shapes": [[64, 64]] * 400,
    "spacings": None,
    "intensity": [{"channel": "grey"}],
  }
  plan = planning.make_plan(
    fp2d, budget_bytes=8 * 2**30, num_classes=2, model_channels=2, devices=4
  )
  batch = plan["config"]["train.batch_size"]
  assert batch % 4 == 0 and batch <= 0.05 * 400 * 64 * 64 / (64 * 64)
  assert "data.spacing" not in plan["config"]


def test_a_lone_ct_channel_gets_the_dataset_window_and_a_tiny_budget_is_refused():
  ct = planning.make_plan(
    _fingerprint_3d(channels=("CT",)), budget_bytes=2**31, num_classes=2, model_channels=2
  )
  assert ct["config"]["data.intensity_range"] == (-100.0, 300.0)
  assert ct["normalisation"] == {"CT": "ct window"}
  two = planning.make_plan(
    _fingerprint_3d(channels=("CT", "PET")), budget_bytes=2**31, num_classes=2, model_channels=2
  )
  assert "data.intensity_range" not in two["config"]
  with pytest.raises(planning.PlanError, match=r"needs .* GiB per device, more than the budget"):
    planning.make_plan(_fingerprint_3d(), budget_bytes=2**20, num_classes=2, model_channels=2)


def _write_volumes(root, count=6):
  nibabel = pytest.importorskip("nibabel")
  rng = np.random.default_rng(0)
  for split, n in (("train", count), ("test", 2)):
    for i in range(n):
      label = np.zeros((10 + i % 3, 40, 36), np.uint8)
      label[2:-2, 10:25, 8:20] = 1
      image = (label * 300.0 - 100 + rng.normal(0, 30, label.shape)).astype(np.float32)
      affine = np.diag([0.8, 0.8, 4.0 - 0.5 * (i % 2), 1.0])
      for kind, array in (("images", image), ("masks", label)):
        path = root / split / kind / f"case{i}.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nibabel.save(nibabel.Nifti1Image(array.T, affine), str(path))


def _run(*args):
  return subprocess.run(
    [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600
  )


@tiers.SLOW
def test_plan_then_train_from_it(tmp_path):
  _write_volumes(tmp_path / "vols")
  plan_dir = tmp_path / "plan"
  result = _run(
    "-m",
    "train.plan",
    "--config=train/configs/volumes3d.py",
    f"--config.data.dir={tmp_path / 'vols'}",
    "--config.data.num_classes=2",
    f"--out={plan_dir}",
    "--memory_gb=0.5",
    "--channel_names=CT",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  plan = json.loads((plan_dir / "plan.json").read_text())
  fp = json.loads((plan_dir / "fingerprint.json").read_text())
  assert fp["cases"] == 6 and fp["spacings"][1] == pytest.approx([3.5, 0.8, 0.8], rel=1e-6)
  config = plan["config"]
  assert config["data.spacing"] == pytest.approx([3.5, 0.8, 0.8], rel=1e-6)
  assert config["model.pooling"][0] == [1, 2, 2]  # 3.5 mm slices are not pooled first
  assert plan["estimated_step_bytes"] <= 0.8 * 0.5 * 2**30
  workdir = tmp_path / "run"
  result = _run(
    "-m",
    "train",
    f"--plan={plan_dir / 'plan.json'}",
    f"--workdir={workdir}",
    "--config.model.features=4",
    "--config.model.max_features=16",
    "--config.train.steps=2",
    "--config.train.eval_every=2",
    "--config.train.checkpoint_every=2",
    f"--config.data.cache_dir={tmp_path / 'cache'}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  run_config = json.loads((workdir / "config.json").read_text())
  assert run_config["model"]["pooling"] == config["model.pooling"]
  assert run_config["data"]["patch_size"] == config["data.patch_size"]
  assert run_config["model"]["features"] == 4  # the command line wins over the plan
  assert (workdir / "summary.json").exists()


@tiers.SLOW
def test_plan_mistakes_end_in_one_line(tmp_path):
  result = _run("-m", "train", f"--plan={tmp_path / 'missing.json'}", f"--workdir={tmp_path}")
  assert result.returncode == 2 and "error: --plan:" in result.stderr
  assert "missing.json" in result.stderr and "Traceback" not in result.stderr
  result = _run(
    "-m", "train", "--plan=x.json", "--config=train/configs/default.py", f"--workdir={tmp_path}"
  )
  assert result.returncode == 2 and "--plan and --config" in result.stderr
  _write_volumes(tmp_path / "vols", count=2)
  result = _run(
    "-m",
    "train.plan",
    "--config=train/configs/volumes3d.py",
    f"--config.data.dir={tmp_path / 'vols'}",
    "--config.data.num_classes=2",
    f"--out={tmp_path / 'plan'}",
    "--memory_gb=0.01",
  )
  assert result.returncode == 1 and "error: the smallest plan" in result.stderr


def test_memory_budget_is_a_share_of_what_the_device_holds():
  limit, _ = memory.device_memory(__import__("jax").devices()[0])
  assert planning.MEMORY_SHARE * limit > 0


def test_an_nnunet_dataset_is_fingerprinted_with_its_channels_and_labels(tmp_path):
  from tests.data import test_nnunet as layout
  from train import planner
  from train.configs import nnunet as nnunet_config

  root = tmp_path / "Dataset001_Prostate"
  layout.write_3d(root, cases=4)
  config = nnunet_config.get_config()
  config.data.dir = str(root)
  record = planner.plan_dataset(config, str(tmp_path / "plan"), memory_gb=0.5)
  fp = json.loads((tmp_path / "plan" / "fingerprint.json").read_text())
  assert fp["cases"] == 4
  assert fp["channels"] == ["T2", "ADC"]  # dataset.json's channel_names
  # Spacings of cases 0-3: D 1.0-2.5 mm, H 0.8, W 0.9-1.2 (median 1.75, 0.8, 1.05).
  assert record["config"]["data.spacing"] == pytest.approx([1.75, 0.8, 1.05], rel=1e-6)
  assert record["config"]["data.name"] == "nnunet"
  # Per case 336 PZ and 144 TZ voxels; the 4 of the ignore label count in no class.
  voxels = [c["voxels"] for c in fp["classes"]]
  assert voxels == [4 * (16 * 20 * 24 - 336 - 144 - 4), 4 * 336, 4 * 144]
