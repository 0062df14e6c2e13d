"""Where a run's numbers go: ``metrics.jsonl`` and TensorBoard event files (process 0 only).

``metrics.jsonl`` holds one JSON object per line: ``{"step", "split", "loss", <terms>,
<metrics>}``. On resume the lines after the restored step are dropped first, so the file of
a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorboardX
from absl import logging

from train.write_errors import writing

METRICS_FILE = "metrics.jsonl"


def _scalars(record: dict) -> dict:
  out = {}
  for key, value in record.items():
    if isinstance(value, (int, float, np.floating, np.integer)) or (
      hasattr(value, "shape") and np.ndim(value) == 0
    ):
      value = float(value)
      out[key] = value if math.isfinite(value) else None
  return out


def read_metrics(workdir: str) -> list[dict]:
  """The records of ``workdir/metrics.jsonl``, without a last line a full disk cut off
  (a resumed run rewrites the file without it); a bad line before the last still raises."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = [json.loads(line) for line in lines[:-1]]
  if lines:
    try:
      records.append(json.loads(lines[-1]))
    except json.JSONDecodeError:
      logging.warning("%s: dropped its truncated last line %r", path, lines[-1][:80])
  return records


class MetricWriter:
  """Appends records to ``metrics.jsonl`` and TensorBoard; a no-op when ``enabled`` is false.

  A write that fails (a full or read-only disk) raises ``WriteFailed`` naming the file.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    if not enabled:
      return
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
    tmp = self.path + ".tmp"
    with self._writing(self.path):
      with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.path)
    self.tensorboard_dir = os.path.join(workdir, "tensorboard")
    with self._writing(self.tensorboard_dir):
      self.tensorboard = tensorboardX.SummaryWriter(self.tensorboard_dir)

  def _writing(self, path: str):
    return writing(path, "the metrics", workdir=self.workdir)

  def write(self, step: int, split: str, record: dict) -> None:
    if not self.enabled:
      return
    scalars = _scalars(record)
    with self._writing(self.path), open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "split": split, **scalars}) + "\n")
    # tensorboardX writes events from a thread; the flush here writes them from this one,
    # so that a failed write surfaces here.
    with self._writing(self.tensorboard_dir):
      for key, value in scalars.items():
        if value is not None:
          self.tensorboard.add_scalar(f"{split}/{key}", value, int(step))
      self.tensorboard.flush()

  def close(self) -> None:
    if self.enabled:
      with self._writing(self.tensorboard_dir):
        self.tensorboard.close()
