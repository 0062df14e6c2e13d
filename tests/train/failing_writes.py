"""``python -m tests.train.failing_writes TRAIN_ARGS...``: ``python -m train`` on a disk that
fills up once the first checkpoint is written.

With ``FAIL_WRITES_UNDER=DIR``, renaming a file or directory inside ``DIR`` raises
``OSError(ENOSPC)`` as soon as ``DIR`` holds a complete checkpoint (a directory named by its
step): the next checkpoint is written in full to its temporary directory and fails at its
last step, the rename into place, so that directory is left behind as a full disk would.
"""

import errno
import os
import runpy
import sys

UNDER = os.path.abspath(os.environ["FAIL_WRITES_UNDER"])


def _disk_full() -> bool:
  return os.path.isdir(UNDER) and any(name.isdigit() for name in os.listdir(UNDER))


def _failing(function):
  def wrapped(source, *args, **kwargs):
    path = os.path.abspath(os.fspath(source))
    if path.startswith(UNDER + os.sep) and _disk_full():
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return function(source, *args, **kwargs)

  return wrapped


def main() -> None:
  os.rename = _failing(os.rename)
  os.replace = _failing(os.replace)
  sys.argv = ["train", *sys.argv[1:]]
  runpy.run_module("train", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
