"""ImageNet input pipeline (src/data/imagenet.py) on a fake ImageNet prepared by the real tfds builder."""

import os
import time
from collections import Counter

import numpy as np
import pytest

from configs import common
from src import data
from src.data import imagenet
from src.errors import DatasetMissingError
from tests.fake_imagenet import NUM_VAL, TRAIN_PER_CLASS, fake_imagenet_classes

SMALL = dict(
    name="imagenet2012",
    crop=32,
    scale_min=36,
    scale_max=56,
    eval_resize=36,
    multiscale=(32, 40, 48),
    multiscale_round=8,
    mean_images=16,
    shuffle_buffer=64,
)


def config(data_dir, **overrides):
  """The recipe's data fields (configs/common.py imagenet_recipe), small."""
  c = common.imagenet_recipe().data
  c.update({**SMALL, "data_dir": data_dir, **overrides})
  return c


@pytest.fixture(scope="module")
def ds(fake_imagenet_dir):
  return imagenet.load(config(fake_imagenet_dir), seed=0)


def fake_labels():
  _, index = fake_imagenet_classes()
  return set(index.values())


def tfds_images(data_dir, split):
  """(decoded uint8 images, labels) of a tfds split in file order, decoded by tfds itself."""
  import tensorflow_datasets as tfds

  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  rows = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
  return [r["image"] for r in rows], np.array([r["label"] for r in rows])


def eval_view_mean(data_dir, n):
  """Float64 mean [32, 32, 3] of the first n training images in file order, each resized (shorter side 36) and
  centre-cropped to 32 as SMALL's mean is: the pixel mean the loader must compute, computed here from tfds."""
  decoded, _ = tfds_images(data_dir, f"train[:{n}]")
  return np.mean(
      [imagenet.center_crop(imagenet.resize_shorter_side(x, 36), 32).numpy() for x in decoded], axis=0, dtype=np.float64
  )


def test_registered(fake_imagenet_dir):
  assert "imagenet2012" in data.DATASETS
  assert len(imagenet.prepare(fake_imagenet_dir).info.splits["train"].file_instructions) == 3  # files per split
  got = data.get_dataset(config(fake_imagenet_dir), seed=0)
  assert isinstance(got, imagenet.ImageNetDataset)
  assert got.num_classes == 1000 and got.image_shape == (32, 32, 3) and got.splits == ("val",)
  assert got.num_train == len(fake_labels()) * TRAIN_PER_CLASS and got.num_examples("val") == NUM_VAL


def test_train_batch_shapes_and_labels(ds):
  batch = ds.train_batch(0, 8)
  assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
  assert set(batch["label"]) <= fake_labels()
  # One epoch of the stream is a permutation of the train split: 5 images of each of the 7 classes.
  epoch = ds.train_batch(0, ds.num_train)["label"]
  assert Counter(epoch.tolist()) == {c: TRAIN_PER_CLASS for c in fake_labels()}


def test_train_stream_is_a_function_of_the_step(fake_imagenet_dir):
  a = imagenet.load(config(fake_imagenet_dir), seed=3)
  streamed = [a.train_batch(s, 8) for s in range(7)]  # 35 examples: step 4 straddles epochs 0 and 1
  again = a.train_batch(2, 8)  # not the next step: the stream is rebuilt at step 2
  np.testing.assert_array_equal(again["image"], streamed[2]["image"])
  np.testing.assert_array_equal(again["label"], streamed[2]["label"])
  for s in (5, 4):  # a fresh object asked for step s first: a resumed run (step 5 starts inside epoch 1)
    fresh = imagenet.load(config(fake_imagenet_dir), seed=3).train_batch(s, 8)
    np.testing.assert_array_equal(fresh["image"], streamed[s]["image"])
    np.testing.assert_array_equal(fresh["label"], streamed[s]["label"])
  other = imagenet.load(config(fake_imagenet_dir), seed=4).train_batch(0, 8)
  assert not np.array_equal(other["image"], streamed[0]["image"])
  # Epoch 1 is another order and other augmentations of the same examples.
  epoch0 = np.concatenate([b["label"] for b in streamed])[:35]
  epoch1 = np.concatenate([b["label"] for b in streamed] + [a.train_batch(s, 8)["label"] for s in (7, 8)])[35:70]
  assert sorted(epoch0) == sorted(epoch1)


