"""Images/s of the real jitted training step, its FLOP rate, and a PyTorch twin for reference.

Builds the U-Net and the train step exactly as the train program does (``train.step``, config
``train/configs/default.py``: instance norm, leaky ReLU, transposed-convolution upsampling,
CE + 0.1 KL, clipped Adam) on a synthetic batch shaped like ``imbalanced_shapes/multiclass``
(RGB images, 5 classes), and times it (warm-up, then the median of ``--steps`` steps).

* ``--preset default``: the default model (depth 3, 8 base features), batch 16, 128x128,
  float32 (sized for this CPU).
* ``--preset large``: 64 base features, 512x512, bfloat16, batch 8 (sized for a GPU; on a CPU
  it runs at batch 1 with 2 timed steps unless ``--batch`` / ``--steps`` say otherwise).

FLOPs per step are XLA's cost analysis of the lowered (global) step. The peak they are
compared with is the dense peak of the GPU model from a small table, or, on a CPU (or an
unknown GPU), a large matrix product in the compute dtype measured in the same run (said in
the output).
With ``torch`` importable, the same U-Net, loss and optimiser in PyTorch eager
(``benchmarks/torch_unet.py``) are timed on the same device and shapes, alternating with the
JAX step so that a busy machine slows both alike; ``make bench-torch`` sets that up.
The JAX step runs with the XLA flags the train program sets (``train/xla_flags.py``);
``--no-xla-defaults`` leaves them out, to measure what they change. ``--cpu-devices N`` runs
the CPU as N devices with the batch split over them, as ``config.parallel.cpu_devices``.

    python benchmarks/train_step.py [--preset default|large] [--batch 16] [--size 128]
        [--steps 10] [--rounds 2] [--cpu-devices 1] [--no-torch] [--no-xla-defaults]
"""

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from regionloss_jax.data import IGNORE_INDEX
from train import optim, parallel, xla_flags
from train import step as step_lib
from train.configs import default

# imbalanced_shapes/multiclass: RGB images, 5 classes (background, organ, cyst, vessel, nodule).
IN_CHANNELS = 3
NUM_CLASSES = 5

PRESETS = {
  "default": dict(
    features=8, size=128, precision="float32", batch=16, cpu_batch=16, steps=10, cpu_steps=10
  ),
  "large": dict(
    features=64, size=512, precision="bfloat16", batch=8, cpu_batch=1, steps=20, cpu_steps=2
  ),
}

# Dense (no sparsity) peak TFLOP/s by device_kind substring, bfloat16 then float32.
GPU_PEAKS_TFLOPS = {
  "H200": (989.0, 67.0),  # same chip as H100 SXM
  "H100 PCIe": (756.0, 51.0),
  "H100": (989.0, 67.0),  # SXM
  "A100": (312.0, 19.5),
}


