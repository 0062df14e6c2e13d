"""``make_loss``: losses by name and options, for configs and the training program.

A name is a single loss (``ce``, ``focal``, ``dice``, ``tversky``, ``generalized_dice``) or a
compound ``a+b`` with ``a`` in ``ce``/``focal`` and ``b`` in the Dice family or the region
terms ``l1``/``kl``/``db``, meaning ``a + weight * b``. Options are keyword arguments in the
vocabulary of the reference definitions; each goes to the term(s) that take it.
"""

from __future__ import annotations

import collections.abc
import typing
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from regionloss_jax.losses import fused, inputs, pallas_gpu
from regionloss_jax.losses.cross_entropy import cross_entropy
from regionloss_jax.losses.dice import (
  EMPTY_POLICIES,
  WEIGHTINGS,
  dice_loss,
  generalized_dice_loss,
  tversky_loss,
)
from regionloss_jax.losses.focal import focal_loss
from regionloss_jax.losses.region import region_db_loss, region_kl_loss, region_l1_loss

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


class _Term(NamedTuple):
  fn: Callable[..., jax.Array]
  options: tuple[str, ...]


_OVERLAP = ("batch", "include_background", "smooth_nr", "smooth_dr")
_TERMS = {
  "ce": _Term(cross_entropy, ("class_weights", "label_smoothing")),
  "focal": _Term(focal_loss, ("gamma", "alpha")),
  "dice": _Term(dice_loss, _OVERLAP + ("squared", "jaccard", "log", "empty", "class_weights")),
  "tversky": _Term(
    tversky_loss, _OVERLAP + ("alpha", "beta", "exponent", "empty", "class_weights")
  ),
  "generalized_dice": _Term(generalized_dice_loss, _OVERLAP + ("weighting",)),
  "l1": _Term(region_l1_loss, ("temperature",)),
  "kl": _Term(region_kl_loss, ("temperature",)),
  "db": _Term(region_db_loss, ("temperature",)),
}
_COMMON_OPTIONS = ("mode", "ignore_index", "reduction")
SINGLE_NAMES = ("ce", "focal", "dice", "tversky", "generalized_dice")
FIRST_TERMS = ("ce", "focal")
SECOND_TERMS = ("dice", "tversky", "generalized_dice", "l1", "kl", "db")


def loss_names() -> list[str]:
  """Every name :func:`make_loss` accepts."""
  return list(SINGLE_NAMES) + [f"{a}+{b}" for a in FIRST_TERMS for b in SECOND_TERMS]


def _parse_name(name: str) -> tuple[str, ...]:
  parts = tuple(name.split("+"))
  valid = (len(parts) == 1 and parts[0] in SINGLE_NAMES) or (
    len(parts) == 2 and parts[0] in FIRST_TERMS and parts[1] in SECOND_TERMS
  )
  if not valid:
    raise ValueError(f"Unknown loss name {name!r}; valid names: {', '.join(loss_names())}.")
  return parts


def valid_options(name: str) -> list[str]:
  """The options :func:`make_loss` accepts for ``name``."""
  parts = _parse_name(name)
  options = list(_COMMON_OPTIONS) + (["weight"] if len(parts) == 2 else [])
  for part in parts:
    options += [o for o in _TERMS[part].options if o not in options]
  return options


def _config_type(hint) -> type:
  """The one Python type a config field holds for an option annotated ``hint``.

  Sequences and arrays (per-class values) are tuples, a tuple of one value standing for a
  scalar where the loss takes either; otherwise the option's scalar type.
  """
  args = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
  if any(
    a in (tuple, list) or typing.get_origin(a) in (tuple, list, collections.abc.Sequence)
    for a in args
  ):
    return tuple
  for kind in (bool, int, float, str):
    if kind in args:
      return kind
  return tuple  # array-valued only, e.g. class weights


def loss_option_types() -> dict[str, type]:
  """Each term option of :func:`make_loss` (all but ``mode``, ``ignore_index``, ``reduction``
  and ``weight``) and the one type a config holds it as, read from the loss functions'
  signatures.

  An option several terms take gets the widest of their types (``tuple`` over a scalar):
  ``alpha`` is a tuple since multiclass focal takes one value per class; the losses accept a
  one-element tuple where they take a scalar.
  """
  types = {}
  for term in _TERMS.values():
    hints = typing.get_type_hints(term.fn)
    for option in term.options:
      kind = _config_type(hints[option])
      types[option] = tuple if tuple in (kind, types.get(option)) else kind
  return types


def _term_key(part: str, options: dict) -> str:
  """The name a term's value is logged under."""
  if part == "dice":
    return ("log" if options.get("log") else "") + ("jaccard" if options.get("jaccard") else "dice")
  return part


def _check_values(options: dict) -> None:
  inputs.check_mode(options.get("mode", "multiclass"))
  for option, choices in (("empty", EMPTY_POLICIES), ("weighting", WEIGHTINGS)):
    if option in options and options[option] not in choices:
      raise ValueError(
        f"Unknown {option} {options[option]!r}; valid: {', '.join(map(repr, choices))}."
      )
  inputs.check_reduction(options.get("reduction", "mean"))
  ignore_index = options.get("ignore_index")
  if ignore_index is not None and not isinstance(ignore_index, int):
    raise ValueError(f"ignore_index must be an int or None; got {ignore_index!r}.")


