"""Fuzzing every field of the training config: a bad value either stops the run before any
work with a ``ConfigError`` naming the field, or is one that really works (schedules, loss,
model and sliding windows built from it give finite numbers)."""

import math

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regionloss_jax import inference, losses
from regionloss_jax.data import imbalanced_shapes
from tests import tiers
from tests.train.helpers import run_program
from train import build, config_checks, optim, step
from train.configs import default
from train.user_errors import ConfigError

NAN, INF = float("nan"), float("inf")


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", config.get_type(key)


# Every field of the default config with the type ml_collections holds it as.
FIELDS = dict(_leaves(default.get_config()))

SPECIAL = {
  int: [0, -1, -(2**31), 2**62, 1, 3, 7, True, None],
  float: [NAN, INF, -INF, 0.0, -0.0, -1.0, 1e300, -1e-300, 0.5, 1.0, 5.0, None],
  tuple: [(), (0, 0), (-1, 32), (0,), (32,), (16, 16, 16), (1.5, 32.0), ("a", "b"), (NAN, 1.0)],
  str: ["", "nonsense", "0", None],
  bool: [None, True, False],
}
# Values of a type the field does not hold: ml_collections refuses them on assignment.
FOREIGN = ["abc", 1.5, (1, 2), 3]


def _values(kind):
  special = st.sampled_from(SPECIAL[kind])
  if kind is int:
    return st.one_of(special, st.integers(-(10**6), 10**6))
  if kind is float:
    return st.one_of(special, st.floats(allow_nan=True, allow_infinity=True))
  if kind is tuple:
    sizes = st.one_of(st.integers(-4, 256), st.floats(allow_nan=True), st.sampled_from(["x"]))
    return st.one_of(special, st.lists(sizes, max_size=4).map(tuple))
  return special


@st.composite
def _field_and_value(draw):
  field = draw(st.sampled_from(sorted(FIELDS)))
  kind = FIELDS[field]
  value = draw(st.one_of(_values(kind), st.sampled_from(FOREIGN)) if kind else _values(str))
  return field, value


def _section(config, field):
  *parents, name = field.split(".")
  for part in parents:
    config = config[part]
  return config, name


def _names_field(message: str, field: str) -> bool:
  # make_loss's own messages name a loss option without its "loss." prefix.
  name = field.rsplit(".", 1)[-1]
  return field in message or (field.startswith("loss.") and repr(name) in message)


def _finite_and_non_negative(values):
  values = [float(v) for v in values]
  return all(math.isfinite(v) and v >= 0 for v in values)


def _loss_is_finite(config, num_classes: int):
  binary = config.loss.mode == "binary"
  channels = build.model_channels(config, 2 if binary else num_classes)
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 8, 8, channels)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2 if binary else num_classes, (2, 8, 8)))
  labels = labels.at[0, 0, 0].set(255)  # one ignored pixel
  loss = losses.make_loss(config.loss.name, **build.loss_options(config, ignore_index=255))
  value, grad = jax.value_and_grad(lambda x: loss(x, labels)[0])(logits)
  return bool(jnp.isfinite(value)) and bool(jnp.isfinite(grad).all())


def _checks_before_work(config):
  """What train.loop checks before it builds anything, for the default dataset on 1 device."""
  config_checks.check_config(config)
  config_checks.check_devices(config, 1, 1)
  config_checks.check_num_classes(config, len(imbalanced_shapes.CLASS_NAMES["multiclass"]))
  config_checks.check_ignore_index(config, 255)


