"""The Pallas GPU kernels for CE + region terms: the fused path's values and gradients, the
reference values, and where ``make_loss`` takes them. Off a GPU they run interpreted."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import losses
from regionloss_jax.losses import pallas_gpu
from tests import tiers
from tests.losses.helpers import IGNORE
from tests.losses.test_reference import _ARRAYS, ENTRIES

pytestmark = pytest.mark.skipif(
  not pallas_gpu.available(), reason=f"JAX {jax.__version__} lacks the Pallas Triton API"
)
INTERPRET = jax.devices()[0].platform != "gpu"
TERMS = ("l1", "kl", "db")


def _inputs(shape, num_classes, seed, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(2.0 * rng.standard_normal(shape + (num_classes,)), dtype)
  labels = rng.integers(0, num_classes, shape)
  labels[rng.random(shape) < 0.2] = IGNORE
  labels.flat[0] = num_classes + 3  # out of range: counts, but in no class
  where = jnp.asarray(rng.random(shape) > 0.2)
  return logits, jnp.asarray(labels, jnp.int32), where


def _value_and_grad(terms_fn, logits, weight=0.3):
  def total(x):
    first, second = terms_fn(x)
    return first + weight * second, (first, second)

  return jax.jit(jax.value_and_grad(total, has_aux=True))(logits)


def _kernels(labels, where, **options):
  return lambda x: pallas_gpu.ce_with_region(
    x, labels, ignore_index=IGNORE, where=where, interpret=INTERPRET, **options
  )


@pytest.mark.parametrize("term", TERMS)
@tiers.parametrize(
  "shape, num_classes, temperature, use_where, tile_elements",
  fast_every=4,
  cases=[
    ((2, 8, 8), 5, 4.0, True, 128),  # 4 tiles of 16 pixels per image
    ((2, 4, 8, 4), 19, 10.0, False, 4096),  # 3-D, classes padded from 19 to 32
    ((1, 32, 16), 2, 1.0, True, 64),  # 16 tiles of 32 pixels
    ((2, 16, 8), 33, 10.0, False, 4096),  # padded to 64: 2 tiles of 64 pixels per image
  ],
)
def test_kernels_equal_the_fused_path(
  term, shape, num_classes, temperature, use_where, tile_elements
):
  logits, labels, where = _inputs(shape, num_classes, seed=num_classes)
  where = where if use_where else None
  options = dict(term=term, temperature=temperature)
  kernels = _kernels(labels, where, tile_elements=tile_elements, num_warps=2, **options)
  (v1, (ce1, r1)), g1 = _value_and_grad(kernels, logits)
  (v2, (ce2, r2)), g2 = _value_and_grad(
    lambda x: losses.ce_with_region(x, labels, ignore_index=IGNORE, where=where, **options),
    logits,
  )
  # Sums over tiles come in another order than XLA's: float32 rounding apart, within the
  # reference tolerances (1e-5 of the value, 1e-4 of the largest gradient entry). KL sums
  # terms of both signs (labels out of range make tau a sub-distribution), hence atol.
  np.testing.assert_allclose([ce1, r1, v1], [ce2, r2, v2], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g1, g2, atol=1e-5 * float(jnp.max(jnp.abs(g2))))


def test_bfloat16_logits_give_a_bfloat16_gradient_close_to_float32():
  logits, labels, where = _inputs((2, 8, 8), 5, seed=1)
  (_, terms16), grad16 = _value_and_grad(_kernels(labels, where), logits.astype(jnp.bfloat16))
  (_, terms32), grad32 = _value_and_grad(_kernels(labels, where), logits)
  assert grad16.dtype == jnp.bfloat16
  np.testing.assert_allclose(terms16, terms32, rtol=2e-2)
  np.testing.assert_allclose(grad16.astype(jnp.float32), grad32, atol=2e-2 * jnp.max(abs(grad32)))


_REGION_ENTRIES = [
  (case, result)
  for case, result in ENTRIES
  if result["call"]["name"] in ("ce+l1", "ce+kl", "ce+db")
  and case["mode"] == "multiclass"
  and pallas_gpu.tiling(
    math.prod(_ARRAYS[case["case"] + ".logits"].shape[1:-1]),
    _ARRAYS[case["case"] + ".logits"].shape[-1],
  )
  is not None
]


def test_some_reference_cases_fit_the_tiles():
  assert len(_REGION_ENTRIES) >= 12


@tiers.parametrize(
  "entry",
  _REGION_ENTRIES,
  ids=[f"{c['case']}-{r['call']['name']}" for c, r in _REGION_ENTRIES],
  fast_every=4,
)
def test_reference_values_and_gradients(entry):
  case, result = entry
  call = result["call"]
  logits = jnp.asarray(_ARRAYS[case["case"] + ".logits"])
  labels = jnp.asarray(_ARRAYS[case["case"] + ".labels"])
  terms_fn = lambda x: pallas_gpu.ce_with_region(  # noqa: E731
    x,
    labels,
    term=call["name"].split("+")[1],
    temperature=call.get("temperature", 1.0),
    ignore_index=call.get("ignore_index"),
    interpret=INTERPRET,
  )
  (value, _), grad = _value_and_grad(terms_fn, logits, weight=call.get("weight", 1.0))
  assert abs(float(value) - result["value"]) <= 1e-5 * abs(result["value"])
  expected_grad = _ARRAYS[result["grad_key"]]
  assert np.max(np.abs(np.asarray(grad) - expected_grad)) <= 1e-4 * np.max(np.abs(expected_grad))


def test_tiles():
  assert pallas_gpu.tiling(256 * 512, 19) == (19, 32, 128)
  assert pallas_gpu.tiling(256 * 512, 19, tile_elements=8192) == (19, 32, 256)
  assert pallas_gpu.tiling(96**3, 100) == (100, 128, 32)
  assert pallas_gpu.tiling(48, 5) == (5, 8, 16)  # the image is smaller than a tile
  assert pallas_gpu.tiling(6 * 5, 4) is None  # no power of two of 16 or more divides 30


def _custom_calls(fn, *args, platform):
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,)).as_text()
  return re.findall(r"custom_call @([\w$.]+)", text)


def test_make_loss_takes_the_kernels_only_where_they_apply():
  logits, labels, where = _inputs((2, 8, 8), 5, seed=2)
  options = dict(ignore_index=IGNORE, temperature=4.0, weight=0.5)
  pallas_fn = losses.make_loss("ce+kl", pallas_kernel=True, **options)
  fused_fn = losses.make_loss("ce+kl", **options)

  def step(fn, labels=labels, where=where):
    return jax.value_and_grad(lambda x: fn(x, labels, where=where)[0])

  triton = ["__gpu$xla.gpu.triton"] * 2  # the forward and the backward kernel
  assert _custom_calls(step(pallas_fn), logits, platform="cuda") == triton
  assert _custom_calls(step(pallas_fn), logits, platform="cpu") == []
  (v1, g1), (v2, g2) = jax.jit(step(pallas_fn))(logits), jax.jit(step(fused_fn))(logits)
  np.testing.assert_allclose(v1, v2, rtol=1e-5)
  np.testing.assert_allclose(g1, g2, atol=1e-5 * float(jnp.max(jnp.abs(g2))))
  # Soft targets, sizes no tile fits, and options the kernels do not take: the fused path.
  soft = jax.nn.one_hot(jnp.clip(labels, 0, 4), 5)
  assert _custom_calls(step(pallas_fn, soft), logits, platform="cuda") == []
  odd, odd_labels, _ = _inputs((2, 6, 5), 5, seed=3)
  assert _custom_calls(step(pallas_fn, odd_labels, None), odd, platform="cuda") == []
  weighted = losses.make_loss("ce+kl", pallas_kernel=True, class_weights=(1.0, 2.0, 1, 1, 1))
  assert _custom_calls(step(weighted), logits, platform="cuda") == []


def test_bad_inputs_are_named():
  logits, labels, _ = _inputs((2, 8, 8), 5, seed=4)
  with pytest.raises(ValueError, match="soft targets"):
    pallas_gpu.ce_with_region(logits, jax.nn.softmax(logits), interpret=True)
  odd, odd_labels, _ = _inputs((2, 6, 5), 5, seed=4)
  with pytest.raises(ValueError, match=r"30 pixels of logits \(2, 6, 5, 5\)"):
    pallas_gpu.ce_with_region(odd, odd_labels, interpret=True)
  with pytest.raises(ValueError, match="Unknown region term 'dice'"):
    pallas_gpu.ce_with_region(logits, labels, term="dice", interpret=True)
