"""The study's figures: proportions, proportion errors, Dice against size, decomposition
curves and the tuning grid. Foreground classes are pooled; every loss shares the axes.

Dice against size counts the images where a class is present (as the study's metrics do).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)
import numpy as np  # noqa: E402

FLOOR = 1e-4  # proportions below this are drawn at it on log axes


def _foreground(per_image: dict, key: str) -> np.ndarray:
  values = per_image[key]
  return values[:, 1:] if values.shape[1] > 1 else values


def _pooled(runs: list[dict], key: str) -> np.ndarray:
  return np.concatenate([_foreground(r["per_image"], key).ravel() for r in runs])


def proportions(runs_by_loss: dict, path: str) -> str:
  """Predicted (hard) against ground-truth proportion per image and class, a panel per loss."""
  labels = list(runs_by_loss)
  fig, axes = plt.subplots(1, len(labels), figsize=(3.6 * len(labels), 3.8), squeeze=False)
  for ax, label in zip(axes[0], labels, strict=False):
    runs = runs_by_loss[label]
    gt = np.maximum(_pooled(runs, "gt_proportion"), FLOOR)
    pred = np.maximum(_pooled(runs, "pred_proportion"), FLOOR)
    ax.scatter(gt, pred, s=6, alpha=0.4)
    ax.plot([FLOOR, 1], [FLOOR, 1], "k--", linewidth=1)
    ax.set(
      xscale="log",
      yscale="log",
      xlim=(FLOOR, 1),
      ylim=(FLOOR, 1),
      title=label,
      xlabel="ground-truth proportion",
    )
  axes[0][0].set_ylabel("predicted proportion")
  fig.suptitle(f"test images x foreground classes (below {FLOOR:g} drawn at {FLOOR:g})")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def proportion_errors(runs_by_loss: dict, path: str) -> str:
  """Distribution of the signed proportion error ``tauhat - tau`` per loss."""
  labels = list(runs_by_loss)
  errors = [
    _pooled(runs_by_loss[name], "pred_proportion") - _pooled(runs_by_loss[name], "gt_proportion")
    for name in labels
  ]
  fig, ax = plt.subplots(figsize=(1.6 * len(labels) + 2, 4))
  ax.boxplot(errors, showfliers=True, flierprops={"markersize": 2})
  ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20)
  ax.axhline(0.0, color="k", linewidth=1)
  ax.set(ylabel="predicted - ground-truth proportion", title="proportion error per image")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def dice_against_size(runs_by_loss: dict, path: str) -> str:
  """Mean Dice per image in bins of ground-truth proportion (objects present only)."""
  bins = np.logspace(-4, 0, 13)
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for label, runs in runs_by_loss.items():
    gt, dice = _pooled(runs, "gt_proportion"), _pooled(runs, "dice")
    present = gt > 0
    which = np.digitize(gt[present], bins)
    centres, means = [], []
    for b in np.unique(which):
      if 0 < b < len(bins):
        centres.append(np.sqrt(bins[b - 1] * bins[b]))
        means.append(dice[present][which == b].mean())
    ax.plot(centres, means, marker="o", label=label)
  ax.set(
    xscale="log",
    xlabel="ground-truth proportion",
    ylabel="mean Dice",
    title="Dice against region size",
    ylim=(0, 1),
  )
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def decomposition(runs_by_loss: dict, path: str) -> str:
  """Validation matching and size terms of CE and log-Dice during training (seed 0)."""
  keys = ("ce_matching", "ce_size", "logdice_matching", "logdice_size")
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6))
  for label, runs in runs_by_loss.items():
    val = [r for r in runs[0]["records"] if r["split"] == "val"]
    for ax, key in zip(axes, keys, strict=False):
      ax.plot(
        [r["step"] for r in val],
        [r.get(f"decomposition/{key}") for r in val],
        marker="o",
        label=label,
      )
  for ax, key in zip(axes, keys, strict=False):
    ax.set(title=key.replace("_", " "), xlabel="step")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def tuning(tuned: dict, path: str) -> str:
  """Validation Dice against the weight of each tuned compound, a line per temperature."""
  labels = list(tuned)
  fig, axes = plt.subplots(1, len(labels), figsize=(3.8 * len(labels), 3.6), squeeze=False)
  for ax, label in zip(axes[0], labels, strict=True):
    grid = tuned[label]["grid"]
    for temperature in sorted({p["temperature"] for p in grid}, key=str):
      points = sorted(
        (p for p in grid if p["temperature"] == temperature), key=lambda p: p["weight"]
      )
      ax.plot(
        [p["weight"] for p in points],
        [np.nan if p["val_dice"] is None else p["val_dice"] for p in points],
        marker="o",
        label="no T" if temperature is None else f"T={temperature}",
      )
    chosen = tuned[label]["chosen"]
    ax.axvline(chosen["weight"], color="k", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ax.set(
      xlabel="weight", title=f"{label} (chosen: {chosen['weight']}, T={chosen['temperature']})"
    )
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("validation Dice (seed 0)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write_all(folder: str, runs_by_loss: dict, tuned: dict) -> dict[str, str]:
  os.makedirs(folder, exist_ok=True)
  paths = {
    "proportions": proportions(runs_by_loss, os.path.join(folder, "proportions.png")),
    "proportion_errors": proportion_errors(
      runs_by_loss, os.path.join(folder, "proportion_errors.png")
    ),
    "dice_against_size": dice_against_size(
      runs_by_loss, os.path.join(folder, "dice_against_size.png")
    ),
    "decomposition": decomposition(runs_by_loss, os.path.join(folder, "decomposition.png")),
  }
  if tuned:
    paths["tuning"] = tuning(tuned, os.path.join(folder, "tuning.png"))
  return paths
