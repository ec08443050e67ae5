"""Image-folder datasets (src/data/image_folder.py, pipeline 'cifar': decoded into memory) on a subset of the real
CIFAR-10 JPEG copy in <repo>/../shared/data/cifar10-jpeg.tar.gz: the first 100 train and 20 test images per class."""

import csv
import json
import os
import re
import shutil
import signal
import tarfile

import ml_collections
import numpy as np
import pytest
from PIL import Image

from src import paper
from src.config_check import validate
from src.data import get_dataset, image_folder
from src.errors import ConfigError, DatasetMissingError
from tests.conftest import REPO, run_main, start_main

ARCHIVE = os.path.join(os.path.dirname(REPO), "shared", "data", "cifar10-jpeg.tar.gz")
PER_CLASS = {"train": 100, "test": 20}  # images numbered below this, of each class: 1,000 train, 200 test
VAL = 200
CLASSES = list(image_folder.CIFAR10_CLASSES)


@pytest.fixture(scope="session")
def cifar_jpeg_dir(tmp_path_factory):
  """<tmp>/train/<class>/00NN.jpg and test/..., extracted member by member (never the whole archive)."""
  if not os.path.exists(ARCHIVE):
    pytest.skip(f"the CIFAR-10 JPEG copy is absent ({ARCHIVE}); see ../shared/data/README.md")
  root = tmp_path_factory.mktemp("cifar10_jpeg")
  wanted = re.compile(r"(train|test)/([a-z]+)/(\d+)\.jpg")
  with tarfile.open(ARCHIVE, "r|gz") as tar:  # one streaming pass
    for member in tar:
      m = wanted.fullmatch(os.path.normpath(member.name))
      if member.isfile() and m and int(m.group(3)) < PER_CLASS[m.group(1)]:
        dest = root / m.group(0)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(tar.extractfile(member).read())
  return str(root)


def config(root, **kw):
  return ml_collections.ConfigDict(dict(name="image_folder", dir=root, val_size=VAL, pad=4, flip=True) | kw)


def pillow(path):
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"))


def files(root, split):
  """(paths, labels) in (sorted class, sorted file) order, listed here without the loader."""
  out = [
      (os.path.join(root, split, c, f), i)
      for i, c in enumerate(CLASSES)
      for f in sorted(os.listdir(f"{root}/{split}/{c}"))
  ]
  return [p for p, _ in out], np.array([i for _, i in out])


def keys(images):
  return [im.tobytes() for im in images]


@pytest.fixture(scope="module")
def ds(cifar_jpeg_dir):
  return get_dataset(config(cifar_jpeg_dir), seed=0)


def test_shapes_labels_and_class_order(ds, cifar_jpeg_dir):
  assert (ds.num_train, ds.num_examples("val"), ds.num_examples("test")) == (800, 200, 200)
  assert ds.splits == ("val", "test") and ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
  assert list(ds.class_names) == CLASSES  # sorted folder names: CIFAR-10's label order
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  assert ds.info == {
      "dir": cifar_jpeg_dir,
      "heldout": "test",
      "classes": CLASSES,
      "image_shape": [32, 32, 3],
      "copy_of": "cifar10",
  }
  # test: every image in (class, file) order, pixels exactly Pillow's (libjpeg's accurate IDCT).
  paths, labels = files(cifar_jpeg_dir, "test")
  test_images, test_labels = ds.eval_data["test"]
  np.testing.assert_array_equal(test_labels, labels)
  np.testing.assert_array_equal(test_images, np.stack([pillow(p) for p in paths]))
  # train + val: the 1,000 train images, each once, each with its folder's label.
  paths, labels = files(cifar_jpeg_dir, "train")
  label_of = dict(zip(keys(pillow(p) for p in paths), labels))
  assert len(label_of) == 1000  # the images are distinct, so pixels identify files
  images = np.concatenate([ds.train_images, ds.eval_data["val"][0]])
  got = np.concatenate([ds.train_labels, ds.eval_data["val"][1]])
  assert sorted(keys(images)) == sorted(label_of)
  np.testing.assert_array_equal(got, [label_of[k] for k in keys(images)])


