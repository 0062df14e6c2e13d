"""``python -m train.plan --config=CONFIG --config.data.dir=ROOT [...] --out=PLAN_DIR``.

Reads the labelled training cases of a folder or volume dataset (the config's data fields:
``data.name``, ``data.dir``, ``data.num_classes``, ``data.value_map``, ...), writes
``PLAN_DIR/fingerprint.json`` (shapes, spacings, intensities per channel, class
frequencies) and ``PLAN_DIR/plan.json`` (target spacing, patch size, batch size, U-Net
depth, pooling and widths, normalisation), sized to the memory of the device this runs on
(or ``--memory_gb``). The rules are in :mod:`train.planning`. Then

    python -m train --plan=PLAN_DIR/plan.json --workdir=DIR [--config.FIELD=VALUE ...]

trains from the plan; command-line fields still win.
"""

from __future__ import annotations

import datetime
import os
import pathlib

import jax
import ml_collections
import numpy as np
from absl import app, flags

from regionloss_jax.data import files, pairing
from regionloss_jax.data.source import DataError
from train import (
  build,
  cli,
  config_checks,
  memory,
  planning,
  run_log,
  user_errors,
  write_errors,
)

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

PLAN_FILE = "plan.json"
FINGERPRINT_FILE = "fingerprint.json"
# The data fields of the user's config that the plan keeps: what identifies the dataset.
DATA_FIELDS = ("name", "dir", "num_classes", "class_names", "value_map", "cache_dir")


def training_cases(config: ml_collections.ConfigDict):
  """The labelled cases of the dataset's train (and val) folders, read raw, one at a time.

  Raises ``DataError`` naming unpaired files; unreadable files fail when reached.
  """
  options = build.data_options(config)
  root = pathlib.Path(options["root"]).expanduser().resolve()
  volumes = config.data.name == "volumes"
  stem = files.volume_stem if volumes else files.image_stem
  pairs, problems = pairing.find_pairs(root, stem=stem)
  if problems:
    raise DataError(problems, root=str(root))
  lookup = pairing.value_lookup(options["num_classes"], options.get("value_map"))
  for split in ("train", "validation"):
    for image_path, mask_path in pairs.get(split, []):
      if volumes:
        volume = files.read_volume(image_path)
        image, spacing = volume.array[..., None], volume.spacing
        raw = files.read_volume(mask_path).array.round().astype("int64")
      else:
        image, spacing = files.read_image(image_path), None
        raw = files.read_mask(mask_path)
      message = pairing.value_problem(mask_path, np.unique(raw), lookup)
      if message:
        raise DataError([message], root=str(root))
      label = pairing.apply_lookup(raw, lookup)
      yield planning.Case(image_path.name, image, label, spacing)


def budget(memory_gb: float | None) -> tuple[int, dict]:
  """The step's memory budget in bytes, and what it was derived from."""
  device = jax.devices()[0]
  if memory_gb is not None:
    total, source = int(memory_gb * 2**30), "--memory_gb"
  else:
    total, source = memory.device_memory(device)
  info = {
    "kind": device.device_kind,
    "platform": device.platform,
    "count": jax.device_count(),
    "memory_bytes": total,
    "memory_source": source,
    "budget_bytes": int(planning.MEMORY_SHARE * total),
  }
  return info["budget_bytes"], info


def plan_dataset(
  config: ml_collections.ConfigDict,
  out: str,
  *,
  memory_gb: float | None = None,
  channel_names=None,
) -> dict:
  """Fingerprints the dataset of ``config``, plans it, writes both files; returns the plan."""
  if config.data.name not in ("folder", "volumes"):
    raise config_checks.ConfigError(
      f"train.plan reads folder and volume datasets; data.name={config.data.name!r} is "
      "neither (its images have one size already: use its config as it is)."
    )
  with config_checks._as_config_error():
    options = build.data_options(config)
  class_names = pairing.class_names_for(options["num_classes"], options.get("class_names"))
  fp = planning.fingerprint(
    training_cases(config), class_names=class_names, channel_names=channel_names
  )
  budget_bytes, device = budget(memory_gb)
  planned = planning.make_plan(
    fp,
    budget_bytes=budget_bytes,
    num_classes=len(class_names),
    model_channels=build.model_channels(config, len(class_names)),
    devices=jax.device_count(),
  )
  data = {f"data.{k}": config.data[k] for k in DATA_FIELDS if config.data[k] not in (None, "")}
  data["data.dir"] = str(pathlib.Path(config.data.dir).expanduser().resolve())
  record = {
    "created": datetime.date.today().isoformat(),
    "device": device,
    "fingerprint": FINGERPRINT_FILE,
    **planned,
    "config": {**data, **planned["config"]},
  }
  os.makedirs(out, exist_ok=True)
  write_errors.write_json(
    os.path.join(out, FINGERPRINT_FILE), fp, what="the fingerprint", workdir=out
  )
  write_errors.write_json(os.path.join(out, PLAN_FILE), record, what="the plan", workdir=out)
  return record


def _summary(record: dict, out: str) -> str:
  config = record["config"]
  lines = [
    f"plan for {config['data.dir']} ({record['device']['kind']}, budget "
    f"{memory.gib(record['device']['budget_bytes'])} of {record['device']['memory_source']}):"
  ]
  for field in (
    "data.spacing",
    "data.patch_size",
    "model.depth",
    "model.pooling",
    "train.batch_size",
    "data.intensity_range",
  ):
    if field in config:
      lines.append(f"  {field:<22} {config[field]}")
  lines.append(f"  estimated step memory  {memory.gib(record['estimated_step_bytes'])}")
  lines.append(f"written: {os.path.join(out, PLAN_FILE)}, {os.path.join(out, FINGERPRINT_FILE)}")
  lines.append(f"train with: python -m train --plan={os.path.join(out, PLAN_FILE)} --workdir=DIR")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  run_log.log_to_workdir(_OUT.value)
  record = plan_dataset(
    _CONFIG.value, _OUT.value, memory_gb=_MEMORY_GB.value, channel_names=_CHANNEL_NAMES.value
  )
  print(_summary(record, _OUT.value))


if __name__ == "__main__":
  user_errors.run(main, failures=(planning.PlanError,), flags_parser=cli.flags_parser(FIELDS_FILE))
