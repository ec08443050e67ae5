"""Reliability: preemption, SIGKILL at random moments, damaged checkpoints, divergence, a full disk, bad configs."""

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from configs.common import cifar_recipe
from src.config_check import validate
from src.errors import ConfigError
from tests.conftest import REPO, assert_trees_bitwise_equal, load_state, run_main, start_main, tiny_cifar_args

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def metric_steps(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f if line.strip()]


def wait_for_step(proc, run_dir, step, timeout=240):
  deadline = time.time() + timeout
  path = os.path.join(run_dir, "metrics.jsonl")
  while time.time() < deadline and proc.poll() is None:
    if os.path.exists(path) and any(s >= step for s in metric_steps(run_dir)):
      return True
    time.sleep(0.02)
  return False


@pytest.fixture(scope="module")
def straight(fake_cifar10_dir, tmp_path_factory):
  """An uninterrupted 30-step run: the reference every interrupted run must equal bitwise."""
  run_dir = tmp_path_factory.mktemp("straight")
  run_main(tiny_cifar_args(fake_cifar10_dir, run_dir, steps=30))
  return load_state(run_dir)


def test_sigkill_at_random_moments_then_resume_is_bitwise_identical(fake_cifar10_dir, tmp_path, straight):
  args = tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=30)
  rng = random.Random(1234)
  kills = 0
  for target in sorted(rng.sample([5, 10, 15, 20], 3)):
    proc = start_main(args)
    # A random moment after step `target` is logged: mid-step, mid-evaluation or mid-(async)-save.
    wait_for_step(proc, tmp_path, target)
    time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is None:
      proc.kill()
      kills += 1
    proc.communicate()
  assert kills >= 2
  final = run_main(args)
  assert_trees_bitwise_equal(load_state(tmp_path), straight)
  assert metric_steps(tmp_path) == list(range(5, 31, 5)), final.stdout


def test_time_limit_saves_exits_0_and_the_same_command_continues_bitwise(fake_cifar10_dir, tmp_path, straight):
  # A budget spent before the first log step: every start stops at its first log step (each start advances one
  # log interval at least) and the third start finishes. log_every may change on resume; the maths may not.
  args = tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=30, log_every=10, time_limit_minutes=0.01)
  for stop in (10, 20):
    proc = run_main(args)
    assert "time limit (" in proc.stdout and f"saved the checkpoint of step {stop}; exiting" in proc.stdout
    marker = json.loads((tmp_path / "stopped.json").read_text())
    assert (marker["reason"], marker["step"], marker["run"]) == ("time limit", stop, str(tmp_path))
    assert not (tmp_path / "result.json").exists()
  proc = run_main(args)
  assert "time limit" not in proc.stdout and not (tmp_path / "stopped.json").exists()
  assert_trees_bitwise_equal(load_state(tmp_path), straight)
  assert metric_steps(tmp_path) == [10, 20, 30]
  assert json.loads((tmp_path / "result.json").read_text())["steps"] == 30


@pytest.mark.parametrize("damage", ["truncate"])  # a deleted file is the simpler case of the same fallback
def test_damaged_newest_checkpoint_falls_back_to_an_intact_one(fake_cifar10_dir, tmp_path, straight, damage):
  args = tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=30)
  run_main(args + ["--config.num_steps=20"])
  newest = tmp_path / "checkpoints" / "20"
  files = sorted(
      (p for p in (newest / "state").rglob("*") if p.is_file() and p.stat().st_size > 1000),
      key=lambda p: -p.stat().st_size,
  )
  victim = files[0]  # the biggest file: array data
  if damage == "truncate":
    with open(victim, "r+b") as f:
      f.truncate(victim.stat().st_size // 3)
  else:
    victim.unlink()
  out = run_main(args)
  assert "Checkpoint 20" in out.stdout and "is unreadable" in out.stdout
  assert "at step 10" in out.stdout
  assert (tmp_path / "checkpoints.unreadable" / "20").is_dir()  # moved aside, not deleted
  assert_trees_bitwise_equal(load_state(tmp_path), straight)
  assert metric_steps(tmp_path) == list(range(5, 31, 5))


def test_divergence_stops_with_the_step_and_saves_no_nan_checkpoint(fake_cifar10_dir, tmp_path):
  proc = run_main(
      tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=30) + ["--config.schedule.base_lr=1e12"], check=False
  )
  assert proc.returncode != 0
  assert "Training diverged: train loss is nan" in proc.stderr or "Training diverged: train loss is inf" in proc.stderr
  assert "up to step 5" in proc.stderr
  ckpts = tmp_path / "checkpoints"
  assert not [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.exists() else True


def test_full_disk_during_a_save_is_a_clear_error_and_older_checkpoints_survive(fake_cifar10_dir, tmp_path):
  args = tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=30)
  run_main(args + ["--config.num_steps=10"])
  before = load_state(tmp_path, 10)

  def small_files():  # any file write past 64 KiB fails with EFBIG, as on a full disk
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

  proc = subprocess.run(
      [sys.executable, "-m", "src.main", *args],
      cwd=REPO,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=300,
      preexec_fn=small_files,
  )
  assert proc.returncode != 0
  assert "Could not write the checkpoint of step 20" in proc.stderr, proc.stderr[-3000:]
  assert "are intact" in proc.stderr
  assert_trees_bitwise_equal(load_state(tmp_path, 10), before)
  run_main(args)  # space is back: it resumes from 10 and finishes
  assert int(load_state(tmp_path)["step"]) == 30


