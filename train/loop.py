"""``train_and_evaluate(config, workdir)``: the whole run, resumable at every checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from regionloss_jax import data as rl_data
from train import (
  checkpoints,
  config_checks,
  datasets,
  optim,
  parallel,
  plots,
  predictor,
  reporting,
  scoring,
)
from train import step as step_lib
from train.user_errors import ConfigError

SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.json"
# What train.predict needs besides the config: the class names, the dataset's preprocessing
# of its files and the inference window.
INFERENCE_FILE = "inference.json"
PER_IMAGE_FILE = "test_per_image.npz"  # (N, C) arrays: dice, iou, hd95, proportions
SUMMARY_KEYS = (
  "dice",
  "iou",
  "hd95",
  "precision",
  "recall",
  "detection_rate",
  "absent_false_positive_rate",
  "proportion_mae",
  "proportion_bias",
  "proportion_mae_soft",
  "proportion_bias_soft",
  "ece",
  "dice_all_images",
)


class Diverged(RuntimeError):
  """Too many consecutive steps with a non-finite loss or gradient."""


class OutOfMemory(RuntimeError):
  """The accelerator ran out of memory; the message names the config fields to lower."""


def _out_of_memory_message(config: ml_collections.ConfigDict, workdir: str, error) -> str:
  device = jax.devices()[0].device_kind
  detail = str(error).strip().splitlines()[0][:200]
  return (
    f"out of memory on {jax.device_count()} x {device} ({detail}). Lower one of: "
    f"train.batch_size (now {config.train.batch_size}), train.eval_batch_size (now "
    f"{config.train.eval_batch_size}), {_size_field(config)}, "
    f"model.features (now {config.model.features}) or model.max_features (now "
    f"{config.model.max_features or 'unset'}); or set precision='bfloat16' (now "
    f"{config.precision!r}); with several devices, parallel.shard_params=True splits the "
    f"parameters and optimiser state. Checkpoints in {workdir} are kept: re-run with a "
    "changed field and --overwrite, or the same command on a larger device to resume."
  )


def _size_field(config: ml_collections.ConfigDict) -> str:
  if config.data.patch_size:
    return f"data.patch_size (now {tuple(config.data.patch_size)})"
  size = tuple(config.data.image_size) if config.data.image_size else "dataset size"
  return f"data.image_size (now {size})"


def write_inference_record(workdir: str, data, window) -> None:
  """``workdir/inference.json``: class names, preprocessing and window, for train.predict."""
  record = {
    "class_names": list(data.class_names),
    "window": list(window),
    "preprocessing": data.preprocessing.to_dict() if data.preprocessing else None,
  }
  tmp = os.path.join(workdir, INFERENCE_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(record, f, indent=2)
  os.replace(tmp, os.path.join(workdir, INFERENCE_FILE))


def _check_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool) -> None:
  """A workdir holds one config: a different one is refused, so results never mix.

  Every process compares (so all refuse together); only process 0 writes.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json_best_effort())
  if os.path.exists(path) and not overwrite:
    with open(path) as f:
      previous = _as_current_fields(json.load(f))
    if previous != current:
      changed = sorted(_differences(previous, current))
      raise ConfigError(
        f"{workdir} holds a run with a different config (changed: "
        f"{', '.join(changed)}); use another --workdir, or pass --overwrite "
        "to discard that run."
      )
  multihost_utils.sync_global_devices("workdir checked")
  if jax.process_index() == 0:
    _reset_workdir(workdir, current, overwrite)
  multihost_utils.sync_global_devices("workdir ready")


def _as_current_fields(previous: dict) -> dict:
  """A config written before the dataset owned the ignore value recorded the loss's 255,
  what "unset" means now: that run is the same run, resumable without --overwrite."""
  loss = previous.get("loss", {})
  if loss.get("ignore_index") == rl_data.IGNORE_INDEX:
    previous = {**previous, "loss": {**loss, "ignore_index": None}}
  return previous


def _reset_workdir(workdir: str, current: dict, overwrite: bool) -> None:
  os.makedirs(workdir, exist_ok=True)
  if overwrite:
    for name in (
      "checkpoints",
      reporting.METRICS_FILE,
      SUMMARY_FILE,
      PER_IMAGE_FILE,
      INFERENCE_FILE,
      "tensorboard",
      "plots",
    ):
      target = os.path.join(workdir, name)
      if os.path.isdir(target):
        shutil.rmtree(target)
      elif os.path.exists(target):
        os.remove(target)
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    json.dump(current, f, indent=2)


def _differences(a, b, prefix=""):
  if isinstance(a, dict) and isinstance(b, dict):
    for key in set(a) | set(b):
      yield from _differences(a.get(key), b.get(key), f"{prefix}{key}.")
  elif a != b:
    yield prefix.rstrip(".")


