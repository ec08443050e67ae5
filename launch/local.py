"""Start N JAX processes on 127.0.0.1 (CPU devices) to try multi-host code on one machine.

  python launch/local.py --num-processes 2 --devices-per-process 2 [--port P] [--timeout S] [--dry-run] \
      -- --config=configs/cifar10.py --workdir=runs/local2

Child i runs `python -m src.main <args> --coordinator_address=127.0.0.1:P --num_processes=N --process_id=i`
with JAX_PLATFORMS=cpu and N fake host devices per process; its output is prefixed `[pi] `. When one child fails
the launcher names it and ends the others; a SIGTERM or Ctrl-C to it reaches every child (launch_local).
"""

import argparse
import os
import queue
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
  # Line by line so the output of different processes never interleaves mid-line. Each child's stdout and stderr
  # have a pump each: one shared pipe would mix a print with a C++ library's log line (Gloo writes its "Rank i is
  # connected" line to stderr in pieces) within one line.
  for raw in iter(stream.readline, b""):
    with lock:
      out.write(prefix + raw.decode(errors="replace").rstrip("\r\n") + "\n")
      out.flush()


def _kill_all(procs, grace, first=signal.SIGTERM):
  # `first` (SIGTERM, or the signal the launcher got), then SIGKILL: a process stuck in a JAX collective or the
  # coordinator barrier ignores SIGTERM. Each child leads its own process group, so helpers it spawned die with it.
  for sig, wait_s in ((first, grace), (signal.SIGKILL, None)):
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


# The exit status of a child that ended because another one failed first (src.parallel.STOPPED_FOR_ANOTHER): the
# child that failed first is the first to exit non-zero with another status.
STOPPED_FOR_ANOTHER = 75


def _exit_code(returncode):
  # A child killed by signal s reports -s; map it to the shell convention 128+s so it stays non-zero.
  return 128 - returncode if returncode < 0 else returncode


class _Signalled(Exception):
  """SIGTERM or SIGINT to the launcher: its children get the same signal, then SIGKILL after the grace period."""

  def __init__(self, signum):
    super().__init__(signum)
    self.signum = signum


def _raise_signalled(signum, frame):
  raise _Signalled(signum)


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
  """Runs the job; returns 0, the exit code of the child that failed first, 124 on timeout, or 128 + s after
  signal s (SIGTERM: 143, SIGINT/Ctrl-C: 130).

  When a child exits non-zero, says which one failed first (the first to exit so; its error is in its `[pi]`
  lines) and ends the others: SIGTERM, then SIGKILL after `grace` seconds. A SIGTERM or SIGINT to the launcher
  is passed on to every child, which gets SIGKILL after `grace` seconds. At the end it prints every child's exit
  status when one was not 0.
  """
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
  procs, pumps, code, first_signal = [], [], 0, signal.SIGTERM
  exits = queue.Queue()  # (index, returncode) in the order the children exit

  def say(msg):
    with lock:
      print(f"[local] {msg}", file=out, flush=True)

  def await_exit(i, p):
    exits.put((i, p.wait()))

  # Signals reach only the main thread's handlers; launch_local called from another thread keeps the defaults.
  main_thread = threading.current_thread() is threading.main_thread()
  old_handlers = {s: signal.signal(s, _raise_signalled) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread else {}
  try:
    for i, cmd in enumerate(cmds):
      procs.append(
          subprocess.Popen(
              cmd,
              env=env,
              stdin=subprocess.DEVNULL,
              stdout=subprocess.PIPE,
              stderr=subprocess.PIPE,
              start_new_session=True,
          )
      )
      pumps.append(
          [
              threading.Thread(target=_pump, args=(stream, f"[p{i}] ", out, lock), daemon=True)
              for stream in (procs[-1].stdout, procs[-1].stderr)
          ]
      )
      for t in pumps[-1]:
        t.start()
      threading.Thread(target=await_exit, args=(i, procs[-1]), daemon=True).start()
    deadline = None if timeout is None else time.monotonic() + timeout
    done, stopped, failed = 0, [], None
    while done < num_processes:
      try:
        i, c = exits.get(timeout=0.1)
      except queue.Empty:
        if stopped and time.monotonic() > stopped_at + grace:  # the failed one hangs: stop waiting for it
          break
        if deadline is not None and time.monotonic() > deadline:
          code = 124
          say(f"timeout after {timeout}s; stopping all processes")
          break
        continue
      done += 1
      if c == STOPPED_FOR_ANOTHER:  # ended because another failed, which may exit after it (process 0 does)
        stopped, stopped_at = stopped + [i], time.monotonic() if not stopped else stopped_at
      elif c != 0:
        failed = i
        code = _exit_code(c)
        for t in pumps[i]:
          t.join(timeout=2)  # its last lines (the error) before ours
        say(f"process {i} failed first (exit code {c}; its error is in its [p{i}] lines); stopping the others")
        break
    if failed is None and stopped and not code:
      code = STOPPED_FOR_ANOTHER
      say(f"processes {stopped} stopped because another failed, which has not exited; stopping the others")
  except (KeyboardInterrupt, _Signalled) as e:
    for s in old_handlers:  # a second signal must not cut the stopping short
      signal.signal(s, signal.SIG_IGN)
    first_signal = e.signum if isinstance(e, _Signalled) else signal.SIGINT
    code = 128 + first_signal
    say(f"got {signal.Signals(first_signal).name}; passing it on to every process")
  finally:
    try:
      _kill_all(procs, grace, first_signal)
    finally:
      for s, handler in old_handlers.items():
        signal.signal(s, handler)
    for t in (t for pair in pumps for t in pair):
      t.join(timeout=2)  # a grandchild could keep a pipe open; don't hang on it
  if code and procs:
    say("exit codes: " + " ".join(f"p{i}={p.returncode}" for i, p in enumerate(procs)))
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
  parser.add_argument(
      "--grace", type=float, default=5.0, help="seconds between SIGTERM and SIGKILL when the job is stopped"
  )
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
      grace=args.grace,
  )


if __name__ == "__main__":
  sys.exit(main())
