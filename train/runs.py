"""Opening a run made by ``python -m train``: its config, its inference record, a checkpoint.

``train.evaluate`` and ``train.predict`` start here; neither needs the training data.
"""

from __future__ import annotations

import dataclasses
import json
import os

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


def open_run(workdir: str, *, checkpoint: str = "best") -> TrainedRun:
  """The run in ``workdir`` with the parameters of ``checkpoint`` restored.

  Raises ``FileNotFoundError`` / ``ValueError`` naming what is missing.
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
  preprocessing = Preprocessing.from_dict(record["preprocessing"])
  class_names = tuple(record["class_names"])
  eval_graphdef, abstract = step_lib.abstract_state(
    config,
    optim.make_optimizer(config),
    in_channels=preprocessing.channels,
    num_classes=len(class_names),
  )
  # Every leaf whole on this process's devices, whatever topology wrote the checkpoint.
  local = parallel.replicated(parallel.local_mesh())
  abstract = parallel.abstract(abstract, jax.tree.map(lambda _: local, abstract))
  mngr = checkpoints.manager(workdir, keep=config.train.keep_checkpoints)
  step = checkpoint_step(mngr, checkpoint, workdir)
  state, _, _ = checkpoints.restore(mngr, step, abstract)
  return TrainedRun(
    config,
    class_names,
    preprocessing,
    tuple(record["window"]),
    eval_graphdef,
    state.params,
    state.rest,
    int(step),
  )
