"""A U-Net in Flax NNX that runs in 2-D or 3-D from the same code.

Arrays are channel-last: the model maps images ``(B, *spatial, C_in)`` to float32 logits
``(B, *spatial, num_classes)``, where ``len(spatial) == spatial_dims``.

Layout, for ``depth = D`` and widths ``f_i = min(features * 2**i, max_features)``::

        encoder stage 0      ConvBlock(C_in -> f_0)                    at full resolution
        encoder stage i      max-pool p_i, ConvBlock(f_{i-1} -> f_i)   i = 1..D (D = bottleneck)
        decoder level i      upsample p_{i+1}: f_{i+1} -> f_i,         i = D-1..0
                             concat skip_i, ConvBlock(2 f_i -> f_i)
        head                 1x1 conv f_0 -> num_classes

``p_i`` is level ``i``'s pooling: a factor of 2 or 1 per spatial axis, 2 on every axis by
default. nnU-Net pools an anisotropic volume's coarse axis only once the other axes have
caught up with its spacing; ``pooling`` lets a plan do the same.

With deep supervision, decoder levels ``0..D-2`` each get a 1x1 head (nnU-Net drops the
lowest-resolution decoder output from the loss); in training mode the model then returns a
list of logits, full resolution first, to be combined by
:func:`regionloss_jax.losses.deep_supervision_loss`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from regionloss_jax.losses.deep_supervision import deep_supervision_weights

Array = jax.Array
Dtype = Any

NORMS = ("instance", "group", "batch")
UPSAMPLINGS = ("transpose", "resize")
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
  # nnU-Net's default slope.
  "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.01),
  "relu": jax.nn.relu,
  "gelu": jax.nn.gelu,
  "silu": jax.nn.silu,
}


def _check_spatial_dims(spatial_dims: int) -> None:
  if spatial_dims not in (2, 3):
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")


def make_norm(
  kind: str,
  num_features: int,
  *,
  num_groups: int = 8,
  dtype: Dtype | None = None,
  param_dtype: Dtype = jnp.float32,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Builds a normalisation layer over the channel axis.

  Args:
      kind: ``"instance"`` (GroupNorm with one channel per group: statistics per image and
          channel over the spatial axes), ``"group"`` (GroupNorm with ``num_groups`` groups) or
          ``"batch"`` (BatchNorm; switch modes with ``model.train()`` / ``model.eval()``).
      num_features: number of channels C.
      num_groups: groups for ``kind="group"``; must divide ``num_features``.
      dtype: computation dtype.
      param_dtype: dtype of the scale and bias.
      rngs: random streams (norms take them for API uniformity).

  Returns:
      A module mapping ``(B, *spatial, C) -> (B, *spatial, C)``.
  """
  # 1e-5 is the usual epsilon for instance/batch norm in segmentation (PyTorch's default).
  common = dict(epsilon=1e-5, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if kind == "instance":
    return nnx.GroupNorm(num_features, num_groups=num_features, **common)
  if kind == "group":
    if num_features % num_groups:
      raise ValueError(
        f"norm='group' needs num_groups={num_groups} to divide every stage width; "
        f"got a width of {num_features}."
      )
    return nnx.GroupNorm(num_features, num_groups=num_groups, **common)
  if kind == "batch":
    return nnx.BatchNorm(num_features, momentum=0.9, **common)
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}.")


