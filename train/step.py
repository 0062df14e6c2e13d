"""The model, the training state and the jitted train step.

The Flax NNX model is split once into a static ``graphdef`` and array state; the state is
what is trained, checkpointed and donated: ``params`` (``nnx.Param``) and ``rest`` (batch
statistics and the dropout RNG state, which advance with each step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.nnx as nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from regionloss_jax import losses, models
from train import build, optim, parallel


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  rest: Any
  opt_state: Any


def model_factory(
  config: ml_collections.ConfigDict, *, in_channels: int, num_classes: int, seed: int
) -> Callable[[], models.UNet]:
  """A function that builds the run's U-Net with its initial parameters."""
  m = config.model
  return lambda: models.UNet(
    in_channels,
    build.model_channels(config, num_classes),
    spatial_dims=m.spatial_dims,
    depth=m.depth,
    features=m.features,
    max_features=m.max_features,
    norm=m.norm,
    activation=m.activation,
    dropout_rate=m.dropout_rate,
    upsample=m.upsample,
    deep_supervision=m.deep_supervision,
    pooling=m.pooling or None,
    dtype=jnp.bfloat16 if config.precision == "bfloat16" else None,
    rngs=nnx.Rngs(params=seed, dropout=seed + 1),
  )


def make_model(
  config: ml_collections.ConfigDict, *, in_channels: int, num_classes: int, seed: int
) -> models.UNet:
  return models.compiled_init(
    model_factory(config, in_channels=in_channels, num_classes=num_classes, seed=seed)
  )


def _split(model: models.UNet):
  model.train()
  train_graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  model.eval()
  eval_graphdef = nnx.graphdef(model)
  model.train()
  return train_graphdef, eval_graphdef, params, rest


def init_state(model: models.UNet, optimizer: optax.GradientTransformation):
  """``(train_graphdef, eval_graphdef, state)`` for a freshly built model."""
  train_graphdef, eval_graphdef, params, rest = _split(model)
  # One program, not one eager zeros per parameter shape.
  opt_state = jax.jit(optimizer.init)(params)
  state = TrainState(jnp.zeros((), jnp.int32), params, rest, opt_state)
  return train_graphdef, eval_graphdef, state


def abstract_state(
  config: ml_collections.ConfigDict,
  optimizer: optax.GradientTransformation,
  *,
  in_channels: int,
  num_classes: int,
):
  """``(eval_graphdef, state)`` with the state's shapes and dtypes only: what a checkpoint
  is restored into, without computing any initial value."""
  model = nnx.eval_shape(
    model_factory(config, in_channels=in_channels, num_classes=num_classes, seed=0)
  )
  _, eval_graphdef, params, rest = _split(model)
  opt_state = jax.eval_shape(optimizer.init, params)
  step = jax.ShapeDtypeStruct((), jnp.int32)
  return eval_graphdef, TrainState(step, params, rest, opt_state)


def _where_floating(condition, new, old):
  """``new`` where ``condition`` holds, else ``old``, for the floating leaves of a tree."""
  return jax.tree.map(
    lambda n, o: jnp.where(condition, n, o) if jnp.issubdtype(n.dtype, jnp.floating) else n,
    new,
    old,
  )


def make_train_step(
  config: ml_collections.ConfigDict,
  graphdef,
  optimizer: optax.GradientTransformation,
  shardings: parallel.StepShardings | None = None,
  *,
  ignore_index: int,
) -> Callable:
  """``train_step(state, batch) -> (state, metrics)``, jitted, the state donated.

  With ``shardings`` the step states where its arrays live: the state as given, the batch
  split over the mesh's ``data`` axis, the metrics replicated; without, it runs where its
  inputs are (one device).

  ``metrics`` holds ``loss``, every loss term as ``term/<name>``, ``grad_norm``,
  ``learning_rate``, ``loss_weight`` (float32 scalars) and ``nonfinite`` (1 when the loss or
  gradient was not finite and the update was skipped). ``ignore_index`` is the dataset's
  (``SegmentationData.ignore_index``), the value evaluation's metrics leave out too.
  """
  loss_fn = losses.make_loss(
    config.loss.name, **build.loss_options(config, ignore_index=ignore_index)
  )
  weight_schedule = optim.loss_weight_schedule(config)
  learning_rate = optim.learning_rate_schedule(config)

  def objective(params, rest, batch, weight):
    model = nnx.merge(graphdef, params, rest)
    outputs = model(batch["image"])
    head_loss = functools.partial(loss_fn, weight=weight)
    if config.model.deep_supervision:
      loss, terms = losses.deep_supervision_loss(head_loss, outputs, batch["label"])
    else:
      loss, terms = head_loss(outputs, batch["label"])
    _, _, new_rest = nnx.split(model, nnx.Param, ...)
    return loss, (terms, new_rest)

  def train_step(state: TrainState, batch):
    weight = weight_schedule(state.step)
    (loss, (terms, rest)), grads = jax.value_and_grad(objective, has_aux=True)(
      state.params, state.rest, batch, weight
    )
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite loss or gradient skips the update: every float in the state keeps its
    # previous value (the step and the RNG still advance, as the batch was consumed).
    keep = functools.partial(_where_floating, finite)
    params = keep(params, state.params)
    opt_state = keep(opt_state, state.opt_state)
    rest = keep(rest, state.rest)
    metrics = {
      "loss": loss,
      **{f"term/{k}": v for k, v in terms.items()},
      "grad_norm": grad_norm,
      "learning_rate": learning_rate(state.step),
      "loss_weight": weight,
      "nonfinite": 1 - finite.astype(jnp.int32),
    }
    return TrainState(state.step + 1, params, rest, opt_state), metrics

  if shardings is None:
    return jax.jit(train_step, donate_argnums=(0,))
  return jax.jit(
    train_step,
    donate_argnums=(0,),
    in_shardings=(shardings.state, shardings.batch),
    out_shardings=(shardings.state, shardings.replicated),
  )
