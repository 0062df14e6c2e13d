"""Paired comparisons of two losses on the same test images: difference, interval, p-value.

Both losses are trained with the same seeds (same data order per seed) and evaluated on the
same test images, so each image gives one paired difference per seed. Following the study's
protocol:

* the difference is the mean over images of the per-image difference averaged over seeds;
* its 95% interval comes from a paired bootstrap over images: whole images are resampled
  with replacement, all their seeds together, and the interval is the 2.5 and 97.5
  percentiles of the resampled means;
* the p-value is the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) on the
  per-image differences averaged over seeds: images, not seeds, are the independent units.

Holm's step-down adjustment (:func:`holm`) controls the chance of any false finding when one
study compares several losses against the same reference.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

BOOTSTRAP_SAMPLES = 10_000


def paired_difference(
  ours: np.ndarray, reference: np.ndarray, *, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> dict:
  """Paired comparison of per-image scores, ``(seeds, images)`` each.

  Images where either array holds NaN (e.g. a class absent from that image) are left out.

  Returns:
    ``{"diff", "ci95": [lo, hi], "p_value", "n"}``: the mean over images of the seed-averaged
    difference ``ours - reference``, its bootstrap interval, the Wilcoxon p-value and the
    number of images; ``diff`` and the interval are ``None`` and ``p_value`` 1.0 without
    any image, and ``p_value`` is 1.0 when every difference is zero.
  """
  ours = np.atleast_2d(np.asarray(ours, np.float64))
  reference = np.atleast_2d(np.asarray(reference, np.float64))
  if ours.shape != reference.shape:
    raise ValueError(
      f"paired scores need one shape (seeds, images); got {ours.shape} and {reference.shape}"
    )
  differences = ours - reference
  keep = ~np.isnan(differences).any(axis=0)
  per_image = differences[:, keep].mean(axis=0)
  n = int(per_image.size)
  if n == 0:
    return {"diff": None, "ci95": None, "p_value": 1.0, "n": 0}
  rng = np.random.default_rng(seed)
  resampled = per_image[rng.integers(0, n, (samples, n))].mean(axis=1)
  low, high = np.percentile(resampled, [2.5, 97.5])
  return {
    "diff": float(per_image.mean()),
    "ci95": [float(low), float(high)],
    "p_value": wilcoxon_p(per_image),
    "n": n,
  }


def wilcoxon_p(differences: np.ndarray) -> float:
  """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped, scipy's
  default); 1.0 when no difference is non-zero."""
  differences = np.asarray(differences, np.float64)
  if not np.any(differences != 0):
    return 1.0
  return float(stats.wilcoxon(differences, alternative="two-sided").pvalue)


def holm(p_values: list[float]) -> list[float]:
  """Holm's step-down adjusted p-values, in the input's order."""
  p = np.asarray(p_values, np.float64)
  order = np.argsort(p)
  adjusted = np.empty_like(p)
  running = 0.0
  for rank, index in enumerate(order):
    running = max(running, (len(p) - rank) * p[index])
    adjusted[index] = min(running, 1.0)
  return adjusted.tolist()
