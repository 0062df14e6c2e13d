"""The machine the other benchmarks run on, and its two ceilings measured in the same run.

Prints the devices (kind, count, memory), the versions of Python, JAX and the libraries the
program uses, JAX's own environment report (on a GPU it holds ``nvidia-smi``'s), and then
the two rates every other figure is read against:

* memory bandwidth: a jitted ``x + 1`` over a large float32 array (one read and one write,
  counted both ways), as the loss benchmark's floor;
* matrix-product rate: an ``n x n x n`` product in bfloat16 and in float32.

    python benchmarks/machine.py [--copy-mib 2048] [--matmul 8192] [--repeats 10]
"""

import argparse
import importlib.metadata
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

LIBRARIES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy", "torch")


def _median_s(fn, *args, repeats, calls):
  """Median seconds per call over ``repeats`` timings of ``calls`` queued calls, warmed up."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return float(np.median(times))


def copy_gb_per_s(mib, *, repeats, calls):
  """Bytes read plus bytes written per second by a jitted ``x + 1`` of ``mib`` MiB."""
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  seconds = _median_s(jax.jit(lambda x: x + 1.0), x, repeats=repeats, calls=calls)
  return 2 * x.nbytes / seconds / 1e9


def matmul_tflops(n, dtype, *, repeats, calls):
  """FLOP/s / 1e12 of a jitted ``n x n`` by ``n x n`` product in ``dtype`` (random data)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), dtype)
  b = jax.random.normal(key_b, (n, n), dtype)
  seconds = _median_s(jax.jit(jnp.matmul), a, b, repeats=repeats, calls=calls)
  return 2 * n**3 / seconds / 1e12


def _version(name):
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--copy-mib", type=int, default=None, help="default 2048 (CPU: 256)")
  parser.add_argument("--matmul", type=int, default=None, help="default 8192 (CPU: 1024)")
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  copy_mib = args.copy_mib or (256 if on_cpu else 2048)
  n = args.matmul or (1024 if on_cpu else 8192)
  calls = 1 if on_cpu else 10

  print(f"python {platform.python_version()} on {platform.machine()}, {platform.system()}")
  print(", ".join(f"{name} {_version(name)}" for name in LIBRARIES))
  print(f"devices: {jax.device_count()} x {device.device_kind} ({device.platform})")
  stats = device.memory_stats() or {}
  if "bytes_limit" in stats:
    print(f"device memory available to JAX: {stats['bytes_limit'] / 2**30:.1f} GiB")
  print(jax.print_environment_info(return_string=True).strip())

  bandwidth = copy_gb_per_s(copy_mib, repeats=args.repeats, calls=calls)
  print(f"\nmeasured: copy {copy_mib} MiB (x + 1), read + write: {bandwidth:.0f} GB/s")
  for dtype in (jnp.bfloat16, jnp.float32):
    rate = matmul_tflops(n, dtype, repeats=args.repeats, calls=calls)
    print(f"measured: {n}^3 matrix product, {jnp.dtype(dtype).name}: {rate:.1f} TFLOP/s")


if __name__ == "__main__":
  main()
