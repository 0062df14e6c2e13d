"""The grain input pipeline: from a :class:`SegmentationData` to batches of arrays.

Order of operations (each step a grain ``MapDataset`` stage, so it is random-access and its
iterator state is just a position):

  source -> this process's shard -> shuffle (seeded, reshuffled each epoch) -> repeat
  -> per-example preprocessing (label lookup, random geometry shared by image and mask,
  brightness/contrast, normalisation) -> batch(drop_remainder) -> threads + prefetch.

A batch is ``{"image": float32 (B, *spatial, C), "label": int32 (B, *spatial)}`` with
``IGNORE_INDEX`` (255) for pixels that count nowhere. ``B`` is the per-process batch,
``global_batch_size // shard_count``: the global batch is the same whatever the number of
processes or devices. With a fixed seed the batches are a pure function of the seed and the
step, and ``iterator.get_state()`` / ``iterator.set_state(state)`` resume a run exactly.
"""

from __future__ import annotations

import json

import grain
import numpy as np

from regionloss_jax.data.augment import Augment, jitter, sample_affine, warp
from regionloss_jax.data.source import SegmentationData


def process_shard() -> tuple[int, int]:
  """``(jax.process_index(), jax.process_count())``: the shard this process reads."""
  import jax  # Deferred: the data package itself does not need JAX.

  return jax.process_index(), jax.process_count()


def preprocess_example(example: dict, rng: np.random.Generator | None, *, data: SegmentationData,
                       spatial_shape, augment: Augment, mean: np.ndarray,
                       std: np.ndarray) -> dict:
  """One raw example to ``{"image": float32 (*spatial, C), "label": int32 (*spatial)}``.

  ``rng`` is ``None`` for deterministic preprocessing (resize and normalise only).
  """
  image = np.asarray(example["image"])
  raw_mask = np.asarray(example["segmentation_mask"])
  if raw_mask.ndim == image.ndim:
    raw_mask = raw_mask[..., 0]
  if raw_mask.shape != image.shape[:-1]:
    # Some sources (mocked ones among them) give image and mask different sizes; bring the
    # mask onto the image grid by nearest neighbour before anything else.
    zoom = [o / i for o, i in zip(image.shape[:-1], raw_mask.shape)]
    from scipy import ndimage
    raw_mask = ndimage.zoom(raw_mask, zoom, order=0, grid_mode=True, mode="nearest")
  mask = data.label_lut[raw_mask]
  scale = 255.0 if image.dtype == np.uint8 else 1.0
  if rng is None:
    matrix, offset = sample_affine(np.random.default_rng(0), image.shape[:-1], spatial_shape,
                                   Augment.none())
    image, mask = warp(image, mask, matrix, offset, spatial_shape)
    image = image / scale
  else:
    matrix, offset = sample_affine(rng, image.shape[:-1], spatial_shape, augment)
    image, mask = warp(image, mask, matrix, offset, spatial_shape)
    image = jitter(image / scale, rng, augment)
  image = (image - mean) / std
  return {"image": image.astype(np.float32), "label": mask.astype(np.int32)}


def make_pipeline(
    data: SegmentationData,
    *,
    global_batch_size: int,
    seed: int = 0,
    train: bool = True,
    spatial_shape: tuple[int, ...] | None = None,
    augment: Augment | None = None,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_threads: int = 2,
    prefetch_batches: int = 4,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> grain.IterDataset:
  """A grain dataset of batches; ``iter()`` it for an iterator with ``get_state``/``set_state``.

  Args:
    data: the split to read.
    global_batch_size: examples per step over all processes; must be divisible by
      ``shard_count``. Each process yields ``global_batch_size // shard_count``.
    seed: seeds shuffling and augmentation; same seed, same batches.
    train: shuffle, augment and repeat forever (unless ``num_epochs``); otherwise read in
      order, once, without augmentation.
    spatial_shape: output ``(H, W)`` / ``(D, H, W)``; defaults to ``data.spatial_shape``
      (required when examples differ in size).
    augment: augmentation settings for training; default ``Augment()`` for 2-D data and
      flips and jitter only for 3-D. Ignored when ``train`` is false.
    num_epochs: passes over the data; ``None`` means forever when training, once otherwise.
    drop_remainder: drop a last, incomplete batch (keeps shapes static under ``jit``).
    shard_index, shard_count: this process's shard; default ``process_shard()``. Each shard
      gets ``len(data) // shard_count`` examples so that all processes take equal steps.
    num_threads: threads that preprocess examples in parallel.
    prefetch_batches: batches prepared ahead of the consumer.
    mean, std: per-channel normalisation of images scaled to ``[0, 1]``; default from data.

  Returns:
    A ``grain.IterDataset`` of ``{"image": float32 (B, *spatial, C), "label": int32
    (B, *spatial)}``.
  """
  if shard_index is None or shard_count is None:
    shard_index, shard_count = process_shard()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  if global_batch_size < 1 or global_batch_size % shard_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be a positive multiple of "
                     f"the shard count {shard_count}")
  batch_size = global_batch_size // shard_count
  spatial_shape = tuple(spatial_shape or data.spatial_shape or ())
  if not spatial_shape:
    raise ValueError("the examples of this dataset differ in size: pass spatial_shape=(H, W)")
  per_shard = len(data) // shard_count
  if per_shard == 0:
    raise ValueError(f"dataset of {len(data)} examples cannot feed {shard_count} shards")
  if drop_remainder and per_shard < batch_size and not (train and num_epochs is None):
    raise ValueError(f"{per_shard} examples per shard give no full batch of {batch_size}")
  if augment is None:
    augment = Augment() if len(spatial_shape) == 2 else Augment(
        flip_axes=(-1,), scale=(1.0, 1.0), max_rotation_deg=0.0)
  mean = np.asarray(data.mean if mean is None else mean, np.float32)
  std = np.asarray(data.std if std is None else std, np.float32)
  options = dict(data=data, spatial_shape=spatial_shape, augment=augment, mean=mean, std=std)

  # Equal-length shards: process i reads examples i, i + n, i + 2n, ...
  ds = grain.MapDataset.source(data.source)
  ds = ds[shard_index: per_shard * shard_count: shard_count]
  if train:
    seed = shard_seed(seed, shard_index)
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    ds = ds.random_map(lambda ex, rng: preprocess_example(ex, rng, **options), seed=seed)
  else:
    ds = ds.repeat(num_epochs or 1)
    ds = ds.map(lambda ex: preprocess_example(ex, None, **options))
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  return ds.to_iter_dataset(read)


def shard_seed(seed: int, shard_index: int) -> int:
  """The shuffling and augmentation seed of shard ``shard_index`` of a run seeded ``seed``.

  grain draws an example's augmentation from the seed and the example's position in its
  shard, so shards sharing one seed would give the i-th examples of every process the same
  flips and warps in each global batch. Shard 0 keeps ``seed`` (one-process runs are
  unchanged); the others get streams of their own.
  """
  if shard_index == 0:
    return seed
  return int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])


def save_state(iterator, path) -> None:
  """Write a pipeline iterator's state as JSON (a few bytes: its position)."""
  with open(path, "w") as f:
    json.dump(iterator.get_state(), f)


def restore_state(iterator, path) -> None:
  """Set ``iterator`` to the state written by :func:`save_state`; its next batch is the one
  that followed the save."""
  with open(path) as f:
    iterator.set_state(json.load(f))