def test_train_stream_is_the_same_in_a_new_process(fake_imagenet_dir, tmp_path, repo):
  """A resumed run is a new process: tf.data's seeded shuffle must not depend on anything process-local."""
  import subprocess
  import sys

  out = tmp_path / "batch.npz"
  script = (
      "import sys, numpy as np; from src.data import imagenet; "
      "from tests.test_imagenet_data import config; "
      "b = imagenet.load(config(sys.argv[1]), seed=3).train_batch(5, 8); np.savez(sys.argv[2], **b)"
  )
  subprocess.run(
      [sys.executable, "-c", script, fake_imagenet_dir, str(out)],
      cwd=repo,
      check=True,
      timeout=120,
      capture_output=True,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  here = imagenet.load(config(fake_imagenet_dir), seed=3).train_batch(5, 8)
  there = np.load(out)
  np.testing.assert_array_equal(there["image"], here["image"])
  np.testing.assert_array_equal(there["label"], here["label"])


@pytest.mark.parametrize("process_count", [2, 3])
def test_train_shards_are_disjoint(fake_imagenet_dir, process_count):
  counts = Counter()
  for pid in range(process_count):
    part = imagenet.load(config(fake_imagenet_dir), seed=0, process_index=pid, process_count=process_count)
    start, stop = imagenet.shard_range(35, pid, process_count)
    assert part.num_train == 35 and part.num_local_train == stop - start
    counts.update(part.train_batch(0, part.num_local_train)["label"].tolist())  # one epoch of the shard
  assert counts == {c: TRAIN_PER_CLASS for c in fake_labels()}


def test_one_process_standing_in_for_one_of_several_computes_and_caches_the_whole_mean(fake_imagenet_dir):
  # process_index=0 of 3 outside a 3-process JAX job: its part alone (images 0-3 of 13) must not become the mean,
  # nor the cache that every later load of the same data reads.
  want = eval_view_mean(fake_imagenet_dir, 13)
  part = imagenet.load(config(fake_imagenet_dir, mean_images=13), seed=0, process_index=0, process_count=3)
  try:
    np.testing.assert_allclose(part.mean, want, rtol=1e-6)
    np.testing.assert_allclose(np.load(part._mean_cache_path()), want, rtol=1e-6)
  finally:
    os.remove(part._mean_cache_path())


def test_slice_instructions():
  from types import SimpleNamespace as I

  files = [I(filename="a", skip=2, take=3), I(filename="b", skip=0, take=4), I(filename="c", skip=1, take=2)]
  assert imagenet.slice_instructions(files, 0, 9) == [("a", 2, 3), ("b", 0, 4), ("c", 1, 2)]
  assert imagenet.slice_instructions(files, 1, 5) == [("a", 3, 2), ("b", 0, 2)]
  assert imagenet.slice_instructions(files, 4, 8) == [("b", 1, 3), ("c", 1, 1)]
  parts = [imagenet.shard_range(9, i, 4) for i in range(4)]
  assert parts[0][0] == 0 and parts[-1][1] == 9 and all(a[1] == b[0] for a, b in zip(parts, parts[1:]))


def test_scale_augmentation_range():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(50, 70, 3), dtype=np.uint8)
  sides = []
  for i in range(120):
    scaled = imagenet.random_scale(image, [7, i], 36, 56).numpy()
    short = min(scaled.shape[:2])
    assert 36 <= short <= 56 and scaled.shape[0] == short  # the shorter side stays the shorter side
    assert scaled.shape[1] == int(np.floor(70 * short / 50 + 0.5))  # aspect ratio kept
    sides.append(short)
  assert min(sides) == 36 and max(sides) == 56 and len(set(sides)) > 15  # both ends, and roughly uniform


