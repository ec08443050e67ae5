"""Start N JAX processes on 127.0.0.1 (CPU devices) to try multi-host code on one machine.

  python launch/local.py --num-processes 2 --devices-per-process 2 [--port P] [--timeout S] [--dry-run] \
      -- --config=configs/cifar10.py --workdir=runs/local2

Child i runs `python -m src.main <args> --coordinator_address=127.0.0.1:P --num_processes=N --process_id=i`
with JAX_PLATFORMS=cpu and N fake host devices per process; its output is prefixed `[pi] `.
"""

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  # Racy in principle (the port is released before the coordinator binds it) but fine on one machine.
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def child_env(devices_per_process, base=None):
  env = dict(os.environ if base is None else base)
  flag = f"--xla_force_host_platform_device_count={devices_per_process}"
  env["XLA_FLAGS"] = f"{env['XLA_FLAGS']} {flag}" if env.get("XLA_FLAGS") else flag
  env["JAX_PLATFORMS"] = "cpu"
  # Make `-m src.main` importable from any cwd without changing the cwd (relative --workdir keeps its meaning).
  env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
  return env


def child_command(main_args, process_id, num_processes, port, module="src.main"):
  return [
      sys.executable,
      "-m",
      module,
      *main_args,
      f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}",
      f"--process_id={process_id}",
  ]


def _pump(stream, prefix, out, lock):
  # Line by line so the output of different processes never interleaves mid-line.
  for raw in iter(stream.readline, b""):
    with lock:
      out.write(prefix + raw.decode(errors="replace").rstrip("\r\n") + "\n")
      out.flush()


def _kill_all(procs, grace):
  # SIGTERM first, then SIGKILL: a process stuck in a JAX collective or the coordinator barrier ignores SIGTERM.
  # Each child leads its own process group, so helpers it spawned die with it.
  for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
      try:
        os.killpg(p.pid, sig)
      except ProcessLookupError:
        pass
    deadline = time.monotonic() + (wait_s or 0)
    for p in alive:
      try:
        p.wait(None if wait_s is None else max(0.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pass


def _exit_code(returncode):
  # A child killed by signal s reports -s; map it to the shell convention 128+s so it stays non-zero.
  return 128 - returncode if returncode < 0 else returncode


def launch_local(
    main_args,
    num_processes,
    devices_per_process,
    port=None,
    timeout=None,
    module="src.main",
    dry_run=False,
    grace=5.0,
    out=None,
):
  """Run the job; return 0, the first non-zero child exit code, 124 on timeout or 130 on Ctrl-C."""
  out = out or sys.stdout
  port = port or free_port()
  env = child_env(devices_per_process)
  cmds = [child_command(main_args, i, num_processes, port, module) for i in range(num_processes)]
  if dry_run:
    shown_env = [f"{k}={env[k]}" for k in ("XLA_FLAGS", "JAX_PLATFORMS", "PYTHONPATH")]
    for cmd in cmds:
      print(shlex.join(["env", *shown_env, *cmd]), file=out)
    return 0

  lock = threading.Lock()
  procs, pumps, code = [], [], 0

  def say(msg):
    with lock:
      print(f"[local] {msg}", file=out, flush=True)

  try:
    for i, cmd in enumerate(cmds):
      procs.append(
          subprocess.Popen(
              cmd,
              env=env,
              stdin=subprocess.DEVNULL,
              stdout=subprocess.PIPE,
              stderr=subprocess.STDOUT,
              start_new_session=True,
          )
      )
      pumps.append(threading.Thread(target=_pump, args=(procs[-1].stdout, f"[p{i}] ", out, lock), daemon=True))
      pumps[-1].start()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not code:
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed:
        code = _exit_code(failed[0][1])
        say(f"process {failed[0][0]} exited with code {failed[0][1]}; stopping the others")
      elif all(c == 0 for c in codes):
        break
      elif deadline is not None and time.monotonic() > deadline:
        code = 124
        say(f"timeout after {timeout}s; stopping all processes")
      else:
        time.sleep(0.1)
  except KeyboardInterrupt:
    code = 130
  finally:
    _kill_all(procs, grace)
    for t in pumps:
      t.join(timeout=2)  # a grandchild could keep the pipe open; don't hang on it
  return code


def main(argv=None):
  argv = sys.argv[1:] if argv is None else list(argv)
  # Everything after the first `--` belongs to src.main, untouched by argparse.
  ours, main_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num-processes", type=int, default=2)
  parser.add_argument("--devices-per-process", type=int, default=1)
  parser.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
  parser.add_argument("--timeout", type=float, default=None, help="seconds before all processes are killed")
  parser.add_argument("--module", default="src.main", help="module run with `python -m`")
  parser.add_argument("--dry-run", action="store_true", help="print the commands, start nothing")
  args = parser.parse_args(ours)
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error("--num-processes and --devices-per-process must be >= 1")
  return launch_local(
      main_args,
      args.num_processes,
      args.devices_per_process,
      port=args.port,
      timeout=args.timeout,
      module=args.module,
      dry_run=args.dry_run,
  )


if __name__ == "__main__":
  sys.exit(main())