def bad(base=None, **changes):
  c = base or cifar_recipe("cifar_resnet20")
  for key, value in changes.items():
    node = c
    *parents, leaf = key.split("__")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


BAD_CONFIGS = [
    (
        dict(model__name="cifar_resnet21"),
        "config.model.name: CIFAR nets of basic blocks have 6n+2 layers; got depth 21",
    ),
    (dict(model__name="resnet19"), "valid depths: [18, 34, 50, 101, 152]"),
    (dict(model__name="alexnet"), "config.model.name: Unknown model 'alexnet'. Valid names"),
    (dict(model__shortcut="D"), "config.model.shortcut: must be one of ['A', 'B', 'C']"),
    (dict(model__dtype="float64"), "config.model.dtype: must be one of ['bfloat16', 'float32']"),
    (dict(model__dtype="float16"), "config.model.dtype: float16 is refused: without loss scaling"),
    (dict(model__bn_group_size=48), "config.model.bn_group_size: must divide batch_size 128"),
    (dict(execution__conv_chunk=-1), "config.execution.conv_chunk: must be >= 0"),
    (dict(execution__conv_impl="cudnn"), "config.execution.conv_impl: must be one of"),
    (dict(model__scan="sometimes"), "config.model.scan: must be 'auto', 'true' or 'false'"),
    (dict(data__name="imagenet21k"), "config.data.name: must be one of"),
    (dict(data__val_size=-5), "config.data.val_size: must be an integer >= 0"),
    (dict(data__pad_fill="edge"), "config.data.pad_fill: must be 'zero' (black pixels) or 'mean'"),
    (dict(batch_size=0), "config.batch_size: must be a positive integer, got 0"),
    (dict(batch_size=100), "config.batch_size: 100 is not divisible by the 8 devices"),
    (dict(eval_batch_size=1001), "config.eval_batch_size: 1001 is not divisible by the 8 devices"),
    (dict(num_steps=-1), "config.num_steps: must be a positive integer"),
    (dict(log_every=0), "config.log_every: must be a positive integer"),
    (dict(execution__steps_per_call=3), "config.num_steps: 64000 must be a multiple of execution.steps_per_call (3)"),
    (dict(eval_every=150), "config.eval_every: 150 must be a multiple of log_every (100)"),
    (dict(schedule__base_lr=0.0), "config.schedule.base_lr: must be > 0"),
    (dict(schedule__boundaries=(48000, 32000)), "config.schedule.boundaries: must be increasing"),
    (dict(schedule__factor=10.0), "config.schedule.factor: must be in (0, 1]"),
    (dict(schedule__warmup_lr=-0.01), "config.schedule.warmup_lr: must be >= 0"),
    (dict(schedule__warmup_until_error=80.0), "config.schedule.warmup_until_error: is a training error fraction"),
    (dict(optim__momentum=1.0), "config.optim.momentum: must be in [0, 1)"),
    (dict(optim__weight_decay=-1e-4), "config.optim.weight_decay: must be >= 0"),
    (dict(optim__momentum_form="pytorch"), "config.optim.momentum_form: must be 'caffe'"),
    (dict(schedule__kind="cosine"), "config.schedule.kind: must be 'step'"),
    (dict(schedule__kind="plateau", data__val_size=0), "config.schedule.kind: 'plateau' watches the validation"),
    (dict(schedule__kind="plateau", schedule__plateau_patience=0), "config.schedule.plateau_patience: must be a"),
    (dict(mode="predict"), "config.mode: must be 'train' or 'eval'"),
    (dict(eval__protocols=("ten_crop",)), "config.eval.protocols: must be some of ['center'] for cifar10"),
    (dict(eval__split="val", data__val_size=0), "config.eval.split: must be a split this dataset has"),
]