def test_random_scale_crop_flip_is_a_window_of_the_scaled_image():
  import tensorflow as tf

  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, size=(41, 63, 3), dtype=np.uint8)
  flipped, exact, total = 0, 0, 0
  for i in range(12):
    seed = tf.constant([5, i], tf.int64)
    out = imagenet.random_scale_crop_flip(image, seed, 32, 36, 56).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    s = tf.random.experimental.stateless_split(seed, num=2)
    scaled = imagenet.random_scale(image, s[0], 36, 56).numpy()
    # The same window as resizing the whole image and cropping it (only the window is computed, so float
    # rounding may move a pixel by 1).
    want = imagenet.random_crop_flip(scaled, s[1], 32).numpy()
    assert np.abs(out.astype(int) - want).max() <= 1
    exact += int((out == want).sum())
    total += out.size
    windows = np.lib.stride_tricks.sliding_window_view(scaled, (32, 32, 3))[..., 0, :, :, :]
    plain = (windows == want).all(axis=(-3, -2, -1)).any()
    mirrored = (windows == want[:, ::-1]).all(axis=(-3, -2, -1)).any()
    assert plain or mirrored
    flipped += int(mirrored and not plain)
  assert 0 < flipped < 12 and exact > 0.95 * total
  unflipped = imagenet.random_scale_crop_flip(image, [1, 2], 32, 36, 56, flip=False).numpy()
  s = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), num=2)
  want = imagenet.random_crop_flip(imagenet.random_scale(image, s[0], 36, 56), s[1], 32, flip=False).numpy()
  assert np.abs(unflipped.astype(int) - want).max() <= 1


def test_resize_shorter_side():
  image = np.full((40, 90, 3), 77, np.uint8)
  out = imagenet.resize_shorter_side(image, 36).numpy()
  assert out.shape == (36, 81, 3) and out.dtype == np.uint8 and (out == 77).all()
  tall = imagenet.resize_shorter_side(np.zeros((90, 45, 3), np.uint8), 36).numpy()
  assert tall.shape == (72, 36, 3)
  # Multi-scale: shorter side exact, longer rounded to a multiple of round_to (at least the scale).
  for (h, w), size, want in [
      ((50, 70), 48, (48, 64)),
      ((70, 50), 48, (64, 48)),
      ((60, 60), 40, (40, 40)),
      ((375, 500), 224, (224, 288)),
      ((500, 333), 640, (960, 640)),
  ]:
    got = imagenet.resize_shorter_side(np.zeros((h, w, 3), np.uint8), size, 32 if size > 48 else 8)
    assert tuple(got.shape[:2]) == want, (h, w, size)


def test_ten_crop_exact_crops():
  rng = np.random.default_rng(2)
  image = rng.integers(0, 256, size=(37, 45, 3), dtype=np.uint8)  # W - crop odd: the mirrored centre shifts
  c = 32
  crops = imagenet.ten_crop(image, c).numpy()
  assert crops.shape == (10, c, c, 3)
  mirror = image[:, ::-1]
  for k, img in enumerate([image, mirror]):
    np.testing.assert_array_equal(crops[5 * k + 0], img[:c, :c])  # top-left
    np.testing.assert_array_equal(crops[5 * k + 1], img[:c, -c:])  # top-right
    np.testing.assert_array_equal(crops[5 * k + 2], img[-c:, :c])  # bottom-left
    np.testing.assert_array_equal(crops[5 * k + 3], img[-c:, -c:])  # bottom-right
    np.testing.assert_array_equal(crops[5 * k + 4], img[2 : 2 + c, 6 : 6 + c])  # centre: (37-32)//2, (45-32)//2
  # What that means for the corners: the mirror's top-left crop is the mirror of the top-right crop, etc.
  for mirrored_crop, of in [(5, 1), (6, 0), (7, 3), (8, 2)]:
    np.testing.assert_array_equal(crops[mirrored_crop], crops[of][:, ::-1])
  np.testing.assert_array_equal(crops[9], image[2 : 2 + c, 7 : 7 + c][:, ::-1])  # floor offset in the mirror
  np.testing.assert_array_equal(imagenet.center_crop(image, c).numpy(), crops[4])