class ConvBlock(nnx.Module):
  """Two 3x3(x3) convolutions, each followed by a norm and an activation.

  ``(B, *spatial, in_features) -> (B, *spatial, out_features)``. Convolutions have no bias:
  the norm that follows subtracts the mean, which would cancel it. Dropout, when
  ``dropout_rate > 0``, sits between the two convolutions.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    spatial_dims: int = 2,
    norm: str = "instance",
    num_groups: int = 8,
    activation: str = "leaky_relu",
    dropout_rate: float = 0.0,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    _check_spatial_dims(spatial_dims)
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}.")
    kernel = (3,) * spatial_dims
    conv = dict(padding="SAME", use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm_opts = dict(num_groups=num_groups, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = nnx.Conv(in_features, out_features, kernel, **conv)
    self.norm1 = make_norm(norm, out_features, **norm_opts)
    self.conv2 = nnx.Conv(out_features, out_features, kernel, **conv)
    self.norm2 = make_norm(norm, out_features, **norm_opts)
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None
    self.activation = activation

  def __call__(self, x: Array) -> Array:
    act = ACTIVATIONS[self.activation]
    x = act(self.norm1(self.conv1(x)))
    if self.dropout is not None:
      x = self.dropout(x)
    return act(self.norm2(self.conv2(x)))


class Upsample(nnx.Module):
  """Multiplies each spatial size by its ``factors`` entry (2 or 1; default 2 on every axis)
  and maps ``in_features -> out_features`` channels.

  ``mode="transpose"``: a transposed convolution whose kernel and stride are ``factors``
  (2x2(x2), stride 2, by default; the parameters of an ``nnx.ConvTranspose``, computed by
  :func:`transposed_conv2`).
  ``mode="resize"``: (bi/tri)linear resize by ``factors`` then a 3x3(x3) convolution
  (resize-convolution, which avoids the checkerboard artefacts transposed convolutions can
  produce).
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    spatial_dims: int = 2,
    mode: str = "transpose",
    factors: tuple[int, ...] | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    _check_spatial_dims(spatial_dims)
    factors = tuple(factors or (2,) * spatial_dims)
    opts = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if mode == "transpose":
      self.conv = nnx.ConvTranspose(
        in_features, out_features, factors, factors, padding="SAME", **opts
      )
    elif mode == "resize":
      self.conv = nnx.Conv(in_features, out_features, (3,) * spatial_dims, padding="SAME", **opts)
    else:
      raise ValueError(f"upsample must be one of {UPSAMPLINGS}, got {mode!r}.")
    self.mode = mode
    self.factors = factors

  def __call__(self, x: Array) -> Array:
    if self.mode == "resize":
      batch, *spatial, channels = x.shape
      target = (batch, *(f * s for f, s in zip(self.factors, spatial, strict=True)), channels)
      x = jax.image.resize(x, target, method="linear")
      return self.conv(x)
    # The parameters stay nnx.ConvTranspose's (same names and shapes in checkpoints).
    x, kernel, bias = self.conv.promote_dtype(
      (x, self.conv.kernel[...], self.conv.bias[...]), dtype=self.conv.dtype
    )
    return transposed_conv2(x, kernel) + bias


def transposed_conv2(x: Array, kernel: Array) -> Array:
  """The transposed convolution of ``nnx.ConvTranspose`` whose stride equals its kernel size
  (2x2(x2), stride 2, or a factor of 1 along some axes), as one product.

  ``x: (B, *spatial, C_in)``, ``kernel: k + (C_in, C_out)`` with ``k`` of 2s and 1s ->
  ``(B, *(k * spatial), C_out)``. When the stride equals the kernel size the output blocks do
  not overlap: input pixel ``i`` alone writes the block at ``k i``, ``y[k i + a] = x[i] @
  kernel[k - 1 - a]`` per spatial axis (lax's transposed convolution flips the kernel). A
  matrix product and a depth-to-space reshape give the convolution form's values (to
  rounding); its kernel gradient XLA:CPU runs on a generic dilated-convolution path about ten
  times slower than a product.
  """
  batch, *spatial, in_features = x.shape
  n = len(spatial)
  factors = kernel.shape[:n]
  out_features = kernel.shape[-1]
  flipped = kernel[(slice(None, None, -1),) * n]
  # (C_in, k_1, .., k_n, C_out) -> (C_in, prod(k) C_out): each pixel's whole output block.
  weights = jnp.moveaxis(flipped, n, 0).reshape(in_features, -1)
  blocks = (x.reshape(-1, in_features) @ weights).reshape(batch, *spatial, *factors, out_features)
  # (B, s_1.., s_n, a_1.., a_n, C) -> (B, s_1, a_1, .., s_n, a_n, C): interleave the offsets.
  order = [0] + [axis for i in range(n) for axis in (1 + i, 1 + n + i)] + [1 + 2 * n]
  upsampled = (k * s for k, s in zip(factors, spatial, strict=True))
  return blocks.transpose(order).reshape(batch, *upsampled, out_features)


