"""Preprocessing: what the model sees of a file, and predictions back on the file's grid."""

import numpy as np
import pytest

from regionloss_jax.data import preprocess
from regionloss_jax.data.preprocess import Preprocessing

GREY = Preprocessing(spatial_dims=2, channels=1, mean=(0.5,), std=(0.25,))
RGB = Preprocessing(spatial_dims=2, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3)


def test_record_survives_json_and_rejects_inconsistent_fields():
  prep = Preprocessing(
    spatial_dims=3,
    channels=1,
    mean=(0.5,),
    std=(0.25,),
    size=(8, 16, 16),
    fit_mode="crop_or_pad",
    spacing=(2.0, 1.0, 1.0),
    intensity_range=(-200.0, 300.0),
  )
  import json

  assert Preprocessing.from_dict(json.loads(json.dumps(prep.to_dict()))) == prep
  with pytest.raises(ValueError, match="one value per channel"):
    Preprocessing(spatial_dims=2, channels=3, mean=(0.5,), std=(0.25,))
  with pytest.raises(ValueError, match="spacing is for volumes"):
    Preprocessing(spatial_dims=2, channels=1, mean=(0.5,), std=(0.25,), spacing=(1.0, 1.0))
  with pytest.raises(ValueError, match="size=.* needs 2 entries"):
    Preprocessing(spatial_dims=2, channels=1, mean=(0.5,), std=(0.25,), size=(4, 4, 4))


def test_channels_and_bit_depth_of_the_stored_image():
  grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20
  np.testing.assert_array_equal(
    preprocess.stored_image(grey, channels=3, bit_depth=8), np.repeat(grey, 3, axis=-1)
  )
  np.testing.assert_array_equal(
    preprocess.stored_image(grey, channels=1, bit_depth=16), grey.astype(np.uint16) * 257
  )
  with pytest.raises(ValueError, match="has 3 channels; the model takes 1"):
    preprocess.stored_image(np.zeros((3, 4, 3), np.uint8), channels=1, bit_depth=8)
  ramp = np.linspace(1000, 5000, 1000, dtype=np.float32).reshape(20, 50, 1)
  stored = preprocess.stored_image(ramp.astype(np.uint16), channels=1, bit_depth=16)
  assert stored.dtype == np.uint16 and stored.min() == 0 and stored.max() == 65535


def test_model_input_is_normalised_and_resized():
  image = np.full((30, 40, 3), 255, np.uint8)
  out = preprocess.model_input(
    Preprocessing(spatial_dims=2, channels=3, mean=(0.5,) * 3, std=(0.25,) * 3, size=(16, 24)),
    image,
  )
  assert out.shape == (16, 24, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, (1.0 - 0.5) / 0.25)
  rgba = np.zeros((5, 6, 4), np.uint8)
  assert preprocess.model_input(RGB, rgba).shape == (5, 6, 3)  # alpha dropped
  with pytest.raises(ValueError, match="expected a 2-D image"):
    preprocess.model_input(GREY, np.zeros((2, 3, 4, 5)))


def test_2d_probabilities_go_back_to_the_file_size():
  prep = Preprocessing(spatial_dims=2, channels=1, mean=(0.5,), std=(0.25,), size=(8, 8))
  mask = np.zeros((8, 8), np.int64)
  mask[2:6, 2:6] = 1
  probs = np.eye(2, dtype=np.float32)[mask]
  back = preprocess.to_original(prep, probs, (16, 24))
  assert back.shape == (16, 24, 2)
  np.testing.assert_allclose(back.sum(-1), 1.0, rtol=1e-6)
  assert back.argmax(-1)[8, 12] == 1 and back.argmax(-1)[0, 0] == 0
  with pytest.raises(ValueError, match="do not match the model grid"):
    preprocess.to_original(prep, np.zeros((7, 8, 2), np.float32), (16, 24))


def test_crop_or_pad_is_undone_with_background_where_it_cropped():
  prep = Preprocessing(
    spatial_dims=3, channels=1, mean=(0.5,), std=(0.25,), size=(4, 6, 6), fit_mode="crop_or_pad"
  )
  volume = np.random.default_rng(0).normal(size=(6, 6, 4)).astype(np.float32)
  fitted = preprocess.stored_input(prep, volume, (1.0, 1.0, 1.0))
  assert fitted.shape == (4, 6, 6)
  probs = np.zeros((4, 6, 6, 3), np.float32)
  probs[..., 2] = 1.0  # class 2 everywhere on the model grid
  back = preprocess.to_original(prep, probs, (6, 6, 4), (1.0, 1.0, 1.0))
  classes = back.argmax(-1)
  assert classes.shape == (6, 6, 4)
  # depth 6 was cropped to 4 (one slice each side): those slices are background; width 4
  # was padded to 6 and is cropped back.
  assert (classes[[0, 5]] == 0).all() and (classes[1:5] == 2).all()


def test_fixed_intensity_window():
  prep = Preprocessing(
    spatial_dims=3, channels=1, mean=(0.0,), std=(1.0,), intensity_range=(-100.0, 100.0)
  )
  volume = np.array([-500.0, -100.0, 0.0, 50.0, 900.0]).reshape(1, 1, 5)
  np.testing.assert_allclose(
    preprocess.stored_input(prep, volume).ravel(), [0.0, 0.0, 0.5, 0.75, 1.0]
  )


def test_grid_spacing_follows_resampling_resizing_and_cropping():
  volume = dict(spatial_dims=3, channels=1, mean=(0.5,), std=(0.25,))
  shape, spacing = (10, 40, 40), (5.0, 0.8, 0.8)
  assert preprocess.grid_spacing(None, shape, spacing) == spacing
  assert preprocess.grid_spacing(Preprocessing(**volume), shape, spacing) == spacing
  # No spacing (a 2-D file): distances stay in pixels.
  assert preprocess.grid_spacing(Preprocessing(**volume), shape, None) is None
  resampled = Preprocessing(**volume, spacing=(2.5, 1.6, 1.6))
  assert preprocess.grid_spacing(resampled, shape, spacing) == (2.5, 1.6, 1.6)
  # 10 slices of 5 mm resized to 25: 2 mm each; 40 x 0.8 mm to 20: 1.6 mm.
  resized = Preprocessing(**volume, size=(25, 20, 20))
  assert preprocess.grid_spacing(resized, shape, spacing) == pytest.approx((2.0, 1.6, 1.6))
  cropped = Preprocessing(**volume, size=(8, 32, 32), fit_mode="crop_or_pad")
  assert preprocess.grid_spacing(cropped, shape, spacing) == spacing
  both = Preprocessing(**volume, spacing=(2.5, 1.6, 1.6), size=(10, 10, 10))
  # Resampled to 20 x 20 x 20 voxels, then resized to 10: each twice as large.
  assert preprocess.grid_spacing(both, shape, spacing) == pytest.approx((5.0, 3.2, 3.2))
