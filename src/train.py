"""The one train loop: config -> data, model, optimiser -> jit-compiled SPMD steps -> metrics, checkpoints.

`train_and_evaluate(config, workdir)` trains one run and returns its final metrics. Started again in the
same workdir, it resumes from the newest checkpoint: model, optimiser, warm-up flag and data position
(the batch of step s is a pure function of (seed, s)), so a resumed run is bitwise the uninterrupted one.
"""

import contextlib
import fnmatch
import hashlib
import json
import os
import signal
import time
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from src import checkpoint, cpu, data, metrics, models, optim, parallel, replicas
from src.cpu import xla_flags
from src.config_check import ConfigError, validate


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  warmup_done: jax.Array  # ResNet-110's warm-up has ended (sticky)
  plateau: optim.PlateauState  # the plateau schedule's lr factor and its evidence (ImageNet, Sec. 3.4)


def normalize(images, mean):
  """uint8 images -> float, per-pixel mean subtracted (Sec. 4.2), scaled to about [-1, 1]."""
  return (images.astype(jnp.float32) - mean) / 255.0


def create_state(config, model, image_shape, mesh):
  """The initial TrainState, replicated over `mesh`, and the optimiser. With config.num_seeds = K > 1, every leaf
  has a leading replica axis of K, replica r initialised with seed config.seed + r (src/replicas.py)."""

  def init(seed):
    variables = model.init(jax.random.key(seed), jnp.zeros((1,) + tuple(image_shape)), train=False)
    tx = optim.make_optimizer(config, variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        warmup_done=jnp.zeros((), bool),
        plateau=optim.plateau_init(),
    )

  k = replicas.num_seeds(config)
  seeds = np.asarray(replicas.seeds(config), np.int32) if k > 1 else config.seed
  state = jax.jit(replicas.vmap(init, k), out_shardings=parallel.replicated(mesh))(seeds)
  return state, optim.make_optimizer(config, state.params)


def build_model(config, num_classes=None):
  """The config's net, with the kernels its `model.conv_impl` picks for this backend injected (src.cpu)."""
  kernels = cpu.model_kernels(config.model.get("conv_impl", "auto"), config.model.get("conv_chunk", 16))
  return models.model_from_config(config.model, num_classes=num_classes, **kernels)


def make_train_step(config, model, tx, mean):
  schedule = optim.make_schedule(config)

  def train_step(state: TrainState, batch):
    images, labels = normalize(batch["image"], mean), batch["label"]
    lr = optim.learning_rate(schedule, config, state.step, state.warmup_done, state.plateau.scale)

    def loss_fn(params):
      logits, new_vars = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_state = state.opt_state
    opt_state.hyperparams["learning_rate"] = lr
    updates, opt_state = tx.update(grads, opt_state, state.params)
    error = jnp.mean(jnp.argmax(logits, -1) != labels)
    new_state = TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        warmup_done=optim.warmup_finished(config, state.step, state.warmup_done, error),
        plateau=state.plateau,
    )
    return new_state, {"train/loss": loss, "train/error": error, "lr": lr}

  return train_step


def jit_train_step(config, model, tx, mean, mesh):
  """The jitted train step exactly as the train loop runs it: (state, batch) -> (state, metrics), the state donated
  and replicated over `mesh`, `steps_per_call` steps per call (then batches carry a leading steps axis), each a
  step of every replica (num_seeds > 1: vmapped over the replica axis of the state and of the batch)."""
  step = replicas.vmap(make_train_step(config, model, tx, mean), replicas.num_seeds(config))
  if config.steps_per_call > 1:
    step = make_multi_step(step)
  rep = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(rep, rep), compiler_options=xla_flags.compiler_options())


def make_multi_step(train_step):
  """steps_per_call steps in one jitted call (lax.scan over a stack of batches): on GPUs the small CIFAR
  batches are dominated by per-step dispatch overhead, which this amortises. Same maths as single steps."""

  def multi_step(state, batches):
    return jax.lax.scan(train_step, state, batches)

  return multi_step