def max_pool2(x: Array, factors: tuple[int, ...] | None = None) -> Array:
  """Max pooling of ``(B, *spatial, C)`` by ``factors`` per spatial axis (2 or 1; default 2
  on every axis); each size must be divisible by its factor."""
  batch, *spatial, channels = x.shape
  factors = tuple(factors or (2,) * len(spatial))
  # Split each spatial axis s into (s // f, f) and take the max over the window axes.
  split = [batch]
  for s, f in zip(spatial, factors, strict=True):
    split += [s // f, f]
  window_axes = tuple(2 + 2 * i for i in range(len(spatial)))
  return x.reshape(*split, channels).max(axis=window_axes)


def check_pooling(pooling, *, depth: int, spatial_dims: int) -> tuple[tuple[int, ...], ...]:
  """``pooling`` as ``depth`` tuples of ``spatial_dims`` factors in {1, 2}; ``None``: 2 on
  every axis at every level. Raises ``ValueError`` naming what does not fit."""
  if pooling is None:
    return ((2,) * spatial_dims,) * depth
  pooling = tuple(tuple(int(f) for f in level) for level in pooling)
  if len(pooling) != depth or any(len(level) != spatial_dims for level in pooling):
    raise ValueError(
      f"pooling needs {depth} levels (one per down-sampling step) of {spatial_dims} factors, "
      f"got {pooling}."
    )
  if any(f not in (1, 2) for level in pooling for f in level):
    raise ValueError(f"pooling factors must be 1 or 2, got {pooling}.")
  return pooling


def pooling_divisor(pooling) -> tuple[int, ...]:
  """What each spatial size must be divisible by: the product of its axis's factors."""
  return tuple(int(np.prod(axis)) for axis in zip(*pooling, strict=True))


def stage_widths(depth: int, features: int, max_features: int | None = None) -> list[int]:
  """Channel widths of encoder stages ``0..depth``: ``min(features * 2**i, max_features)``."""
  widths = [features * 2**i for i in range(depth + 1)]
  if max_features is not None:
    widths = [min(w, max_features) for w in widths]
  return widths


class UNet(nnx.Module):
  """U-Net for 2-D (``spatial_dims=2``) or 3-D (``spatial_dims=3``) segmentation.

  Maps ``x: (B, *spatial, in_channels)`` to float32 logits ``(B, *spatial, num_classes)``.
  Every spatial size must be divisible by ``2**depth`` (with ``pooling``: by the product of
  its axis's factors).

  Modes follow NNX: ``model.train()`` (the default after construction) and ``model.eval()``
  switch dropout, BatchNorm statistics and, with ``deep_supervision=True``, the output:
  training mode returns ``[logits_full, logits_half, ...]`` (``depth - 1`` heads, each with
  half the resolution of the previous one, weighted by :attr:`deep_supervision_weights`);
  eval mode returns the full-resolution logits only.

  Args:
      in_channels: input channels C_in.
      num_classes: output channels (one logit per class).
      spatial_dims: 2 or 3.
      depth: number of down-sampling steps (the bottleneck has ``spatial / 2**depth``).
      pooling: per down-sampling step, a factor (2 or 1) per spatial axis; default 2
          everywhere. An axis with factor 1 keeps its size at that level (nnU-Net's
          anisotropic pooling).
      features: width of the first stage; doubled at each level.
      max_features: optional cap on the width (nnU-Net uses 320 in 3-D, 512 in 2-D).
      norm: ``"instance"``, ``"group"`` or ``"batch"``.
      num_groups: groups for ``norm="group"``.
      activation: ``"leaky_relu"`` (slope 0.01), ``"relu"``, ``"gelu"`` or ``"silu"``.
      dropout_rate: dropout between the two convolutions of every block (0 disables it).
      upsample: ``"transpose"`` (2x transposed conv) or ``"resize"`` (linear resize + 3x3 conv).
      deep_supervision: add 1x1 heads at decoder resolutions (see above).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); logits are always returned in float32.
      param_dtype: parameter dtype (float32 by default, also under bfloat16 compute).
      rngs: random streams; ``params`` for initialisation, ``dropout`` when dropout is used.

  References:
    O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical
    Image Segmentation", MICCAI 2015, arXiv:1505.04597; F. Isensee et al., "nnU-Net: a
    self-configuring method for deep learning-based biomedical image segmentation", Nature
    Methods 18, 2021, doi:10.1038/s41592-020-01008-z (instance norm, leaky ReLU, deep
    supervision).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> model = UNet(in_channels=1, num_classes=3, depth=2, features=4, rngs=nnx.Rngs(0))
    >>> model(jnp.zeros((2, 16, 12, 1))).shape
    (2, 16, 12, 3)
    >>> model = UNet(in_channels=1, num_classes=3, depth=3, features=4,
    ...              deep_supervision=True, rngs=nnx.Rngs(0))
    >>> [logits.shape for logits in model(jnp.zeros((2, 16, 16, 1)))]
    [(2, 16, 16, 3), (2, 8, 8, 3)]
  """

  def __init__(
    self,
    in_channels: int,
    num_classes: int,
    *,
    spatial_dims: int = 2,
    depth: int = 4,
    features: int = 32,
    max_features: int | None = None,
    norm: str = "instance",
    num_groups: int = 8,
    activation: str = "leaky_relu",
    dropout_rate: float = 0.0,
    upsample: str = "transpose",
    deep_supervision: bool = False,
    pooling: tuple[tuple[int, ...], ...] | None = None,
    dtype: Dtype | None = None,
    param_dtype: Dtype = jnp.float32,
    rngs: nnx.Rngs,
  ):
    _check_spatial_dims(spatial_dims)
    for name, value in (
      ("in_channels", in_channels),
      ("num_classes", num_classes),
      ("depth", depth),
      ("features", features),
    ):
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if max_features is not None and max_features < features:
      raise ValueError(f"max_features={max_features} is smaller than features={features}.")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
    if norm not in NORMS:
      raise ValueError(f"norm must be one of {NORMS}, got {norm!r}.")
    if upsample not in UPSAMPLINGS:
      raise ValueError(f"upsample must be one of {UPSAMPLINGS}, got {upsample!r}.")

    self.spatial_dims = spatial_dims
    self.in_channels = in_channels
    self.num_classes = num_classes
    self.depth = depth
    self.pooling = check_pooling(pooling, depth=depth, spatial_dims=spatial_dims)
    self.deep_supervision = deep_supervision
    # Set by nnx's .train() / .eval() along with Dropout's; False = training mode.
    self.deterministic = False

    widths = stage_widths(depth, features, max_features)
    block = dict(
      spatial_dims=spatial_dims,
      norm=norm,
      num_groups=num_groups,
      activation=activation,
      dropout_rate=dropout_rate,
      dtype=dtype,
      param_dtype=param_dtype,
      rngs=rngs,
    )
    conv = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    # encoder_blocks[i] runs at resolution 1/2**i; the last one is the bottleneck.
    self.encoder_blocks = nnx.List(
      [ConvBlock(in_channels, widths[0], **block)]
      + [ConvBlock(widths[i - 1], widths[i], **block) for i in range(1, depth + 1)]
    )
    # decoder_*[i] bring resolution 1/2**(i+1) up to 1/2**i; applied for i = depth-1 .. 0.
    self.upsamplers = nnx.List(
      [
        Upsample(
          widths[i + 1],
          widths[i],
          spatial_dims=spatial_dims,
          mode=upsample,
          factors=self.pooling[i],
          **conv,
        )
        for i in range(depth)
      ]
    )
    self.decoder_blocks = nnx.List(
      [ConvBlock(2 * widths[i], widths[i], **block) for i in range(depth)]
    )
    head_kernel = (1,) * spatial_dims
    num_heads = max(depth - 1, 1) if deep_supervision else 1
    # heads[i] reads decoder level i (resolution 1/2**i); heads[0] is the full-res output.
    self.heads = nnx.List(
      [nnx.Conv(widths[i], num_classes, head_kernel, **conv) for i in range(num_heads)]
    )

  @property
  def num_heads(self) -> int:
    """Number of outputs in training mode (1 without deep supervision)."""
    return len(self.heads)

  @property
  def deep_supervision_weights(self) -> np.ndarray:
    """Loss weight per head, ``2**-i`` normalised to sum to 1 (shape ``(num_heads,)``)."""
    return deep_supervision_weights(self.num_heads)

  def check_input(self, x: Array) -> None:
    """Raises ValueError unless ``x`` is ``(B, *spatial, in_channels)`` with valid sizes."""
    if x.ndim != self.spatial_dims + 2:
      raise ValueError(
        f"UNet(spatial_dims={self.spatial_dims}) expects input of rank "
        f"{self.spatial_dims + 2} (B, *spatial, C), got shape {tuple(x.shape)}."
      )
    if x.shape[-1] != self.in_channels:
      raise ValueError(
        f"UNet expects {self.in_channels} input channels (last axis), got shape {tuple(x.shape)}."
      )
    divisor = pooling_divisor(self.pooling)
    if any(s % d for s, d in zip(x.shape[1:-1], divisor, strict=True)):
      raise ValueError(
        f"UNet(depth={self.depth}) needs spatial sizes divisible by "
        f"{divisor[0] if len(set(divisor)) == 1 else divisor}, got shape {tuple(x.shape)}."
      )

  def __call__(self, x: Array) -> Array | list[Array]:
    """Returns logits ``(B, *spatial, num_classes)`` (a list of them: see the class doc)."""
    self.check_input(x)
    skips = []
    for level, block in enumerate(self.encoder_blocks):
      if level > 0:
        x = max_pool2(x, self.pooling[level - 1])
      x = block(x)
      skips.append(x)

    x = skips.pop()  # bottleneck
    decoder_outputs = [None] * self.depth
    for level in reversed(range(self.depth)):
      x = self.upsamplers[level](x)
      x = jnp.concatenate([x, skips[level].astype(x.dtype)], axis=-1)
      x = self.decoder_blocks[level](x)
      decoder_outputs[level] = x

    if self.deep_supervision and not self.deterministic:
      return [
        head(decoder_outputs[level]).astype(jnp.float32) for level, head in enumerate(self.heads)
      ]
    return self.heads[0](decoder_outputs[0]).astype(jnp.float32)
