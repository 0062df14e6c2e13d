"""Forward + backward time of every compound loss against the memory floor, same run.

For each ``a+b`` loss (every compound ``make_loss`` knows, fused where
:mod:`regionloss_jax.losses.fused` applies) at ``(8, 256, 512, 19)`` float32 channel-last,
``ignore_index=255`` (5% of pixels), ``temperature=10`` for the region terms, default
options otherwise: milliseconds of ``jax.grad``; the ratio to the memory floor (one read of
the logits and one write of an array that size, measured here); the milliseconds of a
straightforward ``jax.grad`` of the same definition (the term functions added, without the
fused VJP) and its ratio to the fused path's; and XLA's temporary buffer size for both steps
(peak scratch memory).

    python benchmarks/losses.py [--shape 8 256 512 19] [--repeats 10] [--statistic min]
        [--losses ce+kl ...]
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from regionloss_jax import losses
from regionloss_jax.losses import registry


def _time_ms(timed, *, repeats, calls=1, statistic=np.median):
  """Milliseconds per call of each ``(fn, args)`` in ``timed``, timed in turn, ``repeats`` rounds.

  Interleaving the functions gives each the same share of whatever else the machine runs
  (``statistic=np.min`` then estimates the uncontended time). Each timing covers ``calls``
  calls queued back to back, so that on a GPU the launch latency (tens of microseconds)
  does not hide the kernel time.
  """
  for fn, args in timed:
    jax.block_until_ready(fn(*args))  # compile and warm up
  times = [[] for _ in timed]
  for _ in range(repeats):
    for (fn, args), fn_times in zip(timed, times, strict=True):
      start = time.perf_counter()
      for _ in range(calls):
        out = fn(*args)
      jax.block_until_ready(out)
      fn_times.append((time.perf_counter() - start) / calls)
  return [1e3 * float(statistic(t)) for t in times]


def _scratch_mb(fn, *args):
  analysis = fn.lower(*args).compile().memory_analysis()
  return analysis.temp_size_in_bytes / 2**20 if analysis is not None else float("nan")


def _straightforward(name, options):
  """``a + weight * b`` from the plain term functions, differentiated by ``jax.grad``."""
  fn = losses.make_loss(name, fused_kernel=False, **options)
  return jax.jit(jax.grad(lambda logits, labels: fn(logits, labels)[0]))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", type=int, nargs=4, default=(8, 256, 512, 19))
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument(
    "--calls",
    type=int,
    default=None,
    help="calls per timing (default: 1 on a CPU, 50 on an accelerator)",
  )
  parser.add_argument(
    "--statistic",
    choices=("median", "min"),
    default="median",
    help="of the repeats (min: the uncontended time on a shared machine)",
  )
  parser.add_argument(
    "--losses", nargs="+", default=None, help="compound names to run (default: every a+b)"
  )
  args = parser.parse_args()
  shape = tuple(args.shape)
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal(shape, np.float32))
  labels = rng.integers(0, shape[-1], shape[:-1]).astype(np.int32)
  labels[rng.random(shape[:-1]) < 0.05] = 255
  labels = jnp.asarray(labels)

  calls = args.calls or (1 if jax.devices()[0].platform == "cpu" else 50)
  statistic = {"median": np.median, "min": np.min}[args.statistic]
  timed = functools.partial(_time_ms, repeats=args.repeats, calls=calls, statistic=statistic)
  floor_fn = jax.jit(lambda x: -x)
  (floor_ms,) = timed([(floor_fn, (logits,))])
  gigabytes = 2 * logits.size * 4 / 1e9
  print(f"device: {jax.devices()[0].device_kind}  shape {shape} float32  ({args.statistic})")
  print(
    f"memory floor (read + write {gigabytes:.2f} GB): {floor_ms:.4g} ms "
    f"({gigabytes / floor_ms * 1e3:.1f} GB/s); x floor uses the floor timed with each loss\n"
  )
  print(
    "| loss | ms | x floor | straightforward ms | x straightforward | scratch MB "
    "| straightforward MB |"
  )
  print("|---|---|---|---|---|---|---|")
  for second in registry.SECOND_TERMS:
    for first in registry.FIRST_TERMS:
      name = f"{first}+{second}"
      if args.losses is not None and name not in args.losses:
        continue
      options = {"ignore_index": 255, "weight": 0.1}
      if second in ("l1", "kl", "db"):
        options["temperature"] = 10.0
      fn = losses.make_loss(name, **options)
      grad_fn = jax.jit(jax.grad(lambda x, y, fn=fn: fn(x, y)[0]))
      plain_fn = _straightforward(name, options)
      floor_ms, ms, plain_ms = timed(
        [(floor_fn, (logits,)), (grad_fn, (logits, labels)), (plain_fn, (logits, labels))]
      )
      print(
        f"| {name} | {ms:.4g} | {ms / floor_ms:.1f} | {plain_ms:.4g} | {plain_ms / ms:.2f} | "
        f"{_scratch_mb(grad_fn, logits, labels):.0f} | "
        f"{_scratch_mb(plain_fn, logits, labels):.0f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
