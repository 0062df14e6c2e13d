"""``python -m train.plan --config=CONFIG --config.data.dir=ROOT [...] --out=PLAN_DIR``.

Reads the labelled training cases of a folder, volume or nnU-Net raw dataset (the config's
data fields: ``data.name``, ``data.dir``, ``data.num_classes``, ``data.value_map``, ...;
an nnU-Net dataset's ``dataset.json`` gives its classes and channel names), writes
``PLAN_DIR/fingerprint.json`` (shapes, spacings, intensities per channel, class
frequencies) and ``PLAN_DIR/plan.json`` (target spacing, patch size, batch size, U-Net
depth, pooling and widths, normalisation), sized to the memory of the device this runs on
(or ``--memory_gb``). The rules are in :mod:`train.planning`. Then

    python -m train --plan=PLAN_DIR/plan.json --workdir=DIR [--config.FIELD=VALUE ...]

trains from the plan; command-line fields still win.
"""

from __future__ import annotations

from absl import app, flags

from train import cli, planner, planning, run_log, user_errors

FIELDS_FILE = "train/configs/base.py"
_CONFIG = cli.define_config_flag(
  "train/configs/folder.py", "The data to plan for (its data.* fields).", fields_file=FIELDS_FILE
)
_OUT = flags.DEFINE_string("out", None, "Folder for fingerprint.json and plan.json.", required=True)
_MEMORY_GB = flags.DEFINE_float(
  "memory_gb",
  None,
  "Plan for this much device memory (GiB) instead of what this machine's device holds.",
  lower_bound=0.01,
)
_CHANNEL_NAMES = flags.DEFINE_list(
  "channel_names",
  None,
  "Names of the input channels (a channel named CT gets a dataset-wide intensity window).",
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  run_log.log_to_workdir(_OUT.value)
  record = planner.plan_dataset(
    _CONFIG.value, _OUT.value, memory_gb=_MEMORY_GB.value, channel_names=_CHANNEL_NAMES.value
  )
  print(planner.summary(record, _OUT.value))


if __name__ == "__main__":
  user_errors.run(main, failures=(planning.PlanError,), flags_parser=cli.flags_parser(FIELDS_FILE))