def _time_ms(fn, *args, steps, warmup=2):
  """Median milliseconds of ``fn(*args)`` over ``steps`` calls, after ``warmup`` calls."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def make_config(*, batch, size, features, precision, depth=None):
  """The default run's config with the benchmark's shapes."""
  config = default.get_config()
  config.train.batch_size = batch
  config.data.image_size = (size, size)
  config.model.features = features
  config.precision = precision
  if depth is not None:
    config.model.depth = depth
  return config


def synthetic_batch(batch, size, seed=0):
  """``{"image": float32 (B, S, S, 3), "label": int32 (B, S, S)}``, standard normal / uniform."""
  rng = np.random.default_rng(seed)
  return {
    "image": jnp.asarray(rng.standard_normal((batch, size, size, IN_CHANNELS), np.float32)),
    "label": jnp.asarray(rng.integers(0, NUM_CLASSES, (batch, size, size), np.int32)),
  }


class JaxStep:
  """The train program's jitted step, placed on the mesh of every device as the program does
  (the batch split over ``data``); calling it advances a private (donated) state."""

  def __init__(self, config):
    model = step_lib.make_model(config, in_channels=IN_CHANNELS, num_classes=NUM_CLASSES, seed=0)
    optimizer = optim.make_optimizer(config)
    graphdef, _, state = step_lib.init_state(model, optimizer)
    self.mesh = parallel.make_mesh()
    shardings = parallel.step_shardings(state, self.mesh, shard_params=config.parallel.shard_params)
    self.state = parallel.put_state(state, shardings.state)
    self.step = step_lib.make_train_step(
      config, graphdef, optimizer, shardings, ignore_index=IGNORE_INDEX
    )

  def put(self, batch):
    """The batch on the mesh, split over its devices."""
    return parallel.put_train_batch({k: np.asarray(v) for k, v in batch.items()}, self.mesh)

  def flops(self, batch):
    """FLOPs of one step from XLA's cost analysis of the step as lowered, before the backend
    compiles it (None when it does not say). The compiled GPU executable is not used: its
    cuDNN convolutions are custom calls that the analysis does not count."""
    return (self.step.lower(self.state, batch).cost_analysis() or {}).get("flops")

  def __call__(self, batch):
    self.state, metrics = self.step(self.state, batch)
    return metrics


def matmul_peak_flops(dtype, n=4096, steps=5):
  """Measured FLOP/s of an ``n x n`` matrix product in ``dtype`` (a practical peak)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (n, n), dtype)
  b = jax.random.normal(key_b, (n, n), dtype)
  ms = _time_ms(jax.jit(jnp.matmul), a, b, steps=steps)
  return 2 * n**3 / (ms * 1e-3)


def device_peak(device, precision):
  """``(FLOP/s, how it was obtained)`` for ``device`` in the compute precision."""
  if device.platform == "gpu":
    for name, (bf16, fp32) in GPU_PEAKS_TFLOPS.items():
      if name in device.device_kind:
        peak = bf16 if precision == "bfloat16" else fp32
        return peak * 1e12, f"{device.device_kind} dense {precision} peak, datasheet"
  dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
  # A CPU's matmul peak is well below the nominal cores x GHz x FLOPs/cycle; a smaller product
  # keeps the measurement short there.
  n = 2048 if device.platform == "cpu" else 8192
  return matmul_peak_flops(dtype, n=n), f"measured {n}^3 {precision} matmul, this run"


def torch_timer(args, depth, device):
  """``() -> ms`` timing the PyTorch twin, or None (with a note printed) without torch."""
  try:
    import torch
    import torch_unet
  except ImportError:
    print(
      "torch is not installed here: `make bench-torch` runs this benchmark with the "
      "PyTorch comparison (or `pip install torch` in a separate environment)."
    )
    return None
  torch_device = "cuda" if device.platform == "gpu" and torch.cuda.is_available() else "cpu"
  if device.platform == "gpu" and torch_device == "cpu":
    print("torch has no CUDA here: skipping the PyTorch comparison.")
    return None
  options = dict(
    batch=args.batch,
    size=args.size,
    in_channels=IN_CHANNELS,
    num_classes=NUM_CLASSES,
    depth=depth,
    features=args.features,
    steps=args.steps,
    device=torch_device,
    bfloat16=args.precision == "bfloat16",
  )
  return lambda: torch_unet.time_train_step(**options)


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--preset", choices=tuple(PRESETS), default="default")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--size", type=int, default=None, help="image side (square images)")
  parser.add_argument("--features", type=int, default=None)
  parser.add_argument("--depth", type=int, default=None, help="default: the config's")
  parser.add_argument("--precision", choices=("float32", "bfloat16"), default=None)
  parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
  parser.add_argument(
    "--rounds",
    type=int,
    default=2,
    help="alternating JAX / PyTorch rounds; each row reports the best round",
  )
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
  parser.add_argument(
    "--cpu-devices",
    type=int,
    default=1,
    help="run the CPU as this many devices, as config.parallel.cpu_devices",
  )
  parser.add_argument(
    "--no-xla-defaults",
    action="store_true",
    help="leave XLA_FLAGS as they are instead of adding the train program's (train/xla_flags.py)",
  )
  args = parser.parse_args()
  if not args.no_xla_defaults:
    xla_flags.set_defaults()  # before the device query below opens the backend
  parallel.split_cpu(args.cpu_devices)
  preset = PRESETS[args.preset]
  on_cpu = jax.devices()[0].platform == "cpu"
  for name in ("batch", "steps"):
    if getattr(args, name) is None:
      setattr(args, name, preset[f"cpu_{name}" if on_cpu else name])
  for name in ("size", "features", "precision"):
    if getattr(args, name) is None:
      setattr(args, name, preset[name])
  return args


