"""Downloads the wheels the accelerator suite needs on a machine without network.

A GPU machine set up for JAX usually has JAX with CUDA, NumPy, SciPy, Flax, optax, orbax,
matplotlib, PyTorch and pytest, but not the rest of the training stack the suite imports
(TFDS, grain, ml_collections, ...). This fetches those, at the versions of
``requirements/constraints.txt``, for the target's Python and platform, into one folder to
carry with the checkout; ``benchmarks/accelerator.py --wheels FOLDER`` installs the ones the
machine lacks. A distribution published only as a source archive is built into a wheel here
(they are pure Python).

    python benchmarks/accelerator_wheels.py [--dest build/wheels] [--python-version 3.12]
        [--also NAME ...]
"""

import argparse
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "requirements" / "constraints.txt"

# What the train extra and pytest pull in beyond the usual JAX GPU stack (read off this
# project's GPU machines, 2026-11-17: they held everything else of constraints.txt).
NEEDED = (
  "array_record",
  "dm-tree",
  "docstring_parser",
  "googleapis-common-protos",
  "grain",
  "immutabledict",
  "importlib_resources",
  "ml_collections",
  "nibabel",
  "portpicker",
  "promise",
  "simple-parsing",
  "tensorboardX",
  "tensorflow-datasets",
  "tensorflow-metadata",
  "termcolor",
  "tzdata",
)
# manylinux tags pip accepts for a recent x86-64 Linux (it matches each tag exactly).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34)] + [
  "manylinux2014_x86_64",
  "manylinux1_x86_64",
]


def _normalised(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions() -> dict[str, str]:
  """``{normalised name: version}`` from ``requirements/constraints.txt``."""
  pins = {}
  for line in CONSTRAINTS.read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if "==" in line:
      name, version = line.split("==", 1)
      pins[_normalised(name)] = version.strip()
  return pins


def download(requirement: str, dest: pathlib.Path, python_version: str) -> None:
  """The wheel of ``requirement`` for the target; a source-only one is built here."""
  fetch = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(dest)]
  target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
  for platform in PLATFORMS:
    target += ["--platform", platform]
  fetched = subprocess.run(fetch + target + [requirement], capture_output=True, text=True)
  if fetched.returncode == 0:
    return
  print(f"{requirement}: no wheel for the target; building one from its source archive")
  build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest)]
  subprocess.run(build + [requirement], check=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dest", type=pathlib.Path, default=ROOT / "build" / "wheels")
  parser.add_argument("--python-version", default="3.12", help="the target machine's Python")
  parser.add_argument(
    "--also", nargs="+", default=(), help="more distributions the target lacks (pinned ones)"
  )
  args = parser.parse_args()
  pins = pinned_versions()
  args.dest.mkdir(parents=True, exist_ok=True)
  for name in (*NEEDED, *args.also):
    version = pins.get(_normalised(name))
    if version is None:
      sys.exit(f"error: {name} is not in {CONSTRAINTS.relative_to(ROOT)}")
    download(f"{name}=={version}", args.dest, args.python_version)
  wheels = sorted(args.dest.glob("*.whl"))
  megabytes = sum(w.stat().st_size for w in wheels) / 2**20
  print(f"{len(wheels)} wheels, {megabytes:.1f} MiB, in {args.dest}")


if __name__ == "__main__":
  main()
