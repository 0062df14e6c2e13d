"""The region-size bias study: the same model and data trained with each loss, per seed.

``losses`` entries are ``make_loss`` names, optionally with options in parentheses, e.g.
``ce+dice(log=True)``; ``ce+logdice`` is short for that. ``base`` is a complete training
config (``train/configs/base.py``) shared by every run.
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
  # Weight x temperature grid for one loss (empty: no sweep). Runs with seed 0.
  config.sweep = ml_collections.ConfigDict()
  config.sweep.loss = "ce+kl"
  config.sweep.weights = ()
  config.sweep.temperatures = ()
  return config