def test_val_split_is_a_fixed_permutation(ds, cifar_jpeg_dir):
  val_labels = ds.eval_data["val"][1]
  counts = np.bincount(val_labels, minlength=10)
  assert counts.sum() == 200 and counts.min() >= 10 and counts.max() <= 30  # 20 expected per class
  assert (np.diff(val_labels) < 0).any() and (np.diff(ds.train_labels) < 0).any()  # shuffled, not class-sorted
  assert not set(keys(ds.train_images)) & set(keys(ds.eval_data["val"][0]))
  other = get_dataset(config(cifar_jpeg_dir), seed=7)  # the run seed does not move the split
  np.testing.assert_array_equal(other.eval_data["val"][0], ds.eval_data["val"][0])
  np.testing.assert_array_equal(other.train_images, ds.train_images)
  smaller = get_dataset(config(cifar_jpeg_dir, val_size=50), seed=0)  # one permutation: a prefix of the same
  np.testing.assert_array_equal(smaller.eval_data["val"][0], ds.eval_data["val"][0][:50])
  full = get_dataset(config(cifar_jpeg_dir, val_size=0), seed=0)
  assert full.splits == ("test",) and full.num_train == 1000


def test_mean_is_the_per_pixel_mean_of_the_train_part(ds):
  assert ds.mean.dtype == np.float32 and ds.mean.shape == (32, 32, 3)
  np.testing.assert_allclose(ds.mean, ds.train_images.astype(np.float64).mean(0), rtol=1e-6)
  with_val = np.concatenate([ds.train_images, ds.eval_data["val"][0]]).astype(np.float64).mean(0)
  assert np.abs(ds.mean - with_val).max() > 0.1  # val images are not in it


