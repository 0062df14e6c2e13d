"""k-fold cross-validation (``train.fold``) as nnU-Net does it: one split file, every fold.

The labelled pool is the dataset's train split plus its validation split; the test split is
left as it is, so that every fold's model and their ensemble are scored on the same images.
Cases are named by the file stem of the example (``case01`` for ``case01.png`` or
``case01.nii.gz``), or ``<split>_<index:05d>`` when the dataset records no file names.

The split is nnU-Net's ``splits_final.json``: a JSON list with one ``{"train": [ids], "val":
[ids]}`` per fold (a file nnU-Net wrote can be reused, and a user may edit one). It lives at
``config.data.splits_file``, by default ``data.dir/splits_final.json`` for datasets read from
a folder and ``<cache_dir>/splits/<dataset>.json`` for the others. When missing it is written
once, by process 0, from a seeded shuffle of the sorted case ids cut into ``train.num_folds``
nearly equal parts; every fold then reads the same file.

A fold's training (or validation) cases are a :class:`SegmentationData` like any split: a
random-access source over the pooled examples, so the pipeline, resuming and sharding over
processes see nothing new.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from regionloss_jax import data as rl_data
from regionloss_jax.data import files
from regionloss_jax.data.source import SubsetSource
from train import write_errors
from train.user_errors import ConfigError

SPLITS_FILE = "splits_final.json"
RECORD_FILE = "split.json"  # in the workdir: what this run trained and validated on
POOL_SPLITS = ("train", "validation")
# nnU-Net's seed for its fold shuffle; fixed, so that every fold (and every seed of a
# study) shares one split whatever train.seed is.
SHUFFLE_SEED = 12345
MAX_LISTED = 5  # ids an error message names before it only counts the rest
KEYS = ("train", "val")  # of each fold in the split file

# (dataset directory, split, length) -> case ids: every process reads the pool's file names
# once, though the loop opens the fold's train and validation parts one after the other.
_IDS_READ: dict[tuple, list[str]] = {}


def fold_of(config: ml_collections.ConfigDict) -> int | None:
  """``train.fold``, ``None`` without cross-validation (also for configs from before it)."""
  return config.train.get("fold")


def case_id(file_name) -> str:
  """``case01.png`` / ``case01.nii.gz`` -> ``case01``: nnU-Net's case identifier."""
  name = file_name.decode() if isinstance(file_name, bytes) else str(file_name)
  path = pathlib.Path(name)
  return files.volume_stem(path) or files.image_stem(path) or name


def case_ids(data: rl_data.SegmentationData, split: str) -> list[str]:
  """One id per example of ``data`` (``split`` of a dataset), in order."""
  if not len(data) or "file_name" not in data.source[0]:
    return [f"{split}_{index:05d}" for index in range(len(data))]
  info = getattr(data.source, "dataset_info", None)
  key = (str(getattr(info, "data_dir", "")), split, len(data)) if info is not None else None
  if key is None or key not in _IDS_READ:
    ids = [case_id(data.source[index]["file_name"]) for index in range(len(data))]
    if key is None:
      return ids
    _IDS_READ[key] = ids
  return list(_IDS_READ[key])


@dataclasses.dataclass(frozen=True)
class Pool:
  """The labelled cases: the train split's examples, then the validation split's.

  Attributes:
    parts: the opened splits, in ``POOL_SPLITS`` order.
    ids: every case's id, in pool order.
    where: id -> ``(part number, index in that part)``.
  """

  parts: tuple[rl_data.SegmentationData, ...]
  ids: tuple[str, ...]
  where: dict[str, tuple[int, int]]

  def subset(self, ids: Sequence[str]) -> rl_data.SegmentationData:
    """The cases ``ids`` (in that order) as one split, described as the train split is."""
    source = SubsetSource([part.source for part in self.parts], [self.where[i] for i in ids])
    return dataclasses.replace(self.parts[0], source=source)


