"""A write to the workdir that fails (a full or read-only disk, missing permissions, a quota)
stops the run with one line naming the file, what went wrong and how to resume.

The run's files are written so that a failed write never spoils what is already there:
checkpoints are renamed into place when complete, the JSON files are replaced whole, and
``metrics.jsonl`` loses at most a truncated last line, which a resumed run drops. So after
the fix the same command resumes from the last good checkpoint, as after a kill.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re

# What a disk, a mount or a permission refuses: the user can fix these and resume. Any other
# error (a missing directory, a bug) keeps its own type and traceback.
WRITE_ERRNOS = frozenset(
  {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)
_FIX = {
  errno.ENOSPC: "free space on that disk",
  errno.EDQUOT: "free space or raise the disk quota",
  errno.EFBIG: "raise the file size limit (ulimit -f) or move the workdir to a file system "
  "that allows larger files",
  errno.EROFS: "make that file system writable",
  errno.EACCES: "fix the permissions",
  errno.EPERM: "fix the permissions",
}
# Tensorstore (orbax's array writer) reports a failed write as a ValueError whose text ends
# in e.g. "No space left on device [os_error_code='28']".
_TENSORSTORE_ERRNO = re.compile(r"os_error_code='?(\d+)")


class WriteFailed(RuntimeError):
  """A file of the run could not be written; the message names it and says how to resume."""


def errno_of(error: BaseException) -> int | None:
  """The OS error number behind ``error`` or the errors it was raised from, if any."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno is not None:
      return error.errno
    found = _TENSORSTORE_ERRNO.search(str(error))
    if found:
      return int(found.group(1))
    error = error.__cause__ or error.__context__
  return None


def last_checkpoint(workdir: str) -> int | None:
  """The newest complete checkpoint in ``workdir/checkpoints``: orbax renames a checkpoint
  to its bare step number only once every file is written."""
  directory = os.path.join(workdir, "checkpoints")
  try:
    steps = [int(name) for name in os.listdir(directory) if name.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


def message(what: str, path: str, code: int, workdir: str) -> str:
  """``cannot write WHAT to PATH: REASON (ENAME). The last good checkpoint ...; FIX and run
  the same command to resume.``, one line."""
  name = errno.errorcode.get(code, str(code))
  step = last_checkpoint(workdir)
  checkpoints = os.path.join(workdir, "checkpoints")
  good = (
    f"The last good checkpoint is step {step} in {checkpoints}"
    if step is not None
    else "There is no checkpoint yet"
  )
  fix = _FIX.get(code, "fix the cause")
  return (
    f"cannot write {what} to {path}: {os.strerror(code)} ({name}). {good}; {fix} and run "
    "the same command to resume."
  )


@contextlib.contextmanager
def writing(path: str, what: str, *, workdir: str):
  """Turns a failed write inside the block into ``WriteFailed`` naming ``what`` and ``path``;
  ``workdir`` is the run's, whose last good checkpoint the message names."""
  try:
    yield
  except WriteFailed:
    raise
  except Exception as error:
    code = errno_of(error)
    if code not in WRITE_ERRNOS:
      raise
    raise WriteFailed(message(what, os.path.abspath(path), code, workdir)) from error


def write_json(path: str, record, *, what: str, workdir: str) -> None:
  """Writes ``record`` to ``path`` whole or not at all (a temporary file, then a rename), so
  a failed write leaves the previous file as it was."""
  tmp = path + ".tmp"
  with writing(path, what, workdir=workdir):
    try:
      with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
      os.replace(tmp, path)
    except OSError:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise
