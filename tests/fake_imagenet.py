"""A small, learnable fake ImageNet, prepared by the real tfds imagenet2012 builder (no mocking, no network).

The archives are written in the official on-disk format into `<data_dir>/downloads/manual/` (tfds does not
check their checksums): ILSVRC2012_img_train.tar is a tar of per-class tars `nXXXXXXXX.tar` holding
`nXXXXXXXX_<i>.JPEG`; ILSVRC2012_img_val.tar holds `ILSVRC2012_val_000000NN.JPEG`. tfds labels the i-th
validation file (sorted by name) with line i of its bundled validation_labels.txt, so the classes are the
synsets of the first NUM_VAL lines: every validation image then belongs to a class that has training images.
"""

import io
import os
import tarfile

import numpy as np
import pytest

NUM_VAL = 7  # validation images: labels from the first 7 lines of validation_labels.txt (7 classes)
TRAIN_PER_CLASS = 5  # 35 training images


def _tfds_file(name):
  import tensorflow_datasets as tfds

  return os.fspath(tfds.core.tfds_path(f"datasets/imagenet2012/{name}"))


def fake_imagenet_classes(num_val=NUM_VAL):
  """(synsets of the validation images in file order, {synset: label index in tfds' labels.txt})."""
  with open(_tfds_file("validation_labels.txt")) as f:
    val_synsets = f.read().split()[:num_val]
  with open(_tfds_file("labels.txt")) as f:
    index = {s: i for i, s in enumerate(f.read().split())}
  return val_synsets, {s: index[s] for s in val_synsets}


def fake_image(synset_rank, rng, sides=(40, 90)):
  """uint8 [h, w, 3], sides[0]..sides[1] px per side: a class colour with class-dependent stripes, plus noise."""
  palette = np.random.default_rng(4321).uniform(40, 215, size=(32, 3))
  h, w = rng.integers(sides[0], sides[1] + 1, size=2)
  yy, xx = np.mgrid[0:h, 0:w]
  period = 5 + synset_rank % 4
  coord = yy if synset_rank % 2 else xx  # horizontal or vertical stripes
  stripes = np.sin(2 * np.pi * (coord + rng.integers(0, 8)) / period)
  img = palette[synset_rank] + 40 * stripes[..., None] + rng.normal(0, 10, size=(h, w, 3))
  return np.clip(np.round(img), 0, 255).astype(np.uint8)


def _jpeg(image):
  import tensorflow as tf

  return tf.io.encode_jpeg(image, quality=95).numpy()


def _add(tar, name, payload):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def write_fake_imagenet_archives(manual_dir, num_val=NUM_VAL, train_per_class=TRAIN_PER_CLASS, seed=0, sides=(40, 90)):
  """Writes ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar into `manual_dir`.

  Returns {'train': {file_name: synset}, 'validation': {file_name: synset}}.
  """
  rng = np.random.default_rng(seed)
  val_synsets, _ = fake_imagenet_classes(num_val)
  classes = sorted(set(val_synsets))
  rank = {s: i for i, s in enumerate(classes)}
  os.makedirs(manual_dir, exist_ok=True)
  written = {"train": {}, "validation": {}}
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_train.tar"), "w") as outer:
    for synset in classes:
      inner_bytes = io.BytesIO()
      with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
        for i in range(train_per_class):
          name = f"{synset}_{i + 1}.JPEG"
          _add(inner, name, _jpeg(fake_image(rank[synset], rng, sides)))
          written["train"][name] = synset
      _add(outer, f"{synset}.tar", inner_bytes.getvalue())
  with tarfile.open(os.path.join(manual_dir, "ILSVRC2012_img_val.tar"), "w") as tar:
    for i, synset in enumerate(val_synsets):
      name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
      _add(tar, name, _jpeg(fake_image(rank[synset], rng, sides)))
      written["validation"][name] = synset
  return written


def make_fake_imagenet(data_dir, num_shards=3, **kwargs):
  """Writes the archives into `<data_dir>/downloads/manual` and prepares them with tfds, `num_shards` files
  per split (the real train split has 1024: readers must cope with several). Returns data_dir."""
  import tensorflow_datasets as tfds

  data_dir = os.fspath(data_dir)
  manual_dir = os.path.join(data_dir, "downloads", "manual")
  write_fake_imagenet_archives(manual_dir, **kwargs)
  tfds.builder("imagenet2012", data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, num_shards=num_shards)
  )
  return data_dir


@pytest.fixture(scope="session")
def fake_imagenet_dir(tmp_path_factory):
  """Session fixture: a prepared fake imagenet2012 tfds data_dir (7 classes, 35 train, 7 validation images,
  3 files per split); the archives stay in <data_dir>/downloads/manual. Import it into conftest."""
  path = tmp_path_factory.getbasetemp() / "fake_imagenet_tfds"
  if not (path / "imagenet2012").exists():  # shared if the fixture is registered in several places
    make_fake_imagenet(path)
  return str(path)
