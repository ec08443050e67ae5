"""Any image-classification dataset laid out as folders, e.g. the CIFAR-10 JPEG copy, Imagenette or an extracted
ImageNet, through either of the paper's two pipelines (`config.data.pipeline`).

    <dir>/train/<class>/<image>               e.g. imagenette2/train/n01440764/ILSVRC2012_val_00000293.JPEG
    <dir>/test/<class>/<image>  or  <dir>/val/<class>/<image>   the held-out images (data.heldout picks one)

images: .jpg, .jpeg, .png in any case (what tfds ImageFolder reads: JPEG or PNG, RGB, grayscale or CMYK, any size);
other files are ignored, and so is every file or folder whose name starts with '.' (.DS_Store, .ipynb_checkpoints).

- pipeline 'cifar' (Sec. 4.2, the CIFAR presets): every image decoded once into memory (they must all have one
  size), then the same InMemoryDataset as CIFAR-10: per-pixel mean of the train part, pad + crop + flip, stateless
  (seed, step) batches. Splits: 'test' = the held-out folder, 'val' = `val_size` train images chosen by a fixed
  random permutation (seed `SPLIT_SEED`, not the run seed: the folders are class-sorted, so a contiguous tail would
  be one class).
- pipeline 'imagenet' (Sec. 3.4, configs/imagenet_resnet.py:image_dir=...): photos of any size streamed from disk
  with parallel decoding, through src/data/imagenet.py's ImageNetDataset (scale augmentation, crop, flip, PCA
  colour, the per-pixel or per-channel mean, the centre / 10-crop / multi-scale tests), as imagenet2012 is. Splits:
  'val' = the held-out folder, as ImageNet's validation set is the paper's test set. FolderFiles is its source.

Class index = position of the class folder's name in sorted order (for a CIFAR-10 copy with folders airplane ...
truck, CIFAR-10's own label order). The files are listed here and read with tf.data (TensorFlow's decoders):
not through tfds ImageFolder, which takes hidden folders (.ipynb_checkpoints) as classes, numbers the classes of all
splits together, and has every process read every file.

Problems are found before anything is compiled, cheap ones first: the directory listing (missing directory, no
held-out folder or both, a split or class folder without images, class folders that differ between splits, a single
class) before any image is read; then, for 'cifar', mixed sizes while decoding, and for 'imagenet' each file's
header (Pillow). Each raises DatasetMissingError saying what to fix. An image that passes its header check but
cannot be decoded stops the stream later with the file's name; checkpoints already written are kept.
"""

import concurrent.futures
import os

import numpy as np

from src.errors import ConfigError, DatasetMissingError, require

HELDOUT = ("test", "val")  # the held-out folder's possible names
EXTENSIONS = (".jpg", ".jpeg", ".png")  # tfds ImageFolder's _SUPPORTED_IMAGE_FORMAT, compared lower-case
PIPELINES = ("cifar", "imagenet")
SPLIT_SEED = 0  # the fixed train/val permutation; not the run seed, so every run validates on the same images
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DECODE_BATCH = 256  # images per batch of the in-memory decoding pass
HEADER_THREADS = 16  # files whose headers are read at once (I/O bound)
# The data fields the ImageNet pipeline reads (configs/common.py imagenet_recipe).
IMAGENET_FIELDS = ("crop", "scale_min", "scale_max", "color_pca", "mean", "mean_images", "eval_resize", "multiscale")

LAYOUT = "<dir>/train/<class>/<image> and <dir>/test/<class>/<image> or <dir>/val/<class>/<image> (.jpg/.jpeg/.png)"


def _visible(name: str) -> bool:
  return not name.startswith(".")


def _folders(path: str) -> list:
  return sorted(f for f in os.listdir(path) if _visible(f) and os.path.isdir(os.path.join(path, f)))


def _images(path: str) -> list:
  return sorted(f for f in os.listdir(path) if _visible(f) and f.lower().endswith(EXTENSIONS))


def heldout_folder(root: str, heldout: str = "") -> str:
  """The name of the held-out folder of `root`: `heldout` ('test' or 'val') if given, else whichever exists.

  Raises:
    DatasetMissingError: both exist and `heldout` is '' (set data.heldout), or the named or any one is missing.
  """
  present = [h for h in HELDOUT if os.path.isdir(os.path.join(root, h))]
  if heldout:
    return heldout
  if len(present) == 2:
    raise DatasetMissingError(
        f"{root} has both test/ and val/: set --config.data.heldout='test' or 'val' to say which is the held-out "
        "split (the other is then ignored)."
    )
  return present[0] if present else "test"  # missing: the listing below says how to lay it out


