"""The fused CE + region VJP equals the plain composition of the term functions."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import losses
from tests import tiers
from tests.losses.helpers import IGNORE, make_inputs


def _plain(term):
  region_fn = getattr(losses, f"region_{term}_loss")

  def fn(logits, labels, where, temperature):
    kwargs = dict(ignore_index=IGNORE, where=where)
    return (
      losses.cross_entropy(logits, labels, **kwargs),
      region_fn(logits, labels, temperature=temperature, **kwargs),
    )

  return fn


def _fused(term):
  def fn(logits, labels, where, temperature):
    return losses.ce_with_region(
      logits, labels, term=term, temperature=temperature, ignore_index=IGNORE, where=where
    )

  return fn


def _value_and_grad(fn, logits, labels, where, temperature, weight=0.3):
  def total(x):
    ce, region = fn(x, labels, where, temperature)
    return ce + weight * region, (ce, region)

  return jax.jit(jax.value_and_grad(total, has_aux=True))(logits)


@pytest.mark.parametrize("term", ["l1", "kl", "db"])
@pytest.mark.parametrize(
  "shape, temperature, use_where",
  [((2, 6, 5), 1.0, False), ((3, 7, 4), 10.0, True), ((2, 3, 4, 5), 4.0, False)],
)
def test_fused_equals_plain(term, shape, temperature, use_where):
  logits, labels = make_inputs("multiclass", shape=shape, seed=11)
  labels = labels.at[0, 0].set(9)  # an out-of-range label takes the unchecked path in both
  where = jnp.asarray(np.random.default_rng(1).random(shape) > 0.3) if use_where else None
  (v1, (ce1, r1)), g1 = _value_and_grad(_fused(term), logits, labels, where, temperature)
  (v2, (ce2, r2)), g2 = _value_and_grad(_plain(term), logits, labels, where, temperature)
  np.testing.assert_allclose([ce1, r1, v1], [ce2, r2, v2], rtol=2e-6, atol=1e-7)
  np.testing.assert_allclose(g1, g2, atol=1e-6 * float(jnp.max(jnp.abs(g2))))


def test_fused_under_bfloat16_and_traced_temperature():
  logits, labels = make_inputs("multiclass", seed=12)
  step = jax.jit(
    jax.grad(lambda x, t: sum(losses.ce_with_region(x, labels, term="kl", temperature=t)))
  )
  grad16 = step(logits.astype(jnp.bfloat16), jnp.float32(5.0))
  grad32 = step(logits, jnp.float32(5.0))
  assert grad16.dtype == jnp.bfloat16
  np.testing.assert_allclose(grad16.astype(jnp.float32), grad32, atol=2e-2)


def test_make_loss_uses_the_fused_path_only_where_it_applies():
  from regionloss_jax.losses import fused

  assert fused.select(("ce", "kl"), [{"mode": "multiclass"}, {}]) is not None
  assert fused.select(("ce", "kl"), [{"mode": "binary"}, {}]) is not None
  assert fused.select(("ce", "kl"), [{"mode": "multilabel"}, {}]) is None
  assert fused.select(("ce", "kl"), [{"label_smoothing": 0.1}, {}]) is None
  assert fused.select(("ce", "dice"), [{"reduction": "none"}, {}]) is None
  assert fused.select(("focal", "kl"), [{}, {}]) is not None
  assert fused.select(("ce", "dice"), [{}, {}]) is not None


@tiers.SLOW
def test_make_loss_without_the_fused_kernel_sums_the_plain_terms():
  logits, labels = make_inputs("multiclass", shape=(2, 9, 7, 5), seed=13)
  options = dict(ignore_index=IGNORE, temperature=4.0, weight=0.2)
  fused_fn = losses.make_loss("ce+kl", **options)
  plain_fn = losses.make_loss("ce+kl", fused_kernel=False, **options)
  (v1, t1), g1 = jax.value_and_grad(lambda x: fused_fn(x, labels), has_aux=True)(logits)
  (v2, t2), g2 = jax.value_and_grad(lambda x: plain_fn(x, labels), has_aux=True)(logits)
  np.testing.assert_allclose([v1, t1["ce"], t1["kl"]], [v2, t2["ce"], t2["kl"]], rtol=2e-6)
  np.testing.assert_allclose(g1, g2, atol=1e-6 * float(jnp.max(jnp.abs(g2))))
  # The plain path really is taken: its gradient writes temporaries of the logits' size.
  shape = (2, 64, 128, 19)
  abstract = (jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:-1], jnp.int32))
  step = jax.jit(jax.grad(lambda x, y: plain_fn(x, y)[0]))
  analysis = step.lower(*abstract).compile().memory_analysis()
  if analysis is None:
    pytest.skip("this backend reports no memory analysis")
  assert analysis.temp_size_in_bytes >= 0.5 * np.prod(shape) * 4


_OVERLAP_OPTIONS = [
  {},
  {"squared": True, "jaccard": True, "smooth_nr": 0.0, "smooth_dr": 0.0},
  {"log": True, "batch": True, "include_background": False},
  {"empty": "zero", "class_weights": (0.5, 1.0, 2.0, 1.5)},
]


def _compound_cases():
  """(name, mode, options) triples covering every compound and the options that reshape it."""
  cases = []
  for mode in ("multiclass", "binary"):
    for first in ("ce", "focal"):
      for second in ("l1", "kl", "db"):
        cases.append((f"{first}+{second}", mode, {"temperature": 4.0}))
      cases.append((f"{first}+generalized_dice", mode, {"weighting": "simple"}))
      cases.append((f"{first}+tversky", mode, {"beta": 0.7, "exponent": 1.5, "batch": True}))
      for options in _OVERLAP_OPTIONS:
        if mode == "binary" and "class_weights" in options:
          options = {**options, "class_weights": (2.0,)}
        cases.append((f"{first}+dice", mode, options))
  cases.append(("focal+dice", "multiclass", {"gamma": 0.5, "alpha": (0.2, 0.3, 0.1, 0.4)}))
  cases.append(("focal+kl", "binary", {"gamma": 1.5, "alpha": 0.25}))
  return cases


def _fused_and_plain(name, mode, options, logits, labels, where):
  results = []
  for fused_kernel in (True, False):
    fn = losses.make_loss(
      name, mode=mode, ignore_index=IGNORE, weight=0.3, fused_kernel=fused_kernel, **options
    )
    step = jax.jit(jax.value_and_grad(lambda x, f=fn: f(x, labels, where=where), has_aux=True))
    results.append(step(logits))
  return results


@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 3, 4, 5)], ids=["2d", "3d"])
@tiers.parametrize(
  "name, mode, options",
  _compound_cases(),
  ids=[f"{n}-{m}-{'-'.join(o) or 'defaults'}" for n, m, o in _compound_cases()],
  fast_every=8,
)
def test_every_fused_compound_equals_plain(name, mode, options, shape):
  logits, labels = make_inputs(mode, shape=shape, seed=14)
  if mode == "multiclass":
    labels = labels.at[0, 0].set(9)  # out of range: the unchecked path in both
  where = jnp.asarray(np.random.default_rng(2).random(shape) > 0.2)
  ((v1, t1), g1), ((v2, t2), g2) = _fused_and_plain(name, mode, options, logits, labels, where)
  np.testing.assert_allclose(
    [v1, *t1.values()], [v2, *t2.values()], rtol=2e-6, atol=1e-7, err_msg=name
  )
  np.testing.assert_allclose(g1, g2, atol=1e-6 * float(jnp.max(jnp.abs(g2))), err_msg=name)


@pytest.mark.parametrize(
  "name, mode",
  [("focal+dice", "multiclass"), ("ce+tversky", "multiclass"), ("ce+dice", "binary")],
)
def test_soft_targets_take_the_fused_path_or_fall_back_with_the_same_values(name, mode):
  # Multiclass soft targets with a Dice-family term fall back to the plain terms; binary
  # ones are fused (every binary term is elementwise in the one channel).
  logits, labels = make_inputs(mode, seed=15)
  # Another seed than the logits': targets equal to the prediction make the gradient 0 and
  # leave only rounding to compare.
  raw = 2.0 * jnp.asarray(np.random.default_rng(16).standard_normal(logits.shape), jnp.float32)
  targets = jax.nn.softmax(raw) if mode == "multiclass" else jax.nn.sigmoid(raw)
  where = labels != IGNORE
  options = {"squared": True} if name.endswith("dice") else {}
  ((v1, _), g1), ((v2, _), g2) = _fused_and_plain(name, mode, options, logits, targets, where)
  np.testing.assert_allclose(v1, v2, rtol=2e-6)
  np.testing.assert_allclose(g1, g2, atol=1e-5 * float(jnp.max(jnp.abs(g2))))


_VIEWS = ("parameter", "bitcast", "get-tuple-element", "tuple")


def _logits_sized_results(step, logits, labels):
  """The instructions of the compiled ``step`` that write an array with as many elements as
  the logits (views and parameters aside)."""
  text = step.lower(logits, labels).compile().as_text()
  entry = text[text.index("\nENTRY") :]
  written = []
  for line in entry.splitlines():
    match = re.match(r"\s*(?:ROOT )?%\S+ = (.*?) ([\w-]+)\(", line)
    if match is None or match.group(2) in _VIEWS:
      continue
    sizes = [
      math.prod(map(int, filter(None, d.split(","))))
      for d in re.findall(r"\[([\d,]*)\]", match.group(1))
    ]
    if max(sizes, default=0) >= logits.size:
      written.append(line.strip()[:120])
  return written


@pytest.mark.parametrize("differentiate", [jax.grad, jax.value_and_grad], ids=["grad", "vg"])
@tiers.parametrize(
  "name, options",
  fast_every=5,
  cases=[
    ("ce+dice", {"mode": "binary"}),
    ("ce+kl", {"mode": "binary", "temperature": 10.0}),
    ("focal+tversky", {"mode": "binary"}),
    ("ce+dice", {}),
    ("ce+dice", {"squared": True, "log": True, "batch": True, "include_background": False}),
    ("ce+tversky", {}),
    ("ce+generalized_dice", {}),
    ("focal+dice", {}),
    ("ce+l1", {"temperature": 10.0}),
    ("ce+kl", {"temperature": 10.0}),
    ("ce+db", {"temperature": 10.0}),
    ("focal+l1", {"temperature": 10.0}),
    ("focal+kl", {"temperature": 10.0}),
    ("focal+db", {"temperature": 10.0}),
  ],
)
def test_fused_compound_writes_nothing_of_the_logits_size_but_the_gradient(
  name, options, differentiate
):
  shape = (2, 64, 128, 1 if options.get("mode") == "binary" else 19)
  logits = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels = jax.ShapeDtypeStruct(shape[:-1], jnp.int32)
  fn = losses.make_loss(name, ignore_index=IGNORE, **options)
  step = jax.jit(differentiate(lambda x, y: fn(x, y)[0]))
  if jax.devices()[0].platform == "cpu":
    # One array of the logits' size is written: the gradient. (XLA may place a temporary in
    # the output's buffer, which the memory analysis below does not count.) The kernel's
    # care for this follows XLA:CPU's fusion decisions; other backends fuse otherwise.
    written = _logits_sized_results(step, logits, labels)
    assert len(written) == 1, written
  analysis = step.lower(logits, labels).compile().memory_analysis()
  if analysis is None:
    pytest.skip("this backend reports no memory analysis")
  # Per-pixel statistics take about 1/C of the logits each (multiclass); one full-size
  # temporary (a softmax, one-hot targets, shifted logits, binary targets) would take all
  # of it.
  assert analysis.temp_size_in_bytes < 0.5 * logits.size * 4
