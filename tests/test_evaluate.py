"""The plateau schedule (ImageNet, Sec. 3.4) and checkpoint evaluation / ensembles (src/evaluate.py)."""

import io
import json
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs.common import cifar_recipe
from src import data, models, optim
from src.errors import ConfigError
from src.evaluate import load_members, topk_errors
from src.step import normalize
from tests.conftest import REPO, run_main, tiny_cifar_args
from tests.test_train import read_jsonl


def plateau_config(patience=2, min_delta=0.01, factor=0.1):
  c = cifar_recipe()
  c.schedule.kind, c.schedule.plateau_patience = "plateau", patience
  c.schedule.plateau_min_delta, c.schedule.factor = min_delta, factor
  return c


def test_plateau_rule_lowers_the_lr_exactly_when_the_error_stops_improving():
  config = plateau_config(patience=2, min_delta=0.01)
  errors = [0.50, 0.40, 0.395, 0.39, 0.30, 0.31, 0.305, 0.20, 0.25, 0.25, 0.25, 0.25]
  # improved by > 0.01?  y     y     n      n  -> x0.1  y     n     n  -> x0.1  y     n     n -> x0.1  n     n -> x0.1
  expected = [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 1e-4]
  p, scales = optim.plateau_init(), []
  for e in errors:
    p = optim.plateau_update(config, p, e)
    scales.append(float(p.scale))
  np.testing.assert_allclose(scales, expected, rtol=1e-6)
  step = optim.plateau_update(cifar_recipe(), optim.plateau_init(), 0.5)  # kind 'step': never changes
  assert float(step.scale) == 1.0


def test_plateau_schedule_in_the_train_loop(fake_cifar10_dir, tmp_path):
  """Evaluations every 5 steps; patience 1: after each evaluation that does not improve the val error,
  the next steps run at a tenth of the lr, and the rule's state survives a restart."""
  args = tiny_cifar_args(fake_cifar10_dir, tmp_path, steps=40, depth=8, eval_every=5, log_every=5, checkpoint_every=20)
  args += [
      "--config.schedule.kind=plateau",
      "--config.schedule.plateau_patience=1",
      "--config.schedule.plateau_min_delta=0.0",
  ]
  run_main([a.replace("num_steps=40", "num_steps=20") for a in args])  # stop at 20, then resume to 40
  run_main(args)
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == list(range(5, 45, 5))
  best, lr = np.inf, 0.1
  for row in rows:
    assert row["lr"] == pytest.approx(lr, rel=1e-6), row  # the lr of the steps since the previous evaluation
    if row["val/error"] < best:
      best = row["val/error"]
    else:
      lr *= 0.1
  assert rows[-1]["lr"] < 0.1  # the rule did fire in this run (deterministic on the CPU)


def test_topk_errors():
  probs = np.array([[0.1, 0.5, 0.2, 0.05, 0.05, 0.05, 0.05], [0.3, 0.1, 0.1, 0.1, 0.2, 0.1, 0.1]])
  assert topk_errors(probs, np.array([1, 6])) == {"top1": 1, "top5": 1, "count": 2}
  assert topk_errors(probs, np.array([2, 4])) == {"top1": 2, "top5": 0, "count": 2}


def test_ensemble_is_the_mean_of_its_members_softmax(fake_cifar10_dir, tmp_path):
  members = []
  for depth, seed in ((8, 0), (14, 1)):
    workdir = tmp_path / f"m{depth}"
    run_main(tiny_cifar_args(fake_cifar10_dir, workdir, steps=10, depth=depth, seed=seed))
    members.append(workdir)
  args = tiny_cifar_args(fake_cifar10_dir, members[0], steps=10, depth=8)
  run_main(args + ["--config.mode=eval", f"--config.eval.ensemble=('{members[1]}',)"])
  got = json.loads((members[0] / "eval.json").read_text())
  assert [m["model"] for m in got["members"]] == ["cifar_resnet8", "cifar_resnet14"]

  # The same, by hand: each member's softmax on the test images, averaged.
  cfg = ml_collections.ConfigDict({"name": "cifar10", "data_dir": fake_cifar10_dir, "val_size": 100})
  ds = data.get_dataset(cfg, seed=0)
  images, labels = ds.eval_data["test"]
  probs = []
  for workdir in members:
    ((model, variables, _),) = load_members(str(workdir), 10)
    probs.append(np.asarray(jax.nn.softmax(model.apply(variables, normalize(images, ds.mean), train=False))))
  ensemble = np.mean(probs, axis=0)
  want = topk_errors(ensemble, labels)
  assert got["results"]["center"]["count"] == len(labels)
  assert got["results"]["center"]["top1_error"] == want["top1"] / len(labels)
  assert got["results"]["center"]["top5_error"] == want["top5"] / len(labels)
  singles = [topk_errors(p, labels)["top1"] for p in probs]
  print("members' top-1 wrong:", singles, "ensemble:", want["top1"])


