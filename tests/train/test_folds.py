"""k-fold cross-validation (``train.fold``) and ensembles of its folds in ``train.predict``:
the split file nnU-Net writes, reused as written; fold runs that train on what it says; the
ensemble's probabilities the mean of its members' own."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from regionloss_jax import data as rl_data
from tests import tiers
from tests.train.helpers import REPO, TINY_FIELDS, make_tiny, run_program
from train import build, datasets, folds, postprocess, prediction, runs
from train.configs import default
from train.user_errors import ConfigError

TRAIN, VAL, _ = TINY_FIELDS["data.split_sizes"]
# The tiny dataset records no file names: its cases are named by split and index.
POOL = [f"train_{i:05d}" for i in range(TRAIN)] + [f"validation_{i:05d}" for i in range(VAL)]


def _config(cache_dir, splits_file, *, fold=0, num_folds=3):
  config = default.get_config()
  make_tiny(config, cache_dir)
  config.train.fold, config.train.num_folds = fold, num_folds
  config.data.splits_file = str(splits_file)
  return config


def _prepared(config, split):
  return rl_data.load(config.data.name, split=split, **build.data_options(config))


def _example_of(config, case: str):
  """The prepared example a case id names, read without train.folds."""
  split, _, index = case.rpartition("_")
  return _prepared(config, split).source[int(index)]


def _same_images(data, cases, config):
  assert len(data) == len(cases)
  for position, case in enumerate(cases):
    expected = _example_of(config, case)
    np.testing.assert_array_equal(data.source[position]["image"], expected["image"])
    np.testing.assert_array_equal(
      data.source[position]["segmentation_mask"], expected["segmentation_mask"]
    )


def test_folds_partition_the_pool_deterministically():
  ids = [f"case{i:02d}" for i in range(23)]
  splits = folds.make_splits(list(reversed(ids)), 5)
  assert splits == folds.make_splits(ids, 5)  # a function of the set of ids only
  validated = [case for fold in splits for case in fold["val"]]
  assert sorted(validated) == ids  # every case validated exactly once
  assert sorted(len(fold["val"]) for fold in splits) == [4, 4, 5, 5, 5]  # 23 = 3 * 5 + 2 * 4
  for fold in splits:
    assert not set(fold["train"]) & set(fold["val"])
    assert sorted(fold["train"] + fold["val"]) == ids
  assert folds.make_splits(ids, 5, seed=1) != splits  # the order is shuffled, not sorted
  with pytest.raises(ConfigError, match="num_folds=24 does not fit a pool of 23 cases"):
    folds.make_splits(ids, 24)


def _fake(names):
  source = [{"file_name": name, "image": np.full((2, 2, 1), i)} for i, name in enumerate(names)]
  return rl_data.SegmentationData(source=source, class_names=("background", "x"))


def test_case_ids_are_file_stems_and_must_be_unique():
  parts = {"train": _fake(["b.png", "case01.nii.gz"]), "validation": _fake(["a.jpg"])}
  pool = folds.open_pool(parts.__getitem__)
  assert pool.ids == ("b", "case01", "a")
  subset = pool.subset(["a", "case01"])
  assert [ex["file_name"] for ex in subset.source] == ["a.jpg", "case01.nii.gz"]
  clash = {"train": _fake(["case01.png"]), "validation": _fake(["case01.nii.gz"])}
  with pytest.raises(rl_data.DataError, match="'case01' is in train and in validation"):
    folds.open_pool(clash.__getitem__)


def test_the_split_file_is_written_once_then_reused_as_written(tmp_path, cache_dir):
  path = tmp_path / "splits_final.json"
  config = _config(cache_dir, path, fold=1)
  val = datasets.open_split(config, "validation")
  written = json.loads(path.read_text())
  assert written == folds.make_splits(POOL, 3)
  _same_images(val, written[1]["val"], config)
  _same_images(datasets.open_split(config, "train"), written[1]["train"], config)
  assert len(datasets.open_split(config, "test")) == TINY_FIELDS["data.split_sizes"][2]

  # An edited fold: the run validates on exactly the cases it names, in its order.
  edited = [dict(fold) for fold in written]
  edited[1] = {"val": ["validation_00002", "train_00005"]}
  edited[1]["train"] = [c for c in POOL if c not in edited[1]["val"]]
  path.write_text(json.dumps(edited))
  _same_images(
    datasets.open_split(config, "validation"), ["validation_00002", "train_00005"], config
  )
  _same_images(datasets.open_split(config, "train"), edited[1]["train"], config)
  assert json.loads(path.read_text()) == edited  # reused, not rewritten


def _splits_with(change):
  splits = folds.make_splits(POOL, 3)
  change(splits)
  return splits


BAD_FILES = {
  "unknown": (
    lambda s: s[1]["val"].append("case_x"),
    "fold 1: 1 case id(s) not in the data's train and validation splits: case_x",
  ),
  "overlap": (
    lambda s: s[0]["train"].append(s[0]["val"][0]),
    "fold 0: 1 case id(s) both in train and in val",
  ),
  "missing": (
    lambda s: s[2].update(train=s[2]["train"][7:]),
    "fold 2: 7 case id(s) of the data in neither train nor val: ",
  ),
  "fewer_folds": (lambda s: s.pop(), "holds 2 fold(s), but config.train.num_folds=3"),
  "not_nnunet": (lambda s: s[0].pop("val"), 'must be a JSON list with one {"train"'),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_split_file_that_disagrees_with_the_data_is_one_error(tmp_path, cache_dir, case):
  change, message = BAD_FILES[case]
  path = tmp_path / "splits.json"
  splits = _splits_with(change)
  path.write_text(json.dumps(splits))
  with pytest.raises(ConfigError) as error:
    datasets.open_split(_config(cache_dir, path, fold=0), "train")
  text = str(error.value)
  assert str(path) in text and message in text and "\n" not in text
  if case == "missing":  # five ids named, the rest counted
    assert text.endswith("and 2 more.") and text.count("train_") == 5


def test_a_split_file_that_is_not_json_names_the_file(tmp_path, cache_dir):
  path = tmp_path / "splits.json"
  path.write_text("[{")
  with pytest.raises(ConfigError, match=f"{path} is not valid JSON"):
    datasets.open_split(_config(cache_dir, path), "validation")


@pytest.fixture(scope="module")
def cross_validation(tmp_path_factory, cache_dir):
  """Folds 0 and 1 of a 2-fold cross-validation of the tiny dataset, in ``cv/fold_<k>``."""
  cv = tmp_path_factory.mktemp("cv")
  for fold in (0, 1):
    run_program(cv / f"fold_{fold}", cache_dir, **{"train.fold": fold, "train.num_folds": 2})
  return cv


def _default_splits_file(cache_dir):
  return cache_dir / "splits" / "imbalanced_shapes_multiclass_32px_48-16-16_seed0.json"


@tiers.SLOW
def test_fold_runs_train_and_validate_on_the_split_file(cross_validation, cache_dir):
  path = _default_splits_file(cache_dir)
  splits = json.loads(path.read_text())
  assert splits == folds.make_splits(POOL, 2)
  for fold in (0, 1):
    workdir = cross_validation / f"fold_{fold}"
    record = json.loads((workdir / "split.json").read_text())
    assert record == {"fold": fold, "num_folds": 2, "splits_file": str(path), **splits[fold]}
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert {r["num_images"] for r in records if r["split"] == "val"} == {(TRAIN + VAL) // 2}
    summary = json.loads((workdir / "summary.json").read_text())["test"]
    assert summary["num_images"] == TINY_FIELDS["data.split_sizes"][2]  # the test split as is


def _inputs(tmp_path):
  inputs = tmp_path / "new"
  inputs.mkdir()
  rng = np.random.default_rng(3)
  for name, shape in (("wide", (40, 52, 3)), ("square", (32, 32, 3))):
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(inputs / f"{name}.png")
  return inputs


def _probabilities(out, name):
  return np.load(out / f"{name}.npz")["probabilities"]


@tiers.SLOW
def test_an_ensemble_averages_its_members_probabilities(cross_validation, tmp_path):
  inputs = _inputs(tmp_path)
  ensemble = tmp_path / "ensemble"
  command = [
    sys.executable,
    "-m",
    "train.predict",
    f"--workdir={cross_validation}",  # a cross-validation directory: its fold_* runs
    f"--input={inputs}",
    f"--out={ensemble}",
    "--save_probabilities",
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  members = []
  for fold in (0, 1):
    out = tmp_path / f"fold_{fold}"
    prediction.predict(
      str(cross_validation / f"fold_{fold}"), str(inputs), str(out), save_probabilities=True
    )
    members.append(out)
  folds_dirs = [str(cross_validation / f"fold_{fold}") for fold in (0, 1)]
  prep = runs.read_run(folds_dirs[0]).preprocessing
  for name, shape in (("wide", (40, 52)), ("square", (32, 32))):
    own = [_probabilities(out, name) for out in members]
    assert not np.allclose(own[0], own[1], atol=1e-3)  # two different models
    mean = _probabilities(ensemble, name)
    assert mean.shape == shape + (len(own[0][0, 0]),)
    np.testing.assert_allclose(mean, (own[0] + own[1]) / 2, rtol=0, atol=2e-6)
    # The masks are post-processed with the rules chosen on both folds' validation images.
    mask = np.asarray(Image.open(ensemble / f"{name}.png"))
    chosen = postprocess.for_ensemble(folds_dirs, num_classes=mean.shape[-1], ignore_index=None)
    expected = mean.argmax(-1)
    if chosen is not None:
      pixel = postprocess.original_grid_spacing(prep, shape, None)
      expected = chosen.apply(expected, spacing=pixel)
    np.testing.assert_array_equal(mask, expected)
  log = (cross_validation / "log.txt").read_text()
  assert "with an ensemble of 2 runs" in log
  assert str(cross_validation / "fold_0") in log and str(cross_validation / "fold_1") in log


@pytest.mark.parametrize(
  ("field", "edit", "message"),
  [
    ("class_names", lambda r: r["class_names"].__setitem__(1, "renamed"), "its class names"),
    ("preprocessing", lambda r: r["preprocessing"].update(mean=[0.1] * 3), "(mean)"),
  ],
)
@tiers.SLOW
def test_a_member_that_differs_is_refused_by_name(cross_validation, tmp_path, field, edit, message):
  other = tmp_path / "other"
  shutil.copytree(cross_validation / "fold_1", other)
  record = json.loads((other / "inference.json").read_text())
  edit(record)
  (other / "inference.json").write_text(json.dumps(record))
  with pytest.raises(ConfigError) as error:
    prediction.predict(
      [str(cross_validation / "fold_0"), str(other)], str(_inputs(tmp_path)), str(tmp_path / "o")
    )
  text = str(error.value)
  assert text.startswith(f"{other} cannot join an ensemble") and message in text
  assert not (tmp_path / "o").exists()  # refused before anything is written
