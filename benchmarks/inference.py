"""Sliding-window inference throughput, and its overhead against one direct forward pass.

The default config's U-Net (depth 3, 8 features; its 3-D twin for volumes) in evaluation
mode, float32, jitted once per window batch:

* a 512x512 RGB image through 128x128 windows and a 128x128x128 volume through 64x64x64
  windows, at overlap 0 and 0.5 (Gaussian blending): images (volumes) per second;
* the overhead: ``sliding_window`` with one window covering the whole image against the
  jitted forward pass of that image read back to the host, timed alternately in the same
  run (goal: under 15%).

    python benchmarks/inference.py [--repeats 5] [--batch-size 4]
"""

import argparse
import time

from train import xla_flags

xla_flags.set_defaults()  # the train program's XLA flags, before JAX opens a backend

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from regionloss_jax import inference, models  # noqa: E402


def _model(spatial_dims: int, in_channels: int):
  model = models.compiled_init(
    lambda: models.UNet(
      in_channels, 5, spatial_dims=spatial_dims, depth=3, features=8, rngs=nnx.Rngs(0)
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
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--batch-size", type=int, default=4, help="windows per call")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print(
    f"{jax.device_count()} x {jax.devices()[0].device_kind}, jax {jax.__version__}, "
    f"windows per call {args.batch_size}"
  )
  cases = [
    ("image 512x512x3", 2, rng.normal(size=(1, 512, 512, 3)), (128, 128)),
    ("volume 128^3", 3, rng.normal(size=(1, 128, 128, 128, 1)), (64, 64, 64)),
  ]
  for name, dims, image, window in cases:
    image = image.astype(np.float32)
    apply = _model(dims, image.shape[-1])
    for overlap in (0.0, 0.5):
      count = len(inference.window_starts(image.shape[1], window[0], overlap)) ** dims

      def tiled(apply=apply, image=image, window=window, overlap=overlap):
        return inference.sliding_window(
          apply, image, window=window, overlap=overlap, batch_size=args.batch_size
        )

      seconds = _median_s(tiled, args.repeats)
      print(
        f"{name}: {count:3d} windows of {'x'.join(map(str, window))}, overlap {overlap}: "
        f"{seconds * 1e3:8.1f} ms, {1 / seconds:7.2f} per s"
      )
    whole = image.shape[1:-1]

    def direct_pass(apply=apply, image=image):
      return np.asarray(apply(image))

    def one_window(apply=apply, image=image, whole=whole):
      return inference.sliding_window(apply, image, window=whole, overlap=0.0, batch_size=1)

    direct, single = _alternating(direct_pass, one_window, args.repeats)
    print(
      f"{name}: one window covering it {single * 1e3:.1f} ms against a direct pass "
      f"{direct * 1e3:.1f} ms: overhead {100 * (single / direct - 1):+.1f}% (goal < 15%)"
    )


if __name__ == "__main__":
  main()
