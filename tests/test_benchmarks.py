"""The accelerator suite (benchmarks/accelerator.py) and its wheel list, checked on the CPU."""

import importlib.util
import pathlib
import subprocess
import sys
import zipfile

import pytest

from tests import tiers

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


accelerator = _load("accelerator")
accelerator_wheels = _load("accelerator_wheels")


def _wheel(folder: pathlib.Path, name: str, module: str) -> pathlib.Path:
  """A minimal pure-Python wheel of distribution ``name`` holding ``module``."""
  path = folder / f"{name}-1.0-py3-none-any.whl"
  info = f"{name}-1.0.dist-info"
  files = {
    f"{module}.py": "VALUE = 42\n",
    f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
    f"{info}/WHEEL": (
      "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ),
  }
  record = "".join(f"{f},,\n" for f in files) + f"{info}/RECORD,,\n"
  with zipfile.ZipFile(path, "w") as archive:
    for file, text in {**files, f"{info}/RECORD": record}.items():
      archive.writestr(file, text)
  return path


@tiers.SLOW
def test_the_suite_runs_every_part_at_toy_sizes(tmp_path):
  log = tmp_path / "suite.log"
  result = subprocess.run(
    [sys.executable, "benchmarks/accelerator.py", "--smoke", "--log", str(log)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  summary = result.stdout[result.stdout.index("=== summary") :]
  for name, _, _ in accelerator.PARTS:
    assert f"| {name} | ok |" in summary
  # What each part measures reached the output, and the log holds all of it.
  for figure in ("GB/s", "TFLOP/s", "passed", "x floor", "of peak", "windows of"):
    assert figure in result.stdout
  assert log.read_text() == result.stdout


def test_only_the_wheels_of_missing_distributions_are_installed(tmp_path, monkeypatch):
  monkeypatch.setattr(accelerator, "SITE", tmp_path / "site")
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  _wheel(wheels, "regionloss_absent_dist", "regionloss_absent_module")
  _wheel(wheels, "numpy", "numpy_impostor")  # installed here: must not be replaced
  lines = []
  accelerator.install_missing(wheels, lines.append)
  assert (tmp_path / "site" / "regionloss_absent_module.py").read_text() == "VALUE = 42\n"
  assert not (tmp_path / "site" / "numpy_impostor.py").exists()
  assert lines[-1] == "installed: regionloss_absent_dist"


def test_a_failing_or_overrunning_part_is_reported_and_stopped():
  lines = []
  status, _ = accelerator.run_part(
    ["-c", "import sys; print('partial output'); sys.exit(3)"],
    env=None,
    seconds=60,
    log=lines.append,
  )
  assert status == "failed (exit 3)"
  assert lines == ["partial output"]
  status, elapsed = accelerator.run_part(
    ["-c", "import time; time.sleep(60)"], env=None, seconds=1, log=lines.append
  )
  assert status == "stopped after 1 s"
  assert elapsed < 30


def test_a_spent_budget_skips_the_remaining_parts(capsys):
  assert accelerator.main(["--parts", "machine", "--budget-s", "0"]) == 1
  assert "| machine | skipped: budget spent | 0 |" in capsys.readouterr().out


@pytest.mark.parametrize("name", accelerator_wheels.NEEDED)
def test_every_carried_wheel_has_a_tested_version(name):
  assert accelerator_wheels._normalised(name) in accelerator_wheels.pinned_versions()
