"""Where the commands' log goes: all of it to a file in the workdir, errors also to the console.

TFDS, grain, orbax and the program itself log through absl at INFO and WARNING, dozens of
lines per split opened, and TFDS draws its own progress bars; on the console they bury the
command's progress bar and its results. The file (``WORKDIR/log.txt``, appended to by
``train``, ``train.evaluate``, ``train.predict`` and ``train.compare``) keeps every line,
Python warnings included, for when something looks off.
"""

from __future__ import annotations

import logging as std_logging
import os

import jax
import tensorflow_datasets as tfds
from absl import logging

LOG_FILE = "log.txt"


def log_file_path(workdir: str) -> str:
  """``WORKDIR/log.txt`` for process 0; other processes write ``log.process_<i>.txt`` beside
  it, so that no two processes append to one file."""
  index = jax.process_index()
  return os.path.join(workdir, LOG_FILE if index == 0 else f"log.process_{index}.txt")


def log_to_workdir(workdir: str, *, create: bool = True) -> str | None:
  """Sends absl INFO and above and Python warnings to the workdir's log file, and keeps only
  errors on the console (stderr); returns the file's path.

  ``create=False`` (commands that read an existing run) leaves a missing workdir missing and
  the logging as it was: the command's own error then names the directory.
  """
  if not create and not os.path.isdir(workdir):
    return None
  # Quiet first: asking JAX for the process index starts its backends, which log.
  logging.get_absl_handler().setLevel(std_logging.ERROR)
  os.makedirs(workdir, exist_ok=True)
  path = log_file_path(workdir)
  handler = std_logging.FileHandler(path, mode="a", encoding="utf-8")
  handler.setFormatter(logging.PythonFormatter())
  handler.setLevel(std_logging.INFO)
  # absl's handler sits on the root logger, as does the file's: every library's records
  # reach both, and each keeps what its level lets through.
  std_logging.getLogger().addHandler(handler)
  logging.set_verbosity(logging.INFO)
  std_logging.captureWarnings(True)
  # TFDS draws a bar per split it prepares; the console's one bar is the command's own.
  tfds.display_progress_bar(False)
  return path
