"""Schedules for the region-term weight, optax-style: ``step -> weight`` as arrays."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp


def step_weight_schedule(
  init_value: float, *, factor: float, step_size: int, max_weight: float
) -> Callable[[jax.typing.ArrayLike], jax.Array]:
  """The paper authors' schedule: ``min(init * factor ** (step // step_size), max_weight)``.

  The weight is multiplied by ``factor`` every ``step_size`` steps and capped at
  ``max_weight``. It is computed with ``jnp`` from the (possibly traced) step, so evaluating
  it inside a jitted training step never recompiles.

  Args:
    init_value: the weight at step 0.
    factor: multiplier applied every ``step_size`` steps (``> 0``).
    step_size: steps between two multiplications (``>= 1``).
    max_weight: cap on the weight.

  Returns:
    An optax-style schedule, ``step -> float32 weight``.
  """
  if step_size < 1:
    raise ValueError(f"step_size must be >= 1; got {step_size}.")
  if factor <= 0:
    raise ValueError(f"factor must be > 0; got {factor}.")

  def schedule(step):
    periods = jnp.floor_divide(jnp.asarray(step), step_size).astype(jnp.float32)
    weight = init_value * jnp.power(jnp.float32(factor), periods)
    return jnp.minimum(weight, max_weight).astype(jnp.float32)

  return schedule
