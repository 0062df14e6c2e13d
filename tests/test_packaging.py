"""What `pip install regionloss_jax` installs: the library, never the training program.

The wheel is built from this checkout offline (`--no-build-isolation --no-deps`: the
environment's own setuptools, nothing downloaded) and its file list inspected.
"""

import email
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# What the losses, metrics and inference import; everything else is an extra.
CORE = {"jax", "jaxlib", "numpy", "scipy"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  pytest.importorskip("setuptools", minversion="77")
  out = tmp_path_factory.mktemp("wheel")
  # Build from a copy of the sources so that nothing (build/, *.egg-info) lands in the checkout.
  source = tmp_path_factory.mktemp("source")
  for name in ("pyproject.toml", "README.md"):
    (source / name).write_bytes((REPO / name).read_bytes())
  for path in (REPO / "regionloss_jax").rglob("*"):
    if path.is_file() and "__pycache__" not in path.parts:
      target = source / path.relative_to(REPO)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(path.read_bytes())
  (source / "train").mkdir()  # a decoy: packages.find must leave it out
  (source / "train" / "__init__.py").write_text("")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "pip",
      "wheel",
      "--no-build-isolation",
      "--no-deps",
      "--no-index",
      "--quiet",
      "--wheel-dir",
      str(out),
      str(source),
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stdout + result.stderr
  (built,) = out.glob("regionloss_jax-*.whl")
  return built


def test_the_wheel_holds_only_the_library(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  top_level = {name.split("/")[0] for name in names}
  assert "train" not in top_level
  assert not [name for name in names if name.startswith("train")]
  assert {name for name in top_level if not name.endswith(".dist-info")} == {"regionloss_jax"}
  for module in ("__init__.py", "losses/__init__.py", "metrics.py", "inference.py"):
    assert f"regionloss_jax/{module}" in names


def test_core_dependencies_are_ranges_and_the_training_stack_is_an_extra(wheel):
  archive = zipfile.ZipFile(wheel)
  (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
  requires = email.message_from_bytes(archive.read(metadata)).get_all("Requires-Dist")
  core = [r for r in requires if "extra ==" not in r]
  assert {r.split(">")[0].split("=")[0].split("<")[0].strip() for r in core} == CORE
  assert not [r for r in core if "==" in r], core
  train = [r for r in requires if 'extra == "train"' in r]
  assert any(r.startswith("flax") for r in train) and any(r.startswith("grain") for r in train)


def test_train_is_not_importable_outside_the_repository(tmp_path):
  # The installed package must not provide a top-level `train`; run away from the checkout
  # (whose directory would otherwise be on sys.path) and without PYTHONPATH.
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
  code = "import importlib.util, regionloss_jax\nprint(importlib.util.find_spec('train'))\n"
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "None", result.stdout


def test_the_core_modules_import_no_training_stack(tmp_path):
  # `pip install regionloss_jax` brings only jax, numpy and scipy: importing the library's core
  # must not need (here: must not load) anything of the `train` extra.
  code = (
    "import sys\n"
    "import regionloss_jax, regionloss_jax.losses, regionloss_jax.metrics\n"
    "import regionloss_jax.inference\n"
    "stack = {'flax', 'optax', 'orbax', 'tensorflow_datasets', 'tensorflow', 'grain',\n"
    "         'matplotlib', 'PIL', 'nibabel', 'ml_collections', 'tensorboardX'}\n"
    "print(sorted({name.split('.')[0] for name in sys.modules} & stack))\n"
  )
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]", f"imported at import time: {result.stdout.strip()}"
