"""The grain input pipeline: from a :class:`SegmentationData` to batches of arrays.

Order of operations (each step a grain ``MapDataset`` stage, so it is random-access and its
iterator state is just a position):

  source -> this process's shard -> shuffle (seeded, reshuffled each epoch) -> repeat
  -> per-example preprocessing (label lookup, a random patch or the whole image, random
  geometry shared by image and mask, brightness/contrast, normalisation)
  -> batch(drop_remainder) -> threads + prefetch.

Images either keep their own size (native resolution), the pipeline then training on
patches of ``patch_size`` with foreground oversampling, or are resized to one
``spatial_shape``. :func:`eval_examples` yields whole images one at a time for evaluation.

A batch is ``{"image": float32 (B, *spatial, C), "label": int32 (B, *spatial)}`` with the
dataset's ``ignore_index`` (255 for every built-in one) for pixels that count nowhere. ``B``
is the per-process batch, ``global_batch_size // shard_count``: the global batch is the same
whatever the number of processes or devices. With a fixed seed the batches are a pure
function of the seed and the step, and ``iterator.get_state()`` /
``iterator.set_state(state)`` resume a run exactly.
"""

from __future__ import annotations

import json

import grain
import numpy as np

from regionloss_jax.data import patches
from regionloss_jax.data.augment import (
  Augment,
  jitter,
  sample_affine,
  sample_patch_affine,
  warp,
  warp_patch,
)
from regionloss_jax.data.preprocess import value_scale
from regionloss_jax.data.source import SegmentationData


def process_shard() -> tuple[int, int]:
  """``(jax.process_index(), jax.process_count())``: the shard this process reads."""
  import jax  # Deferred: the data package itself does not need JAX.

  return jax.process_index(), jax.process_count()


def _stored(example: dict):
  """The example's image and raw mask as stored, the mask without its channel axis and on
  the image's grid. Memory-mapped arrays (:class:`regionloss_jax.data.arrays.ArraySource`)
  stay unread until sliced, unless the mask must first be resampled."""
  image = np.asanyarray(example["image"])  # a memmap stays one: nothing is read here
  mask = np.asanyarray(example["segmentation_mask"])
  if mask.ndim == image.ndim:
    mask = mask[..., 0]
  if mask.shape != image.shape[:-1]:
    # Some sources (mocked ones among them) give image and mask different sizes; bring the
    # mask onto the image grid by nearest neighbour before anything else.
    zoom = [o / i for o, i in zip(image.shape[:-1], mask.shape, strict=True)]
    from scipy import ndimage

    mask = ndimage.zoom(np.asarray(mask), zoom, order=0, grid_mode=True, mode="nearest")
  return image, mask


def _patch(
  image,
  mask,
  rng,
  *,
  coords,
  classes,
  lut,
  patch_size,
  augment,
  mean,
  std,
  foreground_fraction,
  ignore_index,
  scale,
) -> dict:
  """A random patch of ``image`` / ``mask`` at their resolution; only the patch's bounding
  box is read. ``lut`` (or ``None``) turns the patch's raw mask values into class ids."""
  centre = patches.patch_centre(
    rng,
    mask.shape,
    patch_size,
    coords=coords,
    classes=classes,
    foreground_fraction=foreground_fraction,
  )
  matrix, offset = sample_patch_affine(rng, centre, patch_size, augment)
  image, mask, inside = warp_patch(
    image, mask, matrix, offset, patch_size, ignore_index=ignore_index
  )
  if lut is not None:
    mask = np.where(inside, lut[mask], ignore_index)
  image = (jitter(image / scale, rng, augment) - mean) / std
  image[~inside] = 0.0
  return {"image": image.astype(np.float32), "label": mask.astype(np.int32)}