def main():
  args = parse_args()
  device = jax.devices()[0]
  config = make_config(
    batch=args.batch,
    size=args.size,
    features=args.features,
    precision=args.precision,
    depth=args.depth,
  )
  depth = config.model.depth
  batch = synthetic_batch(args.batch, args.size)
  print(
    f"device: {jax.device_count()} x {device.device_kind} ({device.platform}, "
    f"{os.cpu_count()} CPUs), "
    f"jax {jax.__version__}"
  )
  print(
    f"preset {args.preset}: U-Net depth {depth}, {args.features} base features, "
    f"batch {args.batch}, {args.size}x{args.size}x{IN_CHANNELS}, {args.precision}, "
    f"loss {config.loss.name}, {config.optimizer.name}; median of {args.steps} steps"
  )
  print(f"XLA_FLAGS: {os.environ.get('XLA_FLAGS') or '(none)'}")

  jax_step = JaxStep(config)
  batch = jax_step.put(batch)
  flops = jax_step.flops(batch)  # the lowered global program: every device's share together
  # The first call compiles (an AOT .compile() would not fill jit's cache and compile twice).
  start = time.perf_counter()
  jax.block_until_ready(jax_step(batch))
  compile_s = time.perf_counter() - start
  peak, peak_source = device_peak(device, args.precision)
  timer = None if args.no_torch else torch_timer(args, depth, device)

  # Alternate the two so that load from elsewhere on the machine hits both; keep each best.
  jax_ms, torch_ms = [], []
  for _ in range(args.rounds):
    jax_ms.append(_time_ms(jax_step, batch, steps=args.steps))
    if timer is not None:
      torch_ms.append(timer())
  print(
    f"compile and first step {compile_s:.1f} s; peak {peak / 1e9:.0f} GFLOP/s ({peak_source}); "
    f"GFLOP/step from XLA's cost analysis (used for both rows)\n"
  )

  gflop = flops / 1e9 if flops else float("nan")
  print("| step | ms/step | images/s | GFLOP/step | GFLOP/s | of peak | vs PyTorch |")
  print("|---|---|---|---|---|---|---|")
  rows = [("JAX (train.step)", min(jax_ms))]
  if torch_ms:
    rows.append((f"PyTorch {__import__('torch').__version__} eager", min(torch_ms)))
  for name, ms in rows:
    ratio = f"{min(torch_ms) / ms:.2f}x" if torch_ms else "-"
    print(
      f"| {name} | {ms:.1f} | {args.batch * 1e3 / ms:.1f} | {gflop:.2f} | "
      f"{gflop / ms * 1e3:.1f} | {gflop * 1e9 / (ms * 1e-3) / peak:.1%} | {ratio} |"
    )
  if len(jax_ms) > 1:
    spread = ", ".join(f"{ms:.0f}" for ms in jax_ms)
    torch_spread = ", ".join(f"{ms:.0f}" for ms in torch_ms) or "-"
    print(f"\nper round ms: JAX {spread}; PyTorch {torch_spread}")


if __name__ == "__main__":
  main()
