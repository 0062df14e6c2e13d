"""Checks a run config before any work (:mod:`train.build` derives the library's arguments).

Every error names the field, the value and the valid choices, so that a typo fails in the
first second instead of after an hour of training.
"""

from __future__ import annotations

import contextlib
import math

import jax
import ml_collections
import numpy as np

from regionloss_jax import data as rl_data
from regionloss_jax import inference, losses
from regionloss_jax.data import nnunet, oxford_pet
from regionloss_jax.models import unet
from train import build, memory
from train.configs import base
from train.user_errors import ConfigError

PRECISIONS = ("float32", "bfloat16")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "poly")
WEIGHT_SCHEDULES = ("constant", "linear", "step")
MODES = ("multiclass", "binary")
# Seeds reach JAX's and grain's generators, which take 32-bit seeds.
SEED_LIMIT = 2**31
# The train state counts steps in int32, and schedules compare steps with it.
STEP_LIMIT = 2**31
FLOAT32_MAX = float(np.finfo(np.float32).max)
MAX_DEPTH = 16
# Mask class ids are uint8 with 255 the ignore value: background plus at most 254 classes.
MAX_CLASSES = 255
# Numeric make_loss options: (what is valid, test). The losses take these unchecked, and a
# zero temperature or a negative exponent gives NaN or a constant loss, not an error.
LOSS_VALUES = {
  "temperature": ("> 0", lambda v: v > 0),
  "gamma": (">= 0", lambda v: v >= 0),
  "alpha": (">= 0", lambda v: v >= 0),
  "beta": (">= 0", lambda v: v >= 0),
  "exponent": ("> 0", lambda v: v > 0),
  "smooth_nr": (">= 0", lambda v: v >= 0),
  "smooth_dr": (">= 0", lambda v: v >= 0),
  "label_smoothing": ("in [0, 1)", lambda v: 0 <= v < 1),
  "class_weights": (">= 0", lambda v: v >= 0),
}


def _choice(field: str, value, choices) -> None:
  if value not in choices:
    raise ConfigError(
      f"config.{field}={value!r} is not valid; choose one of: {', '.join(map(str, choices))}."
    )


def _integer(field: str, value, low: int = 1, high: int | None = None) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    ok = False
  else:
    ok = high is None or value < high
  if not ok:
    if high is not None:
      valid = f"an integer in [{low}, {high})"
    else:
      valid = "a positive integer" if low == 1 else f"an integer >= {low}"
    raise ConfigError(f"config.{field} must be {valid}, got {value!r}.")


def _positive(field: str, value) -> None:
  _integer(field, value, 1)


def _real(field: str, value, valid: str, ok) -> None:
  """``value`` a finite number for which ``ok(value)``; ``valid`` says which in words."""
  if not _finite(value):
    raise ConfigError(f"config.{field} must be a finite number {valid}, got {value!r}.")
  if not ok(value):
    raise ConfigError(f"config.{field} must be {valid}, got {value!r}.")


def _finite(value) -> bool:
  """A number that stays finite in float32, where the step computes with it (1e300 is inf)."""
  number = isinstance(value, (int, float)) and not isinstance(value, bool)
  return number and math.isfinite(value) and abs(value) <= FLOAT32_MAX


def _at_least(field: str, value, low: float) -> None:
  _real(field, value, f">= {low:g}", lambda v: v >= low)


def _above(field: str, value, low: float) -> None:
  _real(field, value, f"> {low:g}", lambda v: v > low)


