"""``train_and_evaluate(config, workdir)``: the whole run, resumable at every checkpoint."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from regionloss_jax import data as rl_data
from regionloss_jax.postprocessing import PostprocessingSearch
from train import (
  bookkeeping,
  checkpoints,
  config_checks,
  datasets,
  folds,
  optim,
  parallel,
  plots,
  postprocess,
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
  "nsd",
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


# Fields added since runs were first written, per section, with the value that means what
# those runs did (2026-12: no early stopping, no folds, pooling by 2, no post-processing).
ADDED_FIELDS = {
  "train": {"patience": 0, "min_delta": 0.0, "fold": None, "num_folds": 5},
  "data": {"splits_file": ""},
  "model": {"pooling": None},
  "inference": {"nsd_tolerance": 1.0, "postprocess": False, "postprocess_max_dice_drop": None},
}


def _as_current_fields(previous: dict) -> dict:
  """A config written before the dataset owned the ignore value recorded the loss's 255,
  what "unset" means now; one written before a field of ``ADDED_FIELDS`` lacks it, which
  means its value there: either run is the same run, resumable without --overwrite."""
  loss = previous.get("loss", {})
  if loss.get("ignore_index") == rl_data.IGNORE_INDEX:
    previous = {**previous, "loss": {**loss, "ignore_index": None}}
  for section, added in ADDED_FIELDS.items():
    if section in previous:
      previous = {**previous, section: {**added, **previous[section]}}
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
    postprocess.POSTPROCESSING_FILE,
    postprocess.STATS_FILE,
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
  flat = {k: v for k, v in summary.items() if not isinstance(v, (dict, str))}
  for name, values in summary.get("per_class", {}).items():
    for key, value in values.items():
      flat[f"{key}/{name}"] = value
  after = summary.get("postprocessed", {})
  flat.update({f"postprocessed/{k}": v for k, v in after.items() if not isinstance(v, dict)})
  return flat


def _cell(value, width: int) -> str:
  return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def _table_row(label: str, summary: dict, key: str, names: list) -> str:
  return f"{label:<27}{_cell(summary.get(key), 9)}" + "".join(
    _cell(summary["per_class"][n].get(key), 12) for n in names
  )


def _print_table(summary: dict, plot_paths: dict) -> None:
  names = list(summary["per_class"])
  header = f"{'metric':<27}{'mean':>9}" + "".join(f"{n[:11]:>12}" for n in names)
  lines = [header, "-" * len(header)]
  lines += [_table_row(key, summary, key, names) for key in SUMMARY_KEYS if key in summary]
  lines.append(
    f"{'images with the class':<27}{'':>9}"
    + "".join(f"{summary['per_class'][n]['num_present']:>12d}" for n in names)
  )
  after = summary.get("postprocessed")
  if after is not None:
    lines.append("after the post-processing chosen on validation:")
    for key in ("dice", "hd95", "nsd", "absent_false_positive_rate"):
      lines.append(_table_row(f"  {key}", after, key, names))
  unit = summary.get("distance_unit", "px")
  print(
    "\n".join(
      [
        "",
        "test metrics (mean over foreground classes; dice, iou, hd95, nsd, precision, recall "
        f"over the images holding the class, '-' where none does; distances in {unit}):",
      ]
      + lines
      + [""]
    )
  )
  for name, path in plot_paths.items():
    print(f"{name:>20}: {path}")


class _Ending(NamedTuple):
  """How training ended, recorded in ``summary.json``: the last step trained, the step of
  the checkpoint tested (the best by validation Dice) and whether early stopping ended it
  before ``train.steps``."""

  steps_trained: int
  best_step: int
  stopped_early: bool


def _finish_without_test(workdir: str, ending: _Ending, lead: bool) -> dict:
  """The best checkpoint's validation record, written as ``summary.json["validation"]``."""
  records = [r for r in reporting.read_metrics(workdir) if r["split"] == "val"]
  if not records:
    raise ValueError(f"{workdir}: the run has no validation record to report.")
  at_best = [r for r in records if r["step"] == ending.best_step]
  validation = {**(at_best or records)[-1], "checkpoint_step": ending.best_step}
  if lead:
    path = os.path.join(workdir, SUMMARY_FILE)
    record = {"validation": validation, **ending._asdict()}
    write_errors.write_json(path, record, what="the summary", workdir=workdir)
  return validation


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, overwrite: bool = False
) -> dict:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), then evaluates
  the best checkpoint on the test split and writes the summary and plots.

  Training ends at ``train.steps``, or earlier when ``train.patience`` validations in a
  row did not improve the validation Dice (early stopping). Returns the test summary (also
  in ``workdir/summary.json`` under ``"test"``, beside ``steps_trained``, ``best_step`` and
  ``stopped_early``). With ``config.train.evaluate_test`` false the test split is never
  opened: the result is the best checkpoint's validation record (``summary.json`` under
  ``"validation"``), what the study tunes settings on. Raises ``Diverged`` or
  ``OutOfMemory`` with a message for the user, and ``preemption.Preempted`` after saving a
  checkpoint when a signal asked the run to stop (inside ``preemption.listening()``).
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

  def evaluate(self, state, split: str, at_step: int, keep: int = 0, **options) -> dict:
    """:func:`train.scoring.evaluate_split` of ``split`` at ``state``; ``options``:
    ``on_image``, ``postprocessing``."""
    self.predictor.load(state.params, state.rest)
    data = self.splits[split]
    return scoring.evaluate_split(
      self.predictor,
      self.score_fn,
      datasets.eval_examples(self.config, data),
      weight=float(optim.loss_weight_schedule(self.config)(at_step)),
      class_names=self.class_names,
      ignore_index=self.ignore_index,
      keep=keep,
      preprocessing=data.preprocessing,
      nsd_tolerance=self.config.inference.nsd_tolerance,
      **options,
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
  in_channels = np.shape(train.source[0]["image"])[-1]
  config_checks.check_memory(
    config,
    shape=config.data.patch_size or datasets.spatial_shape(config, train),
    in_channels=in_channels,
    num_classes=len(train.class_names),
    device_count=jax.device_count(),
    device=jax.devices()[0],
  )
  model = step_lib.make_model(
    config,
    in_channels=in_channels,
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
    folds.write_record(config, workdir, train)  # split.json: the fold's cases, if any
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
  """Where training stands: the last step done, its state and data position, the
  bookkeeping of the log interval it is in and the validations since the best one."""

  step: int
  state: Any
  iterator: Any
  means: bookkeeping.StepMeans
  nonfinite: bookkeeping.NonfiniteSteps
  early: bookkeeping.EarlyStopping


def _early_stopping(config: ml_collections.ConfigDict, saved: dict | None = None):
  train = config.train
  if saved is None:
    return bookkeeping.EarlyStopping(train.patience, train.min_delta)
  return bookkeeping.EarlyStopping.from_state(
    saved, patience=train.patience, min_delta=train.min_delta
  )


def _resume(run: _Run, state) -> _Progress:
  """The newest readable checkpoint's progress, or step 0 with ``state``."""
  iterator = iter(datasets.train_pipeline(run.config, run.splits["train"]))
  limit = run.config.train.max_nonfinite_steps
  start, restored, data_state, saved = checkpoints.restore_newest_readable(
    run.checkpoints, run.abstract_state, os.path.join(run.workdir, "corrupt_checkpoints")
  )
  if not start:
    return _Progress(
      0,
      state,
      iterator,
      bookkeeping.StepMeans(),
      bookkeeping.NonfiniteSteps(limit),
      _early_stopping(run.config),
    )
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
    # Checkpoints from before early stopping were written by runs without it.
    _early_stopping(run.config, saved.get("early_stopping")),
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


def _validate(run: _Run, state, writer: reporting.MetricWriter, step: int) -> float | None:
  """Validation Dice at ``step`` (written to the metrics), what "best" is chosen by; None
  when no validation image holds a foreground class."""
  result = run.evaluate(state, "validation", step)
  writer.write(step, "val", flatten_summary(result["summary"]))
  return result["summary"]["dice"]


def _best_metric(val_dice: float | None) -> float:
  # A step without a validation Dice is never "best" while any other step has one.
  return -1.0 if val_dice is None else val_dice


def _validate_and_track(run: _Run, state, writer, bar, step: int, progress: _Progress):
  """``(checkpoint metric, stop early)`` of the validation at ``step``. At a stop in the
  middle of a log interval, the interval's train record is written (its throughput without
  the validation): no step goes unlogged."""
  started = time.perf_counter()
  val_dice = _validate(run, state, writer, step)
  stop_early = progress.early.update(val_dice)
  if stop_early and progress.means.count:
    progress.means.exclude(time.perf_counter() - started)
    _log_train(writer, bar, step, progress.means, progress.nonfinite, run.config.train.batch_size)
  return _best_metric(val_dice), stop_early


def _log_train(writer, bar, step: int, means, nonfinite, batch_size: int) -> None:
  record = {**means.record(batch_size), "nonfinite_steps": nonfinite.skipped}
  writer.write(step, "train", record)
  bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{record['images_per_s']:.0f}")


def _train(run: _Run, progress: _Progress, writer: reporting.MetricWriter) -> int:
  """Steps from ``progress.step`` to ``train.steps``: logs every ``log_every`` steps,
  validates and saves on schedule, and ends early when the early-stopping tracker says so
  (after saving that step). Returns the last step trained. Stops with
  ``Diverged``, or with ``preemption.Preempted`` after saving when a signal asks for it.
  The progress bar is closed first either way, so that an error is the console's last
  line."""
  train = run.config.train
  state, iterator, means, nonfinite, early = progress[1:]
  if early.stopped:  # a signal or a kill came between the stopping step's save and the end
    return progress.step
  last = progress.step
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
        _log_train(writer, bar, step, means, nonfinite, train.batch_size)
      bar.update(1)
      last, metric, stop_early = step, None, False
      if evaluate_now:
        metric, stop_early = _validate_and_track(run, state, writer, bar, step, progress)
      if save_now:
        counters = {
          "means": means.state(),
          "nonfinite": nonfinite.state(),
          "early_stopping": early.state(),
        }
        checkpoints.save(
          run.checkpoints, step, state, iterator.get_state(), metric, progress=counters
        )
        means.restart_clock()  # evaluation and saving are not training throughput
      if stop_signal is not None:
        checkpoint_dir = os.path.join(os.path.abspath(run.workdir), "checkpoints")
        raise preemption.Preempted(
          preemption.message(stop_signal, step, checkpoint_dir), stop_signal
        )
      if stop_early:
        logging.info(
          "step %d: no validation Dice improvement by more than %g in %d evaluations (best "
          "%s); stopping early",
          step,
          train.min_delta,
          early.since_best,
          early.best,
        )
        break
  logging.info(
    "process %d of %d: parameter checksum %.12e",
    jax.process_index(),
    jax.process_count(),
    parallel.local_checksum(state.params),
  )
  return last


def _report_finished(workdir: str, lead: bool) -> dict:
  with open(os.path.join(workdir, SUMMARY_FILE)) as f:
    finished = json.load(f)
  logging.info("%s is finished; nothing to train", workdir)
  if "test" not in finished:
    return finished["validation"]
  if lead:
    _print_table(finished["test"], finished["plots"])
  return finished["test"]


def _choose_postprocessing(run: _Run, best_state, steps: int):
  """The best checkpoint's post-processing, chosen on the validation split and saved."""
  search = PostprocessingSearch(len(run.class_names), ignore_index=run.ignore_index)
  on_image, rows = postprocess.collector(search, run.splits["validation"].preprocessing)
  run.evaluate(best_state, "validation", steps, on_image=on_image)
  rows = postprocess.gather(rows)
  chosen = postprocess.choose_from_rows(
    search, rows, max_present_dice_drop=run.config.inference.postprocess_max_dice_drop
  )
  if run.lead:
    path = postprocess.write(run.workdir, chosen, rows, run.class_names)
    rules = {
      name: row["rule"]
      for name, row in chosen.summary(class_names=run.class_names)["per_class"].items()
    }
    logging.info("post-processing chosen on validation (%s): %s", path, rules)
  return chosen


def _test_best(run: _Run, writer: reporting.MetricWriter, ending: _Ending) -> dict:
  """Evaluates the best checkpoint on the test split; writes the per-image results, the
  summary and the plots."""
  best_state, _, _ = checkpoints.restore(run.checkpoints, ending.best_step, run.abstract_state)
  steps = ending.steps_trained  # the test record ends the run's metrics
  chosen = (
    _choose_postprocessing(run, best_state, steps) if run.config.inference.postprocess else None
  )
  test = run.evaluate(
    best_state, "test", steps, keep=run.config.train.num_overlays, postprocessing=chosen
  )
  summary = {**test["summary"], "checkpoint_step": ending.best_step}
  if chosen is not None:
    summary["postprocessing"] = chosen.summary(class_names=run.class_names)
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
      {"test": summary, "plots": plot_paths, **ending._asdict()},
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
  # The summary is written last: without it, a run stopped (early or not) is tested again.
  trained = progress.step >= config.train.steps or progress.early.stopped
  if trained and os.path.exists(os.path.join(workdir, SUMMARY_FILE)):
    return _report_finished(workdir, run.lead)
  writer = reporting.MetricWriter(workdir, enabled=run.lead, resume_step=progress.step)
  try:
    last = _train(run, progress, writer)
    best = checkpoints.best_step(run.checkpoints) or run.checkpoints.latest_step()
    ending = _Ending(int(last), int(best), last < config.train.steps)
    if not config.train.evaluate_test:
      return _finish_without_test(workdir, ending, run.lead)
    return _test_best(run, writer, ending)
  finally:
    writer.close()