def _really_works(config, changed: str):
  """Builds what the run builds from the config, without data, and checks its numbers."""
  steps = config.train.steps
  probe = sorted({0, 1, min(config.optimizer.warmup_steps, steps), steps // 2, steps})
  assert _finite_and_non_negative(optim.learning_rate_schedule(config)(s) for s in probe)
  optim.make_optimizer(config)
  assert _finite_and_non_negative(optim.loss_weight_schedule(config)(s) for s in probe)
  for name in ("log_every", "eval_every", "checkpoint_every", "max_nonfinite_steps"):
    assert config.train[name] >= 1 and steps % config.train[name] >= 0
  num_classes = len(imbalanced_shapes.CLASS_NAMES["multiclass"])
  assert _loss_is_finite(config, num_classes)
  # image_size=() keeps the generated images' own square size.
  whole = config.data.image_size or (imbalanced_shapes.DEFAULT_IMAGE_SIZE,) * 2
  size = tuple(config.data.patch_size or whole)
  if changed.startswith(("model.", "data.")):
    make = step.model_factory(config, in_channels=1, num_classes=num_classes, seed=0)
    nnx.eval_shape(make).check_input(jax.ShapeDtypeStruct((1, *size, 1), jnp.float32))
  if size[0] >= 1:
    starts = inference.window_starts(3 * size[0], size[0], config.inference.overlap)
    assert starts[0] == 0 and starts[-1] == 2 * size[0]


@tiers.SLOW
@settings(
  max_examples=150,
  deadline=None,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(_field_and_value())
def test_a_bad_value_is_refused_naming_its_field_or_really_works(field_and_value):
  field, value = field_and_value
  config = default.get_config()
  section, name = _section(config, field)
  try:
    section[name] = value
  except TypeError as error:  # ml_collections keeps each field's type
    assert repr(name) in str(error)
    return
  try:
    _checks_before_work(config)
  except ConfigError as error:
    assert _names_field(str(error), field), (field, value, str(error))
    return
  _really_works(config, field)


@pytest.mark.parametrize(
  ("field", "value", "message"),
  [
    ("train.log_every", 0, "config.train.log_every must be a positive integer, got 0"),
    ("train.steps", -5, "config.train.steps must be a positive integer, got -5"),
    ("train.steps", 2**62, "config.train.steps must be an integer in [1, 2147483648)"),
    ("optimizer.learning_rate", NAN, "optimizer.learning_rate must be a finite number > 0"),
    ("optimizer.learning_rate", INF, "optimizer.learning_rate must be a finite number > 0"),
    ("optimizer.learning_rate", None, "optimizer.learning_rate must be a finite number > 0"),
    (
      "optimizer.warmup_steps",
      -1,
      "config.optimizer.warmup_steps must be an integer in [0, 2147483648)",
    ),
    ("optimizer.poly_power", -1.0, "config.optimizer.poly_power must be > 0, got -1.0"),
    ("optimizer.grad_clip_norm", NAN, "config.optimizer.grad_clip_norm must be a finite"),
    ("loss.temperature", 0.0, "config.loss.temperature must be > 0, got 0.0"),
    ("loss.weight", -1.0, "config.loss.weight must be >= 0, got -1.0"),
    (
      "loss.weight_schedule.step_size",
      0,
      "loss.weight_schedule.step_size must be an integer in [1, 2147483648)",
    ),
    (
      "loss.weight_schedule.ramp_steps",
      0,
      "loss.weight_schedule.ramp_steps must be an integer in [1, 2147483648)",
    ),
    ("model.norm", "layer", "config.model.norm='layer' is not valid; choose one of: instance"),
    ("model.dropout_rate", 1.0, "config.model.dropout_rate must be in [0, 1), got 1.0"),
    ("model.depth", 2**62, "config.model.depth must be an integer in [1, 17)"),
    ("data.split_sizes", (48, 0, 16), "config.data.split_sizes=(48, 0, 16) must be 3 positive"),
    ("data.foreground_fraction", NAN, "data.foreground_fraction must be a finite number in [0, 1]"),
    ("inference.overlap", -0.1, "config.inference.overlap must be in [0, 1), got -0.1"),
    ("train.seed", -1, "config.train.seed must be an integer in [0, 2147483648), got -1"),
  ],
)
def test_gaps_found_by_the_fuzzing_are_closed(field, value, message):
  config = default.get_config()
  section, name = _section(config, field)
  section[name] = value
  with pytest.raises(ConfigError) as error:
    config_checks.check_config(config)
  assert message in str(error.value)


def test_group_norm_needs_widths_the_groups_divide():
  config = default.get_config()
  config.model.update(norm="group", features=4)
  with pytest.raises(ConfigError, match=r"widths \[4, 8, 16, 32\]; use features divisible by 8"):
    config_checks.check_config(config)
  config.model.features = 8
  config_checks.check_config(config)


def test_folder_counts_names_and_value_map_are_checked():
  config = default.get_config()
  config.data.update(name="folder", dir="/data", num_classes=1, image_size=(64, 64))
  with pytest.raises(ConfigError, match=r"num_classes=1 must be an integer in \[2, 255\]"):
    config_checks.check_config(config)
  config.data.num_classes = 2
  config.data.class_names = ("background", "")
  with pytest.raises(ConfigError, match="class_names=.*distinct, non-empty names"):
    config_checks.check_config(config)
  config.data.class_names = None
  config.data.value_map = ((0, 0), (255, 3))
  with pytest.raises(ConfigError, match=r"value_map maps 255 to 3: .* \[0, 2\) or 255"):
    config_checks.check_config(config)
  config.data.value_map = ((0, 0), (255, 1))
  config_checks.check_config(config)


@tiers.parametrize(
  "arg, names",
  [
    ("--config.train.steps=abc", ["--config.train.steps=abc", "invalid literal for int()"]),
    ("--config.optimizer.learning_rate=nan", ["config.optimizer.learning_rate", "nan"]),
    ("--config.data.image_size=32", ["config.data.image_size=(", "the 2-D model needs one size"]),
  ],
  fast_every=3,
)
def test_the_program_stops_in_one_line_before_any_work(tmp_path, cache_dir, arg, names):
  workdir = tmp_path / "run"
  result = run_program(workdir, cache_dir, arg, check=False)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  for name in names:
    assert name in lines[0]
  assert not (workdir / "checkpoints").exists()


def test_per_class_loss_options_must_fit_the_datasets_classes():
  # ce's weights of 1 class on 5 classes passed every check and failed in the first step.
  config = default.get_config()
  config.loss.class_weights = (2.0,)
  config_checks.check_config(config)
  with pytest.raises(ConfigError, match=r"loss.class_weights=\(2.0,\) does not fit the 5 classes"):
    config_checks.check_num_classes(config, 5)
  config.loss.class_weights = (1.0, 2.0, 2.0, 2.0, 2.0)
  config_checks.check_num_classes(config, 5)
