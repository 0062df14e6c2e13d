"""Flax NNX segmentation models (2-D and 3-D U-Net) and deep-supervision helpers."""

from regionloss_jax.models.compiled_init import compiled_init
from regionloss_jax.models.unet import (
    ConvBlock,
    UNet,
    Upsample,
    deep_supervision_loss,
    deep_supervision_weights,
    stage_widths,
)

__all__ = [
    "ConvBlock",
    "UNet",
    "Upsample",
    "compiled_init",
    "deep_supervision_loss",
    "deep_supervision_weights",
    "stage_widths",
]