def _unit(field: str, value, *, open_top: bool) -> None:
  """``value`` in ``[0, 1)`` (``open_top``) or ``[0, 1]``."""
  valid = "in [0, 1)" if open_top else "in [0, 1]"
  _real(field, value, valid, lambda v: 0.0 <= v < 1.0 if open_top else 0.0 <= v <= 1.0)


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
  _check_train(config)
  _check_folds(config)
  _check_early_stopping(config)
  _check_optimizer(config)
  _check_model(config)
  if config.loss.name not in losses.loss_names():
    raise ConfigError(
      f"config.loss.name={config.loss.name!r} is not a loss; choose one of: "
      f"{', '.join(losses.loss_names())}."
    )
  _check_loss_values(config)
  valid = losses.valid_options(config.loss.name)
  for option in base.LOSS_OPTION_TYPES:
    if config.loss[option] is not None and option not in valid:
      raise ConfigError(
        f"config.loss.{option} is set, but loss {config.loss.name!r} takes no {option!r}; "
        f"valid options: {', '.join(o for o in valid if o in base.LOSS_OPTION_TYPES)}."
      )
  # Option values the loss refuses fail here; the dataset's own ignore value is checked once
  # it is open.
  ignore_index = config.loss.ignore_index
  with _as_config_error():
    losses.make_loss(
      config.loss.name,
      **build.loss_options(
        config, ignore_index=rl_data.IGNORE_INDEX if ignore_index is None else ignore_index
      ),
    )
  _check_nnunet(config)  # its dataset.json says whether it is 2-D or 3-D
  volumetric = config.data.name == "volumes"
  if config.data.name != "nnunet" and volumetric != (config.model.spatial_dims == 3):
    raise ConfigError(
      f"config.model.spatial_dims={config.model.spatial_dims} does not fit "
      f"data.name={config.data.name!r} ({3 if volumetric else 2}-D data)."
    )
  _check_sizes(config)
  _check_data(config)
  with _as_config_error():
    options = build.data_options(config)  # fields the dataset requires fail here
  _check_value_map(options.get("value_map"), config.data.num_classes)


def _check_train(config: ml_collections.ConfigDict) -> None:
  # The loop takes step % log_every (and eval_every, checkpoint_every): 0 divides by zero.
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
  _integer("train.steps", config.train.steps, 1, STEP_LIMIT)
  _integer("train.seed", config.train.seed, 0, SEED_LIMIT)
  _integer("train.num_overlays", config.train.num_overlays, 0)
  _positive("data.num_threads", config.data.num_threads)


def _check_early_stopping(config: ml_collections.ConfigDict) -> None:
  # Configs of runs written before early stopping (train.evaluate reads them) have neither.
  train = config.train
  _integer("train.patience", train.get("patience", 0), 0, STEP_LIMIT)
  # A Dice lies in [0, 1]: nothing improves on the first by 1 or more.
  _unit("train.min_delta", train.get("min_delta", 0.0), open_top=True)


def _check_folds(config: ml_collections.ConfigDict) -> None:
  """Cross-validation fields; configs of runs written before them (train.evaluate reads
  them) have none: no cross-validation."""
  num_folds = config.train.get("num_folds", 5)
  fold = config.train.get("fold")
  splits_file = config.data.get("splits_file", "")
  # One fold would train on nothing: every case is its validation.
  _integer("train.num_folds", num_folds, 2)
  if fold is not None:
    _integer("train.fold", fold, 0, num_folds)
  if not isinstance(splits_file, str):
    raise ConfigError(
      f"config.data.splits_file={splits_file!r} must be a path, or '' for the dataset's "
      "default (data.dir/splits_final.json, else the cache)."
    )


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
  opt = config.optimizer
  _above("optimizer.learning_rate", opt.learning_rate, 0)
  _integer("optimizer.warmup_steps", opt.warmup_steps, 0, STEP_LIMIT)
  _at_least("optimizer.end_learning_rate", opt.end_learning_rate, 0)
  # A negative power sends the poly schedule to infinity at its last step.
  _above("optimizer.poly_power", opt.poly_power, 0)
  _unit("optimizer.momentum", opt.momentum, open_top=True)
  _at_least("optimizer.weight_decay", opt.weight_decay, 0)
  _at_least("optimizer.grad_clip_norm", opt.grad_clip_norm, 0)


