"""The fused CE + region VJP equals the plain composition of the term functions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import losses
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
  assert fused.select(("ce", "kl"), [{"mode": "binary"}, {}]) is None
  assert fused.select(("ce", "kl"), [{"label_smoothing": 0.1}, {}]) is None
  assert fused.select(("focal", "kl"), [{}, {}]) is None
  assert fused.select(("ce", "dice"), [{}, {}]) is None


@pytest.mark.parametrize("term", ["l1", "kl", "db"])
def test_fused_step_writes_nothing_of_the_logits_size_but_the_gradient(term):
  shape = (2, 64, 128, 19)
  logits = jax.ShapeDtypeStruct(shape, jnp.float32)
  labels = jax.ShapeDtypeStruct(shape[:-1], jnp.int32)
  fn = losses.make_loss(f"ce+{term}", ignore_index=IGNORE, temperature=10.0)
  step = jax.jit(jax.grad(lambda x, y: fn(x, y)[0]))
  analysis = step.lower(logits, labels).compile().memory_analysis()
  if analysis is None:
    pytest.skip("this backend reports no memory analysis")
  # Per-pixel statistics take about 1/C of the logits each; one full-size temporary
  # (a softmax, one-hot targets, shifted logits) would take all of it.
  assert analysis.temp_size_in_bytes < 0.5 * logits.size * 4


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