def make_loss(
  name: str, *, fused_kernel: bool = True, pallas_kernel: bool = False, **options
) -> LossFn:
  """Builds a segmentation loss from its name and options.

  Args:
    name: one of :func:`loss_names`, e.g. ``"ce"``, ``"dice"``, ``"ce+kl"``.
    **options: ``mode`` (``multiclass`` | ``binary`` | ``multilabel``), ``ignore_index``,
      ``reduction`` (``"mean"``, or ``"none"`` for one value per image; Dice-family terms
      with ``batch=True`` have none and raise),
      ``weight`` (compounds: the second term's factor; a Python float or a traced scalar),
      and the options of the terms (see :func:`valid_options`). In a compound, ``mode``,
      ``ignore_index`` and ``reduction`` go to both terms; ``class_weights`` goes to both
      when both take it.
    fused_kernel: compounds use the fused custom VJP of :mod:`regionloss_jax.losses.fused`
      where it applies (every compound in multiclass and binary mode with
      ``reduction="mean"`` and no label smoothing; see there for the soft targets it
      leaves to the plain path); ``False`` sums the plain term functions instead (the
      same values to float rounding; for comparing against).
    pallas_kernel: ``ce+l1``, ``ce+kl`` and ``ce+db`` (multiclass, integer labels) run the
      Pallas kernels of :mod:`regionloss_jax.losses.pallas_gpu` where they are compiled for
      an NVIDIA GPU and the image size fits their tiles; elsewhere the path
      ``fused_kernel`` chooses. Off by default until measured on a GPU (benchmarks/RESULTS.md).

  Returns:
    ``fn(logits, labels, *, where=None, weight=None) -> (loss, terms)``: ``loss`` a float32
    scalar, ``terms`` a dict of the named float32 scalar terms (e.g. ``{"ce": .., "kl": ..}``);
    with ``reduction="none"`` the loss and each term are ``(B,)``, one value per image.
    ``labels`` are integer labels or float soft targets of the logits' shape (see
    :mod:`regionloss_jax.losses.inputs`).
    ``weight`` given at call time overrides the configured one, so a schedule evaluated at
    the step (a traced array) never recompiles.

  Raises:
    ValueError: an unknown name, option or option value, listing the valid ones.

  References:
    - B. Liu, J. Dolz, A. Galdran, R. Kobbi, I. Ben Ayed, "Do we really need Dice? The hidden
      region-size biases of segmentation losses", Medical Image Analysis 2024,
      arXiv:2104.08717.

  Examples:
    >>> import jax.numpy as jnp
    >>> from regionloss_jax import losses
    >>> logits = jnp.array([[[[2.0, -1.0], [0.5, 0.3]], [[-1.0, 1.5], [0.0, 2.0]]]])
    >>> labels = jnp.array([[[0, 1], [1, 1]]])  # (B, H, W) = (1, 2, 2), C = 2
    >>> loss, terms = losses.make_loss("ce+kl", weight=0.5, temperature=10.0)(logits, labels)
    >>> print(f"{loss:.4f}", sorted(terms))
    0.3145 ['ce', 'kl']
    >>> two = jnp.concatenate([logits, -logits]), jnp.concatenate([labels, 1 - labels])
    >>> per_image, terms = losses.make_loss("ce+dice", reduction="none")(*two)
    >>> print(per_image.shape, terms["dice"].shape)
    (2,) (2,)
  """
  parts = _parse_name(name)
  allowed = valid_options(name)
  unknown = sorted(set(options) - set(allowed))
  if unknown:
    raise ValueError(
      f"Unknown option(s) {unknown} for loss {name!r}; valid options: {', '.join(allowed)}."
    )
  ambiguous = [
    o
    for o in options
    if len(parts) == 2
    and o not in _COMMON_OPTIONS
    and o != "class_weights"
    and all(o in _TERMS[p].options for p in parts)
  ]
  if ambiguous:
    raise ValueError(
      f"Option(s) {ambiguous} are taken by both {parts[0]!r} and {parts[1]!r} "
      f"with different meanings in loss {name!r}; build the terms separately."
    )
  _check_values(options)
  default_weight = options.pop("weight", 1.0)
  common = {k: v for k, v in options.items() if k in _COMMON_OPTIONS}
  term_options = [
    {**common, **{k: v for k, v in options.items() if k in _TERMS[p].options}} for p in parts
  ]
  keys = [_term_key(p, o) for p, o in zip(parts, term_options, strict=True)]

  if len(parts) == 1:
    term = _TERMS[parts[0]]

    def single_loss(logits, labels, *, where=None, weight=None):
      del weight  # single losses have no second term to weigh
      value = term.fn(logits, labels, where=where, **term_options[0])
      return value, {keys[0]: value}

    return single_loss

  first, second = (_TERMS[p] for p in parts)

  def plain_terms(logits, labels, *, where=None):
    return (
      first.fn(logits, labels, where=where, **term_options[0]),
      second.fn(logits, labels, where=where, **term_options[1]),
    )

  fused_fn = fused.select(parts, term_options, fallback=plain_terms) if fused_kernel else None
  if pallas_kernel:
    fused_fn = pallas_gpu.select(parts, term_options, fallback=fused_fn or plain_terms)

  def compound_loss(logits, labels, *, where=None, weight=None):
    weight = default_weight if weight is None else weight
    terms_fn = plain_terms if fused_fn is None else fused_fn
    first_value, second_value = terms_fn(logits, labels, where=where)
    loss = first_value + jnp.asarray(weight, jnp.float32) * second_value
    return loss, {keys[0]: first_value, keys[1]: second_value}

  return compound_loss
