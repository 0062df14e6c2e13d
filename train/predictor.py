"""A trained model applied to whole images of any size: the inference path that evaluation,
``train.evaluate`` and ``train.predict`` share.

Images go through :func:`regionloss_jax.inference.sliding_window` with windows of the size
the model was trained on (``data.patch_size``, else the whole-image size), in batches of
``train.eval_batch_size`` windows, blended as ``config.inference`` says; outputs are logits,
turned into class probabilities (a binary model's sigmoid ``p`` becomes ``(1 - p, p)``).

Every process predicts its own images with its own copy of the parameters on its local
devices (windows split over them when their number divides the batch), so that processes
need not run in lockstep: evaluation and prediction split the images among processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.nnx as nnx
import jax
import ml_collections
import numpy as np
from scipy import special

from regionloss_jax import inference
from train import parallel


def window_size(config: ml_collections.ConfigDict, spatial_shape) -> tuple[int, ...]:
  """The window of sliding-window inference: the training patch, or the whole image."""
  if config.data.patch_size:
    return tuple(int(s) for s in config.data.patch_size)
  if not spatial_shape:
    raise ValueError(
      "a model trained on whole images of differing sizes has no window; set "
      "config.data.patch_size or config.data.image_size."
    )
  return tuple(int(s) for s in spatial_shape)


def probabilities(logits: np.ndarray, *, binary: bool) -> np.ndarray:
  """Class probabilities ``(..., K)`` from logits (softmax; binary: ``(1 - p, p)``)."""
  logits = np.asarray(logits, np.float32)
  if binary:
    foreground = special.expit(logits)
    return np.concatenate([1.0 - foreground, foreground], axis=-1).astype(np.float32)
  return special.softmax(logits, axis=-1).astype(np.float32)


class Predictor:
  """Logits and probabilities of a trained model for whole images.

  Built once per run (its window program compiles once); :meth:`load` gives it a state.

  Args:
    config: the run's config (model, ``loss.mode``, ``inference``, ``train.eval_batch_size``).
    eval_graphdef: the model's graph definition in evaluation mode.
    window: the window size, from :func:`window_size`.
    tta: mirror every spatial axis (test-time augmentation); default ``config.inference.tta``.
  """

  def __init__(
    self, config: ml_collections.ConfigDict, eval_graphdef, *, window, tta: bool | None = None
  ):
    self.config = config
    self.window = tuple(window)
    self.binary = config.loss.mode == "binary"
    self.tta = config.inference.tta if tta is None else tta
    self.mesh = parallel.local_mesh()
    self.batch_size = config.train.eval_batch_size
    split = self.batch_size % self.mesh.size == 0
    self.window_sharding = (
      parallel.batch_sharding(self.mesh) if split else parallel.replicated(self.mesh)
    )
    self.params = self.rest = None

    def window_logits(params, rest, windows):
      return nnx.merge(eval_graphdef, params, rest)(windows)

    self._window_logits = jax.jit(window_logits, out_shardings=parallel.replicated(self.mesh))

  def load(self, params, rest) -> Predictor:
    """Predict with this state (on the training mesh, any sharding) from now on."""
    self.params = parallel.local_copy(params, self.mesh)
    self.rest = parallel.local_copy(rest, self.mesh)
    return self

  def _apply(self, windows):
    windows = jax.device_put(windows, self.window_sharding)
    return self._window_logits(self.params, self.rest, windows)

  def logits(self, images: np.ndarray) -> np.ndarray:
    """float32 logits ``(B, *spatial, C_out)`` for normalised images ``(B, *spatial, C)``."""
    if self.params is None:
      raise RuntimeError("Predictor.load(params, rest) first")
    return inference.sliding_window(
      self._apply,
      images,
      window=self.window,
      overlap=self.config.inference.overlap,
      blend=self.config.inference.blend,
      batch_size=self.batch_size,
      mirror_axes=tuple(range(len(self.window))) if self.tta else (),
    )

  def probabilities(self, logits: np.ndarray) -> np.ndarray:
    return probabilities(logits, binary=self.binary)


def mean_probabilities(models: Sequence[Predictor], images: np.ndarray) -> np.ndarray:
  """The mean of ``models``' class probabilities ``(B, *spatial, K)`` for normalised images
  ``(B, *spatial, C)``: an ensemble, averaged as nnU-Net averages its folds' softmax outputs
  (one model gives its own probabilities unchanged)."""
  total = None
  for model in models:
    probs = model.probabilities(model.logits(images))
    total = probs if total is None else total + probs
  return total / np.float32(len(models))
