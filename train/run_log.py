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
import sys
import threading

import jax
import tensorflow_datasets as tfds
from absl import logging

from train import write_errors

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
  _add_filter_once(logging.get_absl_handler(), _no_write_failure_traceback)
  path = log_file_path(workdir)
  with write_errors.writing(path, "the log", workdir=workdir):
    os.makedirs(workdir, exist_ok=True)
    handler = _StoppingFileHandler(path, workdir)
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


def _no_write_failure_traceback(record: std_logging.LogRecord) -> bool:
  """False (not on the console; the file keeps it) for a record with the traceback of a
  failed write (a full or read-only disk). When orbax's array writer fails, orbax logs its
  thread's error and asyncio each of its write tasks', dozens of tracebacks; orbax then
  raises the error in the main thread, whose one-line report is what the console shows."""
  error = record.exc_info[1] if record.exc_info else None
  return error is None or write_errors.errno_of(error) not in write_errors.WRITE_ERRNOS


def _add_filter_once(handler: std_logging.Handler, function) -> None:
  if function not in handler.filters:
    handler.addFilter(function)


class _StoppingFileHandler(std_logging.FileHandler):
  """A log file whose failed write (a full or read-only disk) stops the command with
  ``WriteFailed``: Python's logging would print "--- Logging error ---" and carry on, the run
  going on without its log.

  The error is raised in the main thread, by the record that failed or, when a library's
  thread logged it, by the main thread's next record: raising in that thread would kill it
  (a data loader, a checkpoint writer) rather than stop the run.
  """

  def __init__(self, path: str, workdir: str):
    super().__init__(path, mode="a", encoding="utf-8")
    self.workdir = workdir
    self.failure: write_errors.WriteFailed | None = None

  def emit(self, record: std_logging.LogRecord) -> None:
    if self.failure is not None and _in_main_thread():
      failure, self.failure = self.failure, None
      raise failure
    super().emit(record)

  def handleError(self, record: std_logging.LogRecord) -> None:  # noqa: N802  (logging's name)
    error = sys.exc_info()[1]
    code = write_errors.errno_of(error) if error is not None else None
    if code not in write_errors.WRITE_ERRNOS:
      super().handleError(record)
      return
    failure = write_errors.WriteFailed(
      write_errors.message("the log", self.baseFilename, code, self.workdir)
    )
    failure.__cause__ = error
    if _in_main_thread():
      raise failure
    self.failure = failure


def _in_main_thread() -> bool:
  return threading.current_thread() is threading.main_thread()
