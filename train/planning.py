"""The rules of ``python -m train.plan``: a dataset's fingerprint, and the plan made from it.

The spirit is nnU-Net's experiment planning (Isensee et al., Nature Methods 18, 2021): look
at the data once, then choose what a practitioner would otherwise guess.

**Fingerprint** (:func:`fingerprint`), over the labelled training cases (never the test
split): each case's spatial shape and voxel spacing (2-D images have none: pixels), the
intensities of each channel inside the foreground (at most 10,000 voxels per case, drawn
with a fixed seed; every voxel when a case has no foreground): mean, standard deviation,
median, 0.5 and 99.5 percentiles, minimum and maximum; and per class its voxels, its share
of all voxels and the number of cases that hold it.

**Plan** (:func:`make_plan`):

1. *Target spacing* (volumes): the median spacing per axis. When the coarsest axis is more
   than 3 times the finest (thick slices), that axis takes the 10th percentile of its
   spacings instead, so that the few thin-slice cases are not blurred to the median.
2. *Median shape* at the target spacing, per axis.
3. *Patch size*: a box isotropic in millimetres holding 256^3 voxels (2-D: 2048^2 pixels),
   clipped to the median shape; then, while the estimated train step
   (:mod:`train.memory`) at the smallest batch does not fit the memory budget, the axis
   whose patch is largest relative to the median shape is shrunk by one step of its
   pooling divisor. Each axis is rounded up to a multiple of its divisor.
4. *Pooling and depth*: an axis is halved at a level while it stays at least 4 voxels and
   its current spacing is within twice the finest current spacing (an anisotropic axis
   waits until the others have caught up, as nnU-Net pools); at most 5 levels in 3-D, 6 in
   2-D. ``model.pooling`` holds the factors of each level.
5. *Widths*: 32 features at full resolution, doubled per level up to 320 (3-D) or 512 (2-D),
   nnU-Net's widths.
6. *Batch size*: the largest that fits the budget, at least 2, at most what covers 5% of the
   dataset's voxels at the target spacing in one step (nnU-Net's cap, so that a step does
   not see most of a small dataset), and a multiple of the device count.
7. *Normalisation* (volumes): a channel named CT (dataset.json's channel names, or
   ``--channel_names``) is clipped to its foreground 0.5 and 99.5 percentiles over the
   whole dataset (``data.intensity_range``), nnU-Net's CT scheme up to an affine map that
   instance norm absorbs; any other channel is scaled per volume to its own 0.5 and 99.5
   percentiles. 2-D images keep the folder dataset's scaling (8-bit divided by 255).

The budget is a share (``MEMORY_SHARE``) of what the planning device holds
(:func:`train.memory.device_memory`), or ``--memory_gb``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from regionloss_jax.data.source import IGNORE_INDEX
from train import memory

SAMPLES_PER_CASE = 10_000
ANISOTROPY = 3.0
MIN_FEATURE_MAP = 4
MAX_DEPTH = {2: 6, 3: 5}
FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
INITIAL_VOXELS = {2: 2048**2, 3: 256**3}
MIN_BATCH = 2
BATCH_SHARE_OF_DATASET = 0.05
# Of the device's memory, what the train step may take: the rest is for the compiler, the
# evaluation windows and fragmentation.
MEMORY_SHARE = 0.8


class PlanError(ValueError):
  """The data or the device cannot make a plan; the message says what and why."""


@dataclasses.dataclass(frozen=True)
class Case:
  """One labelled case as read from disk: ``image (*spatial, C)`` raw values, ``label
  (*spatial)`` class ids (``IGNORE_INDEX`` for ignored pixels), spacing in mm or ``None``."""

  name: str
  image: np.ndarray
  label: np.ndarray
  spacing: tuple[float, ...] | None = None


def fingerprint(
  cases: Iterable[Case], *, class_names: Sequence[str], channel_names: Sequence[str] | None = None
) -> dict:
  """The dataset's fingerprint (module docstring) as a JSON-ready dict."""
  rng = np.random.default_rng(0)
  shapes, spacings, names, samples = [], [], [], []
  counts = np.zeros(len(class_names), np.int64)
  present = np.zeros(len(class_names), np.int64)
  channels = None
  for case in cases:
    image = case.image if case.image.ndim == case.label.ndim + 1 else case.image[..., None]
    if image.shape[:-1] != case.label.shape:
      raise PlanError(
        f"{case.name}: image of shape {image.shape[:-1]} and label of shape {case.label.shape}"
      )
    if channels is None:
      channels = image.shape[-1]
    elif image.shape[-1] != channels:
      raise PlanError(f"{case.name}: {image.shape[-1]} channels, the first case has {channels}")
    names.append(case.name)
    shapes.append(list(case.label.shape))
    spacings.append(None if case.spacing is None else [float(s) for s in case.spacing])
    label = case.label.reshape(-1)
    valid = label != IGNORE_INDEX
    here = np.bincount(label[valid], minlength=len(class_names))[: len(class_names)]
    counts += here
    present += here > 0
    foreground = np.flatnonzero(valid & (label > 0))
    pool = foreground if foreground.size else np.arange(label.size)
    chosen = rng.choice(pool, min(SAMPLES_PER_CASE, pool.size), replace=False)
    samples.append(image.reshape(-1, channels)[chosen].astype(np.float64))
  if not names:
    raise PlanError("the dataset has no labelled training case to plan from")
  values = np.concatenate(samples)
  channel_names = list(channel_names or [f"channel_{c}" for c in range(channels)])
  if len(channel_names) != channels:
    raise PlanError(f"{len(channel_names)} channel names {channel_names} for {channels} channels")
  total = int(counts.sum())
  with_spacing = [s for s in spacings if s is not None]
  return {
    "cases": len(names),
    "case_names": names,
    "spatial_dims": len(shapes[0]),
    "channels": channel_names,
    "shapes": shapes,
    "spacings": spacings if len(with_spacing) == len(spacings) else None,
    "median_shape": [float(v) for v in np.median(np.asarray(shapes), axis=0)],
    "intensity": [_intensity(values[:, c], channel_names[c]) for c in range(channels)],
    "classes": [
      {
        "name": name,
        "voxels": int(counts[k]),
        "share": float(counts[k] / total) if total else 0.0,
        "cases_present": int(present[k]),
      }
      for k, name in enumerate(class_names)
    ],
  }


