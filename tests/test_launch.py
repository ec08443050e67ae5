"""Tests of launch/: exact dry-run commands, hostile src.main arguments surviving every shell layer, and a real
2-process JAX job started by launch/local.py."""

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # so `launch` imports under plain `pytest` too, not only `python -m pytest`

from launch.local import launch_local  # noqa: E402

# Arguments that break naive quoting: quotes, spaces, command substitution, ;, backticks, newlines, globs, empty.
HOSTILE = [
    '--config.name=it\'s a "test" $(rm -rf ~)',
    "--config.tags=a b;c",
    "--config.cmd=`touch pwned` && echo $HOME | cat > x",
    "--config.note=line1\nline2",
    "--config.glob=* ~ !! \\ % {a,b}",
    "",
    "--config.tab=\t'\"",
]


def run_script(*argv):
  res = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=30)
  assert res.returncode == 0, res.stderr
  return res.stdout


def split_commands(text):
  """Parse printed commands: one per line, except that a quoted argument may hold a newline."""
  cmds, buf = [], ""
  for line in text.splitlines(keepends=True):
    buf += line
    try:
      cmds.append(shlex.split(buf))
    except ValueError:  # unclosed quote: the command continues on the next line
      continue
    buf = ""
  assert buf == ""
  return cmds


