"""Run by test_parallel.py in a process with several CPU devices (``XLA_FLAGS``).

Trains three steps of a small U-Net on fixed random batches, placed three ways: on one
device without shardings, data-parallel with replicated state, and data-parallel with the
state split FSDP-style (every leaf that the device count divides). Prints JSON: for each
placement the losses, the final parameters' leaves (flattened) and how many leaves were
split.
"""

import json

import jax
import numpy as np

from train import optim, parallel
from train import step as step_lib
from train.configs import default


def _config():
  config = default.get_config()
  config.model.depth, config.model.features = 2, 8
  return config


def _batches(count: int, batch: int):
  rng = np.random.default_rng(0)
  return [
    {
      "image": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
      "label": rng.integers(0, 5, (batch, 32, 32)).astype(np.int32),
    }
    for _ in range(count)
  ]


def run(placement: str) -> dict:
  config = _config()
  model = step_lib.make_model(config, in_channels=3, num_classes=5, seed=0)
  optimizer = optim.make_optimizer(config)
  graphdef, _, state = step_lib.init_state(model, optimizer)
  mesh = parallel.make_mesh()
  shardings, split = None, 0
  if placement != "single":
    shardings = parallel.step_shardings(state, mesh, shard_params=placement == "fsdp", min_size=0)
    state = parallel.put_state(state, shardings.state)
    split = sum(
      s.spec != jax.sharding.PartitionSpec() for s in jax.tree.leaves(shardings.state.params)
    )
  train_step = step_lib.make_train_step(config, graphdef, optimizer, shardings, ignore_index=255)
  losses = []
  for batch in _batches(3, batch=8):
    if shardings is not None:
      batch = parallel.put_train_batch(batch, mesh)
    state, metrics = train_step(state, batch)
    losses.append(float(metrics["loss"]))
  params = [np.asarray(leaf).ravel().tolist() for leaf in jax.tree.leaves(state.params)]
  return {"losses": losses, "params": params, "split_leaves": split, "devices": jax.device_count()}


if __name__ == "__main__":
  print(json.dumps({p: run(p) for p in ("single", "replicated", "fsdp")}))
