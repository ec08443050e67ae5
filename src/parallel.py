"""SPMD data parallelism: one jit-compiled program over a device Mesh, arrays placed with NamedSharding; and what the
processes of a job agree on (all_processes, Preemption: every process stops after the same step).

This replaces pmap (in maintenance mode since JAX 0.4.3x): the same code runs on 1 CPU, 8 GPUs or a TPU pod;
XLA's partitioner inserts the gradient all-reduce, and process-local batches become one global array.
"""

import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None, multihost=False):
  """Starts JAX's multi-controller runtime when the job has several processes.

  Explicit coordinator flags (launch/local.py) win; `multihost` (TPU pods: launch/tpu_pod.py) and SLURM
  jobs of several tasks let JAX detect the cluster itself. A single process starts nothing.
  """
  import os

  # JAX's preemption notifier would take SIGTERM for itself (and swallow it where nothing asks it); the train
  # loop's own handler and its agreement over processes (Preemption, below) stop every process at one step.
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


class Preemption:
  """SIGTERM (preemption on TPU pods / SLURM) or the end of a time budget: every process stops after the same
  step, saves it and exits 0 (`Stopped`); the same command continues the run.

  One process stops after the step it is in. Schedulers signal the hosts of a job a few steps apart, or only one
  of them, so with several processes each one's flag is combined over all processes every `every_steps` steps: a
  max over a tiny global array, dispatched at one check and read at the next, when the device has long computed it
  (so the check never stalls the device). Every process reads the same combined value after the same call, so all
  stop after the same step, at most 2 x every_steps steps after the first SIGTERM. The handler is Python's own;
  JAX's SIGTERM notifier is off (initialize_distributed).

  `time_limit_minutes` > 0 is a wall-clock budget counted from this object's creation (the start of the run or
  sweep, after imports): at each log step (`check_time`) the flag is raised once the time left is less than
  `2 x the longest log interval so far + 10 s` (an interval includes its evaluation and checkpoint, and the
  first one the compile), which leaves the stop, the evaluation it may include and the save room to finish.
  A run advances at least one log interval per start, so a budget that is too short still gets it done.
  """

  def __init__(self, every_steps: int = 8, time_limit_minutes: float = 0.0):
    self.requested = False  # this process was sent SIGTERM, or its time budget is nearly spent
    self.reason = None  # why: 'SIGTERM' or 'time limit' (None: another process asked, or nobody)
    self.every_steps = every_steps
    self.time_limit_s = 60.0 * float(time_limit_minutes or 0.0)
    self.started = time.time()
    self._pending = None  # the combined flags dispatched at the last check
    self._combine = None
    self._last_check, self._longest_interval = self.started, 0.0
    self._old = signal.signal(signal.SIGTERM, self._handler)

  def _handler(self, signum, frame):
    self.requested = True
    self.reason = self.reason or "SIGTERM"

  def new_run(self):
    """Forgets the previous run's pending check (its mesh and step count) and log intervals; keeps a SIGTERM
    already received and the budget's start."""
    self._pending, self._combine = None, None
    self._last_check, self._longest_interval = time.time(), 0.0

  def check_time(self):
    """At a log step, with the device caught up: raises the flag when the time budget is nearly spent."""
    if not self.time_limit_s or self.requested:
      return
    now = time.time()
    self._longest_interval = max(self._longest_interval, now - self._last_check)
    self._last_check = now
    if now - self.started + 2 * self._longest_interval + 10.0 >= self.time_limit_s:
      self.requested, self.reason = True, "time limit"

  def used_minutes(self) -> float:
    return (time.time() - self.started) / 60.0

  def stop_after(self, calls: int, steps_per_call: int, mesh) -> bool:
    """Whether to save and stop after the train step call number `calls` (1, 2, ... since the loop started).
    Must be called after every call, on every process: now and then it is a collective."""
    if jax.process_count() == 1:
      return self.requested
    if calls % max(1, self.every_steps // steps_per_call):
      return False
    agreed = self._pending is not None and bool(np.asarray(self._pending.addressable_data(0)))
    if self._combine is None:
      self._combine = jax.jit(jnp.max, out_shardings=replicated(mesh))
    flags = np.full((jax.local_device_count(),), self.requested, np.int32)
    self._pending = self._combine(jax.make_array_from_process_local_data(batch_sharded(mesh), flags))
    return agreed

  def stop_now(self) -> bool:
    """One process: a SIGTERM that arrived since stop_after (during an evaluation) stops it at once. Several:
    only an agreed stop counts, so False."""
    return jax.process_count() == 1 and self.requested

  def restore(self):
    signal.signal(signal.SIGTERM, self._old if self._old is not None else signal.SIG_DFL)


class Stopped(SystemExit):
  """A run stopped before its end by SIGTERM or its time budget, its step saved: exit status 0, and the same
  command continues it. `workdir` (the run's), `step`, `reason` ('SIGTERM', 'time limit' or 'another process').
  """

  def __init__(self, workdir: str, step: int, reason: str):
    super().__init__(0)
    self.workdir, self.step, self.reason = workdir, step, reason
