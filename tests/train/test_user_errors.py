"""A user's mistakes end in one ``error:`` line and exit status 2 (fix the command or config)
or 1 (the run failed); ``--verbose`` shows the traceback. Every case fails before training."""

import subprocess
import sys

import pytest

from tests import tiers
from tests.train.helpers import REPO, run_program
from train import user_errors


def _command(module, *args):
  command = [sys.executable, "-m", module, *args]
  return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def _one_message(result, code, *names):
  assert result.returncode == code, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert result.stderr.startswith("error: ")
  for name in names:
    assert name in result.stderr


@tiers.SLOW
def test_bad_config_value_is_a_usage_error_and_verbose_shows_the_traceback(tmp_path, cache_dir):
  bad = {"optimizer.learning_rate": -1}
  result = run_program(tmp_path / "run", cache_dir, check=False, **bad)
  _one_message(result, 2, "config.optimizer.learning_rate must be > 0, got -1")
  verbose = run_program(tmp_path / "run", cache_dir, "--verbose", check=False, **bad)
  assert verbose.returncode == 2
  assert "Traceback" in verbose.stderr and "ConfigError" in verbose.stderr


@tiers.SLOW
def test_unknown_field_with_verbose_shows_the_traceback(tmp_path, cache_dir):
  result = run_program(
    tmp_path / "run", cache_dir, "--config.train.bach_size=3", "--verbose", check=False
  )
  assert result.returncode == 2
  assert "Traceback" in result.stderr and "bach_size" in result.stderr


@tiers.SLOW
@pytest.mark.parametrize(
  ("arg", "message"),
  [
    ("--config.optimizer.learning_rate=abc", "--config.optimizer.learning_rate=abc"),
    ("--no_such_flag", "Unknown command line flag 'no_such_flag'"),
    ("stray", "Unexpected arguments: stray"),
  ],
)
def test_command_line_mistakes_are_usage_errors(tmp_path, cache_dir, arg, message):
  _one_message(run_program(tmp_path / "run", cache_dir, arg, check=False), 2, message)


@tiers.SLOW
def test_missing_data_dir_then_a_workdir_of_another_run(tmp_path, cache_dir):
  workdir, data_dir = tmp_path / "run", tmp_path / "no_data"
  folder = {"data.name": "folder", "data.dir": data_dir, "data.num_classes": 2}
  result = run_program(workdir, cache_dir, check=False, **folder)
  _one_message(result, 1, f"{data_dir}: no such folder")
  # That run recorded its config before it opened the data, so the workdir is now taken.
  result = run_program(workdir, cache_dir, check=False, **folder, **{"optimizer.learning_rate": 9})
  _one_message(result, 2, "changed: optimizer.learning_rate", "--overwrite")


@tiers.SLOW
@pytest.mark.parametrize("module", ["train.evaluate", "train.predict"])
def test_workdir_that_is_not_a_run(tmp_path, module):
  extra = [f"--input={tmp_path}", f"--out={tmp_path / 'out'}"] if module == "train.predict" else []
  result = _command(module, f"--workdir={tmp_path / 'none'}", *extra)
  _one_message(result, 1, f"{tmp_path / 'none' / 'config.json'} not found")
  verbose = _command(module, f"--workdir={tmp_path / 'none'}", *extra, "--verbose")
  assert verbose.returncode == 1
  assert "Traceback" in verbose.stderr and "FileNotFoundError" in verbose.stderr


def test_compare_checks_its_own_fields(tmp_path):
  result = _command("train.compare", f"--workdir={tmp_path}", "--config.seeds=0")
  _one_message(result, 2, "config.seeds must be >= 1, got 0")


def test_only_user_errors_are_caught(monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["train"])

  def config_error(argv):
    raise user_errors.ConfigError("config.x is bad")

  def programming_error(argv):
    return {}["missing"]

  with pytest.raises(SystemExit) as stopped:
    user_errors.guard(config_error)([])
  assert stopped.value.code == 2
  assert capsys.readouterr().err == "error: config.x is bad\n"
  with pytest.raises(KeyError):
    user_errors.guard(programming_error, failures=(RuntimeError,))([])
