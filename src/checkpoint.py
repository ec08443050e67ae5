"""Orbax checkpoints of a run: the train state (params, batch stats, optimiser state with its lr, step,
warm-up flag) and a small JSON `meta` item (data position, seed, val error). Saves are asynchronous;
the last `keep` checkpoints and the best one on validation error are kept.

On multi-host jobs every process calls save/restore: each writes and reads its own shards.
"""

import os
import shutil

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


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
    """Restores onto the shardings of `abstract_state` (which may be on a different number of devices)."""
    out = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
    )
    return out["state"], out["meta"]

  def restore_latest(self, abstract_state, log=print):
    """(step, state, meta) of the newest checkpoint that reads back, or None if there is none.

    A checkpoint that fails to read (a truncated or missing file: a disk that filled up, a copy cut short)
    is moved aside to `<directory>.unreadable/<step>`, never deleted, and the next older one is tried.
    """
    for step in reversed(self.all_steps()):
      try:
        return (step, *self.restore(step, abstract_state))
      except Exception as e:  # Orbax/TensorStore raise many types for a damaged checkpoint
        aside = os.path.join(self.directory + ".unreadable", str(step))
        log(
            f"Checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: {str(e)[:300]}); "
            f"moved it to {aside} and trying the next older one."
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


def abstract(state):
  """Shapes, dtypes and shardings of `state`, for a restore that lays the arrays out the same way."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def load_saved_state(run_dir: str, step: int = None):
  """The train state of a run's checkpoint (newest if `step` is None) on this process's first device,
  whatever devices wrote it; for analysis and tests (the train loop restores through Checkpoints)."""
  ckpt_dir = os.path.join(os.path.abspath(run_dir), "checkpoints")  # Orbax wants absolute paths
  steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit())
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {ckpt_dir}.")
  path = os.path.join(ckpt_dir, str(steps[-1] if step is None else step), "state")
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), checkpointer.metadata(path).item_metadata
  )
  return checkpointer.restore(path, target)
