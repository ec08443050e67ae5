"""Resume policy: a workdir holds one experiment. Which config fields a resumed run may change, and the errors that
say what differs when it may not (README, A run's workdir)."""

import fnmatch
import json
import os

from src import checkpoint, parallel
from src.errors import ConfigError

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
    "eval_batch_size",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "async_checkpoints",
    "data.data_dir",
    "data.manual_dir",
    "data.dir",
    "execution.*",
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


def mismatch_error(config, workdir, e: checkpoint.CheckpointMismatchError) -> ConfigError:
  """The ConfigError for a checkpoint whose train state this config cannot hold: what differs, and the fix."""
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
