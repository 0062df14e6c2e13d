"""What the training loop counts between host syncs: the step metrics of a log interval,
the steps whose loss or gradient was not finite, and the validations since the last
improvement (early stopping).

All three are saved in each checkpoint (:meth:`state` and ``from_state``), so that a run
stopped in the middle of a log interval (a preemption) and resumed writes the same records,
and stops at the same step, as one that never stopped.
"""

from __future__ import annotations

import time

import jax


class StepMeans:
  """Running sums of the step metrics since the last record, and the time they took.

  The sums stay on the device until :meth:`record`: adding a device scalar does not wait
  for the step that computes it.
  """

  def __init__(self, sums: dict | None = None, count: int = 0):
    self.sums = dict(sums or {})
    self.count = count
    self.restart_clock()

  def add(self, metrics: dict) -> None:
    for key, value in metrics.items():
      self.sums[key] = self.sums.get(key, 0.0) + value
    self.count += 1

  def restart_clock(self) -> None:
    """Time spent from here on counts as training; evaluation and saving do not."""
    self.clock = time.perf_counter()

  def exclude(self, seconds: float) -> None:
    """``seconds`` spent since the clock started (an evaluation) do not count as training."""
    self.clock += seconds

  def record(self, batch_size: int) -> dict:
    """``{metric: mean over the interval, "images_per_s": ...}``; starts a new interval."""
    record = {key: float(value) / self.count for key, value in self.sums.items()}
    record["images_per_s"] = self.count * batch_size / (time.perf_counter() - self.clock)
    self.sums, self.count = {}, 0
    self.restart_clock()
    return record

  def state(self) -> dict:
    # float() of a float32 scalar is exact, and adding the next float32 value to it gives
    # the float32 sum of an uninterrupted run.
    return {"sums": {k: float(v) for k, v in self.sums.items()}, "count": self.count}

  @classmethod
  def from_state(cls, state: dict) -> StepMeans:
    return cls(state["sums"], state["count"])


class NonfiniteSteps:
  """The steps whose update was skipped because the loss or a gradient was not finite.

  Each step's flag stays on the device until :meth:`check`, one host sync for many steps.
  ``limit`` consecutive flagged steps mean the run has diverged.
  """

  def __init__(self, limit: int, *, consecutive: int = 0, skipped: int = 0):
    self.limit = limit
    self.consecutive = consecutive  # flagged steps in a row up to the last check
    self.skipped = skipped  # flagged steps in the whole run
    self.pending: list = []

  def add(self, flag) -> None:
    self.pending.append(flag)

  def check(self, step: int) -> int | None:
    """Reads the flags of the steps up to ``step``; returns the step at which ``limit``
    consecutive flags were reached (the run has diverged), else ``None``."""
    flags = [int(f) for f in jax.device_get(self.pending)]
    self.pending = []
    first = step - len(flags) + 1
    for offset, flag in enumerate(flags):
      self.consecutive = self.consecutive + 1 if flag else 0
      self.skipped += flag
      if self.consecutive >= self.limit:
        return first + offset
    return None

  def state(self) -> dict:
    """Call after :meth:`check`: flags not yet read are not part of it."""
    if self.pending:
      raise ValueError("NonfiniteSteps.state() with unread flags; call check() first")
    return {"consecutive": self.consecutive, "skipped": self.skipped}

  @classmethod
  def from_state(cls, state: dict, *, limit: int) -> NonfiniteSteps:
    return cls(limit, consecutive=state["consecutive"], skipped=state["skipped"])


class EarlyStopping:
  """Stops training after ``patience`` consecutive validations without an improvement.

  An improvement is a validation Dice above the best so far by more than ``min_delta`` (the
  first Dice always is one). A Dice of ``None`` (no validation image holds a class) never
  is. ``patience`` 0 never stops. The state is saved in each checkpoint, so that a resumed
  run stops at the step an uninterrupted one does.
  """

  def __init__(
    self,
    patience: int,
    min_delta: float = 0.0,
    *,
    best: float | None = None,
    since_best: int = 0,
  ):
    self.patience = patience
    self.min_delta = min_delta
    self.best = best  # the Dice of the last improvement
    self.since_best = since_best  # validations since then

  @property
  def stopped(self) -> bool:
    return self.patience > 0 and self.since_best >= self.patience

  def update(self, dice: float | None) -> bool:
    """Counts one validation's Dice; returns whether training should stop after it."""
    if dice is not None and (self.best is None or dice > self.best + self.min_delta):
      self.best, self.since_best = float(dice), 0
    else:
      self.since_best += 1
    return self.stopped

  def state(self) -> dict:
    return {"best": self.best, "since_best": self.since_best}

  @classmethod
  def from_state(cls, state: dict, *, patience: int, min_delta: float) -> EarlyStopping:
    return cls(patience, min_delta, best=state["best"], since_best=state["since_best"])
