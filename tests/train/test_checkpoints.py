"""Which checkpoints a run keeps and which one it tests: the latest ``keep`` and the best by
validation Dice, and ``best_step`` names the best, also after the run is reopened."""

import orbax.checkpoint as ocp

from train import checkpoints


def _save(mngr, step, dice):
  metrics = None if dice is None else {checkpoints.BEST_METRIC: dice}
  mngr.save(step, args=ocp.args.Composite(data=ocp.args.JsonSave({"step": step})), metrics=metrics)
  mngr.wait_until_finished()


def test_best_step_is_the_best_validation_dice_not_the_latest(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), keep=1)
  # A preemption save has no metric; the best is step 2, then the run gets worse.
  for step, dice in ((1, 0.5), (2, 0.9), (3, 0.7), (4, None), (5, 0.6)):
    _save(mngr, step, dice)
  assert mngr.all_steps() == [2, 5]  # the best and the latest
  assert checkpoints.best_step(mngr) == 2
  reopened = checkpoints.manager(str(tmp_path), keep=1)
  assert checkpoints.best_step(reopened) == 2


def test_best_step_of_a_run_without_validation_is_none(tmp_path):
  mngr = checkpoints.manager(str(tmp_path), keep=2)
  _save(mngr, 1, None)
  assert checkpoints.best_step(mngr) is None
