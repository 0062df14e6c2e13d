"""Segmentation losses as pure JAX functions, and the tools that expose region-size bias.

Every loss takes channel-last ``logits (B, *spatial, C)`` and integer ``labels`` or float soft
targets of the logits' shape; see
:mod:`regionloss_jax.losses.inputs` for the conventions shared by all of them.
"""

from regionloss_jax.losses.cross_entropy import cross_entropy
from regionloss_jax.losses.decomposition import cross_entropy_decomposition, log_dice_decomposition
from regionloss_jax.losses.deep_supervision import deep_supervision_loss
from regionloss_jax.losses.dice import dice_loss, generalized_dice_loss, tversky_loss
from regionloss_jax.losses.focal import focal_loss
from regionloss_jax.losses.fused import ce_with_region
from regionloss_jax.losses.inputs import MODES, validate_labels
from regionloss_jax.losses.region import (
  region_db_loss,
  region_kl_loss,
  region_l1_loss,
  region_proportions,
)
from regionloss_jax.losses.registry import loss_names, loss_option_types, make_loss, valid_options
from regionloss_jax.losses.schedules import step_weight_schedule

__all__ = [
  "MODES",
  "ce_with_region",
  "cross_entropy",
  "cross_entropy_decomposition",
  "deep_supervision_loss",
  "dice_loss",
  "focal_loss",
  "generalized_dice_loss",
  "log_dice_decomposition",
  "loss_names",
  "loss_option_types",
  "make_loss",
  "region_db_loss",
  "region_kl_loss",
  "region_l1_loss",
  "region_proportions",
  "step_weight_schedule",
  "tversky_loss",
  "valid_options",
  "validate_labels",
]
