"""A run planned by ``python -m train.plan``: ``python -m train --plan=PLAN_DIR/plan.json``
(the same as ``--config=train/configs/planned.py:PLAN_DIR/plan.json``).

The plan's fields (the dataset, target spacing, patch, batch, U-Net depth, pooling and
widths) are set on ``folder.py`` (2-D) or ``volumes3d.py`` (3-D), whose other fields (steps,
evaluation schedule, optimiser) stay; ``--config.FIELD=VALUE`` still overrides any of them.
"""

import json

from train.configs import folder, volumes3d


def _config_value(value):
  """JSON lists back to the tuples the config fields hold."""
  if isinstance(value, list):
    return tuple(_config_value(v) for v in value)
  return value


def get_config(plan_path: str):
  try:
    with open(plan_path) as f:
      fields = json.load(f)["config"]
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ValueError(
      f"{plan_path} is not a plan written by python -m train.plan ({error})"
    ) from None
  config = (volumes3d if fields.get("model.spatial_dims") == 3 else folder).get_config()
  for field, value in fields.items():
    section, name = field.split(".", 1)
    config[section][name] = _config_value(value)
  return config
