"""Folders of photos of any size (src/data/image_folder.py) through the ImageNet pipeline (src/data/imagenet.py):
the listing's rules, each file kind decoded, stateless batches, the errors before any compile, and a short ResNet-18
run of configs/imagenet_resnet.py:image_dir=... with every test protocol and a bitwise resume."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import imagenet_resnet
from src.data import get_dataset, image_folder, imagenet
from src.errors import DatasetMissingError
from tests.conftest import run_main
from tests.fake_photos import CLASSES, make_photo_folder

CROP = 32


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("photos"))
  return root, make_photo_folder(root, sides=(40, 80))


def small_config(root, **data):
  c = imagenet_resnet.get_config(f"depth=18,image_dir={root},crop={CROP}")
  c.data.multiscale, c.data.multiscale_round = (32, 48), 32  # few shapes to compile
  c.data.update(data)
  return c


def copy_of(photos, tmp_path):
  return shutil.copytree(photos[0], tmp_path / "d", symlinks=False)


def test_listing_ignores_hidden_names_and_takes_val_or_test(photos, tmp_path):
  root, written = photos
  names, files, held = image_folder.list_images(root)
  assert names == list(CLASSES) and held == "val"  # .ipynb_checkpoints is no class, .DS_Store no image
  assert sorted(files["train"][0]) == sorted(p for p, _ in written["train"])
  assert [label for _, label in sorted(written["val"])] == list(files["test"][1])
  d = copy_of(photos, tmp_path)
  os.rename(d / "val", d / "test")
  assert image_folder.list_images(str(d))[2] == "test"
  shutil.copytree(d / "test", d / "val")
  with pytest.raises(DatasetMissingError, match=r"has both test/ and val/: set --config.data.heldout='test' or 'val'"):
    image_folder.list_images(str(d))
  assert image_folder.list_images(str(d), "val")[2] == "val"


def test_every_kind_of_file_decodes_as_pillow_reads_it(photos):
  root, written = photos
  source = image_folder.FolderFiles(root, "", 0, 1)
  paths, labels = source._files["val"]
  for (path, label), image, want_label in zip(
      source.elements("val", 0, len(paths)).as_numpy_iterator(),
      [source.decode(source.read(p, l)[0]).numpy() for p, l in zip(paths, labels)],
      labels,
  ):
    with Image.open(path) as im:
      want = np.asarray(im.convert("RGB"))
    assert image.shape == want.shape and label == want_label
    # JPEG: TF's and Pillow's IDCTs may differ by rounding; PNG exactly. CMYK and grayscale become RGB.
    assert np.abs(image.astype(int) - want).max() <= (0 if path.endswith(b".png") else 2), path


def test_batches_are_a_function_of_seed_and_step_and_shards_partition(photos):
  root, _ = photos
  c = small_config(root)
  ds = get_dataset(c.data, seed=0)
  assert (ds.num_classes, ds.class_names, ds.image_shape) == (3, CLASSES, (CROP, CROP, 3))
  assert ds.num_examples("train") == 36 and ds.num_examples("val") == 12
  stream = [ds.train_batch(s, 8) for s in range(6)]  # 48 images: crosses an epoch boundary
  again = get_dataset(c.data, seed=0)
  for s in (4, 1, 5):  # jumps, as a resumed run starts
    b = again.train_batch(s, 8)
    assert np.array_equal(b["image"], stream[s]["image"]) and np.array_equal(b["label"], stream[s]["label"])
  epoch0 = np.concatenate([b["label"] for b in stream])[:36]
  assert np.bincount(epoch0, minlength=3).tolist() == [12, 12, 12]  # an epoch sees every image once
  other = get_dataset(c.data, seed=1).train_batch(0, 8)["image"]
  assert not np.array_equal(other, stream[0]["image"])
  assert ds.mean.shape == (CROP, CROP, 3) and 0 < ds.mean.mean() < 255
  # Each process reads a contiguous shard of the fixed train order and of val: together every file once.
  source = image_folder.FolderFiles(root, "", 0, 1)
  for split, (paths, _) in source._files.items():
    shards = [paths[slice(*imagenet.shard_range(len(paths), i, 3))] for i in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(paths.tolist())
  train_paths = source._files["train"][0]
  assert len({p.split("/")[-2] for p in train_paths[:12]}) == 3  # the first shard is not one class


def load_error(root, **data):
  with pytest.raises(DatasetMissingError) as e:
    get_dataset(small_config(str(root), **data).data, seed=0)
  return str(e.value)


def test_bad_folders_are_named_before_any_image_is_decoded(photos, tmp_path):
  d = copy_of(photos, tmp_path)
  bad = d / "train" / CLASSES[1] / "broken.jpg"
  bad.write_bytes(b"\xff\xd8\xff not a JPEG")
  msg = load_error(d)
  assert f"are not images that can be read: {bad} (" in msg and "Replace or remove them" in msg
  bad.unlink()
  os.rename(d / "val" / CLASSES[2], d / "val" / "n99999999")
  assert f"only in train: ['{CLASSES[2]}'], only in val: ['n99999999']" in load_error(d)
  shutil.rmtree(d / "val" / "n99999999")
  shutil.rmtree(d / "train" / CLASSES[2])
  os.makedirs(d / "train" / CLASSES[2])
  assert f"Class folders without images in {d}/train: ['{CLASSES[2]}']" in load_error(d)
  for c in CLASSES[1:]:
    shutil.rmtree(d / "train" / c, ignore_errors=True)
    shutil.rmtree(d / "val" / c, ignore_errors=True)
  assert f"has one class folder ('{CLASSES[0]}'): a classifier needs at least 2" in load_error(d)
  shutil.rmtree(d / "val")
  assert f"The 'test' split of the image folder has no images: {d}/test" in load_error(d)


def test_a_file_that_fails_only_when_decoded_is_named_and_nothing_is_lost(photos, tmp_path):
  d = copy_of(photos, tmp_path)
  path = sorted((d / "val" / CLASSES[0]).glob("*rgb.JPEG"))[0]
  data = path.read_bytes()
  path.write_bytes(data[: len(data) * 4 // 5])  # a truncated JPEG: its header still reads
  ds = get_dataset(small_config(str(d)).data, seed=0)
  with pytest.raises(DatasetMissingError, match=f"An image of 'val' could not be decoded: {path};"):
    list(ds.eval_batches("val", 4))


def test_the_cifar_pipeline_points_photos_to_the_imagenet_one(photos):
  root, _ = photos
  from configs import cifar_resnet

  c = cifar_resnet.get_config(f"depth=8,image_dir={root}")
  c.data.val_size = 4
  with pytest.raises(
      DatasetMissingError, match=r"have different sizes.*configs/imagenet_resnet.py:depth=18,image_dir="
  ):
    get_dataset(c.data, seed=0)


def main_args(root, workdir, steps, *extra):
  return [
      f"--config=configs/imagenet_resnet.py:depth=18,image_dir={root},crop={CROP}",
      f"--workdir={workdir}",
      "--config.batch_size=12",
      "--config.eval_batch_size=12",
      "--config.model.bn_group_size=0",
      f"--config.num_steps={steps}",
      "--config.log_every=2",
      "--config.eval_every=2",
      "--config.checkpoint_every=2",
      "--config.data.multiscale=(32,48)",
      "--config.data.multiscale_round=32",
      *extra,
  ]


@pytest.mark.slow
def test_resnet18_trains_resumes_bitwise_and_evaluates_every_protocol(photos, tmp_path):
  root, _ = photos
  run_main(main_args(root, tmp_path / "a", 4))
  run_main(main_args(root, tmp_path / "b", 2))
  run_main(main_args(root, tmp_path / "b", 4))  # resumed from step 2
  rows = {w: [json.loads(x) for x in open(tmp_path / w / "metrics.jsonl")] for w in "ab"}
  last = {w: [r for r in rows[w] if r["step"] == 4 and "train/loss" in r][-1] for w in "ab"}
  assert last["a"]["train/loss"] == last["b"]["train/loss"] and last["a"]["val/error"] == last["b"]["val/error"]
  result = json.load(open(tmp_path / "a" / "result.json"))
  assert result["data"]["pipeline"] == "imagenet" and result["data"]["heldout"] == "val" and result["steps"] == 4
  proc = run_main(main_args(root, tmp_path / "a", 4, "--config.mode=eval"))
  assert "paper:" not in proc.stdout  # the paper's ImageNet numbers stand beside ImageNet runs only
  got = json.load(open(tmp_path / "a" / "eval.json"))
  protocols = got["results"]
  assert set(protocols) >= {"center", "ten_crop", "multiscale"}, got
  for r in protocols.values():
    assert r["count"] == 12 and 0 <= r["top1_error"] <= 1
  assert abs(protocols["center"]["top1_error"] - result["val/error"]) < 1e-9  # the loop's eval is the centre crop


def test_bench_times_the_folder_pipeline_beside_imagenet2012(photos, fake_imagenet_dir):
  from src import bench

  rows = bench.main(
      ["--input_only", f"--image_dir={photos[0]}", f"--imagenet_data_dir={fake_imagenet_dir}", "--crop=32"]
      + ["--batch=4", "--steps=2"]
  )
  assert [(r["dataset"], r["batch"], r["crop"]) for r in rows] == [("image_folder", 4, 32), ("imagenet2012", 4, 32)]
  assert all(r["images_per_sec"] > 0 and r["start_s"] > 0 for r in rows)