def test_two_processes_partition_every_split(ds, cifar_jpeg_dir, fake_allgather):
  shards = [image_folder.load(cifar_jpeg_dir, VAL, i, 2)[0] for i in range(2)]
  for split, size in (("train", 800), ("val", 200), ("test", 200)):
    assert [len(s[split][1]) for s in shards] == [size // 2] * 2  # np.array_split, as tfds.even_splits
    full = ds.train_images if split == "train" else ds.eval_data[split][0]
    np.testing.assert_array_equal(np.concatenate([s[split][0] for s in shards]), full)
  fake_allgather([s["train"][0] for s in shards])
  parts = [get_dataset(config(cifar_jpeg_dir), seed=0, process_index=i, process_count=2) for i in range(2)]
  for p in parts:
    assert p.num_train == 800 and p.num_examples("test") == 200
    np.testing.assert_allclose(p.mean, ds.mean, rtol=1e-6)  # the whole train part's mean on every process
  assert not np.array_equal(parts[0].train_batch(0, 16)["image"], parts[1].train_batch(0, 16)["image"])


def test_train_batches_are_bitwise_a_function_of_seed_and_step(ds, cifar_jpeg_dir):
  a, b = ds.train_batch(60, 32), ds.train_batch(3, 32)  # step 60 is in epoch 2 of 800 images
  again = get_dataset(config(cifar_jpeg_dir), seed=0)  # a fresh load, the other call order: a resumed run
  b2, a2 = again.train_batch(3, 32), again.train_batch(60, 32)
  for x, y in ((a, a2), (b, b2)):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  assert not np.array_equal(a["image"], b["image"])
  other_seed = get_dataset(config(cifar_jpeg_dir), seed=1)
  assert not np.array_equal(other_seed.train_batch(60, 32)["image"], a["image"])


def small_copy(src, dst, per_class=3, classes=("airplane", "cat", "ship")):
  """A 3-class, 3-image-per-split copy of the subset to break in one way."""
  for split in ("train", "test"):
    for c in classes:
      os.makedirs(f"{dst}/{split}/{c}")
      for f in sorted(os.listdir(f"{src}/{split}/{c}"))[:per_class]:
        shutil.copy(f"{src}/{split}/{c}/{f}", f"{dst}/{split}/{c}/{f}")
  return str(dst)


def load_error(root) -> str:
  with pytest.raises(DatasetMissingError) as e:
    get_dataset(config(str(root), val_size=2), seed=0)
  return str(e.value)


def test_a_small_copy_loads(cifar_jpeg_dir, tmp_path):
  ok = get_dataset(config(small_copy(cifar_jpeg_dir, tmp_path / "ok"), val_size=2), seed=0)  # the baseline of below
  assert (ok.num_train, ok.num_examples("test"), ok.class_names) == (7, 9, ("airplane", "cat", "ship"))
  assert ok.info["copy_of"] is None  # three classes are not CIFAR-10


def test_missing_dir(tmp_path):
  msg = load_error(tmp_path / "nowhere")
  assert f"{tmp_path}/nowhere" in msg and "is not a directory" in msg and "image_dir=" in msg
  assert "<dir>/train/<class>/<image>" in msg  # the fix: the layout to give it


def test_split_without_images(cifar_jpeg_dir, tmp_path):
  root = small_copy(cifar_jpeg_dir, tmp_path / "d")
  for c in os.listdir(f"{root}/test"):
    for f in os.listdir(f"{root}/test/{c}"):
      os.rename(f"{root}/test/{c}/{f}", f"{root}/test/{c}/{f}.txt")  # not an image any more
  msg = load_error(root)
  assert f"The 'test' split of the image folder has no images: {root}/test" in msg and "airplane" in msg
  shutil.rmtree(f"{root}/test")
  assert "no class folders" in load_error(root)
  shutil.copytree(f"{root}/train", f"{root}/test")
  os.makedirs(f"{root}/train/dog")  # a class folder without images
  assert f"Class folders without images in {root}/train: ['dog']" in load_error(root)


def test_classes_that_differ_between_splits_are_found_before_decoding(cifar_jpeg_dir, tmp_path):
  root = small_copy(cifar_jpeg_dir, tmp_path / "d")
  os.rename(f"{root}/test/cat", f"{root}/test/kitten")
  Image.new("RGB", (40, 40)).save(f"{root}/train/ship/big.jpg")  # would fail only later, when decoded
  msg = load_error(root)
  assert f"{root}/train and {root}/test differ: only in train: ['cat'], only in test: ['kitten']" in msg
  assert "rename or remove folders" in msg


def test_src_main_stops_with_the_message_before_compiling(cifar_jpeg_dir, tmp_path):
  root = small_copy(cifar_jpeg_dir, tmp_path / "d")
  os.rename(f"{root}/test/cat", f"{root}/test/kitten")
  proc = run_main(
      [f"--config=configs/cifar_resnet.py:depth=8,image_dir={root},steps=4", f"--workdir={tmp_path / 'w'}"], check=False
  )
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert "error: The class folders of" in proc.stderr and "only in test: ['kitten']" in proc.stderr
  assert not (tmp_path / "w" / "checkpoints").exists()  # no model was built


def test_images_of_different_sizes(cifar_jpeg_dir, tmp_path):
  root = small_copy(cifar_jpeg_dir, tmp_path / "d")
  path = f"{root}/test/cat/{sorted(os.listdir(f'{root}/test/cat'))[1]}"
  with Image.open(path) as im:
    im.resize((40, 36)).save(path)  # width 40, height 36
  msg = load_error(root)
  assert f"The images of {root} have different sizes: 17 of the 18 read here are 32x32" in msg
  assert f"36x40: 1 image(s), e.g. {path}" in msg and "resize" in msg


def test_an_undecodable_image_is_named(cifar_jpeg_dir, tmp_path):
  root = small_copy(cifar_jpeg_dir, tmp_path / "d")
  with open(f"{root}/test/ship/broken.jpg", "wb") as f:
    f.write(b"\xff\xd8\xff not a JPEG")  # a JPEG's first bytes, then garbage
  msg = load_error(root)
  assert f"An image of 'test' could not be decoded: {root}/test/ship/broken.jpg" in msg and "Replace or remove" in msg


def test_config_errors(cifar_jpeg_dir):
  from configs import cifar_resnet

  c = cifar_resnet.get_config("depth=20")
  c.data.name = "image_folder"  # without data.dir
  with pytest.raises(ConfigError, match=r"config.data.dir: must be the image folder's root.*got ''"):
    validate(c, device_count=1, process_count=1)
  with pytest.raises(ConfigError, match=r"config.data.val_size: 1000 must be in \[0, 1000\)"):
    get_dataset(config(cifar_jpeg_dir, val_size=1000), seed=0)


def test_image_dir_presets_scale_the_papers_schedule():
  from configs import cifar_depth_sweep, cifar_resnet
  from src.main import workdir_for
  from src.sweep import run_config

  sweep = cifar_depth_sweep.get_config("image_dir=/data/cifar10-jpeg,steps=8000")
  one = cifar_resnet.get_config("depth=110,image_dir=/data/cifar10-jpeg,steps=8000")
  for c in (sweep, one):
    assert (c.data.name, c.data.dir, c.num_steps, tuple(c.schedule.boundaries)) == (
        "image_folder",
        "/data/cifar10-jpeg",
        8000,
        (4000, 6000),
    )
    assert (c.log_every, c.eval_every, c.checkpoint_every) == (100, 1000, 1000)
    # The rest of the paper's recipe stays.
    assert (c.batch_size, c.data.val_size, c.data.pad, c.data.flip, c.model.bn_group_size) == (128, 5000, 4, True, 64)
  assert [r["name"] for r in sweep.sweep] == [f"{n}{d}" for n in ("plain", "resnet") for d in (20, 32, 44, 56)] + [
      "resnet110"
  ]
  assert one.schedule.warmup_lr == 0.01
  for overrides in sweep.sweep:
    validate(run_config(sweep, overrides), device_count=1, process_count=1)
  full = cifar_resnet.get_config("image_dir=/data/cifar10-jpeg")  # no steps: the paper's 64k schedule
  assert (full.num_steps, tuple(full.schedule.boundaries), full.eval_every) == (64000, (32000, 48000), 2000)
  quick = cifar_depth_sweep.get_config("mnist5k")  # the quick start's preset (README): its own batch, lr and length
  assert (quick.num_steps, quick.batch_size, quick.schedule.base_lr, tuple(quick.schedule.boundaries)) == (
      400,
      64,
      0.02,
      (200, 300),
  )
  with pytest.raises(ValueError, match="give one of them"):
    cifar_depth_sweep.get_config("mnist5k,image_dir=/data/x")
  spec = "configs/cifar_depth_sweep.py:image_dir=/data/cifar10-jpeg/,steps=8000"
  assert workdir_for(spec) == "runs/cifar_depth_sweep-image_dir=cifar10-jpeg,steps=8000"  # one directory


def test_results_mark_table6_beside_a_cifar10_copy(tmp_path):
  from src.analysis import table6
  from src.sweep import write_results

  copy = {"copy_of": "cifar10", "dir": "/data/cifar10-jpeg"}
  results = [  # (name, model, dataset, data): what result.json holds
      ("original", "cifar_resnet20", "cifar10", None),
      ("jpeg", "cifar_resnet20", "image_folder", copy),
      ("other", "cifar_resnet20", "image_folder", {"copy_of": None, "dir": "/data/flowers"}),
      ("digits", "cifar_resnet20", "mnist5k", None),
  ]
  results = [
      {"name": n, "model": m, "dataset": d, **({"data": x} if x else {}), "params": 1, "test/error": 0.1}
      for n, m, d, x in results
  ]
  write_results(results, str(tmp_path))
  md = (tmp_path / "results.md").read_text(encoding="utf-8")
  lines = [line.strip("| ").split(" | ") for line in md.splitlines() if line.startswith("| ")]
  paper_column = next(i for i, h in enumerate(lines[0]) if h.startswith("paper"))
  rows = {line[0]: line[paper_column] for line in lines[1:]}
  assert rows["original"] == "8.75" and rows["jpeg"] == "8.75†"
  # Other data: the net's CIFAR-10 number in brackets, for reference, never as the comparison (the CSV keeps none).
  assert rows["other"] == "(8.75 on CIFAR-10)" and rows["digits"] == "(8.75 on CIFAR-10)"
  assert f"† Runs {paper.CIFAR10_COPY_NOTE} (data: /data/cifar10-jpeg)." in md
  with open(tmp_path / "results.csv") as f:
    data = {r["name"]: (r["data"], r["paper test error"]) for r in csv.DictReader(f)}
  assert data["jpeg"] == ("image_folder (CIFAR-10 copy)", "8.75") and data["other"] == ("image_folder", "")
  # src.analysis reads the same from the runs' directories.
  for r in results:
    (tmp_path / r["name"]).mkdir()
    (tmp_path / r["name"] / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "train/error": 0.2, "test/error": 0.1}) + "\n"
    )
    (tmp_path / r["name"] / "result.json").write_text(json.dumps(r))
  t6 = table6(str(tmp_path)).set_index("run")
  assert t6.loc["jpeg", "paper test/error"] == 8.75 and t6.loc["jpeg", "copy_of"] == "cifar10"
  assert t6.loc["original", "paper test/error"] == 8.75 and pd_isna(t6.loc["other", "paper test/error"])
  from src.report import write_report

  write_report(str(tmp_path), log=lambda _: None)
  assert f"and for copy_of cifar10 runs, {paper.CIFAR10_COPY_NOTE}." in (tmp_path / "table6.md").read_text()


