"""The library's arguments derived from a checked run config: ``make_loss`` options,
``regionloss_jax.data.load`` options, the model's output channels.

:mod:`train.config_checks` decides whether a config can work; this module only translates
one that can.
"""

from __future__ import annotations

import ml_collections

from train.configs import base


def native(config: ml_collections.ConfigDict) -> bool:
  """Images keep their own size: ``data.image_size`` is empty."""
  return not config.data.image_size


def loss_weight(config: ml_collections.ConfigDict) -> float:
  """``loss.weight``, or the compound's reference weight when it is unset."""
  return base.REFERENCE_WEIGHT if config.loss.weight is None else float(config.loss.weight)


def loss_options(config: ml_collections.ConfigDict, *, ignore_index: int) -> dict:
  """The ``make_loss`` keyword options of the config: the fields it sets, and for compounds
  the reference weight (and temperature of a region term) where it sets none.

  ``ignore_index`` is the dataset's (``SegmentationData.ignore_index``): the loss must skip
  the same pixels the metrics skip.
  """
  options = {"mode": config.loss.mode, "ignore_index": ignore_index}
  if config.loss.pallas_kernel:
    options["pallas_kernel"] = True
  parts = config.loss.name.split("+")
  if len(parts) == 2:
    options["weight"] = loss_weight(config)
    if parts[1] in base.REGION_TERMS and config.loss.temperature is None:
      options["temperature"] = base.REFERENCE_TEMPERATURE
  for option in base.LOSS_OPTION_TYPES:
    value = config.loss[option]
    if value is not None:
      options[option] = tuple(value) if isinstance(value, (list, tuple)) else value
  return options


def data_options(config: ml_collections.ConfigDict) -> dict:
  """Keyword options of ``regionloss_jax.data.load`` for ``config.data``.

  Raises ``ValueError`` for a field the dataset requires and the config lacks.
  """
  name, cfg = config.data.name, config.data
  options = {}
  if cfg.cache_dir:
    options["cache_dir"] = cfg.cache_dir
  if name.startswith("imbalanced_shapes"):
    if not native(config):
      sizes = set(cfg.image_size)
      if len(cfg.image_size) != 2 or len(sizes) != 1:
        raise ValueError(
          f"imbalanced_shapes images are square: config.data.image_size must be "
          f"(S, S), got {tuple(cfg.image_size)}."
        )
      options["image_size"] = sizes.pop()
    if cfg.split_sizes is not None:
      options["split_sizes"] = tuple(cfg.split_sizes)
  elif name in ("folder", "volumes"):
    if not cfg.dir:
      raise ValueError(
        f"config.data.dir is required for data.name={name!r}: the dataset root "
        "holding train/ (and optionally val/, test/)."
      )
    if cfg.num_classes is None:
      raise ValueError(
        f"config.data.num_classes is required for data.name={name!r} "
        "(classes including background)."
      )
    options.update(root=cfg.dir, num_classes=cfg.num_classes)
    if cfg.class_names:
      options["class_names"] = tuple(str(n) for n in cfg.class_names)
    if cfg.value_map:
      try:
        options["value_map"] = {int(raw): int(cls) for raw, cls in cfg.value_map}
      except (TypeError, ValueError):
        raise ValueError(
          f"config.data.value_map={cfg.value_map!r} must be (raw value, class "
          "id) pairs, e.g. ((0, 0), (255, 1))."
        ) from None
    size = None if native(config) else tuple(cfg.image_size)
    options["image_size" if name == "folder" else "shape"] = size
    if name == "volumes":
      options["spacing"] = tuple(cfg.spacing) if cfg.spacing else None
      options["intensity_range"] = tuple(cfg.intensity_range) if cfg.intensity_range else None
  elif name == "nnunet":
    options.update(nnunet_options(config))
  elif name == "oxford_iiit_pet":
    options["border"] = cfg.border
    options["image_size"] = None if native(config) else tuple(cfg.image_size)
  return options


def nnunet_options(config: ml_collections.ConfigDict) -> dict:
  """``load_nnunet`` options: the dataset folder, the grid; classes come from dataset.json
  (``data.num_classes`` / ``class_names`` passed on when set, to be checked against it)."""
  cfg = config.data
  if not cfg.dir:
    raise ValueError(
      "config.data.dir is required for data.name='nnunet': the dataset folder holding "
      "dataset.json, imagesTr/ and labelsTr/ (nnU-Net's raw layout, e.g. Dataset001_X)."
    )
  options = {
    "root": cfg.dir,
    "size": None if native(config) else tuple(cfg.image_size),
    "spacing": tuple(cfg.spacing) if cfg.spacing else None,
    "intensity_range": tuple(cfg.intensity_range) if cfg.intensity_range else None,
  }
  if cfg.num_classes is not None:
    options["num_classes"] = cfg.num_classes
  if cfg.class_names:
    options["class_names"] = tuple(str(n) for n in cfg.class_names)
  return options


def model_channels(config: ml_collections.ConfigDict, num_classes: int) -> int:
  """Logit channels: one sigmoid channel in binary mode, one per class otherwise."""
  return 1 if config.loss.mode == "binary" else num_classes
