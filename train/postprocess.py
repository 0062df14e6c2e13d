"""The connected-component post-processing of a run, chosen on its validation split.

At the end of training the best checkpoint predicts the validation split once more; per
class, :class:`regionloss_jax.postprocessing.PostprocessingSearch` keeps the rule that
raises nnU-Net's validation Dice (or none). The choice is saved as
``workdir/postprocessing.json``, and what the search saw as
``workdir/postprocessing_stats.npy``; the test split is reported before and after it, and
``train.predict`` applies it. An ensemble of cross-validation folds is post-processed as
nnU-Net does it: with the rules chosen on every fold's validation images together (the
out-of-fold predictions), from the folds' saved statistics, without predicting again.

Each process predicts its own share of the split; what the search needs of each image
(a few numbers per predicted component) is gathered so that every process chooses the same
rules from every image, in split order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np

from regionloss_jax.data import preprocess
from regionloss_jax.postprocessing import ComponentStats, Postprocessing, PostprocessingSearch
from train import parallel, write_errors
from train.user_errors import ConfigError

POSTPROCESSING_FILE = "postprocessing.json"
STATS_FILE = "postprocessing_stats.npy"
# One row per (image, class) with its ground-truth count, then one per predicted component.
_COLUMNS = ("index", "class", "gt_count", "size", "overlap", "valid_count")


def collector(search: PostprocessingSearch, prep) -> tuple[Callable, list]:
  """``(on_image, rows)``: ``on_image(example, probs)`` for
  :func:`train.scoring.evaluate_split` appends the example's statistics to ``rows``."""
  rows: list[list[float]] = []

  def on_image(example: dict, probs: np.ndarray) -> None:
    spacing = preprocess.grid_spacing(
      prep, example.get("original_shape", example["label"].shape), example.get("spacing")
    )
    pred = np.argmax(probs, axis=-1)
    index = float(example["index"])
    for k, stats in search.image_stats(pred, example["label"], spacing=spacing).items():
      rows.append([index, k, stats.gt_count, np.nan, np.nan, np.nan])
      rows.extend(
        [index, k, stats.gt_count, size, overlap, valid]
        for size, overlap, valid in zip(
          stats.sizes, stats.overlaps, stats.valid_counts, strict=True
        )
      )

  return on_image, rows


def gather(rows: list) -> np.ndarray:
  """Every process's rows, in split order (the components of an image and class keep
  theirs), on every process."""
  local = np.asarray(rows, np.float64).reshape(-1, len(_COLUMNS))
  gathered = parallel.gather_rows(local)
  return gathered[np.lexsort((gathered[:, 1], gathered[:, 0]))]  # lexsort is stable


def choose_from_rows(
  search: PostprocessingSearch, rows: np.ndarray, *, max_present_dice_drop: float | None = None
) -> Postprocessing:
  """``rows`` (from :func:`gather`) added to ``search`` image by image, and the rules
  chosen (:meth:`PostprocessingSearch.choose`)."""
  for index in np.unique(rows[:, 0]):
    image = rows[rows[:, 0] == index]
    stats = {}
    for k in np.unique(image[:, 1]):
      of_class = image[image[:, 1] == k]
      components = of_class[~np.isnan(of_class[:, 3])]
      stats[int(k)] = ComponentStats(
        gt_count=int(of_class[0, 2]),
        sizes=components[:, 3].astype(np.float64),
        overlaps=components[:, 4].astype(np.int64),
        valid_counts=components[:, 5].astype(np.int64),
      )
    search.add_stats(stats)
  return search.choose(max_present_dice_drop=max_present_dice_drop)


def write(workdir: str, chosen: Postprocessing, rows: np.ndarray, class_names) -> str:
  """Saves the choice with its validation numbers, and the statistics it was chosen from;
  returns the choice's path."""
  stats_path = os.path.join(workdir, STATS_FILE)
  with write_errors.writing(stats_path, "the post-processing statistics", workdir=workdir):
    np.save(stats_path, np.asarray(rows, np.float64))
  path = os.path.join(workdir, POSTPROCESSING_FILE)
  record = {
    "postprocessing": chosen.to_dict(),
    "validation": chosen.summary(class_names=list(class_names)),
  }
  write_errors.write_json(path, record, what="the post-processing", workdir=workdir)
  return path


def read(workdir: str) -> Postprocessing | None:
  """The run's saved choice, ``None`` when it has none (chosen off, or a run written
  before post-processing). Raises ``ConfigError`` naming the file when it cannot be read."""
  path = os.path.join(workdir, POSTPROCESSING_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return Postprocessing.from_dict(json.load(f)["postprocessing"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ConfigError(f"{path}: not a post-processing record ({error})") from error


def for_ensemble(
  workdirs: Sequence[str],
  *,
  num_classes: int,
  ignore_index: int | None,
  max_present_dice_drop: float | None = None,
) -> Postprocessing | None:
  """The post-processing of the runs ``workdirs`` predicting together: one run's own; for
  several, the rules chosen on all their validation images pooled (each run's images kept
  apart), with ``max_present_dice_drop`` as the runs chose theirs. ``None`` when a run has
  none, so that no member's choice is applied unseen."""
  if len(workdirs) == 1:
    return read(workdirs[0])
  pooled, offset = [], 0.0
  for workdir in workdirs:
    path = os.path.join(workdir, STATS_FILE)
    if read(workdir) is None or not os.path.exists(path):
      return None
    try:
      rows = np.load(path, allow_pickle=False).reshape(-1, len(_COLUMNS))
    except (OSError, ValueError) as error:
      raise ConfigError(f"{path}: not post-processing statistics ({error})") from error
    pooled.append(rows + np.asarray([offset, 0, 0, 0, 0, 0]))
    offset += float(rows[:, 0].max()) + 1 if len(rows) else 0.0
  search = PostprocessingSearch(num_classes, ignore_index=ignore_index)
  return choose_from_rows(
    search, np.concatenate(pooled), max_present_dice_drop=max_present_dice_drop
  )


def original_grid_spacing(prep, original_shape, spacing) -> tuple[float, ...]:
  """The pixel size, in the units the rules were chosen in, of a file's own grid, where
  ``train.predict`` applies them: its spacing in mm when it has one (the working grid's was
  mm too, :func:`regionloss_jax.data.preprocess.grid_spacing`), else how many working-grid
  pixels one of its pixels spans per axis (1 at native resolution)."""
  if spacing is not None:
    return tuple(float(s) for s in spacing)
  working = preprocess.grid_shapes(prep, original_shape)[-1]
  return tuple(w / o for w, o in zip(working, original_shape, strict=True))
