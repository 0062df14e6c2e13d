"""Config errors name the field, the value and the valid choices, before any work."""

import pytest

from train import build, config_checks, memory, optim
from train.configs import (
  base,
  binary,
  colin27,
  compare_colin27,
  default,
  folder,
  oxford_pet,
  volumes3d,
)
from train.user_errors import ConfigError


@pytest.mark.parametrize("module", [default, binary, folder, oxford_pet, volumes3d, colin27])
def test_shipped_configs_pass_the_checks(module):
  config = module.get_config()
  if config.data.name in ("folder", "volumes"):
    config.data.dir = "/data"
    if config.data.num_classes is None:
      config.data.num_classes = 3
  config_checks.check_config(config)


def test_colin27_study_base_passes_the_checks():
  config = compare_colin27.get_config().base
  config.data.dir = "/data"
  config_checks.check_config(config)
  assert config.data.class_names[-1] == "amygdala"


@pytest.mark.parametrize(
  "field, value, expected",
  [
    ("loss.name", "ce+dicee", "ce+kl"),
    ("data.name", "imagenet", "oxford_iiit_pet"),
    ("optimizer.name", "lamb", "adamw"),
    ("optimizer.schedule", "step", "cosine"),
    ("precision", "float16", "bfloat16"),
    ("loss.weight_schedule.kind", "exp", "linear"),
    ("train.batch_size", 0, "positive integer"),
    ("data.image_size", (60, 60), "divisible by 2**model.depth=8"),
    ("model.spatial_dims", 3, "2-D data"),
    ("data.patch_size", (20, 32), "data.patch_size=(20, 32) must be divisible by 2**model"),
    ("data.patch_size", (32, 32, 32), "has 3 axes; the 2-D model"),
    ("data.foreground_fraction", 1.5, "must be in [0, 1]"),
    ("data.spacing", (1.0, 1.0, 1.0), "is for 3-D volumes"),
    ("inference.overlap", 1.0, "must be in [0, 1)"),
    ("inference.blend", "median", "gaussian, constant"),
  ],
)
def test_bad_values_are_named_with_their_choices(field, value, expected):
  config = default.get_config()
  section, _, name = field.rpartition(".")
  target = config
  for part in filter(None, section.split(".")):
    target = target[part]
  target[name] = value
  with pytest.raises(ValueError) as error:
    config_checks.check_config(config)
  assert expected in str(error.value)


def test_native_resolution_needs_patches():
  config = folder.get_config()
  config.data.dir, config.data.num_classes = "/data", 3
  config.data.patch_size = None
  with pytest.raises(
    ValueError,
    match=r"image_size=\(\) keeps every image at its own size.*"
    r"set config.data.patch_size",
  ):
    config_checks.check_config(config)
  config.data.image_size = (100, 100)  # resized whole images: the window is the image
  with pytest.raises(ValueError, match="divisible by 2"):
    config_checks.check_config(config)
  config.data.patch_size = (64, 64)  # resized, then patches: any resize size will do
  config_checks.check_config(config)


def test_class_names_reach_the_folder_dataset_and_are_counted():
  config = folder.get_config()
  config.data.dir, config.data.num_classes = "/data", 3
  config.data.class_names = ("background", "cortex")
  with pytest.raises(ValueError, match="class_names has 2 names but .*num_classes=3"):
    config_checks.check_config(config)
  config.data.class_names = ("background", "cortex", "thalamus")
  config_checks.check_config(config)
  assert build.data_options(config)["class_names"] == config.data.class_names


def test_volume_spacing_and_window_are_checked():
  config = volumes3d.get_config()
  config.data.dir, config.data.num_classes = "/data", 3
  config.data.spacing = (1.0, 0.0, 1.0)
  with pytest.raises(ValueError, match="three positive voxel sizes"):
    config_checks.check_config(config)
  config.data.spacing = (2.0, 0.8, 0.8)
  config.data.intensity_range = (300.0, -200.0)
  with pytest.raises(ValueError, match="low < high"):
    config_checks.check_config(config)
  config.data.intensity_range = (-200.0, 300.0)
  config_checks.check_config(config)
  assert build.data_options(config)["spacing"] == (2.0, 0.8, 0.8)


def test_loss_option_that_the_loss_does_not_take():
  config = default.get_config()
  config.loss.gamma = 2.0  # focal's option on ce+kl
  with pytest.raises(ValueError, match="gamma.*valid options"):
    config_checks.check_config(config)


