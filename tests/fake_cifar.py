"""A small, learnable fake CIFAR-10, prepared by the real tfds cifar10 builder (no mocking, no network).

The archive is written in the official binary format and dropped into the tfds download cache, where
tfds takes a file under its registered checksum name as already downloaded (it does not re-hash cached
files; a file in `downloads/manual/` *is* hashed and a fake one is rejected).
"""

import io
import os
import tarfile

import numpy as np
import pytest

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def fake_cifar10_arrays(num_train=600, num_test=200, seed=0):
  """Deterministic (images uint8 [n,32,32,3], labels uint8 [n]) for 'train' and 'test', in file order."""
  rng = np.random.default_rng(seed)
  palette = np.random.default_rng(1234).uniform(40, 215, size=(10, 3))  # fixed colour per class
  yy, xx = np.mgrid[0:32, 0:32]

  def make(n):
    labels = np.arange(n) % 10  # balanced classes,
    labels = rng.permutation(labels).astype(np.uint8)  # in random order
    # Class-dependent stripes (orientation and period) over a class colour, plus noise: learnable.
    period = 4 + labels % 5
    phase = rng.integers(0, 8, size=n)
    coord = np.where((labels < 5)[:, None, None], yy[None], xx[None])  # horizontal or vertical
    stripes = np.sin(2 * np.pi * (coord + phase[:, None, None]) / period[:, None, None])
    img = palette[labels][:, None, None, :] + 40 * stripes[..., None]
    img = img + rng.normal(0, 20, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), labels

  return {"train": make(num_train), "test": make(num_test)}


def _records(images, labels):
  # Official layout: 1 label byte, then the R, G, B planes (32x32 each, row-major).
  planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
  return np.concatenate([labels[:, None], planes], axis=1).astype(np.uint8).tobytes()


def make_fake_cifar10(data_dir, num_train=600, num_test=200, seed=0):
  """Writes a fake cifar-10-binary.tar.gz into `data_dir`'s tfds download cache and prepares it. Returns data_dir."""
  import tensorflow_datasets as tfds
  from etils import epath
  from tensorflow_datasets.core.download import checksums, resource

  data_dir = os.fspath(data_dir)
  arrays = fake_cifar10_arrays(num_train, num_test, seed)
  files = {"batches.meta.txt": ("\n".join(LABEL_NAMES) + "\n").encode()}
  for i, idx in enumerate(np.array_split(np.arange(num_train), 5)):  # train spread over 5 batch files
    files[f"data_batch_{i + 1}.bin"] = _records(arrays["train"][0][idx], arrays["train"][1][idx])
  files["test_batch.bin"] = _records(*arrays["test"])

  # Cached downloads live at <data_dir>/downloads/<dataset>/<get_dl_fname(url, registered sha256)> + .INFO
  expected = checksums.get_all_url_infos()[URL]
  archive = os.path.join(data_dir, "downloads", "cifar10", resource.get_dl_fname(URL, expected.checksum))
  os.makedirs(os.path.dirname(archive), exist_ok=True)
  with tarfile.open(archive, "w:gz") as tar:
    for name, payload in files.items():
      info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  resource.write_info_file(
      url=URL,
      path=epath.Path(archive),
      dataset_name="cifar10",
      original_fname="cifar-10-binary.tar.gz",
      url_info=expected,
  )

  tfds.builder("cifar10", data_dir=data_dir).download_and_prepare()
  return data_dir


@pytest.fixture(scope="session")
def fake_cifar10_dir(tmp_path_factory):
  """Session fixture: a prepared fake cifar10 tfds data_dir (600 train, 200 test). Import it into conftest."""
  path = tmp_path_factory.getbasetemp() / "fake_cifar10_tfds"
  if not (path / "cifar10").exists():  # shared if the fixture is registered in several places
    make_fake_cifar10(path)
  return str(path)
