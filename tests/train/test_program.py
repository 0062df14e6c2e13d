"""The training program end to end, as a user runs it (subprocesses, real files)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import tiers
from tests.train.helpers import REPO, SHARES_TINY_RUN, run_program, tiny_flags
from train.loop import flatten_summary

SUMMARY_KEYS = {
  "dice",
  "iou",
  "hd95",
  "precision",
  "recall",
  "proportion_mae",
  "proportion_bias",
  "per_class",
}


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _without_timing(records):
  return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


@tiers.SLOW
@SHARES_TINY_RUN
def test_summary_dice_is_the_mean_over_the_images_holding_the_class(finished_tiny_run):
  summary = json.loads((finished_tiny_run / "summary.json").read_text())["test"]
  per_image = np.load(finished_tiny_run / "test_per_image.npz")
  names = list(summary["per_class"])
  assert (
    per_image["dice"].shape == per_image["present"].shape == (summary["num_images"], len(names))
  )
  for k, name in enumerate(names):
    present = per_image["present"][:, k]
    expected = per_image["dice"][present, k].mean() if present.any() else None
    assert summary["per_class"][name]["dice"] == pytest.approx(expected, rel=1e-5)
    assert summary["per_class"][name]["num_present"] == present.sum()


@SHARES_TINY_RUN
def test_few_step_run_writes_every_output(tmp_path, cache_dir, finished_tiny_run):
  workdir = tmp_path / "run"
  shutil.copytree(finished_tiny_run, workdir)
  summary = json.loads((workdir / "summary.json").read_text())
  assert SUMMARY_KEYS <= set(summary["test"])
  foreground = [v for k, v in summary["test"]["per_class"].items() if k != "background"]
  for key in ("dice", "iou", "hd95", "proportion_mae"):
    assert summary["test"][key] == pytest.approx(sum(c[key] for c in foreground) / 4)
  assert set(summary["test"]["per_class"]) == {"background", "organ", "cyst", "vessel", "nodule"}
  for path in summary["plots"].values():
    assert os.path.getsize(path) > 1000
  records = _records(workdir)
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == [2, 4, 6]
  assert {"loss", "term/ce", "term/kl", "grad_norm", "learning_rate", "loss_weight"} <= set(
    train[0]
  )
  assert [r["step"] for r in records if r["split"] == "val"] == [3, 6]
  assert [r["step"] for r in records if r["split"] == "test"] == [6]
  assert "dice/organ" in records[-1]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert any(name.startswith("events") for name in os.listdir(workdir / "tensorboard"))

  again = run_program(workdir, cache_dir)  # finished: reports, does not train again
  assert "test metrics" in again.stdout
  assert _records(workdir) == records

  evaluated = subprocess.run(
    [sys.executable, "-m", "train.evaluate", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  predictions = workdir / "predictions" / "test"
  assert len(list(predictions.glob("*.png"))) == 16
  assert json.loads((predictions / "summary.json").read_text())["dice"] == pytest.approx(
    summary["test"]["dice"]
  )


def _start(workdir, cache_dir, overrides):
  command = [
    sys.executable,
    "-m",
    "train",
    f"--workdir={workdir}",
    *tiny_flags(cache_dir, **overrides),
  ]
  return subprocess.Popen(
    command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )


def _wait_for(path, process, timeout=300):
  deadline = time.time() + timeout
  while not path.exists():
    assert process.poll() is None and time.time() < deadline, f"run ended before {path}"
    time.sleep(0.05)


@tiers.SLOW
def test_killed_or_stopped_run_resumes_to_the_uninterrupted_result(tmp_path, cache_dir):
  # Patch training (random positions, foreground oversampling) and sliding-window
  # evaluation: the data iterator's state must carry the patch stream across the stop.
  overrides = {
    "train.steps": 120,
    "train.checkpoint_every": 10,
    "train.eval_every": 60,
    "train.log_every": 10,
    "data.patch_size": (16, 16),
  }
  run_program(tmp_path / "straight", cache_dir, **overrides)
  straight = json.loads((tmp_path / "straight" / "summary.json").read_text())["test"]

  # SIGKILL: nothing after the last periodic checkpoint survives, and nothing is needed.
  killed = tmp_path / "killed"
  process = _start(killed, cache_dir, overrides)
  _wait_for(killed / "checkpoints" / "10", process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert not (killed / "summary.json").exists()

  # SIGTERM (a scheduler's preemption): the step in progress ends, is saved, usually in
  # the middle of a log interval, and the exit status says which signal stopped the run.
  stopped = tmp_path / "stopped"
  process = _start(stopped, cache_dir, overrides)
  _wait_for(stopped / "checkpoints" / "10", process)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
  message = err.strip().splitlines()[-1]
  step = int(re.fullmatch(r"stopped by SIGTERM after step (\d+); .*", message).group(1))
  assert f"{stopped / 'checkpoints' / str(step)}" in message
  assert message.endswith("Run the same command to resume.") and "Traceback" not in err
  assert (stopped / "checkpoints" / str(step)).is_dir()
  assert not (stopped / "summary.json").exists()

  for workdir in (killed, stopped):
    run_program(workdir, cache_dir, **overrides)
    resumed = json.loads((workdir / "summary.json").read_text())["test"]
    assert resumed == straight, workdir.name
    assert _without_timing(_records(workdir)) == _without_timing(_records(tmp_path / "straight"))


def test_bad_config_fails_before_work(tmp_path, cache_dir):
  result = run_program(tmp_path / "bad", cache_dir, check=False, **{"loss.name": "ce+dicee"})
  assert result.returncode != 0
  assert "ce+dicee" in result.stderr and "ce+kl" in result.stderr
  assert not (tmp_path / "bad" / "checkpoints").exists()


def test_unknown_config_field_is_one_line_naming_it(tmp_path, cache_dir):
  result = run_program(tmp_path / "typo", cache_dir, "--config.train.bach_size=3", check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
    "error: --config.train.bach_size: the config has no field 'train.bach_size' (did you "
    'mean "batch_size"?); every field is listed in train/configs/base.py.'
  ]


@tiers.SLOW
def test_a_step_larger_than_the_device_is_refused_before_anything_is_allocated(tmp_path, cache_dir):
  # The second convolution's kernel alone would need about 1.2 TB.
  result = run_program(tmp_path / "oom", cache_dir, check=False, **{"model.features": 2**17})
  assert result.returncode == 2
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith("error: config.train.batch_size=4 (4 per device) of 32x32")
  assert "model.features=131072" in message and "lower model.features" in message
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "oom" / "checkpoints").exists()


@tiers.SLOW
def test_workdir_with_another_config_is_refused(tmp_path, cache_dir):
  workdir = tmp_path / "run"
  run_program(
    workdir, cache_dir, **{"train.steps": 2, "train.eval_every": 2, "train.checkpoint_every": 2}
  )
  result = run_program(
    workdir,
    cache_dir,
    check=False,
    **{
      "train.steps": 2,
      "train.eval_every": 2,
      "train.checkpoint_every": 2,
      "optimizer.learning_rate": 0.1,
    },
  )
  assert result.returncode != 0
  assert "optimizer.learning_rate" in result.stderr and "--overwrite" in result.stderr


@tiers.SLOW
def test_diverging_learning_rate_stops_with_a_clear_message(tmp_path, cache_dir):
  workdir = tmp_path / "diverged"
  result = run_program(
    workdir,
    cache_dir,
    check=False,
    **{
      "optimizer.learning_rate": 1e30,
      "optimizer.grad_clip_norm": 0.0,
      "train.max_nonfinite_steps": 3,
      "train.steps": 40,
      "train.checkpoint_every": 2,
      "train.eval_every": 40,
    },
  )
  assert result.returncode == 1, result.stderr[-3000:]
  assert "non-finite loss or gradient for 3 consecutive steps" in result.stderr
  assert "last good checkpoint is step" in result.stderr
  assert not (workdir / "summary.json").exists()
  skipped = [r["nonfinite_steps"] for r in _records(workdir) if r["split"] == "train"]
  assert all(value is not None for value in skipped)


@tiers.SLOW
@SHARES_TINY_RUN
def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(
  tmp_path, cache_dir, finished_tiny_run
):
  workdir = tmp_path / "run"
  shutil.copytree(finished_tiny_run, workdir)
  finished = json.loads((workdir / "summary.json").read_text())["test"]
  (workdir / "summary.json").unlink()  # as if the run had been killed after its last save
  data_files = sorted(
    (workdir / "checkpoints" / "6").glob("state/ocdbt.process_0/d/*"), key=os.path.getsize
  )
  with open(data_files[-1], "r+b") as f:  # cut the largest array file in half
    f.truncate(os.path.getsize(data_files[-1]) // 2)

  result = run_program(workdir, cache_dir)
  assert "checkpoint 6 cannot be read" in result.stderr
  assert (workdir / "corrupt_checkpoints" / "6").is_dir()
  resumed = json.loads((workdir / "summary.json").read_text())["test"]
  # Equal up to float32 rounding: the evaluation is compiled afresh in this process.
  resumed, finished = flatten_summary(resumed), flatten_summary(finished)
  # A class absent from every test image has no Dice (None) in both runs.
  assert {k for k, v in resumed.items() if v is None} == {
    k for k, v in finished.items() if v is None
  }
  assert {k: v for k, v in resumed.items() if v is not None} == pytest.approx(
    {k: v for k, v in finished.items() if v is not None}, rel=1e-6
  )


ABSL_INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


@tiers.SLOW
@SHARES_TINY_RUN
def test_the_console_shows_results_and_the_workdir_log_the_rest(
  tmp_path, cache_dir, finished_tiny_run
):
  workdir = tmp_path / "run"
  shutil.copytree(finished_tiny_run, workdir)
  (workdir / "log.txt").unlink()
  again = run_program(workdir, cache_dir)  # finished: opens every split, reports, exits
  evaluated = subprocess.run(
    [sys.executable, "-m", "train.evaluate", f"--workdir={workdir}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert "test metrics" in again.stdout and '"dice"' in evaluated.stdout
  for console in (again.stderr, evaluated.stderr):
    assert "Reusing dataset" not in console and "Using custom data configuration" not in console
    assert not ABSL_INFO_LINE.search(console), console[-2000:]
  log = (workdir / "log.txt").read_text()
  assert log.count("Reusing dataset") >= 4  # three splits for train, one for evaluate
  assert ABSL_INFO_LINE.search(log) and "evaluated 16 image(s)" in log
