"""How much memory a run's train step needs, estimated before anything is compiled.

The planner (:mod:`train.planning`) sizes patches and batches with it, and a run checks it
against its device before the first step, so that a plan made for a larger device, or a
huge ``train.batch_size``, stops with one line naming the fields instead of exhausting
memory.

The estimate counts what XLA keeps for the backward pass of the U-Net: per sample, the
activations at every resolution level, ``sum_l f_l * V_l`` floats (``f_l`` the width and
``V_l`` the voxels of level ``l``), times a factor for the several tensors each block
stores (convolution, norm and activation outputs, both ways, and the decoder's
concatenations); plus the parameters, their gradients and the optimiser's two moments.
The factors come from XLA's own memory analysis of the compiled step (``temp`` bytes) on
XLA:CPU, 2-D and 3-D, depths 3-5, batches 2-8: ``temp = 16.2 * activations + 1.05 *
parameter bytes`` to within 4% (tests/train/test_memory.py checks the estimate against the
analysis); :data:`ACTIVATION_FACTOR` rounds 16.2 up to keep the estimate an upper bound, and
the input, the logits and their gradients count :data:`EDGE_FACTOR` times.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence

import ml_collections

from regionloss_jax.models.unet import stage_widths

ACTIVATION_FACTOR = 18.0
EDGE_FACTOR = 4.0
# Gradients and temporaries of the update (1.05 measured), plus the parameters and Adam's
# two moments held as arguments.
PARAMETER_FACTOR = 4.1
FLOAT_BYTES = 4


@dataclasses.dataclass(frozen=True)
class StepMemory:
  """Estimated bytes of one train step on one device."""

  activations: int  # of the whole per-device batch
  parameters: int  # parameters, gradients, optimiser moments and update temporaries
  batch: int  # the input images and labels

  @property
  def total(self) -> int:
    return self.activations + self.parameters + self.batch


def level_voxels(patch: Sequence[int], pooling: Sequence[Sequence[int]]) -> list[int]:
  """Voxels of each resolution level: the patch, then divided by each level's pooling."""
  sizes = [int(s) for s in patch]
  voxels = [math.prod(sizes)]
  for factors in pooling:
    sizes = [s // f for s, f in zip(sizes, factors, strict=True)]
    voxels.append(math.prod(sizes))
  return voxels


def parameter_count(
  *, spatial_dims: int, widths: Sequence[int], in_channels: int, num_classes: int
) -> int:
  """Weights of :class:`regionloss_jax.models.UNet` with these stage widths (3^d kernels,
  2^d transposed convolutions; norms and biases are negligible and left out)."""
  kernel = 3**spatial_dims
  count = kernel * in_channels * widths[0] + kernel * widths[0] * widths[0]
  for i in range(1, len(widths)):
    count += kernel * (widths[i - 1] * widths[i] + widths[i] * widths[i])  # encoder block
    count += 2**spatial_dims * widths[i] * widths[i - 1]  # upsampling
    count += kernel * (2 * widths[i - 1] * widths[i - 1] + widths[i - 1] * widths[i - 1])
  return count + widths[0] * num_classes


def step_memory(
  *,
  patch: Sequence[int],
  batch_size: int,
  depth: int,
  features: int,
  max_features: int | None,
  in_channels: int,
  num_classes: int,
  pooling: Sequence[Sequence[int]] | None = None,
) -> StepMemory:
  """The estimate for a per-device batch of ``batch_size`` patches of ``patch``."""
  pooling = pooling or [(2,) * len(patch)] * depth
  widths = stage_widths(depth, features, max_features)
  voxels = level_voxels(patch, pooling)
  per_sample = ACTIVATION_FACTOR * sum(w * v for w, v in zip(widths, voxels, strict=True))
  # The input, the logits, their probabilities and gradient are stored a few times only.
  per_sample += EDGE_FACTOR * (in_channels + num_classes) * voxels[0]
  activations = per_sample * batch_size * FLOAT_BYTES
  count = parameter_count(
    spatial_dims=len(patch), widths=widths, in_channels=in_channels, num_classes=num_classes
  )
  batch = batch_size * voxels[0] * (in_channels + 1) * FLOAT_BYTES
  return StepMemory(int(activations), int(PARAMETER_FACTOR * count * FLOAT_BYTES), int(batch))


def config_step_memory(
  config: ml_collections.ConfigDict,
  *,
  in_channels: int,
  num_classes: int,
  devices: int = 1,
  shape: Sequence[int] | None = None,
) -> StepMemory:
  """:func:`step_memory` of a run config per device: its batch split over ``devices``
  (rounded up), examples of ``shape`` (default: its patch, else its image size)."""
  patch = tuple(shape or config.data.patch_size or config.data.image_size)
  return step_memory(
    patch=patch,
    batch_size=max(1, -(-config.train.batch_size // max(devices, 1))),
    depth=config.model.depth,
    features=config.model.features,
    max_features=config.model.max_features,
    in_channels=in_channels,
    num_classes=num_classes,
    pooling=config.model.get("pooling") or None,
  )


def device_memory(device) -> tuple[int, str]:
  """``(bytes, where)``: what one device can hold, and where the number came from.

  Accelerators report their limit (``memory_stats()["bytes_limit"]``); a CPU device shares
  the host's physical memory, of which half is counted (the input pipeline, its prefetched
  batches and the compiler need the rest).
  """
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001  (backends without the call raise several types)
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory limit"
  host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return host // 2, "half of the host's physical memory"


def gib(count: float) -> str:
  return f"{count / 2**30:.2f} GiB"