def pd_isna(v):
  return v is None or v != v


def test_depth_sweep_on_the_image_folder_end_to_end_through_a_sigterm(cifar_jpeg_dir, tmp_path):
  """The sweep as a user runs it, preempted (SIGTERM) as its second run starts: the first run's result stays, the
  second saves its step and the process exits 0; started again, the sweep skips the first run and resumes the second."""
  workdir = tmp_path / "sweep"
  steps = 4
  args = [
      f"--config=configs/cifar_depth_sweep.py:image_dir={cifar_jpeg_dir},steps={steps},depths=8",
      f"--workdir={workdir}",
      "--config.data.val_size=100",
      "--config.batch_size=16",
      "--config.eval_batch_size=64",
      "--config.model.bn_group_size=16",
      "--config.log_every=2",
      "--config.eval_every=4",
      "--config.checkpoint_every=4",
  ]
  proc = start_main(args)
  out = []
  for line in proc.stdout:  # the second run is loading its data or compiling: its first step is seconds away
    out.append(line)
    if line.startswith("[2/2] resnet8: training"):
      proc.send_signal(signal.SIGTERM)
      break
  out.append(proc.communicate(timeout=300)[0])
  log = "".join(out)
  assert proc.returncode == 0, log[-3000:]
  said = re.findall(r"SIGTERM: saved the checkpoint of step (\d+)", log)
  assert len(said) == 1 and 1 <= int(said[0]) < steps, log[-3000:]
  assert (workdir / "plain8" / "result.json").exists() and not (workdir / "resnet8" / "result.json").exists()
  assert os.listdir(workdir / "resnet8" / "checkpoints") == [said[0]]

  log = run_main(args).stdout
  assert "[1/2] plain8: done already, skipped." in log and f"at step {said[0]}." in log
  for run in ("plain8", "resnet8"):
    rows = [json.loads(line) for line in (workdir / run / "metrics.jsonl").read_text().splitlines()]
    stopped = [int(said[0])] if run == "resnet8" and int(said[0]) != 2 else []  # a row at the step it saved
    assert [r["step"] for r in rows] == sorted(stopped + [2, 4]) and "test/error" in rows[-1]
    result = json.loads((workdir / run / "result.json").read_text())
    assert result["steps"] == steps and result["dataset"] == "image_folder" and 0 <= result["test/error"] <= 1
    assert result["data"]["copy_of"] == "cifar10" and result["data"]["dir"] == cifar_jpeg_dir
    config = json.loads((workdir / run / "config.json").read_text())
    assert config["data"]["dir"] == cifar_jpeg_dir and config["schedule"]["boundaries"] == [2, 3]  # 50%, 75%
  md = (workdir / "results.md").read_text(encoding="utf-8")
  assert md.startswith("# Results (image_folder (CIFAR-10 copy))")
  assert f"† Runs {paper.CIFAR10_COPY_NOTE} (data: {cifar_jpeg_dir})." in md
  assert "| resnet8 | cifar_resnet8 |" in md
