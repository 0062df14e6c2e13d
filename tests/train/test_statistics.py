"""Paired statistics against hand-computed cases and scipy."""

import numpy as np
import pytest
from scipy import stats

from train import statistics


def test_wilcoxon_by_hand_and_against_scipy():
  # Differences 1, 2, -3, 4, 5: ranks 1..5, W- = 3, W+ = 12; exact two-sided p = 2 * P(W <= 3)
  # with P = (number of subsets of {1..5} with sum <= 3) / 32 = 5 / 32 ({}, {1}, {2}, {3},
  # {1,2}).
  differences = np.array([1.0, 2.0, -3.0, 4.0, 5.0])
  assert statistics.wilcoxon_p(differences) == pytest.approx(2 * 5 / 32)
  rng = np.random.default_rng(0)
  sample = rng.normal(0.3, 1.0, 40)
  assert statistics.wilcoxon_p(sample) == pytest.approx(stats.wilcoxon(sample).pvalue)
  assert statistics.wilcoxon_p(np.zeros(5)) == 1.0  # no difference at all


def test_paired_difference_averages_seeds_per_image_before_testing():
  ours = np.array([[0.6, 0.5, np.nan, 0.9], [0.8, 0.5, 0.1, 0.7]])
  reference = np.array([[0.5, 0.6, 0.2, 0.5], [0.5, 0.4, 0.3, 0.5]])
  result = statistics.paired_difference(ours, reference, samples=2000, seed=1)
  per_image = np.array([0.2, 0.0, 0.3])  # image 2 left out: NaN in one seed
  assert result["n"] == 3
  assert result["diff"] == pytest.approx(per_image.mean())
  assert result["p_value"] == pytest.approx(stats.wilcoxon(per_image).pvalue)
  # The interval is the bootstrap of the image means with the same generator.
  rng = np.random.default_rng(1)
  means = per_image[rng.integers(0, 3, (2000, 3))].mean(axis=1)
  assert result["ci95"] == pytest.approx(list(np.percentile(means, [2.5, 97.5])))
  assert result["ci95"][0] <= result["diff"] <= result["ci95"][1]


def test_constant_difference_has_a_degenerate_interval():
  ours = np.full((3, 20), 0.7)
  result = statistics.paired_difference(ours, ours - 0.1, samples=500)
  assert result["ci95"] == pytest.approx([0.1, 0.1])
  assert result["p_value"] < 1e-3


def test_bootstrap_interval_covers_the_truth_about_95_percent_of_the_time():
  rng = np.random.default_rng(2)
  covered = 0
  for _ in range(200):
    differences = rng.normal(0.05, 0.2, 60)
    interval = statistics.paired_difference(
      differences[None], np.zeros((1, 60)), samples=1000, seed=int(rng.integers(1 << 30))
    )
    covered += interval["ci95"][0] <= 0.05 <= interval["ci95"][1]
  assert 0.88 <= covered / 200 <= 0.99


def test_no_common_image_gives_no_difference():
  result = statistics.paired_difference(np.full((2, 3), np.nan), np.zeros((2, 3)))
  assert result == {"diff": None, "ci95": None, "p_value": 1.0, "n": 0}
  with pytest.raises(ValueError, match="one shape"):
    statistics.paired_difference(np.zeros((2, 3)), np.zeros((3, 3)))


def test_holm_by_hand():
  # Sorted 0.01, 0.02, 0.04 -> 3*0.01, max(.03, 2*0.02), max(.04, 0.04).
  assert statistics.holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
  assert statistics.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
