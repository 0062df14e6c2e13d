"""Signals while listening: a flag for the loop, one stop step, a second signal stops at once."""

import os
import signal

import pytest

from train import preemption


def test_without_a_signal_the_loop_goes_on():
  with preemption.listening():
    assert preemption.stop_signal(1) is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_asks_to_stop_after_the_step(signum):
  with preemption.listening():
    os.kill(os.getpid(), signum)  # handled before kill returns, in this thread
    assert preemption.stop_signal(7) == signum
    assert preemption.stop_signal(8) == signum


def test_handlers_are_restored_and_the_request_forgotten_on_exit():
  before = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  with preemption.listening():
    os.kill(os.getpid(), signal.SIGTERM)
    with preemption.listening():  # nested: shares the outer one
      assert preemption.stop_signal(1) == signal.SIGTERM
    assert preemption.stop_signal(2) == signal.SIGTERM
  assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == before
  assert preemption.stop_signal(3) is None


def test_a_second_sigint_stops_at_once():
  with preemption.listening():
    os.kill(os.getpid(), signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)


def test_preempted_exits_with_128_plus_the_signal_and_says_how_to_resume():
  stopped = preemption.Preempted(preemption.message(signal.SIGTERM, 37, "/w/checkpoints"), 15)
  assert stopped.exit_code == 143
  assert str(stopped) == (
    "stopped by SIGTERM after step 37; its checkpoint is in /w/checkpoints/37. Run the same "
    "command to resume."
  )