def test_folder_needs_its_directory_and_class_count():
  config = folder.get_config()
  with pytest.raises(ValueError, match="config.data.dir is required"):
    config_checks.check_config(config)
  config.data.dir = "/data"
  with pytest.raises(ValueError, match="config.data.num_classes is required"):
    config_checks.check_config(config)


def test_binary_mode_with_many_classes():
  config = binary.get_config()
  with pytest.raises(ValueError, match="'binary' needs a dataset with 2 classes"):
    config_checks.check_num_classes(config, 5)


def test_schedules_reach_their_targets():
  config = base.get_config()
  config.train.steps, config.optimizer.warmup_steps = 100, 10
  learning_rate = optim.learning_rate_schedule(config)
  assert float(learning_rate(0)) == 0.0
  assert float(learning_rate(10)) == pytest.approx(config.optimizer.learning_rate)
  assert float(learning_rate(100)) == pytest.approx(0.0, abs=1e-9)
  config.loss.weight = 0.5
  config.loss.weight_schedule.update(kind="step", start_weight=0.1, factor=2.0, step_size=10)
  weight = optim.loss_weight_schedule(config)
  assert [float(weight(s)) for s in (0, 10, 20, 30)] == pytest.approx([0.1, 0.2, 0.4, 0.5])
  config.loss.weight_schedule.update(kind="linear", start_weight=0.0, ramp_steps=10)
  assert float(optim.loss_weight_schedule(config)(5)) == pytest.approx(0.25)


def test_value_map_pairs_become_the_loaders_mapping():
  config = folder.get_config()
  config.data.dir, config.data.num_classes = "/data", 2
  config.data.value_map = ((0, 0), (255, 1))
  assert build.data_options(config)["value_map"] == {0: 0, 255: 1}
  config.data.value_map = (0, 255)
  with pytest.raises(ValueError, match=r"must be \(raw value, class id\) pairs"):
    config_checks.check_config(config)


def test_a_loss_ignore_index_other_than_the_datasets_is_an_error():
  config = default.get_config()
  config_checks.check_ignore_index(config, 7)  # unset: the dataset's value
  config.loss.ignore_index = 7
  config_checks.check_ignore_index(config, 7)  # restating it (older runs' configs) is fine
  with pytest.raises(ValueError, match=r"loss.ignore_index=7 differs .* 255"):
    config_checks.check_ignore_index(config, 255)


def test_anisotropic_pooling_sets_what_each_axis_must_divide():
  config = volumes3d.get_config()
  config.data.dir, config.data.num_classes = "/data", 3
  config.model.depth = 3
  config.model.pooling = ((1, 2, 2), (1, 2, 2), (2, 2, 2))
  config.data.patch_size = (8, 64, 64)  # 2 along the first axis, 8 along the others
  config_checks.check_config(config)
  config.data.patch_size = (5, 64, 64)
  with pytest.raises(config_checks.ConfigError, match=r"divisible by \(2, 8, 8\)"):
    config_checks.check_config(config)
  config.model.pooling = ((1, 2, 2), (2, 2, 2))
  with pytest.raises(config_checks.ConfigError, match="pooling needs 3 levels"):
    config_checks.check_config(config)


class _Device:
  device_kind = "test accelerator"

  def __init__(self, limit: int):
    self.limit = limit

  def memory_stats(self):
    return {"bytes_limit": self.limit}


def test_a_train_step_larger_than_the_device_is_refused_naming_the_batch():
  config = default.get_config()
  shape = (64, 64)
  estimate = memory.config_step_memory(config, in_channels=1, num_classes=4).total
  options = dict(shape=shape, in_channels=1, num_classes=4, device_count=1)
  config.data.patch_size = shape
  config_checks.check_memory(config, device=_Device(2 * estimate), **options)
  config.train.batch_size *= 4
  with pytest.raises(ConfigError, match=r"config.train.batch_size=.*GiB of test accelerator"):
    config_checks.check_memory(config, device=_Device(2 * estimate), **options)
  # Split over 4 devices, each holds a quarter of the batch again.
  config_checks.check_memory(config, device=_Device(2 * estimate), **{**options, "device_count": 4})
  # Whole images of their own sizes are not estimated.
  config_checks.check_memory(config, device=_Device(1), **{**options, "shape": None})
