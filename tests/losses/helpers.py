"""Shared helpers for the loss tests: random inputs in every mode, cached jitted losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from regionloss_jax import losses

IGNORE = 255
NUM_CLASSES = {"multiclass": 4, "binary": 1, "multilabel": 3}


def all_configs():
  """Every (name, mode) pair ``make_loss`` supports."""
  return [(name, mode) for name in losses.loss_names() for mode in losses.MODES]


def make_inputs(
  mode, *, shape=(2, 6, 5), seed=0, ignore_fraction=0.2, scale=2.0, dtype=jnp.float32
):
  """Random logits and labels; about ``ignore_fraction`` of the pixels hold ``IGNORE``."""
  rng = np.random.default_rng(seed)
  channels = NUM_CLASSES[mode]
  logits = (scale * rng.standard_normal(shape + (channels,))).astype(np.float32)
  if mode == "multilabel":
    labels = rng.integers(0, 2, shape + (channels,))
    ignored = rng.random(shape) < ignore_fraction
    labels[ignored, 0] = IGNORE
  else:
    labels = rng.integers(0, max(channels, 2), shape)
    labels[rng.random(shape) < ignore_fraction] = IGNORE
  return jnp.asarray(logits, dtype), jnp.asarray(labels, jnp.int32)


def ignored_pixels(labels, mode):
  """Boolean ``(B, *spatial)``: where the labels mark a pixel as ignored."""
  if mode == "multilabel":
    return jnp.any(labels == IGNORE, axis=-1)
  return labels == IGNORE


@functools.cache
def value_and_grad(name, mode, **options):
  """A jitted ``(logits, labels) -> ((loss, terms), dloss/dlogits)`` for ``make_loss``."""
  fn = losses.make_loss(name, mode=mode, ignore_index=IGNORE, **options)
  return jax.jit(jax.value_and_grad(fn, has_aux=True))