def list_images(root: str, heldout: str = ""):
  """Lists `root` and checks it, reading no image.

  Args:
    root: the dataset directory, `~` expanded by the caller.
    heldout: the held-out folder, 'test' or 'val'; '' = whichever exists (heldout_folder).

  Returns:
    (class_names, files, heldout): class_names, the sorted class folder names (class index = position); files,
    {'train' | 'test': (paths list[str], labels int32 [n])} in (class, file name) order, 'test' being the held-out
    folder's images; heldout, that folder's name.

  Raises:
    DatasetMissingError: `root` is not a directory; no held-out folder, or both without data.heldout; a split folder
      is missing or holds no images; a class folder holds no images; the class folders of the two splits differ;
      a single class.
  """
  if not os.path.isdir(root):
    raise DatasetMissingError(
        f"data.dir={root!r} is not a directory. Set --config.data.dir (or the preset argument image_dir=) to a "
        f"folder laid out as {LAYOUT}."
    )
  held = heldout_folder(root, heldout)
  classes, files = {}, {}
  for split, folder in (("train", "train"), ("test", held)):
    split_dir = os.path.join(root, folder)
    names = _folders(split_dir) if os.path.isdir(split_dir) else []
    per_class = {c: _images(os.path.join(split_dir, c)) for c in names}
    if not any(per_class.values()):
      found = f"class folders found: {names}" if names else "no class folders"
      raise DatasetMissingError(
          f"The {folder!r} split of the image folder has no images: {split_dir} ({found}). "
          f"Put its images in {split_dir}/<class>/<image> (.jpg, .jpeg or .png); the layout is {LAYOUT}."
      )
    empty = [c for c in names if not per_class[c]]
    if empty:
      raise DatasetMissingError(
          f"Class folders without images in {split_dir}: {empty}. Every class needs .jpg, .jpeg or .png images in "
          "each split; add them, or remove the empty folders from every split."
      )
    classes[split], files[split] = names, per_class
  if classes["train"] != classes["test"]:
    train, test = set(classes["train"]), set(classes["test"])
    raise DatasetMissingError(
        f"The class folders of {os.path.join(root, 'train')} and {os.path.join(root, held)} differ: only in "
        f"train: {sorted(train - test)}, only in {held}: {sorted(test - train)}. Class index = position of the "
        "folder name in sorted order, so both splits need the same class folders: rename or remove folders until "
        "they match."
    )
  class_names = classes["train"]
  if len(class_names) < 2:
    raise DatasetMissingError(
        f"{os.path.join(root, 'train')} has one class folder ({class_names[0]!r}): a classifier needs at least 2. "
        f"Put each class's images in a folder of its own, {LAYOUT}."
    )
  out = {}
  for split, folder in (("train", "train"), ("test", held)):
    paths = [os.path.join(root, folder, c, f) for c in class_names for f in files[split][c]]
    labels = np.repeat(np.arange(len(class_names), dtype=np.int32), [len(files[split][c]) for c in class_names])
    out[split] = (paths, labels)
  return class_names, out, held


def _image_size(path: str):
  """(height, width) from the file's header; Pillow reads no pixels here.

  Raises:
    DatasetMissingError: Pillow cannot read the file as an image.
  """
  from PIL import Image

  try:
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except Exception as e:  # UnidentifiedImageError, truncated file, ...
    raise DatasetMissingError(
        f"Cannot read the image {path} ({type(e).__name__}: {e}); replace or remove it."
    ) from None


def _first_undecodable(paths):
  from PIL import Image

  for p in paths:
    try:
      with Image.open(p) as im:
        im.load()
    except Exception:  # any reason Pillow cannot decode it
      return p
  return None


def _decode_one(data):
  """uint8 [h, w, 3] of one encoded JPEG or PNG (grayscale and CMYK become RGB), in tf.data.

  JPEGs with libjpeg's accurate integer IDCT: TF's default fast one (tfds' Image feature decoder) moved the channel
  means of the CIFAR-10 JPEG copy by -1.1 (R) and -1.3 (B) against Pillow; "INTEGER_ACCURATE" gives Pillow's
  pixels exactly."""
  import tensorflow as tf

  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
      lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
  )


