"""The region-size bias study: the same model and data trained with each loss, per seed.

``losses`` entries are ``make_loss`` names, optionally with options in parentheses, e.g.
``ce+dice(log=True)``; ``ce+logdice`` is short for that. ``base`` is a complete training
config (``train/configs/base.py``) shared by every run. Compounds whose spec sets neither
``weight`` nor ``temperature`` are tuned on the validation split over ``tune``'s grid
(temperatures only for the region terms l1/kl/db) before the seeded runs.

Every run trains the fixed, short budget of ``base.train.steps`` (no early stopping);
``compare_convergence.py`` is this study with each run trained to convergence.
"""

import ml_collections

from train.configs import base


def get_config():
  config = ml_collections.ConfigDict()
  config.base = base.get_config()
  config.base.train.steps = 250
  config.base.train.eval_every = 125
  config.base.train.checkpoint_every = 125
  config.base.train.log_every = 25
  config.base.optimizer.warmup_steps = 20
  config.losses = ("ce", "dice", "ce+dice", "ce+logdice", "ce+l1", "ce+kl")
  config.seeds = 3
  config.tune = ml_collections.ConfigDict()
  # The authors' published CE+L1 setting, weight 1.0 and temperature 10, is in the grid.
  config.tune.weights = (0.1, 1.0, 10.0)
  config.tune.temperatures = (1.0, 10.0)
  config.tune.seed = 0
  # Resamples of the paired bootstrap over test images.
  config.bootstrap_samples = 10_000
  return config
