"""Submit src.main to a SLURM GPU cluster with launch/slurm.sbatch (one task per node, all its GPUs).

  python launch/slurm.py --nodes=2 --gpus-per-node=8 [--partition=gpu] [--time=24:00:00] [--job-name=resnet] \
      [--signal-seconds=300] [--no-requeue] [--sbatch-arg=--account=abc ...] [--dry-run] \
      -- --config=configs/imagenet.py --workdir=runs/rn50

A run longer than --time requeues itself until it is done: SLURM sends src.main SIGTERM --signal-seconds before
the time limit (sbatch --signal=TERM@s), src.main saves its step and exits 0 leaving <workdir>/stopped.json, and
the batch script requeues the job (sbatch --requeue; the log is appended to, --open-mode=append), which resumes
from the checkpoint. --config.time_limit_minutes=N ends each start early the same way. Without --workdir the
job's default (runs/<config>[-<arg>]) is passed explicitly, so that the batch script finds stopped.json.
"""

import argparse
import os
import shlex
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SBATCH_SCRIPT = os.path.join(REPO_ROOT, "launch", "slurm.sbatch")


def default_workdir(main_args):
  """src.main's default workdir for these arguments (runs/<config>[-<arg>], relative to the repo root), or None
  without a --config=... (src.main then refuses to start anyway)."""
  specs = [a.removeprefix("--config=") for a in main_args if a.startswith("--config=")]
  if not specs:
    return None
  sys.path.insert(0, REPO_ROOT)
  from src.main import workdir_for  # noqa: E402  (absl and ml_collections only: no JAX starts)

  return workdir_for(specs[-1])


def sbatch_command(args, main_args):
  cmd = [
      "sbatch",
      f"--nodes={args.nodes}",
      f"--gpus-per-node={args.gpus_per_node}",
      f"--job-name={args.job_name}",
      # sbatch runs a copy of the script, so the job must start in the repo root for `-m src.main` to resolve.
      f"--chdir={REPO_ROOT}",
  ]
  cmd += [f"--partition={args.partition}"] * bool(args.partition) + [f"--time={args.time}"] * bool(args.time)
  if args.requeue:  # SIGTERM before the time limit; the batch script requeues a run that stopped early
    cmd += [f"--signal=TERM@{args.signal_seconds}", "--requeue", "--open-mode=append"]
    if not any(a == "--workdir" or a.startswith("--workdir=") for a in main_args) and default_workdir(main_args):
      main_args = [*main_args, f"--workdir={default_workdir(main_args)}"]
  # src.main's arguments go after the script as positional args: sbatch hands them to it verbatim and the
  # script forwards them with "$@", so no layer of shell re-parsing touches them.
  return cmd + args.sbatch_arg + [SBATCH_SCRIPT, *main_args]


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  # Everything after the first `--` belongs to src.main, untouched by argparse.
  ours, main_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--nodes", type=int, default=1)
  parser.add_argument("--gpus-per-node", type=int, required=True)
  parser.add_argument("--partition", default=None)
  parser.add_argument("--time", default=None, help="time limit, e.g. 24:00:00")
  parser.add_argument("--job-name", default="resnet")
  parser.add_argument(
      "--signal-seconds", type=int, default=300, help="SIGTERM this long before --time; src.main saves and requeues"
  )
  parser.add_argument(
      "--requeue", action=argparse.BooleanOptionalAction, default=True, help="requeue until the run is done"
  )
  parser.add_argument("--sbatch-arg", action="append", default=[], help="extra sbatch option, repeatable")
  parser.add_argument("--dry-run", action="store_true", help="print the sbatch command (bash-quoted), submit nothing")
  args = parser.parse_args(ours)
  cmd = sbatch_command(args, main_args)
  if args.dry_run:
    print(shlex.join(cmd))
    return 0
  print(f"+ {shlex.join(cmd)}", file=sys.stderr, flush=True)
  return subprocess.run(cmd).returncode


if __name__ == "__main__":
  sys.exit(main())