def flatten_summary(summary: dict) -> dict:
  """Summary scalars plus ``<metric>/<class>`` for the per-class values."""
  flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
  for name, values in summary.get("per_class", {}).items():
    for key, value in values.items():
      flat[f"{key}/{name}"] = value
  return flat


def _cell(value, width: int) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def _print_table(summary: dict, plot_paths: dict) -> None:
  names = list(summary["per_class"])
  header = f"{'metric':<27}{'mean':>9}" + "".join(f"{n[:11]:>12}" for n in names)
  lines = [header, "-" * len(header)]
  for key in SUMMARY_KEYS:
    if key in summary:
      lines.append(
        f"{key:<27}{_cell(summary[key], 9)}"
        + "".join(_cell(summary["per_class"][n].get(key), 12) for n in names)
      )
  lines.append(
    f"{'images with the class':<27}{'':>9}"
    + "".join(f"{summary['per_class'][n]['num_present']:>12d}" for n in names)
  )
  print(
    "\n".join(
      [
        "",
        "test metrics (mean over foreground classes; dice, iou, hd95, "
        "precision, recall over the images holding the class, '-' where none "
        "does):",
      ]
      + lines
      + [""]
    )
  )
  for name, path in plot_paths.items():
    print(f"{name:>20}: {path}")