def test_eval_batches_match_the_protocols(ds, fake_imagenet_dir):
  decoded, labels = tfds_images(fake_imagenet_dir, "validation")
  center = list(ds.eval_batches("val", 4))
  ten = list(ds.eval_batches("val", 4, protocol="ten_crop"))
  assert len(center) == len(ten) == 2
  for b in ten:
    assert b["image"].shape == (4, 10, 32, 32, 3) and b["image"].dtype == np.uint8
  mask = np.concatenate([b["mask"] for b in center])
  np.testing.assert_array_equal(mask, np.arange(8) < NUM_VAL)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in center])[:NUM_VAL], labels)
  ten_images = np.concatenate([b["image"] for b in ten])
  center_images = np.concatenate([b["image"] for b in center])
  for i, img in enumerate(decoded):
    resized = imagenet.resize_shorter_side(img, 36).numpy()
    assert min(resized.shape[:2]) == 36
    np.testing.assert_array_equal(ten_images[i], imagenet.ten_crop(resized, 32).numpy())
    np.testing.assert_array_equal(center_images[i], ten_images[i, 4])
  assert not ten_images[NUM_VAL:].any() and not center_images[NUM_VAL:].any()  # padding rows are zeros


def test_eval_covers_every_example_once_across_processes(fake_imagenet_dir):
  parts = [imagenet.load(config(fake_imagenet_dir), seed=0, process_index=p, process_count=2) for p in range(2)]
  whole = list(imagenet.load(config(fake_imagenet_dir), seed=0).eval_batches("val", 3))
  want = np.concatenate([b["image"][b["mask"]] for b in whole])
  for protocol in ("center", "ten_crop"):
    batches = [list(p.eval_batches("val", 3, protocol=protocol)) for p in parts]
    assert len(batches[0]) == len(batches[1]) == 2  # ceil(ceil(7 / 2) / 3), on every process
    images = np.concatenate([b["image"][b["mask"]] for bs in batches for b in bs])
    labels = np.concatenate([b["label"][b["mask"]] for bs in batches for b in bs])
    assert len(labels) == NUM_VAL
    np.testing.assert_array_equal(labels, np.concatenate([b["label"][b["mask"]] for b in whole]))
    np.testing.assert_array_equal(images if protocol == "center" else images[:, 4], want)
  items = [list(p.multiscale_batches("val")) for p in parts]
  assert len(items[0]) == len(items[1]) == 4
  assert sum(int(it["mask"][0]) for its in items for it in its) == NUM_VAL


def test_multiscale_batches(ds, fake_imagenet_dir):
  decoded, labels = tfds_images(fake_imagenet_dir, "validation")
  items = list(ds.multiscale_batches("val"))
  assert len(items) == NUM_VAL
  for item, img, label in zip(items, decoded, labels):
    assert item["mask"].tolist() == [True] and item["label"].tolist() == [label]
    assert len(item["images"]) == 3
    for x, s in zip(item["images"], (32, 40, 48)):
      assert x.dtype == np.uint8 and x.shape[0] == 1 and x.shape[3] == 3
      h, w = x.shape[1:3]
      assert min(h, w) == s and max(h, w) % 8 == 0 and max(h, w) >= s
      np.testing.assert_array_equal(x[0], imagenet.resize_shorter_side(img, s, 8).numpy())
      if img.shape[0] != img.shape[1]:  # orientation kept (a near-square image may round to a square)
        assert (h <= w) if img.shape[0] < img.shape[1] else (h >= w)


