"""Orbax checkpoints of a run: ``workdir/checkpoints/<step>/``.

Each checkpoint holds the training state (parameters, optimiser state, batch statistics,
RNG state, step), the data iterator's position and the loop's counters of the current log
interval, so that a resumed run sees exactly the batches and random numbers an
uninterrupted one would, and logs the same numbers. Kept: the latest
``keep_checkpoints`` and the best by validation Dice. Orbax writes into a temporary
directory and renames it when complete, so a half-written checkpoint is never read.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from train.write_errors import writing

BEST_METRIC = "val_dice"
PROGRESS = "progress"


def manager(workdir: str, *, keep: int) -> ocp.CheckpointManager:
  policy = ocp.checkpoint_managers.AnyPreservationPolicy(
    [
      ocp.checkpoint_managers.LatestN(n=keep),
      ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[BEST_METRIC],
        reverse=False,
        n=1,
        keep_checkpoints_without_metrics=False,
      ),
    ]
  )
  # The policy decides what is kept; best_step() reads best_fn and best_mode, without which
  # it answers the latest step (orbax 0.11).
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=lambda m: m[BEST_METRIC],
    best_mode="max",
    enable_async_checkpointing=False,
  )
  return ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), "checkpoints"), options=options
  )


@jax.jit
def _all_finite(tree) -> jax.Array:
  # One program and one host sync for the whole state: eager per-leaf checks compiled two
  # small programs per parameter shape, about 3 s per run on this project's 2-core CPU.
  checks = [
    jnp.all(jnp.isfinite(leaf))
    for leaf in jax.tree.leaves(tree)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def save(
  mngr: ocp.CheckpointManager,
  step: int,
  state,
  data_state: dict,
  val_dice: float | None = None,
  *,
  progress: dict | None = None,
) -> bool:
  """Saves checkpoint ``step``: the training state, the data iterator's position and the
  loop's ``progress`` (:mod:`train.bookkeeping`, JSON). Refuses (returns False, logs why) a
  state that holds a non-finite number, so that a resumed run never starts from one."""
  if not bool(_all_finite(state)):
    logging.warning("step %d: the state holds non-finite values; checkpoint not written", step)
    return False
  items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state)}
  if progress is not None:
    items[PROGRESS] = ocp.args.JsonSave(progress)
  metrics = None if val_dice is None else {BEST_METRIC: float(val_dice)}
  # A failed write (full or read-only disk) raises WriteFailed: orbax raises OSError from
  # its own file operations, tensorstore a ValueError naming the OS error for the arrays.
  # Either leaves at most <step>.orbax-checkpoint-tmp, which orbax never lists as a
  # checkpoint and replaces when it saves that step again.
  directory = str(mngr.directory)
  _quiet_closed_loop_callbacks()
  with writing(directory, f"the checkpoint of step {step}", workdir=os.path.dirname(directory)):
    mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    mngr.wait_until_finished()
  return True


def _quiet_closed_loop_callbacks() -> None:
  """Keeps the console to the one-line report of a failed checkpoint write.

  When one array write fails, orbax closes its event loop while tensorstore finishes the
  others; each of their callbacks then raises "Event loop is closed", which tensorstore
  reports as unraisable (``sys.unraisablehook``): dozens of tracebacks of one failure.
  Every other unraisable exception still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "quiets_closed_loops", False):
    return

  def hook(unraisable) -> None:
    closed_loop = isinstance(unraisable.exc_value, RuntimeError) and (
      str(unraisable.exc_value) == "Event loop is closed"
    )
    if not closed_loop:
      previous(unraisable)

  hook.quiets_closed_loops = True
  sys.unraisablehook = hook


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """``(state, data_state, progress)`` of checkpoint ``step``, the state shaped like
  ``abstract_state``; ``progress`` is ``{}`` for a checkpoint saved without one."""
  items = {"state": ocp.args.StandardRestore(abstract_state), "data": ocp.args.JsonRestore()}
  # Checkpoints written before 2026-12-03 hold no loop progress.
  if os.path.isdir(os.path.join(str(mngr.directory), str(step), PROGRESS)):
    items[PROGRESS] = ocp.args.JsonRestore()
  restored = mngr.restore(step, args=ocp.args.Composite(**items))
  return restored["state"], restored["data"], restored.get(PROGRESS) or {}


def restore_newest_readable(mngr: ocp.CheckpointManager, abstract_state, quarantine: str):
  """``(step, state, data_state, progress)`` of the newest checkpoint that reads back, or
  ``(0, None, None, {})`` when there is none.

  A checkpoint that fails to read (a truncated or corrupt file) is reported, moved to
  ``quarantine/<step>`` (kept for inspection, out of the manager's way) and the previous
  one is tried.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state, data_state, progress = restore(mngr, step, abstract_state)
    except Exception as error:  # noqa: BLE001  (orbax and tensorstore raise many types)
      os.makedirs(quarantine, exist_ok=True)
      target = os.path.join(quarantine, str(step))
      os.replace(os.path.join(str(mngr.directory), str(step)), target)
      logging.error(
        "checkpoint %d cannot be read (%s: %s); moved it to %s and trying the previous one",
        step,
        type(error).__name__,
        str(error)[:300],
        target,
      )
      mngr.reload()
      continue
    return step, state, data_state, progress
  return 0, None, None, {}


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The step with the highest validation Dice, or ``None`` if none was evaluated."""
  return mngr.best_step()
