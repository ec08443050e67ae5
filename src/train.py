"""The one train loop: config -> data, model, optimiser -> jit-compiled SPMD steps -> metrics, checkpoints.

`train_and_evaluate(config, workdir)` trains one run and returns its final metrics. Started again in the
same workdir, it resumes from the newest checkpoint: model, optimiser, warm-up flag and data position
(the batch of step s is a pure function of (seed, s)), so a resumed run is bitwise the uninterrupted one.

The loop is a sequence of named steps, each a method of `Run` that does one thing:
next_batch -> step -> (at log steps) log -> evaluate -> checkpoint -> stop. The step library (train state, the
jitted steps) is src/step.py, the resume policy src/resume.py, the stop agreed by all processes
src/parallel.py (Preemption), the bookkeeping of several seeds src/replicas.py.
"""

import contextlib
import hashlib
import json
import os
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from src import checkpoint, data, metrics, models, optim, parallel, replicas, resume
from src import step as steps
from src.config_check import validate
from src.errors import CheckpointWriteError, ConfigError, DivergedError
from src.parallel import Preemption, Stopped


def train_and_evaluate(config, workdir: str, preempt: Optional[Preemption] = None) -> dict:
  """Trains the run of `config` in `workdir`, resuming from its newest checkpoint; returns its final metrics.

  `preempt`: the SIGTERM handler of a caller that runs several trainings (src/sweep.py), so that a SIGTERM between
  two of them stops the next one at its first step; by default this run installs its own and removes it at the end.
  Raises ConfigError (a bad config, or a workdir that holds another experiment), DivergedError,
  CheckpointWriteError, checkpoint.CheckpointReadError; Stopped (a SystemExit with status 0) after saving on
  SIGTERM or at the end of `config.time_limit_minutes`.
  """
  own = preempt is None
  if own:  # from the start: a SIGTERM while data loads or steps compile stops at the first step
    preempt = Preemption(time_limit_minutes=config.time_limit_minutes)
  preempt.new_run()
  try:
    validate(config)  # before any data loading or compile: bad input costs nothing and touches nothing
    run = Run(config, workdir, preempt)
    failed = False
    try:
      run.loop()
      return run.result()
    except Exception:
      failed = True
      raise
    finally:
      # One process of several that failed leaves its in-flight save: finishing it needs a barrier that the
      # others, blocked in a collective waiting for this process, never reach.
      run.close(finish_saves=not (failed and jax.process_count() > 1))
  finally:
    if own:
      preempt.restore()


