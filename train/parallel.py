"""Devices and hosts: one mesh over every device, the batch split along its ``data`` axis.

The same program runs on a laptop, one accelerator or many hosts. JAX's SPMD partitioner
inserts the communication; this module only says where each array lives:

* the batch is sharded over ``data`` (each device holds ``global_batch / device_count``
  examples, each process feeds the examples of its own devices);
* parameters and optimiser state are replicated, or, with ``parallel.shard_params``, split
  FSDP-style along their largest axis that the device count divides (for models whose
  state does not fit one device several times over);
* evaluation and prediction run apart on each process: every process takes its share of
  the images, predicts them on its local devices with its own copy of the parameters
  (:func:`local_mesh`, :func:`local_copy`), and the per-image results are then gathered
  (:func:`gather_rows`).

Because the computation is the same global program, the training losses do not depend on
the device count beyond floating-point reduction order.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from train import xla_flags
from train.user_errors import ConfigError

DATA_AXIS = "data"
# Arrays smaller than this stay replicated under shard_params: splitting a bias or a norm
# scale saves nothing and costs a gather per use.
MIN_SHARDED_SIZE = 2**14


def _cluster_environment() -> str | None:
  """The multi-process launcher visible in the environment, if any."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return "SLURM"
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "a multi-host TPU slice"
  return None


def initialize(
  *,
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """Joins a multi-process run, before anything touches a device.

  With ``coordinator_address`` (``HOST:PORT`` of process 0), ``num_processes`` and
  ``process_id``: ``jax.distributed.initialize`` with them. Without them: the same with
  JAX's cluster auto-detection when the environment describes a launcher (SLURM with
  several tasks, Open MPI, a multi-host TPU slice, ``JAX_COORDINATOR_ADDRESS``), and nothing
  (a single-process run) otherwise.
  """
  given = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in given) and any(v is None for v in given):
    raise ConfigError(
      "--coordinator_address, --num_processes and --process_id go together; got "
      f"coordinator_address={coordinator_address!r}, "
      f"num_processes={num_processes!r}, process_id={process_id!r}."
    )
  if coordinator_address is None:
    launcher = _cluster_environment()
    if launcher is None:
      return
    logging.info("joining the multi-process run described by %s", launcher)
  elif not 0 <= process_id < num_processes:
    raise ConfigError(f"--process_id={process_id} must be in [0, {num_processes}).")
  # CPU devices of different processes talk through gloo; accelerators ignore this.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def split_cpu(devices: int) -> None:
  """Runs JAX's CPU backend as ``devices`` devices (``parallel.cpu_devices``), so that a
  CPU-only run is data parallel over the host's cores like over accelerators.

  Call before anything touches a device. A device count already in ``XLA_FLAGS``
  (``--xla_force_host_platform_device_count``) wins; ``devices=1`` (JAX's default) does
  nothing. Accelerator backends are unaffected: their devices make the mesh.
  """
  if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
    raise ConfigError(f"config.parallel.cpu_devices must be a positive integer, got {devices!r}.")
  if devices == 1 or "xla_force_host_platform_device_count" in xla_flags.names():
    return
  jax.config.update("jax_num_cpu_devices", devices)


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named ``data`` over every device of every process."""
  # Auto axes: the partitioner propagates shardings through the model code, which was not
  # written with explicit sharding types.
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _fsdp_spec(shape: tuple[int, ...], devices: int, min_size: int) -> PartitionSpec:
  if int(np.prod(shape)) < min_size:
    return PartitionSpec()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % devices == 0:
      return PartitionSpec(*([None] * axis + [DATA_AXIS]))
  return PartitionSpec()


def state_shardings(
  state: Any, mesh: jax.sharding.Mesh, *, shard_params: bool, min_size: int = MIN_SHARDED_SIZE
) -> Any:
  """A ``NamedSharding`` per leaf of ``state``: replicated, or (``shard_params``) split
  along the leaf's largest axis that the device count divides, for leaves of at least
  ``min_size`` elements."""

  def leaf(x):
    if not shard_params:
      return replicated(mesh)
    return NamedSharding(mesh, _fsdp_spec(tuple(x.shape), mesh.size, min_size))

  return jax.tree.map(leaf, state)


def abstract(tree: Any, shardings: Any) -> Any:
  """``jax.ShapeDtypeStruct`` leaves carrying ``shardings`` (what orbax restores into)."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )


def put_state(state: Any, shardings: Any) -> Any:
  """Places a state that every process computed identically (same seed) on the mesh."""
  return jax.device_put(state, shardings)


def put_train_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict:
  """A global batch from each process's share (``global / process_count`` examples)."""
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local_batch.items()
  }


def local_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh named ``data`` over this process's own devices."""
  return jax.sharding.Mesh(np.asarray(jax.local_devices()), (DATA_AXIS,))


def local_copy(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Every leaf of a state on the training mesh, whole and replicated on ``mesh`` (this
  process's devices), so that this process can compute with it on its own.

  Replicated leaves are read from this process's first copy; leaves split over the devices
  of several processes (``parallel.shard_params``) are gathered, which every process must
  then do at the same point.
  """

  def leaf(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        whole = x.addressable_data(0)
      else:
        whole = multihost_utils.process_allgather(x, tiled=True)
    else:
      whole = x
    return jax.device_put(whole, replicated(mesh))

  return jax.tree.map(leaf, tree)


def gather_rows(rows: np.ndarray) -> np.ndarray:
  """The rows ``(n_i, ...)`` of every process, concatenated in process order, on every
  process; float64 values travel as their bits, so they arrive exactly.

  Each process may hold a different number of rows; with one process this is ``rows``.
  """
  rows = np.ascontiguousarray(rows)
  if jax.process_count() == 1:
    return rows
  counts = multihost_utils.process_allgather(np.asarray([len(rows)], np.int32)).reshape(-1)
  padded = np.zeros((int(counts.max()), *rows.shape[1:]), rows.dtype)
  padded[: len(rows)] = rows
  bits = padded.view(np.uint32)  # JAX arrays are 32-bit without x64
  gathered = np.asarray(multihost_utils.process_allgather(bits)).view(rows.dtype)
  return np.concatenate([gathered[p, :count] for p, count in enumerate(counts)])


class StepShardings(NamedTuple):
  """What a jitted step is told about where its inputs and outputs live."""

  state: Any
  batch: NamedSharding
  replicated: NamedSharding


def step_shardings(
  state: Any, mesh: jax.sharding.Mesh, *, shard_params: bool, min_size: int = MIN_SHARDED_SIZE
) -> StepShardings:
  return StepShardings(
    state_shardings(state, mesh, shard_params=shard_params, min_size=min_size),
    batch_sharding(mesh),
    replicated(mesh),
  )


def local_checksum(tree: Any) -> float:
  """Sum of every float in this process's first copy of each leaf (float64).

  With replicated leaves every process holds the whole tree, so equal checksums across
  processes say their replicas agree; logged at the end of training.
  """
  total = 0.0
  for leaf in jax.tree.leaves(tree):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      total += float(np.sum(np.asarray(leaf.addressable_data(0), np.float64)))
  return total
