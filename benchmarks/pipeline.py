"""Input-pipeline throughput: images/s of the training pipeline, whole images and patches.

1. ``imbalanced_shapes`` (default 96x96), batch 16: the augmented whole-image training
   pipeline and the evaluation pipeline.
2. A prepared folder of ``--native-count`` synthetic RGB images of ``--native-size`` pixels
   (native resolution), batch 8: augmented ``--patch``-pixel patches with foreground
   oversampling, and whole images one by one for evaluation (``eval_examples``).
3. ``--volume-count`` synthetic float32 volumes of ``--volume-shape`` voxels at native
   resolution, batch 2 of ``--volume-patch`` patches.

For both native datasets the patches are read twice in the same run, from the memory-mapped
arrays the pipeline uses (:mod:`regionloss_jax.data.arrays`) and from the TFDS records
they were exported from (which decode the whole example for each patch), and the ratio is
printed.

Run: ``python benchmarks/pipeline.py [--task multiclass] [--native-size 1024]``.
"""

import argparse
import dataclasses
import pathlib
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from regionloss_jax import data


def _rate(iterator, steps: int, batch: int) -> float:
  next(iterator)  # warm-up: threads start, first reads
  start = time.perf_counter()
  for _ in range(steps):
    next(iterator)
  return steps * batch / (time.perf_counter() - start)


def _native_folder(root: pathlib.Path, count: int, size: int) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for i in range(count):
    mask = np.zeros((size, size), np.uint8)
    mask[size // 4 : size // 2, size // 3 : size // 2] = 1
    mask[3 * size // 4 : 3 * size // 4 + 8, size // 5 : size // 5 + 8] = 2  # 64 pixels
    image = (rng.integers(0, 80, (size, size, 3)) + 80 * mask[..., None]).astype(np.uint8)
    for sub, array in (("images", image), ("masks", mask)):
      (root / "train" / sub).mkdir(parents=True, exist_ok=True)
      Image.fromarray(array).save(root / "train" / sub / f"img{i:03d}.png")
  return root


def _volume_folder(root: pathlib.Path, count: int, shape) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for i in range(count):
    mask = np.zeros(shape, np.uint8)
    d, h, w = shape
    mask[d // 4 : d // 2, h // 3 : h // 2, w // 3 : w // 2] = 1
    image = (rng.normal(0, 1, shape) + 2 * mask).astype(np.float32)
    for sub, array in (("images", image), ("masks", mask)):
      (root / "train" / sub).mkdir(parents=True, exist_ok=True)
      np.save(root / "train" / sub / f"vol{i:03d}.npy", array)
  return root


def _patch_rates(dataset, patch, batch: int, threads: int, steps: int) -> tuple[float, float]:
  """Patches per second from the memory-mapped arrays and from the TFDS records."""
  records = tfds.builder_from_directory(dataset.info.data_dir).as_data_source("train")
  rates = []
  for source in (dataset.source, records):
    pipeline = data.make_pipeline(
      dataclasses.replace(dataset, source=source),
      global_batch_size=batch,
      seed=0,
      num_threads=threads,
      patch_size=patch,
      shard_index=0,
      shard_count=1,
    )
    rates.append(_rate(iter(pipeline), steps, batch))
  return rates[0], rates[1]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--task", default="multiclass", choices=("binary", "multiclass"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--native-count", type=int, default=16)
  parser.add_argument("--native-size", type=int, default=1024)
  parser.add_argument("--patch", type=int, default=256)
  parser.add_argument("--volume-count", type=int, default=6)
  parser.add_argument("--volume-shape", type=int, nargs=3, default=(128, 256, 256))
  parser.add_argument("--volume-patch", type=int, nargs=3, default=(64, 96, 96))
  parser.add_argument("--cache-dir", default=None, help="default: a temporary directory")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    cache = args.cache_dir or tmp
    start = time.perf_counter()
    dataset = data.load(f"imbalanced_shapes/{args.task}", split="train", cache_dir=cache)
    prepare_s = time.perf_counter() - start
    rows = []
    for name, train in (("train (augmented)", True), ("eval (resize+normalise)", False)):
      pipeline = data.make_pipeline(
        dataset,
        global_batch_size=args.batch,
        seed=0,
        train=train,
        num_threads=args.threads,
        shard_index=0,
        shard_count=1,
      )
      steps = args.steps if train else min(args.steps, len(dataset) // args.batch - 1)
      rows.append((f"{name}, batch {args.batch}", _rate(iter(pipeline), steps, args.batch)))

    root = _native_folder(pathlib.Path(tmp) / "native", args.native_count, args.native_size)
    start = time.perf_counter()
    native = data.load(
      "folder",
      root=root,
      split="train",
      num_classes=3,
      image_size=None,
      cache_dir=cache,
      val_fraction=0.1,
      test_fraction=0.1,
    )
    native_prepare_s = time.perf_counter() - start
    mapped, records = _patch_rates(native, (args.patch, args.patch), 8, args.threads, 40)
    name = f"{args.patch}px patches of {args.native_size}px images, batch 8"
    rows.append((name, mapped))
    rows.append((f"{name}, from the TFDS records", records))
    ratios = [(name, mapped / records)]
    whole = data.eval_examples(native, num_threads=args.threads)
    rows.append(
      (f"whole {args.native_size}px images for evaluation", _rate(iter(whole), len(native) - 1, 1))
    )

    shape = tuple(args.volume_shape)
    root = _volume_folder(pathlib.Path(tmp) / "volumes", args.volume_count, shape)
    volumes = data.load(
      "volumes", root=root, split="train", num_classes=2, shape=None, cache_dir=cache
    )
    patch = tuple(args.volume_patch)
    mapped, records = _patch_rates(volumes, patch, 2, args.threads, 10)
    name = f"{'x'.join(map(str, patch))} patches of {'x'.join(map(str, shape))} volumes, batch 2"
    rows.append((name, mapped))
    rows.append((f"{name}, from the TFDS records", records))
    ratios.append((name, mapped / records))
  print(
    f"imbalanced_shapes/{args.task}: {len(dataset)} train examples, prepare/open "
    f"{prepare_s:.1f} s; native folder: {len(native)} train images of "
    f"{args.native_size}x{args.native_size}, prepare {native_prepare_s:.1f} s"
  )
  for name, rate in rows:
    print(f"pipeline {name:72s}: {rate:8.1f} images/s ({args.threads} threads)")
  for name, ratio in ratios:
    print(f"memory-mapped / records, {name}: {ratio:.2f}x")


if __name__ == "__main__":
  main()
