"""Tests for the Flax NNX U-Net (its deep-supervision loss: tests/losses/test_deep_supervision.py).

XLA compilation is the cost on a small CPU, so shape and parameter checks run abstractly
(``nnx.eval_shape``) and concrete models are tiny and built from an ``unsafe_rbg`` key, whose
initialisers compile much faster than threefry's.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from regionloss_jax.models import UNet
from regionloss_jax.models.unet import Upsample, max_pool2, transposed_conv2
from tests import tiers


def fast_rngs(seed: int = 0) -> nnx.Rngs:
  return nnx.Rngs(jax.random.key(seed, impl="unsafe_rbg"))


def abstract_unet(*args, **kwargs) -> UNet:
  """A UNet whose variables are ShapeDtypeStructs: no initialiser is compiled or run."""
  return nnx.eval_shape(lambda: UNet(*args, rngs=nnx.Rngs(0), **kwargs))


def output_shapes(model: UNet, shape, dtype=jnp.float32):
  out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct(shape, dtype))
  if isinstance(out, list):
    return [(o.shape, o.dtype) for o in out]
  return out.shape, out.dtype


def count_params(model: UNet) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
@pytest.mark.parametrize("norm", ["instance", "group", "batch"])
def test_output_shape_2d(norm, upsample):
  model = abstract_unet(3, 4, spatial_dims=2, depth=3, features=8, norm=norm, upsample=upsample)
  assert output_shapes(model, (2, 32, 32, 3)) == ((2, 32, 32, 4), jnp.float32)


@pytest.mark.parametrize("upsample", ["transpose", "resize"])
def test_output_shape_3d(upsample):
  model = abstract_unet(1, 3, spatial_dims=3, depth=2, features=4, upsample=upsample)
  assert output_shapes(model, (1, 16, 16, 16, 1)) == ((1, 16, 16, 16, 3), jnp.float32)


def test_anisotropic_3d_shape():
  model = abstract_unet(2, 2, spatial_dims=3, depth=2, features=4)
  assert output_shapes(model, (1, 8, 16, 32, 2)) == ((1, 8, 16, 32, 2), jnp.float32)


@tiers.SLOW
def test_concrete_forward_2d_is_finite_float32():
  model = UNet(1, 3, spatial_dims=2, depth=2, features=4, rngs=fast_rngs())
  logits = model(jnp.ones((2, 16, 16, 1)))
  assert logits.shape == (2, 16, 16, 3) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


# ---------------------------------------------------------------------------------------------
# The stride-2 transposed convolution, computed as a matrix product


def test_transposed_conv2_by_hand_flips_the_kernel():
  # One input pixel of value 1 writes the flipped 2x2 kernel: y[a, b] = kernel[1 - a, 1 - b].
  kernel = jnp.arange(1.0, 5.0).reshape(2, 2, 1, 1)  # [[1, 2], [3, 4]]
  out = transposed_conv2(jnp.ones((1, 1, 1, 1)), kernel)
  np.testing.assert_array_equal(out[0, :, :, 0], [[4.0, 3.0], [2.0, 1.0]])


@tiers.parametrize(
  "spatial, factors",
  [((3, 5), (2, 2)), ((2, 3, 4), (2, 2, 2)), ((2, 3, 4), (1, 2, 2)), ((3, 5), (2, 1))],
  fast_every=4,
)
def test_transposed_conv2_matches_lax_conv_transpose_and_its_gradients(spatial, factors):
  # lax.conv_transpose is what nnx.ConvTranspose computes: values and both gradients agree,
  # also with a factor of 1 along an axis (anisotropic pooling).
  n = len(spatial)
  kx, kk, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, *spatial, 6))
  kernel = jax.random.normal(kk, factors + (6, 4))
  cotangent = jax.random.normal(kg, (2, *(f * s for f, s in zip(factors, spatial, strict=True)), 4))
  layout = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}[n]

  def reference(x, kernel):
    return jax.lax.conv_transpose(x, kernel, factors, "SAME", dimension_numbers=layout)

  out, vjp = jax.vjp(transposed_conv2, x, kernel)
  expected, expected_vjp = jax.vjp(reference, x, kernel)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  for got, want in zip(vjp(cotangent), expected_vjp(cotangent), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@tiers.parametrize("dtype", [None, jnp.bfloat16], fast_every=2)
def test_transpose_upsample_equals_its_conv_transpose_module(dtype):
  # The parameters are nnx.ConvTranspose's, so checkpoints of either form load into the other.
  up = Upsample(6, 4, spatial_dims=2, dtype=dtype, rngs=fast_rngs())
  x = jax.random.normal(jax.random.key(1), (2, 4, 6, 6))
  got, want = up(x), up.conv(x)
  assert got.dtype == want.dtype and got.shape == (2, 8, 12, 4)
  np.testing.assert_allclose(
    np.asarray(got, np.float32),
    np.asarray(want, np.float32),
    rtol=1e-2 if dtype else 1e-6,
    atol=1e-2 if dtype else 1e-6,
  )


# ---------------------------------------------------------------------------------------------
# Parameter counts, worked out by hand from the kernel sizes.


def conv(kernel_volume, c_in, c_out, *, bias):
  return kernel_volume * c_in * c_out + (c_out if bias else 0)


def norm(c):
  return 2 * c  # scale + bias


def test_param_count_2d_tiny_by_hand():
  # depth 1, widths (4, 8); 3x3 convs have no bias (a norm follows), the 2x2 transposed conv
  # and the 1x1 head do.
  model = abstract_unet(1, 2, spatial_dims=2, depth=1, features=4, norm="instance")
  encoder0 = conv(9, 1, 4, bias=False) + norm(4) + conv(9, 4, 4, bias=False) + norm(4)
  encoder1 = conv(9, 4, 8, bias=False) + norm(8) + conv(9, 8, 8, bias=False) + norm(8)
  up0 = conv(4, 8, 4, bias=True)
  decoder0 = conv(9, 8, 4, bias=False) + norm(4) + conv(9, 4, 4, bias=False) + norm(4)
  head = conv(1, 4, 2, bias=True)
  expected = encoder0 + encoder1 + up0 + decoder0 + head
  assert expected == 196 + 896 + 132 + 448 + 10 == 1682
  assert count_params(model) == expected


def test_param_count_3d_resize_batchnorm_deep_supervision_by_hand():
  # depth 3, widths (2, 4, 8, 16); resize upsampling uses a biased 3x3x3 conv; BatchNorm's
  # running statistics are BatchStat, not Param; deep supervision adds a head at level 1.
  model = abstract_unet(
    1,
    3,
    spatial_dims=3,
    depth=3,
    features=2,
    norm="batch",
    upsample="resize",
    deep_supervision=True,
  )

  def block(c_in, c_out):
    return conv(27, c_in, c_out, bias=False) + conv(27, c_out, c_out, bias=False) + 2 * norm(c_out)

  encoder = block(1, 2) + block(2, 4) + block(4, 8) + block(8, 16)
  upsamplers = conv(27, 16, 8, bias=True) + conv(27, 8, 4, bias=True) + conv(27, 4, 2, bias=True)
  decoder = block(16, 8) + block(8, 4) + block(4, 2)
  heads = conv(1, 2, 3, bias=True) + conv(1, 4, 3, bias=True)
  assert (encoder, upsamplers, decoder, heads) == (13890, 4550, 6860, 24)
  assert count_params(model) == 25324


def test_max_features_caps_width():
  capped = abstract_unet(1, 2, spatial_dims=2, depth=3, features=8, max_features=16)
  widths = [block.conv2.out_features for block in capped.encoder_blocks]
  assert widths == [8, 16, 16, 16]


# ---------------------------------------------------------------------------------------------
# Bad input


def test_spatial_size_not_divisible_raises_naming_shape():
  model = abstract_unet(1, 2, spatial_dims=2, depth=3, features=4)
  with pytest.raises(ValueError, match=r"divisible by 8.*\(1, 32, 20, 1\)"):
    output_shapes(model, (1, 32, 20, 1))


def test_rank_mismatch_raises():
  model = abstract_unet(1, 2, spatial_dims=3, depth=1, features=4)
  with pytest.raises(ValueError, match=r"spatial_dims=3.*rank 5.*\(1, 16, 16, 1\)"):
    output_shapes(model, (1, 16, 16, 1))


def test_channel_mismatch_raises():
  model = abstract_unet(2, 2, spatial_dims=2, depth=1, features=4)
  with pytest.raises(ValueError, match=r"2 input channels.*\(1, 16, 16, 3\)"):
    output_shapes(model, (1, 16, 16, 3))


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(spatial_dims=1), "spatial_dims"),
    (dict(norm="layer"), "norm"),
    (dict(activation="tanh"), "activation"),
    (dict(upsample="pixelshuffle"), "upsample"),
    (dict(norm="group", num_groups=3), "num_groups=3"),
    (dict(dropout_rate=1.0), "dropout_rate"),
  ],
)
def test_bad_options_raise(kwargs, message):
  options = dict(spatial_dims=2, depth=1, features=4) | kwargs
  with pytest.raises(ValueError, match=message):
    abstract_unet(1, 2, **options)


# ---------------------------------------------------------------------------------------------
# Deep supervision


def test_deep_supervision_outputs_train_and_eval():
  model = abstract_unet(1, 3, spatial_dims=2, depth=4, features=4, deep_supervision=True)
  # Decoder levels 0..2 get heads; level 3 (lowest decoder resolution) is dropped.
  assert output_shapes(model, (2, 32, 32, 1)) == [
    ((2, 32, 32, 3), jnp.float32),
    ((2, 16, 16, 3), jnp.float32),
    ((2, 8, 8, 3), jnp.float32),
  ]
  np.testing.assert_allclose(model.deep_supervision_weights, np.array([4, 2, 1]) / 7)
  model.eval()
  assert output_shapes(model, (2, 32, 32, 1)) == ((2, 32, 32, 3), jnp.float32)
  model.train()
  assert len(output_shapes(model, (2, 32, 32, 1))) == 3


# ---------------------------------------------------------------------------------------------
# Compilation and precision


def test_jit_does_not_retrace_for_same_shapes():
  model = UNet(1, 2, spatial_dims=2, depth=2, features=4, rngs=fast_rngs())
  traces = []

  @nnx.jit
  def forward(model, x):
    traces.append(x.shape)  # runs only while tracing
    return model(x)

  x = jnp.ones((1, 16, 16, 1))
  first = forward(model, x)
  second = forward(model, x + 1.0)
  assert len(traces) == 1
  assert first.shape == second.shape == (1, 16, 16, 2)


@tiers.SLOW
def test_bfloat16_compute_gives_float32_logits_close_to_float32():
  options = dict(spatial_dims=2, depth=2, features=8)
  model32 = UNet(1, 3, rngs=fast_rngs(), **options)
  # Same graph with bfloat16 compute, loaded with the float32 model's parameters.
  graphdef16, _ = nnx.split(abstract_unet(1, 3, dtype=jnp.bfloat16, **options))
  model16 = nnx.merge(graphdef16, nnx.state(model32))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model16, nnx.Param)))

  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 1))
  logits32, logits16 = jax.jit(lambda a, b, x: (a(x), b(x)))(model32, model16, x)
  assert logits16.dtype == jnp.float32
  scale = float(jnp.max(jnp.abs(logits32)))
  assert float(jnp.max(jnp.abs(logits16 - logits32))) < 0.05 * scale
  assert float(jnp.mean(jnp.abs(logits16 - logits32))) < 0.01 * scale


# ---------------------------------------------------------------------------------------------
# Training


@tiers.SLOW
def test_tiny_overfit_one_batch():
  rows, cols = np.mgrid[:16, :16]
  disk = (rows - 7.5) ** 2 + (cols - 5.5) ** 2 < 16
  square = (rows >= 9) & (rows < 14) & (cols >= 9) & (cols < 15)
  mask = np.where(square, 2, disk.astype(int))
  labels = np.stack([mask, np.flip(mask, axis=1)]).astype(np.int32)
  assert set(np.unique(labels)) == {0, 1, 2}
  noise = np.random.default_rng(0).normal(scale=0.3, size=labels.shape)
  images = (labels + noise)[..., None].astype(np.float32)

  model = UNet(1, 3, spatial_dims=2, depth=2, features=8, rngs=fast_rngs())
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, images, labels):
    def loss_fn(model):
      logits = model(images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, images, labels)) for _ in range(40)]
  assert losses[-1] < losses[0] / 10, losses


# ---------------------------------------------------------------------------------------------
# Anisotropic pooling


def test_max_pool_by_factors_equals_the_max_over_each_window():
  x = jax.random.normal(jax.random.key(3), (2, 4, 6, 3))
  got = max_pool2(x, (1, 2))
  want = np.asarray(x).reshape(2, 4, 3, 2, 3).max(axis=3)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(max_pool2(x), np.asarray(x).reshape(2, 2, 2, 3, 2, 3).max((2, 4)))


def test_unet_with_anisotropic_pooling_keeps_the_coarse_axis_until_the_last_level():
  # Three slices cannot be halved: with factor 1 on that axis at both levels they stay
  # whole while the in-plane axes are halved twice, as a plan for thick slices chooses.
  model = UNet(
    in_channels=1,
    num_classes=2,
    spatial_dims=3,
    depth=2,
    features=4,
    pooling=((1, 2, 2), (1, 2, 2)),
    rngs=fast_rngs(),
  )
  assert output_shapes(model, (1, 3, 8, 12, 1)) == ((1, 3, 8, 12, 2), jnp.float32)
  with pytest.raises(ValueError, match=r"divisible by \(1, 4, 4\)"):
    output_shapes(model, (1, 3, 8, 10, 1))
  # Deep supervision heads shrink by the same factors.
  supervised = UNet(
    in_channels=1,
    num_classes=2,
    spatial_dims=3,
    depth=3,
    features=4,
    pooling=((1, 2, 2), (2, 2, 2), (2, 2, 2)),
    deep_supervision=True,
    rngs=fast_rngs(),
  )
  shapes = [shape for shape, _ in output_shapes(supervised, (1, 4, 8, 8, 1))]
  assert shapes == [(1, 4, 8, 8, 2), (1, 4, 4, 4, 2)]


@pytest.mark.parametrize(
  "pooling, message",
  [(((2, 2),), "needs 2 levels"), (((2, 2), (2, 3)), "must be 1 or 2"), (((2,), (2,)), "of 2")],
)
def test_bad_pooling_is_named(pooling, message):
  with pytest.raises(ValueError, match=message):
    UNet(in_channels=1, num_classes=2, depth=2, features=4, pooling=pooling, rngs=fast_rngs())
