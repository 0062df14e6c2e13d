"""``train_and_evaluate(config, workdir)``: the whole run, resumable at every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from regionloss_jax import data as rl_data
from train import (
  bookkeeping,
  checkpoints,
  config_checks,
  datasets,
  optim,
  parallel,
  plots,
  predictor,
  preemption,
  reporting,
  scoring,
  write_errors,
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
  path = os.path.join(workdir, INFERENCE_FILE)
  write_errors.write_json(path, record, what="the inference record", workdir=workdir)


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
  """Writes the config, after removing an old run's outputs with ``overwrite``."""
  with write_errors.writing(workdir, "the run's directory", workdir=workdir):
    os.makedirs(workdir, exist_ok=True)
    if overwrite:
      _remove_outputs(workdir)
  path = os.path.join(workdir, CONFIG_FILE)
  write_errors.write_json(path, current, what="the config", workdir=workdir)


def _remove_outputs(workdir: str) -> None:
  """Removes what an earlier run wrote (``--overwrite``); the config is replaced after."""
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
    record = {"validation": validation}
    write_errors.write_json(path, record, what="the summary", workdir=workdir)
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
  user, and ``preemption.Preempted`` after saving a checkpoint when a signal asked the run
  to stop (inside ``preemption.listening()``).
  """
  try:
    return _train_and_evaluate(config, workdir, overwrite=overwrite)
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    raise OutOfMemory(_out_of_memory_message(config, workdir, error)) from error


@dataclasses.dataclass
class _Run:
  """What training and the final evaluation share: the data, the compiled step, the
  evaluator and the checkpoints."""

  config: ml_collections.ConfigDict
  workdir: str
  splits: dict
  mesh: jax.sharding.Mesh
  abstract_state: Any
  train_step: Callable
  predictor: predictor.Predictor
  score_fn: Callable
  checkpoints: Any  # orbax CheckpointManager

  @property
  def lead(self) -> bool:
    return jax.process_index() == 0

  @property
  def class_names(self) -> list[str]:
    return self.splits["train"].class_names

  @property
  def ignore_index(self) -> int:
    return self.splits["train"].ignore_index

  def evaluate(self, state, split: str, at_step: int, keep: int = 0) -> dict:
    self.predictor.load(state.params, state.rest)
    return scoring.evaluate_split(
      self.predictor,
      self.score_fn,
      datasets.eval_examples(self.config, self.splits[split]),
      weight=float(optim.loss_weight_schedule(self.config)(at_step)),
      class_names=self.class_names,
      ignore_index=self.ignore_index,
      keep=keep,
    )


def _open_splits(config: ml_collections.ConfigDict) -> dict:
  # A run that must not see the test split (tuning) never opens it.
  names = ("train", "validation") + (("test",) if config.train.evaluate_test else ())
  splits = {s: datasets.open_split(config, s) for s in names}
  config_checks.check_num_classes(config, len(splits["train"].class_names))
  for data in splits.values():
    config_checks.check_ignore_index(config, data.ignore_index)
  return splits


def _build(config: ml_collections.ConfigDict, workdir: str):
  """``(run, initial_state)``: the model, optimiser and step compiled for the mesh."""
  splits = _open_splits(config)
  train = splits["train"]
  model = step_lib.make_model(
    config,
    in_channels=np.shape(train.source[0]["image"])[-1],
    num_classes=len(train.class_names),
    seed=config.train.seed,
  )
  optimizer = optim.make_optimizer(config)
  graphdef, eval_graphdef, state = step_lib.init_state(model, optimizer)
  mesh = parallel.make_mesh()
  shardings = parallel.step_shardings(state, mesh, shard_params=config.parallel.shard_params)
  state = parallel.put_state(state, shardings.state)
  window = predictor.window_size(config, datasets.spatial_shape(config, train))
  if jax.process_index() == 0:
    write_inference_record(workdir, train, window)
  run = _Run(
    config=config,
    workdir=workdir,
    splits=splits,
    mesh=mesh,
    abstract_state=parallel.abstract(state, shardings.state),
    train_step=step_lib.make_train_step(
      config, graphdef, optimizer, shardings, ignore_index=train.ignore_index
    ),
    predictor=predictor.Predictor(config, eval_graphdef, window=window),
    score_fn=scoring.make_score_fn(config, ignore_index=train.ignore_index),
    checkpoints=checkpoints.manager(workdir, keep=config.train.keep_checkpoints),
  )
  return run, state


class _Progress(NamedTuple):
  """Where training stands: the last step done, its state and data position, and the
  bookkeeping of the log interval it is in."""

  step: int
  state: Any
  iterator: Any
  means: bookkeeping.StepMeans
  nonfinite: bookkeeping.NonfiniteSteps


def _resume(run: _Run, state) -> _Progress:
  """The newest readable checkpoint's progress, or step 0 with ``state``."""
  iterator = iter(datasets.train_pipeline(run.config, run.splits["train"]))
  limit = run.config.train.max_nonfinite_steps
  start, restored, data_state, saved = checkpoints.restore_newest_readable(
    run.checkpoints, run.abstract_state, os.path.join(run.workdir, "corrupt_checkpoints")
  )
  if not start:
    return _Progress(0, state, iterator, bookkeeping.StepMeans(), bookkeeping.NonfiniteSteps(limit))
  iterator.set_state(data_state)
  logging.info("resumed from step %d", start)
  if not saved:  # a checkpoint from before 2026-12-03, always at the end of a log interval
    saved = {
      "means": bookkeeping.StepMeans().state(),
      "nonfinite": {"consecutive": 0, "skipped": 0},
    }
  return _Progress(
    start,
    restored,
    iterator,
    bookkeeping.StepMeans.from_state(saved["means"]),
    bookkeeping.NonfiniteSteps.from_state(saved["nonfinite"], limit=limit),
  )