def preprocess_example(
  example: dict,
  rng: np.random.Generator | None,
  *,
  data: SegmentationData,
  spatial_shape,
  augment: Augment,
  mean: np.ndarray,
  std: np.ndarray,
  patch_size=None,
  foreground_fraction: float = 1 / 3,
  relabel: bool = True,
) -> dict:
  """One raw example to ``{"image": float32 (*spatial, C), "label": int32 (*spatial)}``.

  ``rng`` is ``None`` for deterministic preprocessing (resize to ``spatial_shape`` when it is
  given, and normalise). With ``patch_size`` (training only) the example is a patch of that
  size at the working resolution (``spatial_shape``, or the image's own), placed by
  :func:`regionloss_jax.data.patches.patch_centre`; patch pixels outside the image have
  label ``data.ignore_index`` and image value 0 (what sliding-window inference pads with).
  """
  image, raw_mask = _stored(example)
  scale = value_scale(image.dtype)
  working = tuple(spatial_shape) if spatial_shape else image.shape[:-1]
  resized = image.shape[:-1] != working
  lut = data.label_lut if relabel else None
  patch_options = dict(
    patch_size=patch_size,
    augment=augment,
    mean=mean,
    std=std,
    foreground_fraction=foreground_fraction,
    ignore_index=data.ignore_index,
    scale=scale,
  )
  if rng is not None and patch_size is not None and not resized:
    if "locations" in example:  # stored by preparation: the mask need not be read whole
      coords = np.asarray(example["locations"])
      classes = np.asarray(example["location_classes"])
    else:
      labels = lut[raw_mask] if lut is not None else np.asarray(raw_mask)
      coords, classes = patches.class_locations(labels, data.num_classes)
    return _patch(image, raw_mask, rng, coords=coords, classes=classes, lut=lut, **patch_options)

  image = np.asarray(image)
  mask = lut[raw_mask] if lut is not None else np.asarray(raw_mask)
  if resized and (rng is None or patch_size is not None):
    matrix, offset = sample_affine(
      np.random.default_rng(0), image.shape[:-1], working, Augment.none()
    )
    image, mask = warp(image, mask, matrix, offset, working, ignore_index=data.ignore_index)
  if rng is None:
    image = image.astype(np.float32) / scale
    return {"image": ((image - mean) / std).astype(np.float32), "label": mask.astype(np.int32)}
  if patch_size is None:
    matrix, offset = sample_affine(rng, image.shape[:-1], working, augment)
    image, mask = warp(image, mask, matrix, offset, working, ignore_index=data.ignore_index)
    image = jitter(image / scale, rng, augment)
    return {"image": ((image - mean) / std).astype(np.float32), "label": mask.astype(np.int32)}
  coords, classes = patches.class_locations(mask, data.num_classes)  # on the resized grid
  return _patch(image, mask, rng, coords=coords, classes=classes, lut=None, **patch_options)


def _identity_lut(data: SegmentationData) -> bool:
  return np.array_equal(data.label_lut, np.arange(len(data.label_lut)))


def default_augment(spatial_dims: int) -> Augment:
  """``Augment()`` for 2-D data; flips, zoom and jitter for 3-D (no crop, no rotation)."""
  if spatial_dims == 2:
    return Augment()
  return Augment(flip_axes=(-1,), scale=(1.0, 1.0), max_rotation_deg=0.0)