def imagenet_args(data_dir, workdir, steps=6):
  """ResNet-18 on the fake ImageNet at 32 px: the real recipe and pipeline, scaled to a CPU test."""
  return [
      "--config=configs/imagenet_resnet.py:depth=18",
      f"--workdir={workdir}",
      f"--config.data.data_dir={data_dir}",
      "--config.data.crop=32",
      "--config.data.scale_min=36",
      "--config.data.scale_max=48",
      "--config.data.eval_resize=36",
      "--config.data.multiscale=(32,40,48)",
      "--config.data.multiscale_round=8",
      "--config.data.mean_images=16",
      "--config.data.shuffle_buffer=64",
      "--config.batch_size=8",
      "--config.eval_batch_size=8",
      "--config.model.bn_group_size=0",
      f"--config.num_steps={steps}",
      "--config.log_every=3",
      "--config.eval_every=3",
      "--config.checkpoint_every=3",
  ]


def test_imagenet_trains_and_evaluates_with_every_protocol(fake_imagenet_dir, tmp_path):
  from src import models, parallel
  from src.evaluate import predict

  args = imagenet_args(fake_imagenet_dir, tmp_path)
  run_main(args)
  rows = read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [3, 6]
  assert {"val/error", "val/top5_error", "train/loss"} <= set(rows[-1]) and np.isfinite(rows[-1]["train/loss"])

  proc = run_main(args + ["--config.mode=eval"])
  got = json.loads((tmp_path / "eval.json").read_text())
  assert set(got["results"]) == {"center", "ten_crop", "multiscale"}, proc.stdout
  assert all(r["count"] == 7 for r in got["results"].values())  # every validation image, once

  # The protocols by hand, on the same checkpoint and the real pipeline.
  cfg = ml_collections.ConfigDict(json.loads((tmp_path / "config.json").read_text())).data  # the run's own
  assert (cfg.crop, tuple(cfg.multiscale), cfg.data_dir) == (32, (32, 40, 48), fake_imagenet_dir)
  ds = data.get_dataset(cfg, seed=0)
  ((model, variables, _),) = load_members(str(tmp_path), 1000)
  softmax = lambda x, mean: np.asarray(jax.nn.softmax(model.apply(variables, normalize(x, mean), train=False)))
  mesh = parallel.make_mesh()

  crops, labels = [], []
  for batch in ds.eval_batches("val", 8, protocol="ten_crop"):
    m = batch["mask"]
    crops.append(np.mean([softmax(batch["image"][m][:, i], ds.mean) for i in range(10)], axis=0))
    labels.append(batch["label"][m])
  want, labels = np.concatenate(crops), np.concatenate(labels)
  probs, got_labels = predict(model, variables, ds, "val", "ten_crop", 8, mesh)
  np.testing.assert_array_equal(got_labels, labels)
  np.testing.assert_allclose(probs, want, rtol=1e-4, atol=1e-6)  # the mean of the 10 crops' softmax
  assert got["results"]["ten_crop"]["top1_error"] == topk_errors(want, labels)["top1"] / 7

  scales = []
  for item in ds.multiscale_batches("val"):
    assert [min(x.shape[1:3]) for x in item["images"]] == [32, 40, 48]
    scales.append(np.mean([softmax(x, ds.mean.mean((0, 1)))[0] for x in item["images"]], axis=0))
  probs, _ = predict(model, variables, ds, "val", "multiscale", 8, mesh)
  np.testing.assert_allclose(probs, np.stack(scales), rtol=1e-4, atol=1e-6)  # the mean over the scales
  assert got["results"]["multiscale"]["top5_error"] == topk_errors(np.stack(scales), labels)["top5"] / 7
  assert models.count_params(variables["params"]) > 11e6  # the real ResNet-18 (11.7M parameters)


def test_paper_lookup_takes_the_default_shortcut_of_the_registry():
  from src import models, paper
  from src.evaluate import paper_error

  assert models.get_model("resnet34").shortcut == paper.IMAGENET_DEFAULT_SHORTCUT  # what None builds
  config = ml_collections.ConfigDict(
      {"model": {"name": "resnet34", "shortcut": None}, "data": {"name": "imagenet2012"}}
  )
  assert paper_error(config, "ten_crop") == paper.IMAGENET_10CROP["resnet34:B"]
  config.data.name = "image_folder"  # a folder of photos (Imagenette, ...): the paper's ImageNet numbers would mislead
  assert paper_error(config, "ten_crop") is None
  config.data.name = "imagenet2012"
  config.model.shortcut = "C"
  assert paper_error(config, "multiscale") == paper.IMAGENET_MULTISCALE["resnet34:C"]
  config.model.name = "resnet50"
  assert paper_error(config, "ten_crop") == paper.IMAGENET_10CROP["resnet50"]
  assert paper_error(config, "center") is None