IMAGENET_BAD_CONFIGS = [
    (dict(data__scale_min=200), "config.data.scale_min: need crop <= scale_min <= scale_max"),
    (dict(data__eval_resize=128), "config.data.eval_resize: must be >= data.crop (224)"),
    (dict(data__mean="image"), "config.data.mean: must be 'pixel' or 'channel'"),
    (dict(data__multiscale=()), "config.data.multiscale: must be positive shorter sides"),
    (dict(eval__protocols=("five_crop",)), "config.eval.protocols: must be some of ['center', 'ten_crop'"),
    (dict(eval__split="test"), "config.eval.split: must be a split this dataset has (val)"),
]


@pytest.mark.parametrize(
    "changes,message", IMAGENET_BAD_CONFIGS, ids=[m.split(":")[0] for _, m in IMAGENET_BAD_CONFIGS]
)
def test_bad_imagenet_config_table(changes, message):
  from configs.common import imagenet_recipe

  with pytest.raises(ConfigError) as e:
    validate(bad(base=imagenet_recipe(), **changes), device_count=8, process_count=1)
  assert message in str(e.value)


@pytest.mark.parametrize("changes,message", BAD_CONFIGS, ids=[m.split(":")[0] for _, m in BAD_CONFIGS])
def test_bad_config_table(changes, message):
  with pytest.raises(ConfigError) as e:
    validate(bad(**changes), device_count=8, process_count=1)
  assert message in str(e.value)


def test_the_paper_configs_are_valid():
  from configs import cifar_depth_sweep, cifar_resnet
  from src.sweep import run_config

  validate(cifar_resnet.get_config("depth=110"), device_count=8, process_count=2)
  from configs import imagenet_plain_vs_resnet, imagenet_resnet

  for arg in ("depth=18", "depth=34,shortcut=A", "depth=50,schedule=epochs", "depth=152,v15", "depth=34,net=plain"):
    validate(imagenet_resnet.get_config(arg), device_count=8, process_count=1)
  for overrides in imagenet_plain_vs_resnet.get_config().sweep:
    validate(run_config(imagenet_plain_vs_resnet.get_config(), overrides), device_count=256, process_count=32)
  for arg in (None, "mnist5k", "resnet1202"):
    sweep = cifar_depth_sweep.get_config(arg)
    for overrides in sweep.sweep:
      validate(run_config(sweep, overrides), device_count=1, process_count=1)
  from configs import cifar_preact_vs_original

  for arg in ("preact164", "mnist5k"):
    sweep = cifar_preact_vs_original.get_config(arg)
    for overrides in sweep.sweep:
      validate(run_config(sweep, overrides), device_count=1, process_count=1)
  for arg in ("depth=18,image_dir=/data/imagenette2", "depth=50,image_dir=/data/x,crop=128,schedule=epochs"):
    validate(imagenet_resnet.get_config(arg), device_count=8, process_count=1)