def _decode(split: str, paths: list, size):
  """Decodes `paths` in that order, in parallel tf.data calls, into one array.

  Args:
    split: the split's folder name, for messages.
    paths: the files to decode (this process's shard).
    size: (height, width) every image must have.

  Returns:
    (images uint8 [len(paths), height, width, 3], wrong {path: (height, width)} of the images of another size).

  Raises:
    DatasetMissingError: an image could not be decoded (named).
  """
  import tensorflow as tf

  h, w = size

  def decode(path):
    image = _decode_one(tf.io.read_file(path))
    shape = tf.shape(image)[:2]
    ok = tf.reduce_all(tf.equal(shape, [h, w]))
    # A wrong-sized image becomes zeros here (to batch) and is reported by its file name after the loop.
    image = tf.cond(ok, lambda: tf.reshape(image, [h, w, 3]), lambda: tf.zeros([h, w, 3], tf.uint8))
    return image, shape

  ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string))
  ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(DECODE_BATCH).prefetch(2)
  images = np.zeros((len(paths), h, w, 3), np.uint8)
  wrong, pos = {}, 0
  try:
    for batch, shapes in ds.as_numpy_iterator():
      images[pos : pos + len(batch)] = batch
      for j in np.flatnonzero((shapes != [h, w]).any(axis=1)):
        wrong[paths[pos + j]] = tuple(int(s) for s in shapes[j])
      pos += len(batch)
  except tf.errors.InvalidArgumentError as e:
    bad = _first_undecodable(paths)  # TF's error does not name the file
    where = f"{bad} (Pillow cannot decode it either)" if bad else "a file that Pillow decodes but TensorFlow does not"
    said = e.message.splitlines()[0]
    said = said[said.rfind(": ") + 2 :].rstrip(".")  # the decoder's own words, without tf.data's context
    raise DatasetMissingError(
        f"An image of {split!r} could not be decoded: {where}; TensorFlow said: {said}. Replace or remove it."
    ) from None
  return images, wrong


def _size_error(root: str, size, wrong: dict, num_checked: int) -> DatasetMissingError:
  h, w = size
  by_size = {}
  for path, s in wrong.items():
    by_size.setdefault(s, []).append(path)
  others = "; ".join(
      f"{sh}x{sw}: {len(ps)} image(s), e.g. {', '.join(ps[:3])}" for (sh, sw), ps in sorted(by_size.items())
  )
  return DatasetMissingError(
      f"The images of {root} have different sizes: {num_checked - len(wrong)} of the {num_checked} read here are "
      f"{h}x{w} (the size of the first train image); {others}. The CIFAR pipeline (data.pipeline='cifar') holds "
      "one input size in memory: train photos of any size with the ImageNet pipeline, which resizes and crops them "
      f"(configs/imagenet_resnet.py:depth=18,image_dir={root}, with crop= for small photos), or resize every "
      f"image to one size first (e.g. Pillow: Image.open(p).resize(({w}, {h})).save(p))."
  )


def is_cifar10_copy(class_names, image_shape) -> bool:
  """Whether an image folder holds CIFAR-10: its ten class names (in CIFAR-10's order, which is alphabetical)
  and 32x32 RGB images. Results on it stand beside Table 6, marked as a copy (src/paper.py)."""
  return tuple(class_names) == CIFAR10_CLASSES and tuple(image_shape) == (32, 32, 3)


def check_config(data_config):
  """Checks data.dir (a non-empty path; its layout is checked by list_images, on load), data.pipeline and
  data.heldout, and for the ImageNet pipeline its augmentation and test fields (imagenet.check_config).

  Raises:
    ConfigError: naming the field and its valid values.
  """
  d = data_config.get("dir")
  require(
      isinstance(d, str) and d != "",
      "data.dir",
      f"must be the image folder's root, laid out as {LAYOUT} (e.g. --config.data.dir=/data/cifar10-jpeg, or the "
      f"preset argument image_dir=...), got {d!r}.",
  )
  pipeline = data_config.get("pipeline", "cifar")
  require(
      pipeline in PIPELINES,
      "data.pipeline",
      f"must be 'cifar' (one image size, held in memory, pad + crop + flip: Sec. 4.2) or 'imagenet' (photos of any "
      f"size, streamed, scale augmentation: Sec. 3.4), got {pipeline!r}.",
  )
  heldout = data_config.get("heldout", "")
  require(
      heldout in ("",) + HELDOUT,
      "data.heldout",
      f"must be 'test', 'val' or '' (whichever of <dir>/test and <dir>/val exists), got {heldout!r}.",
  )
  if pipeline == "imagenet":
    from src.data import imagenet

    missing = [k for k in IMAGENET_FIELDS if k not in data_config]
    require(
        not missing,
        "data.pipeline",
        f"'imagenet' needs the ImageNet pipeline's data fields, missing here: {missing}. Use the preset "
        "configs/imagenet_resnet.py:image_dir=<dir> (configs/common.py imagenet_folder_preset), which sets them.",
    )
    imagenet.check_config(data_config)


