"""Up-front validation of a run's config: every problem is found before data loading or compilation and
reported with the field's name and its valid values. Nothing on disk is touched.

Each rule lives with the code it guards, and `validate` composes them: the model's in src/models
(check_config, check_computation), the data's in src/data (check_config, from the dataset's DatasetSpec), the CPU
kernels' in src/cpu, the optimiser's and schedule's in src/optim.py; the loop's own fields (batch sizes, step
counts and intervals, num_seeds, mode, eval.*) are checked here.
"""

import os

import jax

from src import cpu, data, models, optim
from src.errors import ConfigError, positive_int, require


def validate(config, *, device_count=None, process_count=None):
  """Checks every field of a run's config, for a job of `device_count` devices in `process_count` processes
  (default: this job's). Only what the job's mode uses is checked against its devices: batch_size in mode=train,
  eval_batch_size in both.

  Raises:
    ConfigError: the first field found wrong, named with its valid values.
  """
  device_count = device_count or jax.device_count()
  process_count = process_count or jax.process_count()
  models.check_config(config.model)
  dataset = data.check_config(config.data)
  require(
      config.mode in ("train", "eval"),
      "mode",
      f"must be 'train' or 'eval' (evaluate the newest checkpoint), got {config.get('mode')!r}.",
  )
  if "eval" in config:
    _check_eval(config.eval, config.data, dataset)
  batch = positive_int(config["batch_size"], "batch_size")
  training = config.mode == "train"
  if training:  # mode=eval splits no train batch (and a run's batch_size is fixed), so any job may evaluate it
    require(
        batch % device_count == 0,
        "batch_size",
        f"{batch} is not divisible by the {device_count} devices of this job; use a multiple of {device_count}.",
    )
    require(batch % process_count == 0, "batch_size", f"{batch} is not divisible by the {process_count} processes.")
  eval_batch = positive_int(config["eval_batch_size"], "eval_batch_size")
  require(
      eval_batch % device_count == 0,
      "eval_batch_size",
      f"{eval_batch} is not divisible by the {device_count} devices; use a multiple of {device_count}.",
  )
  models.check_computation(config.model, config.execution, batch, device_count if training else None)
  cpu.check_config(config.execution)
  _check_steps(config, dataset)
  optim.check_config(config, has_val="val" in data.eval_splits(config.data))


def _check_eval(e, data_config, dataset):
  """eval.*: a split and protocols the dataset has, and workdirs (not one string) to ensemble."""
  require(
      e.split in data.eval_splits(data_config),
      "eval.split",
      f"must be a split this dataset has ({'val' if dataset.own_val else 'test, or val with data.val_size > 0'}), "
      f"got {e.split!r}.",
  )
  require(
      len(e.protocols) > 0 and all(p in dataset.protocols for p in e.protocols),
      "eval.protocols",
      f"must be some of {list(dataset.protocols)} for {data_config.name}, got {list(e.protocols)!r}.",
  )
  require(not isinstance(e.ensemble, str), "eval.ensemble", "must be a tuple of workdirs, e.g. '(\"runs/a\",)'.")


def _check_steps(config, dataset):
  """The loop's counts and intervals: num_steps, time_limit_minutes, log/eval/checkpoint intervals, the checkpoints
  kept, num_seeds (several only on a dataset held in memory) and steps_per_call (which the intervals are
  multiples of)."""
  positive_int(config["num_steps"], "num_steps")
  limit = config.time_limit_minutes
  require(
      isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit >= 0,
      "time_limit_minutes",
      f"must be a number of minutes >= 0 (0 = no limit), got {limit!r}.",
  )
  for field in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    positive_int(config[field], field)
  if "num_seeds" in config:
    positive_int(config["num_seeds"], "num_seeds")
    require(
        config.num_seeds == 1 or dataset.in_memory,
        "num_seeds",
        f"{config.num_seeds} replicas need a dataset held in memory (CIFAR-10, image folders, mnist5k): ImageNet's "
        "streamed pipeline would read the data once per replica. Use num_seeds=1, or a sweep over seeds.",
    )
  k = positive_int(config.execution["steps_per_call"], "execution.steps_per_call")
  for field in ("num_steps", "log_every", "checkpoint_every"):
    require(config[field] % k == 0, field, f"{config[field]} must be a multiple of execution.steps_per_call ({k}).")
  require(
      config.eval_every % config.log_every == 0,
      "eval_every",
      f"{config.eval_every} must be a multiple of log_every ({config.log_every}).",
  )


def check_workdir(workdir: str):
  """The workdir must be creatable and writable; checked before anything runs."""
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir}: {probe} is not a writable directory; choose a workdir you can write to.")
