"""Entry point: `python -m src.main --config=configs/cifar_depth_sweep.py[:arg] [--workdir=...] [--config.x=y]`.

Flags only; the work is in src/train.py (one run) and src/sweep.py (a config with a `sweep` list).
"""

import os

if __name__ == "__main__":  # before JAX starts: glibc reads its tunables only then, XLA its flags
  from src.cpu import xla_flags
  from src.cpu.hugepages import restart_with_huge_pages

  restart_with_huge_pages()
  xla_flags.apply()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (used by tfds) is chatty on import

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, optionally with :arg.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Where checkpoints, metrics and results go; a job started "
    "again in the same workdir resumes. Default: runs/<config name>[-<arg>].",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (multi-process jobs " "without TPU/SLURM auto-detection, e.g. launch/local.py).",
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
_MULTIHOST = flags.DEFINE_bool(
    "multihost",
    False,
    "Join a multi-host job whose cluster JAX detects (TPU pod "
    "slices; launch/tpu_pod.py sets it). SLURM jobs of several tasks join anyway.",
)


def workdir_for(spec: str) -> str:
  """runs/<config file name>[-<arg>] for a --config value, e.g. runs/cifar_depth_sweep-mnist5k. A path in the
  argument keeps only its last part, so the workdir stays one directory under runs/:
  'configs/cifar_depth_sweep.py:image_dir=/tmp/cifar10-jpeg,steps=8000' ->
  'runs/cifar_depth_sweep-image_dir=cifar10-jpeg,steps=8000'."""
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  items = []
  for item in arg.split(",") if arg else []:
    key, eq, value = item.partition("=")
    items.append(key + eq + (os.path.basename(os.path.normpath(value)) if "/" in value else value))
  return os.path.join("runs", name + (f"-{','.join(items)}" if items else ""))


def default_workdir():
  return workdir_for(config_flags.get_config_filename(flags.FLAGS["config"]))


STOPPED_FILE = "stopped.json"


def _stopped_marker(workdir: str, stopped):
  """<workdir>/stopped.json exists while the job's last start ended early (SIGTERM or time_limit_minutes) with its
  step saved, so that a scheduler script can tell "continue me" from "done" (both exit 0). Removed at each start;
  written by process 0 only."""
  import json
  import time

  import jax

  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, STOPPED_FILE)
  if stopped is None:
    if os.path.exists(path):
      os.remove(path)
    return
  with open(path, "w") as f:
    json.dump({"reason": stopped.reason, "run": stopped.workdir, "step": stopped.step, "time": time.time()}, f)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO; --verbosity=0 brings it back
  from src import parallel  # imported here so `--help` stays fast

  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _MULTIHOST.value)
  import jax

  try:
    _run()
  except BaseException as e:
    # Stopped (exit 0) was agreed by every process; any other exit of one process of several ends them all now,
    # not after jax.distributed.shutdown's barrier or a collective waiting for it (parallel.fail).
    if jax.process_count() == 1 or (isinstance(e, SystemExit) and not e.code):
      raise
    parallel.fail(e)


def _run():
  from src.config_check import check_workdir
  from src.errors import CheckpointReadError, CheckpointWriteError, ConfigError, DatasetMissingError, DivergedError
  from src.parallel import Stopped

  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir()
  try:
    check_workdir(workdir)
    _stopped_marker(workdir, None)
    if config.mode == "eval":
      if config.get("sweep"):
        raise ConfigError(
            "mode=eval evaluates one run: use a single-run config (e.g. configs/cifar_resnet.py) "
            "with --workdir=<sweep workdir>/<run name>."
        )
      from src.evaluate import run_eval

      run_eval(config, workdir)
    elif config.get("sweep"):
      from src.sweep import run_sweep

      run_sweep(config, workdir)
    else:
      from src.train import train_and_evaluate

      train_and_evaluate(config, workdir)
  except Stopped as e:  # SIGTERM or the time budget: saved; the same command continues (launch/slurm.sbatch)
    _stopped_marker(workdir, e)
    raise
  except (ConfigError, DatasetMissingError, DivergedError, CheckpointWriteError, CheckpointReadError) as e:
    # the message says it all
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
