"""Evaluation of a model state on a whole split: loss, per-image metrics and a summary."""

from __future__ import annotations

from typing import Callable

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from regionloss_jax import losses, metrics
from regionloss_jax import data as rl_data
from train import config_checks, parallel


def make_eval_step(config: ml_collections.ConfigDict, eval_graphdef,
                   mesh: jax.sharding.Mesh | None = None) -> Callable:
  """``eval_step(params, rest, batch, weight) -> (classes, probs, loss, terms)`` (jitted).

  With ``mesh`` the outputs are replicated, so that every process can read them whole.

  ``classes`` int32 ``(B, *S)``; ``probs`` float32 ``(B, *S, C)`` with ``C`` the classes
  (2 in binary mode: the sigmoid's ``1 - p`` is the background). ``terms`` holds the loss
  terms as ``term/<name>`` and the paper's decomposition of CE and log-Dice whatever loss is trained
  (:func:`decomposition_terms`).
  """
  loss_fn = losses.make_loss(config.loss.name, **config_checks.loss_options(config))
  binary = config.loss.mode == "binary"

  def eval_step(params, rest, batch, weight):
    logits = nnx.merge(eval_graphdef, params, rest)(batch["image"])
    loss, terms = loss_fn(logits, batch["label"], weight=weight)
    # Loss terms are logged as term/<name>: a "dice" term must not shadow the Dice metric.
    terms = {**{f"term/{k}": v for k, v in terms.items()},
             **decomposition_terms(logits, batch["label"], binary=binary)}
    if binary:
      foreground = jax.nn.sigmoid(logits)
      probs = jnp.concatenate([1.0 - foreground, foreground], axis=-1)
    else:
      probs = jax.nn.softmax(logits, axis=-1)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), probs, loss, terms

  if mesh is None:
    return jax.jit(eval_step)
  return jax.jit(eval_step, out_shardings=parallel.replicated(mesh))


def decomposition_terms(logits, labels, *, binary: bool) -> dict:
  """The paper's decomposition of CE and log-Dice, as batch means named
  ``decomposition/{ce,logdice}_{matching,size}``.

  CE: per image, the matching and size (``KL(tau || tauhat)``) terms of its Jensen bound,
  summed over classes (so the size term is >= 0), averaged over images. log-Dice: the exact
  matching and size terms averaged over the (image, foreground class) pairs whose class is
  present in the ground truth (absent classes have no region to match). A binary model's
  sigmoid logit ``x`` is the two-class softmax of ``(0, x)``.
  """
  if binary:
    logits = jnp.concatenate([jnp.zeros_like(logits), logits], axis=-1)
  ignore = rl_data.IGNORE_INDEX
  ce = losses.cross_entropy_decomposition(logits, labels, ignore_index=ignore)
  log_dice = losses.log_dice_decomposition(logits, labels, ignore_index=ignore)
  present = log_dice["tau"][:, 1:] > 1e-6
  pairs = jnp.maximum(jnp.sum(present), 1)
  out = {f"decomposition/ce_{part}": jnp.mean(jnp.sum(ce[part], axis=-1))
         for part in ("matching", "size")}
  out.update({f"decomposition/logdice_{part}":
              jnp.sum(jnp.where(present, log_dice[part][:, 1:], 0.0)) / pairs
              for part in ("matching", "size")})
  return out


def evaluate(eval_step: Callable, params, rest, batches, *, weight: float,
             class_names, keep: int = 0, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Runs ``eval_step`` over every batch of a split (placed on ``mesh`` when given).

  Returns ``{"summary": metrics.summarize(...) plus "loss" and each term (image-weighted
  means), "per_image": {metric: (N, C) array}, "samples": [(image, label, pred)] * keep}``.
  """
  results, samples = [], []
  loss_sums: dict[str, float] = {}
  count = 0
  for batch in batches:
    placed = batch if mesh is None else parallel.put_eval_batch(batch, mesh)
    classes, probs, loss, terms = jax.device_get(eval_step(params, rest, placed, weight))
    size = len(batch["label"])
    for key, value in {"loss": loss, **terms}.items():
      loss_sums[key] = loss_sums.get(key, 0.0) + float(value) * size
    count += size
    results.append(metrics.evaluate_batch(classes, batch["label"], num_classes=len(class_names),
                                          ignore_index=rl_data.IGNORE_INDEX, probs=probs))
    for i in range(min(size, keep - len(samples))):
      samples.append((np.asarray(batch["image"][i]), np.asarray(batch["label"][i]),
                      np.asarray(classes[i])))
  if not results:
    raise ValueError("the evaluation split yielded no batch; is it empty?")
  summary = metrics.summarize(results, class_names=class_names)
  summary.update({key: total / count for key, total in loss_sums.items()})
  per_image = {key: np.concatenate([r[key] for r in results])
               for key in ("dice", "iou", "hd95", "gt_proportion", "pred_proportion",
                           "pred_proportion_soft")}
  return {"summary": summary, "per_image": per_image, "samples": samples}