def _diverged(run: _Run, nonfinite: bookkeeping.NonfiniteSteps, bad_step: int) -> Diverged:
  last = run.checkpoints.latest_step()
  good = (
    f"step {last} in {os.path.join(run.workdir, 'checkpoints')}"
    if last
    else "none (the run stopped before its first checkpoint)"
  )
  return Diverged(
    f"non-finite loss or gradient for {nonfinite.consecutive} consecutive steps, the last at "
    f"step {bad_step}; stopping. Those updates were skipped and nothing non-finite "
    f"was checkpointed; the last good checkpoint is {good}. Lower "
    "optimizer.learning_rate, keep optimizer.grad_clip_norm > 0, or check the data."
  )


def _validate(run: _Run, state, writer: reporting.MetricWriter, step: int) -> float:
  """Validation Dice at ``step`` (written to the metrics), what "best" is chosen by."""
  result = run.evaluate(state, "validation", step)
  writer.write(step, "val", flatten_summary(result["summary"]))
  # None when no validation image holds a foreground class: such a step is never "best".
  dice = result["summary"]["dice"]
  return -1.0 if dice is None else dice


def _train(run: _Run, progress: _Progress, writer: reporting.MetricWriter):
  """Steps from ``progress.step`` to ``train.steps``: logs every ``log_every`` steps,
  validates and saves on schedule. Stops with ``Diverged``, or with
  ``preemption.Preempted`` after saving when a signal asks for it. The progress bar is
  closed first either way, so that an error is the console's last line."""
  train = run.config.train
  state, iterator, means, nonfinite = progress[1:]
  with tqdm(
    total=train.steps,
    initial=progress.step,
    disable=not run.lead,
    unit="step",
    dynamic_ncols=True,
    mininterval=2.0,
  ) as bar:
    for step in range(progress.step + 1, train.steps + 1):
      state, step_metrics = run.train_step(
        state, parallel.put_train_batch(next(iterator), run.mesh)
      )
      nonfinite.add(step_metrics.pop("nonfinite"))
      means.add(step_metrics)
      log_now = step % train.log_every == 0 or step == train.steps
      evaluate_now = step % train.eval_every == 0 or step == train.steps
      stop_signal = preemption.stop_signal(step)
      save_now = evaluate_now or step % train.checkpoint_every == 0 or stop_signal is not None
      # One host sync per interval, not per step.
      if log_now or save_now or len(nonfinite.pending) >= train.max_nonfinite_steps:
        bad_step = nonfinite.check(step)
        if bad_step is not None:
          raise _diverged(run, nonfinite, bad_step)
      if log_now:
        record = {**means.record(train.batch_size), "nonfinite_steps": nonfinite.skipped}
        writer.write(step, "train", record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")
      bar.update(1)
      val_dice = _validate(run, state, writer, step) if evaluate_now else None
      if save_now:
        counters = {"means": means.state(), "nonfinite": nonfinite.state()}
        checkpoints.save(
          run.checkpoints, step, state, iterator.get_state(), val_dice, progress=counters
        )
        means.restart_clock()  # evaluation and saving are not training throughput
      if stop_signal is not None:
        checkpoint_dir = os.path.join(os.path.abspath(run.workdir), "checkpoints")
        raise preemption.Preempted(
          preemption.message(stop_signal, step, checkpoint_dir), stop_signal
        )
  logging.info(
    "process %d of %d: parameter checksum %.12e",
    jax.process_index(),
    jax.process_count(),
    parallel.local_checksum(state.params),
  )


def _report_finished(workdir: str, lead: bool) -> dict:
  with open(os.path.join(workdir, SUMMARY_FILE)) as f:
    finished = json.load(f)
  logging.info("%s is finished; nothing to train", workdir)
  if "test" not in finished:
    return finished["validation"]
  if lead:
    _print_table(finished["test"], finished["plots"])
  return finished["test"]


def _test_best(run: _Run, writer: reporting.MetricWriter) -> dict:
  """Evaluates the best checkpoint on the test split; writes the per-image results, the
  summary and the plots."""
  best = checkpoints.best_step(run.checkpoints) or run.checkpoints.latest_step()
  best_state, _, _ = checkpoints.restore(run.checkpoints, best, run.abstract_state)
  steps = run.config.train.steps
  test = run.evaluate(best_state, "test", steps, keep=run.config.train.num_overlays)
  summary = {**test["summary"], "checkpoint_step": int(best)}
  per_image_path = os.path.join(run.workdir, PER_IMAGE_FILE)
  if run.lead:
    with write_errors.writing(per_image_path, "the per-image results", workdir=run.workdir):
      np.savez_compressed(per_image_path, **test["per_image"])
  writer.write(steps, "test", flatten_summary(summary))
  if run.lead:
    plots_dir = os.path.join(run.workdir, "plots")
    with write_errors.writing(plots_dir, "the plots", workdir=run.workdir):
      plot_paths = plots.write_all(
        run.workdir, reporting.read_metrics(run.workdir), test, run.class_names
      )
    write_errors.write_json(
      os.path.join(run.workdir, SUMMARY_FILE),
      {"test": summary, "plots": plot_paths},
      what="the summary",
      workdir=run.workdir,
    )
    _print_table(summary, plot_paths)
  return summary


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
  _check_workdir(config, workdir, overwrite)
  run, state = _build(config, workdir)
  progress = _resume(run, state)
  if progress.step >= config.train.steps and os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
    return _report_finished(workdir, run.lead)
  writer = reporting.MetricWriter(workdir, enabled=run.lead, resume_step=progress.step)
  try:
    _train(run, progress, writer)
    if not config.train.evaluate_test:
      best = checkpoints.best_step(run.checkpoints) or run.checkpoints.latest_step()
      return _finish_without_test(workdir, best, run.lead)
    return _test_best(run, writer)
  finally:
    writer.close()
