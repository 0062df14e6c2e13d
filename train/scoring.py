"""Scoring a trained model on a whole split: per-image metrics, losses and a summary.

(The library side of evaluation; the command ``python -m train.evaluate`` uses it.)

Every image is predicted whole, at the resolution the dataset gives it (its own, or
``data.image_size``), through sliding windows (:mod:`train.predictor`); its metrics, its
loss and the paper's decomposition terms are computed on that whole image. Images of one
size are grouped into batches; each process evaluates its own share of the split and the
per-image results are gathered, in split order, on every process.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from regionloss_jax import losses, metrics
from regionloss_jax.data import preprocess
from regionloss_jax.postprocessing import Postprocessing
from train import build, parallel
from train.predictor import Predictor

# Per-image arrays of metrics.evaluate_batch kept for the summary and test_per_image.npz.
PER_IMAGE_KEYS = (
  "tp",
  "fp",
  "fn",
  "dice",
  "iou",
  "precision",
  "recall",
  "hd95",
  "nsd",
  "gt_proportion",
  "pred_proportion",
  "proportion_abs_error",
  "proportion_bias",
  "pred_proportion_soft",
  "proportion_abs_error_soft",
  "proportion_bias_soft",
)
# Post-processing changes the mask, not the probabilities: no soft proportions after it.
POSTPROCESSED_KEYS = tuple(k for k in PER_IMAGE_KEYS if not k.endswith("_soft"))
SAVED_PER_IMAGE = (
  "dice",
  "iou",
  "hd95",
  "nsd",
  "gt_proportion",
  "pred_proportion",
  "pred_proportion_soft",
)
BINS = metrics.CALIBRATION_BINS
NAME_BYTES = 256  # file names longer than this are cut in the per-image results


def decomposition_terms(logits, labels, *, binary: bool, ignore_index: int) -> dict:
  """The paper's decomposition of CE and log-Dice per image, ``(B,)`` arrays.

  CE: the matching and size (``KL(tau || tauhat)``) terms of its Jensen bound, summed over
  classes (so the size term is >= 0). log-Dice: the sums of the exact matching and size
  terms over the foreground classes present in the image, and their count (absent classes
  have no region to match): a split's value is the sum over images over the total count. A
  binary model's sigmoid logit ``x`` is the two-class softmax of ``(0, x)``.
  """
  if binary:
    logits = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
  ce = losses.cross_entropy_decomposition(logits, labels, ignore_index=ignore_index)
  log_dice = losses.log_dice_decomposition(logits, labels, ignore_index=ignore_index)
  present = log_dice["tau"][:, 1:] > 1e-6
  out = {f"ce_{part}": jnp.sum(ce[part], axis=-1) for part in ("matching", "size")}
  out.update(
    {
      f"logdice_{part}": jnp.sum(jnp.where(present, log_dice[part][:, 1:], 0.0), -1)
      for part in ("matching", "size")
    }
  )
  out["logdice_pairs"] = jnp.sum(present, axis=-1).astype(jnp.float32)
  return out


def make_score_fn(config: ml_collections.ConfigDict, *, ignore_index: int) -> Callable:
  """``score(logits, labels, weight) -> {name: (B,)}`` (jitted): each image's loss, its loss
  terms as ``term/<name>`` and its decomposition terms, each image scored on its own.

  ``ignore_index``: the dataset's; pass the same value to :func:`evaluate_split`.
  """
  loss_fn = losses.make_loss(
    config.loss.name, **build.loss_options(config, ignore_index=ignore_index)
  )
  binary = config.loss.mode == "binary"

  def one_image(logits, labels, weight):
    loss, terms = loss_fn(logits[None], labels[None], weight=weight)
    # Loss terms are logged as term/<name>: a "dice" term must not shadow the Dice metric.
    return {"loss": loss, **{f"term/{k}": v for k, v in terms.items()}}

  def score(logits, labels, weight):
    scores = jax.vmap(one_image, in_axes=(0, 0, None))(logits, labels, weight)
    scores.update(decomposition_terms(logits, labels, binary=binary, ignore_index=ignore_index))
    return scores

  return jax.jit(score)


def _padded(array: np.ndarray, shape, value) -> np.ndarray:
  """``array (B, *S, ...)`` padded at the end of its spatial axes to ``shape``."""
  widths = [(0, 0)] + [(0, t - s) for s, t in zip(array.shape[1:], shape, strict=False)]
  widths += [(0, 0)] * (array.ndim - len(widths))
  return np.pad(array, widths, constant_values=value)


def _same_size_groups(examples: Iterable[dict], size: int):
  """Consecutive examples of one spatial shape, at most ``size`` at a time."""
  for _, group in itertools.groupby(examples, key=lambda ex: ex["image"].shape):
    group = list(group)
    for first in range(0, len(group), size):
      yield group[first : first + size]


def _spacings(group: list[dict], prep) -> np.ndarray | None:
  """``(B, spatial_dims)`` pixel sizes in mm of a group's working grids; ``None`` (pixels)
  when an image has no spacing (2-D files)."""
  spacings = [
    preprocess.grid_spacing(prep, ex.get("original_shape", ex["label"].shape), ex.get("spacing"))
    for ex in group
  ]
  return None if any(s is None for s in spacings) else np.asarray(spacings, np.float64)


def evaluate_split(
  predictor: Predictor,
  score_fn: Callable,
  examples: Iterable[dict],
  *,
  weight: float,
  class_names,
  ignore_index: int,
  keep: int = 0,
  on_image: Callable[[dict, np.ndarray], None] | None = None,
  preprocessing: preprocess.Preprocessing | None = None,
  nsd_tolerance: float = 1.0,
  postprocessing: Postprocessing | None = None,
) -> dict:
  """Predicts and scores every example of this process's share of a split.

  Args:
    predictor: the trained model.
    score_fn: from :func:`make_score_fn`.
    examples: :func:`regionloss_jax.data.eval_examples` of this process's share.
    weight: the loss weight at the evaluated step.
    class_names: one per class.
    ignore_index: the dataset's label value of pixels that count nowhere, the one
      ``score_fn`` was made with: metrics and losses leave out the same pixels.
    keep: how many ``(image, label, prediction)`` samples to return (the first ones).
    on_image: called with each example and its class probabilities ``(*spatial, K)`` as it
      is done, on the process that predicted it (``train.evaluate`` writes masks there).
    preprocessing: the dataset's, to tell each image's pixel size on the working grid from
      its file's spacing: HD95 and NSD are then in mm, else (2-D files) in pixels.
    nsd_tolerance: the normalized surface Dice's tolerance, in the same unit.
    postprocessing: when given and not the identity, every metric is computed again on the
      post-processed masks (the probabilities are unchanged), as ``"postprocessed"``.

  Returns:
    ``{"summary": metrics.summarize(...) plus "loss", each loss term, the decomposition
    terms (means over images), "distance_unit" ("mm" or "px") and, with post-processing,
    "postprocessed" (the metrics after it), "per_image": {metric: (N, C), "present": (N,
    C), "name": (N,)} in split order, "samples", "calibration": (C, bins, 3) reliability
    histogram}``, the same on every process.
  """
  if postprocessing is not None and postprocessing.is_identity:
    postprocessing = None
  num_classes = len(class_names)
  rows, names, samples = [], [], []
  score_names = None
  window = predictor.window
  in_pixels = False
  for group in _same_size_groups(examples, predictor.batch_size):
    images = np.stack([ex["image"] for ex in group])
    labels = np.stack([ex["label"] for ex in group])
    logits = predictor.logits(images)
    probs = predictor.probabilities(logits)
    classes = np.argmax(probs, axis=-1).astype(np.int32)
    # Losses on a grid rounded up to whole windows: ignored padding counts nowhere, and few
    # distinct shapes means few compilations.
    bucket = [math.ceil(s / w) * w for s, w in zip(labels.shape[1:], window, strict=True)]
    scores = jax.device_get(
      score_fn(_padded(logits, bucket, 0.0), _padded(labels, bucket, ignore_index), weight)
    )
    score_names = score_names or sorted(scores)
    spacing = _spacings(group, preprocessing)
    in_pixels |= spacing is None
    boundary = dict(spacing=spacing, nsd_tolerance=nsd_tolerance)
    common = dict(num_classes=num_classes, ignore_index=ignore_index, **boundary)
    result = metrics.evaluate_batch(classes, labels, probs=probs, **common)
    if postprocessing is not None:
      cleaned = np.stack(
        [
          postprocessing.apply(c, spacing=None if spacing is None else spacing[i])
          for i, c in enumerate(classes)
        ]
      )
      after = metrics.evaluate_batch(cleaned, labels, **common)
    for i, example in enumerate(group):
      row = [float(example["index"])] + [float(scores[k][i]) for k in score_names]
      row += [float(v) for key in PER_IMAGE_KEYS for v in result[key][i]]
      row += result["calibration"][i].reshape(-1).tolist()
      if postprocessing is not None:
        row += [float(v) for key in POSTPROCESSED_KEYS for v in after[key][i]]
      rows.append(row)
      names.append(example["name"])
      if len(samples) < keep:
        samples.append((example["image"], example["label"], classes[i]))
      if on_image is not None:
        on_image(example, probs[i])
  if score_names is None:  # this process had no image; the others tell the names
    score_names = sorted(
      jax.device_get(
        score_fn(
          np.zeros((1, *window, 1 if predictor.binary else num_classes), np.float32),
          np.zeros((1, *window), np.int32),
          weight,
        )
      )
    )
  logging.info(
    "process %d of %d: evaluated %d image(s)", jax.process_index(), jax.process_count(), len(rows)
  )
  metric_width = len(PER_IMAGE_KEYS) * num_classes
  calibration_width = num_classes * BINS * 3
  after_width = len(POSTPROCESSED_KEYS) * num_classes if postprocessing is not None else 0
  width = 1 + len(score_names) + metric_width + calibration_width + after_width
  gathered, all_names = _gather_in_split_order(
    np.asarray(rows, np.float64).reshape(-1, width), names
  )
  # Whether any process measured in pixels.
  in_pixels = bool(parallel.gather_rows(np.asarray([[float(in_pixels)]])).max())
  score_values = dict(zip(score_names, gathered[:, 1 : 1 + len(score_names)].T, strict=True))
  first = 1 + len(score_names)
  per_class = gathered[:, first : first + metric_width].reshape(
    len(gathered), len(PER_IMAGE_KEYS), num_classes
  )
  per_image = {key: per_class[:, j] for j, key in enumerate(PER_IMAGE_KEYS)}
  after_first = first + metric_width + calibration_width
  per_image["calibration"] = gathered[:, first + metric_width : after_first].reshape(
    len(gathered), num_classes, BINS, 3
  )
  summary = metrics.summarize(per_image, class_names=class_names)
  summary.update(_score_means(score_values))
  summary["distance_unit"] = "px" if in_pixels else "mm"
  if postprocessing is not None:
    after = gathered[:, after_first:].reshape(len(gathered), len(POSTPROCESSED_KEYS), num_classes)
    summary["postprocessed"] = metrics.summarize(
      {key: after[:, j] for j, key in enumerate(POSTPROCESSED_KEYS)}, class_names=class_names
    )
  saved = {k: per_image[k] for k in SAVED_PER_IMAGE}
  saved["present"] = (per_image["tp"] + per_image["fn"]) > 0
  saved["name"] = all_names
  return {
    "summary": summary,
    "per_image": saved,
    "samples": samples,
    "calibration": per_image["calibration"].sum(axis=0),
  }


def _gather_in_split_order(rows: np.ndarray, names: list[str]):
  """Every process's rows (first column: the split index) and names, sorted by index."""
  gathered = parallel.gather_rows(rows)
  if not len(gathered):
    raise ValueError("the evaluation split holds no image; is it empty?")
  # Names travel as fixed-width bytes, in the same process order as the rows.
  encoded = np.asarray([n.encode()[:NAME_BYTES] for n in names], f"S{NAME_BYTES}")
  all_names = parallel.gather_rows(encoded.view(np.uint8).reshape(len(names), NAME_BYTES))
  all_names = all_names.reshape(-1).view(f"S{NAME_BYTES}")
  order = np.argsort(gathered[:, 0], kind="stable")
  decoded = np.asarray([n.decode(errors="replace") for n in all_names[order]])
  return gathered[order], decoded


def _score_means(scores: dict) -> dict:
  out = {}
  for name, values in scores.items():
    if name.startswith("logdice_"):
      continue
    key = f"decomposition/{name}" if name.startswith("ce_") else name
    out[key] = float(np.mean(values))
  pairs = max(float(np.sum(scores["logdice_pairs"])), 1.0)
  for part in ("matching", "size"):
    out[f"decomposition/logdice_{part}"] = float(np.sum(scores[f"logdice_{part}"]) / pairs)
  return out
