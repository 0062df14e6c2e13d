"""Early stopping end to end: the config fields, a tiny run that stops at the step its
validation schedule says, a finished early-stopped run that trains nothing when run again,
and a run preempted between validations that resumes to the same stop."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import tiers
from tests.train.helpers import REPO, run_program, tiny_flags
from train import config_checks
from train.configs import base
from train.user_errors import ConfigError

# With a learning rate of 1e-9 the parameters hardly move, and no Dice can gain 0.01: the
# first validation (step 10) is the best, the next two are not, so the run stops at step
# 30 of 60. Logging every 4 steps leaves steps 29-30 as a partial interval at the stop.
STOPS_EARLY = {
  "train.steps": 60,
  "train.eval_every": 10,
  "train.checkpoint_every": 10,
  "train.log_every": 4,
  "train.patience": 2,
  "train.min_delta": 0.01,
  "optimizer.learning_rate": 1e-9,
}
STOP_STEP = 30


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _without_timing(records):
  return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


@pytest.mark.parametrize(
  "field, value, message",
  [
    ("patience", -1, "config.train.patience must be an integer in [0, "),
    ("min_delta", -0.1, "config.train.min_delta must be in [0, 1), got -0.1"),
    ("min_delta", 1.0, "config.train.min_delta must be in [0, 1), got 1.0"),
    ("min_delta", float("nan"), "config.train.min_delta must be a finite number"),
  ],
)
def test_bad_early_stopping_fields_are_named(field, value, message):
  config = base.get_config()
  with config.unlocked():
    config.train[field] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    config_checks.check_config(config)


def test_defaults_never_stop_early_and_older_configs_pass():
  config = base.get_config()
  assert (config.train.patience, config.train.min_delta) == (0, 0.0)
  config_checks.check_config(config)
  del config.train["patience"], config.train["min_delta"]  # a run written before them
  config_checks.check_config(config)


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, cache_dir):
  workdir = tmp_path_factory.mktemp("early") / "run"
  run_program(workdir, cache_dir, **STOPS_EARLY)
  return workdir


@tiers.SLOW
def test_run_stops_at_the_step_its_validations_say(stopped_run, cache_dir):
  summary = json.loads((stopped_run / "summary.json").read_text())
  assert summary["stopped_early"] is True
  assert summary["steps_trained"] == STOP_STEP
  records = _records(stopped_run)
  val = {r["step"]: r["dice"] for r in records if r["split"] == "val"}
  assert list(val) == [10, 20, 30]
  # The tested checkpoint is the best by validation Dice, and it still exists.
  assert summary["best_step"] == summary["test"]["checkpoint_step"]
  assert val[summary["best_step"]] == max(val.values())
  assert (stopped_run / "checkpoints" / str(summary["best_step"])).is_dir()
  assert max(int(name) for name in os.listdir(stopped_run / "checkpoints")) == STOP_STEP
  # No step trained after the stop, and the partial interval 29-30 is logged.
  train = [r["step"] for r in records if r["split"] == "train"]
  assert train == [*range(4, 29, 4), 30]
  assert max(r["step"] for r in records) == STOP_STEP
  assert [r["step"] for r in records if r["split"] == "test"] == [STOP_STEP]

  again = run_program(stopped_run, cache_dir, **STOPS_EARLY)  # finished: reports only
  assert "test metrics" in again.stdout
  assert _records(stopped_run) == records
  assert json.loads((stopped_run / "summary.json").read_text()) == summary


@tiers.SLOW
def test_run_preempted_between_validations_resumes_to_the_same_stop(
  stopped_run, tmp_path, cache_dir
):
  workdir = tmp_path / "preempted"
  command = [sys.executable, "-m", "train", f"--workdir={workdir}"]
  process = subprocess.Popen(
    command + tiny_flags(cache_dir, **STOPS_EARLY),
    cwd=REPO,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "10").exists():
    assert process.poll() is None and time.time() < deadline, "the run ended too soon"
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  _, err = process.communicate(timeout=300)
  assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
  step = int(re.search(r"stopped by SIGTERM after step (\d+);", err).group(1))
  # After the best validation and before the stop: what the tracker counted must survive.
  assert 10 < step < STOP_STEP

  run_program(workdir, cache_dir, **STOPS_EARLY)
  resumed, straight = (json.loads((w / "summary.json").read_text()) for w in (workdir, stopped_run))
  for key in ("steps_trained", "best_step", "stopped_early", "test"):
    assert resumed[key] == straight[key], key
  assert _without_timing(_records(workdir)) == _without_timing(_records(stopped_run))