def test_several_steps_per_jitted_call_train_the_same(fake_cifar10_dir, tmp_path):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from src import models, parallel
  from src import step as train_steps
  # In-process: 5 single steps against one call of 5 scanned steps, from the same state on the same batches.
  config = cifar_recipe("cifar_resnet8")
  mesh, model = parallel.make_mesh(), models.model_from_config(config.model, num_classes=10)
  rng = np.random.default_rng(0)
  batches = [
      {
          "image": rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (32,)).astype(np.int32),
      }
      for _ in range(5)
  ]
  mean = jnp.full((32, 32, 3), 120.0)
  single, tx = train_steps.create_state(config, model, (32, 32, 3), mesh)
  step = jax.jit(train_steps.make_train_step(config, model, tx, mean))
  losses = []
  for b in batches:
    single, m = step(single, b)
    losses.append(float(m["train/loss"]))
  multi, _ = train_steps.create_state(config, model, (32, 32, 3), mesh)
  multi, m = jax.jit(train_steps.make_multi_step(train_steps.make_train_step(config, model, tx, mean)))(
      multi, train_steps.stack(batches)
  )
  np.testing.assert_allclose(np.asarray(m["train/loss"]), losses, rtol=1e-4)
  assert int(multi.step) == 5
  for a, b in zip(jax.tree.leaves(multi.params), jax.tree.leaves(single.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-3)  # float reassociation, 5 steps at lr 0.1
  # Through src.main: logging and checkpoints on the same steps as single-step training.
  run_main(tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=30, **{"execution.steps_per_call": 5}))
  assert metric_steps(tmp_path) == list(range(5, 31, 5))
  assert int(load_state(tmp_path)["step"]) == 30


def test_resuming_a_workdir_checks_the_experiment_not_how_it_is_run(tmp_path):
  from src.resume import check_same_run

  saved = cifar_recipe("cifar_resnet20")
  (tmp_path / "config.json").write_text(saved.to_json())
  same = cifar_recipe("cifar_resnet20")  # what may change on resume (README): the maths stay the same
  same.execution.conv_impl, same.execution.conv_chunk, same.execution.remat = "xla", 0, True  # e.g. resumed on a GPU
  same.data.data_dir, same.num_steps, same.execution.steps_per_call, same.eval_batch_size = "/elsewhere", 96_000, 4, 512
  same.log_every, same.eval_every, same.checkpoint_every, same.keep_checkpoints = 50, 1000, 1000, 5
  same.eval.protocols, same.xla_cpu_ynn_fusions, same.async_checkpoints = ("center",), True, False
  check_same_run(same, str(tmp_path))
  for field, value in [
      ("model.name", "cifar_resnet56"),
      ("model.dtype", "bfloat16"),
      ("optim.momentum_form", "optax"),
      ("optim.nesterov", True),
      ("optim.weight_decay", 5e-4),
      ("schedule.boundaries", (1000, 2000)),
      ("schedule.warmup_lr", 0.01),
      ("data.val_size", 0),
      ("batch_size", 256),
      ("seed", 1),
  ]:
    other = cifar_recipe("cifar_resnet20")
    *parents, leaf = field.split(".")
    node = other
    for part in parents:
      node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError, match=rf"different config \(fields that differ: \['{field}'\]"):
      check_same_run(other, str(tmp_path))


def test_float16_is_refused_with_a_pointer_to_bfloat16():
  with pytest.raises(ConfigError, match="float16 is refused") as e:
    validate(bad(model__dtype="float16"), device_count=1, process_count=1)
  assert "Use bfloat16" in str(e.value)
  validate(bad(model__dtype="bfloat16"), device_count=1, process_count=1)


def test_resnet1202_trains_with_the_warmup_and_rematerialised_stages():
  # Sec. 4.2 trains ResNet-1202 "as described above"; reproductions report it needs ResNet-110's warm-up.
  from configs import cifar_depth_sweep, cifar_resnet
  from src.sweep import run_config

  sweep = cifar_depth_sweep.get_config("resnet1202")
  runs = {o["name"]: run_config(sweep, o) for o in sweep.sweep}
  for config in (cifar_resnet.get_config("depth=1202"), runs["resnet1202"]):
    assert config.schedule.warmup_lr == 0.01 and config.execution.remat is True
    validate(config, device_count=8, process_count=1)
  assert runs["resnet110"].schedule.warmup_lr == 0.01 and runs["resnet110"].execution.remat is False
  assert runs["resnet56"].schedule.warmup_lr == 0.0