def make_pipeline(
  data: SegmentationData,
  *,
  global_batch_size: int,
  seed: int = 0,
  train: bool = True,
  spatial_shape: tuple[int, ...] | None = None,
  patch_size: tuple[int, ...] | None = None,
  foreground_fraction: float = 1 / 3,
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
    seed: seeds shuffling, patch positions and augmentation; same seed, same batches.
    train: shuffle, augment and repeat forever (unless ``num_epochs``); otherwise read in
      order, once, without augmentation.
    spatial_shape: the working ``(H, W)`` / ``(D, H, W)`` that images are resized to;
      defaults to ``data.spatial_shape``. Without it, and without ``patch_size``, the
      examples must all have one size; with ``patch_size`` they keep their own.
    patch_size: train on random patches of this size taken at the working resolution,
      ``foreground_fraction`` of them centred on a foreground pixel (see
      :mod:`regionloss_jax.data.patches`). Evaluation batches are whole images: evaluate
      patch-trained models through :func:`regionloss_jax.inference.sliding_window` on
      :func:`eval_examples`.
    foreground_fraction: share of patches centred on a foreground class, in ``[0, 1]``.
    augment: augmentation settings for training; default :func:`default_augment`.
      Ignored when ``train`` is false.
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
    raise ValueError(
      f"global_batch_size={global_batch_size} must be a positive multiple of "
      f"the shard count {shard_count}"
    )
  batch_size = global_batch_size // shard_count
  spatial_shape = tuple(spatial_shape or data.spatial_shape or ())
  if patch_size is not None:
    patch_size = tuple(int(p) for p in patch_size)
    if not train:
      raise ValueError(
        "patch_size is for training; evaluate whole images with "
        "eval_examples() and regionloss_jax.inference.sliding_window"
      )
    if any(p < 1 for p in patch_size):
      raise ValueError(f"patch_size must be positive, got {patch_size}")
    if not 0.0 <= foreground_fraction <= 1.0:
      raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
  elif not spatial_shape:
    raise ValueError(
      "the examples of this dataset differ in size: pass spatial_shape=(H, W) "
      "to resize them, or patch_size to train on patches"
    )
  per_shard = len(data) // shard_count
  if per_shard == 0:
    raise ValueError(f"dataset of {len(data)} examples cannot feed {shard_count} shards")
  if drop_remainder and per_shard < batch_size and not (train and num_epochs is None):
    raise ValueError(f"{per_shard} examples per shard give no full batch of {batch_size}")
  if augment is None:
    augment = default_augment(len(patch_size or spatial_shape))
  mean = np.asarray(data.mean if mean is None else mean, np.float32)
  std = np.asarray(data.std if std is None else std, np.float32)
  options = dict(
    data=data,
    spatial_shape=spatial_shape or None,
    augment=augment,
    mean=mean,
    std=std,
    patch_size=patch_size,
    foreground_fraction=foreground_fraction,
    relabel=not _identity_lut(data),
  )

  # Equal-length shards: process i reads examples i, i + n, i + 2n, ...
  ds = grain.MapDataset.source(data.source)
  ds = ds[shard_index : per_shard * shard_count : shard_count]
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


# Example fields that describe where an image came from; eval_examples passes them on.
GEOMETRY_KEYS = ("original_shape", "affine", "spacing")


def eval_examples(
  data: SegmentationData,
  *,
  spatial_shape: tuple[int, ...] | None = None,
  shard_index: int = 0,
  shard_count: int = 1,
  num_threads: int = 2,
  prefetch: int = 4,
  mean: tuple[float, ...] | None = None,
  std: tuple[float, ...] | None = None,
) -> grain.IterDataset:
  """Every example of this process's share of ``data``, in order, one at a time, for
  evaluation and prediction: unaugmented, normalised, at the working resolution
  (``spatial_shape``, else ``data.spatial_shape``, else each image's own size).

  Examples ``shard_index, shard_index + shard_count, ...`` (all of them when
  ``shard_count`` is 1; shares differ by at most one example).

  Returns:
    A ``grain.IterDataset`` of dicts with ``image`` float32 ``(*spatial, C)``, ``label`` int32
    ``(*spatial)``, ``index`` (the position in ``data``), ``name`` (the source file's name,
    or the index as ``00042``), ``original_shape`` (the file's spatial shape, else the
    stored one) and, where the dataset records them, ``affine`` and ``spacing``.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  spatial_shape = tuple(spatial_shape or data.spatial_shape or ()) or None
  options = dict(
    data=data,
    spatial_shape=spatial_shape,
    augment=Augment.none(),
    mean=np.asarray(data.mean if mean is None else mean, np.float32),
    std=np.asarray(data.std if std is None else std, np.float32),
    relabel=not _identity_lut(data),
  )

  def prepare(index: int) -> dict:
    example = data.source[index]
    out = preprocess_example(example, None, **options)
    name = example.get("file_name")
    out["index"] = index
    out["name"] = (
      (name.decode() if isinstance(name, bytes) else str(name))
      if name is not None
      else f"{index:05d}"
    )
    for key in GEOMETRY_KEYS:
      if key in example:
        out[key] = np.asarray(example[key])
    # The file's own size, when the dataset does not record it: the stored one.
    out.setdefault("original_shape", np.asarray(np.shape(example["image"])[:-1], np.int32))
    return out

  ds = grain.MapDataset.range(shard_index, len(data), shard_count).map(prepare)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
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
