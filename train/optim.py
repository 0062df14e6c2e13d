"""The optimiser, its learning-rate schedule and the loss-weight schedule, from the config."""

from __future__ import annotations

import ml_collections
import optax

from regionloss_jax import losses
from train import build


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warmup from 0 over ``warmup_steps``, then constant, cosine or poly decay."""
  opt, steps = config.optimizer, config.train.steps
  warmup = min(opt.warmup_steps, max(steps - 1, 0))
  decay_steps = max(steps - warmup, 1)
  if opt.schedule == "constant":
    main = optax.constant_schedule(opt.learning_rate)
  elif opt.schedule == "cosine":
    main = optax.cosine_decay_schedule(
      opt.learning_rate, decay_steps, alpha=opt.end_learning_rate / opt.learning_rate
    )
  else:
    main = optax.polynomial_schedule(
      opt.learning_rate, opt.end_learning_rate, power=opt.poly_power, transition_steps=decay_steps
    )
  if warmup == 0:
    return main
  return optax.join_schedules(
    [optax.linear_schedule(0.0, opt.learning_rate, warmup), main], boundaries=[warmup]
  )


def loss_weight_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
  """The compound loss's weight per step, ending at (or capped by) ``loss.weight`` (its
  reference value when unset)."""
  target, schedule = build.loss_weight(config), config.loss.weight_schedule
  if schedule.kind == "constant":
    return optax.constant_schedule(target)
  if schedule.kind == "linear":
    return optax.linear_schedule(schedule.start_weight, target, schedule.ramp_steps)
  return losses.step_weight_schedule(
    schedule.start_weight, factor=schedule.factor, step_size=schedule.step_size, max_weight=target
  )


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Gradient clipping (when ``grad_clip_norm > 0``) then adam, adamw or sgd."""
  opt = config.optimizer
  learning_rate = learning_rate_schedule(config)
  if opt.name == "adam":
    base = optax.adam(learning_rate)
  elif opt.name == "adamw":
    base = optax.adamw(learning_rate, weight_decay=opt.weight_decay)
  else:
    base = optax.sgd(learning_rate, momentum=opt.momentum or None)
  if opt.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), base)
  return base
