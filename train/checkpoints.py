"""Orbax checkpoints of a run: ``workdir/checkpoints/<step>/``.

Each checkpoint holds the training state (parameters, optimiser state, batch statistics,
RNG state, step) and the data iterator's position, so that a resumed run sees exactly the
batches and random numbers an uninterrupted one would. Kept: the latest
``keep_checkpoints`` and the best by validation Dice. Orbax writes into a temporary
directory and renames it when complete, so a half-written checkpoint is never read.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

BEST_METRIC = "val_dice"


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
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy, enable_async_checkpointing=False
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
  mngr: ocp.CheckpointManager, step: int, state, data_state: dict, val_dice: float | None = None
) -> bool:
  """Saves checkpoint ``step``; refuses (returns False, logs why) a state that holds a
  non-finite number, so that a resumed run never starts from one."""
  if not bool(_all_finite(state)):
    logging.warning("step %d: the state holds non-finite values; checkpoint not written", step)
    return False
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state))
  metrics = None if val_dice is None else {BEST_METRIC: float(val_dice)}
  mngr.save(step, args=args, metrics=metrics, force=True)
  mngr.wait_until_finished()
  return True


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state):
  """``(state, data_state)`` of checkpoint ``step``, the state shaped like ``abstract_state``."""
  restored = mngr.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
    ),
  )
  return restored["state"], restored["data"]


def restore_newest_readable(mngr: ocp.CheckpointManager, abstract_state, quarantine: str):
  """``(step, state, data_state)`` of the newest checkpoint that reads back, or
  ``(0, None, None)`` when there is none.

  A checkpoint that fails to read (a truncated or corrupt file) is reported, moved to
  ``quarantine/<step>`` (kept for inspection, out of the manager's way) and the previous
  one is tried.
  """
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      state, data_state = restore(mngr, step, abstract_state)
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
    return step, state, data_state
  return 0, None, None


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The step with the highest validation Dice, or ``None`` if none was evaluated."""
  return mngr.best_step()
