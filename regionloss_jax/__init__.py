"""regionloss_jax: segmentation losses for JAX that expose and control region-size bias."""

from regionloss_jax.losses import make_loss

__all__ = ["make_loss"]
__version__ = "0.1.0"
