"""``python -m train --config=train/configs/default.py --workdir=DIR [--config.FIELD=VALUE]``."""

import sys

from absl import app, flags
from ml_collections import config_flags

from train import loop, reporting

_CONFIG = config_flags.DEFINE_config_file("config", "train/configs/default.py",
                                          "Run configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and plots.",
                               required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Discard a previous run in --workdir made with another config.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  reporting.setup_logging()
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  except loop.Diverged as error:
    sys.exit(f"error: {error}")  # a message and exit status 1, no traceback


if __name__ == "__main__":
  app.run(main)