def _intensity(values: np.ndarray, name: str) -> dict:
  low, median, high = np.percentile(values, (0.5, 50.0, 99.5))
  return {
    "channel": name,
    "mean": float(values.mean()),
    "std": float(values.std()),
    "median": float(median),
    "percentile_00_5": float(low),
    "percentile_99_5": float(high),
    "min": float(values.min()),
    "max": float(values.max()),
  }


def target_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, ...]:
  """Rule 1: the median spacing, the coarse axis of anisotropic data at its 10th percentile."""
  spacings = np.asarray(spacings, np.float64)
  target = np.median(spacings, axis=0)
  coarse = int(np.argmax(target))
  others = np.delete(target, coarse)
  if target[coarse] > ANISOTROPY * target.min() and others.size:
    target[coarse] = max(np.percentile(spacings[:, coarse], 10), others.max())
  return tuple(float(t) for t in target)


def shapes_at(fp: dict, spacing: Sequence[float] | None) -> np.ndarray:
  """Every case's shape at ``spacing`` (its own shape without spacings)."""
  shapes = np.asarray(fp["shapes"], np.float64)
  if spacing is None or fp["spacings"] is None:
    return shapes
  return np.maximum(np.round(shapes * np.asarray(fp["spacings"]) / np.asarray(spacing)), 1)


def pooling_for(
  patch: Sequence[int], spacing: Sequence[float] | None, *, max_depth: int
) -> list[tuple[int, ...]]:
  """Rule 4: the pooling factors of each level for a patch at ``spacing``."""
  sizes = [float(p) for p in patch]
  current = [float(s) for s in (spacing or (1.0,) * len(patch))]
  levels: list[tuple[int, ...]] = []
  while len(levels) < max_depth:
    poolable = [size / 2 >= MIN_FEATURE_MAP for size in sizes]
    if not any(poolable):
      break
    finest = min(c for c, ok in zip(current, poolable, strict=True) if ok)
    factors = tuple(
      2 if ok and c <= 2 * finest else 1 for ok, c in zip(poolable, current, strict=True)
    )
    levels.append(factors)
    sizes = [s / f for s, f in zip(sizes, factors, strict=True)]
    current = [c * f for c, f in zip(current, factors, strict=True)]
  return levels


def _divisor(pooling: Sequence[Sequence[int]], dims: int) -> list[int]:
  if not pooling:
    return [1] * dims
  return [math.prod(axis) for axis in zip(*pooling, strict=True)]


def _rounded(patch: Sequence[float], divisor: Sequence[int]) -> list[int]:
  return [int(math.ceil(p / d) * d) for p, d in zip(patch, divisor, strict=True)]


@dataclasses.dataclass(frozen=True)
class Topology:
  patch: tuple[int, ...]
  pooling: tuple[tuple[int, ...], ...]


def _topology(patch: Sequence[float], spacing, dims: int) -> Topology:
  pooling = pooling_for([max(1, int(p)) for p in patch], spacing, max_depth=MAX_DEPTH[dims])
  return Topology(tuple(_rounded(patch, _divisor(pooling, dims))), tuple(pooling))


def _step_bytes(topology: Topology, batch: int, *, dims: int, in_channels: int, classes: int):
  return memory.step_memory(
    patch=topology.patch,
    batch_size=batch,
    depth=len(topology.pooling),
    features=FEATURES,
    max_features=MAX_FEATURES[dims],
    in_channels=in_channels,
    num_classes=classes,
    pooling=topology.pooling,
  ).total


