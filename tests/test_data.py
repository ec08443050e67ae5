"""Input pipeline tests on a fake CIFAR-10 prepared by the real tfds builder, and on mnist5k."""

import time

import ml_collections
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from src.data import cifar, get_dataset, mnist5k
from src.data.means import combine_means
from src.errors import DatasetMissingError
from tests.fake_cifar import LABEL_NAMES, fake_cifar10_arrays

VAL = 100  # fake data: 600 train -> 500 train / 100 val, 200 test


def config(data_dir, **kw):
  return ml_collections.ConfigDict(dict(name="cifar10", data_dir=data_dir, val_size=VAL, pad=4, flip=True) | kw)


def keys(images):
  return [im.tobytes() for im in images]  # fake images are noisy, hence unique


@pytest.fixture(scope="module")
def ds(fake_cifar10_dir):
  return get_dataset(config(fake_cifar10_dir), seed=3)


def test_fake_cifar_round_trips_through_tfds(fake_cifar10_dir):
  import tensorflow_datasets as tfds

  builder = tfds.builder("cifar10", data_dir=fake_cifar10_dir)
  assert builder.info.features["label"].names == LABEL_NAMES
  written = fake_cifar10_arrays()
  for split in ("train", "test"):
    d = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    order = [int(i.decode().split("_")[1]) for i in d["id"]]  # tfds shuffles; ids keep the file order
    assert sorted(order) == list(range(len(written[split][1])))
    np.testing.assert_array_equal(d["image"], written[split][0][order])
    np.testing.assert_array_equal(d["label"], written[split][1][order])


def test_splits_sizes_and_content(ds, fake_cifar10_dir):
  assert (ds.num_train, ds.num_examples("train"), ds.num_examples("val"), ds.num_examples("test")) == (
      500,
      500,
      100,
      200,
  )
  assert ds.splits == ("val", "test") and ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
  assert ds.train_images.dtype == np.uint8 and ds.train_labels.dtype == np.int32
  written = fake_cifar10_arrays()
  train_val = keys(ds.train_images) + keys(ds.eval_data["val"][0])
  assert sorted(train_val) == sorted(keys(written["train"][0]))  # disjoint, and together the official train
  assert sorted(keys(ds.eval_data["test"][0])) == sorted(keys(written["test"][0]))
  full = get_dataset(config(fake_cifar10_dir, val_size=0), seed=3)
  assert full.splits == ("test",) and full.num_train == 600
  with pytest.raises(ValueError, match="val_size"):
    get_dataset(config(fake_cifar10_dir, val_size=600), seed=3)


def test_mean(ds):
  assert ds.mean.dtype == np.float32 and ds.mean.shape == (32, 32, 3)
  np.testing.assert_allclose(ds.mean, ds.train_images.astype(np.float64).mean(0), rtol=1e-6)
  a, b = ds.train_images[:123], ds.train_images[123:]  # unequal shards combine to the full mean
  np.testing.assert_allclose(combine_means([a.mean(0), b.mean(0)], [len(a), len(b)]), ds.mean, rtol=1e-6)


def test_multiprocess_shards_mean_and_eval_batches(fake_cifar10_dir, ds, fake_allgather):
  n = 3  # 500 / 100 / 200 examples split unevenly over 3 processes
  shards = [cifar.load(fake_cifar10_dir, VAL, i, n)[0] for i in range(n)]
  fake_allgather([s["train"][0] for s in shards])
  parts = [get_dataset(config(fake_cifar10_dir), seed=3, process_index=i, process_count=n) for i in range(n)]
  for split, size in (("train", 500), ("val", 100), ("test", 200)):
    got = [keys(s[split][0]) for s in shards]
    assert sum(map(len, got)) == size and max(map(len, got)) - min(map(len, got)) <= 1
    full = keys(ds.train_images if split == "train" else ds.eval_data[split][0])
    assert sorted(sum(got, [])) == sorted(full)  # disjoint and covering
  for p in parts:
    assert p.num_train == 500 and p.num_examples("val") == 100
    np.testing.assert_allclose(p.mean, ds.mean, rtol=1e-6)  # whole-split mean on every process
  for split in ("val", "test"):
    batches = [list(p.eval_batches(split, 16)) for p in parts]
    assert len({len(b) for b in batches}) == 1  # same count on every process (collectives)
    assert sum(int(x["mask"].sum()) for b in batches for x in b) == ds.num_examples(split)
  assert not np.array_equal(parts[0].train_batch(0, 32)["image"], parts[1].train_batch(0, 32)["image"])


def test_train_batch_is_a_pure_function_of_seed_and_step(ds, fake_cifar10_dir):
  a, b = ds.train_batch(5, 64), ds.train_batch(3, 64)
  again = get_dataset(config(fake_cifar10_dir), seed=3)  # fresh object, other call order
  b2, a2 = again.train_batch(3, 64), again.train_batch(5, 64)
  for x, y in ((a, a2), (b, b2)):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])
  np.testing.assert_array_equal(ds.train_batch(5, 64)["image"], a["image"])
  assert not np.array_equal(a["image"], b["image"])
  other_seed = get_dataset(config(fake_cifar10_dir), seed=4)
  assert not np.array_equal(other_seed.train_batch(5, 64)["image"], a["image"])
  assert a["image"].shape == (64, 32, 32, 3) and a["image"].dtype == np.uint8 and a["label"].dtype == np.int32


