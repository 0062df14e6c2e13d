"""Mistakes a user makes end in one ``error: ...`` line, not a traceback.

Only the types named here are caught, so a programming error still shows its traceback;
``--verbose`` shows it for these too. Exit status 2 means fix the command line or config
and run again; 1 means the run itself failed (bad data, a missing file, divergence);
128 + N means signal N stopped the run after a checkpoint (:mod:`train.preemption`).
"""

from __future__ import annotations

import functools
import sys
import traceback
from typing import NoReturn

from absl import app, flags

from regionloss_jax.data.source import DataError
from train import preemption
from train.write_errors import WriteFailed

USAGE_EXIT = 2
FAILURE_EXIT = 1

VERBOSE = flags.DEFINE_bool(
  "verbose", False, "Show the full traceback of a config, data or usage error."
)


class ConfigError(ValueError):
  """A config value or command-line choice that cannot work; the message names it."""


# The run's own failures a user causes: bad data files, a --workdir, --input or data.dir
# that is not there, or a workdir on a full or read-only disk.
FAILURES = (DataError, FileNotFoundError, NotADirectoryError, WriteFailed)


def verbose(argv: list[str] | None = None) -> bool:
  """``--verbose``, also before flags are parsed (errors while defining ``--config``)."""
  if flags.FLAGS.is_parsed():
    return VERBOSE.value
  given = [a.lstrip("-").lower() for a in argv or sys.argv if a.startswith("-")]
  return any(a in ("verbose", "verbose=true", "verbose=1") for a in given)


def fail(message: str, exit_code: int = USAGE_EXIT) -> NoReturn:
  """Prints ``error: message`` (the traceback with ``--verbose``) to stderr and exits with
  ``exit_code`` either way, so scripts see the same status; call it inside ``except``."""
  if verbose():
    traceback.print_exc()
  else:
    print(f"error: {message}", file=sys.stderr)
  sys.exit(exit_code)


def guard(main, failures: tuple[type[BaseException], ...] = ()):
  """``main`` whose user errors end in one line; ``failures`` adds a command's own types."""

  @functools.wraps(main)
  def guarded(argv):
    try:
      return main(argv)
    except preemption.Preempted as stopped:
      print(stopped, file=sys.stderr)
      sys.exit(stopped.exit_code)
    except (ConfigError, app.UsageError) as error:
      fail(str(error), USAGE_EXIT)
    except FAILURES + failures as error:
      fail(str(error), FAILURE_EXIT)

  return guarded


def run(main, *, failures: tuple[type[BaseException], ...] = (), **kwargs) -> None:
  """``absl.app.run`` of ``guard(main, failures)``."""
  app.run(guard(main, failures), **kwargs)
