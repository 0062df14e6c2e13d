"""Users' folders: find image/mask pairs by file stem, carve missing splits, check values,
and prepare a TFDS builder into the cache atomically.

Layout: ``root/{train,val,test}/{images,masks}/<stem>.<ext>``; ``train`` is required,
``val`` and ``test`` are carved from it with a fixed seed when absent. Shared by
:mod:`regionloss_jax.data.folder` (2-D images) and :mod:`regionloss_jax.data.volumes` (3-D).
"""

from __future__ import annotations

import pathlib
import shutil
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from regionloss_jax.data import cache
from regionloss_jax.data.source import IGNORE_INDEX, DataError

# Folder names on disk -> TFDS split names.
SPLIT_DIRS = {"train": "train", "val": "validation", "test": "test"}


def split_name(split: str) -> str:
  """``val`` is accepted for ``validation``; TFDS slices (``train[:10]``) pass through."""
  return (
    "validation" + split[3:]
    if split.startswith("val") and not split.startswith("validation")
    else split
  )


def list_files(root: pathlib.Path) -> list[pathlib.Path]:
  """Every non-hidden file under the split folders (the folder's fingerprint)."""
  files = []
  for split_dir in SPLIT_DIRS:
    for sub in ("images", "masks"):
      folder = root / split_dir / sub
      if folder.is_dir():
        files += [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
  return files


def find_pairs(root: pathlib.Path, *, stem: Callable[[pathlib.Path], str | None]):
  """Pair ``images/*`` with ``masks/*`` by stem in each split folder present.

  Args:
    root: the dataset folder.
    stem: the pairing key of a file name, ``None`` for a file of an unsupported type.

  Returns:
    ``(pairs, problems)``: ``{tfds split: [(image, mask), ...]}`` sorted by stem, and a
    list of messages naming files without a partner or of an unsupported type.
  """
  problems = []
  if not root.is_dir():
    raise DataError([f"{root}: no such folder"])
  if not (root / "train").is_dir():
    raise DataError(
      [
        f"{root / 'train'}: missing (the layout is root/{{train,val,test}}/"
        f"{{images,masks}}/*, train required)"
      ]
    )
  pairs = {}
  for split_dir, split in SPLIT_DIRS.items():
    if not (root / split_dir).is_dir():
      continue
    found = {}
    for sub in ("images", "masks"):
      folder = root / split_dir / sub
      found[sub] = {}
      if not folder.is_dir():
        problems.append(f"{folder}: missing folder")
        continue
      for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
          continue
        key = stem(path)
        if key is None:
          problems.append(f"{path}: unsupported file type")
        elif key in found[sub]:
          problems.append(f"{path}: same stem as {found[sub][key]}")
        else:
          found[sub][key] = path
    images, masks = found["images"], found["masks"]
    for key in sorted(images.keys() - masks.keys()):
      problems.append(
        f"{images[key]}: image without a mask (expected {root / split_dir / 'masks' / key}.*)"
      )
    for key in sorted(masks.keys() - images.keys()):
      problems.append(
        f"{masks[key]}: mask without an image (expected {root / split_dir / 'images' / key}.*)"
      )
    pairs[split] = [(images[k], masks[k]) for k in sorted(images.keys() & masks.keys())]
  if not pairs.get("train") and not problems:
    problems.append(f"{root / 'train'}: no image/mask pairs")
  return pairs, problems


def empty_file_problem(path: pathlib.Path, what: str) -> str | None:
  """A message for a zero-byte file, or ``None``: readers' own errors for it are obscure."""
  if path.stat().st_size == 0:
    return f"{path}: empty {what} file (0 bytes)"
  return None


def nonfinite_problem(path: pathlib.Path, array: np.ndarray, what: str) -> str | None:
  """A message for a float file holding NaN or inf, or ``None``: its percentile scaling would
  turn the whole image into NaN, which the stored integers hide as zeros."""
  if array.dtype.kind != "f" or np.isfinite(array).all():
    return None
  count = int(array.size - np.isfinite(array).sum())
  return f"{path}: {what} holds {count} NaN or infinite value(s)"


def too_small_problem(path: pathlib.Path, shape: tuple[int, ...]) -> str | None:
  """A message for a native-resolution mask TFDS cannot read back, or ``None``.

  TFDS stores a tensor of unknown shape as bytes plus its shape, and on reading keeps only
  as many shape entries as there are bytes: a uint8 mask of fewer pixels than its rank
  (2-D masks are ``(H, W, 1)``, volumes ``(D, H, W, 1)``) is written but fails every read.
  """
  rank = len(shape) + 1
  if int(np.prod(shape)) >= rank:
    return None
  return (
    f"{path}: {'x'.join(map(str, shape))} is too small to store at native resolution "
    f"(at least {rank} pixels); remove it or set a fixed size to resize to"
  )


def carve_splits(pairs: dict, *, val_fraction: float, test_fraction: float, seed: int) -> dict:
  """Fill missing ``validation`` / ``test`` with a seeded random part of ``train``."""
  pairs = dict(pairs)
  missing = [
    (s, f) for s, f in (("validation", val_fraction), ("test", test_fraction)) if s not in pairs
  ]
  if not missing:
    return pairs
  train = pairs["train"]
  order = np.random.default_rng(seed).permutation(len(train))
  counts = [max(1, round(f * len(train))) for _, f in missing]
  if sum(counts) >= len(train):
    raise DataError(
      [f"train has {len(train)} pairs: too few to carve {', '.join(s for s, _ in missing)} from it"]
    )
  start = 0
  for (split, _), count in zip(missing, counts, strict=True):
    pairs[split] = sorted(train[i] for i in order[start : start + count])
    start += count
  pairs["train"] = sorted(train[i] for i in order[start:])
  return pairs


def class_names_for(num_classes: int, class_names: Sequence[str] | None) -> tuple[str, ...]:
  """``class_names`` checked against ``num_classes``; default ``background, class_1, ...``."""
  names = tuple(class_names or ["background"] + [f"class_{i}" for i in range(1, num_classes)])
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class_names for num_classes={num_classes}")
  return names


def value_lookup(num_classes: int, value_map: dict[int, int] | None) -> dict[int, int]:
  """Raw mask value -> class id; the identity on ``0..num_classes-1`` by default."""
  if value_map is None:
    return {v: v for v in range(num_classes)}
  for raw, cls in value_map.items():
    if not (0 <= cls < num_classes or cls == IGNORE_INDEX):
      raise ValueError(
        f"value_map[{raw}] = {cls} is not a class id in [0, {num_classes}) "
        f"nor the ignore index {IGNORE_INDEX}"
      )
  return {int(k): int(v) for k, v in value_map.items()}


def value_problem(path, values: np.ndarray, lookup: dict[int, int]) -> str | None:
  """A message naming ``path`` and its values outside ``lookup``, or ``None``."""
  bad = sorted(set(values.tolist()) - lookup.keys())
  if not bad:
    return None
  hint = ""
  if set(values.tolist()) <= {0, 255}:
    hint = (
      "; binary masks stored as 0/255 need value_map={0: 0, 255: 1} (in a run "
      'config: --config.data.value_map="((0,0),(255,1))")'
    )
  return (
    f"{path}: mask values outside the declared classes: {bad} (found "
    f"{sorted(values.tolist())}, allowed {sorted(lookup)}){hint}"
  )


def apply_lookup(mask: np.ndarray, lookup: dict[int, int]) -> np.ndarray:
  """Map raw values to class ids (uint8); values must all be keys of ``lookup``."""
  out = np.zeros(mask.shape, np.uint8)
  for raw, cls in lookup.items():
    out[mask == raw] = cls
  return out


def warn_background_only(split_foreground: dict[str, bool], root) -> None:
  for split, has_foreground in split_foreground.items():
    if not has_foreground:
      warnings.warn(f"{root}: every mask of split {split!r} is background only", stacklevel=3)


def prepare_cached(
  *,
  kind: str,
  root: pathlib.Path,
  options: dict,
  cache_dir,
  check: Callable[[], object],
  make_builder: Callable,
) -> object:
  """Return a prepared builder, preparing it first if this folder+options is new.

  Args:
    kind: cache sub-folder (``folder`` / ``volumes``).
    root: the user's folder; its files' paths, sizes and mtimes key the cache.
    options: preparation options; they key the cache too.
    cache_dir: cache root override.
    check: reads and checks everything, raising :class:`DataError`; returns what
      ``make_builder`` needs to write. Called only when the dataset is not yet prepared.
    make_builder: ``make_builder(data_dir, checked_or_None)`` -> a TFDS builder.

  A failed preparation removes its directory: no partial dataset is left in the cache.
  """
  root = pathlib.Path(root).expanduser().resolve()
  key = cache.cache_key(
    source=root, options=options, fingerprint=cache.folder_fingerprint(list_files(root), root)
  )
  data_dir = cache.cache_dir(cache_dir) / kind / f"{root.name}-{key}"
  builder = make_builder(data_dir, None)
  if builder.is_prepared():
    return builder
  checked = check()  # Everything is read and checked before anything is written.
  builder = make_builder(data_dir, checked)
  try:
    builder.download_and_prepare()
  except BaseException:
    shutil.rmtree(data_dir, ignore_errors=True)
    raise
  return builder


def tfds_splits(pairs: dict, order: Sequence[str] = ("train", "validation", "test")):
  return {s: pairs[s] for s in order if s in pairs}
