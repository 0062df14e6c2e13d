"""Opening a run made by ``python -m train``: its config, its inference record, a checkpoint.

``train.evaluate`` and ``train.predict`` start here; neither needs the training data.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Sequence

import jax
import ml_collections

from regionloss_jax.data import Preprocessing
from train import checkpoints, config_checks, optim, parallel
from train import step as step_lib
from train.loop import CONFIG_FILE, INFERENCE_FILE
from train.user_errors import ConfigError


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A run's config, what its inputs are, and the model state of one checkpoint."""

  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  preprocessing: Preprocessing
  window: tuple[int, ...]
  eval_graphdef: object
  params: object
  rest: object
  step: int


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: {workdir} is not a run made by python -m train.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  config_checks.check_config(config)
  return config


def checkpoint_step(mngr, checkpoint: str, workdir: str) -> int:
  """``best`` (by validation Dice), ``latest`` or a step number, as a step that exists."""
  if checkpoint == "best":
    step = checkpoints.best_step(mngr) or mngr.latest_step()
  elif checkpoint == "latest":
    step = mngr.latest_step()
  else:
    try:
      step = int(checkpoint)
    except ValueError:
      raise ConfigError(
        f"--checkpoint={checkpoint!r}: use best, latest or a step number."
      ) from None
  if step is None or step not in mngr.all_steps():
    raise ConfigError(
      f"checkpoint {checkpoint!r} not found in {workdir}/checkpoints; "
      f"available steps: {sorted(mngr.all_steps())}."
    )
  return step


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """What a run's files say before any checkpoint is read: its config and inference record."""

  workdir: str
  config: ml_collections.ConfigDict
  class_names: tuple[str, ...]
  preprocessing: Preprocessing
  window: tuple[int, ...]


def read_run(workdir: str) -> RunRecord:
  """The config and ``inference.json`` of the run in ``workdir``.

  Raises ``FileNotFoundError`` / ``ConfigError`` naming what is missing or wrong.
  """
  config = load_config(workdir)
  path = os.path.join(workdir, INFERENCE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(
      f"{path} not found: the run in {workdir} was made before runs "
      "recorded their preprocessing; train it again to predict with it."
    )
  with open(path) as f:
    record = json.load(f)
  return RunRecord(
    workdir,
    config,
    tuple(record["class_names"]),
    Preprocessing.from_dict(record["preprocessing"]),
    tuple(record["window"]),
  )


def open_run(workdir: str, *, checkpoint: str = "best") -> TrainedRun:
  """The run in ``workdir`` with the parameters of ``checkpoint`` restored.

  Raises ``FileNotFoundError`` / ``ValueError`` naming what is missing.
  """
  return restore(read_run(workdir), checkpoint=checkpoint)


def restore(record: RunRecord, *, checkpoint: str = "best") -> TrainedRun:
  """``record``'s run with the parameters of ``checkpoint`` restored."""
  config, workdir = record.config, record.workdir
  eval_graphdef, abstract = step_lib.abstract_state(
    config,
    optim.make_optimizer(config),
    in_channels=record.preprocessing.channels,
    num_classes=len(record.class_names),
  )
  # Every leaf whole on this process's devices, whatever topology wrote the checkpoint.
  local = parallel.replicated(parallel.local_mesh())
  abstract = parallel.abstract(abstract, jax.tree.map(lambda _: local, abstract))
  mngr = checkpoints.manager(workdir, keep=config.train.keep_checkpoints)
  step = checkpoint_step(mngr, checkpoint, workdir)
  state, _, _ = checkpoints.restore(mngr, step, abstract)
  return TrainedRun(
    config,
    record.class_names,
    record.preprocessing,
    record.window,
    eval_graphdef,
    state.params,
    state.rest,
    int(step),
  )


def member_workdirs(workdirs: Sequence[str]) -> list[str]:
  """The runs of an ensemble: each of ``workdirs`` that is a run, and for a cross-validation
  directory (no ``config.json`` of its own, ``fold_*/config.json`` inside) its folds, in
  fold order. A directory that is neither stays, for :func:`read_run` to name.

  Raises ``ConfigError`` when a run is given twice (it would weigh double).
  """
  members = []
  for workdir in workdirs:
    folds = sorted(glob.glob(os.path.join(glob.escape(workdir), "fold_*", CONFIG_FILE)))
    if os.path.exists(os.path.join(workdir, CONFIG_FILE)) or not folds:
      members.append(workdir)
    else:
      members += sorted((os.path.dirname(f) for f in folds), key=_fold_order)
  seen = {}
  for member in members:
    key = os.path.realpath(member)
    if key in seen:
      raise ConfigError(
        f"--workdir: {member} is in the ensemble twice (also as {seen[key]}); give each run once."
      )
    seen[key] = member
  return members


def _fold_order(path: str):
  """``fold_2`` before ``fold_10``; names with no number after, alphabetically."""
  suffix = os.path.basename(path).removeprefix("fold_")
  return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)


def check_members_agree(records: Sequence[RunRecord]) -> None:
  """An ensemble averages class probabilities of one input prepared once: every run must
  have the first one's class names, preprocessing, spatial dims and loss mode.

  Raises ``ConfigError`` naming the first run that differs, what and how.
  """
  first = records[0]
  for record in records[1:]:
    for what, mine, theirs in _differences(first, record):
      raise ConfigError(
        f"{record.workdir} cannot join an ensemble with {first.workdir}: its {what} is "
        f"{theirs}, not {mine}. The runs of an ensemble must agree on class names, "
        "preprocessing (inference.json), spatial dims and loss mode."
      )


def _differences(a: RunRecord, b: RunRecord):
  if a.class_names != b.class_names:
    yield "class names", list(a.class_names), list(b.class_names)
  prep_a, prep_b = a.preprocessing.to_dict(), b.preprocessing.to_dict()
  changed = sorted(k for k in prep_a.keys() | prep_b.keys() if prep_a.get(k) != prep_b.get(k))
  if changed:
    yield (
      f"preprocessing ({', '.join(changed)})",
      {k: prep_a.get(k) for k in changed},
      {k: prep_b.get(k) for k in changed},
    )
  for field in ("model.spatial_dims", "loss.mode"):
    section, name = field.split(".")
    if a.config[section][name] != b.config[section][name]:
      yield f"config.{field}", repr(a.config[section][name]), repr(b.config[section][name])