def test_ten_crop_and_multiscale_calls_need_the_memory_of_one_eval_batch():
  """eval_batch_size counts network inputs: a 10-crop call takes a tenth of the images, so XLA's memory analysis
  of the compiled call matches a centre-crop call's (the old call, eval_batch_size images x 10 crops, needs 10x)."""
  import jax.numpy as jnp

  from configs.common import imagenet_recipe
  from src import evaluate, parallel

  config = imagenet_recipe("resnet18")
  config.data.crop, config.data.multiscale, config.data.multiscale_round = 64, (64, 96), 16
  config.eval_batch_size = 40
  assert evaluate.images_per_call("ten_crop", 40) == 4 and evaluate.images_per_call("center", 40) == 40
  assert evaluate.images_per_call("ten_crop", 8) == 1  # at least one image per device
  memory = {p: evaluate.eval_call_memory(config, p) for p in ("center", "ten_crop", "multiscale")}
  assert memory["center"]["input_shape"] == (40, 64, 64, 3)
  assert memory["ten_crop"]["input_shape"] == (4, 10, 64, 64, 3)
  assert memory["multiscale"]["input_shape"] == (1, 96, 128, 3)
  center = memory["center"]["temp_bytes"]
  assert memory["ten_crop"]["temp_bytes"] <= 1.05 * center, memory
  assert memory["multiscale"]["temp_bytes"] <= center, memory

  # What the old predict() compiled: 40 images x 10 crops in one call.
  model = models.model_from_config(config.model, num_classes=1000)
  mesh = parallel.make_mesh()
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  fn = evaluate.scores_fn(model, jnp.zeros((64, 64, 3)), mesh, "ten_crop")
  old = jax.ShapeDtypeStruct((40, 10, 64, 64, 3), jnp.uint8, sharding=parallel.batch_sharded(mesh))
  assert fn.lower(variables, old).compile().memory_analysis().temp_size_in_bytes > 5 * center


# --- evaluation by a job of several processes ------------------------------------------------------------------------

MNIST_RUN = ["--config=configs/cifar_resnet.py:depth=8,mnist5k,steps=20", "--config.model.bn_group_size=0"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
  """A 20-step ResNet-8 of two seeds on mnist5k, trained by one process of one device at the config's batch of 64,
  and its eval.json as one process writes it: (workdir, eval.json)."""
  workdir = tmp_path_factory.mktemp("mnist_run")
  run_main([*MNIST_RUN, f"--workdir={workdir}", "--config.num_seeds=2"])
  run_main(
      [*MNIST_RUN, f"--workdir={workdir}", "--config.num_seeds=2", "--config.mode=eval", "--config.eval_batch_size=63"]
  )
  return workdir, json.loads((workdir / "eval.json").read_text())


def test_eval_checks_eval_batch_size_against_the_devices_not_batch_size():
  from configs.cifar_resnet import get_config
  from src.config_check import validate

  config = get_config("depth=8,mnist5k")
  config.eval_batch_size = 63
  config.mode = "eval"
  validate(config, device_count=3, process_count=3)  # batch_size 64: the train batch is not split in mode=eval
  config.mode = "train"
  with pytest.raises(ConfigError, match="config.batch_size: 64 is not divisible by the 3 devices of this job"):
    validate(config, device_count=3, process_count=3)
  config.mode, config.eval_batch_size = "eval", 64
  with pytest.raises(ConfigError, match="config.eval_batch_size: 64 is not divisible by the 3 devices"):
    validate(config, device_count=3, process_count=3)


@pytest.mark.slow
def test_three_processes_evaluate_a_one_device_run_exactly_as_one_process(mnist_run):
  """Restored onto the evaluating job's own mesh (not the saving job's device), each test image counted once:
  eval.json is the same as one process's, exactly (errors are counts over the same 500 images), for both seeds."""
  sys.path.insert(0, REPO)  # so `launch` imports under plain `pytest` too
  from launch.local import launch_local

  workdir, one = mnist_run
  (workdir / "eval.json").unlink()
  out = io.StringIO()
  # batch_size stays 64, which 3 devices do not divide: mode=eval never splits the train batch.
  args = [
      *MNIST_RUN,
      f"--workdir={workdir}",
      "--config.num_seeds=2",
      "--config.mode=eval",
      "--config.eval_batch_size=63",
  ]
  assert launch_local(args, 3, 1, timeout=240, out=out) == 0, out.getvalue()[-5000:]
  three = json.loads((workdir / "eval.json").read_text())
  assert three == one
  center = three["results"]["center"]
  assert center["count"] == 500 and [r["count"] for r in center["replicas"]] == [500, 500]
