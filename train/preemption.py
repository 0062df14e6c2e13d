"""Stopping on SIGTERM or SIGINT at a step every process agrees on, after a checkpoint.

SLURM, Kubernetes and preemptible cloud and TPU VMs stop a job with SIGTERM and kill it a
grace period later; a user stops one with Ctrl-C (SIGINT). Either way the run should end
the step it is in, save a checkpoint and exit with ``128 + signal``, so that the same
command resumes it exactly.

Inside :func:`listening` the signal only sets a flag, which the training loop reads after
each step through :func:`stop_signal`. A second signal stops the process at once.

With several processes every one must stop at the same step, or the last collective
hangs. JAX's preemption service (started by ``jax.distributed.initialize``) catches
SIGTERM in C++, tells every process, and picks the first step all of them can still
reach; :func:`stop_signal` asks it (``multihost_utils.reached_preemption_sync_point``)
every step. There SIGTERM is left to JAX and SIGINT is turned into a SIGTERM to this
process, so that Ctrl-C in one terminal also reaches the others.
"""

from __future__ import annotations

import contextlib
import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[int] = []  # the signals caught while listening, in order
_listening = False


class Preempted(Exception):
  """The run stopped on a signal after saving a checkpoint; exit with ``exit_code``."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
    self.exit_code = 128 + signum


def _multi_process() -> bool:
  return jax.process_count() > 1


def _on_signal(signum: int, frame) -> None:
  del frame
  if _received:
    # A second signal: the user or the scheduler will not wait for the step to end.
    signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
    os.kill(os.getpid(), signum)
    return
  _received.append(signum)
  logging.warning(
    "%s received: stopping after this step, with a checkpoint", signal.Signals(signum).name
  )
  if _multi_process() and signum != signal.SIGTERM:
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption service listens for SIGTERM


@contextlib.contextmanager
def listening():
  """Within it, SIGTERM and SIGINT ask the training loop to stop (see the module docstring);
  the previous handlers come back on exit. Nested uses share the outer one."""
  global _listening
  if _listening:
    yield
    return
  # In a multi-process run JAX's own SIGTERM handler must stay: it tells the other processes.
  caught = (signal.SIGINT,) if _multi_process() else SIGNALS
  previous = {s: signal.signal(s, _on_signal) for s in caught}
  _listening = True
  try:
    yield
  finally:
    _listening = False
    _received.clear()
    for s, handler in previous.items():
      signal.signal(s, handler)


def stop_signal(step: int) -> int | None:
  """The signal to stop for after ``step``, or ``None`` to go on.

  Every process must call it after every step, with the same ``step``: with several
  processes it returns a signal at the same step on all of them (SIGTERM, or SIGINT on the
  process that got one).
  """
  if not _multi_process():
    return _received[0] if _received else None
  try:
    reached = multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # jax_enable_preemption_service is off: no agreement is possible
    return None
  if not reached:
    return None
  return _received[0] if _received else signal.SIGTERM


def message(signum: int, step: int, checkpoint_dir: str) -> str:
  """What the user reads: where the run stopped and how to go on."""
  return (
    f"stopped by {signal.Signals(signum).name} after step {step}; its checkpoint is in "
    f"{os.path.join(checkpoint_dir, str(step))}. Run the same command to resume."
  )
