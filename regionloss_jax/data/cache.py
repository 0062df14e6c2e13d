"""Where prepared datasets live, and the key that tells whether a preparation is current."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Iterable

CACHE_ENV = "REGIONLOSS_JAX_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> pathlib.Path:
  """The cache root: ``override``, else ``$REGIONLOSS_JAX_CACHE``, else ``~/.cache/regionloss_jax``.

  Nothing is created here; preparation creates what it writes.
  """
  if override is not None:
    return pathlib.Path(override).expanduser()
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
  return pathlib.Path("~/.cache/regionloss_jax").expanduser()


def folder_fingerprint(files: Iterable[pathlib.Path], root: pathlib.Path) -> list:
  """``[relative path, size, mtime_ns]`` for every file: changes when the folder changes."""
  rows = []
  for path in sorted(files):
    stat = path.stat()
    rows.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
  return rows


def cache_key(*, source: str | os.PathLike, options: dict, fingerprint: list) -> str:
  """A short stable hash of the source path, the preparation options and the fingerprint."""
  payload = json.dumps(
    {"source": str(pathlib.Path(source).resolve()), "options": options, "files": fingerprint},
    sort_keys=True,
    default=str,
  )
  return hashlib.sha256(payload.encode()).hexdigest()[:16]
