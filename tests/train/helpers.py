"""Tiny runs of the real training program (32x32 images, a few dozen examples), shared by
the train tests; their fixtures are in conftest.py."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


TINY_FIELDS = {
  "data.split_sizes": (48, 16, 16),
  "data.image_size": (32, 32),
  "data.num_threads": 1,
  "model.depth": 2,
  "model.features": 4,
  "train.batch_size": 4,
  "train.eval_batch_size": 16,
  "train.steps": 6,
  "train.eval_every": 3,
  "train.checkpoint_every": 3,
  "train.log_every": 2,
  "train.num_overlays": 2,
  "optimizer.warmup_steps": 2,
}


def tiny_flags(cache_dir, **overrides) -> list[str]:
  fields = {**TINY_FIELDS, "data.cache_dir": cache_dir, **overrides}
  return [f"--config.{k}={str(v).replace(' ', '')}" for k, v in fields.items()]


def make_tiny(config, cache_dir) -> None:
  """Sets ``TINY_FIELDS`` on a training config in place."""
  for field, value in {**TINY_FIELDS, "data.cache_dir": str(cache_dir)}.items():
    section, name = field.split(".")
    config[section][name] = value


def run_program(workdir, cache_dir, *extra, module="train", check=True, **overrides):
  command = [
    sys.executable,
    "-m",
    module,
    f"--workdir={workdir}",
    *tiny_flags(cache_dir, **overrides),
    *extra,
  ]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
  return result


# Tests that use finished_tiny_run share one xdist worker, so that it is trained once.
SHARES_TINY_RUN = pytest.mark.xdist_group("tiny_run")
