"""SPMD data parallelism: one jit-compiled program over a device Mesh, arrays placed with NamedSharding.

This replaces pmap (in maintenance mode since JAX 0.4.3x): the same code runs on 1 CPU, 8 GPUs or a TPU pod;
XLA's partitioner inserts the gradient all-reduce, and process-local batches become one global array.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None, multihost=False):
  """Starts JAX's multi-controller runtime when the job has several processes.

  Explicit coordinator flags (launch/local.py) win; `multihost` (TPU pods: launch/tpu_pod.py) and SLURM
  jobs of several tasks let JAX detect the cluster itself. A single process starts nothing.
  """
  import os

  # JAX's preemption notifier would take SIGTERM for itself (and swallow it where nothing asks it); the train
  # loop's own handler and its agreement over processes (train.Preemption) stop every process at one step.
  jax.config.update("jax_enable_preemption_service", False)
  if coordinator_address:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  elif multihost or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()


def all_processes(ok: bool) -> bool:
  """True on every process if `ok` is True on every process, else False on every process: one decision for all
  (e.g. a check that reads a file each process sees for itself). A collective: every process must call it."""
  if jax.process_count() == 1:
    return bool(ok)
  from jax.experimental import multihost_utils

  return bool(np.all(multihost_utils.process_allgather(np.asarray([bool(ok)], np.int32))))


def make_mesh(devices=None):
  """A 1-D mesh over all devices of all processes: the batch axis is split across it."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def replicated(mesh):
  return NamedSharding(mesh, P())


def batch_sharded(mesh, leading_axes: int = 0):
  """The batch axis split over devices; `leading_axes` unsplit axes before it (e.g. steps of a multi-step call)."""
  return NamedSharding(mesh, P(*([None] * leading_axes), "data"))


def global_batch(local_batch: dict, mesh, leading_axes: int = 0) -> dict:
  """Assembles each process's slice of the batch into global arrays split over all devices."""
  sharding = batch_sharded(mesh, leading_axes)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def replicate(tree, mesh):
  """A pytree of host (or single-device) arrays, identical on every process, as replicated global arrays."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)
