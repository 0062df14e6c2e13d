"""Fixtures of the train tests: a shared cache and one finished tiny run."""

import pytest

from tests.train.helpers import run_program


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def finished_tiny_run(tmp_path_factory, cache_dir):
  """A workdir holding a finished run of ``TINY_FIELDS`` on one device. Read it; a test
  that changes files works on a copy."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  run_program(workdir, cache_dir)
  return workdir
