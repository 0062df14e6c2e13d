"""Forward + backward time of every compound loss against the memory floor, same run.

For each ``a+b`` loss (every compound ``make_loss`` knows, fused where
:mod:`regionloss_jax.losses.fused` applies) at ``(8, 256, 512, 19)`` float32 channel-last,
``ignore_index=255`` (5% of pixels), ``temperature=10`` for the region terms, default
options otherwise: milliseconds of ``jax.grad``; the ratio to the memory floor (one read of
the logits and one write of an array that size, measured here); the milliseconds of a
straightforward ``jax.grad`` of the same definition (the term functions added, without the
fused VJP) and its ratio to the fused path's; and XLA's temporary buffer size for both steps
(peak scratch memory). On a GPU, ``ce+l1``, ``ce+kl`` and ``ce+db`` get a second row: the
Pallas kernels (``make_loss(..., pallas_kernel=True)``). ``--mode binary`` times the
one-sigmoid form instead, at ``(32, 512, 512, 1)`` with labels 0 and 1 (int32 labels as
large as the logits).

    python benchmarks/losses.py [--mode multiclass|binary] [--shape 8 256 512 19]
        [--repeats 10] [--statistic min]
        [--losses ce+kl ...] [--pallas] [--pallas-configs 2048x4 8192x8 ...]
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from regionloss_jax import losses
from regionloss_jax.losses import pallas_gpu, registry


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


def _pallas_row(config, options, *, interpret):
  """A row for the Pallas kernels of ``ce+kl`` with ``config`` = ``"<tile elements>x<warps>"``."""
  elements, warps = map(int, config.split("x"))

  def loss(logits, labels):
    ce, kl = pallas_gpu.ce_with_region(
      logits,
      labels,
      term="kl",
      temperature=options["temperature"],
      ignore_index=options["ignore_index"],
      tile_elements=elements,
      num_warps=warps,
      interpret=interpret,
    )
    return ce + options["weight"] * kl

  return f"ce+kl (Pallas, {elements} per tile, {warps} warps)", jax.jit(jax.grad(loss))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("multiclass", "binary"), default="multiclass")
  parser.add_argument(
    "--shape", type=int, nargs=4, default=None, help="default 8 256 512 19 (binary: 32 512 512 1)"
  )
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
  parser.add_argument(
    "--pallas",
    action="store_true",
    help="the Pallas rows off a GPU too (there they time the fused path they fall back to)",
  )
  parser.add_argument(
    "--pallas-configs",
    nargs="*",
    default=(),
    metavar="ELEMENTSxWARPS",
    help="more ce+kl Pallas rows, each with this tile size and warp count (e.g. 8192x8)",
  )
  args = parser.parse_args()
  binary = args.mode == "binary"
  shape = tuple(args.shape or ((32, 512, 512, 1) if binary else (8, 256, 512, 19)))
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.standard_normal(shape, np.float32))
  labels = rng.integers(0, 2 if binary else shape[-1], shape[:-1]).astype(np.int32)
  labels[rng.random(shape[:-1]) < 0.05] = 255
  labels = jnp.asarray(labels)

  on_gpu = jax.devices()[0].platform == "gpu"
  calls = args.calls or (1 if jax.devices()[0].platform == "cpu" else 50)
  statistic = {"median": np.median, "min": np.min}[args.statistic]
  timed = functools.partial(_time_ms, repeats=args.repeats, calls=calls, statistic=statistic)
  floor_fn = jax.jit(lambda x: -x)
  (floor_ms,) = timed([(floor_fn, (logits,))])
  gigabytes = 2 * logits.size * 4 / 1e9
  print(
    f"device: {jax.devices()[0].device_kind}  {args.mode}  shape {shape} float32  "
    f"({args.statistic})"
  )
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
      options = {"mode": args.mode, "ignore_index": 255, "weight": 0.1}
      if second in ("l1", "kl", "db"):
        options["temperature"] = 10.0
      fn = losses.make_loss(name, **options)
      rows = [(name, jax.jit(jax.grad(lambda x, y, fn=fn: fn(x, y)[0])))]
      kernels = (on_gpu or args.pallas) and pallas_gpu.available() and not binary
      if kernels and first == "ce" and second in ("l1", "kl", "db"):
        pallas = losses.make_loss(name, pallas_kernel=True, **options)
        rows.append((f"{name} (Pallas)", jax.jit(jax.grad(lambda x, y, fn=pallas: fn(x, y)[0]))))
      if kernels and name == "ce+kl":
        rows += [
          _pallas_row(config, options, interpret=not on_gpu) for config in args.pallas_configs
        ]
      plain_fn = _straightforward(name, options)
      floor_ms, plain_ms, *row_ms = timed(
        [(floor_fn, (logits,)), (plain_fn, (logits, labels))]
        + [(grad_fn, (logits, labels)) for _, grad_fn in rows]
      )
      for (row_name, grad_fn), ms in zip(rows, row_ms, strict=True):
        print(
          f"| {row_name} | {ms:.4g} | {ms / floor_ms:.1f} | {plain_ms:.4g} | "
          f"{plain_ms / ms:.2f} | {_scratch_mb(grad_fn, logits, labels):.0f} | "
          f"{_scratch_mb(plain_fn, logits, labels):.0f} |",
          flush=True,
        )


if __name__ == "__main__":
  main()