class Run:
  """One run: what the loop's steps share (data, model, jitted steps, checkpoints, metrics), set up and resumed at
  construction (nothing is written before the config and the workdir have been checked)."""

  def __init__(self, config, workdir: str, preempt: Preemption):
    self.config, self.workdir, self.preempt = config, workdir, preempt
    self.mesh = parallel.make_mesh()
    self.pid, self.nproc = jax.process_index(), jax.process_count()
    self.main_process = self.pid == 0
    resume.check_same_run(config, workdir)
    os.makedirs(workdir, exist_ok=True)
    self.ds = data.get_dataset(config.data, seed=config.seed, process_index=self.pid, process_count=self.nproc)
    self._say_shard()
    model = steps.build_model(config, num_classes=self.ds.num_classes)
    self.state, tx = steps.create_state(config, model, self.ds.image_shape, self.mesh)
    self.ckpts = checkpoint.Checkpoints(
        os.path.join(workdir, "checkpoints"),
        keep=config.keep_checkpoints,
        keep_best="val" in self.ds.splits,
        async_save=config.async_checkpoints,
    )
    self.start, self.wall_before = self._restore()
    if self.main_process:
      with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2))
    self.writer = metrics.MetricWriter(workdir, resume_step=self.start, enabled=self.main_process)
    mean = jnp.asarray(self.ds.mean)
    self.seeds = replicas.seeds(config)
    self.train_step = steps.jit_train_step(config, model, tx, mean, self.mesh)
    self.eval_step = steps.jit_eval_step(config, model, mean, self.mesh)
    self.progress = metrics.Progress(config.num_steps, self.start, enabled=self.main_process, name=config.name)
    k = config.execution.steps_per_call
    # With several CPU devices, XLA's collectives abort if too many steps are in flight: wait now and then.
    self.sync_every = max(16 // k, 1) if jax.devices()[0].platform == "cpu" and jax.device_count() > 1 else 0
    self.t_start = time.time()
    self.step, self.pending = self.start, []  # pending: the step metrics not yet fetched from the device
    self.last = [{} for _ in self.seeds]  # the newest metrics of each replica

  def _say_shard(self):
    """Each process reads its own shard; it says which, so a mis-sharded job is easy to spot."""
    ds = self.ds
    if self.nproc > 1 and hasattr(ds, "train_images"):
      print(
          f"process {self.pid}/{self.nproc}: {len(ds.train_labels)} of {ds.num_train} training examples, "
          f"shard fingerprint {hashlib.sha1(ds.train_images[:256].tobytes()).hexdigest()[:12]}, "
          f"{jax.local_device_count()} of {jax.device_count()} devices",
          flush=True,
      )

  def _restore(self):
    """(step, wall time so far) of the newest checkpoint, restored into self.state; (0, 0.0) for a new run."""
    k = self.config.execution.steps_per_call
    log = print if self.main_process else lambda _: None
    try:
      restored = self.ckpts.restore_latest(checkpoint.abstract(self.state), log=log)
    except checkpoint.CheckpointMismatchError as e:
      raise resume.mismatch_error(self.config, self.workdir, e) from None
    if restored is None:
      return 0, 0.0
    _, self.state, meta = restored
    start = int(meta["step"])
    if start % k:  # saved on SIGTERM under another steps_per_call: calls of k steps would step over num_steps
      raise ConfigError(
          f"config.execution.steps_per_call: {k} does not divide the step of the checkpoint to resume from ({start}); resume "
          f"with a steps_per_call that divides {start} (e.g. 1), and change it at the next checkpoint."
      )
    log(f"Resumed from {self.ckpts.directory} at step {start}.")
    return start, float(meta.get("wall_time_s", 0.0))

  # --- the loop -------------------------------------------------------------------------------------------------

  def loop(self):
    """Trains from self.start to config.num_steps; then (a run started again after its end) reports its state."""
    c = self.config
    while self.step < c.num_steps:
      batch = self.next_batch()  # the host prepares it while the device still runs the step just dispatched
      self.state, step_metrics = self.train_step(self.state, batch)
      self.pending.append(step_metrics)
      self.step += c.execution.steps_per_call
      stop = self.stop_requested(step_metrics)
      done = self.step == c.num_steps
      checkpoint_now = self.step % c.checkpoint_every == 0 or done or stop
      if not (self.step % c.log_every == 0 or checkpoint_now):
        continue
      rows = self.log(done)
      if self.step % c.eval_every == 0 or done:
        self.evaluate(rows)
      self.writer.write(self.step, rows)
      for previous, row in zip(self.last, rows):
        previous.update(row)
      stop = stop or self.preempt.stop_now()  # one process: SIGTERM may have arrived during the evaluation
      if checkpoint_now or stop:
        self.checkpoint(rows)
      self.progress.restart(self.step)
      if stop and not done:
        self.stop()
    if not self.last[0]:  # started again after the end: report the final state
      for previous, values in zip(self.last, self.evaluation()):
        previous.update(values)
    with self._checkpoint_errors():
      self.ckpts.wait()  # the last asynchronous save must be on disk before the run counts as done

  def next_batch(self):
    """The global batch of the next call: steps_per_call steps (a leading steps axis when > 1) of every replica (a
    leading replica axis when num_seeds > 1), this process's part of each read from its shard."""
    k, local = self.config.execution.steps_per_call, self.config.batch_size // self.nproc
    lead = int(len(self.seeds) > 1)
    if k == 1:
      return parallel.global_batch(replicas.train_batch(self.ds, self.step, local, self.seeds), self.mesh, lead)
    batches = [replicas.train_batch(self.ds, self.step + i, local, self.seeds) for i in range(k)]
    return parallel.global_batch(steps.stack(batches), self.mesh, leading_axes=1 + lead)

  def stop_requested(self, step_metrics) -> bool:
    """Whether every process stops after this step (SIGTERM, or the time budget nearly spent). Paces the device
    where it must (sync_every)."""
    c, k = self.config, self.config.execution.steps_per_call
    if self.sync_every and (self.step // k) % self.sync_every == 0:
      jax.block_until_ready(step_metrics)
    if self.preempt.time_limit_s and self.step % c.log_every == 0:
      jax.block_until_ready(step_metrics)  # the time left is judged with the device caught up
      self.preempt.check_time()
    return self.preempt.stop_after((self.step - self.start) // k, k, self.mesh)  # the same on every process

  def log(self, done: bool) -> list:
    """Fetches the metrics of the steps since the last log step: one row per replica with every metric the step
    returned (replicas.rows), the speed; raises DivergedError on a non-finite loss; shows the progress line."""
    rows, num = replicas.rows(jax.device_get(self.pending), len(self.seeds))
    self.pending = []
    diverged = [r for r, row in enumerate(rows) if not np.isfinite(row["train/loss"])]
    if diverged:
      which = f" of replica {diverged[0]} (seed {self.seeds[diverged[0]]})" if len(rows) > 1 else ""
      raise DivergedError(
          f"Training diverged: train loss{which} is {rows[diverged[0]]['train/loss']} in the "
          f"{num} steps up to step {self.step}. No checkpoint was written after step "
          f"{self.ckpts.latest_step()}. Lower schedule.base_lr or check the data."
      )
    with self._checkpoint_errors():
      self.ckpts.check()  # stop soon after an asynchronous save fails, not at the next save
    rate = self.progress.rate(self.step)
    for row in rows:
      row["steps_per_sec"], row["images_per_sec"] = rate, rate * self.config.batch_size  # per replica
    mean = {name: float(np.mean([row[name] for row in rows])) for name in ("train/loss", "train/error")}
    self.progress.update(self.step, mean["train/loss"], mean["train/error"], rows[0]["lr"], rate, final=done)
    return rows

  def evaluation(self) -> list:
    """Every split's errors and losses, one dict per replica."""
    out = [{} for _ in self.seeds]
    eval_batch = self.config.eval_batch_size // self.nproc
    for split in self.ds.splits:
      values = steps.evaluate(self.eval_step, self.state, self.ds, split, eval_batch, self.mesh)
      for row, v in zip(out, replicas.per_replica(values, len(self.seeds))):
        row.update(v)
    return out

  def evaluate(self, rows):
    """Adds the evaluation to `rows`, says it, and applies the plateau rule (the paper's ImageNet schedule)."""
    for row, values in zip(rows, self.evaluation()):
      row.update(values)
    self.progress.message(replicas.error_line(rows))
    if self.config.schedule.kind == "plateau":  # Sec. 3.4
      self.state = self._plateau(rows)

  def _plateau(self, rows):
    """The plateau rule after an evaluation, for each replica on its own validation error (host-side)."""
    config, k = self.config, len(rows)
    metric = config.schedule.plateau_metric
    old = jax.device_get(self.state.plateau)
    one = lambda r: old if k == 1 else jax.tree.map(lambda a: a[r], old)
    new = [optim.plateau_update(config, one(r), row[metric]) for r, row in enumerate(rows)]
    for r, (before, after) in enumerate(zip(map(one, range(k)), new)):
      if float(after.scale) != float(before.scale):
        which = f" (replica {r})" if k > 1 else ""
        self.progress.message(f"{metric} has plateaued{which}: lr x{config.schedule.factor}")
    stacked = new[0] if k == 1 else jax.tree.map(lambda *a: np.stack(a), *new)
    return self.state.replace(plateau=parallel.replicate(stacked, self.mesh))

  def checkpoint(self, rows):
    """Saves this step (asynchronously); the best checkpoint is chosen by the replicas' mean validation error."""
    val = {"val/error": float(np.mean([r["val/error"] for r in rows]))} if "val/error" in rows[0] else None
    meta = {"step": self.step, "seed": self.config.seed, "data_position": self.step, "wall_time_s": self.wall_time()}
    with self._checkpoint_errors():
      self.ckpts.save(self.step, self.state, meta, metrics=val, force=True)

  def stop(self):
    """Waits for this step's checkpoint, says why the run stops, and raises Stopped (exit status 0)."""
    with self._checkpoint_errors():
      self.ckpts.wait()
    reason, c = self.preempt.reason or "another process", self.config
    why = {
        "SIGTERM": "SIGTERM",
        "time limit": f"time limit ({self.preempt.used_minutes():.1f} of {c.time_limit_minutes:g} min used)",
    }.get(reason, "stop agreed with another process")
    said = f"{why}: saved the checkpoint of step {self.step}; exiting. Start the same command again to continue."
    self.progress.message(said)
    if not self.main_process:  # every process says where it stopped
      print(f"process {self.pid}/{self.nproc}: {said}", flush=True)
    raise Stopped(self.workdir, self.step, reason)

  # --- the end --------------------------------------------------------------------------------------------------

  def wall_time(self) -> float:
    return self.wall_before + time.time() - self.t_start

  def result(self) -> dict:
    """The run's final numbers, also written to <workdir>/result.json by process 0."""
    k, ds = len(self.seeds), self.ds
    result = {
        "name": self.config.name,
        "model": self.config.model.name,
        "dataset": self.config.data.name,
        **({"data": ds.info} if getattr(ds, "info", None) else {}),  # image folders: dir, classes, copy_of
        "steps": self.step,
        "params": models.count_params(self.state.params) // k,  # one replica's
        "wall_time_s": self.wall_time(),
        "resumed_from": self.start,
    }
    result.update(replicas.result(self.last, self.seeds))
    if self.main_process:
      with open(os.path.join(self.workdir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result

  def close(self, finish_saves: bool = True):
    """Closes the metric writers and, with `finish_saves`, the checkpoints (waits for the save in flight)."""
    self.writer.close()
    if not finish_saves:  # the half-written save is a temporary directory, cleaned up at the next start
      return
    try:
      self.ckpts.close()
    except Exception:  # already reported; closing must not hide the first error
      pass

  @contextlib.contextmanager
  def _checkpoint_errors(self):
    """A failed save (full disk, lost permissions; async saves fail at the next save or wait) becomes one clear
    error. Orbax writes into a temporary directory and renames it when complete, so older checkpoints stay
    intact and the half-written one is cleaned up at the next start."""
    try:
      yield
    except Exception as e:
      ckpts = self.ckpts
      failed = ckpts.in_flight if ckpts.in_flight is not None else self.step  # async: maybe the previous save
      raise CheckpointWriteError(
          f"Could not write the checkpoint of step {failed} to {ckpts.directory}: {type(e).__name__}: {e}. "
          f"The older checkpoints there ({ckpts.all_steps()}) are intact; free disk space or fix permissions, "
          "then start the same command again to resume."
      ) from e