def test_lighting():
  rng = np.random.default_rng(3)
  image = rng.integers(60, 190, size=(9, 11, 3), dtype=np.uint8)
  np.testing.assert_array_equal(imagenet.lighting(image, np.zeros(3)).numpy(), image)
  for k in range(3):  # alpha along one axis: the offset is that eigenvector, the same at every pixel
    alpha = np.eye(3)[k] * 40 / imagenet.EIGVAL[k]
    diff = imagenet.lighting(image, alpha).numpy().astype(int) - image
    np.testing.assert_array_equal(diff, np.broadcast_to(np.round(40 * imagenet.EIGVEC[:, k]), diff.shape))
  alpha = np.array([0.3, -1.2, 2.0])
  diff = imagenet.lighting(image, alpha).numpy().astype(int) - image
  want = imagenet.EIGVEC @ (alpha * imagenet.EIGVAL)
  assert (diff == diff[0, 0]).all() and np.abs(diff[0, 0] - want).max() <= 0.5 + 1e-4
  # The eigenvectors are orthonormal (PCA of the RGB covariance).
  np.testing.assert_allclose(imagenet.EIGVEC.T @ imagenet.EIGVEC, np.eye(3), atol=2e-3)


def test_color_pca_off_changes_nothing_else(fake_imagenet_dir):
  plain = imagenet.load(config(fake_imagenet_dir, color_pca=0.0), seed=1).train_batch(0, 8)
  pca = imagenet.load(config(fake_imagenet_dir, color_pca=0.5), seed=1).train_batch(0, 8)
  np.testing.assert_array_equal(plain["label"], pca["label"])  # same examples, same crops,
  diff = pca["image"].astype(int) - plain["image"]
  assert diff.any()
  inner = (plain["image"] > 30) & (plain["image"] < 225)  # away from clipping:
  for i in range(8):  # one RGB offset per image
    for ch in range(3):
      vals = np.unique(diff[i, ..., ch][inner[i, ..., ch]])
      assert vals.max() - vals.min() <= 1


def test_mean(fake_imagenet_dir, ds):
  want = eval_view_mean(fake_imagenet_dir, 16)  # the first mean_images in file order
  assert ds.mean.shape == (32, 32, 3) and ds.mean.dtype == np.float32
  np.testing.assert_allclose(ds.mean, want, rtol=1e-6)
  channel = imagenet.load(config(fake_imagenet_dir, mean="channel"), seed=0).mean
  assert channel.shape == (32, 32, 3) and channel.dtype == np.float32
  np.testing.assert_allclose(channel, np.broadcast_to(want.mean(axis=(0, 1)), (32, 32, 3)), rtol=1e-5)
  # Two processes combine their parts into the same mean (here both parts are computed in one process).
  cfg = config(fake_imagenet_dir, mean_images=12)
  first = imagenet.load(cfg, seed=0)
  path = first._mean_cache_path()
  assert os.path.exists(path) and "n12" in os.path.basename(path)
  np.save(path, np.full((32, 32, 3), 7, np.float32))  # the cache is what a later load reads
  try:
    assert (imagenet.load(cfg, seed=0).mean == 7).all()
  finally:
    os.remove(path)


def test_missing_dataset_raises_quickly(tmp_path):
  import tensorflow_datasets  # noqa: F401  (import time is not what is measured)

  manual = tmp_path / "where" / "manual"
  t = time.time()
  with pytest.raises(DatasetMissingError) as e:
    imagenet.load(config(str(tmp_path / "tfds"), manual_dir=str(manual)), seed=0)
  assert time.time() - t < 15
  msg = str(e.value)
  assert str(manual) in msg and "ILSVRC2012_img_train.tar" in msg and "ILSVRC2012_img_val.tar" in msg
  # Default manual_dir: <data_dir>/downloads/manual; one archive present: the other one is named missing.
  default = tmp_path / "tfds2" / "downloads" / "manual"
  default.mkdir(parents=True)
  (default / "ILSVRC2012_img_train.tar").write_bytes(b"")
  with pytest.raises(DatasetMissingError) as e:
    data.get_dataset(config(str(tmp_path / "tfds2")), seed=0)
  assert str(default) in str(e.value) and "ILSVRC2012_img_val.tar is missing" in str(e.value)
