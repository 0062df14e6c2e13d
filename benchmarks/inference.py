"""Sliding-window inference throughput, and its overhead against one direct forward pass.

A U-Net in evaluation mode, float32, jitted once per window batch, segments an image and a
volume through windows at overlap 0 and 0.5 (Gaussian blending): images (volumes) per
second. Then the overhead: ``sliding_window`` with one window covering a whole input against
the jitted forward pass of that input read back to the host, timed alternately in the same
run (goal: under 15%).

* ``--preset small`` (the default on a CPU): the default config's U-Net (depth 3, 8
  features) and its 3-D twin; a 512x512 RGB image through 128x128 windows and a 128^3
  volume through 64^3 windows, 4 windows per call.
* ``--preset native`` (the default on an accelerator): what users run at native
  resolution, with the U-Nets of ``train/configs/folder.py`` (depth 5, 32 features, 8
  windows per call) and ``volumes3d.py`` (depth 4, 32 features, 2 per call): a 2048x2048
  RGB photograph through 256x256 windows and a 512x512x300 CT volume through 96^3
  windows; the overhead on a 1024x1024 image and a 192^3 volume.

``--scale S`` divides every size by ``S`` (a quick check of the script itself).

    python benchmarks/inference.py [--preset small|native] [--repeats 5] [--scale 1]
"""

import argparse
import time
from typing import NamedTuple

from train import xla_flags

xla_flags.set_defaults()  # the train program's XLA flags, before JAX opens a backend

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from regionloss_jax import inference, models  # noqa: E402


class Case(NamedTuple):
  kind: str
  shape: tuple[int, ...]  # (*spatial, channels)
  window: tuple[int, ...]
  depth: int
  features: int
  max_features: int | None
  batch_size: int  # windows per call
  overhead_shape: tuple[int, ...]  # the input of the overhead comparison


PRESETS = {
  "small": (
    Case("RGB image", (512, 512, 3), (128, 128), 3, 8, None, 4, (512, 512, 3)),
    Case("volume", (128, 128, 128, 1), (64, 64, 64), 3, 8, None, 4, (128, 128, 128, 1)),
  ),
  "native": (
    Case("RGB photograph", (2048, 2048, 3), (256, 256), 5, 32, 512, 8, (1024, 1024, 3)),
    Case("CT volume", (512, 512, 300, 1), (96, 96, 96), 4, 32, 320, 2, (192, 192, 192, 1)),
  ),
}


def _scaled(case: Case, scale: int) -> Case:
  """``case`` with every size divided by ``scale``; what the U-Net takes whole (windows, the
  overhead's input) stays a multiple of ``2**depth``."""
  unit = 2**case.depth

  def whole_units(sizes):
    return tuple(max(unit, s // scale // unit * unit) for s in sizes)

  return case._replace(
    shape=tuple(max(1, s // scale) for s in case.shape[:-1]) + case.shape[-1:],
    window=whole_units(case.window),
    overhead_shape=whole_units(case.overhead_shape[:-1]) + case.overhead_shape[-1:],
  )


def _model(case: Case):
  spatial_dims = len(case.window)
  model = models.compiled_init(
    lambda: models.UNet(
      case.shape[-1],
      5,
      spatial_dims=spatial_dims,
      depth=case.depth,
      features=case.features,
      max_features=case.max_features,
      rngs=nnx.Rngs(0),
    )
  )
  model.eval()
  graphdef, state = nnx.split(model)
  apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
  return lambda x: apply(state, x)


def _median_s(fn, repeats: int) -> float:
  fn()  # compile and warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _alternating(first, second, repeats: int) -> tuple[float, float]:
  """Median seconds of two functions timed in alternation (load hits both alike)."""
  first(), second()
  a, b = [], []
  for _ in range(repeats):
    for fn, out in ((first, a), (second, b)):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return float(np.median(a)), float(np.median(b))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=tuple(PRESETS), default=None)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--scale", type=int, default=1, help="divide every size by this")
  args = parser.parse_args()
  on_cpu = jax.devices()[0].platform == "cpu"
  preset = args.preset or ("small" if on_cpu else "native")
  rng = np.random.default_rng(0)
  print(f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, {preset}")
  for case in PRESETS[preset]:
    case = _scaled(case, args.scale)
    apply = _model(case)
    print(
      f"{case.kind} {'x'.join(map(str, case.shape[:-1]))}: U-Net depth {case.depth}, "
      f"{case.features} features, {case.batch_size} windows per call"
    )
    image = rng.normal(size=(1, *case.shape)).astype(np.float32)
    for overlap in (0.0, 0.5):
      count = np.prod(
        [
          len(inference.window_starts(size, window, overlap))
          for size, window in zip(case.shape[:-1], case.window, strict=True)
        ]
      )

      def tiled(image=image, case=case, overlap=overlap, apply=apply):
        return inference.sliding_window(
          apply, image, window=case.window, overlap=overlap, batch_size=case.batch_size
        )

      seconds = _median_s(tiled, args.repeats)
      print(
        f"  {int(count):4d} windows of {'x'.join(map(str, case.window))}, overlap {overlap}: "
        f"{seconds * 1e3:9.1f} ms, {1 / seconds:7.2f} per s"
      )
    whole = rng.normal(size=(1, *case.overhead_shape)).astype(np.float32)

    def direct_pass(whole=whole, apply=apply):
      return np.asarray(apply(whole))

    def one_window(whole=whole, apply=apply, window=case.overhead_shape[:-1]):
      return inference.sliding_window(apply, whole, window=window, overlap=0.0, batch_size=1)

    direct, single = _alternating(direct_pass, one_window, args.repeats)
    shape = "x".join(map(str, case.overhead_shape[:-1]))
    print(
      f"  one window covering a {shape} input {single * 1e3:.1f} ms against a direct pass "
      f"{direct * 1e3:.1f} ms: overhead {100 * (single / direct - 1):+.1f}% (goal < 15%)"
    )


if __name__ == "__main__":
  main()