def test_resume_with_another_optimiser_is_refused_before_anything_moves(tmp_path):
  """The issue's scenario: a finished run, started again with another momentum form. Nothing may be set aside,
  rewritten or retrained: a clear error naming the field, and the original config still resumes the run."""
  base = ["--config=configs/cifar_resnet.py:depth=8,mnist5k,steps=20", f"--workdir={tmp_path}"]
  run_main(base)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["10", "20"]

  def files():
    return {
        str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and "tb" not in p.parts
    }

  before = files()
  changed = base + ["--config.num_steps=40", "--config.optim.momentum_form=optax"]
  proc = run_main(changed, check=False)
  assert proc.returncode != 0
  assert "holds a run with a different config (fields that differ: ['optim.momentum_form']" in proc.stderr
  assert files() == before and not (tmp_path / "checkpoints.unreadable").exists()

  # Without config.json to compare with, the checkpoint's tree metadata tells the same before any array is read.
  (tmp_path / "config.json").unlink()
  del before["config.json"]
  proc = run_main(changed, check=False)
  assert proc.returncode != 0
  assert "checkpoint 20 holds a train state of another structure" in proc.stderr
  assert "opt_state/inner_state/2/... (23 arrays): in the checkpoint, not in this train state" in proc.stderr
  assert "Nothing was moved or written" in proc.stderr
  assert files() == before and not (tmp_path / "checkpoints.unreadable").exists()

  proc = run_main(base + ["--config.num_steps=40"])  # num_steps may change: the same experiment, longer
  assert "at step 20" in proc.stdout and metric_steps(tmp_path) == list(range(10, 41, 10))


TRANSIENT = """
import os, resource, sys, threading
from configs.common import cifar_recipe
from src import checkpoint, models, parallel
from src import step as train_steps

config = cifar_recipe("cifar_resnet8")
model = models.model_from_config(config.model, num_classes=10)
state, _ = train_steps.create_state(config, model, (32, 32, 3), parallel.make_mesh())
ckpts = checkpoint.Checkpoints(sys.argv[1], async_save=False)
ckpts.save(10, state, {"step": 10}, force=True)
ckpts.wait()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (3, hard))  # no file can be opened: EMFILE, as on a busy host
if sys.argv[2] == "passes":  # the cause goes away while restore_latest waits to try again
  threading.Timer(0.5, resource.setrlimit, (resource.RLIMIT_NOFILE, (soft, hard))).start()
  kwargs = {}
else:
  kwargs = {"retries": 2, "backoff_s": 0.1}
try:
  step, restored, meta = ckpts.restore_latest(checkpoint.abstract(state), log=lambda m: print("LOG", m), **kwargs)
  resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
  print("RESTORED", step, meta["step"], flush=True)
except Exception as e:
  resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
  print("RAISED", type(e).__name__, e, flush=True)
"""


@pytest.mark.parametrize("cause", ["passes", "persists"])
def test_transient_read_errors_are_retried_never_taken_for_damage(tmp_path, cause):
  # A real transient error from the real Orbax read: too many open files (EMFILE), through RLIMIT_NOFILE.
  ckpt_dir = tmp_path / "checkpoints"
  proc = subprocess.run(
      [sys.executable, "-c", TRANSIENT, str(ckpt_dir), cause], cwd=REPO, env=ENV, capture_output=True, text=True
  )
  out = proc.stdout
  assert "failed transiently" in out and "Too many open files" in out, out + proc.stderr[-3000:]
  if cause == "passes":
    assert "RESTORED 10 10" in out, out + proc.stderr[-3000:]
  else:
    assert "RAISED CheckpointReadError Could not read checkpoint 10" in out and "3 times" in out, out
  assert os.listdir(ckpt_dir) == ["10"] and not (tmp_path / "checkpoints.unreadable").exists()


def test_read_errors_are_classified_by_their_causes():
  import errno

  from src.checkpoint import classify_read_error

  def wrapped(inner):  # Orbax wraps TensorStore's errors in a plain Exception
    try:
      raise Exception("Encountered error while reading array index") from inner
    except Exception as e:
      return e

  assert classify_read_error(MemoryError()) == "transient"
  assert classify_read_error(OSError(errno.EIO, "Input/output error")) == "transient"
  assert classify_read_error(wrapped(ValueError("RESOURCE_EXHAUSTED: out of memory"))) == "transient"
  assert classify_read_error(wrapped(ValueError("UNAVAILABLE: gcs"))) == "transient"
  assert classify_read_error(wrapped(ValueError("OUT_OF_RANGE: Requested byte range [89460, 106554)"))) == "damage"
  assert classify_read_error(wrapped(ValueError("DATA_LOSS: Error decoding manifest"))) == "damage"
  assert classify_read_error(wrapped(ValueError("FAILED_PRECONDITION: Truncated Zstd-compressed stream"))) == "damage"
  assert classify_read_error(FileNotFoundError("_METADATA does not exist")) == "damage"
  assert classify_read_error(json.JSONDecodeError("Unterminated string", "{", 1)) == "damage"
  assert classify_read_error(PermissionError(errno.EACCES, "Permission denied")) == "error"
  assert classify_read_error(ValueError("pytree structure error")) == "error"


