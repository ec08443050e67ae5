"""Run src.main on every host of a Cloud TPU VM pod slice, driving gcloud.

  python launch/tpu_pod.py --name=rn50 --zone=us-central2-b [--project=P] \
      [--create --accelerator-type=v4-32 --version=tpu-ubuntu2204-base [--spot | --preemptible]] \
      [--repo-dir=.] [--remote-dir=~/resnet] [--python=python3] [--dry-run] \
      -- --config=configs/imagenet.py --workdir=gs://bucket/rn50
  python launch/tpu_pod.py --name=rn50 --zone=us-central2-b --delete

Steps: (--create) describe, create if missing; pack the repo (git ls-files, without runs/); scp the tarball to all
workers; ssh all workers: unpack + pip install; ssh all workers: python -m src.main <args>. src.main calls
jax.distributed.initialize() with no arguments, which finds the pod's hosts by itself.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tempfile

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARBALL = "resnet-code.tar.gz"  # name of the code archive in the remote login directory
JAX_TPU = "jax[tpu]==0.10.2"  # requirements.txt pins the CPU jax; the TPU plugin comes on top


def remote_path(path):
  # A leading ~ must stay unquoted so the remote shell expands it; everything else is quoted.
  if path == "~":
    return path
  return "~/" + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def gcloud(args, verb, positional, *flags):
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, *positional, f"--zone={args.zone}"]
  return cmd + ([f"--project={args.project}"] if args.project else []) + list(flags)


def commands(args, main_args):
  """The commands to run, in order: argv lists, except the local pack pipeline, a bash string."""
  q, remote, py = shlex.quote, remote_path(args.remote_dir), remote_path(args.python)
  repo = os.path.abspath(args.repo_dir)
  tarball = os.path.join(tempfile.gettempdir(), f"{args.name}-{TARBALL}")
  # Tracked plus untracked-but-not-ignored files, minus runs/ (checkpoints, logs). --ignore-failed-read skips
  # files deleted from the working tree but still in the index.
  pack = (
      f"git -C {q(repo)} ls-files -z --cached --others --exclude-standard -- {q(':(exclude)runs')}"
      f" | tar -czf {q(tarball)} -C {q(repo)} --null --ignore-failed-read -T -"
  )
  install = (
      f"mkdir -p {remote} && tar -xzf ~/{TARBALL} -C {remote} && cd {remote}"
      f" && {py} -m pip install -r requirements.txt && {py} -m pip install {q(JAX_TPU)}"
  )
  # The remote shell re-parses --command, so each src.main argument is quoted once more inside it.
  # --multihost: every worker joins JAX's multi-controller runtime (jax.distributed.initialize()).
  run = " ".join([f"cd {remote} && {py} -m src.main --multihost", *map(q, main_args)])
  return [
      pack,
      gcloud(args, "scp", [tarball, f"{args.name}:{TARBALL}"], "--worker=all"),
      gcloud(args, "ssh", [args.name], "--worker=all", f"--command={install}"),
      gcloud(args, "ssh", [args.name], "--worker=all", f"--command={run}"),
  ]


def execute(cmd, dry_run, **kwargs):
  line = cmd if isinstance(cmd, str) else shlex.join(cmd)
  if dry_run:
    print(line)
    return 0
  print(f"+ {line}", file=sys.stderr, flush=True)
  # No output capture: the run step streams the logs of all workers as they come.
  argv = ["bash", "-o", "pipefail", "-c", cmd] if isinstance(cmd, str) else cmd
  return subprocess.run(argv, **kwargs).returncode


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  # Everything after the first `--` belongs to src.main, untouched by argparse.
  ours, main_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True)
  parser.add_argument("--project", default=None)
  parser.add_argument("--create", action="store_true", help="create the TPU VM unless it exists")
  parser.add_argument("--accelerator-type", default=None, help="e.g. v4-32 (needed with --create)")
  parser.add_argument("--version", default=None, help="TPU VM runtime, e.g. tpu-ubuntu2204-base (with --create)")
  capacity = parser.add_mutually_exclusive_group()
  capacity.add_argument("--preemptible", action="store_true")
  capacity.add_argument("--spot", action="store_true")
  parser.add_argument("--repo-dir", default=REPO_ROOT, help="local code to copy (a git checkout)")
  parser.add_argument("--remote-dir", default="~/resnet")
  parser.add_argument("--python", default="python3", help="remote interpreter (needs Python >= 3.11)")
  parser.add_argument("--delete", action="store_true", help="delete the TPU VM and exit")
  parser.add_argument("--dry-run", action="store_true", help="print the commands (bash-quoted), run nothing")
  args = parser.parse_args(ours)

  if args.delete:
    return execute(gcloud(args, "delete", [args.name], "--quiet"), args.dry_run)
  if args.create:
    if not (args.accelerator_type and args.version):
      parser.error("--create needs --accelerator-type and --version")
    # Reuse an existing VM: describe fails only if it is missing (or gcloud is unusable, which create then reports).
    exists = (
        execute(
            gcloud(args, "describe", [args.name]), args.dry_run, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        == 0
        and not args.dry_run
    )
    if not exists:
      flags = [f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
      flags += ["--preemptible"] * args.preemptible + ["--spot"] * args.spot
      if rc := execute(gcloud(args, "create", [args.name], *flags), args.dry_run):
        return rc
  for cmd in commands(args, main_args):
    if rc := execute(cmd, args.dry_run):
      return rc
  return 0


if __name__ == "__main__":
  sys.exit(main())
