"""Shared fixtures for the data tests: no home cache, a tiny prepared ``imbalanced_shapes``.

Every cache lives under pytest's ``tmp_path``; nothing touches ``~/.cache``.
"""

import pytest

from regionloss_jax import data
from tests.data.helpers import TINY


@pytest.fixture(autouse=True)
def _no_home_cache(monkeypatch, tmp_path):
  # A loader called without cache_dir must still stay inside the test's tmp_path.
  monkeypatch.setenv("REGIONLOSS_JAX_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
  """``imbalanced_shapes/multiclass`` train split, 24 examples of 24x24."""
  cache = tmp_path_factory.mktemp("shapes-cache")
  return data.load("imbalanced_shapes/multiclass", split="train", cache_dir=cache, **TINY)
