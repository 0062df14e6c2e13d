"""Data parallelism over devices and processes: placement rules, and real runs on 4
simulated CPU devices and on two processes talking over loopback."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from jax.sharding import PartitionSpec
from PIL import Image

from tests import tiers
from tests.train.helpers import REPO, SHARES_TINY_RUN, make_tiny, tiny_flags
from train import config_checks, datasets, parallel
from train.configs import default

FOUR_DEVICES = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
NO_XLA_FLAGS = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


@pytest.mark.parametrize(
  "shape, expected",
  [
    ((3, 3, 16, 32), PartitionSpec(None, None, None, "data")),  # largest divisible axis
    ((3, 3, 32, 6), PartitionSpec(None, None, "data")),  # 6 is not divisible by 4
    ((5, 7, 9, 11), PartitionSpec()),  # no axis divisible: replicated
    ((4,), PartitionSpec()),  # too small to be worth splitting
  ],
)
def test_fsdp_splits_the_largest_axis_the_device_count_divides(shape, expected):
  min_size = 16
  assert parallel._fsdp_spec(shape, 4, min_size) == expected


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "2"])
def test_cpu_devices_must_be_a_positive_integer(value):
  with pytest.raises(ValueError, match=r"config\.parallel\.cpu_devices must be a positive"):
    parallel.split_cpu(value)


@pytest.mark.parametrize("value", [0, -2])
def test_config_check_rejects_cpu_devices_below_one(value):
  config = default.get_config()  # the typed ConfigDict itself refuses non-integers
  config.parallel.cpu_devices = value
  with pytest.raises(ValueError, match=r"config\.parallel\.cpu_devices must be a positive"):
    config_checks.check_config(config)


_SPLIT = """
import jax
from train import parallel
parallel.split_cpu(2)
print(jax.device_count())
"""


@tiers.SLOW
def test_split_cpu_sets_the_device_count_unless_xla_flags_already_do():
  def devices(env):
    done = subprocess.run(
      [sys.executable, "-c", _SPLIT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout)

  assert devices(NO_XLA_FLAGS) == 2
  assert devices(FOUR_DEVICES) == 4


def test_batch_size_must_split_evenly_over_devices():
  config = default.get_config()
  config.train.batch_size = 6
  with pytest.raises(
    ValueError,
    match=r"batch_size=6 is not divisible by the 4 devices.*"
    r"e\.g\. 8",
  ):
    config_checks.check_devices(config, 4, 1)
  config_checks.check_devices(config, 2, 1)


def test_distributed_flags_go_together():
  with pytest.raises(ValueError, match="go together.*num_processes=None"):
    parallel.initialize(coordinator_address="localhost:1234", num_processes=None, process_id=0)
  with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, 2\)"):
    parallel.initialize(coordinator_address="localhost:1234", num_processes=2, process_id=2)


@tiers.SLOW
def test_steps_on_four_devices_match_one_device_replicated_and_fsdp():
  result = subprocess.run(
    [sys.executable, "-m", "tests.train.device_steps"],
    cwd=REPO,
    env=FOUR_DEVICES,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  runs = json.loads(result.stdout)
  assert runs["single"]["devices"] == 4
  assert runs["fsdp"]["split_leaves"] > 10 and runs["replicated"]["split_leaves"] == 0
  for placement in ("replicated", "fsdp"):
    np.testing.assert_allclose(runs[placement]["losses"], runs["single"]["losses"], rtol=1e-5)
    for ours, single in zip(runs[placement]["params"], runs["single"]["params"], strict=True):
      np.testing.assert_allclose(ours, single, atol=1e-4)


@tiers.SLOW
@SHARES_TINY_RUN
def test_program_on_four_devices_matches_one_device(tmp_path, cache_dir, finished_tiny_run):
  # The CPU split into 4 devices by the config (parallel.cpu_devices), as a user does it.
  workdir = tmp_path / "four"
  command = [
    sys.executable,
    "-m",
    "train",
    f"--workdir={workdir}",
    *tiny_flags(cache_dir, **{"parallel.cpu_devices": 4}),
  ]
  result = subprocess.run(
    command, cwd=REPO, env=NO_XLA_FLAGS, capture_output=True, text=True, timeout=600
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "4 device(s)" in (workdir / "log.txt").read_text()
  np.testing.assert_allclose(_train_losses(workdir), _train_losses(finished_tiny_run), rtol=1e-5)
  four = json.loads((workdir / "summary.json").read_text())["test"]
  one = json.loads((finished_tiny_run / "summary.json").read_text())["test"]
  assert four["dice"] == pytest.approx(one["dice"], abs=1e-3)


def test_batch_size_that_the_devices_do_not_divide_fails_before_work(tmp_path, cache_dir):
  command = [
    sys.executable,
    "-m",
    "train",
    f"--workdir={tmp_path / 'run'}",
    *tiny_flags(cache_dir, **{"train.batch_size": 6}),
  ]
  result = subprocess.run(
    command, cwd=REPO, env=FOUR_DEVICES, capture_output=True, text=True, timeout=600
  )
  assert result.returncode != 0
  assert "batch_size=6 is not divisible by the 4 devices" in result.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@tiers.SLOW
def test_two_processes_over_loopback_train_one_model(tmp_path, cache_dir):
  config = default.get_config()
  make_tiny(config, cache_dir)
  for split in ("train", "validation", "test"):  # prepared once, not by both processes
    datasets.open_split(config, split)
  workdir = tmp_path / "two"
  address = f"127.0.0.1:{_free_port()}"
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "train",
        f"--workdir={workdir}",
        *tiny_flags(cache_dir),
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, err) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, err[-3000:]
  logs = [workdir / "log.txt", workdir / "log.process_1.txt"]  # the console shows no INFO
  checksums = [
    re.search(r"process (\d) of 2: parameter checksum (\S+)", log.read_text()).groups()
    for log in logs
  ]
  assert sorted(c[0] for c in checksums) == ["0", "1"]
  assert checksums[0][1] == checksums[1][1]
  assert sorted(p.name for p in workdir.glob("**/summary.json")) == ["summary.json"]
  assert "test metrics" in outputs[0][0] and "test metrics" not in outputs[1][0]
  assert len(_train_losses(workdir)) == 3  # one writer: no line twice
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  # Evaluation is split: each process predicted its half of the 16 test images, and the
  # gathered result is exactly what one process evaluating all 16 finds.
  for log in logs:
    assert re.findall(r"process \d of 2: evaluated (\d+) image", log.read_text())[-1] == "8"
  one = subprocess.run(
    [sys.executable, "-m", "train.evaluate", f"--workdir={workdir}", f"--out={tmp_path / 'one'}"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert one.returncode == 0, one.stderr[-3000:]
  assert re.findall(r"process \d of \d: evaluated (\d+) image", logs[0].read_text())[-1] == "16"
  together = json.loads((workdir / "summary.json").read_text())["test"]
  alone = json.loads((tmp_path / "one" / "summary.json").read_text())
  # Equal up to float32 rounding: each process pools its own images into window batches.
  for key in ("dice", "hd95", "proportion_mae", "loss", "decomposition/logdice_size"):
    assert alone[key] == pytest.approx(together[key], rel=1e-6), key

  # Prediction is split too: five new files, three for process 0 and two for process 1.
  inputs = tmp_path / "inputs"
  inputs.mkdir()
  test = datasets.open_split(config, "test")
  for i in range(5):
    Image.fromarray(np.asarray(test.source[i]["image"])).save(inputs / f"new{i}.png")
  address = f"127.0.0.1:{_free_port()}"
  processes = [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        "train.predict",
        f"--workdir={workdir}",
        f"--input={inputs}",
        f"--out={tmp_path / 'masks'}",
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, err) in zip(processes, outputs, strict=True):
    assert process.returncode == 0, err[-3000:]
  assert [re.findall(r"predicting (\d) of 5", log.read_text())[-1] for log in logs] == ["3", "2"]
  assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"new{i}.png" for i in range(5)]


def _two_processes(workdir, cache_dir, overrides, module="train"):
  address = f"127.0.0.1:{_free_port()}"
  return [
    subprocess.Popen(
      [
        sys.executable,
        "-m",
        module,
        f"--workdir={workdir}",
        *tiny_flags(cache_dir, **overrides),
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
      ],
      cwd=REPO,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]


@tiers.SLOW
def test_sigterm_to_one_process_stops_both_at_the_same_step(tmp_path, cache_dir):
  config = default.get_config()
  make_tiny(config, cache_dir)
  for split in ("train", "validation", "test"):
    datasets.open_split(config, split)
  overrides = {"train.steps": 60, "train.eval_every": 60, "train.log_every": 10}
  workdir = tmp_path / "two"
  processes = _two_processes(workdir, cache_dir, overrides)
  deadline = time.time() + 300
  while not (workdir / "checkpoints" / "3").exists():
    assert all(p.poll() is None for p in processes) and time.time() < deadline
    time.sleep(0.05)
  processes[1].send_signal(signal.SIGTERM)  # as a scheduler preempting one host
  errors = [p.communicate(timeout=300)[1] for p in processes]
  assert [p.returncode for p in processes] == [143, 143], errors[0][-2000:] + errors[1][-2000:]
  steps = [re.search(r"stopped by SIGTERM after step (\d+);", e).group(1) for e in errors]
  assert steps[0] == steps[1]
  assert (workdir / "checkpoints" / steps[0]).is_dir()
  assert not (workdir / "summary.json").exists()

  # The same command, on both processes, finishes the run from that checkpoint.
  processes = _two_processes(workdir, cache_dir, overrides)
  errors = [p.communicate(timeout=600)[1] for p in processes]
  assert [p.returncode for p in processes] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
  logs = [workdir / "log.txt", workdir / "log.process_1.txt"]
  for log in logs:
    assert f"resumed from step {steps[0]}" in log.read_text()
  checksums = [re.findall(r"parameter checksum (\S+)", log.read_text()) for log in logs]
  assert checksums[0] == checksums[1] and len(checksums[0]) == 1
  with open(workdir / "metrics.jsonl") as f:
    train_steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert train_steps == list(range(10, 61, 10))
