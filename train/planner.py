"""Planning a dataset: its training cases read from disk, fingerprinted and planned by the
rules of :mod:`train.planning` for the device's memory, ``fingerprint.json`` and
``plan.json`` written. The work of ``python -m train.plan`` (:mod:`train.plan` parses its
flags), for use from Python.
"""

from __future__ import annotations

import datetime
import os
import pathlib

import jax
import ml_collections
import numpy as np

from regionloss_jax.data import files, nnunet, pairing
from regionloss_jax.data.source import DataError
from train import build, config_checks, memory, planning, write_errors

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


def nnunet_cases(config: ml_collections.ConfigDict):
  """The labelled cases of an nnU-Net raw dataset's ``imagesTr``/``labelsTr``, channels
  stacked, labels mapped by its dataset.json, read one at a time.

  Raises ``DataError`` naming dataset.json's problems, misnamed or unpaired files and label
  values dataset.json does not declare.
  """
  root = pathlib.Path(config.data.dir).expanduser().resolve()
  meta = nnunet.read_dataset_json(root)
  channel_files = nnunet.channel_file_count(meta, nnunet.listed_files(root / "imagesTr"))
  pairs, problems = nnunet.find_cases(root, meta, channel_files)
  if problems:
    raise DataError(problems, root=str(root))
  lut = np.full(max(meta.lookup) + 1, -1, np.int64)
  for raw, class_id in meta.lookup.items():
    lut[raw] = class_id
  for case in pairs["train"]:
    if channel_files:
      image, spacing, _, _ = nnunet.read_channels(case.images, meta.spatial_dims)
    else:  # the Decathlon's 4-D NIfTI, the channels on its fourth axis
      volume = files.read_volume(case.images[0], channels=True)
      image, spacing = volume.array, volume.spacing
    if meta.spatial_dims == 3:
      raw = files.read_volume(case.label).array.round().astype(np.int64)
    else:
      raw = files.read_mask(case.label).astype(np.int64)
    unknown = [int(v) for v in np.unique(raw) if not 0 <= v < len(lut) or lut[v] < 0]
    if unknown:
      raise DataError(
        [f"{case.label}: label value {unknown[0]} is not in dataset.json's labels"],
        root=str(root),
      )
    yield planning.Case(case.name, image, lut[raw], spacing)


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
  if config.data.name not in ("folder", "volumes", "nnunet"):
    raise config_checks.ConfigError(
      f"train.plan reads folder, volume and nnU-Net datasets; data.name="
      f"{config.data.name!r} is none of them (its images have one size already: use its "
      "config as it is)."
    )
  with config_checks._as_config_error():
    options = build.data_options(config)
  if config.data.name == "nnunet":
    meta = nnunet.read_dataset_json(options["root"])
    class_names, cases = meta.class_names, nnunet_cases(config)
    channel_names = channel_names or meta.channel_names
  else:
    class_names = pairing.class_names_for(options["num_classes"], options.get("class_names"))
    cases = training_cases(config)
  fp = planning.fingerprint(cases, class_names=class_names, channel_names=channel_names)
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


def summary(record: dict, out: str) -> str:
  """What the console shows of a plan written to ``out``."""
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
