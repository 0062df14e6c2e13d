"""The study: loss specs, a tiny two-loss study whose report matches its runs, and a
study stopped with Ctrl-C that resumes to the same report."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import stats

from tests import tiers
from tests.train.helpers import REPO, TINY_FIELDS, make_tiny
from train import compare, datasets, loop
from train.configs import compare as compare_config


@pytest.mark.parametrize(
  "spec, expected",
  [
    ("ce", ("ce", {})),
    ("ce+logdice", ("ce+dice", {"log": True})),
    ("ce+kl(temperature=10, weight=0.5)", ("ce+kl", {"temperature": 10, "weight": 0.5})),
    ("dice(squared=True)", ("dice", {"squared": True})),
  ],
)
def test_parse_loss(spec, expected):
  assert compare.parse_loss(spec) == expected


@pytest.mark.parametrize(
  "spec, message",
  [
    ("ce+kl(temperature=hot)", "Python literal"),
    ("ce kl", "cannot parse"),
  ],
)
def test_parse_loss_errors(spec, message):
  with pytest.raises(ValueError, match=message):
    compare.parse_loss(spec)


def test_unknown_option_in_a_spec_is_named():
  base = compare_config.get_config().base
  with pytest.raises(ValueError, match="unknown option 'temprature'"):
    compare.run_config(base, "ce+kl(temprature=2)", 0)


def test_tuning_grid_follows_the_term():
  tune = compare_config.get_config().tune
  assert len(compare.tuning_grid("ce+kl", tune)) == 6  # 3 weights x 2 temperatures
  assert compare.tuning_grid("ce+dice", tune) == [
    {"weight": w, "temperature": None} for w in (0.1, 1.0, 10.0)
  ]
  assert compare.tuning_grid("ce", tune) == []
  assert compare.tuning_grid("ce+l1(weight=1.0,temperature=10.0)", tune) == []
  assert {"weight": 1.0, "temperature": 10.0} in compare.tuning_grid("ce+l1", tune)


def _tiny_study_config(cache_dir):
  config = compare_config.get_config()
  make_tiny(config.base, cache_dir)
  config.losses = ("ce", "ce+l1")
  config.seeds = 2
  config.tune.weights = (0.1, 1.0)
  config.tune.temperatures = (10.0,)
  config.bootstrap_samples = 500
  return config


@tiers.SLOW
def test_tuning_never_opens_the_test_split(tmp_path, cache_dir, monkeypatch):
  config = _tiny_study_config(cache_dir)
  opened = []
  real = datasets.open_split

  def guarded(run_config, split):
    opened.append(split)
    if split == "test":
      raise AssertionError("the test split was opened")
    return real(run_config, split)

  monkeypatch.setattr(datasets, "open_split", guarded)
  tuned = compare.tune(config, str(tmp_path))
  assert set(opened) == {"train", "validation"}
  (points,) = [t["grid"] for t in tuned.values()]
  assert [p["weight"] for p in points] == [0.1, 1.0]
  summaries = [json.loads(open(os.path.join(p["workdir"], "summary.json")).read()) for p in points]
  assert all(set(s) == {"validation", *compare.TRAINING_KEYS} for s in summaries)
  assert [s["validation"]["dice"] for s in summaries] == [p["val_dice"] for p in points]
  # Patience 0: every point trains all its steps and records the checkpoint it reports.
  for point, summary in zip(points, summaries, strict=True):
    assert (point["steps_trained"], point["stopped_early"]) == (6, False)
    assert point["best_step"] == summary["validation"]["checkpoint_step"] in (3, 6)
  best = max(points, key=lambda p: p["val_dice"])
  assert tuned["ce+l1"]["chosen"] == {"weight": best["weight"], "temperature": 10.0}
  # The guard itself works: an ordinary run reads the test split and trips it.
  run = compare.run_config(config.base, "ce", 0)
  with pytest.raises(AssertionError, match="test split was opened"):
    loop.train_and_evaluate(run, str(tmp_path / "ordinary"))


def _stopping_study_config(cache_dir):
  """The tiny study with early stopping: no Dice gains 0.9, so every run (tuning points
  too) stops at its second validation, step 6 of 12."""
  config = _tiny_study_config(cache_dir)
  config.base.train.steps = 12
  config.base.train.patience = 1
  config.base.train.min_delta = 0.9
  return config


@tiers.SLOW
def test_tiny_study_report_matches_the_runs(tmp_path, cache_dir):
  report = compare.run_study(_stopping_study_config(cache_dir), str(tmp_path))
  on_disk = json.loads((tmp_path / "report.json").read_text())
  assert on_disk == json.loads(json.dumps(report))
  assert set(report["losses"]) == {"ce", "ce+l1"}
  chosen = report["tuning"]["ce+l1"]["chosen"]
  assert report["losses"]["ce+l1"]["setting"] == chosen
  for row in report["losses"].values():
    assert {
      "dice",
      "dice_std",
      "iou",
      "hd95",
      "detection_rate",
      "ece",
      "proportion_mae",
      "proportion_bias",
      "per_class",
      "runs",
    } <= set(row)
    assert len(row["runs"]) == 2
    summaries = [
      json.loads(open(os.path.join(r["workdir"], "summary.json")).read())["test"]
      for r in row["runs"]
    ]
    assert row["dice"] == pytest.approx(np.mean([s["dice"] for s in summaries]))
    assert row["per_class"]["organ"]["dice"] == pytest.approx(
      np.mean([s["per_class"]["organ"]["dice"] for s in summaries])
    )
    best_steps = [s["checkpoint_step"] for s in summaries]
    assert [r["best_step"] for r in row["runs"]] == best_steps
    assert (row["best_step"], row["best_step_std"]) == pytest.approx(
      (np.mean(best_steps), np.std(best_steps))
    )
    assert [(r["steps_trained"], r["stopped_early"]) for r in row["runs"]] == [(6, True)] * 2
    assert (row["steps_trained"], row["steps_trained_std"]) == (6, 0)
  for point in report["tuning"]["ce+l1"]["grid"]:
    assert (point["steps_trained"], point["stopped_early"]) == (6, True)
  config = json.loads(
    open(os.path.join(report["losses"]["ce+l1"]["runs"][0]["workdir"], "config.json")).read()
  )
  assert (config["loss"]["weight"], config["loss"]["temperature"]) == (
    chosen["weight"],
    chosen["temperature"],
  )

  # The paired comparison recomputed from the per-image files.
  vs_ce = report["losses"]["ce+l1"]["vs_ce"]
  assert {"dice_diff", "ci95", "p_value", "n", "p_holm", "per_class"} <= set(vs_ce)

  def per_image(label, seed):
    run = report["losses"][label]["runs"][seed]["workdir"]
    data = np.load(os.path.join(run, "test_per_image.npz"))
    dice = np.where(data["present"], data["dice"], np.nan)[:, 1:]
    return np.nanmean(np.where(np.isnan(dice).all(1, keepdims=True), 0, dice), axis=1), data[
      "present"
    ][:, 1:].any(1)

  diffs, keep = [], None
  for seed in range(2):
    (ours, has), (ref, _) = per_image("ce+l1", seed), per_image("ce", seed)
    diffs.append(ours - ref)
    keep = has
  per_image_diff = np.mean(diffs, axis=0)[keep]
  assert vs_ce["n"] == int(keep.sum())
  assert vs_ce["dice_diff"] == pytest.approx(per_image_diff.mean())
  if np.any(per_image_diff != 0):
    assert vs_ce["p_value"] == pytest.approx(stats.wilcoxon(per_image_diff).pvalue)
  assert vs_ce["ci95"][0] <= vs_ce["dice_diff"] <= vs_ce["ci95"][1]

  for path in report["figures"].values():
    assert os.path.getsize(path) > 1000
  markdown = (tmp_path / "report.md").read_text()
  assert "Paired against `ce`" in markdown and "chosen on the validation split" in markdown
  assert "steps (best / trained)" in markdown and "4 of 4 test runs stopped early" in markdown
  ce_row = next(line for line in markdown.splitlines() if line.startswith("| ce |"))
  assert ce_row.endswith(f"| {compare._steps_cell(report['losses']['ce'])} |")
  assert compare._steps_cell(report["losses"]["ce"]).endswith(" / 6")

  rerun = compare.run_study(_stopping_study_config(cache_dir), str(tmp_path))  # finished runs
  assert rerun["losses"] == report["losses"]


def _study_command(workdir, cache_dir):
  base = {
    **TINY_FIELDS,
    "data.cache_dir": cache_dir,
    "train.steps": 30,
    "train.eval_every": 30,
    "train.checkpoint_every": 5,
    "train.log_every": 5,
  }
  return [
    sys.executable,
    "-m",
    "train.compare",
    f"--workdir={workdir}",
    "--config.losses=('ce','dice')",
    "--config.seeds=1",
    "--config.bootstrap_samples=200",
    *[f"--config.base.{k}={str(v).replace(' ', '')}" for k, v in base.items()],
  ]


def _without_paths(report):
  losses = json.loads(json.dumps(report["losses"]))
  for row in losses.values():
    for run in row["runs"]:
      run.pop("workdir")
  return losses


@tiers.SLOW
def test_study_stopped_by_ctrl_c_resumes_to_the_uninterrupted_report(tmp_path, cache_dir):
  straight = subprocess.run(
    _study_command(tmp_path / "straight", cache_dir), cwd=REPO, capture_output=True, text=True
  )
  assert straight.returncode == 0, straight.stderr[-3000:]

  workdir = tmp_path / "stopped"
  process = subprocess.Popen(
    _study_command(workdir, cache_dir),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  first_run = workdir / "runs" / "ce" / "seed_0"
  deadline = time.time() + 300
  while not (first_run / "checkpoints" / "5").exists():
    assert process.poll() is None and time.time() < deadline, "the study ended too soon"
    time.sleep(0.05)
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGINT, err[-3000:]
  assert re.search(r"stopped by SIGINT after step \d+; .*Run the same command", err)
  assert not (workdir / "report.json").exists()

  resumed = subprocess.run(
    _study_command(workdir, cache_dir), cwd=REPO, capture_output=True, text=True
  )
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  reports = [json.loads((w / "report.json").read_text()) for w in (tmp_path / "straight", workdir)]
  assert _without_paths(reports[1]) == _without_paths(reports[0])
  assert {row["steps_trained"] for row in reports[0]["losses"].values()} == {30}
  markdown = (workdir / "report.md").read_text()
  assert "No early stopping (train.patience=0): every run trained all 30 steps" in markdown
