"""Connected-component post-processing of predicted masks, chosen per class on validation.

A model can paint small specks of a class into images that do not hold it. nnU-Net
(F. Isensee, P. F. Jaeger, S. A. A. Kohl, J. Petersen, K. H. Maier-Hein, "nnU-Net: a
self-configuring method for deep learning-based biomedical image segmentation", Nature Methods
18, 203-211, 2021, doi:10.1038/s41592-020-01008-z) removes them with a rule decided on the
validation predictions: per class, keep only the largest connected component, and only if that
raises the validation Dice. This module does the same and also offers dropping the components
below a size. Per class k, on the connected components of ``mask == k`` with full
connectivity (8 neighbours in 2-D, 26 in 3-D):

=====================  ==================================================================
``none``               the mask as predicted
``largest_component``  keep the largest component (ties: the first in raster order)
``min_size``           remove the components of size ``< min_size``, the size being the
                       pixel count times the pixel area (volume) from ``spacing``
=====================  ==================================================================

Removed pixels become background (class 0). Rules apply to one image at a time.

Choosing a rule (:class:`PostprocessingSearch`) needs no stored masks: per validation image
and class it keeps ``|G|`` (valid ground-truth pixels) and, per predicted component, its size,
its valid pixel count and its overlap with ``G``, which give any rule's ``tp``, ``fp`` and
``fn`` exactly. The criterion is nnU-Net's validation Dice: per image ``2tp / (2tp + fp + fn)``,
averaged over the images where the class is in the ground truth or in the post-processed
prediction. Images where both are empty are left out, which is what rewards removing a speck
from an image without the class: the image leaves the mean instead of scoring 0. A rule
replaces ``none`` only when its criterion is higher by more than ``1e-12``; among equally good
rules the least aggressive wins (``none``, then ``min_size`` from the smallest threshold, then
``largest_component``).

That criterion trades Dice on the images holding a class for fewer false positives in the
others: a size threshold that removes specks also removes small true components. Passing
``max_present_dice_drop`` to :meth:`PostprocessingSearch.choose` keeps only the rules whose
mean Dice over the images holding the class falls by at most that much.

Example:
  >>> import numpy as np
  >>> with_class = np.zeros((8, 8), int)
  >>> with_class[1:5, 1:5] = 1
  >>> speck = np.zeros((8, 8), int)
  >>> speck[6, 5:8] = 1
  >>> search = PostprocessingSearch(num_classes=2)
  >>> search.add(with_class, with_class)  # found exactly
  >>> search.add(speck, np.zeros((8, 8), int))  # a 3-pixel false positive
  >>> chosen = search.choose()
  >>> chosen.rules[1].kind, chosen.classes[1].before.criterion, chosen.classes[1].after.criterion
  ('min_size', 0.5, 1.0)
  >>> int(chosen.apply(speck).sum()), int(chosen.apply(with_class).sum())
  (0, 16)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

RULE_KINDS = ("none", "largest_component", "min_size")
MAX_THRESHOLDS = 16
# Criteria are means of ratios of integers: differences below this are rounding, not gains.
_TIE = 1e-12


@dataclasses.dataclass(frozen=True)
class Rule:
  """What to keep of one class's connected components.

  Attributes:
    kind: ``"none"``, ``"largest_component"`` or ``"min_size"``.
    min_size: for ``"min_size"``, the smallest size kept, in physical units (mm^2 / mm^3
      from the spacing; pixels without one); 0 for the other kinds.
  """

  kind: str = "none"
  min_size: float = 0.0

  def __post_init__(self):
    if self.kind not in RULE_KINDS:
      raise ValueError(f"Rule kind must be one of {RULE_KINDS}, got {self.kind!r}.")
    size = float(self.min_size)
    if not (np.isfinite(size) and size >= 0):
      raise ValueError(f"Rule min_size must be finite and >= 0, got {self.min_size!r}.")
    if self.kind != "min_size" and size != 0:
      raise ValueError(
        f"Rule min_size={self.min_size!r} is only used by kind='min_size', got kind={self.kind!r}."
      )
    object.__setattr__(self, "min_size", size)

  def kept(self, sizes) -> np.ndarray:
    """Which components survive: bool ``(n,)`` for component sizes ``(n,)`` in label order."""
    sizes = np.asarray(sizes, np.float64)
    if self.kind == "none":
      return np.ones(sizes.shape, bool)
    if self.kind == "min_size":
      return sizes >= self.min_size
    keep = np.zeros(sizes.shape, bool)
    if sizes.size:
      keep[np.argmax(sizes)] = True  # argmax takes the first of equal sizes
    return keep

  def __str__(self) -> str:
    return f"min_size({self.min_size:g})" if self.kind == "min_size" else self.kind

  def to_dict(self) -> dict[str, Any]:
    return {"kind": self.kind, "min_size": self.min_size}

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Rule:
    unknown = set(data) - {"kind", "min_size"}
    if "kind" not in data or unknown:
      raise ValueError(
        f"a Rule dict holds 'kind' and optionally 'min_size'; got keys {sorted(data)}."
      )
    return cls(kind=data["kind"], min_size=data.get("min_size", 0.0))


def _aggressiveness(rule: Rule) -> tuple[int, float]:
  """Sort key: the least aggressive rule first."""
  return ({"none": 0, "min_size": 1, "largest_component": 2}[rule.kind], rule.min_size)


def _check_mask(mask, name: str) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.ndim not in (2, 3):
    raise ValueError(
      f"{name} must be one image's integer mask (H, W) or (D, H, W), got shape {mask.shape}."
    )
  if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
    raise ValueError(
      f"{name} must be an integer mask of class ids, got dtype {mask.dtype} "
      f"with shape {mask.shape}."
    )
  return mask


def _voxel_volume(spacing, ndim: int) -> float:
  """Area (2-D) or volume (3-D) of one pixel; 1 without a spacing."""
  if spacing is None:
    return 1.0
  array = np.asarray(spacing, np.float64).reshape(-1)
  if array.size not in (1, ndim):
    raise ValueError(
      f"spacing must be one number or one per spatial axis ({ndim}), got {np.asarray(spacing)}."
    )
  if not np.all(np.isfinite(array) & (array > 0)):
    raise ValueError(f"spacing must be positive and finite, got {array.tolist()}.")
  return float(np.prod(np.broadcast_to(array, (ndim,))))


def _components(binary: np.ndarray) -> tuple[np.ndarray, int]:
  """Connected components with full connectivity (8 in 2-D, 26 in 3-D), labelled 1..n."""
  structure = ndimage.generate_binary_structure(binary.ndim, binary.ndim)
  return ndimage.label(binary, structure=structure)


def _check_rules(rules: Mapping[int, Rule]) -> dict[int, Rule]:
  if not isinstance(rules, Mapping):
    raise ValueError(f"rules must map class ids to Rule, got {type(rules).__name__}.")
  for class_id, rule in rules.items():
    if isinstance(class_id, bool) or not isinstance(class_id, (int, np.integer)) or class_id < 1:
      raise ValueError(
        f"rules apply to foreground class ids (integers >= 1), got key {class_id!r}."
      )
    if not isinstance(rule, Rule):
      raise ValueError(f"rules[{class_id}] must be a Rule, got {rule!r}.")
  return {int(k): v for k, v in rules.items()}


def apply_rules(mask, rules: Mapping[int, Rule], *, spacing=None) -> np.ndarray:
  """Applies per-class component rules to one predicted mask.

  For each class k with a rule, the components of ``mask == k`` (full connectivity) that the
  rule drops become background 0; classes without a rule are left alone.

  Args:
    mask: class id per pixel, integer ``(H, W)`` or ``(D, H, W)``.
    rules: ``{class id >= 1: Rule}``.
    spacing: pixel size, one number or one per spatial axis, for ``min_size`` in physical
      units; default 1 (sizes in pixels).

  Returns:
    A new mask of the same shape and dtype.

  Examples:
    A 2x2 block and a lone pixel that touches nothing (not even diagonally):

    >>> import numpy as np
    >>> mask = np.array([[1, 1, 0, 0], [1, 1, 0, 1]])
    >>> apply_rules(mask, {1: Rule("min_size", 2.0)})
    array([[1, 1, 0, 0],
           [1, 1, 0, 0]])
    >>> apply_rules(mask, {1: Rule("min_size", 2.0)}, spacing=2.0)  # pixels of 4 mm^2
    array([[1, 1, 0, 0],
           [1, 1, 0, 1]])
  """
  mask = _check_mask(mask, "mask")
  rules = _check_rules(rules)
  volume = _voxel_volume(spacing, mask.ndim)
  out = mask.copy()
  for class_id, rule in rules.items():
    if rule.kind == "none":
      continue
    labelled, count = _components(mask == class_id)
    if count == 0:
      continue
    sizes = np.bincount(labelled.reshape(-1), minlength=count + 1)[1:] * volume
    keep = np.concatenate([[True], rule.kept(sizes)])  # index 0 is not a component
    out[~keep[labelled]] = 0
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class ComponentStats:
  """What one validation image says about one class, enough to score any rule on it.

  Attributes:
    gt_count: ``|G|``, valid ground-truth pixels of the class.
    sizes: float64 ``(n,)``, physical size of each predicted component (all its pixels,
      ignored ones too, as :func:`apply_rules` sees them), in label order.
    overlaps: int64 ``(n,)``, valid pixels of each component inside ``G``.
    valid_counts: int64 ``(n,)``, valid pixels of each component.
  """

  gt_count: int
  sizes: np.ndarray
  overlaps: np.ndarray
  valid_counts: np.ndarray

  @classmethod
  def from_masks(cls, pred_mask, true_mask, valid, *, voxel_volume: float = 1.0):
    """From bool masks of one image: the class predicted, in the truth (valid only), valid."""
    labelled, count = _components(pred_mask)
    return cls(
      gt_count=int(np.count_nonzero(true_mask)),
      sizes=np.bincount(labelled.reshape(-1), minlength=count + 1)[1:] * float(voxel_volume),
      overlaps=np.bincount(labelled[true_mask], minlength=count + 1)[1:].astype(np.int64),
      valid_counts=np.bincount(labelled[valid], minlength=count + 1)[1:].astype(np.int64),
    )

  def counts(self, rule: Rule) -> tuple[int, int, int]:
    """``(tp, fp, fn)`` of the class on this image after ``rule``:
    ``tp = sum_kept overlap``, ``fp = sum_kept (valid - overlap)``, ``fn = |G| - tp``."""
    kept = rule.kept(self.sizes)
    tp = int(self.overlaps[kept].sum())
    fp = int(self.valid_counts[kept].sum()) - tp
    return tp, fp, self.gt_count - tp


@dataclasses.dataclass(frozen=True)
class ClassScores:
  """Validation numbers of one class under one rule (``None`` where no image qualifies).

  Attributes:
    criterion: nnU-Net's Dice, the mean over images with the class in the truth or in the
      prediction.
    present_dice: the mean Dice over the images holding the class (as
      :func:`regionloss_jax.metrics.summarize`).
    absent_fp_rate: share of the images without the class where some of it is predicted.
  """

  criterion: float | None
  present_dice: float | None
  absent_fp_rate: float | None

  def to_dict(self) -> dict[str, float | None]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> ClassScores:
    return cls(**{f.name: _optional_float(data[f.name]) for f in dataclasses.fields(cls)})


def _optional_float(value) -> float | None:
  return None if value is None else float(value)


def _mean_or_none(values: np.ndarray) -> float | None:
  return float(values.mean()) if values.size else None


def _scores(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> ClassScores:
  """Scores from per-image counts ``(N,)`` of one class."""
  present, predicted = tp + fn > 0, tp + fp > 0
  counted = present | predicted
  denominator = 2 * tp + fp + fn
  dice = 2 * tp / np.where(counted, denominator, 1)
  return ClassScores(
    criterion=_mean_or_none(dice[counted]),
    present_dice=_mean_or_none(dice[present]),
    absent_fp_rate=_mean_or_none(predicted[~present].astype(np.float64)),
  )


@dataclasses.dataclass(frozen=True)
class ClassChoice:
  """The rule chosen for one class, with its validation numbers before and after."""

  rule: Rule
  before: ClassScores
  after: ClassScores
  num_images: int
  num_present: int

  def to_dict(self) -> dict[str, Any]:
    return {
      "rule": self.rule.to_dict(),
      "before": self.before.to_dict(),
      "after": self.after.to_dict(),
      "num_images": self.num_images,
      "num_present": self.num_present,
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> ClassChoice:
    return cls(
      rule=Rule.from_dict(data["rule"]),
      before=ClassScores.from_dict(data["before"]),
      after=ClassScores.from_dict(data["after"]),
      num_images=int(data["num_images"]),
      num_present=int(data["num_present"]),
    )


@dataclasses.dataclass(frozen=True)
class Postprocessing:
  """Per-class rules chosen on validation, and what they did there.

  Attributes:
    num_classes: C, background included.
    classes: ``{class id: ClassChoice}`` for the foreground classes.
  """

  num_classes: int
  classes: Mapping[int, ClassChoice]

  def __post_init__(self):
    for class_id in self.classes:
      if not 1 <= class_id < self.num_classes:
        raise ValueError(
          f"Postprocessing class ids must be in [1, num_classes={self.num_classes}), "
          f"got {class_id!r}."
        )
    object.__setattr__(self, "classes", {int(k): v for k, v in sorted(self.classes.items())})

  @property
  def rules(self) -> dict[int, Rule]:
    return {k: choice.rule for k, choice in self.classes.items()}

  @property
  def is_identity(self) -> bool:
    """True when every rule is ``none`` (applying it changes nothing)."""
    return all(choice.rule.kind == "none" for choice in self.classes.values())

  def apply(self, mask, *, spacing=None) -> np.ndarray:
    """:func:`apply_rules` with these rules on one mask ``(H, W)`` or ``(D, H, W)``."""
    return apply_rules(mask, self.rules, spacing=spacing)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready: class ids become string keys."""
    return {
      "num_classes": self.num_classes,
      "classes": {str(k): choice.to_dict() for k, choice in self.classes.items()},
    }

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Postprocessing:
    if set(data) != {"num_classes", "classes"}:
      raise ValueError(
        f"a Postprocessing dict holds 'num_classes' and 'classes'; got keys {sorted(data)}."
      )
    return cls(
      num_classes=int(data["num_classes"]),
      classes={int(k): ClassChoice.from_dict(v) for k, v in data["classes"].items()},
    )

  def summary(self, *, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """A flat dict per class for reports: the rule and each number before / after."""
    if class_names is not None and len(class_names) != self.num_classes:
      raise ValueError(
        f"class_names has {len(class_names)} entries for {self.num_classes} classes: "
        f"{list(class_names)}."
      )
    per_class = {}
    for k, choice in self.classes.items():
      row: dict[str, Any] = {"rule": str(choice.rule)}
      for field in ("criterion", "present_dice", "absent_fp_rate"):
        row[f"{field}_before"] = getattr(choice.before, field)
        row[f"{field}_after"] = getattr(choice.after, field)
      row["num_images"], row["num_present"] = choice.num_images, choice.num_present
      per_class[class_names[k] if class_names is not None else k] = row
    return {"is_identity": self.is_identity, "per_class": per_class}


def _thresholds(sizes: np.ndarray) -> np.ndarray:
  """Up to :data:`MAX_THRESHOLDS` geometrically spaced sizes from the smallest to the largest."""
  if sizes.size == 0:
    return sizes
  return np.unique(np.geomspace(sizes.min(), sizes.max(), MAX_THRESHOLDS))


def _within(before: ClassScores, after: ClassScores, max_drop: float | None) -> bool:
  """Whether ``after`` keeps the present-image Dice within ``max_drop`` of ``before``."""
  if max_drop is None or before.present_dice is None or after.present_dice is None:
    return True
  return after.present_dice >= before.present_dice - max_drop - _TIE


class PostprocessingSearch:
  """Collects validation statistics image by image, then chooses a rule per class.

  Args:
    num_classes: C, background included (class 0 is never post-processed).
    ignore_index: label value of pixels that count nowhere.
  """

  def __init__(self, num_classes: int, *, ignore_index: int | None = None):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
      raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if num_classes < 1:
      raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    self.num_classes = int(num_classes)
    self.ignore_index = ignore_index
    self.num_images = 0
    self._stats: dict[int, list[ComponentStats]] = {k: [] for k in range(1, self.num_classes)}

  def add(self, pred, labels, *, spacing=None) -> None:
    """Records one validation image.

    Args:
      pred: predicted class per pixel, integer ``(H, W)`` or ``(D, H, W)``, one image (a
        batch goes in one image at a time).
      labels: true class per pixel, same shape; may hold ``ignore_index``.
      spacing: this image's pixel size, one number or one per spatial axis.
    """
    self.add_stats(self.image_stats(pred, labels, spacing=spacing))

  def image_stats(self, pred, labels, *, spacing=None) -> dict[int, ComponentStats]:
    """What :meth:`add` records of one image, ``{class id: ComponentStats}``, without
    recording it: processes that each saw some images send these to one search."""
    pred, labels = _check_mask(pred, "pred"), _check_mask(labels, "labels")
    if pred.shape != labels.shape:
      raise ValueError(
        f"pred and labels must have the same shape; got pred {pred.shape} and labels "
        f"{labels.shape}."
      )
    valid = (
      np.ones(labels.shape, bool) if self.ignore_index is None else labels != self.ignore_index
    )
    for name, values in (("pred", pred), ("labels", labels[valid])):
      outside = values[(values < 0) | (values >= self.num_classes)]
      if outside.size:
        raise ValueError(
          f"{name} holds value {outside[0]} outside [0, num_classes={self.num_classes})"
          + ("" if self.ignore_index is None or name == "pred" else f" and != {self.ignore_index}")
          + "."
        )
    volume = _voxel_volume(spacing, pred.ndim)
    return {
      k: ComponentStats.from_masks(pred == k, (labels == k) & valid, valid, voxel_volume=volume)
      for k in self._stats
    }

  def add_stats(self, stats: Mapping[int, ComponentStats]) -> None:
    """Records one image from its :meth:`image_stats` (one entry per foreground class)."""
    if set(stats) != set(self._stats):
      raise ValueError(
        f"stats must hold the foreground classes {sorted(self._stats)}; got {sorted(stats)}."
      )
    for k, image in stats.items():
      self._stats[k].append(image)
    self.num_images += 1

  def _check_class(self, class_id: int) -> list[ComponentStats]:
    if class_id not in self._stats:
      raise ValueError(
        f"class_id must be a foreground class in [1, {self.num_classes}), got {class_id!r}."
      )
    return self._stats[class_id]

  def stats(self, class_id: int) -> tuple[ComponentStats, ...]:
    """The recorded statistics of one class, one per image in the order added."""
    return tuple(self._check_class(class_id))

  def counts(self, class_id: int, rule: Rule) -> dict[str, np.ndarray]:
    """``{"tp", "fp", "fn"}`` int64 ``(num_images,)`` of one class after ``rule``."""
    stats = self._check_class(class_id)
    rows = np.array([s.counts(rule) for s in stats], np.int64).reshape(-1, 3)
    return {"tp": rows[:, 0], "fp": rows[:, 1], "fn": rows[:, 2]}

  def evaluate(self, class_id: int, rule: Rule) -> ClassScores:
    """Validation scores of one class after ``rule``."""
    return _scores(**self.counts(class_id, rule))

  def candidates(self, class_id: int) -> list[Rule]:
    """``none``, ``largest_component`` and ``min_size`` at the thresholds of the class."""
    stats = self._check_class(class_id)
    sizes = np.concatenate([s.sizes for s in stats]) if stats else np.zeros(0)
    return [
      Rule(),
      Rule("largest_component"),
      *(Rule("min_size", float(t)) for t in _thresholds(sizes)),
    ]

  def choose(self, *, max_present_dice_drop: float | None = None) -> Postprocessing:
    """The rule per foreground class with the best validation criterion (module docstring).

    A rule after which no image counts (the class is in no ground truth and the rule
    removes every prediction) has no criterion and is never chosen: validation then says
    nothing about the class.

    Args:
      max_present_dice_drop: when set, a rule qualifies only if the mean Dice over the
        validation images holding the class is at most this much below that of ``none``
        (nnU-Net's choice: ``None``, any drop).
    """
    if self.num_images == 0:
      raise ValueError("choose() needs validation images; add() was never called.")
    if max_present_dice_drop is not None and not (
      np.isfinite(max_present_dice_drop) and max_present_dice_drop >= 0
    ):
      raise ValueError(
        f"max_present_dice_drop must be a finite number >= 0, got {max_present_dice_drop!r}."
      )
    classes = {}
    for k in self._stats:
      before = self.evaluate(k, Rule())
      chosen, after = Rule(), before
      if before.criterion is not None:
        scored = [(rule, self.evaluate(k, rule)) for rule in self.candidates(k)]
        scored = [
          (rule, s)
          for rule, s in scored
          if s.criterion is not None and _within(before, s, max_present_dice_drop)
        ]
        best = max(s.criterion for _, s in scored)
        if best > before.criterion + _TIE:
          chosen, after = min(
            ((rule, s) for rule, s in scored if s.criterion >= best - _TIE),
            key=lambda pair: _aggressiveness(pair[0]),
          )
      num_present = int(sum(s.gt_count > 0 for s in self._stats[k]))
      classes[k] = ClassChoice(chosen, before, after, self.num_images, num_present)
    return Postprocessing(num_classes=self.num_classes, classes=classes)
