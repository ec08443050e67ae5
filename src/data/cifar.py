"""CIFAR-10 through tfds, loaded fully into host memory, one process's shard per split.

Where tfds 4.9.10 takes the official archive without network (read from its DownloadManager):
  1. <data_dir>/downloads/manual/cifar-10-binary.tar.gz          (sha256 is checked: the real archive only)
  2. <data_dir>/downloads/cifar10/<get_dl_fname(URL, sha256)>     plus the same name + '.INFO' (tfds' own cache;
  3. <data_dir>/downloads/<get_dl_fname(URL, sha256)>             plus '.INFO'  (legacy cache)  not re-hashed)
Without any of these tfds would download, and with no network it retries for minutes, so we check first.
"""

import os
import socket

import numpy as np

from src.errors import DatasetMissingError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"


def _archive_paths(root: str):
  """(manual path, [cache paths]) where tfds would pick the archive up."""
  from tensorflow_datasets.core.download import checksums, resource

  fname = resource.get_dl_fname(URL, checksums.get_all_url_infos()[URL].checksum)
  downloads = os.path.join(root, "downloads")
  return (
      os.path.join(downloads, "manual", ARCHIVE),
      [os.path.join(downloads, "cifar10", fname), os.path.join(downloads, fname)],
  )


def _missing_message(root: str, reason: str) -> str:
  manual, cache = _archive_paths(root)
  return (
      f"CIFAR-10 is not prepared in the tfds data_dir {root!r} ({reason}).\n"
      f"Download {URL} (170,052,171 bytes) and put it at\n    {manual}\n"
      f"then rerun: tfds checks its sha256 and prepares {root}/cifar10/3.0.2 on first use. "
      f"(tfds also accepts its own download cache: {cache[0]} plus a .INFO file next to it.) "
      f"Or set data.data_dir to a directory where cifar10 is already prepared."
  )


def _network_reachable(host: str = "www.cs.toronto.edu") -> bool:
  if os.environ.get("RESNET_OFFLINE"):  # never download (tests, air-gapped clusters)
    return False
  try:
    socket.create_connection((host, 443), timeout=3).close()
    return True
  except OSError:
    return False


def prepare(data_dir):
  """Returns a prepared tfds builder, or raises DatasetMissingError quickly (no long network retries)."""
  import tensorflow_datasets as tfds

  builder = tfds.builder("cifar10", data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_dir_root)
  manual, cache = _archive_paths(root)
  have_archive = os.path.exists(manual) or any(os.path.exists(p) and os.path.exists(p + ".INFO") for p in cache)
  if not have_archive and not _network_reachable():
    raise DatasetMissingError(_missing_message(root, "no archive found and no network"))
  try:
    builder.download_and_prepare()
  except Exception as e:  # wrong checksum, failed download, corrupt archive: all mean "give me the file"
    raise DatasetMissingError(_missing_message(root, f"{type(e).__name__}: {e}")) from e
  return builder


def load(data_dir, val_size: int, process_index: int, process_count: int):
  """Returns ({split: (uint8 [n,32,32,3], int32 [n])} for this process's shard, {split: global size}, classes).

  val = the last `val_size` examples of tfds' train split, train = the rest (val_size 0: no val).
  """
  import tensorflow_datasets as tfds

  builder = prepare(data_dir)
  num_train = builder.info.splits["train"].num_examples
  if not 0 <= val_size < num_train:
    raise ValueError(f"val_size={val_size} must be in [0, {num_train}) for cifar10")
  specs = {"train": f"train[:-{val_size}]" if val_size else "train", "test": "test"}
  if val_size:
    specs["val"] = f"train[-{val_size}:]"
  arrays, sizes = {}, {}
  for split, spec in specs.items():
    sizes[split] = builder.info.splits[spec].num_examples
    shard = tfds.even_splits(spec, n=process_count)[process_index]  # only this process's part is read
    images, labels = tfds.as_numpy(builder.as_dataset(split=shard, batch_size=-1, as_supervised=True))
    arrays[split] = (images, labels.astype(np.int32))
  return arrays, sizes, builder.info.features["label"].num_classes
