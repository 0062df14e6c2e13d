"""A full or read-only disk stops a run with one line, and the same command resumes it.

The unit tests check the messages; the program tests run the real program in subprocesses:
on a disk that fills up after the first checkpoint (``tests/train/failing_writes.py``), on a
real full tmpfs (skipped where mounting is not allowed), with ``metrics.jsonl`` and the log
on ``/dev/full``.
"""

import errno
import json
import os
import re
import subprocess

import pytest

from tests import tiers
from tests.train.helpers import SHARES_TINY_RUN, run_program
from train import reporting, write_errors

# One redraw of the progress bar, e.g. " 17%|█▋        | 1/6 [00:18<01:33, 18.67s/step]".
PROGRESS_BAR = re.compile(r"\s*\d+%\|[^|]*\|[^\]]*\]")


def _error_line(result) -> str:
  """The last line of stderr once the progress bar's redraws are left out: tqdm draws with
  carriage returns, before the error and, closing at exit, after it."""
  lines = [PROGRESS_BAR.sub("", line) for line in re.split(r"[\r\n]", result.stderr)]
  return [line for line in lines if line.strip()][-1]


def _checkpoint(workdir, step: int) -> str:
  return os.path.join(workdir, "checkpoints", str(step))


def _make_checkpoint(workdir, step: int) -> None:
  os.makedirs(_checkpoint(workdir, step))


@pytest.mark.parametrize(
  ("code", "reason", "fix"),
  [
    (errno.ENOSPC, "No space left on device (ENOSPC)", "free space on that disk"),
    (errno.EROFS, "Read-only file system (EROFS)", "make that file system writable"),
    (errno.EACCES, "Permission denied (EACCES)", "fix the permissions"),
    (errno.EDQUOT, "(EDQUOT)", "raise the disk quota"),
    (errno.EFBIG, "(EFBIG)", "ulimit -f"),
  ],
)
def test_message_names_the_file_the_reason_and_the_last_good_checkpoint(
  tmp_path, code, reason, fix
):
  _make_checkpoint(tmp_path, 3)
  _make_checkpoint(tmp_path, 6)
  os.makedirs(_checkpoint(tmp_path, "9.orbax-checkpoint-tmp"))  # not a checkpoint
  path = str(tmp_path / "metrics.jsonl")
  message = write_errors.message("the metrics", path, code, str(tmp_path))
  assert message.startswith(f"cannot write the metrics to {path}: ")
  assert f"{reason}. The last good checkpoint is step 6 in {tmp_path / 'checkpoints'}; " in message
  assert fix in message and message.endswith(" and run the same command to resume.")
  assert "\n" not in message


def test_message_without_a_checkpoint_says_so(tmp_path):
  message = write_errors.message("the config", "/x/config.json", errno.ENOSPC, str(tmp_path))
  assert "There is no checkpoint yet; free space on that disk" in message


def test_writing_turns_a_disk_error_into_write_failed(tmp_path):
  _make_checkpoint(tmp_path, 3)
  path = str(tmp_path / "checkpoints")
  with pytest.raises(write_errors.WriteFailed) as caught:
    with write_errors.writing(path, "the checkpoint of step 6", workdir=str(tmp_path)):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path + "/6.orbax-checkpoint-tmp")
  assert str(caught.value).startswith(
    f"cannot write the checkpoint of step 6 to {path}: Read-only file system (EROFS). "
    f"The last good checkpoint is step 3 in {path}; make that file system writable"
  )
  assert isinstance(caught.value.__cause__, OSError)


def test_writing_reads_the_os_error_of_a_tensorstore_failure(tmp_path):
  # What orbax 0.12.8 raises when tensorstore cannot write an array on a full disk.
  error = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/x/": Failed '
    "to write 231037 bytes to file 7: No space left on device [os_error_code='28']"
  )
  with pytest.raises(write_errors.WriteFailed, match=r"No space left on device \(ENOSPC\)"):
    with write_errors.writing("/x", "the checkpoint of step 6", workdir=str(tmp_path)):
      raise error


@pytest.mark.parametrize(
  "error", [FileNotFoundError(errno.ENOENT, "No such file"), OSError(errno.EIO, "I/O"), KeyError()]
)
def test_writing_leaves_other_errors_alone(tmp_path, error):
  with pytest.raises(type(error)):
    with write_errors.writing("/x", "the metrics", workdir=str(tmp_path)):
      raise error


def test_write_json_keeps_the_previous_file_when_the_write_fails(tmp_path):
  path = str(tmp_path / "summary.json")
  write_errors.write_json(path, {"a": 1}, what="the summary", workdir=str(tmp_path))
  os.symlink("/dev/full", path + ".tmp")
  with pytest.raises(write_errors.WriteFailed, match="cannot write the summary to .*summary.json"):
    write_errors.write_json(path, {"a": 2}, what="the summary", workdir=str(tmp_path))
  assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1}
  assert not os.path.lexists(path + ".tmp")


