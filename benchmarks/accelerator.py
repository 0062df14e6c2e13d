"""The accelerator suite: every check and figure that needs a GPU, in one command.

Run on a machine with an accelerator and JAX for it installed (``make bench-accelerator``).
Each part runs in its own process with a time limit, all of them within ``--budget-s``
(default 8 minutes), in this order:

1. ``machine``: the device, driver and versions; copy bandwidth and matrix-product rate
   measured here (``benchmarks/machine.py``);
2. ``reference``: the 344 loss reference values and gradients (through the fused paths) and
   the Pallas kernels' tests, run natively, on the device (``tests/losses/test_reference.py``,
   ``test_pallas_gpu.py``);
3. ``losses``: every compound's forward + backward against the memory floor, fused,
   straightforward and, for ``ce+l1``/``kl``/``db``, the Pallas kernels
   (``benchmarks/losses.py``);
4. ``train_step default`` and ``train_step large``: the train program's step, FLOP/s from
   the lowered step and the fraction of peak, beside PyTorch where it is installed
   (``benchmarks/train_step.py``);
5. ``inference``: sliding-window throughput on a 2048x2048 photograph and a 512x512x300
   CT volume at native resolution (``benchmarks/inference.py``).

It ends with a table of each part's status and time. Everything printed also goes to
``--log``. A part that fails or runs out of time is reported and the next one runs.

Installing on a machine without network: ``make accelerator-wheels`` (where PyPI is
reachable) downloads the wheels of what the suite needs beyond JAX, Flax, optax, orbax and
pytest into ``build/wheels``; carry that folder with the checkout, and the suite installs
the ones the machine lacks (``--wheels``) into ``build/accelerator-site`` before it starts.

``--smoke`` runs every part at toy sizes, to check the suite itself on any machine (about a
minute on a CPU; ``tests/test_benchmarks.py``).

    python benchmarks/accelerator.py [--wheels build/wheels] [--log FILE] [--budget-s 480]
        [--smoke]
"""

import argparse
import importlib.metadata
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Where carried wheels are installed: one folder per Python version, since compiled ones
# import only into the version they were built for.
SITE = ROOT / "build" / "accelerator-site" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

# (name, command, seconds at most on an accelerator); each command runs from the repository
# root with the repository and the installed wheels on PYTHONPATH.
PARTS = (
  ("machine", ["benchmarks/machine.py"], 60),
  (
    "reference",
    [
      "-m",
      "pytest",
      "-q",
      "-p",
      "no:cacheprovider",
      "tests/losses/test_reference.py",
      "tests/losses/test_pallas_gpu.py",
    ],
    150,
  ),
  (
    "losses",
    [
      *("benchmarks/losses.py", "--repeats", "10"),
      *("--pallas-configs", "2048x4", "8192x4", "8192x8", "16384x8"),
    ],
    120,
  ),
  ("train_step default", ["benchmarks/train_step.py", "--preset", "default"], 90),
  ("train_step large", ["benchmarks/train_step.py", "--preset", "large"], 150),
  ("inference", ["benchmarks/inference.py", "--repeats", "3"], 120),
)

# The same parts at toy sizes.
SMOKE_ARGS = {
  "machine": ["--copy-mib", "8", "--matmul", "128", "--repeats", "1"],
  "reference": [
    "-k",
    "test_all_344 or case000 or test_kernels_equal_the_fused_path",
  ],
  "losses": [
    *("--shape", "2", "16", "16", "5", "--repeats", "1", "--losses", "ce+kl", "ce+dice"),
    *("--pallas", "--pallas-configs", "128x2"),
  ],
  "train_step default": [
    *("--batch", "2", "--size", "32", "--features", "4", "--steps", "1", "--rounds", "1"),
    "--no-torch",
  ],
  "train_step large": [
    *("--batch", "1", "--size", "32", "--features", "4", "--steps", "1", "--rounds", "1"),
    "--no-torch",
  ],
  "inference": ["--preset", "small", "--scale", "8", "--repeats", "1"],
}


class Tee:
  """Writes each line to stdout and, if given, to a log file."""

  def __init__(self, path):
    self.file = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115

  def __call__(self, text=""):
    print(text, flush=True)
    if self.file:
      self.file.write(text + "\n")
      self.file.flush()


def _distribution(wheel: pathlib.Path) -> str:
  """The distribution name in a wheel's file name (``name-version-...whl``)."""
  return wheel.name.split("-", 1)[0]


def _installed(name: str) -> bool:
  try:
    importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return False
  return True


def install_missing(wheels: pathlib.Path, log: Tee) -> None:
  """Installs the wheels in ``wheels`` whose distribution this Python lacks into ``SITE``.

  Without network and without dependencies (the folder holds every one needed), so nothing
  already installed is replaced.
  """
  found = sorted(wheels.glob("*.whl"))
  missing = [w for w in found if not _installed(_distribution(w))]
  log(f"wheels in {wheels}: {len(found)}, of them not installed here: {len(missing)}")
  if not missing:
    return
  command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
  command += ["--no-compile", "--upgrade", "--target", str(SITE), *map(str, missing)]
  subprocess.run(command, check=True)
  log("installed: " + ", ".join(_distribution(w) for w in missing))


def run_part(command, *, env, seconds, log: Tee) -> tuple[str, float]:
  """Runs ``command`` with its output passed to ``log``; ``(status, elapsed seconds)``."""
  start = time.perf_counter()
  process = subprocess.Popen(
    [sys.executable, *command],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,  # so that a time-out stops the part's own children too
  )

  def forward():
    for line in process.stdout:
      log(line.rstrip("\n"))

  reader = threading.Thread(target=forward, daemon=True)
  reader.start()
  try:
    code = process.wait(timeout=seconds)
    status = "ok" if code == 0 else f"failed (exit {code})"
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    status = f"stopped after {seconds:.0f} s"
  reader.join(timeout=10)
  return status, time.perf_counter() - start


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--wheels", type=pathlib.Path, default=None, help="install from here")
  parser.add_argument("--log", type=pathlib.Path, default=None, help="also write output here")
  parser.add_argument("--budget-s", type=float, default=480.0, help="all parts together")
  parser.add_argument("--smoke", action="store_true", help="every part at toy sizes")
  parser.add_argument(
    "--parts", nargs="+", default=None, help="run only these parts (names as in the table)"
  )
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  log = Tee(args.log)
  started = time.perf_counter()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  paths = [str(ROOT), env.get("PYTHONPATH", "")]
  if args.wheels is not None and args.wheels.is_dir():
    install_missing(args.wheels, log)
    paths.insert(0, str(SITE))
  env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)

  rows = []
  for name, command, seconds in PARTS:
    if args.parts is not None and name not in args.parts:
      continue
    command = command + SMOKE_ARGS[name] if args.smoke else command
    left = args.budget_s - (time.perf_counter() - started)
    log(f"\n=== {name}: python {' '.join(command)}")
    if left < 10:
      rows.append((name, "skipped: budget spent", 0.0))
      log("skipped: the budget is spent")
      continue
    status, elapsed = run_part(command, env=env, seconds=min(seconds, left), log=log)
    rows.append((name, status, elapsed))

  log(f"\n=== summary ({time.perf_counter() - started:.0f} s in all)")
  log("| part | status | s |")
  log("|---|---|---|")
  for name, status, elapsed in rows:
    log(f"| {name} | {status} | {elapsed:.0f} |")
  return 0 if all(status == "ok" for _, status, _ in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
