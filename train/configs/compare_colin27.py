"""The region-size study on the Colin27 brain structures (2-D): ``--config.base.data.dir=OUT/2d``
after ``python -m regionloss_jax.data.colin27 --out=OUT``.

The losses, seeds and statistics of ``compare.py``. The base run is ``colin27.py`` made
cheaper so that the whole study (30 runs) fits in about an hour on a 2-core CPU: 96x96
patches, 250 steps; and the grid tunes the weight (0.1, 1, 10) at the published temperature
10 only. Raise them (``--config.base.train.steps=...``, ``--config.tune.temperatures=...``)
where there is compute.
"""

from train.configs import colin27, compare


def get_config():
  config = compare.get_config()
  config.base = colin27.get_config()
  config.base.data.patch_size = (96, 96)
  config.base.train.steps = 250
  config.base.train.eval_every = 125
  config.base.train.checkpoint_every = 125
  config.base.train.log_every = 25
  config.base.optimizer.warmup_steps = 20
  config.tune.temperatures = (10.0,)
  return config
