"""Checks a run config before any work (:mod:`train.build` derives the library's arguments).

Every error names the field, the value and the valid choices, so that a typo fails in the
first second instead of after an hour of training.
"""

from __future__ import annotations

import contextlib

import ml_collections

from regionloss_jax import data as rl_data
from regionloss_jax import inference, losses
from train import build
from train.user_errors import ConfigError

PRECISIONS = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "poly")
WEIGHT_SCHEDULES = ("constant", "linear", "step")
MODES = ("multiclass", "binary")


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(
      f"config.{field}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}."
    )


def _positive(field: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"config.{field} must be a positive integer, got {value!r}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ``ConfigError`` for anything that cannot work, before data or compilation."""
  _choice("data.name", config.data.name, rl_data.DATASETS)
  _choice("precision", config.precision, PRECISIONS)
  _positive("parallel.cpu_devices", config.parallel.cpu_devices)
  _choice("optimizer.name", config.optimizer.name, OPTIMIZERS)
  _choice("optimizer.schedule", config.optimizer.schedule, LR_SCHEDULES)
  _choice("loss.weight_schedule.kind", config.loss.weight_schedule.kind, WEIGHT_SCHEDULES)
  _choice("loss.mode", config.loss.mode, MODES)
  _choice("model.spatial_dims", config.model.spatial_dims, (2, 3))
  for field in (
    "steps",
    "batch_size",
    "eval_batch_size",
    "eval_every",
    "checkpoint_every",
    "log_every",
    "keep_checkpoints",
    "max_nonfinite_steps",
  ):
    _positive(f"train.{field}", config.train[field])
  if config.optimizer.learning_rate <= 0:
    raise ConfigError(
      f"config.optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}."
    )
  if config.loss.name not in losses.loss_names():
    raise ConfigError(
      f"config.loss.name={config.loss.name!r} is not a loss; choose one of: "
      f"{', '.join(losses.loss_names())}."
    )
  # Unknown options fail here; the dataset's own ignore value is checked once it is open.
  ignore_index = config.loss.ignore_index
  with _as_config_error():
    losses.make_loss(
      config.loss.name,
      **build.loss_options(
        config, ignore_index=rl_data.IGNORE_INDEX if ignore_index is None else ignore_index
      ),
    )
  volumetric = config.data.name == "volumes"
  if volumetric != (config.model.spatial_dims == 3):
    raise ConfigError(
      f"config.model.spatial_dims={config.model.spatial_dims} does not fit "
      f"data.name={config.data.name!r} ({3 if volumetric else 2}-D data)."
    )
  _check_sizes(config)
  names, count = config.data.class_names, config.data.num_classes
  if names and count is not None and len(names) != count:
    raise ConfigError(
      f"config.data.class_names has {len(names)} names but "
      f"config.data.num_classes={count}; name every class, background first."
    )
  with _as_config_error():
    build.data_options(config)  # fields the dataset requires fail here


@contextlib.contextmanager
def _as_config_error():
  """The library and :mod:`train.build` raise ``ValueError``; here it is the config's fault."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as error:
    raise ConfigError(str(error)) from error


def _sizes_message(field: str, value, config) -> str | None:
  dims, side = config.model.spatial_dims, 2**config.model.depth
  value = tuple(value)
  if len(value) != dims:
    return (
      f"config.{field}={value} has {len(value)} axes; the {dims}-D model needs one size "
      "per spatial axis."
    )
  if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in value):
    return f"config.{field}={value} must hold positive integers."
  if any(s % side for s in value):
    return (
      f"config.{field}={value} must be divisible by 2**model.depth={side} (the U-Net "
      "halves it model.depth times)."
    )
  return None


def _check_sizes(config: ml_collections.ConfigDict) -> None:
  """Sizes the model sees (``image_size``, ``patch_size``), spacing and inference options."""
  data = config.data
  if not build.native(config) and not data.patch_size:
    message = _sizes_message("data.image_size", data.image_size, config)
    if message:
      raise ConfigError(message)
  if data.patch_size:
    message = _sizes_message("data.patch_size", data.patch_size, config)
    if message:
      raise ConfigError(message)
    if not build.native(config) and len(data.image_size) != len(data.patch_size):
      raise ConfigError(
        f"config.data.image_size={tuple(data.image_size)} and "
        f"data.patch_size={tuple(data.patch_size)} need the same axes."
      )
  elif build.native(config) and not data.name.startswith("imbalanced_shapes"):
    raise ConfigError(
      "config.data.image_size=() keeps every image at its own size, and sizes "
      "differ between images: set config.data.patch_size (e.g. (256, 256), or "
      "(128, 128, 128) for volumes) to train on patches and evaluate through "
      "sliding windows, or set data.image_size to resize every image."
    )
  if not 0.0 <= data.foreground_fraction <= 1.0:
    raise ConfigError(
      f"config.data.foreground_fraction={data.foreground_fraction} must be in [0, 1]."
    )
  for field in ("spacing", "intensity_range"):
    value = data[field]
    if value and data.name != "volumes":
      raise ConfigError(
        f"config.data.{field} is for 3-D volumes (data.name='volumes'), not {data.name!r}."
      )
  if data.spacing and (len(data.spacing) != 3 or min(data.spacing) <= 0):
    raise ConfigError(
      f"config.data.spacing={tuple(data.spacing)} must be three positive voxel "
      "sizes in mm, (D, H, W) order."
    )
  if data.intensity_range and (
    len(data.intensity_range) != 2 or data.intensity_range[0] >= data.intensity_range[1]
  ):
    raise ConfigError(
      f"config.data.intensity_range={tuple(data.intensity_range)} must be "
      "(low, high) with low < high."
    )
  if not 0.0 <= config.inference.overlap < 1.0:
    raise ConfigError(f"config.inference.overlap={config.inference.overlap} must be in [0, 1).")
  _choice("inference.blend", config.inference.blend, inference.BLENDS)


def check_devices(config: ml_collections.ConfigDict, device_count: int, process_count: int) -> None:
  """The global batch is split evenly over the devices (and so over the processes)."""
  if config.train.batch_size % device_count:
    raise ConfigError(
      f"config.train.batch_size={config.train.batch_size} is not divisible by the "
      f"{device_count} devices ({process_count} process(es)); the batch is split evenly "
      f"over them. Use a multiple of {device_count}, e.g. "
      f"{device_count * max(1, round(config.train.batch_size / device_count))}"
      + (
        f", or lower parallel.cpu_devices (now {config.parallel.cpu_devices})."
        if config.parallel.cpu_devices > 1
        else "."
      )
    )


def check_num_classes(config: ml_collections.ConfigDict, num_classes: int) -> None:
  """Mode and class count must agree: ``binary`` means exactly background + one class."""
  if config.loss.mode == "binary" and num_classes != 2:
    raise ConfigError(
      f"config.loss.mode='binary' needs a dataset with 2 classes (background "
      f"and one foreground); {config.data.name!r} has {num_classes}. Use "
      "loss.mode='multiclass'."
    )


def check_ignore_index(config: ml_collections.ConfigDict, dataset_ignore_index: int) -> None:
  """The dataset owns the label value of ignored pixels; loss and metrics both use it, so a
  config may restate it (older runs' configs do) but not change it."""
  value = config.loss.ignore_index
  if value is not None and value != dataset_ignore_index:
    raise ConfigError(
      f"config.loss.ignore_index={value} differs from the ignore value of "
      f"data.name={config.data.name!r}, {dataset_ignore_index}: the loss would "
      "count pixels the metrics leave out (or the reverse). Leave "
      "loss.ignore_index unset; the dataset's value is used for both."
    )
