"""Orbax checkpoints of a run: the train state (params, batch stats, optimiser state with its lr, step,
warm-up flag) and a small JSON `meta` item (data position, seed, val error). Saves are asynchronous;
the last `keep` checkpoints and the best one on validation error are kept.

On multi-host jobs every process calls save/restore: each writes and reads its own shards, and every decision
about what to restore (this checkpoint, an older one, or stop with an error) is the same on every process.
"""

import errno
import json
import os
import shutil
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from src.errors import CheckpointMismatchError, CheckpointReadError

# What a damaged checkpoint raises (a truncated or deleted file, a cut JSON file; measured on Orbax 0.12.8 with
# TensorStore): FileNotFoundError, json.JSONDecodeError, or TensorStore errors whose message starts with one of
# these status codes (FAILED_PRECONDITION only when it says what failed to decode).
_DAMAGE_STATUS = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE")
_DECODE_WORDS = ("truncated", "decod", "corrupt", "checksum")
# What passes if one waits: TensorStore's retryable status codes and the OS errors of a busy or flaky machine.
_TRANSIENT_STATUS = ("RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED")
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "EAGAIN EBUSY EINTR EIO ENOMEM EMFILE ENFILE ENOBUFS ENOLCK ETIMEDOUT ESTALE ECONNRESET ECONNREFUSED "
        "ECONNABORTED EHOSTUNREACH ENETUNREACH ENETDOWN EREMOTEIO"
    ).split()
    if hasattr(errno, name)
)
# Outcomes of one read, least to most grave. Processes that disagree act on the gravest (see _agree).
OUTCOMES = ("ok", "damage", "transient", "error", "mismatch")


