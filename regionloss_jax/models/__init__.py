"""Flax NNX segmentation models (2-D and 3-D U-Net) and their deep-supervision weights."""

try:
  from regionloss_jax.models.compiled_init import compiled_init
  from regionloss_jax.models.unet import (
    ConvBlock,
    UNet,
    Upsample,
    deep_supervision_weights,
    stage_widths,
  )
except ModuleNotFoundError as error:
  # Flax is the `train` extra, not a dependency of the losses.
  if (error.name or "").partition(".")[0] != "flax":
    raise
  raise ModuleNotFoundError(
    "regionloss_jax.models needs 'flax', part of the training extra: "
    "pip install 'regionloss_jax[train]'",
    name=error.name,
  ) from error

__all__ = [
  "ConvBlock",
  "UNet",
  "Upsample",
  "compiled_init",
  "deep_supervision_weights",
  "stage_widths",
]