@pytest.fixture
def fake(tmp_path):
  """Fake executables that record argv, cwd and JAX_LOCAL_DEVICE_IDS; returns (make(name, ...), env, records())."""
  bin_dir, home, rec = tmp_path / "bin", tmp_path / "home", tmp_path / "records.jsonl"
  bin_dir.mkdir()
  home.mkdir()
  # The absolute interpreter path matters: a fake `python3` on PATH must not run itself.
  recorder = textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        with open(os.environ["REC_FILE"], "a") as f:
            f.write(json.dumps({{"argv": [os.path.basename(sys.argv[0]), *sys.argv[1:]], "cwd": os.getcwd(),
                                 "jax_ids": os.environ.get("JAX_LOCAL_DEVICE_IDS")}}) + "\\n")
        """)

  def make(*names):
    for name in names:
      (bin_dir / name).write_text(recorder)
      (bin_dir / name).chmod(0o755)

  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JAX_LOCAL"))}
  env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", HOME=str(home), REC_FILE=str(rec))

  def records():
    return [json.loads(line) for line in rec.read_text().splitlines()] if rec.exists() else []

  return make, env, records


# --- Cloud TPU pod slice ---------------------------------------------------------------------------------------

TPU = ["launch/tpu_pod.py", "--name=my-tpu", "--zone=us-central2-b", "--project=proj"]
ZONE = ["--zone=us-central2-b", "--project=proj"]
GC = ["gcloud", "compute", "tpus", "tpu-vm"]
INSTALL = (
    "mkdir -p ~/resnet && tar -xzf ~/resnet-code.tar.gz -C ~/resnet && cd ~/resnet"
    " && python3 -m pip install -r requirements.txt && python3 -m pip install 'jax[tpu]==0.10.2'"
)


def test_tpu_pod_dry_run_prints_exact_commands():
  out = run_script(
      *TPU,
      "--create",
      "--accelerator-type=v4-32",
      "--version=tpu-ubuntu2204-base",
      "--spot",
      "--dry-run",
      "--",
      "--config=configs/cifar_resnet.py",
      "--workdir=gs://b/run 1",
  )
  tarball = os.path.join(tempfile.gettempdir(), "my-tpu-resnet-code.tar.gz")
  repo = shlex.quote(str(REPO))
  run = "cd ~/resnet && python3 -m src.main --multihost --config=configs/cifar_resnet.py '--workdir=gs://b/run 1'"
  assert out.splitlines() == [
      "gcloud compute tpus tpu-vm describe my-tpu --zone=us-central2-b --project=proj",
      "gcloud compute tpus tpu-vm create my-tpu --zone=us-central2-b --project=proj"
      " --accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot",
      f"git -C {repo} ls-files -z --cached --others --exclude-standard -- ':(exclude)runs'"
      f" | tar -czf {shlex.quote(tarball)} -C {repo} --null --ignore-failed-read -T -",
      f"gcloud compute tpus tpu-vm scp {shlex.quote(tarball)} my-tpu:resnet-code.tar.gz"
      " --zone=us-central2-b --project=proj --worker=all",
      "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --project=proj --worker=all "
      + shlex.quote(f"--command={INSTALL}"),
      "gcloud compute tpus tpu-vm ssh my-tpu --zone=us-central2-b --project=proj --worker=all "
      + shlex.quote(f"--command={run}"),
  ]
  # The same, parsed the way bash would read the pasted lines.
  cmds = split_commands(out)
  assert cmds[4] == [*GC, "ssh", "my-tpu", *ZONE, "--worker=all", f"--command={INSTALL}"]
  assert cmds[5] == [*GC, "ssh", "my-tpu", *ZONE, "--worker=all", f"--command={run}"]


def test_tpu_pod_without_create_and_delete():
  out = run_script(*TPU, "--preemptible", "--dry-run")  # no --create: no describe/create, straight to copying
  assert [c[:2] for c in split_commands(out)] == [["git", "-C"], GC[:2], GC[:2], GC[:2]]
  assert split_commands(out)[-1][-1] == "--command=cd ~/resnet && python3 -m src.main --multihost"
  out = run_script(*TPU, "--delete", "--dry-run", "--", "--ignored")
  assert out == "gcloud compute tpus tpu-vm delete my-tpu --zone=us-central2-b --project=proj --quiet\n"
  res = subprocess.run([sys.executable, *TPU, "--create", "--dry-run"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 2 and "--accelerator-type" in res.stderr


def test_tpu_pod_hostile_args_reach_src_main_unchanged(fake, tmp_path):
  make, env, records = fake
  out = run_script(*TPU, "--remote-dir=~/my runs/r'1", "--dry-run", "--", *HOSTILE)
  remote = "~/'my runs/r'\"'\"'1'"  # ~ left for the remote shell to expand, the rest quoted
  cmds = split_commands(out)
  assert shlex.split(cmds[-1][-1].removeprefix("--command=")) == [
      "cd",
      "~/my runs/r'1",
      "&&",
      "python3",
      "-m",
      "src.main",
      "--multihost",
      *HOSTILE,
  ]
  assert cmds[-1][-1] == f"--command=cd {remote} && python3 -m src.main --multihost {shlex.join(HOSTILE)}"

  # Paste the whole dry run into bash with recording fakes: bash must hand gcloud exactly the parsed argv.
  make("gcloud", "git", "tar")
  subprocess.run(["bash", "-c", out], env=env, cwd=tmp_path, check=True, timeout=30)
  assert [r["argv"] for r in records() if r["argv"][0] == "gcloud"] == [c for c in cmds if c[0] == "gcloud"]

  # Play the remote side: its shell runs --command; the fake python3 must receive the original arguments.
  (Path(env["HOME"]) / "my runs" / "r'1").mkdir(parents=True)
  make("python3")
  subprocess.run(["bash", "-c", cmds[-1][-1].removeprefix("--command=")], env=env, cwd=tmp_path, check=True)
  assert records()[-1]["argv"] == ["python3", "-m", "src.main", "--multihost", *HOSTILE]
  assert records()[-1]["cwd"] == str(Path(env["HOME"]) / "my runs" / "r'1")
  assert not list(tmp_path.rglob("pwned"))  # no backtick ever ran


# --- SLURM -----------------------------------------------------------------------------------------------------

SBATCH_SCRIPT = str(REPO / "launch" / "slurm.sbatch")


def test_slurm_dry_run_prints_exact_sbatch_command():
  out = run_script(
      "launch/slurm.py",
      "--nodes",
      "2",
      "--gpus-per-node",
      "4",
      "--partition",
      "gpu",
      "--time",
      "02:00:00",
      "--job-name",
      "rn50",
      "--dry-run",
      "--",
      "--config=configs/imagenet.py",
      "--workdir=r 1",
  )
  assert out == (
      f"sbatch --nodes=2 --gpus-per-node=4 --job-name=rn50 --chdir={shlex.quote(str(REPO))}"
      f" --partition=gpu --time=02:00:00 --signal=TERM@300 --requeue --open-mode=append {shlex.quote(SBATCH_SCRIPT)}"
      " --config=configs/imagenet.py '--workdir=r 1'\n"
  )
  # Without --workdir the job's default is passed explicitly (the batch script looks for stopped.json there);
  # --no-requeue submits a job that ends when its time does.
  out = run_script(
      "launch/slurm.py", "--gpus-per-node=1", "--dry-run", "--", "--config=configs/cifar_resnet.py:depth=56"
  )
  assert out.split()[-2:] == ["--config=configs/cifar_resnet.py:depth=56", "--workdir=runs/cifar_resnet-depth=56"]
  out = run_script("launch/slurm.py", "--gpus-per-node=1", "--no-requeue", "--dry-run", "--", "--config=c.py")
  assert "--signal" not in out and "--requeue" not in out and out.split()[-1] == "--config=c.py"


@pytest.mark.slow
def test_slurm_job_requeues_itself_until_the_run_is_done(fake, tmp_path, fake_cifar10_dir):
  """The batch script as SLURM runs it, start after start: a real src.main whose time budget ends each start
  early (as --signal's SIGTERM would) leaves stopped.json, the script requeues the job (a fake scontrol), and the
  run ends complete."""
  from tests.conftest import tiny_cifar_args

  make, env, records = fake
  make("scontrol")
  (tmp_path / "bin" / "srun").write_text('#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n')
  (tmp_path / "bin" / "srun").chmod(0o755)  # srun runs its command: src.main for real
  env = dict(env, SLURM_JOB_ID="77", SLURM_GPUS_ON_NODE="1", PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  workdir = tmp_path / "run"
  args = tiny_cifar_args(fake_cifar10_dir, workdir, steps=20, log_every=10, time_limit_minutes=0.01)
  for start in range(1, 4):
    res = subprocess.run(["bash", SBATCH_SCRIPT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    requeued = [r["argv"] for r in records() if r["argv"][0] == "scontrol"]
    if not (workdir / "stopped.json").exists():
      break
    assert json.loads((workdir / "stopped.json").read_text())["reason"] == "time limit"
    assert requeued == [["scontrol", "requeue", "77"]] * start, res.stderr[-2000:]
  # Each start advances one log interval (10 steps) at least, so a budget this short still finishes: 2 starts.
  assert start == 2 and len(requeued) == 1
  assert json.loads((workdir / "result.json").read_text())["steps"] == 20


def test_slurm_hostile_args_reach_src_main_unchanged(fake, tmp_path):
  make, env, records = fake
  make("sbatch", "srun")
  out = run_script("launch/slurm.py", "--nodes=2", "--gpus-per-node=4", "--dry-run", "--", *HOSTILE)
  # Paste the dry run into bash: the fake sbatch gets the script followed by the untouched arguments.
  subprocess.run(["bash", "-c", out], env=env, cwd=tmp_path, check=True, timeout=30)
  argv = records()[-1]["argv"]
  assert argv[0] == "sbatch" and argv[argv.index(SBATCH_SCRIPT) + 1 :] == HOSTILE

  # Run the batch script as SLURM would (its args = what sbatch got after the script), with a fake srun.
  slurm_env = dict(env, SLURM_JOB_ID="123", SLURM_NNODES="2", SLURM_GPUS_ON_NODE="4")
  subprocess.run(["bash", SBATCH_SCRIPT, *HOSTILE], env=slurm_env, cwd=tmp_path, check=True, timeout=30)
  assert records()[-1]["argv"] == [
      "srun",
      "--ntasks-per-node=1",
      "--kill-on-bad-exit=1",
      "python",
      "-m",
      "src.main",
      *HOSTILE,
  ]
  assert records()[-1]["jax_ids"] == "0,1,2,3"  # every GPU of the node, not just SLURM_LOCALID's

  subprocess.run(["bash", SBATCH_SCRIPT], env=dict(env, SLURM_GPUS_PER_NODE="a100:2"), check=True)
  assert records()[-1]["jax_ids"] == "0,1"
  res = subprocess.run(["bash", SBATCH_SCRIPT], env=env, capture_output=True, text=True)
  assert res.returncode == 2 and "--gpus-per-node" in res.stderr


# --- N local processes -----------------------------------------------------------------------------------------

PROBE = """\
import argparse, pathlib, jax
from jax.experimental import multihost_utils
p = argparse.ArgumentParser()
p.add_argument("--out"); p.add_argument("--note")
p.add_argument("--coordinator_address"); p.add_argument("--num_processes", type=int); p.add_argument("--process_id", type=int)
a = p.parse_args()
jax.distributed.initialize(coordinator_address=a.coordinator_address, num_processes=a.num_processes,
                           process_id=a.process_id)
assert jax.process_count() == 2 and jax.device_count() == 4 and len(jax.local_devices()) == 2
ids = multihost_utils.process_allgather(jax.numpy.array([a.process_id]))  # a real cross-process collective
pathlib.Path(a.out, f"p{a.process_id}").write_text(f"{ids.ravel().tolist()} {a.note}")
print("probe ok", a.process_id, flush=True)
"""

HANG = """\
import argparse, os, signal, sys, time
p = argparse.ArgumentParser()
p.add_argument("--fail", type=int, default=-1)
p.add_argument("--coordinator_address"); p.add_argument("--num_processes", type=int); p.add_argument("--process_id", type=int)
a = p.parse_args()
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like a process stuck in a collective
print("pid", os.getpid(), flush=True)
if a.process_id == a.fail:
    sys.exit(3)
time.sleep(600)
"""


# src.main, but process 1 raises after its third train step call: the others are in the next step's collectives.
FAIL = """\
import time
from src.cpu import xla_flags
xla_flags.apply()
import jax
from absl import app, flags
from src import main, parallel
stop_after = parallel.Preemption.stop_after
def failing_stop_after(self, calls, steps_per_call, mesh):
    if jax.process_index() == 1 and calls == 3:
        print("injected failure at", time.time(), flush=True)
        raise RuntimeError("injected failure in process 1")
    return stop_after(self, calls, steps_per_call, mesh)
parallel.Preemption.stop_after = failing_stop_after
flags.mark_flag_as_required("config")
app.run(main.main)
"""


# A line on stdout between the pieces of a C++ library's stderr line, which Gloo writes unbuffered, in pieces.
PIECES = """\
import os
os.write(2, b"[lib] Rank ")
os.write(1, b"probe ok\\n")
os.write(2, b"1 is connected\\n")
"""


@pytest.fixture
def modules(tmp_path, monkeypatch):
  (tmp_path / "probe_mod.py").write_text(PROBE)
  (tmp_path / "pieces_mod.py").write_text(PIECES)
  (tmp_path / "hang_mod.py").write_text(HANG)
  (tmp_path / "fail_mod.py").write_text(FAIL)
  monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # children inherit it; launch_local adds the repo root
  return tmp_path


@pytest.mark.slow
def test_local_launch_runs_a_real_two_process_jax_job(modules):
  out = io.StringIO()
  rc = launch_local(
      [f"--out={modules}", "--note=a b $(x)"],
      num_processes=2,
      devices_per_process=2,
      module="probe_mod",
      timeout=120,
      out=out,
  )
  assert rc == 0, out.getvalue()
  assert [(modules / f"p{i}").read_text() for i in range(2)] == ["[0, 1] a b $(x)"] * 2
  lines = out.getvalue().splitlines()
  assert "[p0] probe ok 0" in lines and "[p1] probe ok 1" in lines


def test_local_launch_keeps_a_childs_stdout_and_stderr_lines_whole(modules):
  out = io.StringIO()
  assert launch_local([], 1, 1, module="pieces_mod", timeout=60, out=out) == 0, out.getvalue()
  assert sorted(out.getvalue().splitlines()) == ["[p0] [lib] Rank 1 is connected", "[p0] probe ok"]


def _pids(text):
  return [int(line.split()[-1]) for line in text.splitlines() if " pid " in line]


@pytest.mark.slow
def test_local_launch_kills_everyone_when_one_process_fails(modules):
  out, start = io.StringIO(), time.monotonic()
  rc = launch_local(["--fail=1"], 2, 1, module="hang_mod", timeout=60, grace=0.5, out=out)
  assert rc == 3 and time.monotonic() - start < 20, out.getvalue()
  for pid in _pids(out.getvalue()):  # all reaped: SIGKILL got through the ignored SIGTERM
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


@pytest.mark.slow
def test_one_failing_process_ends_the_whole_training_job_at_once(modules, tmp_path):
  """Every process ends by itself within seconds of process 1's error, non-zero: process 1 with 1 and its
  traceback (printed once), the others with STOPPED_FOR_ANOTHER and a line naming process 1; the launcher names
  process 1 and exits 1. Its grace is long, so a process that did not end by itself would show as killed."""
  from launch import local
  from src import parallel

  assert local.STOPPED_FOR_ANOTHER == parallel.STOPPED_FOR_ANOTHER
  out = io.StringIO()
  args = [
      "--config=configs/cifar_resnet.py:depth=8,mnist5k,steps=10",
      "--config.batch_size=63",
      "--config.eval_batch_size=63",
      "--config.model.bn_group_size=0",
      "--config.log_every=5",
      f"--workdir={tmp_path / 'run'}",
  ]
  rc = launch_local(args, 3, 1, module="fail_mod", timeout=300, grace=60, out=out)
  ended, text = time.time(), out.getvalue()
  assert rc == 1, text[-5000:]
  failed_at = float(next(line for line in text.splitlines() if "injected failure at" in line).split()[-1])
  assert ended - failed_at < 30, text[-5000:]
  assert "[local] process 1 failed first (exit code 1" in text
  assert "[local] exit codes: p0=75 p1=1 p2=75" in text, text[-5000:]
  assert text.count("RuntimeError: injected failure in process 1") == 1 and text.count("Traceback") == 1, text
  for i in (0, 2):
    assert f"[p{i}] error: process 1 failed" in text, text[-5000:]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_ends_its_children(modules, sig):
  """The signal is passed on; children that ignore it (HANG) get SIGKILL after --grace; the launcher exits
  128 + the signal."""
  env = {**os.environ, "PYTHONPATH": str(modules)}
  cmd = [sys.executable, "launch/local.py", "--num-processes=2", "--grace=1", "--module=hang_mod", "--"]
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  while len(_pids("\n".join(lines))) < 2:
    line = proc.stdout.readline()
    assert line, "".join(lines)
    lines.append(line)
  proc.send_signal(sig)
  rest, _ = proc.communicate(timeout=30)
  assert proc.returncode == 128 + sig, "".join(lines) + rest
  assert f"got {sig.name}" in rest
  for pid in _pids("\n".join(lines)):
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


@pytest.mark.slow
def test_local_launch_timeout(modules):
  out, start = io.StringIO(), time.monotonic()
  rc = launch_local([], 2, 1, module="hang_mod", timeout=2, grace=0.5, out=out)
  assert rc == 124 and time.monotonic() - start < 20, out.getvalue()
  assert "timeout" in out.getvalue()


def test_local_dry_run_cli():
  out = run_script(
      "launch/local.py",
      "--num-processes",
      "2",
      "--devices-per-process",
      "3",
      "--port",
      "4321",
      "--dry-run",
      "--",
      *HOSTILE,
  )
  cmds = split_commands(out)
  assert len(cmds) == 2
  for i, cmd in enumerate(cmds):
    # Appended to any XLA_FLAGS already set.
    assert cmd[0] == "env" and cmd[1].startswith("XLA_FLAGS=")
    assert cmd[1].endswith("--xla_force_host_platform_device_count=3")
    assert "JAX_PLATFORMS=cpu" in cmd
    tail = cmd[cmd.index("-m") :]
    assert tail == [
        "-m",
        "src.main",
        *HOSTILE,
        "--coordinator_address=127.0.0.1:4321",
        "--num_processes=2",
        f"--process_id={i}",
    ]