def _check_model(config: ml_collections.ConfigDict) -> None:
  """What :class:`regionloss_jax.models.UNet` would refuse, but only after the data."""
  model = config.model
  # 2**depth must divide the image size; far beyond any image, it only costs time here.
  _integer("model.depth", model.depth, 1, MAX_DEPTH + 1)
  _positive("model.features", model.features)
  if model.max_features is not None:
    _integer("model.max_features", model.max_features, model.features)
  _unit("model.dropout_rate", model.dropout_rate, open_top=True)
  _choice("model.norm", model.norm, unet.NORMS)
  _choice("model.activation", model.activation, tuple(unet.ACTIVATIONS))
  _choice("model.upsample", model.upsample, unet.UPSAMPLINGS)
  _pooling(config)
  groups = unet.UNet.__init__.__kwdefaults__["num_groups"]
  widths = unet.stage_widths(model.depth, model.features, model.max_features)
  if model.norm == "group" and any(w % groups for w in widths):
    raise ConfigError(
      f"config.model.norm='group' splits every stage's channels into {groups} groups, but "
      f"model.features={model.features} (max_features={model.max_features}) gives widths "
      f"{widths}; use features divisible by {groups}, or norm='instance'."
    )


def _check_loss_values(config: ml_collections.ConfigDict) -> None:
  loss = config.loss
  if loss.weight is not None:
    _at_least("loss.weight", loss.weight, 0)
  for option, (valid, ok) in LOSS_VALUES.items():
    value = loss[option]
    if value is None:
      continue
    for item in value if isinstance(value, (tuple, list)) else (value,):
      _real(f"loss.{option}", item, valid, ok)
    if isinstance(value, (tuple, list)) and not value:
      raise ConfigError(f"config.loss.{option}=() is empty; give one value, or one per class.")
  schedule = loss.weight_schedule
  _at_least("loss.weight_schedule.start_weight", schedule.start_weight, 0)
  # optax holds a linear schedule of 0 steps at its start value: the target is never reached.
  _integer("loss.weight_schedule.ramp_steps", schedule.ramp_steps, 1, STEP_LIMIT)
  _above("loss.weight_schedule.factor", schedule.factor, 0)
  _integer("loss.weight_schedule.step_size", schedule.step_size, 1, STEP_LIMIT)
  if loss.ignore_index is not None:
    _integer("loss.ignore_index", loss.ignore_index, 0, 256)


def _check_data(config: ml_collections.ConfigDict) -> None:
  data = config.data
  _choice("data.border", data.border, oxford_pet.BORDER_OPTIONS)
  count = data.num_classes
  if count is not None and (isinstance(count, bool) or not 2 <= count <= MAX_CLASSES):
    raise ConfigError(
      f"config.data.num_classes={count!r} must be an integer in [2, {MAX_CLASSES}]: "
      "background plus at least one class, as uint8 class ids with 255 for ignored pixels."
    )
  names = data.class_names
  if names is not None:
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
      raise ConfigError(
        f"config.data.class_names={tuple(names)!r} must be distinct, non-empty names "
        "(reports key every metric by them)."
      )
    if count is not None and len(names) != count:
      raise ConfigError(
        f"config.data.class_names has {len(names)} names but "
        f"config.data.num_classes={count}; name every class, background first."
      )
  sizes = data.split_sizes
  if sizes is not None and (
    len(sizes) != 3 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes)
  ):
    raise ConfigError(
      f"config.data.split_sizes={tuple(sizes)!r} must be 3 positive counts "
      "(train, validation, test)."
    )