def _finish_without_test(workdir: str, best: int, lead: bool) -> dict:
  """The best checkpoint's validation record, written as ``summary.json["validation"]``."""
  records = [r for r in reporting.read_metrics(workdir) if r["split"] == "val"]
  if not records:
    raise ValueError(f"{workdir}: the run has no validation record to report.")
  at_best = [r for r in records if r["step"] == best]
  validation = {**(at_best or records)[-1], "checkpoint_step": int(best)}
  if lead:
    path = os.path.join(workdir, SUMMARY_FILE)
    with open(path + ".tmp", "w") as f:
      json.dump({"validation": validation}, f, indent=2)
    os.replace(path + ".tmp", path)
  return validation


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), then evaluates
  the best checkpoint on the test split and writes the summary and plots.

  Returns the test summary (also in ``workdir/summary.json`` under ``"test"``). With
  ``config.train.evaluate_test`` false the test split is never opened: the result is the
  best checkpoint's validation record (``summary.json`` under ``"validation"``), what the
  study tunes settings on. Raises ``Diverged`` or ``OutOfMemory`` with a message for the
  user.
  """
  try:
    return _train_and_evaluate(config, workdir, overwrite=overwrite)
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    raise OutOfMemory(_out_of_memory_message(config, workdir, error)) from error


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool
) -> dict:
  config_checks.check_config(config)
  config_checks.check_devices(config, jax.device_count(), jax.process_count())
  logging.info(
    "%d device(s) (%s), %d process(es)",
    jax.device_count(),
    jax.devices()[0].device_kind,
    jax.process_count(),
  )
  lead = jax.process_index() == 0
  _check_workdir(config, workdir, overwrite)
  summary_path = os.path.join(workdir, SUMMARY_FILE)

  # A run that must not see the test split (tuning) never opens it.
  names = ("train", "validation") + (("test",) if config.train.evaluate_test else ())
  splits = {s: datasets.open_split(config, s) for s in names}
  class_names = splits["train"].class_names
  config_checks.check_num_classes(config, len(class_names))
  ignore_index = splits["train"].ignore_index
  for data in splits.values():
    config_checks.check_ignore_index(config, data.ignore_index)
  example = splits["train"].source[0]["image"]
  model = step_lib.make_model(
    config, in_channels=np.shape(example)[-1], num_classes=len(class_names), seed=config.train.seed
  )
  optimizer = optim.make_optimizer(config)
  graphdef, eval_graphdef, state = step_lib.init_state(model, optimizer)
  mesh = parallel.make_mesh()
  shardings = parallel.step_shardings(state, mesh, shard_params=config.parallel.shard_params)
  state = parallel.put_state(state, shardings.state)
  abstract_state = parallel.abstract(state, shardings.state)
  train_step = step_lib.make_train_step(
    config, graphdef, optimizer, shardings, ignore_index=ignore_index
  )
  score_fn = scoring.make_score_fn(config, ignore_index=ignore_index)
  window = predictor.window_size(config, datasets.spatial_shape(config, splits["train"]))
  if lead:
    write_inference_record(workdir, splits["train"], window)
  weight_schedule = optim.loss_weight_schedule(config)

  whole_images = predictor.Predictor(config, eval_graphdef, window=window)

  def evaluate(state, split: str, at_step: int, keep: int = 0) -> dict:
    whole_images.load(state.params, state.rest)
    return scoring.evaluate_split(
      whole_images,
      score_fn,
      datasets.eval_examples(config, splits[split]),
      weight=float(weight_schedule(at_step)),
      class_names=class_names,
      ignore_index=ignore_index,
      keep=keep,
    )

  mngr = checkpoints.manager(workdir, keep=config.train.keep_checkpoints)
  iterator = iter(datasets.train_pipeline(config, splits["train"]))
  start, restored, data_state = checkpoints.restore_newest_readable(
    mngr, abstract_state, os.path.join(workdir, "corrupt_checkpoints")
  )
  if start:
    state = restored
    iterator.set_state(data_state)
    logging.info("resumed from step %d", start)
  if start >= config.train.steps and os.path.exists(summary_path):
    with open(summary_path) as f:
      finished = json.load(f)
    logging.info("%s is finished (step %d); nothing to train", workdir, start)
    if "test" not in finished:
      return finished["validation"]
    if lead:
      _print_table(finished["test"], finished["plots"])
    return finished["test"]

  writer = reporting.MetricWriter(workdir, enabled=lead, resume_step=start)

  def validate(at_step: int) -> float:
    result = evaluate(state, "validation", at_step)
    writer.write(at_step, "val", flatten_summary(result["summary"]))
    # None when no validation image holds a foreground class: such a step is never "best".
    dice = result["summary"]["dice"]
    return -1.0 if dice is None else dice

  progress = tqdm(
    total=config.train.steps,
    initial=start,
    disable=not lead,
    unit="step",
    dynamic_ncols=True,
    mininterval=2.0,
  )
  sums, count, clock = {}, 0, time.perf_counter()
  nonfinite_flags, consecutive, skipped = [], 0, 0
  for step in range(start + 1, config.train.steps + 1):
    state, step_metrics = train_step(state, parallel.put_train_batch(next(iterator), mesh))
    nonfinite_flags.append(step_metrics.pop("nonfinite"))
    for key, value in step_metrics.items():
      sums[key] = sums.get(key, 0.0) + value
    count += 1
    last_of_interval = step % config.train.log_every == 0 or step == config.train.steps
    if last_of_interval or len(nonfinite_flags) >= config.train.max_nonfinite_steps:
      # One host sync per interval, not per step.
      for offset, flag in enumerate(jax.device_get(nonfinite_flags)):
        consecutive = consecutive + 1 if flag else 0
        skipped += int(flag)
        if consecutive >= config.train.max_nonfinite_steps:
          bad_step = step - len(nonfinite_flags) + offset + 1
          last = mngr.latest_step()
          good = (
            f"step {last} in {os.path.join(workdir, 'checkpoints')}"
            if last
            else "none (the run stopped before its first checkpoint)"
          )
          raise Diverged(
            f"non-finite loss or gradient for {consecutive} consecutive steps, the last at "
            f"step {bad_step}; stopping. Those updates were skipped and nothing non-finite "
            f"was checkpointed; the last good checkpoint is {good}. Lower "
            "optimizer.learning_rate, keep optimizer.grad_clip_norm > 0, or check the data."
          )
      nonfinite_flags = []
    if last_of_interval:
      record = {key: float(value) / count for key, value in sums.items()}
      record["nonfinite_steps"] = skipped
      record["images_per_s"] = count * config.train.batch_size / (time.perf_counter() - clock)
      writer.write(step, "train", record)
      progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
      sums, count, clock = {}, 0, time.perf_counter()
    progress.update(1)
    evaluate_now = step % config.train.eval_every == 0 or step == config.train.steps
    val_dice = validate(step) if evaluate_now else None
    if evaluate_now or step % config.train.checkpoint_every == 0:
      checkpoints.save(mngr, step, state, iterator.get_state(), val_dice)
      clock = time.perf_counter()  # evaluation and saving are not training throughput
  progress.close()
  logging.info(
    "process %d of %d: parameter checksum %.12e",
    jax.process_index(),
    jax.process_count(),
    parallel.local_checksum(state.params),
  )

  best = checkpoints.best_step(mngr) or mngr.latest_step()
  if not config.train.evaluate_test:
    writer.close()
    return _finish_without_test(workdir, best, lead)
  best_state, _ = checkpoints.restore(mngr, best, abstract_state)
  test = evaluate(best_state, "test", config.train.steps, keep=config.train.num_overlays)
  summary = {**test["summary"], "checkpoint_step": int(best)}
  if lead:
    np.savez_compressed(os.path.join(workdir, PER_IMAGE_FILE), **test["per_image"])
  writer.write(config.train.steps, "test", flatten_summary(summary))
  writer.close()
  if lead:
    plot_paths = plots.write_all(workdir, reporting.read_metrics(workdir), test, class_names)
    tmp = summary_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"test": summary, "plots": plot_paths}, f, indent=2)
    os.replace(tmp, summary_path)
    _print_table(summary, plot_paths)
  return summary
