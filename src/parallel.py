"""SPMD data parallelism: one jit-compiled program over a device Mesh, arrays placed with NamedSharding; and what the
processes of a job agree on (all_processes, Preemption: every process stops after the same step; fail: one process's
error ends every process).

This replaces pmap (in maintenance mode since JAX 0.4.3x): the same code runs on 1 CPU, 8 GPUs or a TPU pod;
XLA's partitioner inserts the gradient all-reduce, and process-local batches become one global array.
"""

import atexit
import os
import signal
import sys
import threading
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def initialize_distributed(coordinator_address=None, num_processes=None, process_id=None, multihost=False):
  """Starts JAX's multi-controller runtime when the job has several processes.

  Explicit coordinator flags (launch/local.py) win; `multihost` (TPU pods: launch/tpu_pod.py) and SLURM
  jobs of several tasks let JAX detect the cluster itself. A single process starts nothing. With several, a
  daemon thread watches for another process's failure (fail): this process then ends within seconds, wherever
  it is blocked, with exit status STOPPED_FOR_ANOTHER.
  """
  # JAX's preemption notifier would take SIGTERM for itself (and swallow it where nothing asks it); the train
  # loop's own handler and its agreement over processes (Preemption, below) stop every process at one step.
  jax.config.update("jax_enable_preemption_service", False)
  if coordinator_address:
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  elif multihost or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize()
  else:
    return
  state = _distributed()
  if state.client is not None:
    global _watcher
    atexit.register(_exiting)  # registered after JAX's own handler, so it runs before jax.distributed.shutdown
    # The index from the distributed state: jax.process_index() would start the backend here.
    _watcher = threading.Thread(target=_watch_failures, args=(state.client, state.process_id), daemon=True)
    _watcher.start()


# --- one process's error ends the job --------------------------------------------------------------------------------
# A process that raises must not wait in jax.distributed.shutdown (its barrier waits, 5 minutes by default, for
# processes that are themselves blocked in a collective waiting for it), and the others must not wait for it in
# a collective or a barrier either (JAX notices a dead process after its 100 s heartbeat timeout, or never, if the
# process hangs rather than dies). So the failing process writes its failure to the job's key-value store (the
# coordination service's, as Orbax uses it) and ends at once; every other process watches that key and ends too.
# Process 0 hosts the service and leaves last: JAX aborts every process whose coordinator is gone.

STOPPED_FOR_ANOTHER = 75  # the exit status of a process ended because another one failed first (launch/local.py)
_FAILED_KEY = "src.parallel/failed"  # "<process index>:<exception type or ''>", written once: the first failure wins
_ENDED_DIR = "src.parallel/ended/"  # a key per process that has ended after a failure
_WATCH_MS = 500  # per wait of the watcher: a thread still waiting when the interpreter finalises aborts it
_OWN_ERROR_S = 2.0  # how long a process told of another's failure waits for its own error, if it has one
_LAST_S = 5.0  # how long process 0 waits at most for the others to end
_DEADLINE_S = 15  # SIGALRM, whose default action ends the process, bounds an ending stuck in a call
_exited = False  # set at a normal exit: the coordinator's going away is no failure then
_ending = threading.Lock()  # held by whichever thread ends this process after a failure: it alone says why
_watcher = None


def _distributed():
  from jax._src import distributed  # no public API for the coordination service's client; Orbax reads it likewise

  return distributed.global_state


def _exiting():
  global _exited
  _exited = True
  if _watcher is not None:  # out of its wait before the interpreter finalises
    _watcher.join(timeout=10 * _WATCH_MS / 1000)


def _end(code: int, client=None):
  """Ends this process now with `code`, its output flushed, skipping atexit (jax.distributed.shutdown's barrier).
  With `client`: says so in the key-value store; process 0 first waits (_LAST_S at most) for the others."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # a closed pipe must not keep the process alive
      pass
  if client is not None:
    state = _distributed()
    try:
      client.key_value_set(f"{_ENDED_DIR}{state.process_id}", str(code), True)
      deadline = time.monotonic() + _LAST_S
      while state.process_id == 0 and time.monotonic() < deadline:
        if len(client.key_value_dir_get(_ENDED_DIR)) >= state.num_processes:
          break
        time.sleep(0.05)
    except Exception:  # the coordinator is gone: nobody is left to wait for
      pass
  os._exit(code)


def _watch_failures(client, me: int):
  while True:
    try:
      if _exited:
        return
      value = client.blocking_key_value_get(_FAILED_KEY, _WATCH_MS)
    except Exception as e:
      if _exited:
        return
      if "DEADLINE_EXCEEDED" in str(e):  # nobody failed meanwhile
        continue
      print(
          f"error: lost the job's coordinator (process 0): {str(e).splitlines()[0][:200]}; stopping process {me}.",
          file=sys.stderr,
      )
      _end(1)
    first, _, kind = value.partition(":")
    if int(first) == me or _exited:
      return  # this process failed itself: its main thread is ending it
    signal.alarm(_DEADLINE_S)
    # A moment for this process's own error, if it is about to have one (a config error every process finds, a
    # collective that lost its peer): fail then reports that instead.
    time.sleep(_OWN_ERROR_S)
    if not _ending.acquire(blocking=False):
      return  # fail took over, and says what happened
    what = f" with {kind}" if kind else ""
    print(
        f"error: process {first} failed{what} (its output has the error); stopping process {me} too.", file=sys.stderr
    )
    _end(STOPPED_FOR_ANOTHER, client)


def first_failure(kind: str):
  """Records this process's failure (`kind`: the exception's type, or '') in the job's key-value store unless
  another process's is there already; returns the index of the process that failed first (maybe this one), or
  None on one process or when the coordinator cannot be reached."""
  client = _distributed().client
  if client is None:
    return None
  me = jax.process_index()
  try:
    client.key_value_set(_FAILED_KEY, f"{me}:{kind}")  # refused if the key exists: the first report wins
    return me
  except Exception:
    try:
      return int(client.key_value_try_get(_FAILED_KEY).partition(":")[0])
    except Exception:
      return None


def fail(e: BaseException):
  """Ends a process of a multi-process job that raised `e`, at once and non-zero, after telling the others
  (which then end too, see initialize_distributed). Never returns; call it from the main thread.

  Prints `e` once: a SystemExit's message (src.main's `error: ...` for the errors it words; every process that
  finds one says it) or, for anything else, the traceback, unless another process failed first (this error is
  then most likely a consequence, e.g. a collective whose peer is gone: one line names the first). Exit status:
  a SystemExit's code (1 for a message), STOPPED_FOR_ANOTHER after another process's failure, else 1.
  """
  signal.signal(signal.SIGALRM, signal.SIG_DFL)
  signal.alarm(_DEADLINE_S)  # the calls below talk to the coordinator, which may be gone or stuck
  if not _ending.acquire(blocking=False):
    time.sleep(_DEADLINE_S)  # the watcher is ending this process already
  worded = isinstance(e, SystemExit)
  first = first_failure("" if worded else type(e).__name__)
  me = jax.process_index()
  if worded:
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    code = e.code if isinstance(e.code, int) and e.code else 1
  elif first in (None, me):
    traceback.print_exception(e)
    code = 1
  else:
    what = str(e).splitlines()[0][:200] if str(e) else ""
    print(
        f"error: process {first} failed first (its output has the error); process {me} then stopped with "
        f"{type(e).__name__}: {what}",
        file=sys.stderr,
    )
    code = STOPPED_FOR_ANOTHER
  _end(code, _distributed().client)


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
