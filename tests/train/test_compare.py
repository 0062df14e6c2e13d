"""The study: loss specs, and a tiny two-loss, one-seed study whose report matches its runs."""

import json
import os

import pytest

from train import compare
from train.configs import compare as compare_config

from tests.train.conftest import make_tiny


@pytest.mark.parametrize("spec, expected", [
    ("ce", ("ce", {})),
    ("ce+logdice", ("ce+dice", {"log": True})),
    ("ce+kl(temperature=10, weight=0.5)", ("ce+kl", {"temperature": 10, "weight": 0.5})),
    ("dice(squared=True)", ("dice", {"squared": True})),
])
def test_parse_loss(spec, expected):
  assert compare.parse_loss(spec) == expected


@pytest.mark.parametrize("spec, message", [
    ("ce+kl(temperature=hot)", "Python literal"),
    ("ce kl", "cannot parse"),
])
def test_parse_loss_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    compare.parse_loss(spec)


def test_unknown_option_in_a_spec_is_named():
  base = compare_config.get_config().base
  with pytest.raises(ValueError, match="unknown option 'temprature'"):
    compare.run_config(base, "ce+kl(temprature=2)", 0)


def _tiny_study_config(cache_dir):
  config = compare_config.get_config()
  make_tiny(config.base, cache_dir)
  config.losses = ("ce", "ce+dice(log=True)")
  config.seeds = 1
  config.sweep.weights = (0.0, 1.0)
  config.sweep.temperatures = (1.0,)
  return config


def test_tiny_study_report_matches_the_runs(tmp_path, cache_dir):
  report = compare.run_study(_tiny_study_config(cache_dir), str(tmp_path))
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk == json.loads(json.dumps(report))
  assert set(report["losses"]) == {"ce", "ce+dice(log=True)"}
  for label, row in report["losses"].items():
    assert {"dice", "dice_std", "iou", "hd95", "proportion_mae", "proportion_bias",
            "per_class", "runs"} <= set(row)
    (run,) = row["runs"]
    summary = json.loads(open(os.path.join(run["workdir"], "summary.json")).read())["test"]
    for key in ("dice", "iou", "hd95", "proportion_mae", "proportion_bias"):
      assert row[key] == summary[key] == run[key]
    assert row["dice_std"] == 0.0
    assert row["per_class"]["organ"]["dice"] == summary["per_class"]["organ"]["dice"]
    foreground = [v["dice"] for k, v in row["per_class"].items() if k != "background"]
    assert row["dice"] == pytest.approx(sum(foreground) / len(foreground))  # not the loss term
  assert [p["weight"] for p in report["sweep"]["points"]] == [0.0, 1.0]
  for path in report["figures"].values():
    assert os.path.getsize(path) > 1000
  markdown = (tmp_path / "report.md").read_text()
  assert "Paired comparison against `ce`" in markdown and "ce+dice(log=True)" in markdown

  rerun = compare.run_study(_tiny_study_config(cache_dir), str(tmp_path))  # finished runs
  assert rerun["losses"] == report["losses"]
