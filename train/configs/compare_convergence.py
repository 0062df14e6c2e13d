"""The study of ``compare.py`` with every run trained to convergence:

  python -m train.compare --config=train/configs/compare_convergence.py --workdir=DIR

``compare.py`` answers "which loss" after a fixed, short budget (250 steps), where a loss
that converges more slowly looks worse than it is. Here each run trains until its
validation Dice stops improving: it is validated (and checkpointed) every 100 steps and
ends after ``train.patience`` = 5 validations in a row (500 steps) without a new best, or
at ``train.steps`` = 4000, a generous maximum; the best checkpoint by validation Dice is
tested, as always. ``report.md`` gives, per loss, the steps each run trained and the step
of its tested checkpoint, and how many runs stopped early.

The learning rate follows nnU-Net's poly schedule, ``lr * (1 - t / T) ** 0.9``, after a
short linear warmup (20 steps). ``T`` is ``train.steps``, the maximum: nnU-Net decays over
its fixed budget, and an early stop does not rescale the schedule, so every loss sees the
same learning rate at the same step, however long it trains. Tuning runs (validation only)
stop early the same way.

Override any field as usual, e.g. ``--config.base.train.patience=0`` for the full 4000
steps everywhere, or ``--config.base.train.min_delta=0.002`` to count only gains above that
as improvements.
"""

from train.configs import compare


def get_config():
  config = compare.get_config()
  base = config.base
  base.optimizer.schedule = "poly"
  base.optimizer.poly_power = 0.9
  base.optimizer.warmup_steps = 20
  base.train.steps = 4000
  base.train.eval_every = 100
  # Evaluation steps always save; every stop then has its checkpoint to test.
  base.train.checkpoint_every = 100
  base.train.log_every = 25
  base.train.patience = 5
  base.train.min_delta = 0.0
  return config
