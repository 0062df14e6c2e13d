"""What a loaded dataset is: a random-access source of examples plus what the pipeline needs.

Every loader in :mod:`regionloss_jax.data` returns a :class:`SegmentationData`. Its source
yields dicts with ``image`` (uint8 or uint16 ``(H, W, C)``, or float32 ``(D, H, W, 1)``) and
``segmentation_mask`` (uint8 ``(*spatial, 1)``, raw values), at a size of their own or one
shared size; ``label_lut`` turns raw mask values into class ids, with ``IGNORE_INDEX`` for
pixels that count nowhere. Prepared user datasets also give ``file_name``,
``original_shape`` (and for volumes ``affine`` and ``spacing``), and ``locations`` /
``location_classes`` (a sample of each class's pixels, for foreground patches).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = 255


class DataError(ValueError):
  """Bad user data. The message names every offending file and what is wrong with it."""

  def __init__(self, problems: Sequence[str], *, root: str = ""):
    self.problems = list(problems)
    where = f" in {root}" if root else ""
    lines = "\n".join(f"  - {p}" for p in self.problems)
    super().__init__(f"{len(self.problems)} problem(s) found{where}:\n{lines}")


def identity_lut() -> np.ndarray:
  """The ``uint8[256]`` lookup table that keeps every mask value as it is."""
  return np.arange(256, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class SegmentationData:
  """A split of a segmentation dataset, ready for :func:`regionloss_jax.data.make_pipeline`.

  Attributes:
    source: random-access, picklable sequence of example dicts (``len`` and ``[i]``),
      e.g. a TFDS ``ArrayRecordDataSource``.
    class_names: one name per class id; ``len(class_names)`` is the number of classes.
    label_lut: ``uint8[256]``; raw mask value ``v`` becomes class ``label_lut[v]``
      (``IGNORE_INDEX`` for ignored pixels).
    spatial_shape: the ``(H, W)`` or ``(D, H, W)`` the pipeline outputs by default (the
      examples' own fixed shape for prepared datasets); ``None`` when the examples keep
      their own sizes (native resolution).
    mean, std: per-channel statistics used to normalise images scaled to ``[0, 1]``.
    info: free-form details (the TFDS ``DatasetInfo``, the prepared directory, ...).
    preprocessing: the :class:`regionloss_jax.data.preprocess.Preprocessing` that turns a
      new file into the inputs this dataset gives (saved with every run, used to predict).
    ignore_index: the label value of pixels that count nowhere, in neither loss nor metric;
      the dataset owns it so that a training program passes this one value to both.
  """

  source: Any
  class_names: tuple[str, ...]
  label_lut: np.ndarray = dataclasses.field(default_factory=identity_lut)
  spatial_shape: tuple[int, ...] | None = None
  mean: tuple[float, ...] = (0.5, 0.5, 0.5)
  std: tuple[float, ...] = (0.25, 0.25, 0.25)
  info: Any = None
  preprocessing: Any = None
  ignore_index: int = IGNORE_INDEX

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return len(self.source)


class SubsetSource:
  """Chosen examples of several sources as one random-access, picklable source.

  Example ``i`` is ``sources[picks[i][0]][picks[i][1]]``: e.g. a cross-validation fold's
  cases drawn from a dataset's train and validation splits.

  Args:
    sources: random-access sources (``len`` and ``[i]``).
    picks: ``(source number, index in that source)`` per example, in order.
  """

  def __init__(self, sources: Sequence[Any], picks: Sequence[tuple[int, int]]):
    self.sources = tuple(sources)
    self.picks = tuple((int(s), int(i)) for s, i in picks)
    for number, index in self.picks:
      if not (0 <= number < len(self.sources) and 0 <= index < len(self.sources[number])):
        raise IndexError(f"pick ({number}, {index}) is outside the sources")

  def __len__(self) -> int:
    return len(self.picks)

  def __getitem__(self, index: int):
    number, position = self.picks[index]
    return self.sources[number][position]

  def __repr__(self) -> str:
    sizes = ", ".join(str(len(s)) for s in self.sources)
    return f"SubsetSource({len(self)} examples of sources of sizes {sizes})"