def test_stream_is_a_sequence_of_epoch_permutations(fake_cifar10_dir):
  raw = get_dataset(config(fake_cifar10_dir, pad=0, flip=False), seed=3)
  where = {k: i for i, k in enumerate(keys(raw.train_images))}
  batches = [raw.train_batch(s, 128) for s in range(8)]  # 1024 examples: batches straddle epochs 0/1/2
  idx = np.array([where[k] for x in batches for k in keys(x["image"])])  # KeyError if any pixel changed
  np.testing.assert_array_equal(np.concatenate([x["label"] for x in batches]), raw.train_labels[idx])
  n = raw.num_train
  assert sorted(idx[:n]) == list(range(n)) and sorted(idx[n : 2 * n]) == list(range(n))
  assert not np.array_equal(idx[:n], idx[n : 2 * n])  # a new permutation each epoch


@pytest.mark.parametrize("pad_fill", ["zero", "mean"])
def test_crop_and_flip_are_windows_of_the_padded_image(fake_cifar10_dir, pad_fill):
  raw = get_dataset(config(fake_cifar10_dir, pad=0, flip=False), seed=3).train_batch(7, 128)
  ds = get_dataset(config(fake_cifar10_dir, pad=4, flip=True, pad_fill=pad_fill), seed=3)
  aug = ds.train_batch(7, 128)
  np.testing.assert_array_equal(raw["label"], aug["label"])  # same examples: only pixels move
  fill = np.zeros(3) if pad_fill == "zero" else np.round(ds.mean.astype(np.float64).mean((0, 1)))
  assert pad_fill == "zero" or fill.min() > 50  # the fake images' mean colour, not black
  padded = np.empty((128, 40, 40, 3), np.uint8)
  padded[:] = fill.astype(np.uint8)
  padded[:, 4:36, 4:36] = raw["image"]
  windows = sliding_window_view(padded, (32, 32), axis=(1, 2)).transpose(0, 1, 2, 4, 5, 3)  # b,9,9,32,32,3
  out = aug["image"][:, None, None]
  plain = (windows == out).all(axis=(3, 4, 5))
  flipped = (windows[..., ::-1, :] == out).all(axis=(3, 4, 5))
  assert (plain | flipped).any(axis=(1, 2)).all()  # every image is a (possibly flipped) 32x32 window
  assert 20 < flipped.any(axis=(1, 2)).sum() < 108  # about half flipped
  offsets = {tuple(np.argwhere(p | f)[0]) for p, f in zip(plain, flipped)}
  assert len(offsets) > 20  # random crops, not always the centre


def test_eval_batches_are_padded_with_mask(ds):
  batches = list(ds.eval_batches("val", 64))  # 100 -> 64 + 36 real, 28 padding
  assert [x["image"].shape for x in batches] == [(64, 32, 32, 3)] * 2
  assert [int(x["mask"].sum()) for x in batches] == [64, 36] and not batches[1]["mask"][36:].any()
  images = np.concatenate([x["image"][x["mask"]] for x in batches])
  np.testing.assert_array_equal(images, ds.eval_data["val"][0])
  assert batches[0]["label"].dtype == np.int32 and batches[0]["mask"].dtype == bool
  assert len(list(ds.eval_batches("test", 200))) == 1
  with pytest.raises(KeyError):
    next(ds.eval_batches("train", 64))


def test_missing_dataset_fails_fast_with_instructions(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar, "_network_reachable", lambda: False)  # never download 170 MB in a test
  start = time.time()
  with pytest.raises(DatasetMissingError) as err:
    get_dataset(config(str(tmp_path)), seed=0)
  assert time.time() - start < 10  # no minutes of download retries
  msg = str(err.value)
  assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in msg and str(tmp_path) in msg
  assert f"{tmp_path}/downloads/manual/cifar-10-binary.tar.gz" in msg
  # A wrong archive in the manual dir is rejected by tfds' checksum, and reported the same way.
  manual = tmp_path / "downloads" / "manual"
  manual.mkdir(parents=True)
  (manual / "cifar-10-binary.tar.gz").write_bytes(b"not cifar")
  with pytest.raises(DatasetMissingError, match="NonMatchingChecksumError"):
    get_dataset(config(str(tmp_path)), seed=0)


def test_unknown_dataset_name():
  with pytest.raises(ValueError, match="cifar10.*mnist5k"):
    get_dataset(ml_collections.ConfigDict(dict(name="svhn")), seed=0)


def test_mnist5k(fake_allgather):
  cfg = ml_collections.ConfigDict(dict(name="mnist5k", val_size=5000, pad=4, flip=False))
  m = get_dataset(cfg, seed=0)  # val_size capped at 500
  assert (m.num_train, m.num_examples("val"), m.num_examples("test")) == (4000, 500, 500)
  assert m.image_shape == (32, 32, 1) and m.train_images.dtype == np.uint8 and m.num_classes == 10
  assert not m.train_images[:, :2].any() and not m.train_images[:, :, -2:].any()  # 28x28 zero-padded
  labels = np.concatenate([m.train_labels] + [m.eval_data[s][1] for s in m.splits])
  assert np.bincount(labels).tolist() == [500] * 10  # all 5,000 digits, each once
  cfg.val_size = 0
  assert get_dataset(cfg, seed=0).splits == ("test",)
  cfg.val_size = 200  # the test split does not depend on val_size or the run seed
  other = get_dataset(cfg, seed=1)
  np.testing.assert_array_equal(other.eval_data["test"][0], m.eval_data["test"][0])
  shards = [mnist5k.load(200, i, 2)[0]["train"][0] for i in range(2)]
  fake_allgather(shards)
  parts = [get_dataset(cfg, seed=0, process_index=i, process_count=2) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate([p.train_images for p in parts]), other.train_images)
  np.testing.assert_allclose(parts[1].mean, other.mean, rtol=1e-6)
