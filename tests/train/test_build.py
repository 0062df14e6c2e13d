"""The library arguments built from a run config."""

from train import build
from train.configs import default


def test_loss_options_take_the_reference_settings_where_unset():
  config = default.get_config()
  # ce+kl: the authors' published CE+L1 setting, weight 1 and temperature 10.
  assert build.loss_options(config, ignore_index=255) == {
    "mode": "multiclass",
    "ignore_index": 255,
    "weight": 1.0,
    "temperature": 10.0,
  }
  config.loss.update(weight=0.1, temperature=2.0)
  assert build.loss_options(config, ignore_index=255) == {
    "mode": "multiclass",
    "ignore_index": 255,
    "weight": 0.1,
    "temperature": 2.0,
  }
  config.loss.update(name="ce+dice", weight=None, temperature=None)
  assert build.loss_options(config, ignore_index=255) == {  # nnU-Net / MONAI DiceCE: 1:1
    "mode": "multiclass",
    "ignore_index": 255,
    "weight": 1.0,
  }
  config.loss.name = "ce"
  assert "weight" not in build.loss_options(config, ignore_index=255)


def test_the_pallas_kernels_are_asked_for_only_when_set():
  config = default.get_config()
  assert "pallas_kernel" not in build.loss_options(config, ignore_index=255)
  config.loss.pallas_kernel = True
  assert build.loss_options(config, ignore_index=255)["pallas_kernel"] is True


def test_the_loss_takes_the_ignore_index_it_is_given():
  config = default.get_config()
  assert build.loss_options(config, ignore_index=7)["ignore_index"] == 7