def _chain(e):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def classify_read_error(e: BaseException) -> str:
  """'transient', 'damage' or 'error' (neither) for an exception raised while reading a checkpoint.

  Looks through the whole chain of causes (Orbax wraps TensorStore's errors in a plain Exception). When a chain
  holds both, transient wins: a checkpoint is set aside only when nothing else explains the failure.
  """
  kinds = set()
  for x in _chain(e):
    text = str(x)
    if isinstance(x, MemoryError) or any(text.startswith(s) or f" {s}:" in text for s in _TRANSIENT_STATUS):
      kinds.add("transient")
    elif isinstance(x, OSError) and x.errno in _TRANSIENT_ERRNOS:
      kinds.add("transient")
    elif isinstance(x, (FileNotFoundError, json.JSONDecodeError)):
      kinds.add("damage")
    elif any(text.startswith(s) for s in _DAMAGE_STATUS):
      kinds.add("damage")
    elif text.startswith("FAILED_PRECONDITION") and any(w in text.lower() for w in _DECODE_WORDS):
      kinds.add("damage")
  return "transient" if "transient" in kinds else "damage" if "damage" in kinds else "error"


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat(tree) -> dict:
  """{'opt_state/inner_state/2/trace/fc/kernel': leaf}: paths spelled alike for a TrainState (attributes,
  namedtuples, tuples) and for Orbax's tree metadata of it (dicts and lists)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


def _only_in(keys, other) -> list:
  """Paths of `keys` absent from `other`, grouped under the shortest prefix that `other` lacks: a momentum
  form or optimiser change reads 'opt_state/inner_state/2/... (19 arrays)', not 19 lines."""
  heads = {"/".join(k.split("/")[:i]) for k in other for i in range(1, len(k.split("/")) + 1)}
  groups = {}
  for k in sorted(keys):
    parts = k.split("/")
    # k itself when `other` has a subtree where `keys` has a leaf
    head = next(("/".join(parts[:i]) for i in range(1, len(parts) + 1) if "/".join(parts[:i]) not in heads), k)
    groups.setdefault(head, []).append(k)
  return [head if members == [head] else f"{head}/... ({len(members)} arrays)" for head, members in groups.items()]


def tree_differences(saved, target) -> list:
  """Where a checkpoint's tree metadata (Orbax) and an abstract target differ: paths present in one only, and
  shapes or dtypes of common paths, as readable strings; empty when the target can restore the checkpoint."""
  saved, target = _flat(saved), _flat(target)
  out = [f"{p}: in the checkpoint, not in this train state" for p in _only_in(set(saved) - set(target), target)]
  out += [f"{p}: in this train state, not in the checkpoint" for p in _only_in(set(target) - set(saved), saved)]
  for k in sorted(set(saved) & set(target)):
    a, b = saved[k], target[k]
    shape_a, shape_b = tuple(getattr(a, "shape", ())), tuple(getattr(b, "shape", ()))
    dtype_a, dtype_b = np.dtype(a.dtype), np.dtype(b.dtype)
    if shape_a != shape_b or dtype_a != dtype_b:
      out.append(f"{k}: {dtype_a.name}{list(shape_a)} in the checkpoint, {dtype_b.name}{list(shape_b)} here")
  return out


def _agree(outcome: str) -> str:
  """The gravest outcome over all processes, the same on every one (one process may have read a file that
  another could not: an out-of-memory host, a flaky mount). A no-op on one process."""
  if jax.process_count() == 1:
    return outcome
  from jax.experimental import multihost_utils

  codes = multihost_utils.process_allgather(np.asarray([OUTCOMES.index(outcome)], np.int32))
  return OUTCOMES[int(np.max(codes))]


class Checkpoints:

  def __init__(self, directory: str, *, keep: int = 3, keep_best: bool = True, async_save: bool = True):
    keepers = [policies.LatestN(n=keep)]
    if keep_best:  # by val error, lowest first; checkpoints saved without it fall to LatestN alone
      keepers.append(
          policies.BestN(
              get_metric_fn=lambda m: m["val/error"], reverse=True, n=1, keep_checkpoints_without_metrics=False
          )
      )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keepers),
        enable_async_checkpointing=async_save,
        create=True,
        cleanup_tmp_directories=True,
    )
    self.directory = os.path.abspath(directory)
    self.in_flight = None  # step of the newest save started
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step: int, state, meta: dict, metrics: dict = None, force: bool = False) -> bool:
    self.check()  # a failed previous save is reported as that save's failure
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    saved = self.manager.save(step, args=args, metrics=metrics, force=force)  # waits for the previous save
    self.in_flight = step
    return saved

  def check(self):
    """Raises the error of a failed asynchronous save, if any."""
    self.manager.check_for_errors()

  def restore(self, step: int, abstract_state):
    """(state, meta) of checkpoint `step`, on the shardings of `abstract_state` (which may be on a different number
    of devices): one attempt, on this process alone.

    The checkpoint's tree metadata (paths, shapes, dtypes) is compared with `abstract_state` first: a difference
    raises CheckpointMismatchError before any array is read. Reads through Orbax's handlers rather than the
    manager, whose restore ends in a barrier that a process which failed would never reach (restore_latest
    brings the processes together instead). Other errors propagate as raised (see classify_read_error).
    """
    path = epath.Path(self.directory) / str(step)
    handler = ocp.StandardCheckpointHandler()
    try:
      differences = tree_differences(handler.metadata(path / "state"), abstract_state)
      if differences:
        raise CheckpointMismatchError(step, differences)
      state = handler.restore(path / "state", args=ocp.args.StandardRestore(abstract_state))
    finally:
      handler.close()
    return state, ocp.JsonCheckpointHandler().restore(path / "meta")

  def restore_latest(self, abstract_state, log=print, retries: int = 3, backoff_s: float = 1.0):
    """(step, state, meta) of the newest checkpoint that reads back, or None if there is none.

    Only damage (a truncated or missing file: a disk that filled up, a copy cut short) sets a checkpoint aside:
    it is moved to `<directory>.unreadable/<step>`, never deleted, and the next older one is tried. A transient
    error is retried `retries` times, `backoff_s` x 1, 2, 4... seconds apart, then raised as CheckpointReadError;
    a checkpoint that does not fit `abstract_state` raises CheckpointMismatchError; any other error is raised as
    CheckpointReadError. None of these moves or writes anything. Every process acts on the gravest outcome of
    all processes' reads (OUTCOMES), so they all restore the same step or all raise.
    """
    for step in reversed(self.all_steps()):
      for attempt in range(retries + 1):
        error, result = None, None
        try:
          result = self.restore(step, abstract_state)
          outcome = "ok"
        except CheckpointMismatchError as e:
          outcome, error = "mismatch", e
        except Exception as e:  # Orbax/TensorStore raise many types; classified, never swallowed
          outcome, error = classify_read_error(e), e
        outcome = _agree(outcome)
        if outcome != "transient" or attempt == retries:
          break
        delay = backoff_s * 2**attempt
        what = _describe(error) if error is not None else "on another process"
        log(f"Reading checkpoint {step} failed transiently ({what}); trying again in {delay:g} s.")
        time.sleep(delay)
      if outcome == "ok":
        return (step, *result)
      if outcome == "mismatch":
        raise error if isinstance(error, CheckpointMismatchError) else CheckpointMismatchError(
            step, ["another process found it does not fit (see its log)"]
        )
      if outcome in ("transient", "error"):
        what = _describe(error) if error is not None else "on another process (see its log)"
        tries = f" {retries + 1} times" if outcome == "transient" else ""
        raise CheckpointReadError(
            f"Could not read checkpoint {step} in {self.directory}{tries}: {what}. It is not damaged as far as "
            "can be told, so it stays where it is; start the same command again once the cause is gone."
        ) from error
      aside = os.path.join(self.directory + ".unreadable", str(step))
      what = _describe(error) if error is not None else "on another process"
      log(
          f"Checkpoint {step} in {self.directory} is unreadable: damaged ({what}); moved it to {aside} and trying "
          "the next older one."
      )
      if jax.process_index() == 0:
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), aside)
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
      self.manager.reload()
    return None

  def wait(self):
    self.manager.wait_until_finished()
    self.check()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _describe(e) -> str:
  return f"{type(e).__name__}: {str(e)[:300]}"


def abstract(state):
  """Shapes, dtypes and shardings of `state`, for a restore that lays the arrays out the same way."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def load_saved_state(run_dir: str, step: int = None, sharding=None):
  """The train state of a run's checkpoint (newest if `step` is None), whatever devices wrote it: every array on
  `sharding` (e.g. replicated over this job's mesh: parallel.replicated), by default on this process's first
  device; for evaluation, analysis and tests (the train loop restores through Checkpoints). With several
  processes every one must call it (a target sharding of global arrays makes the restore a collective read).
  Raises FileNotFoundError, naming the steps there are, when the run has no checkpoint (of that step)."""
  ckpt_dir = os.path.join(os.path.abspath(run_dir), "checkpoints")  # Orbax wants absolute paths
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}.")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"No checkpoint of step {step} in {ckpt_dir}; its checkpoints are of steps {steps}.")
  path = epath.Path(ckpt_dir) / str(steps[-1] if step is None else step) / "state"
  # The item's handler, as Checkpoints.restore: a Checkpointer would look for step metadata inside the item and
  # log a warning for every checkpoint read.
  handler = ocp.StandardCheckpointHandler()
  # jax.local_devices, not jax.devices: another process's device holds no data this process can restore into.
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  try:
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), handler.metadata(path))
    return handler.restore(path, args=ocp.args.StandardRestore(target))
  finally:
    handler.close()
