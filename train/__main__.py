"""``python -m train --config=train/configs/default.py --workdir=DIR [--config.FIELD=VALUE]``."""

import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from train import loop

_CONFIG = config_flags.DEFINE_config_file("config", "train/configs/default.py",
                                          "Run configuration file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and plots.",
                               required=True)
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Discard a previous run in --workdir made with another config.")


class _QuietLibraries(std_logging.Filter):
  """Keeps orbax's per-save INFO chatter out of the run log; warnings still show."""

  def filter(self, record):
    return record.levelno >= std_logging.WARNING or "orbax" not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  app.run(main)
