"""Input-pipeline throughput: images/s of the default training pipeline at batch 16.

Prepares ``imbalanced_shapes`` (default 96x96 size) in a cache directory, then times the
augmented training pipeline. Run: ``python benchmarks/pipeline.py [--task multiclass]``.
"""

import argparse
import tempfile
import time

from regionloss_jax import data


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--task", default="multiclass", choices=("binary", "multiclass"))
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=150)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--cache-dir", default=None, help="default: a temporary directory")
  args = parser.parse_args()

  with tempfile.TemporaryDirectory() as tmp:
    start = time.perf_counter()
    dataset = data.load(f"imbalanced_shapes/{args.task}", split="train",
                        cache_dir=args.cache_dir or tmp)
    prepare_s = time.perf_counter() - start
    rows = []
    for name, train in (("train (augmented)", True), ("eval (resize+normalise)", False)):
      pipeline = data.make_pipeline(dataset, global_batch_size=args.batch, seed=0, train=train,
                                    num_threads=args.threads, shard_index=0, shard_count=1)
      iterator = iter(pipeline)
      next(iterator)  # Warm-up: threads start, first reads.
      steps = args.steps if train else min(args.steps, len(dataset) // args.batch - 1)
      start = time.perf_counter()
      for _ in range(steps):
        next(iterator)
      elapsed = time.perf_counter() - start
      rows.append((name, steps * args.batch / elapsed))
  print(f"imbalanced_shapes/{args.task}: {len(dataset)} train examples, prepare/open "
        f"{prepare_s:.1f} s")
  for name, rate in rows:
    print(f"pipeline {name:26s} batch {args.batch}: {rate:8.0f} images/s "
          f"({args.threads} threads)")


if __name__ == "__main__":
  main()
