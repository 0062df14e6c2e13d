r"""CE plus a region-size term as two Pallas kernels for GPUs: one read of the logits each way.

The compound ``ce + weight * r`` with ``r`` in ``l1``, ``kl``, ``db`` (multiclass, integer
labels) needs, forward, per image the CE sum, the valid-pixel count and the per-class sums of
the tempered softmax and of the one-hot targets; backward, for every pixel
:math:`k_p (s_{pj} - g_{pj}) + v_p s^T_{pj} (r_{bj} - \sum_k r_{bk} s^T_{pk})` with the
``(B, C)`` factors ``r`` of the region term (:mod:`regionloss_jax.losses.fused` derives
both). Each kernel reads a tile of pixels and all their classes once: the forward one writes
only per-tile sums, the backward one only the gradient. That is the least any two-pass
method moves: two reads of the logits and one write of their size, 1.5 times a copy of
them (plus the labels: 4 bytes per pixel per read).

XLA's fusions of the same computation (:mod:`regionloss_jax.losses.fused`) ran at 9.0 times
the copy floor on an H100 (benchmarks/RESULTS.md); this is for the GPU what that module is
for the CPU.
The kernels are written for Pallas' Triton backend and run on GPUs only;
:func:`available` says whether this JAX has it. Elsewhere they run in Pallas' interpreter
(``interpret=True``), which is how their values and gradients are tested on a CPU.

Tiles are ``(block, C')`` with ``C'`` the classes rounded up to a power of two (Triton's
arrays have power-of-two sizes; the extra columns are masked), ``block`` pixels a power of
two that divides each image's pixel count.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from regionloss_jax.losses import fused, inputs

try:
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import triton as plt

  _TRITON = hasattr(plt, "load") and hasattr(plt, "CompilerParams")
except ImportError:  # a JAX without Pallas
  _TRITON = False

# Labels of pixels that count nowhere are replaced by this, so that one integer array tells
# both kernels the label and whether the pixel counts (no separate mask to read).
_NOWHERE = jnp.iinfo(jnp.int32).min
# Elements per tile: 32 per thread with 4 warps, so that the tile's few float32 arrays stay
# in registers (a first choice; benchmarks/losses.py --pallas-configs measures others).
TILE_ELEMENTS = 4096
NUM_WARPS = 4
_MIN_BLOCK = 16


def available() -> bool:
  """Whether this JAX has the Pallas Triton API the kernels are written in."""
  return _TRITON


class _Tiling(NamedTuple):
  num_classes: int
  padded_classes: int  # C' >= C, a power of two
  block: int  # pixels per tile, a power of two dividing the pixel count


def tiling(
  num_pixels: int, num_classes: int, *, tile_elements: int = TILE_ELEMENTS
) -> _Tiling | None:
  """The tile shape for images of ``num_pixels`` pixels and ``num_classes`` classes, or None
  where no power-of-two block of at least 16 pixels divides the pixel count."""
  padded = 1 << max(0, (num_classes - 1).bit_length())
  block = min(max(tile_elements // padded, 1), num_pixels & -num_pixels)
  return _Tiling(num_classes, padded, block) if block >= _MIN_BLOCK else None


def _tile(x_ref, labels_ref, temperature, tiles: _Tiling):
  """One tile's class indices ``(C',)`` and, per pixel and class, ``x - max``, its exp, the
  softmax ``s`` and the tempered one ``s^T`` ``(block, C')``; per pixel, ``valid`` (float)
  and whether the label is a class; ``hit``, the one-hot labels ``(block, C')``."""
  cols = jnp.arange(tiles.padded_classes)
  is_class = cols < tiles.num_classes
  x = plt.load(
    x_ref.at[:, pl.ds(0, tiles.padded_classes)], mask=is_class[None, :], other=-jnp.inf
  ).astype(jnp.float32)
  labels = labels_ref[...]
  valid = (labels != _NOWHERE).astype(jnp.float32)
  in_range = (labels >= 0) & (labels < tiles.num_classes)
  hit = (labels[:, None] == cols[None, :]) & is_class[None, :]
  shifted = x - jnp.max(x, axis=1)[:, None]
  exp = jnp.exp(shifted)
  probs = exp / jnp.sum(exp, axis=1)[:, None]
  exp_t = jnp.where(is_class[None, :], jnp.exp(temperature * shifted), 0.0)
  tempered = exp_t / jnp.sum(exp_t, axis=1)[:, None]
  return cols, shifted, exp, probs, tempered, valid, in_range, hit


def _forward_kernel(x_ref, labels_ref, temperature_ref, sums_ref, *, tiles: _Tiling):
  """Per-tile sums ``(4, C')``: rows Σ v s^T, Σ v g, then [Σ w (-log s_y), Σ v] and zeros."""
  cols, shifted, exp, _, tempered, valid, in_range, hit = _tile(
    x_ref, labels_ref, temperature_ref[0], tiles
  )
  true_shifted = jnp.sum(jnp.where(hit, shifted, 0.0), axis=1)
  nll = jnp.log(jnp.sum(exp, axis=1)) - true_shifted
  ce_sum = jnp.sum(jnp.where(in_range, nll, 0.0) * valid)
  sums_ref[0, :] = jnp.sum(tempered * valid[:, None], axis=0)
  sums_ref[1, :] = jnp.sum(jnp.where(hit, valid[:, None], 0.0), axis=0)
  sums_ref[2, :] = jnp.where(cols == 0, ce_sum, jnp.where(cols == 1, jnp.sum(valid), 0.0))
  sums_ref[3, :] = jnp.zeros_like(cols, jnp.float32)


def _backward_kernel(x_ref, labels_ref, factors_ref, scalars_ref, grad_ref, *, tiles: _Tiling):
  """The gradient of one tile; ``scalars``: ``[k, T]``, ``factors``: the image's ``r``."""
  cols, _, _, probs, tempered, valid, in_range, hit = _tile(
    x_ref, labels_ref, scalars_ref[1], tiles
  )
  r = factors_ref[...]
  weight = scalars_ref[0] * jnp.where(in_range, valid, 0.0)
  first = weight[:, None] * (probs - hit.astype(jnp.float32))
  second = tempered * (r[None, :] - jnp.sum(tempered * r[None, :], axis=1)[:, None])
  grad = first + valid[:, None] * second
  plt.store(
    grad_ref.at[:, pl.ds(0, tiles.padded_classes)],
    grad.astype(grad_ref.dtype),
    mask=(cols < tiles.num_classes)[None, :],
  )


class _Spec(NamedTuple):
  term: str
  tiles: _Tiling
  num_warps: int
  interpret: bool


def _call(kernel, spec: _Spec, arrays, in_blocks, out_shape, out_block):
  """``kernel`` over the (image, tile) grid of ``arrays[0]`` ``(B, pixels, C)`` and
  ``arrays[1]``, the labels ``(B, pixels)``; the other arrays' blocks are ``in_blocks``."""
  batch, num_pixels, num_classes = arrays[0].shape
  pixel_blocks = (
    pl.BlockSpec((None, spec.tiles.block, num_classes), lambda b, i: (b, i, 0)),
    pl.BlockSpec((None, spec.tiles.block), lambda b, i: (b, i)),
  )
  return pl.pallas_call(
    functools.partial(kernel, tiles=spec.tiles),
    out_shape=out_shape,
    grid=(batch, num_pixels // spec.tiles.block),
    in_specs=pixel_blocks + tuple(in_blocks),
    out_specs=out_block,
    interpret=spec.interpret,
    compiler_params=plt.CompilerParams(num_warps=spec.num_warps, num_stages=1),
  )(*arrays)


def _forward(spec, x, labels, temperature):
  batch, num_pixels, num_classes = x.shape
  padded, blocks = spec.tiles.padded_classes, num_pixels // spec.tiles.block
  sums = _call(
    _forward_kernel,
    spec,
    (x, labels, temperature.reshape(1)),
    [pl.BlockSpec((1,), lambda b, i: (0,))],
    jax.ShapeDtypeStruct((batch, blocks, 4, padded), jnp.float32),
    pl.BlockSpec((None, None, 4, padded), lambda b, i: (b, i, 0, 0)),
  )
  sums = jnp.sum(sums, axis=1)  # (B, 4, C')
  soft_counts = sums[:, 0, :num_classes]
  class_counts = sums[:, 1, :num_classes]
  counts = sums[:, 2, 1:2]
  inverse = fused._safe_inverse(jnp.sum(counts))
  first = jnp.sum(sums[:, 2, 0]) * inverse
  second, second_vjp = jax.vjp(
    lambda t: fused._region_penalty("multiclass", spec.term, counts, class_counts, t),
    soft_counts,
  )
  (factors,) = second_vjp(jnp.ones_like(second))
  return (first, second), (x, labels, temperature, inverse, factors * temperature)


def _backward(spec, residuals, cotangents):
  x, labels, temperature, inverse, factors = residuals
  first_bar, second_bar = cotangents
  padded = spec.tiles.padded_classes
  factors = jnp.pad(factors * second_bar, ((0, 0), (0, padded - x.shape[-1])))
  scalars = jnp.stack([first_bar * inverse, temperature]).astype(jnp.float32)
  grad = _call(
    _backward_kernel,
    spec,
    (x, labels, factors, scalars),
    [pl.BlockSpec((None, padded), lambda b, i: (b, 0)), pl.BlockSpec((2,), lambda b, i: (0,))],
    jax.ShapeDtypeStruct(x.shape, x.dtype),
    pl.BlockSpec((None, spec.tiles.block, x.shape[-1]), lambda b, i: (b, i, 0)),
  )
  return grad, None, jnp.zeros_like(temperature)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _ce_region(spec, x, labels, temperature):
  return _forward(spec, x, labels, temperature)[0]


_ce_region.defvjp(_forward, _backward)


def ce_with_region(
  logits: jax.Array,
  labels: jax.Array,
  *,
  term: str = "kl",
  temperature: float | jax.Array = 1.0,
  ignore_index: int | None = None,
  where: jax.Array | None = None,
  tile_elements: int = TILE_ELEMENTS,
  num_warps: int = NUM_WARPS,
  interpret: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Multiclass CE and a region-size term through the Pallas kernels of the module docstring.

  The same values and gradients as :func:`regionloss_jax.losses.ce_with_region` (tested);
  see :func:`tiling` and :func:`available` for what it takes.

  Args:
    logits: ``(B, *spatial, C)``, ``C >= 2``; float32 or bfloat16.
    labels: integer ``(B, *spatial)``.
    term: ``l1``, ``kl`` or ``db``.
    temperature: ``T > 0`` of the region term's softmax (not of CE's).
    ignore_index: label value whose pixels count nowhere.
    where: optional boolean ``(B, *spatial)``; false pixels count nowhere.
    tile_elements: pixels times (padded) classes per tile, a power of two.
    num_warps: Triton warps per tile.
    interpret: run in Pallas' interpreter (any backend, slowly): for tests.

  Returns:
    ``(ce, region)``, float32 scalars.

  Raises:
    ValueError: soft targets, a shape no tile fits (:func:`tiling`), or a JAX without the
      Pallas Triton API.
  """
  if term not in fused.REGION_TERMS:
    raise ValueError(f"Unknown region term {term!r}; valid: {', '.join(fused.REGION_TERMS)}.")
  if not available():
    raise ValueError(f"This JAX ({jax.__version__}) lacks the Pallas Triton API.")
  inputs.check_logits_labels(logits, labels, mode="multiclass", where=where)
  if inputs.is_soft(labels):
    raise ValueError("The Pallas kernels take integer labels, not soft targets.")
  batch, num_classes = logits.shape[0], logits.shape[-1]
  num_pixels = math.prod(logits.shape[1:-1])
  tiles = tiling(num_pixels, num_classes, tile_elements=tile_elements)
  if tiles is None:
    raise ValueError(
      f"No tile of {_MIN_BLOCK} or more pixels (a power of two) divides the {num_pixels} "
      f"pixels of logits {logits.shape}."
    )
  valid = inputs.valid_mask(labels, mode="multiclass", ignore_index=ignore_index, where=where)
  labels = jnp.where(valid > 0, labels.astype(jnp.int32), _NOWHERE).reshape(batch, num_pixels)
  x = logits.reshape(batch, num_pixels, num_classes)
  spec = _Spec(term, tiles, num_warps, bool(interpret))
  return _ce_region(spec, x, labels, jnp.asarray(temperature, jnp.float32))


def select(parts: tuple[str, ...], term_options: list[dict], *, fallback):
  """``fallback``, or a function that takes the kernels where it is compiled for a GPU.

  Args:
    parts: the compound's terms, e.g. ``("ce", "kl")``.
    term_options: each term's options, as :func:`regionloss_jax.make_loss` splits them.
    fallback: ``fn(logits, labels, *, where) -> (first, second)``: the fused or plain path.

  Returns:
    ``fallback`` itself where the kernels never apply (not ``ce`` + ``l1``/``kl``/``db`` in
    multiclass mode with mean reduction, CE class weights or label smoothing, or a JAX without
    the Pallas Triton API); else a function with its signature that takes the kernels when
    compiled for an NVIDIA GPU with integer labels whose images :func:`tiling` fits, and
    ``fallback`` otherwise (other platforms, soft targets, other sizes).
  """
  (first, second), (first_options, second_options) = parts, term_options
  applies = (
    available()
    and first == "ce"
    and second in fused.REGION_TERMS
    and first_options.get("mode", "multiclass") == "multiclass"
    and first_options.get("reduction", "mean") == "mean"
    and first_options.get("class_weights") is None
    and not first_options.get("label_smoothing")
  )
  if not applies:
    return fallback
  kernel_options = dict(
    term=second,
    temperature=second_options.get("temperature", 1.0),
    ignore_index=first_options.get("ignore_index"),
  )

  def fn(logits, labels, *, where=None):
    num_pixels = math.prod(logits.shape[1:-1])
    if inputs.is_soft(labels) or tiling(num_pixels, logits.shape[-1]) is None:
      return fallback(logits, labels, where=where)
    return jax.lax.platform_dependent(
      cuda=lambda: ce_with_region(logits, labels, where=where, **kernel_options),
      default=lambda: fallback(logits, labels, where=where),
    )

  return fn
