"""Opening the configured dataset's splits and their grain pipelines."""

from __future__ import annotations

import ml_collections

from regionloss_jax import data as rl_data
from train import config_checks

# Datasets without a validation split carve one from train (the same slice on every run).
_CARVED = {"oxford_iiit_pet": {"train": "train[:90%]", "validation": "train[90%:]"}}


def open_split(config: ml_collections.ConfigDict, split: str) -> rl_data.SegmentationData:
  """``split`` (``train``, ``validation`` or ``test``) of ``config.data``."""
  name = config.data.name
  split = _CARVED.get(name, {}).get(split, split)
  return rl_data.load(name, split=split, **config_checks.data_options(config))


def spatial_shape(config: ml_collections.ConfigDict, data: rl_data.SegmentationData):
  if config.data.image_size is not None and not config.data.name.startswith("imbalanced"):
    return tuple(config.data.image_size)
  return data.spatial_shape


def train_pipeline(config: ml_collections.ConfigDict, data: rl_data.SegmentationData):
  """Shuffled, augmented, repeated batches of ``train.batch_size`` (global) examples."""
  augment = None if config.data.augment else rl_data.Augment.none()
  return rl_data.make_pipeline(data, global_batch_size=config.train.batch_size,
                               seed=config.train.seed, train=True, augment=augment,
                               spatial_shape=spatial_shape(config, data),
                               num_threads=config.data.num_threads)


def eval_pipeline(config: ml_collections.ConfigDict, data: rl_data.SegmentationData):
  """Every example once, in order, unaugmented; the last batch may be smaller."""
  batch = min(config.train.eval_batch_size, len(data))
  return rl_data.make_pipeline(data, global_batch_size=batch, train=False,
                               drop_remainder=False, spatial_shape=spatial_shape(config, data),
                               num_threads=config.data.num_threads, shard_index=0,
                               shard_count=1)