def stack(batches):
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def make_eval_step(model, mean):
  def eval_step(state: TrainState, batch):
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, normalize(batch["image"], mean), train=False
    )
    mask = batch["mask"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    wrong = (jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
    wrong5 = 1.0 - jnp.any(jax.lax.top_k(logits, 5)[1] == batch["label"][:, None], -1).astype(jnp.float32)
    return {
        "wrong": jnp.sum(wrong * mask),
        "wrong5": jnp.sum(wrong5 * mask),
        "loss": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }

  return eval_step


def evaluate(eval_step, state, ds, split, local_batch, mesh) -> dict:
  """{'<split>/error', '<split>/loss' (and top5_error above 10 classes)}: floats, or arrays of one value per replica
  when the eval step is vmapped over replicas (jit_eval_step)."""
  totals = None
  for batch in ds.eval_batches(split, local_batch):
    out = eval_step(state, parallel.global_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = np.asarray(totals["count"], np.float64)
  out = {f"{split}/error": totals["wrong"] / n, f"{split}/loss": totals["loss"] / n}
  if ds.num_classes > 10:  # ImageNet reports top-5 as well
    out[f"{split}/top5_error"] = totals["wrong5"] / n
  return {k: v.astype(np.float64) if np.ndim(v) else float(v) for k, v in out.items()}


def jit_eval_step(config, model, mean, mesh):
  """The jitted eval step: (state, batch) -> summed errors and losses, per replica (vmapped) when num_seeds > 1."""
  step = replicas.vmap(make_eval_step(model, mean), replicas.num_seeds(config), in_axes=(0, None))
  return jax.jit(step, out_shardings=parallel.replicated(mesh), compiler_options=xla_flags.compiler_options())


class Preemption:
  """SIGTERM (preemption on TPU pods / SLURM) or the end of a time budget: every process stops after the same
  step, saves it and exits 0 (`Stopped`); the same command continues the run.

  One process stops after the step it is in. Schedulers signal the hosts of a job a few steps apart, or only one
  of them, so with several processes each one's flag is combined over all processes every `every_steps` steps: a
  max over a tiny global array, dispatched at one check and read at the next, when the device has long computed it
  (so the check never stalls the device). Every process reads the same combined value after the same call, so all
  stop after the same step, at most 2 x every_steps steps after the first SIGTERM. The handler is Python's own;
  JAX's SIGTERM notifier is off (parallel.py).

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
      self._combine = jax.jit(jnp.max, out_shardings=parallel.replicated(mesh))
    flags = np.full((jax.local_device_count(),), self.requested, np.int32)
    self._pending = self._combine(jax.make_array_from_process_local_data(parallel.batch_sharded(mesh), flags))
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


class DivergedError(FloatingPointError):
  pass


class CheckpointWriteError(OSError):
  pass


# Fields that may change when a run is resumed: where files live, how the same maths is executed (conv_impl,
# remat, steps per call: equal up to float rounding), how often it is observed, and where it stops. Every other
# field shapes the train state or the experiment (model, data, optim, schedule, batch_size, seed). num_steps may
# change: a step schedule's boundaries are fields of their own (the presets derive them from their steps=
# argument, and then they differ), so a longer or shorter run is the same experiment up to where it stops.
RESUME_MAY_CHANGE = (
    "name",
    "mode",
    "num_steps",
    "time_limit_minutes",
    "steps_per_call",
    "eval_batch_size",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "xla_cpu_*",
    "data.data_dir",
    "data.manual_dir",
    "data.dir",
    "model.conv_impl",
    "model.conv_chunk",
    "model.remat",
    "eval.*",
)


def _flat_config(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat_config(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def config_differences(config, saved: dict, *, changeable: bool = False) -> list:
  """Dotted names of the fields in which `config` differs from `saved` (a run's config.json), sorted. Without
  `changeable`, only those not in RESUME_MAY_CHANGE. A field only one of them has (a field added to the code
  since the run started) is not compared."""
  now, then = _flat_config(json.loads(config.to_json())), _flat_config(saved)
  differ = sorted(k for k in set(now) & set(then) if now[k] != then[k])
  return [k for k in differ if changeable or not any(fnmatch.fnmatchcase(k, p) for p in RESUME_MAY_CHANGE)]


def _saved_config(workdir):
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def check_same_run(config, workdir):
  """A workdir holds one run: resuming it with a different experiment would mix two. Raises ConfigError naming
  the fields that differ from the run's config.json (any but RESUME_MAY_CHANGE), before anything is read or
  written. On several processes every one reads config.json and all raise if any finds a difference."""
  saved = _saved_config(workdir)
  differ = config_differences(config, saved) if saved is not None else []
  if parallel.all_processes(not differ):
    return
  if not differ:
    raise ConfigError(f"another process found that {workdir} holds a run with a different config (see its log).")
  values = "; ".join(
      f"{k}: {_flat_config(saved).get(k)!r} -> {_flat_config(json.loads(config.to_json()))[k]!r}" for k in differ
  )
  raise ConfigError(
      f"{workdir} holds a run with a different config (fields that differ: {differ}; {values}). Only "
      f"{', '.join(RESUME_MAY_CHANGE)} may change on resume: use another --workdir for a new experiment, or the "
      "original config to resume."
  )


def _mismatch_error(config, workdir, e: checkpoint.CheckpointMismatchError) -> ConfigError:
  saved = _saved_config(workdir)
  if saved is None:
    fields = "there is no config.json in the workdir to compare this config with"
  else:
    differ = config_differences(config, saved, changeable=True)
    fields = (
        f"config fields that differ from the run's config.json: {differ}"
        if differ
        else "no config field differs from the run's config.json, so the code that builds the train state has changed"
    )
  return ConfigError(
      f"{workdir}: checkpoint {e.step} holds a train state of another structure, shape or dtype than this config "
      f"builds ({'; '.join(e.differences[:4])}{'; ...' if len(e.differences) > 4 else ''}); {fields}. Nothing was "
      "moved or written: resume with the run's original config (and code), or use another --workdir."
  )


@contextlib.contextmanager
def _checkpoint_errors(ckpts, step):
  """A failed save (full disk, lost permissions; async saves fail at the next save or wait) becomes one clear
  error. Orbax writes into a temporary directory and renames it when complete, so older checkpoints stay
  intact and the half-written one is cleaned up at the next start."""
  try:
    yield
  except Exception as e:
    failed = ckpts.in_flight if ckpts.in_flight is not None else step  # async: it may be the previous save
    raise CheckpointWriteError(
        f"Could not write the checkpoint of step {failed} to {ckpts.directory}: {type(e).__name__}: {e}. "
        f"The older checkpoints there ({ckpts.all_steps()}) are intact; free disk space or fix permissions, "
        "then start the same command again to resume."
    ) from e


def _error_line(rows) -> str:
  """'val/error 8.12%  test/error 8.40%', or with several replicas 'test/error 8.40 +- 0.12% (3 seeds)'."""
  names = [k for k in rows[0] if k.endswith("error")]
  if len(rows) == 1:
    return "  ".join(f"{k} {100 * rows[0][k]:.2f}%" for k in names)
  stats = replicas.summary(rows, names)
  return "  ".join(f"{k} {100 * stats[k]:.2f} +- {100 * stats[k + '_std']:.2f}%" for k in names) + (
      f"  ({len(rows)} seeds)"
  )


def _plateau_step(config, state, rows, mesh, progress):
  """The plateau rule after an evaluation, for each replica on its own validation error (host-side)."""
  metric, num_seeds = config.schedule.plateau_metric, len(rows)
  old = jax.device_get(state.plateau)
  one = lambda r: old if num_seeds == 1 else jax.tree.map(lambda a: a[r], old)
  new = [optim.plateau_update(config, one(r), row[metric]) for r, row in enumerate(rows)]
  for r, (before, after) in enumerate(zip(map(one, range(num_seeds)), new)):
    if float(after.scale) != float(before.scale):
      which = f" (replica {r})" if num_seeds > 1 else ""
      progress.message(f"{metric} has plateaued{which}: lr x{config.schedule.factor}")
  stacked = new[0] if num_seeds == 1 else jax.tree.map(lambda *a: np.stack(a), *new)
  return state.replace(plateau=parallel.replicate(stacked, mesh))


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
    preempt = Preemption(time_limit_minutes=config.get("time_limit_minutes", 0.0))
  preempt.new_run()
  try:
    validate(config)  # before any data loading or compile: bad input costs nothing and touches nothing
    return _train(config, workdir, preempt)
  finally:
    if own:
      preempt.restore()


def _train(config, workdir: str, preempt: Preemption) -> dict:
  mesh = parallel.make_mesh()
  pid, nproc = jax.process_index(), jax.process_count()
  local_batch = config.batch_size // nproc
  main_process = pid == 0
  check_same_run(config, workdir)
  os.makedirs(workdir, exist_ok=True)

  ds = data.get_dataset(config.data, seed=config.seed, process_index=pid, process_count=nproc)
  if nproc > 1 and hasattr(
      ds, "train_images"
  ):  # each process reads its own shard; say which, so a mis-sharded job is easy to spot
    print(
        f"process {pid}/{nproc}: {len(ds.train_labels)} of {ds.num_train} training examples, "
        f"shard fingerprint {hashlib.sha1(ds.train_images[:256].tobytes()).hexdigest()[:12]}, "
        f"{jax.local_device_count()} of {jax.device_count()} devices",
        flush=True,
    )
  model = build_model(config, num_classes=ds.num_classes)
  state, tx = create_state(config, model, ds.image_shape, mesh)
  ckpts = checkpoint.Checkpoints(
      os.path.join(workdir, "checkpoints"),
      keep=config.keep_checkpoints,
      keep_best="val" in ds.splits,
      async_save=config.async_checkpoints,
  )
  start, wall_before = 0, 0.0
  k = config.steps_per_call
  try:
    restored = ckpts.restore_latest(checkpoint.abstract(state), log=print if main_process else lambda _: None)
  except checkpoint.CheckpointMismatchError as e:
    raise _mismatch_error(config, workdir, e) from None
  if restored is not None:
    _, state, meta = restored
    start, wall_before = int(meta["step"]), float(meta.get("wall_time_s", 0.0))
    if start % k:  # saved on SIGTERM under another steps_per_call: calls of k steps would step over num_steps
      raise ConfigError(
          f"config.steps_per_call: {k} does not divide the step of the checkpoint to resume from ({start}); resume "
          f"with a steps_per_call that divides {start} (e.g. 1), and change it at the next checkpoint."
      )
    if main_process:
      print(f"Resumed from {ckpts.directory} at step {start}.", flush=True)
  if main_process:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))
  writer = metrics.MetricWriter(workdir, resume_step=start, enabled=main_process)
  mean = jnp.asarray(ds.mean)
  num_seeds, seeds = replicas.num_seeds(config), replicas.seeds(config)
  replica_axis = int(num_seeds > 1)  # batches carry a leading replica axis when there are several
  train_step = jit_train_step(config, model, tx, mean, mesh)
  eval_step = jit_eval_step(config, model, mean, mesh)
  eval_batch = config.eval_batch_size // nproc

  progress = metrics.Progress(config.num_steps, start, enabled=main_process, name=config.get("name", ""))
  # With several CPU devices, XLA's collectives abort if too many steps are in flight: wait now and then.
  sync_every = max(16 // k, 1) if jax.devices()[0].platform == "cpu" and jax.device_count() > 1 else 0
  pending, t_start, last = [], time.time(), [{} for _ in seeds]  # last: the newest metrics of each replica
  step = start
  try:
    while step < config.num_steps:
      # The host prepares the next batch while the device still runs the step just dispatched.
      if k == 1:
        batch = parallel.global_batch(
            replicas.train_batch(ds, step, local_batch, seeds), mesh, leading_axes=replica_axis
        )
      else:
        batch = parallel.global_batch(
            stack([replicas.train_batch(ds, step + i, local_batch, seeds) for i in range(k)]),
            mesh,
            leading_axes=1 + replica_axis,
        )
      state, step_metrics = train_step(state, batch)
      pending.append(step_metrics)
      step += k
      done = step == config.num_steps
      if sync_every and (step // k) % sync_every == 0:
        jax.block_until_ready(step_metrics)
      if preempt.time_limit_s and step % config.log_every == 0:
        jax.block_until_ready(step_metrics)  # the time left is judged with the device caught up
        preempt.check_time()
      stop = preempt.stop_after((step - start) // k, k, mesh)  # the same on every process
      log_now = step % config.log_every == 0 or done or stop
      ckpt_now = step % config.checkpoint_every == 0 or done or stop
      if log_now or ckpt_now:
        # [steps, replicas]: one entry per step and replica, whatever steps_per_call is
        logged = {
            name: np.concatenate([np.reshape(m[name], (-1, num_seeds)) for m in jax.device_get(pending)])
            for name in pending[0]
        }
        pending = []
        rows = [
            {
                "train/loss": float(np.mean(logged["train/loss"][:, r])),
                "train/error": float(np.mean(logged["train/error"][:, r])),
                "lr": float(logged["lr"][-1, r]),
            }
            for r in range(num_seeds)
        ]
        diverged = [r for r, row in enumerate(rows) if not np.isfinite(row["train/loss"])]
        if diverged:
          which = f" of replica {diverged[0]} (seed {seeds[diverged[0]]})" if num_seeds > 1 else ""
          raise DivergedError(
              f"Training diverged: train loss{which} is {rows[diverged[0]]['train/loss']} in the "
              f"{len(logged['lr'])} steps up to step {step}. No checkpoint was written after step "
              f"{ckpts.latest_step()}. Lower schedule.base_lr or check the data."
          )
        with _checkpoint_errors(ckpts, step):
          ckpts.check()  # stop soon after an asynchronous save fails, not at the next save
        rate = progress.rate(step)
        for row in rows:
          row["steps_per_sec"], row["images_per_sec"] = rate, rate * config.batch_size  # per replica
        averaged = {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}
        progress.update(step, averaged["train/loss"], averaged["train/error"], rows[0]["lr"], rate, final=done)
        if step % config.eval_every == 0 or done:
          for split in ds.splits:
            for row, values in zip(
                rows, replicas.per_replica(evaluate(eval_step, state, ds, split, eval_batch, mesh), num_seeds)
            ):
              row.update(values)
          progress.message(_error_line(rows))
          if config.schedule.get("kind", "step") == "plateau":  # the paper's ImageNet rule (Sec. 3.4)
            state = _plateau_step(config, state, rows, mesh, progress)
        writer.write(step, rows)
        for previous, row in zip(last, rows):
          previous.update(row)
        stop = stop or preempt.stop_now()  # one process: SIGTERM may have arrived during the evaluation above
        if ckpt_now or stop:
          # The best checkpoint: by the replicas' mean validation error.
          val = {"val/error": float(np.mean([r["val/error"] for r in rows]))} if "val/error" in rows[0] else None
          with _checkpoint_errors(ckpts, step):
            ckpts.save(
                step,
                state,
                {
                    "step": step,
                    "seed": config.seed,
                    "data_position": step,
                    "wall_time_s": wall_before + time.time() - t_start,
                },
                metrics=val,
                force=True,
            )
        progress.restart(step)
        if stop and not done:
          with _checkpoint_errors(ckpts, step):
            ckpts.wait()
          reason = preempt.reason or "another process"
          why = {
              "SIGTERM": "SIGTERM",
              "time limit": f"time limit ({preempt.used_minutes():.1f} of {config.time_limit_minutes:g} min used)",
          }.get(reason, "stop agreed with another process")
          said = f"{why}: saved the checkpoint of step {step}; exiting. Start the same command again to continue."
          progress.message(said)
          if not main_process:  # every process says where it stopped
            print(f"process {pid}/{nproc}: {said}", flush=True)
          raise Stopped(workdir, step, reason)
    if not last[0]:  # started again after the end: report the final state
      for split in ds.splits:
        values = replicas.per_replica(evaluate(eval_step, state, ds, split, eval_batch, mesh), num_seeds)
        for previous, row in zip(last, values):
          previous.update(row)
    with _checkpoint_errors(ckpts, step):
      ckpts.wait()  # the last asynchronous save must be on disk before the run counts as done
  finally:
    writer.close()
    try:
      ckpts.close()
    except Exception:  # already reported above; closing must not hide the first error
      pass

  result = {
      "name": config.get("name", ""),
      "model": config.model.name,
      "dataset": config.data.name,
      **({"data": ds.info} if getattr(ds, "info", None) else {}),  # image folders: dir, classes, copy_of
      "steps": step,
      "params": models.count_params(state.params) // num_seeds,  # one replica's
      "wall_time_s": wall_before + time.time() - t_start,
      "resumed_from": start,
  }
  if num_seeds == 1:
    result.update({k: v for k, v in last[0].items() if "/" in k})
  else:  # mean, std and best over replicas at the top; every replica's own numbers below
    result["num_seeds"] = num_seeds
    result.update(replicas.summary(last))
    result["replicas"] = [{"seed": s, **{k: v for k, v in row.items() if "/" in k}} for s, row in zip(seeds, last)]
  if main_process:
    with open(os.path.join(workdir, "result.json"), "w") as f:
      json.dump(result, f, indent=2)
  return result
