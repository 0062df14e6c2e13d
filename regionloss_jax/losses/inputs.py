"""Shared input handling for every loss: checks, valid-pixel masks, one-hot targets, probabilities,
and the guarded divisions and powers the terms share.

Conventions (all losses):

- ``logits``: float array ``(B, *spatial, C)``, channel-last, any number of spatial axes.
- ``labels``: integer array. ``multiclass`` and ``binary``: ``(B, *spatial)`` class ids
  (``binary`` has ``C == 1`` and labels in ``{0, 1}``). ``multilabel``: ``(B, *spatial, C)``
  multi-hot in ``{0, 1}``. Or, in every mode, float *soft targets* of the logits' shape
  ``(B, *spatial, C)`` with values in ``[0, 1]`` (multiclass: a distribution over ``C`` per
  pixel; binary and multilabel: the probability of each sigmoid's positive side). One-hot
  soft targets give the integer labels' values and gradients.
- ``ignore_index``: a label value that marks pixels counting nowhere (in ``multilabel`` a
  pixel is ignored when any of its channels holds it); integer labels only. ``where``: an
  optional boolean ``(B, *spatial)`` mask; a pixel is valid when it is not ignored and
  ``where`` is true (with soft targets, ``where`` is how pixels are ignored).
- ``reduction``: ``"mean"`` (a scalar) or ``"none"`` (one value per image, ``(B,)``).

All checks here look at static shapes and dtypes only, so they run at trace time and cost
nothing inside ``jax.jit``. Label *values* cannot be checked that way: see
:func:`validate_labels` for the checked path.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

MODES = ("multiclass", "binary", "multilabel")
REDUCTIONS = ("mean", "none")
# The one small constant of the region proportions and decompositions: it keeps every log
# finite for a class absent from an image (or predicted nowhere) and is far below any
# proportion one pixel can make.
EPS = 1e-10


def check_mode(mode: str) -> None:
  if mode not in MODES:
    raise ValueError(f"Unknown mode {mode!r}; valid modes: {', '.join(MODES)}.")


def check_reduction(reduction: str) -> None:
  if reduction not in REDUCTIONS:
    raise ValueError(f"Unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}.")


def is_soft(labels: jax.Array) -> bool:
  """Whether ``labels`` are float soft targets (a static dtype check, free under jit)."""
  return bool(jnp.issubdtype(labels.dtype, jnp.floating))


def check_logits_labels(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str,
  where: jax.Array | None = None,
  soft_ok: bool = True,
) -> None:
  """Raises ValueError when shapes or dtypes do not fit ``mode`` (see the module docstring).

  With ``soft_ok`` (the default) a floating ``labels`` array of the logits' shape is
  accepted as soft (probability) targets.
  """
  check_mode(mode)
  logits_shape, labels_shape = tuple(logits.shape), tuple(labels.shape)
  if logits.ndim < 3:
    raise ValueError(
      f"logits must be (B, *spatial, C) with at least one spatial axis; got shape {logits_shape}."
    )
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f"logits must be floating point; got dtype {logits.dtype}.")
  num_classes = logits_shape[-1]
  if mode == "multiclass" and num_classes < 2:
    raise ValueError(
      f"mode='multiclass' needs at least 2 channels; logits {logits_shape} have "
      f"{num_classes}. Use mode='binary' for a single sigmoid channel."
    )
  if mode == "binary" and num_classes != 1:
    raise ValueError(
      f"mode='binary' needs exactly 1 channel (one sigmoid); logits {logits_shape} have "
      f"{num_classes}. Use mode='multiclass' or 'multilabel' for several channels."
    )

  is_float = jnp.issubdtype(labels.dtype, jnp.floating)
  if is_float and soft_ok and labels_shape == logits_shape:
    pass  # soft targets
  elif is_float:
    expected = logits_shape if mode == "multilabel" else logits_shape[:-1]
    raise ValueError(
      f"labels must be integers (class ids, or multi-hot in multilabel mode); got dtype "
      f"{labels.dtype} with shape {labels_shape}. Expected integer labels of shape "
      f"{expected}"
      + (f" or float soft targets of the logits' shape {logits_shape}." if soft_ok else ".")
    )
  elif not (jnp.issubdtype(labels.dtype, jnp.integer) or labels.dtype == jnp.bool_):
    raise ValueError(f"labels must be integers; got dtype {labels.dtype}.")
  else:
    expected = logits_shape if mode == "multilabel" else logits_shape[:-1]
    if labels_shape != expected:
      raise ValueError(
        f"labels shape {labels_shape} does not fit logits shape {logits_shape} in "
        f"mode={mode!r}: expected labels of shape {expected}."
      )

  if where is not None and tuple(where.shape) != logits_shape[:-1]:
    raise ValueError(
      f"where must have shape (B, *spatial) = {logits_shape[:-1]}; got {tuple(where.shape)}."
    )


def valid_mask(
  labels: jax.Array, *, mode: str, ignore_index: int | None, where: jax.Array | None
) -> jax.Array:
  """Float32 ``(B, *spatial)``: 1 where a pixel counts, 0 where it is ignored.

  ``ignore_index`` applies to integer labels only; soft targets are masked by ``where``.
  """
  soft = is_soft(labels)
  spatial_shape = labels.shape[:-1] if (mode == "multilabel" or soft) else labels.shape
  valid = jnp.ones(spatial_shape, dtype=bool)
  if ignore_index is not None and not soft:
    is_ignored = labels == ignore_index
    if mode == "multilabel":
      is_ignored = jnp.any(is_ignored, axis=-1)
    valid = ~is_ignored
  if where is not None:
    valid = valid & where.astype(bool)
  return valid.astype(jnp.float32)


def one_hot_targets(
  labels: jax.Array, num_classes: int, *, mode: str, valid: jax.Array
) -> jax.Array:
  """Float32 targets ``(B, *spatial, C)``, zero on invalid pixels.

  Fast path, unchecked: a multiclass label outside ``[0, C)`` gets an all-zero target row
  (it belongs to no class but still counts as a valid pixel); in binary and multilabel mode
  any value other than 1 is treated as 0. Use :func:`validate_labels` to reject such labels.
  Soft targets pass through as float32.
  """
  if is_soft(labels):
    targets = labels.astype(jnp.float32)
  elif mode == "multiclass":
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  elif mode == "binary":
    targets = (labels == 1).astype(jnp.float32)[..., None]
  else:
    targets = (labels == 1).astype(jnp.float32)
  return targets * valid[..., None]


def probabilities(
  logits: jax.Array, *, mode: str, temperature: float | jax.Array = 1.0
) -> jax.Array:
  """``softmax(T x)`` over channels (multiclass) or ``sigmoid(T x)`` (binary, multilabel)."""
  x = logits.astype(jnp.float32) * temperature
  if mode == "multiclass":
    return jax.nn.softmax(x, axis=-1)
  return jax.nn.sigmoid(x)


def spatial_axes(x: jax.Array) -> tuple[int, ...]:
  """The spatial axes of a ``(B, *spatial, C)`` array."""
  return tuple(range(1, x.ndim - 1))


def safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
  """``numerator / denominator`` where ``denominator > 0``, else 0 (with a zero gradient).

  Every normaliser here is a count or a sum of non-negative weights, so 0 means "nothing
  to average" (no valid pixel), and the loss of nothing is 0 rather than NaN.
  """
  positive = denominator > 0
  return jnp.where(positive, numerator / jnp.where(positive, denominator, 1.0), 0.0)


def safe_power(base: jax.Array, exponent: float) -> jax.Array:
  """``base ** exponent`` for ``base >= 0`` whose gradient is finite at ``base == 0``.

  Focal terms raise ``1 - p`` to ``gamma``; at ``p = 1`` the plain power's gradient is
  ``0 * inf`` for ``gamma < 1``, which would poison the whole gradient with NaN.
  """
  positive = base > 0
  powered = jnp.where(positive, base, 1.0) ** exponent
  return jnp.where(positive, powered, 0.0 if exponent > 0 else 1.0)


def reduce_per_image(per_image: jax.Array, reduction: str) -> jax.Array:
  """``(B,)`` per-image values to the scalar mean (``"mean"``) or unchanged (``"none"``)."""
  check_reduction(reduction)
  return jnp.mean(per_image) if reduction == "mean" else per_image


class Prepared(NamedTuple):
  """What every region and overlap loss starts from (see :func:`prepare`)."""

  probs: jax.Array  # (B, *spatial, C) float32 softmax / sigmoid, zero on invalid pixels
  targets: jax.Array  # (B, *spatial, C) float32 one-hot or soft, zero on invalid pixels
  valid: jax.Array  # (B, *spatial) float32, 1 where a pixel counts
  axes: tuple[int, ...]  # the spatial axes
  count: jax.Array  # (B, 1) float32, valid pixels per image
  soft: bool  # targets came as float soft targets


def prepare(
  logits: jax.Array,
  labels: jax.Array,
  *,
  mode: str,
  ignore_index: int | None,
  where: jax.Array | None,
  temperature: float | jax.Array = 1.0,
) -> Prepared:
  """Checks the inputs and builds probabilities, targets, valid mask and pixel counts.

  The shared set-up of the Dice family, the region proportions and the decompositions.

  Args:
    logits: ``(B, *spatial, C)``.
    labels: integer labels or float soft targets (module docstring).
    mode, ignore_index, where: as in the losses.
    temperature: ``T``; the probabilities are ``softmax(T x)`` or ``sigmoid(T x)``.

  Returns:
    A :class:`Prepared`.
  """
  check_logits_labels(logits, labels, mode=mode, where=where)
  valid = valid_mask(labels, mode=mode, ignore_index=ignore_index, where=where)
  probs = probabilities(logits, mode=mode, temperature=temperature) * valid[..., None]
  targets = one_hot_targets(labels, logits.shape[-1], mode=mode, valid=valid)
  axes = spatial_axes(probs)
  count = jnp.sum(valid.reshape(valid.shape[0], -1), axis=1)[:, None]
  return Prepared(probs, targets, valid, axes, count, is_soft(labels))


def validate_labels(
  labels: jax.Array, *, num_classes: int, mode: str = "multiclass", ignore_index: int | None = None
) -> jax.Array:
  """Checks label values: the checked path in front of the unchecked losses.

  The losses never inspect label values (that would cost a device-to-host sync or a
  ``checkify`` transform on every step). Call this once on the data, or inside a function
  wrapped with ``jax.experimental.checkify.checkify`` to check under ``jax.jit``.

  Soft targets (float, the logits' shape) are checked to be finite and in ``[0, 1]``.

  Args:
    labels: integer labels, ``(B, *spatial)`` (``(B, *spatial, C)`` in multilabel mode), or
      float soft targets.
    num_classes: ``C``. In binary and multilabel mode valid values are ``{0, 1}``.
    mode: one of ``multiclass``, ``binary``, ``multilabel``.
    ignore_index: a value that is allowed besides the classes.

  Returns:
    ``labels`` unchanged.

  Raises:
    ValueError: (concrete labels) listing the offending values. Traced labels raise through
      ``checkify`` instead.
  """
  check_mode(mode)
  if is_soft(labels):
    return _validate_soft_targets(labels)
  upper = num_classes if mode == "multiclass" else 2
  if isinstance(labels, jax.core.Tracer):
    in_range = (labels >= 0) & (labels < upper)
    if ignore_index is not None:
      in_range = in_range | (labels == ignore_index)
    checkify.check(
      jnp.all(in_range),
      f"labels outside [0, {upper}) (ignore_index={ignore_index}) found; min {{lo}}, max {{hi}}",
      lo=jnp.min(labels),
      hi=jnp.max(labels),
    )
    return labels
  values = np.unique(np.asarray(labels))
  allowed = set(range(upper)) | ({ignore_index} if ignore_index is not None else set())
  bad = [int(v) for v in values if int(v) not in allowed]
  if bad:
    shown = bad[:20]
    raise ValueError(
      f"labels hold values {shown}{' ...' if len(bad) > 20 else ''} outside the valid "
      f"range [0, {upper}) for mode={mode!r} (ignore_index={ignore_index})."
    )
  return labels


def _validate_soft_targets(targets: jax.Array) -> jax.Array:
  """Soft targets must be finite and in ``[0, 1]``: checkify when traced, else ValueError."""
  in_range = jnp.isfinite(targets) & (targets >= 0) & (targets <= 1)
  if isinstance(targets, jax.core.Tracer):
    checkify.check(
      jnp.all(in_range),
      "soft targets must be finite and in [0, 1]; found min {lo}, max {hi}",
      lo=jnp.min(targets),
      hi=jnp.max(targets),
    )
    return targets
  values = np.asarray(targets)
  bad = ~np.asarray(in_range)
  if bad.any():
    shown = np.unique(values[bad])[:5].tolist()
    raise ValueError(
      f"soft targets must be finite and in [0, 1]; {int(bad.sum())} values "
      f"are not, e.g. {shown} (targets shape {values.shape})."
    )
  return targets
