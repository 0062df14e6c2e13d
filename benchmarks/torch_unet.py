"""A PyTorch twin of ``regionloss_jax.models.UNet`` and its training step, for benchmarks only.

Same layout as the Flax model (see ``regionloss_jax/models/unet.py``): per stage two bias-free
3x3 convolutions, each followed by instance norm (``GroupNorm`` with one channel per group,
affine) and leaky ReLU (slope 0.01); 2x max-pool down, 2x2 stride-2 transposed convolution
(with bias) up, concatenation of the skip, and a 1x1 head. The loss is cross-entropy plus
``weight`` times the region KL term (``KL(tau || tauhat)`` of the per-image class proportions,
temperature 1); the optimiser is global-norm clipping then Adam, as ``train/optim.py`` builds.

torch is never a dependency of the package: ``make bench-torch`` installs it into
``.venv-bench``. Import this module only where ``import torch`` works.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-10


def _norm(channels: int) -> nn.Module:
  # GroupNorm with one channel per group is instance norm with an affine, as in the Flax model.
  return nn.GroupNorm(channels, channels, eps=1e-5)


class ConvBlock(nn.Sequential):
  """Two (conv 3x3 without bias, norm, leaky ReLU): ``(B, in, H, W) -> (B, out, H, W)``."""

  def __init__(self, in_features: int, out_features: int):
    super().__init__(
      nn.Conv2d(in_features, out_features, 3, padding=1, bias=False),
      _norm(out_features),
      nn.LeakyReLU(0.01),
      nn.Conv2d(out_features, out_features, 3, padding=1, bias=False),
      _norm(out_features),
      nn.LeakyReLU(0.01),
    )


class UNet(nn.Module):
  """``(B, in_channels, H, W) -> (B, num_classes, H, W)`` logits, widths ``features * 2**i``."""

  def __init__(self, in_channels: int, num_classes: int, *, depth: int = 3, features: int = 8):
    super().__init__()
    widths = [features * 2**i for i in range(depth + 1)]
    self.encoder = nn.ModuleList(
      [ConvBlock(in_channels, widths[0])]
      + [ConvBlock(widths[i - 1], widths[i]) for i in range(1, depth + 1)]
    )
    self.upsamplers = nn.ModuleList(
      [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth)]
    )
    self.decoder = nn.ModuleList([ConvBlock(2 * widths[i], widths[i]) for i in range(depth)])
    self.head = nn.Conv2d(widths[0], num_classes, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    skips = []
    for level, block in enumerate(self.encoder):
      x = block(x if level == 0 else F.max_pool2d(x, 2))
      skips.append(x)
    x = skips.pop()
    for level in reversed(range(len(self.decoder))):
      x = torch.cat([self.upsamplers[level](x), skips[level]], dim=1)
      x = self.decoder[level](x)
    return self.head(x)


def ce_kl_loss(logits: torch.Tensor, labels: torch.Tensor, weight: float) -> torch.Tensor:
  """Mean CE plus ``weight * mean_b KL(tau_b || tauhat_b)``; logits ``(B, C, H, W)``, labels
  ``(B, H, W)`` int64 (every pixel valid: the benchmark's labels have no ignored pixels)."""
  num_classes = logits.shape[1]
  ce = F.cross_entropy(logits, labels)
  count = labels[0].numel()
  probs = logits.softmax(dim=1).sum(dim=(2, 3))
  tauhat = (probs + EPS) / (count + EPS)
  onehot = F.one_hot(labels.flatten(1), num_classes).sum(dim=1).to(logits.dtype)
  tau = (onehot + EPS) / (count + EPS)
  kl = (tau * (tau.log() - tauhat.log())).sum(dim=1).mean()
  return ce + weight * kl


def make_train_step(
  model: nn.Module,
  *,
  learning_rate: float = 3e-3,
  clip_norm: float = 1.0,
  weight: float = 0.1,
  autocast_dtype: torch.dtype | None = None,
):
  """``step(images, labels) -> loss``: forward, loss, backward, clipping, one Adam update."""
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
  device_type = next(model.parameters()).device.type

  def step(images, labels):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(
      device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
      loss = ce_kl_loss(model(images).float(), labels, weight)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    return loss

  return step


def time_train_step(
  *,
  batch: int,
  size: int,
  in_channels: int,
  num_classes: int,
  depth: int,
  features: int,
  steps: int,
  warmup: int = 2,
  device: str = "cpu",
  channels_last: bool = True,
  bfloat16: bool = False,
) -> float:
  """Median milliseconds of one training step of the twin U-Net on a random batch."""
  torch.manual_seed(0)
  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  model = UNet(in_channels, num_classes, depth=depth, features=features)
  model = model.to(device=device, memory_format=memory_format)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.standard_normal((batch, in_channels, size, size), np.float32))
  images = images.to(device=device, memory_format=memory_format)
  labels = torch.from_numpy(rng.integers(0, num_classes, (batch, size, size))).to(device)
  step = make_train_step(model, autocast_dtype=torch.bfloat16 if bfloat16 else None)
  sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
  for _ in range(warmup):
    step(images, labels).item()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    step(images, labels).item()  # .item() waits for the step
    sync()
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))
