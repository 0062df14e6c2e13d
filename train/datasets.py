"""Opening the configured dataset's splits, their grain pipelines and evaluation examples."""

from __future__ import annotations

import jax
import ml_collections

from regionloss_jax import data as rl_data
from train import build, folds

# Datasets without a validation split carve one from train (the same slice on every run).
_CARVED = {"oxford_iiit_pet": {"train": "train[:90%]", "validation": "train[90%:]"}}


def open_split(config: ml_collections.ConfigDict, split: str) -> rl_data.SegmentationData:
  """``split`` (``train``, ``validation`` or ``test``) of ``config.data``; with
  ``train.fold`` set, ``train`` and ``validation`` are that fold's cases of the pool of both
  (:mod:`train.folds`), ``test`` the dataset's own."""
  if folds.fold_of(config) is not None and split in folds.POOL_SPLITS:
    return folds.open_fold(config, split, lambda part: open_prepared(config, part))
  return open_prepared(config, split)


def open_prepared(config: ml_collections.ConfigDict, split: str) -> rl_data.SegmentationData:
  """``split`` of ``config.data`` as the dataset prepared it, whatever ``train.fold``."""
  name = config.data.name
  split = _CARVED.get(name, {}).get(split, split)
  return rl_data.load(name, split=split, **build.data_options(config))


def spatial_shape(config: ml_collections.ConfigDict, data: rl_data.SegmentationData):
  """The working size images are resized to, or ``None`` when they keep their own."""
  if build.native(config) or config.data.name.startswith("imbalanced"):
    return data.spatial_shape  # generated datasets are native at their generated size
  return tuple(config.data.image_size)


def train_pipeline(config: ml_collections.ConfigDict, data: rl_data.SegmentationData):
  """Shuffled, augmented, repeated batches of ``train.batch_size`` (global) examples: whole
  images, or patches of ``data.patch_size``."""
  augment = None if config.data.augment else rl_data.Augment.none()
  patch_size = tuple(config.data.patch_size) if config.data.patch_size else None
  return rl_data.make_pipeline(
    data,
    global_batch_size=config.train.batch_size,
    seed=config.train.seed,
    train=True,
    augment=augment,
    spatial_shape=spatial_shape(config, data),
    patch_size=patch_size,
    foreground_fraction=config.data.foreground_fraction,
    num_threads=config.data.num_threads,
  )


def eval_examples(config: ml_collections.ConfigDict, data: rl_data.SegmentationData):
  """This process's share of a split, whole images one at a time, in order."""
  return rl_data.eval_examples(
    data,
    spatial_shape=spatial_shape(config, data),
    shard_index=jax.process_index(),
    shard_count=jax.process_count(),
    num_threads=config.data.num_threads,
  )
