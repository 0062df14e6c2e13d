"""What the training loop counts between host syncs: the step metrics of a log interval and
the steps whose loss or gradient was not finite.

Both are saved in each checkpoint (:meth:`state` and ``from_state``), so that a run stopped
in the middle of a log interval (a preemption) and resumed writes the same records as one
that never stopped.
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
