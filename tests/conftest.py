import os
import subprocess
import sys

import numpy as np
import pytest

from src.cpu import xla_flags

# The test process runs every jit, its own references' too, with the project's XLA:CPU options, as src.main does
# (importing src no longer sets them: src/cpu/xla_flags.py).
xla_flags.apply()

from tests.fake_cifar import fake_cifar10_dir  # noqa: F401  (session fixture: a prepared fake CIFAR-10)
from tests.fake_imagenet import fake_imagenet_dir  # noqa: F401  (session fixture: a prepared fake ImageNet)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cifar_args(data_dir, workdir, steps=30, depth=8, **extra):
  """A few dozen steps of the real recipe on the fake CIFAR-10: small nets, batch 32."""
  args = [
      f"--config=configs/cifar_resnet.py:depth={depth}",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      "--config.data.val_size=100",
      "--config.batch_size=32",
      "--config.eval_batch_size=64",
      "--config.model.bn_group_size=16",
      f"--config.num_steps={steps}",
      "--config.log_every=5",
      "--config.eval_every=10",
      "--config.checkpoint_every=10",
      f"--config.schedule.boundaries=({steps // 2},{steps * 3 // 4})",
  ]
  return args + [f"--config.{k}={v}" for k, v in extra.items()]


def run_main(args, timeout=300, env=None, check=True):
  """python -m src.main in a fresh process, as a user runs it."""
  full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  proc = subprocess.run(
      [sys.executable, "-m", "src.main", *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"src.main failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def start_main(args, **kw):
  """python -m src.main started in the background (for tests that signal it), its output unbuffered in .stdout."""
  return subprocess.Popen(
      [sys.executable, "-m", "src.main", *args],
      cwd=REPO,
      env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"},
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      **kw,
  )


def load_state(run_dir, step=None):
  """The train state saved in a run's checkpoint (newest if step is None)."""
  from src.checkpoint import load_saved_state

  return load_saved_state(str(run_dir), step)


def assert_trees_bitwise_equal(a, b):
  import jax

  la, lb = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), f"differs at {jax.tree_util.keystr(path)}"


@pytest.fixture
def repo():
  return REPO


@pytest.fixture
def fake_allgather(monkeypatch):
  """Stands in for process_allgather across processes: the given per-process (mean, count) values, stacked."""
  from jax.experimental import multihost_utils

  def install(shards):
    local = [(im.mean(0, dtype=np.float64).astype(np.float32), np.int32(len(im))) for im in shards]
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda tree: tuple(np.stack(x) for x in zip(*local)))

  return install