def _check_nnunet(config: ml_collections.ConfigDict) -> None:
  """An nnU-Net dataset's dataset.json gives its classes and, by its file_ending, whether it
  is 2-D or 3-D: the config must agree. A dataset.json that cannot be read is left to the
  loader, which reports it with the dataset's other problems (and a finished run predicts
  without its dataset)."""
  data = config.data
  if data.name != "nnunet":
    return
  if data.value_map:
    raise ConfigError(
      "config.data.value_map is for folder / volumes datasets; an nnU-Net dataset's label "
      "values are its dataset.json's 'labels'."
    )
  if not data.dir:
    return  # build.data_options names the missing field
  try:
    meta = nnunet.read_dataset_json(data.dir)
  except rl_data.DataError:
    return
  where = f"{data.dir}/{nnunet.DATASET_JSON}"
  dims = meta.spatial_dims
  if config.model.spatial_dims != dims:
    raise ConfigError(
      f"config.model.spatial_dims={config.model.spatial_dims} does not fit {where}: its "
      f"file_ending {meta.file_ending!r} is {dims}-D data; set "
      f"--config.model.spatial_dims={dims} and a {dims}-D data.patch_size."
    )
  if data.num_classes is not None and data.num_classes != len(meta.class_names):
    raise ConfigError(
      f"config.data.num_classes={data.num_classes} but {where} declares "
      f"{len(meta.class_names)} classes {list(meta.class_names)}; leave data.num_classes "
      "unset (dataset.json gives it) or make them agree."
    )
  if data.class_names is not None and tuple(data.class_names) != meta.class_names:
    raise ConfigError(
      f"config.data.class_names={tuple(data.class_names)} but {where} declares "
      f"{meta.class_names}; leave data.class_names unset (dataset.json gives them) or make "
      "them agree."
    )
  for field in ("spacing", "intensity_range"):
    if data[field] and dims == 2:
      raise ConfigError(
        f"config.data.{field} is for 3-D data; {where} declares 2-D images ({meta.file_ending})."
      )


def _check_value_map(value_map: dict | None, num_classes: int | None) -> None:
  """Raw values are what a mask file holds (up to 16 bits); class ids are uint8 labels."""
  for raw, cls in (value_map or {}).items():
    if not 0 <= raw < 2**16 or not (0 <= cls < (num_classes or 0) or cls == rl_data.IGNORE_INDEX):
      raise ConfigError(
        f"config.data.value_map maps {raw} to {cls}: raw values are in [0, 65535], class "
        f"ids in [0, {num_classes}) or {rl_data.IGNORE_INDEX} (ignored)."
      )


@contextlib.contextmanager
def _as_config_error():
  """The library and :mod:`train.build` raise ``ValueError``; here it is the config's fault."""
  try:
    yield
  except ConfigError:
    raise
  except ValueError as error:
    raise ConfigError(str(error)) from error


def _pooling(config: ml_collections.ConfigDict) -> tuple[tuple[int, ...], ...]:
  """``model.pooling`` checked against the depth; unset or ``()``: 2 on every axis."""
  model = config.model
  try:
    return unet.check_pooling(
      model.pooling or None, depth=model.depth, spatial_dims=model.spatial_dims
    )
  except (TypeError, ValueError) as error:
    raise ConfigError(f"config.model.pooling={model.pooling!r}: {error}") from error


def _sizes_message(field: str, value, config) -> str | None:
  dims = config.model.spatial_dims
  value = tuple(value)
  if len(value) != dims:
    return (
      f"config.{field}={value} has {len(value)} axes; the {dims}-D model needs one size "
      "per spatial axis."
    )
  if any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in value):
    return f"config.{field}={value} must hold positive integers."
  if config.model.pooling:
    divisor = unet.pooling_divisor(_pooling(config))
    if any(s % d for s, d in zip(value, divisor, strict=True)):
      return (
        f"config.{field}={value} must be divisible by {divisor} along its axes (the "
        f"products of model.pooling={_pooling(config)})."
      )
    return None
  side = 2**config.model.depth
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
  _unit("data.foreground_fraction", data.foreground_fraction, open_top=False)
  for field in ("spacing", "intensity_range"):
    value = data[field]
    if value and data.name not in ("volumes", "nnunet"):
      raise ConfigError(
        f"config.data.{field} is for 3-D volumes (data.name='volumes' or 'nnunet'), not "
        f"{data.name!r}."
      )
  if data.spacing and (
    len(data.spacing) != 3 or not all(_finite(s) and s > 0 for s in data.spacing)
  ):
    raise ConfigError(
      f"config.data.spacing={tuple(data.spacing)} must be three positive voxel "
      "sizes in mm, (D, H, W) order."
    )
  window = data.intensity_range
  if window and (len(window) != 2 or not all(map(_finite, window)) or window[0] >= window[1]):
    raise ConfigError(
      f"config.data.intensity_range={tuple(window)} must be (low, high), finite, with low < high."
    )
  _unit("inference.overlap", config.inference.overlap, open_top=True)
  _choice("inference.blend", config.inference.blend, inference.BLENDS)
  # Configs of runs written before NSD have no tolerance (train.evaluate reads them).
  _above("inference.nsd_tolerance", config.inference.get("nsd_tolerance", 1.0), 0)
  drop = config.inference.get("postprocess_max_dice_drop")
  if drop is not None:
    _unit("inference.postprocess_max_dice_drop", drop, open_top=False)


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
  _check_loss_fits(config, num_classes)