def open_pool(open_split: Callable[[str], rl_data.SegmentationData]) -> Pool:
  """The pool of ``open_split("train")`` and ``open_split("validation")``.

  Raises:
    DataError: two examples share a case id (e.g. ``case01`` in both train/ and val/).
  """
  parts = tuple(open_split(split) for split in POOL_SPLITS)
  where, problems = {}, []
  for number, (split, part) in enumerate(zip(POOL_SPLITS, parts, strict=True)):
    for index, name in enumerate(case_ids(part, split)):
      if name in where:
        first = POOL_SPLITS[where[name][0]]
        problems.append(f"case {name!r} is in {first} and in {split}: case ids must be unique")
      else:
        where[name] = (number, index)
  if problems:
    raise rl_data.DataError(problems)
  return Pool(parts, tuple(where), where)


def make_splits(ids: Sequence[str], num_folds: int, *, seed: int = SHUFFLE_SEED) -> list[dict]:
  """nnU-Net's ``splits_final.json`` content for ``ids``: the sorted ids shuffled with
  ``seed`` and cut into ``num_folds`` parts whose sizes differ by at most one; fold k
  validates on part k and trains on the others (each list sorted)."""
  ordered = sorted(ids)
  if not 2 <= num_folds <= len(ordered):
    raise ConfigError(
      f"config.train.num_folds={num_folds} does not fit a pool of {len(ordered)} cases "
      "(the train and validation splits): use 2 to that many folds."
    )
  order = np.random.default_rng(seed).permutation(len(ordered))
  parts = [sorted(ordered[i] for i in part) for part in np.array_split(order, num_folds)]
  return [
    {"train": sorted(i for j, part in enumerate(parts) if j != k for i in part), "val": parts[k]}
    for k in range(num_folds)
  ]


def _listed(ids) -> str:
  ids = sorted(ids)
  shown = ", ".join(ids[:MAX_LISTED])
  return shown + (f" and {len(ids) - MAX_LISTED} more" if len(ids) > MAX_LISTED else "")


def check_splits(splits, pool_ids: Sequence[str], *, path, num_folds: int, fold: int) -> None:
  """Raises one ``ConfigError`` naming ``path`` and the offending ids when ``splits`` is not
  a ``num_folds``-fold split of exactly ``pool_ids`` (or has no fold ``fold``)."""
  where = f"the cross-validation split {path}"
  if not isinstance(splits, list) or not all(
    isinstance(s, dict)
    and all(isinstance(s.get(k), list) and all(isinstance(i, str) for i in s[k]) for k in KEYS)
    for s in splits
  ):
    raise ConfigError(
      f'{where} must be a JSON list with one {{"train": [case ids], "val": [case ids]}} '
      "per fold (nnU-Net's splits_final.json)."
    )
  if len(splits) <= fold or len(splits) != num_folds:
    raise ConfigError(
      f"{where} holds {len(splits)} fold(s), but config.train.num_folds={num_folds} and "
      f"train.fold={fold}: set train.num_folds={len(splits)} to use it, or point "
      "data.splits_file at another file (a missing one is written)."
    )
  pool = set(pool_ids)
  for k, entry in enumerate(splits):
    problem = _fold_problem(entry, pool)
    if problem:
      raise ConfigError(f"{where}, fold {k}: {problem}.")


def _fold_problem(entry: dict, pool: set[str]) -> str | None:
  train, val = entry["train"], entry["val"]
  counts = collections.Counter(train) + collections.Counter(val)
  checks = (
    ((set(train) | set(val)) - pool, "case id(s) not in the data's train and validation splits"),
    (set(train) & set(val), "case id(s) both in train and in val"),
    (pool - set(train) - set(val), "case id(s) of the data in neither train nor val"),
    ({i for i, n in counts.items() if n > 1}, "case id(s) listed twice"),
  )
  for ids, what in checks:
    if ids:
      return f"{len(ids)} {what}: {_listed(ids)}"
  for key, ids in (("train", train), ("val", val)):
    if not ids:
      return f"no {key} cases"
  return None


