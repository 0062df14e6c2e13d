"""The figures of a run, written to ``workdir/plots/`` (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402


def training_curves(records: list[dict], path: str) -> str:
  """Training loss and its terms, and validation Dice and proportion error, against step."""
  train = [r for r in records if r["split"] == "train"]
  val = [r for r in records if r["split"] == "val"]
  fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  skip = {"step", "split", "learning_rate", "loss_weight", "grad_norm", "images_per_s"}
  for key in sorted({k for r in train for k in r} - skip):
    steps = [r["step"] for r in train if r.get(key) is not None]
    ax_loss.plot(steps, [r[key] for r in train if r.get(key) is not None], label=key)
  ax_loss.set(xlabel="step", ylabel="value", title="training loss and terms", yscale="log")
  ax_loss.legend()
  for key in ("dice", "iou", "proportion_mae"):
    points = [(r["step"], r[key]) for r in val if r.get(key) is not None]
    ax_val.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
  ax_val.set(xlabel="step", title="validation (foreground classes)")
  ax_val.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def proportion_scatter(per_image: dict, class_names, path: str) -> str:
  """Predicted against ground-truth region proportion, one panel per foreground class."""
  names = list(class_names)[1:] or list(class_names)
  first = len(class_names) - len(names)
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
  floor = 1e-4
  for ax, k, name in zip(axes[0], range(first, len(class_names)), names, strict=False):
    gt = np.maximum(per_image["gt_proportion"][:, k], floor)
    for key, marker, label in (
      ("pred_proportion", "o", "hard"),
      ("pred_proportion_soft", "x", "soft"),
    ):
      ax.scatter(
        gt, np.maximum(per_image[key][:, k], floor), s=10, marker=marker, alpha=0.6, label=label
      )
    ax.plot([floor, 1], [floor, 1], "k--", linewidth=1)
    ax.set(
      xscale="log",
      yscale="log",
      xlim=(floor, 1),
      ylim=(floor, 1),
      title=name,
      xlabel="ground-truth proportion",
      ylabel="predicted proportion",
    )
    ax.legend(loc="upper left")
  fig.suptitle(f"region proportions per image (values below {floor:g} drawn at {floor:g})")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _display_image(image: np.ndarray) -> np.ndarray:
  if image.ndim == 4:  # a volume: its middle slice
    image = image[image.shape[0] // 2]
  low, high = np.percentile(image, [1, 99])
  image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
  # Three channels show as colour; any other count (nnU-Net's T2 + ADC, ...) as the first.
  return image if image.shape[-1] == 3 else image[..., 0]


def _display_mask(mask: np.ndarray) -> np.ndarray:
  return mask[mask.shape[0] // 2] if mask.ndim == 3 else mask


def overlays(samples, num_classes: int, path: str) -> str:
  """Rows of image | ground truth | prediction (ignored pixels in white)."""
  fig, axes = plt.subplots(len(samples), 3, figsize=(9, 3 * len(samples)), squeeze=False)
  cmap = plt.get_cmap("tab10", max(num_classes, 2))
  for row, (image, label, pred) in zip(axes, samples, strict=False):
    row[0].imshow(_display_image(image), cmap="gray")
    label = np.ma.masked_greater_equal(_display_mask(label), num_classes)
    row[1].imshow(label, cmap=cmap, vmin=0, vmax=max(num_classes, 2) - 1, interpolation="nearest")
    row[2].imshow(
      _display_mask(pred), cmap=cmap, vmin=0, vmax=max(num_classes, 2) - 1, interpolation="nearest"
    )
    for ax, title in zip(row, ("image", "ground truth", "prediction"), strict=False):
      ax.set_title(title)
      ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def reliability(histogram: np.ndarray, class_names, path: str) -> str:
  """Reliability diagram per foreground class: observed frequency against predicted
  probability in equal-width bins, the bins' pixel counts below (log scale)."""
  names = list(class_names)[1:] or list(class_names)
  first = len(class_names) - len(names)
  bins = histogram.shape[1]
  edges = np.linspace(0.0, 1.0, bins + 1)
  centres = (edges[:-1] + edges[1:]) / 2
  fig, axes = plt.subplots(
    2,
    len(names),
    figsize=(3.6 * len(names), 5.6),
    squeeze=False,
    gridspec_kw={"height_ratios": [3, 1]},
    sharex=True,
  )
  for column, (k, name) in enumerate(zip(range(first, len(class_names)), names, strict=True)):
    count, confidence, correct = histogram[k, :, 0], histogram[k, :, 1], histogram[k, :, 2]
    filled = count > 0
    ax, ax_count = axes[0, column], axes[1, column]
    ax.bar(
      centres[filled],
      correct[filled] / count[filled],
      width=1 / bins,
      alpha=0.7,
      edgecolor="k",
      label="observed",
    )
    ax.plot(
      confidence[filled] / count[filled],
      correct[filled] / count[filled],
      "r.",
      label="at mean confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    total = max(count.sum(), 1.0)
    ece = np.abs(correct - confidence).sum() / total
    ax.set(xlim=(0, 1), ylim=(0, 1), title=f"{name}: ECE {ece:.4f}", ylabel="frequency")
    ax.legend(loc="upper left", fontsize=7)
    ax_count.bar(centres, np.maximum(count, 1), width=1 / bins, log=True, color="grey")
    ax_count.set(xlabel="predicted probability", ylabel="pixels")
  fig.suptitle(f"reliability of the predicted class probability ({bins} bins, test split)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write_all(workdir: str, records, test_eval: dict, class_names) -> dict[str, str]:
  folder = os.path.join(workdir, "plots")
  os.makedirs(folder, exist_ok=True)
  return {
    "training_curves": training_curves(records, os.path.join(folder, "training_curves.png")),
    "proportions": proportion_scatter(
      test_eval["per_image"], class_names, os.path.join(folder, "proportions_test.png")
    ),
    "overlays": overlays(
      test_eval["samples"], len(class_names), os.path.join(folder, "overlays_test.png")
    ),
    "reliability": reliability(
      test_eval["calibration"], class_names, os.path.join(folder, "reliability_test.png")
    ),
  }