def load(root: str, val_size: int, process_index: int, process_count: int, heldout: str = ""):
  """Loads this process's shard of an image folder into memory (pipeline 'cifar').

  Args:
    root: the dataset directory (config.data.dir; `~` is expanded).
    val_size: train images held out as 'val' by the fixed permutation (0: no val split).
    process_index, process_count: this process and the job's process count; each process keeps
      np.array_split(split, process_count)[process_index] of every split (the sizes of tfds.even_splits).
    heldout: the held-out folder ('test', 'val', or '' = whichever exists); it is the 'test' split.

  Returns:
    (arrays, sizes, class_names, info): arrays {split: (uint8 [n, H, W, 3], int32 [n])} for this process's shard
    of 'train', 'val' (if val_size) and 'test'; sizes {split: global size}; class_names (label i = class_names[i]);
    info {'dir', 'heldout', 'classes', 'image_shape', 'copy_of'} for result.json (copy_of: 'cifar10' or None).

  Raises:
    DatasetMissingError: a layout or image problem (see list_images; images of different sizes).
    ConfigError: val_size is not below the number of train images.
  """
  root = os.path.expanduser(root)
  class_names, files, held = list_images(root, heldout)  # every cheap check, before TensorFlow is even imported
  num_train = len(files["train"][0])
  if not 0 <= val_size < num_train:
    raise ConfigError(
        f"config.data.val_size: {val_size} must be in [0, {num_train}): {root}/train has {num_train} images."
    )
  perm = np.random.default_rng(SPLIT_SEED).permutation(num_train)
  parts = {"train": ("train", perm[val_size:]), "test": ("test", np.arange(len(files["test"][0])))}
  if val_size:
    parts["val"] = ("train", perm[:val_size])
  size = _image_size(files["train"][0][0])
  keep = {name: np.array_split(idx, process_count)[process_index] for name, (_, idx) in parts.items()}
  arrays, wrong = {}, {}
  for name, (source, _) in parts.items():
    paths, labels = files[source]
    images, bad = _decode(held if source == "test" else source, [paths[k] for k in keep[name]], size)
    wrong.update(bad)
    arrays[name] = (images, labels[keep[name]])
  if wrong:
    raise _size_error(root, size, wrong, sum(len(k) for k in keep.values()))
  sizes = {name: len(idx) for name, (_, idx) in parts.items()}
  image_shape = (*size, 3)
  info = {
      "dir": root,
      "heldout": held,
      "classes": list(class_names),
      "image_shape": list(image_shape),
      "copy_of": "cifar10" if is_cifar10_copy(class_names, image_shape) else None,
  }
  if process_index == 0:
    print(_summary(root, sizes["train"] + sizes.get("val", 0), len(files["test"][0]), class_names, held, "cifar"))
  return arrays, sizes, class_names, info


def _summary(root, num_train, num_heldout, class_names, held, pipeline) -> str:
  split = "test" if pipeline == "cifar" else "val"
  return (
      f"image folder {root}: {num_train} train images of {len(class_names)} classes; held out: {held}/ "
      f"({num_heldout} images, the {split!r} split); pipeline {pipeline!r}"
  )


def _header_problem(path: str):
  """None, or why Pillow cannot read `path`'s header as an image."""
  from PIL import Image

  try:
    with Image.open(path) as im:
      im.size  # noqa: B018  (the header's fields)
    return None
  except Exception as e:  # UnidentifiedImageError, truncated header, unreadable file, ...
    return f"{type(e).__name__}: {e}"