def _check_loss_fits(config: ml_collections.ConfigDict, num_classes: int) -> None:
  """Per-class loss options (``class_weights``, ``alpha``) must fit the dataset's classes,
  known once it is open; the loss itself decides, traced on a dummy batch without compiling,
  instead of failing in the first train step."""
  ignore_index = config.loss.ignore_index
  loss = losses.make_loss(
    config.loss.name,
    **build.loss_options(
      config, ignore_index=rl_data.IGNORE_INDEX if ignore_index is None else ignore_index
    ),
  )
  spatial = (4,) * config.model.spatial_dims
  logits = jax.ShapeDtypeStruct((1, *spatial, build.model_channels(config, num_classes)), "float32")
  labels = jax.ShapeDtypeStruct((1, *spatial), "int32")
  try:
    jax.eval_shape(lambda x, y: loss(x, y)[0], logits, labels)
  except ValueError as error:
    given = [f"loss.{o}={config.loss[o]!r}" for o in ("class_weights", "alpha") if config.loss[o]]
    raise ConfigError(
      f"config.{', '.join(given) or 'loss'} does not fit the {num_classes} classes of "
      f"data.name={config.data.name!r}: {error}"
    ) from error


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


def check_memory(
  config: ml_collections.ConfigDict,
  *,
  shape,
  in_channels: int,
  num_classes: int,
  device_count: int,
  device,
) -> None:
  """The train step's estimated memory (:mod:`train.memory`, an upper bound) against what
  one ``device`` holds, before anything is allocated: a huge ``train.batch_size`` or a plan
  made for a larger device stops with one line instead of exhausting memory.

  ``shape``: the spatial size of a training example (the patch, else the working size);
  ``None`` (whole images of their own sizes) is not checked.
  """
  if not shape:
    return
  per_device = -(-config.train.batch_size // max(device_count, 1))
  estimate = memory.config_step_memory(
    config,
    in_channels=in_channels,
    num_classes=num_classes,
    devices=device_count,
    shape=tuple(shape),
  )
  activations = estimate.activations // (2 if config.precision == "bfloat16" else 1)
  parameters = estimate.parameters // (device_count if config.parallel.shard_params else 1)
  needed = activations + parameters + estimate.batch
  limit, where = memory.device_memory(device)
  if needed > limit:
    # Say which part is too large: the batch's activations, or the model itself.
    lower = (
      "lower train.batch_size or data.patch_size"
      if activations >= parameters
      else "lower model.features or model.max_features"
    )
    raise ConfigError(
      f"config.train.batch_size={config.train.batch_size} ({per_device} per device) of "
      f"{'x'.join(map(str, shape))} examples with model.features={config.model.features}, "
      f"model.depth={config.model.depth} needs about {memory.gib(needed)} per device for "
      f"the train step ({memory.gib(activations)} activations, {memory.gib(parameters)} "
      f"parameters, gradients and optimiser state; train/memory.py's estimate), more than "
      f"the {memory.gib(limit)} of {where}: {lower}, or plan for this device with python "
      "-m train.plan."
    )