def start_processes(args, logs, n=2):
  """The job launch/local.py starts (n processes x 1 CPU device on 127.0.0.1), as separate Popen objects so that
  a test can signal one process only. Output goes to files (a full pipe would stall a process), stdout and stderr
  each to its own: in one, Gloo's log line, which it writes in pieces, could split one of ours (output())."""
  if REPO not in sys.path:  # `launch` imports under plain `pytest` too (as in test_launch.py)
    sys.path.insert(0, REPO)
  from launch.local import child_command, child_env, free_port

  port, env = free_port(), child_env(1, base=ENV)
  return [
      subprocess.Popen(
          child_command(args, i, n, port),
          cwd=REPO,
          env=env,
          stdout=open(logs / f"p{i}.out", "w"),
          stderr=open(logs / f"p{i}.err", "w"),
          start_new_session=True,
      )
      for i in range(n)
  ]


def output(logs, i):
  """What process i of start_processes(..., logs) wrote: its stdout, then its stderr."""
  return (logs / f"p{i}.out").read_text() + (logs / f"p{i}.err").read_text()


def finish(procs, timeout):
  """Exit codes; whatever has not exited by then is killed (SIGKILL: a hung JAX job ignores SIGTERM)."""
  deadline = time.time() + timeout
  try:
    return [p.wait(timeout=max(1, deadline - time.time())) for p in procs]
  except subprocess.TimeoutExpired:
    return [p.returncode for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_stops_both_at_the_same_step(fake_cifar10_dir, tmp_path):
  """Schedulers signal one host, or each a few steps apart: every process must save the same step and exit 0,
  and the resumed job must end bitwise equal to an uninterrupted one."""
  steps = 60

  def args(workdir):
    return tiny_cifar_args(fake_cifar10_dir, workdir, steps=steps, checkpoint_every=steps)

  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  straight.mkdir(), stopped.mkdir()
  assert finish(start_processes(args(straight), straight), 600) == [0, 0], output(straight, 0)[-3000:]

  procs = start_processes(args(stopped), stopped)
  assert wait_for_step(procs[0], stopped, 10)
  procs[1].send_signal(signal.SIGTERM)  # process 1 only
  codes = finish(procs, 300)
  logs = [output(stopped, i) for i in range(2)]
  assert codes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  # Each process says why it stopped: process 1 was signalled, process 0 agreed with it.
  said = [
      re.findall(r"(SIGTERM|stop agreed with another process): saved the checkpoint of step (\d+)", log) for log in logs
  ]
  assert [r for r, _ in said[0] + said[1]] == ["stop agreed with another process", "SIGTERM"], said
  assert said[0][0][1] == said[1][0][1], said
  saved = int(said[0][0][1])
  assert 10 <= saved < steps and sorted(os.listdir(stopped / "checkpoints")) == [str(saved)]

  # Started again: both processes resume from that step and end where the uninterrupted job ended.
  assert finish(start_processes(args(stopped), stopped), 600) == [0, 0], output(stopped, 0)[-3000:]
  assert f"Resumed from {stopped / 'checkpoints'} at step {saved}" in output(stopped, 0)
  assert_trees_bitwise_equal(load_state(stopped), load_state(straight))

  # A changed experiment is refused by both processes alike, and nothing is moved.
  kept = sorted(os.listdir(stopped / "checkpoints"))
  changed = args(stopped) + ["--config.optim.momentum_form=optax"]
  assert finish(start_processes(changed, stopped), 300) == [1, 1]
  for i in range(2):
    assert "fields that differ: ['optim.momentum_form']" in output(stopped, i)
  assert sorted(os.listdir(stopped / "checkpoints")) == kept and not (stopped / "checkpoints.unreadable").exists()