class FolderFiles:
  """An image folder's files as the ImageNet pipeline reads them: the source of an ImageNetDataset (see
  src/data/imagenet.py TfdsRecords for the interface).

  'train' is the train folder's files in a fixed random order (seed SPLIT_SEED), which plays the part of the
  order tfds gave ImageNet when preparing it: processes take contiguous shards of it and the mean takes its first
  images, so neither is a few classes only. 'val' is the held-out folder in (class, file name) order. An element is
  (path, label): skipping one reads nothing. Each epoch of a process permutes its shard by (seed, epoch): a full
  shuffle, no buffer.

  Args:
    root, heldout: the folder and its held-out folder ('' = whichever of test/ and val/ exists).
    process_index, process_count: this process; the headers of its shards are checked here.

  Raises:
    DatasetMissingError: a layout problem (list_images) or a file whose header is not an image's (named).
  """

  mean_cache = None  # the folder may be read-only, or anyone's: the mean is computed at each start

  def __init__(self, root: str, heldout: str, process_index: int, process_count: int):
    from src.data.imagenet import shard_range

    root = os.path.expanduser(root)
    class_names, files, held = list_images(root, heldout)
    self.class_names = tuple(class_names)
    self.num_classes = len(self.class_names)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files["train"][0]))
    self._files = {
        "train": (np.asarray(files["train"][0])[order], files["train"][1][order]),
        "val": (np.asarray(files["test"][0]), files["test"][1]),
    }
    self.sizes = {split: len(labels) for split, (_, labels) in self._files.items()}
    self.info = {"dir": root, "heldout": held, "classes": list(self.class_names), "pipeline": "imagenet"}
    mine = [
        p
        for split, (paths, _) in self._files.items()
        for p in paths[slice(*shard_range(len(paths), process_index, process_count))]
    ]
    with concurrent.futures.ThreadPoolExecutor(HEADER_THREADS) as pool:
      problems = [(p, why) for p, why in zip(mine, pool.map(_header_problem, mine)) if why]
    if problems:
      listed = "; ".join(f"{p} ({why})" for p, why in problems[:3])
      raise DatasetMissingError(
          f"{len(problems)} file(s) of {root} are not images that can be read: {listed}. Replace or remove them."
      )
    if process_index == 0:
      print(_summary(root, self.sizes["train"], self.sizes["val"], self.class_names, held, "imagenet"))

  def elements(self, split, start, stop):
    """(path, label) of the examples [start, stop) of `split`, in order."""
    import tensorflow as tf

    paths, labels = self._files[split]
    return tf.data.Dataset.from_tensor_slices((tf.constant(paths[start:stop], tf.string), labels[start:stop]))

  def train_epoch(self, start, stop, epoch, seed, process_index):
    """The train examples [start, stop) in an order drawn from (seed, process_index, epoch); epoch: int64 tensor."""
    import tensorflow as tf

    from src.data.imagenet import _seed_int

    paths, labels = self._files["train"]
    key = tf.stack([tf.constant(_seed_int(seed, 3, process_index), tf.int64), epoch])
    order = tf.argsort(tf.random.stateless_uniform([stop - start], seed=key))
    paths, labels = tf.constant(paths[start:stop], tf.string), tf.constant(labels[start:stop])
    return tf.data.Dataset.from_tensor_slices((tf.gather(paths, order), tf.gather(labels, order)))

  @staticmethod
  def read(path, label):
    import tensorflow as tf

    return tf.io.read_file(path), label

  @staticmethod
  def decode(encoded):
    import tensorflow as tf

    return tf.ensure_shape(_decode_one(encoded), [None, None, 3])

  def undecodable(self, elements):
    """The first file among `elements` (a dataset of (path, label)) that TensorFlow cannot decode, or None."""
    import tensorflow as tf

    for path, _ in elements.as_numpy_iterator():
      try:
        _decode_one(tf.io.read_file(path))
      except tf.errors.InvalidArgumentError:
        return path.decode()
    return None


def load_streamed(data_config, *, seed: int, process_index: int, process_count: int):
  """This process's view of an image folder through the ImageNet pipeline (pipeline 'imagenet'): an
  ImageNetDataset over FolderFiles, with data_config's augmentation and test fields.

  Raises:
    DatasetMissingError: a layout or file problem (FolderFiles).
  """
  from src.data.imagenet import ImageNetDataset

  source = FolderFiles(data_config.dir, data_config.get("heldout", ""), process_index, process_count)
  return ImageNetDataset(source, data_config, seed=seed, process_index=process_index, process_count=process_count)


def count_train_images(root: str):
  """The number of images in <root>/train/<class>/ (hidden names skipped), by listing only; None if <root>/train is
  not a directory. For presets that count their schedule in epochs (configs/common.py)."""
  train = os.path.join(os.path.expanduser(root), "train")
  if not os.path.isdir(train):
    return None
  return sum(len(_images(os.path.join(train, c))) for c in _folders(train))