def test_read_metrics_drops_a_truncated_last_line(tmp_path):
  lines = [json.dumps({"step": 2, "split": "train", "loss": 1.0}), '{"step": 4, "split": "tr']
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
  assert reporting.read_metrics(str(tmp_path)) == [{"step": 2, "split": "train", "loss": 1.0}]
  (tmp_path / "metrics.jsonl").write_text('{"step": 2, "spl\n' + lines[0] + "\n")
  with pytest.raises(json.JSONDecodeError):
    reporting.read_metrics(str(tmp_path))


def _assert_one_line_error(result, *parts: str) -> str:
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-6000:]
  assert "Logging error" not in result.stderr, result.stderr[-6000:]
  message = _error_line(result)
  assert message.startswith("error: cannot write "), result.stderr[-3000:]
  for part in parts:
    assert part in message, message
  return message


def _resumed_from(workdir, step: int) -> None:
  log = (workdir / "log.txt").read_text()
  assert f"resumed from step {step}" in log
  assert "cannot be read" not in log and not (workdir / "corrupt_checkpoints").exists()


@tiers.SLOW
@SHARES_TINY_RUN
def test_checkpoint_write_failure_stops_and_the_same_command_resumes(
  tmp_path, cache_dir, finished_tiny_run, monkeypatch
):
  workdir = tmp_path / "run"
  checkpoint_dir = workdir / "checkpoints"
  monkeypatch.setenv("FAIL_WRITES_UNDER", str(checkpoint_dir))
  failed = run_program(workdir, cache_dir, module="tests.train.failing_writes", check=False)
  _assert_one_line_error(
    failed,
    f"the checkpoint of step 6 to {checkpoint_dir}: No space left on device (ENOSPC)",
    f"The last good checkpoint is step 3 in {checkpoint_dir}",
    "run the same command to resume",
  )
  # Checkpoint 6 was written in full but never renamed into place: orbax must not read it.
  assert sorted(os.listdir(checkpoint_dir)) == ["3", "6.orbax-checkpoint-tmp"]
  assert not (workdir / "summary.json").exists()

  monkeypatch.delenv("FAIL_WRITES_UNDER")
  run_program(workdir, cache_dir)
  _resumed_from(workdir, 3)
  assert sorted(os.listdir(checkpoint_dir)) == ["3", "6"]
  resumed = json.loads((workdir / "summary.json").read_text())["test"]
  assert resumed == json.loads((finished_tiny_run / "summary.json").read_text())["test"]


def _mount_tmpfs(directory, size: str) -> None:
  os.makedirs(directory)
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
    capture_output=True,
    text=True,
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")


@tiers.SLOW
@SHARES_TINY_RUN
def test_a_really_full_disk_stops_the_run_and_the_same_command_resumes(
  tmp_path, cache_dir, finished_tiny_run
):
  # Only checkpoints/ is on the small disk, so that the checkpoint is what fails: one fits
  # (about 320 KiB in 4 KiB pages), two do not.
  workdir = tmp_path / "run"
  checkpoint_dir = workdir / "checkpoints"
  _mount_tmpfs(checkpoint_dir, "450k")
  try:
    failed = run_program(workdir, cache_dir, check=False)
    _assert_one_line_error(
      failed,
      f"the checkpoint of step 6 to {checkpoint_dir}: No space left on device (ENOSPC)",
      f"The last good checkpoint is step 3 in {checkpoint_dir}",
    )
    assert "3" in os.listdir(checkpoint_dir) and "6" not in os.listdir(checkpoint_dir)
    subprocess.run(["mount", "-o", "remount,size=8m", str(checkpoint_dir)], check=True)
    run_program(workdir, cache_dir)
    _resumed_from(workdir, 3)
    resumed = json.loads((workdir / "summary.json").read_text())["test"]
    assert resumed == json.loads((finished_tiny_run / "summary.json").read_text())["test"]
  finally:
    subprocess.run(["umount", str(checkpoint_dir)], check=False)


@tiers.SLOW
def test_metrics_write_failure_names_metrics_jsonl(tmp_path, cache_dir):
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  # The writer renames its rewritten file into place, and with it this link: from then on
  # every line goes to /dev/full, which refuses writes with ENOSPC.
  os.symlink("/dev/full", workdir / "metrics.jsonl.tmp")
  failed = run_program(workdir, cache_dir, check=False)
  _assert_one_line_error(
    failed,
    f"the metrics to {workdir / 'metrics.jsonl'}: No space left on device (ENOSPC)",
    "There is no checkpoint yet",
  )


def test_log_write_failure_names_the_log(tmp_path, cache_dir):
  workdir = tmp_path / "run"
  os.makedirs(workdir)
  os.symlink("/dev/full", workdir / "log.txt")
  failed = run_program(workdir, cache_dir, check=False)
  _assert_one_line_error(
    failed, f"the log to {workdir / 'log.txt'}: No space left on device (ENOSPC)"
  )
