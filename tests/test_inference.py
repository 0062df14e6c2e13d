"""Sliding-window inference against direct passes, hand-computed tilings and weight sums."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regionloss_jax import inference
from tests import tiers


def _pointwise(seed: int = 0, channels: int = 2, classes: int = 3):
  """A fully convolutional model without spatial context (1x1 convolution + tanh): its
  output at a pixel depends on that pixel alone, so no tiling can change it."""
  rng = np.random.default_rng(seed)
  kernel = jnp.asarray(rng.normal(size=(channels, classes)), jnp.float32)
  return jax.jit(lambda x: jnp.tanh(x @ kernel) + 0.5)


@pytest.mark.parametrize(
  "size, window, overlap, expected",
  [
    (128, 128, 0.5, [0]),
    (256, 128, 0.0, [0, 128]),
    (256, 128, 0.5, [0, 64, 128]),
    (200, 128, 0.0, [0, 72]),  # not a multiple: the last window ends at the border
    (200, 128, 0.5, [0, 36, 72]),
    (10, 4, 0.25, [0, 3, 6]),
  ],
)
def test_window_starts_cover_the_axis_evenly(size, window, overlap, expected):
  starts = inference.window_starts(size, window, overlap)
  assert starts == expected
  assert starts[0] == 0 and starts[-1] + window == size
  gaps = np.diff(starts)
  assert np.all(window - gaps >= overlap * window - 1)  # at least the overlap (to rounding)


def test_gaussian_weights_peak_in_the_middle_and_stay_positive():
  w = inference.gaussian_weights((16, 9))
  assert w.shape == (16, 9) and w.dtype == np.float32
  assert w.max() == pytest.approx(1.0) and w.min() > 0
  np.testing.assert_allclose(w, w[::-1, ::-1])  # symmetric: mirroring leaves it unchanged
  # sigma = 16/8 = 2 px along the first axis, whose centre 7.5 lies between pixels 7 and 8.
  column = w[:, 4]
  np.testing.assert_allclose(
    column[0] / column[7], np.exp(-0.5 * ((7.5 / 2) ** 2 - (0.5 / 2) ** 2)), rtol=1e-5
  )
  assert w[7, 4] == w[8, 4] == 1.0  # the pixels nearest the centre on both axes


def test_one_window_covering_the_image_is_the_direct_pass():
  model = _pointwise()
  images = np.random.default_rng(1).normal(size=(3, 16, 24, 2)).astype(np.float32)
  out = inference.sliding_window(model, images, window=(16, 24), batch_size=2)
  np.testing.assert_array_equal(out, np.asarray(model(images)))


@tiers.SLOW
def test_a_unet_sized_window_equals_the_direct_pass_of_a_real_unet():
  nnx = pytest.importorskip("flax.nnx", reason="needs the train extra (Flax)")
  from regionloss_jax.models import UNet

  model = UNet(1, 3, depth=2, features=4, rngs=nnx.Rngs(0))
  model.eval()
  apply = jax.jit(lambda x: model(x))
  image = np.random.default_rng(2).normal(size=(1, 32, 32, 1)).astype(np.float32)
  out = inference.sliding_window(apply, image, window=(32, 32), batch_size=1)
  np.testing.assert_allclose(out, np.asarray(apply(image)), atol=1e-6)


@pytest.mark.parametrize("shape", [(37, 50), (8, 8), (5, 61)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.8])
@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_pointwise_model_is_unchanged_by_any_tiling(shape, overlap, blend):
  model = _pointwise()
  images = np.random.default_rng(3).normal(size=(2, *shape, 2)).astype(np.float32)
  out = inference.sliding_window(
    model, images, window=(16, 16), overlap=overlap, blend=blend, batch_size=3
  )
  assert out.shape == (2, *shape, 3)
  np.testing.assert_allclose(out, np.asarray(model(images)), rtol=1e-5, atol=1e-6)


def test_3d_volumes_of_odd_sizes():
  model = _pointwise(channels=1, classes=2)
  volume = np.random.default_rng(4).normal(size=(1, 9, 21, 14, 1)).astype(np.float32)
  out = inference.sliding_window(model, volume, window=(8, 8, 8), overlap=0.5, batch_size=5)
  assert out.shape == (1, 9, 21, 14, 2)
  np.testing.assert_allclose(out, np.asarray(model(volume)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
def test_weights_sum_to_one_everywhere_including_borders(blend):
  # A model whose output is 1 everywhere: blending must give exactly the weighted mean, 1,
  # at borders and corners too, where fewer windows overlap.
  ones = lambda windows: jnp.ones(windows.shape[:-1] + (1,))  # noqa: E731
  out = inference.sliding_window(
    ones, np.zeros((1, 45, 70, 3), np.float32), window=(16, 32), overlap=0.5, blend=blend
  )
  np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_blending_is_the_weighted_mean_of_the_windows():
  # 1-D: windows of 4 over 6 pixels at overlap 0.5 start at 0 and 2. The image holds each
  # pixel's position and the model outputs its window's first value, i.e. the window's start.
  def window_start(windows):
    return jnp.broadcast_to(windows[:, :1], windows.shape)

  image = np.arange(6, dtype=np.float32).reshape(1, 6, 1)
  out = inference.sliding_window(
    window_start, image, window=(4,), overlap=0.5, blend="constant", batch_size=2
  )
  np.testing.assert_allclose(out[0, :, 0], [0, 0, 1, 1, 2, 2])  # plain means of 0 and 2
  g = inference.gaussian_weights((4,))
  out = inference.sliding_window(
    window_start, image, window=(4,), overlap=0.5, blend="gaussian", batch_size=1
  )
  # Pixel 2 is pixel 2 of window 0 and pixel 0 of window 1; pixel 3 is pixels 3 and 1.
  expected = [0, 0, 2 * g[0] / (g[2] + g[0]), 2 * g[1] / (g[3] + g[1]), 2, 2]
  np.testing.assert_allclose(out[0, :, 0], expected, rtol=1e-6)


def test_small_images_are_padded_into_the_middle_of_the_window():
  seen = []

  def record(windows):
    seen.append(np.asarray(windows))
    return jnp.asarray(windows)

  image = np.arange(1, 7, dtype=np.float32).reshape(1, 2, 3, 1)
  out = inference.sliding_window(record, image, window=(4, 5), pad_value=-9.0, batch_size=1)
  np.testing.assert_array_equal(out, image)
  window = seen[0][0, ..., 0]
  assert window.shape == (4, 5)
  np.testing.assert_array_equal(window[1:3, 1:4], image[0, ..., 0])  # centred
  assert (window[0] == -9).all() and (window[:, 0] == -9).all()


def test_one_compiled_program_for_every_image_size():
  traces = []
  kernel = jnp.ones((2, 3))

  @jax.jit
  def model(x):
    traces.append(x.shape)  # runs once per compilation
    return x @ kernel

  for shape in [(20, 33), (47, 16), (64, 64), (5, 5)]:
    images = np.ones((1, *shape, 2), np.float32)
    out = inference.sliding_window(model, images, window=(16, 16), overlap=0.5, batch_size=4)
    np.testing.assert_allclose(out, 2.0, rtol=1e-6)
  assert traces == [(4, 16, 16, 2)]


def test_mirroring_averages_every_flip_combination():
  # A model that reads its left neighbour (not flip-invariant): mirroring must equal the
  # average of f(flip(x)) flipped back over the four flip combinations of two axes.
  def shift(x):
    return jnp.roll(x, 1, axis=2)

  image = np.random.default_rng(5).normal(size=(1, 8, 8, 1)).astype(np.float32)
  out = inference.sliding_window(shift, image, window=(8, 8), mirror_axes=(0, 1))
  expected = np.zeros_like(image)
  for axes in itertools.chain.from_iterable(itertools.combinations((1, 2), r) for r in range(3)):
    flipped = np.flip(image, axes) if axes else image
    back = np.asarray(shift(flipped))
    expected += np.flip(back, axes) if axes else back
  np.testing.assert_allclose(out, expected / 4, rtol=1e-6)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(window=(8,)), "2 spatial axes|1 spatial axes"),
    (dict(window=(8, 8), overlap=1.0), "overlap must be in"),
    (dict(window=(8, 8), blend="median"), "blend must be one of"),
    (dict(window=(8, 8), batch_size=0), "batch_size must be a positive"),
    (dict(window=(8, 8), mirror_axes=(2,)), "mirror_axes must be distinct"),
  ],
)
def test_bad_arguments_name_the_option(kwargs, message):
  with pytest.raises(ValueError, match=message):
    inference.sliding_window(lambda w: w, np.zeros((1, 10, 10, 1)), **kwargs)


def test_wrong_output_shape_is_named():
  with pytest.raises(ValueError, match=r"apply_fn must map windows \(4, 8, 8, 1\)"):
    inference.sliding_window(lambda w: w[:, ::2], np.zeros((1, 10, 10, 1)), window=(8, 8))
