"""``python -m train --config=train/configs/default.py --workdir=DIR [--config.FIELD=VALUE]``,
or ``python -m train --plan=PLAN_DIR/plan.json --workdir=DIR`` for a run planned by
``python -m train.plan``.

On several hosts, each process also gets ``--coordinator_address=HOST:PORT
--num_processes=N --process_id=I`` (or none of them under SLURM, Open MPI or on a TPU
slice, where JAX finds them itself).

SIGTERM or Ctrl-C stops the run after the current step with a checkpoint, and exit status
128 + the signal number; the same command resumes it (:mod:`train.preemption`).
"""

from absl import app, flags

from train import cli, loop, parallel, preemption, run_log, user_errors, xla_flags

FIELDS_FILE = "train/configs/base.py"
_CONFIG = cli.define_config_flag(
  "train/configs/default.py", "Run configuration file.", fields_file=FIELDS_FILE, plan=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, logs and plots.", required=True
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Discard a previous run in --workdir made with another config."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", None, "HOST:PORT of process 0 in a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Processes in a multi-process run.", lower_bound=1
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index, from 0.", lower_bound=0
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  xla_flags.set_defaults()
  parallel.split_cpu(_CONFIG.value.parallel.cpu_devices)
  parallel.initialize(
    coordinator_address=_COORDINATOR.value,
    num_processes=_NUM_PROCESSES.value,
    process_id=_PROCESS_ID.value,
  )
  run_log.log_to_workdir(_WORKDIR.value)
  with preemption.listening():
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  user_errors.run(
    main, failures=(loop.Diverged, loop.OutOfMemory), flags_parser=cli.flags_parser(FIELDS_FILE)
  )