def splits_path(config: ml_collections.ConfigDict, data: rl_data.SegmentationData) -> str:
  """``data.splits_file``, else ``data.dir/splits_final.json`` (folder datasets), else
  ``<cache_dir>/splits/<dataset>.json`` (``/`` as ``_``; a generated dataset's name is its
  variant's, e.g. ``imbalanced_shapes_multiclass_32px_48-16-16_seed0``)."""
  if config.data.get("splits_file"):
    return os.path.abspath(os.path.expanduser(config.data.splits_file))
  if config.data.name in ("folder", "volumes") and config.data.dir:
    return os.path.join(os.path.abspath(os.path.expanduser(config.data.dir)), SPLITS_FILE)
  # A generated dataset's variant (its sizes, data.split_sizes) is another pool: its own file.
  base, _, task = config.data.name.partition("/")
  variant = getattr(data.info, "config_name", "") or task
  name = "_".join(part for part in (base, variant) if part)
  return str(rl_data.cache_dir(config.data.cache_dir or None) / "splits" / f"{name}.json")


def _write_splits(path: str, splits: list[dict]) -> None:
  """Writes ``splits`` whole or not at all (a temporary file, then a rename)."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(tmp, "w") as f:
      json.dump(splits, f, indent=2)
    os.replace(tmp, path)
  except OSError as error:
    if os.path.exists(tmp):
      os.remove(tmp)
    code = write_errors.errno_of(error)
    if code not in write_errors.WRITE_ERRNOS:
      raise
    raise write_errors.WriteFailed(
      f"cannot write the cross-validation split to {path}: {os.strerror(code)}; set "
      "config.data.splits_file to a writable path."
    ) from error


def read_splits(path: str):
  """The JSON content of a split file (``ConfigError`` naming it when it is not JSON)."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as error:
    raise ConfigError(f"the cross-validation split {path} is not valid JSON: {error}.") from None


def fold_splits(config: ml_collections.ConfigDict, pool: Pool) -> tuple[str, list[dict]]:
  """``(path, splits)``: the split file, written first (by process 0; the others wait) when
  it is missing, and checked against the pool."""
  path = splits_path(config, pool.parts[0])
  if jax.process_index() == 0 and not os.path.exists(path):
    _write_splits(path, make_splits(pool.ids, config.train.num_folds))
    num_folds = config.train.num_folds
    logging.info("wrote a %d-fold split of %d cases to %s", num_folds, len(pool.ids), path)
  multihost_utils.sync_global_devices("cross-validation split ready")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: the cross-validation split is missing")
  splits = read_splits(path)
  check_splits(splits, pool.ids, path=path, num_folds=config.train.num_folds, fold=fold_of(config))
  return path, splits


def open_fold(
  config: ml_collections.ConfigDict,
  split: str,
  open_split: Callable[[str], rl_data.SegmentationData],
) -> rl_data.SegmentationData:
  """Fold ``train.fold``'s ``train`` or ``validation`` cases of the pool ``open_split``
  opens (its prepared splits), in the order the split file lists them."""
  pool = open_pool(open_split)
  _, splits = fold_splits(config, pool)
  ids = splits[fold_of(config)]["train" if split == "train" else "val"]
  return pool.subset(ids)


def write_record(config: ml_collections.ConfigDict, workdir: str, data) -> None:
  """``workdir/split.json``: the fold, the split file and its cases, so that a run says
  what it trained on. Without a fold a stale record (of a run ``--overwrite`` replaced) is
  removed. ``data`` is the opened train split (the split file was checked opening it)."""
  target = os.path.join(workdir, RECORD_FILE)
  fold = fold_of(config)
  if fold is None:
    if os.path.exists(target):
      os.remove(target)
    return
  path = splits_path(config, data)
  entry = read_splits(path)[fold]
  record = {
    "fold": fold,
    "num_folds": config.train.num_folds,
    "splits_file": path,
    "train": entry["train"],
    "val": entry["val"],
  }
  write_errors.write_json(target, record, what="the fold's split", workdir=workdir)
