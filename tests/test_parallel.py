"""Data parallelism over a device Mesh (8 virtual CPU devices) and a 2-process local "pod"."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np

from tests.conftest import REPO, load_state, run_main, tiny_cifar_args

EIGHT = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def test_eight_devices_match_one_and_per_device_bn_matches_hand_reference():
  proc = subprocess.run(
      [sys.executable, "tests/mesh_equivalence.py"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=600,
      env={**os.environ, **EIGHT, "PYTHONPATH": REPO},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  # Synchronised BN: 3 steps on 8 devices == on 1 device, to float tolerance.
  np.testing.assert_allclose(r["sync_losses_8"], r["sync_losses_1"], rtol=1e-5)
  assert r["sync_param_diff"] < 1e-4 * r["param_scale"] and r["sync_stats_diff"] < 1e-4
  # Per-device BN: each device's 4 images normalised by their own statistics, exactly as by hand ...
  assert r["per_device_logits_diff"] < 1e-4 and r["per_device_stats_diff"] < 1e-5
  # ... which is a different function from synchronised BN ...
  assert r["sync_vs_per_device_logits_diff"] > 1e-2
  # ... and needs no communication: the compiled step all-reduces only the gradients.
  assert r["all_reduces_per_device"] < r["all_reduces_sync"]


def test_resume_onto_a_different_device_count(fake_cifar10_dir, tmp_path):
  args = tiny_cifar_args(fake_cifar10_dir, tmp_path / "r", steps=20)
  run_main(args + ["--config.num_steps=10"], env=EIGHT)
  saved = load_state(tmp_path / "r", 10)
  out = run_main(args, env={"XLA_FLAGS": ""})  # 1 device now
  assert "Resumed from" in out.stdout and "at step 10" in out.stdout
  final = load_state(tmp_path / "r", 20)
  assert int(final["step"]) == 20
  moved = max(float(np.max(np.abs(a - b))) for a, b in zip(_leaves(final["params"]), _leaves(saved["params"])))
  assert moved > 0  # it trained on from there
  # and the first resumed step started from the saved state: the same run on 1 device throughout is close
  run_main(tiny_cifar_args(fake_cifar10_dir, tmp_path / "one", steps=20), env={"XLA_FLAGS": ""})
  ref = load_state(tmp_path / "one", 20)
  for a, b in zip(_leaves(final["params"]), _leaves(ref["params"])):
    np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-3)


def _leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_two_process_pod_trains_checkpoints_is_killed_and_resumes(fake_cifar10_dir, tmp_path):
  workdir = tmp_path / "pod"
  main_args = tiny_cifar_args(fake_cifar10_dir, workdir, steps=30)
  cmd = [
      sys.executable,
      "launch/local.py",
      "--num-processes=2",
      "--devices-per-process=2",
      "--timeout=300",
      "--",
      *main_args,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  first = subprocess.Popen(
      cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
  )
  metrics = workdir / "metrics.jsonl"
  deadline, lines = time.time() + 300, []
  while time.time() < deadline and first.poll() is None:
    if metrics.exists() and any(json.loads(l)["step"] >= 15 for l in metrics.read_text().splitlines() if l):
      break
    time.sleep(0.1)
  assert first.poll() is None, "the pod ended before it could be killed"
  os.killpg(first.pid, signal.SIGKILL)  # the launcher and both processes, at once
  lines = first.stdout.read()
  first.wait()
  shards = dict(re.findall(r"process (\d)/2: \d+ of \d+ training examples, shard fingerprint (\w+)", lines))
  assert len(shards) == 2 and shards["0"] != shards["1"], lines[-3000:]
  assert int(load_state(workdir)["step"]) < 30
  second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=400)
  assert second.returncode == 0, second.stdout[-4000:]
  assert "[p0] Resumed from" in second.stdout
  assert int(load_state(workdir)["step"]) == 30
  steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines() if l]
  assert steps == list(range(5, 31, 5))  # written by process 0 only, no duplicates