def make_plan(
  fp: dict,
  *,
  budget_bytes: int,
  num_classes: int,
  model_channels: int,
  devices: int = 1,
) -> dict:
  """Rules 1-7 for the fingerprint ``fp``; returns ``{"config": {field: value}, "why":
  {field: reason}, "estimated_step_bytes": int}`` (fields in ``--config.FIELD`` form).

  ``model_channels``: the logit channels (1 in binary mode). Raises :class:`PlanError`
  when not even the smallest patch fits ``budget_bytes``.
  """
  dims = fp["spatial_dims"]
  in_channels = len(fp["channels"])
  spacing = target_spacing(fp["spacings"]) if fp["spacings"] is not None else None
  median = np.median(shapes_at(fp, spacing), axis=0)
  step_spacing = np.asarray(spacing or (1.0,) * dims)
  box = (1.0 / step_spacing) * (INITIAL_VOXELS[dims] * np.prod(step_spacing)) ** (1.0 / dims)
  patch = np.minimum(box, median)
  topology = _topology(patch, spacing, dims)
  per_device = math.ceil(MIN_BATCH / devices)

  def fits(top: Topology, batch: int) -> bool:
    bytes_ = _step_bytes(top, batch, dims=dims, in_channels=in_channels, classes=model_channels)
    return bytes_ <= budget_bytes

  while not fits(topology, per_device):
    ratios = np.asarray(topology.patch) / np.maximum(median, 1)
    axis = int(np.argmax(ratios))
    divisor = _divisor(topology.pooling, dims)
    shrunk = list(topology.patch)
    shrunk[axis] -= divisor[axis]
    if shrunk[axis] < MIN_FEATURE_MAP * 2:
      smallest = _step_bytes(
        topology, per_device, dims=dims, in_channels=in_channels, classes=model_channels
      )
      raise PlanError(
        f"the smallest plan, patch {topology.patch} with batch {MIN_BATCH}, needs "
        f"{memory.gib(smallest)} per device, more than the budget of {memory.gib(budget_bytes)}; "
        "plan on a device with more memory or pass a larger --memory_gb"
      )
    topology = _topology(shrunk, spacing, dims)
  batch = per_device
  while fits(topology, batch + 1):
    batch += 1
  dataset_voxels = float(np.prod(shapes_at(fp, spacing), axis=1).sum())
  cap = int(BATCH_SHARE_OF_DATASET * dataset_voxels // np.prod(topology.patch))
  global_batch = max(MIN_BATCH, min(batch * devices, cap))
  global_batch = max(devices, global_batch // devices * devices)
  used = _step_bytes(
    topology,
    global_batch // devices,
    dims=dims,
    in_channels=in_channels,
    classes=model_channels,
  )
  config = {
    "data.image_size": (),
    "data.patch_size": topology.patch,
    "model.spatial_dims": dims,
    "model.depth": len(topology.pooling),
    "model.pooling": topology.pooling,
    "model.features": FEATURES,
    "model.max_features": MAX_FEATURES[dims],
    "train.batch_size": int(global_batch),
    "train.eval_batch_size": int(max(1, global_batch // devices) * devices),
  }
  why = {
    "data.patch_size": (
      f"median shape {tuple(round(float(m)) for m in median)} at the target spacing, "
      f"clipped to a {INITIAL_VOXELS[dims]}-voxel box and to the memory budget, rounded to "
      "the pooling divisor"
    ),
    "model.pooling": "halve an axis while it stays >= 4 voxels and within 2x the finest spacing",
    "train.batch_size": (
      f"largest that fits {memory.gib(budget_bytes)} per device (estimated "
      f"{memory.gib(used)}), at most 5% of the dataset's voxels per step ({cap} patches), "
      f"at least {MIN_BATCH}"
    ),
  }
  if spacing is not None:
    config["data.spacing"] = tuple(round(s, 6) for s in spacing)
    why["data.spacing"] = "median spacing; a thick-slice axis at its 10th percentile"
  ct = [c for c, info in enumerate(fp["intensity"]) if info["channel"].upper() == "CT"]
  # data.intensity_range is one window for every channel: only a lone CT channel gets it.
  if ct and dims == 3 and in_channels == 1:
    info = fp["intensity"][ct[0]]
    config["data.intensity_range"] = (info["percentile_00_5"], info["percentile_99_5"])
    why["data.intensity_range"] = "CT: foreground 0.5 and 99.5 percentiles over the dataset"
  normalisation = [
    "ct window"
    if "data.intensity_range" in config and info["channel"].upper() == "CT"
    else ("per-volume 0.5/99.5 percentiles" if dims == 3 else "the images' own scaling")
    for info in fp["intensity"]
  ]
  return {
    "config": config,
    "why": why,
    "normalisation": dict(zip(fp["channels"], normalisation, strict=True)),
    "target_spacing": spacing,
    "median_shape": [float(m) for m in median],
    "estimated_step_bytes": int(used),
  }
