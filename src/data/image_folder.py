"""Any image-classification dataset laid out as folders, read by tfds `ImageFolder` and decoded once into memory.

    <dir>/train/<class>/<image>     e.g. cifar10-jpeg/train/airplane/0000.jpg
    <dir>/test/<class>/<image>      images: .jpg, .jpeg, .png (what tfds ImageFolder reads); other files ignored

`config.data.name = "image_folder"`, `config.data.dir = <dir>`. The arrays then feed the same `InMemoryDataset`
as CIFAR-10 (per-pixel mean of the train part, stateless (seed, step) batches, one shard per process), so the
paper's CIFAR recipe (Sec. 4.2) runs unchanged on them.

- Class index = position of the class folder's name in sorted order, as tfds ImageFolder numbers them (for a
  CIFAR-10 copy with folders airplane ... truck, CIFAR-10's own label order).
- val = `val_size` train images chosen by a fixed random permutation (seed `SPLIT_SEED`, independent of the run
  seed): the folders are class-sorted, so a contiguous tail, as cifar.py takes from tfds, would be one class.
  train = the rest, in that permuted order; test = every test image in (class, file name) order.
- Images are decoded as 8-bit RGB (grayscale files become 3 equal channels) and must all have one size.
- Problems are found before anything is compiled, cheap ones first: the directory listing (missing directory,
  a split or class folder without images, class folders that differ between splits) before any image is read;
  mixed image sizes while decoding. Each raises DatasetMissingError saying what to fix.
- Each process decodes only its own shard of each split, but reads every file's bytes (the ImageFolder
  stream). Loading the 60,000 32x32 JPEGs of a CIFAR-10 copy took 7-10 s on a shared 2-core CPU, 7.4 s of
  CPU time (README); no decoded copy is cached.
"""

import os

import numpy as np

from src.errors import ConfigError, DatasetMissingError, require

SPLITS = ("train", "test")
EXTENSIONS = (".jpg", ".jpeg", ".png")  # tfds ImageFolder's _SUPPORTED_IMAGE_FORMAT, compared lower-case
SPLIT_SEED = 0  # the fixed train/val permutation; not the run seed, so every run validates on the same images
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DECODE_BATCH = 256  # images per parallel decoding call

LAYOUT = "<dir>/train/<class>/<image> and <dir>/test/<class>/<image> (.jpg, .jpeg or .png)"


def _folders(path: str) -> list:
  return sorted(f for f in os.listdir(path) if os.path.isdir(os.path.join(path, f)))


def _images(path: str) -> list:
  return sorted(f for f in os.listdir(path) if f.lower().endswith(EXTENSIONS))


def list_images(root: str):
  """Lists `root` the way tfds ImageFolder does and checks it, reading no image.

  Args:
    root: the dataset directory, `~` expanded by the caller (ImageFolder's file names start with it).

  Returns:
    (class_names, files): class_names, the sorted class folder names (class index = position);
    files, {split: (paths list[str], labels int32 [n])} for 'train' and 'test' in (class, file name) order,
    each path exactly as ImageFolder names the file (os.path.join(root, split, class, file)).

  Raises:
    DatasetMissingError: `root` is not a directory; a split folder is missing or holds no images; a class folder
      holds no images; the class folders of train and test differ.
  """
  if not os.path.isdir(root):
    raise DatasetMissingError(
        f"data.dir={root!r} is not a directory. Set --config.data.dir (or the preset argument image_dir=) to a "
        f"folder laid out as {LAYOUT}."
    )
  classes, files = {}, {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    names = _folders(split_dir) if os.path.isdir(split_dir) else []
    per_class = {c: _images(os.path.join(split_dir, c)) for c in names}
    if not any(per_class.values()):
      found = f"class folders found: {names}" if names else "no class folders"
      raise DatasetMissingError(
          f"The {split!r} split of the image folder has no images: {split_dir} ({found}). "
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
        f"The class folders of {os.path.join(root, 'train')} and {os.path.join(root, 'test')} differ: only in "
        f"train: {sorted(train - test)}, only in test: {sorted(test - train)}. Class index = position of the "
        "folder name in sorted order, so both splits need the same class folders: rename or remove folders until "
        "they match."
    )
  class_names = classes["train"]
  out = {}
  for split in SPLITS:
    paths = [os.path.join(root, split, c, f) for c in class_names for f in files[split][c]]
    labels = np.repeat(np.arange(len(class_names), dtype=np.int32), [len(files[split][c]) for c in class_names])
    out[split] = (paths, labels)
  return class_names, out


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


def _decode(builder, split: str, paths: list, keep: np.ndarray, size):
  """Decodes the images `paths[keep]` of `split`, in that order, from the builder's tf.data stream.

  ImageFolder reads every file of the split (in its own shuffled order). Its stream is batched, then a lookup
  table from file name to output row drops the files of other processes' shards and the rest are decoded, a
  batch per parallel call: 1.5-2x faster on 2 cores than three per-image tf.data stages.

  Args:
    builder: a tfds.ImageFolder over the dataset root.
    split: 'train' or 'test'.
    paths: every file of the split, as list_images returns them.
    keep: int [k], indices into `paths` of the images wanted, in output order.
    size: (height, width) every image must have.

  Returns:
    (images uint8 [k, height, width, 3], wrong {path: (height, width)} of the images of another size).

  Raises:
    DatasetMissingError: an image could not be decoded, or ImageFolder did not read every listed file.
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds

  h, w = size
  row = np.full(len(paths), -1, np.int64)
  row[keep] = np.arange(len(keep))
  table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(tf.constant(paths), tf.constant(row)), -1)

  def decode_one(data):
    # Not tfds' Image feature decoder: its tf.image.decode_image uses TF's default fast integer IDCT for JPEGs,
    # which moved the channel means of the CIFAR-10 JPEG copy by -1.1 (R) and -1.3 (B) against libjpeg's
    # accurate IDCT; "INTEGER_ACCURATE" gives Pillow's pixels exactly.
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    shape = tf.shape(image)[:2]
    ok = tf.reduce_all(tf.equal(shape, [h, w]))
    # A wrong-sized image becomes zeros here (to batch) and is reported by its file name after the loop.
    image = tf.cond(ok, lambda: tf.reshape(image, [h, w, 3]), lambda: tf.zeros([h, w, 3], tf.uint8))
    return image, shape

  def decode_batch(examples):
    rows = table.lookup(examples["image/filename"])
    mine = rows >= 0
    images, shapes = tf.map_fn(
        decode_one,
        tf.boolean_mask(examples["image"], mine),
        fn_output_signature=(tf.TensorSpec([h, w, 3], tf.uint8), tf.TensorSpec([2], tf.int32)),
        parallel_iterations=16,
    )
    return tf.boolean_mask(rows, mine), images, shapes

  ds = builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()}).batch(DECODE_BATCH)
  ds = ds.map(decode_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
  images = np.zeros((len(keep), h, w, 3), np.uint8)
  seen = np.zeros(len(keep), bool)
  wrong = {}
  try:
    for i, batch, shapes in tfds.as_numpy(ds):
      images[i], seen[i] = batch, True
      for j in np.flatnonzero((shapes != [h, w]).any(axis=1)):
        wrong[paths[keep[i[j]]]] = tuple(int(s) for s in shapes[j])
  except tf.errors.InvalidArgumentError as e:
    bad = _first_undecodable([paths[k] for k in keep])  # TF's error does not name the file
    where = f"{bad} (Pillow cannot decode it either)" if bad else "a file that Pillow decodes but TensorFlow does not"
    said = e.message.splitlines()[0]
    said = said[said.rfind(": ") + 2 :].rstrip(".")  # the decoder's own words, without tf.data's context
    raise DatasetMissingError(
        f"An image of {split!r} could not be decoded: {where}; TensorFlow said: {said}. Replace or remove it."
    ) from None
  if not seen.all():
    missing = [paths[keep[k]] for k in np.flatnonzero(~seen)[:3]]
    raise DatasetMissingError(
        f"tfds ImageFolder did not read {int((~seen).sum())} listed images of {split!r} (e.g. {missing}); was the "
        "folder changed while loading? Start again."
    )
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
      f"{h}x{w} (the size of the first train image); {others}. The nets need one input size: resize or crop every "
      f"image to one size first (e.g. Pillow: Image.open(p).resize(({w}, {h})).save(p))."
  )


def is_cifar10_copy(class_names, image_shape) -> bool:
  """Whether an image folder holds CIFAR-10: its ten class names (in CIFAR-10's order, which is alphabetical)
  and 32x32 RGB images. Results on it stand beside Table 6, marked as a copy (src/paper.py)."""
  return tuple(class_names) == CIFAR10_CLASSES and tuple(image_shape) == (32, 32, 3)


def check_config(data_config):
  """Checks data.dir before anything is read: a non-empty path (its layout is checked by list_images, on load).

  Raises:
    ConfigError: data.dir is missing or empty.
  """
  d = data_config.get("dir")
  require(
      isinstance(d, str) and d != "",
      "data.dir",
      "must be the image folder's root, laid out as <dir>/train/<class>/<image> and <dir>/test/<class>/<image> "
      f"(e.g. --config.data.dir=/data/cifar10-jpeg, or the preset argument image_dir=...), got {d!r}.",
  )


def load(root: str, val_size: int, process_index: int, process_count: int):
  """Loads this process's shard of an image folder.

  Args:
    root: the dataset directory (config.data.dir; `~` is expanded).
    val_size: train images held out as 'val' by the fixed permutation (0: no val split).
    process_index, process_count: this process and the job's process count; each process keeps
      np.array_split(split, process_count)[process_index] of every split (the sizes of tfds.even_splits).

  Returns:
    (arrays, sizes, class_names, info): arrays {split: (uint8 [n, H, W, 3], int32 [n])} for this process's shard
    of 'train', 'val' (if val_size) and 'test'; sizes {split: global size}; class_names (label i = class_names[i]);
    info {'dir', 'classes', 'image_shape', 'copy_of'} for result.json (copy_of: 'cifar10' or None).

  Raises:
    DatasetMissingError: a layout or image problem (see list_images; images of different sizes).
    ConfigError: val_size is not below the number of train images.
  """
  root = os.path.expanduser(root)
  class_names, files = list_images(root)  # every cheap check, before TensorFlow is even imported
  num_train = len(files["train"][0])
  if not 0 <= val_size < num_train:
    raise ConfigError(
        f"config.data.val_size: {val_size} must be in [0, {num_train}): {root}/train has {num_train} images."
    )
  perm = np.random.default_rng(SPLIT_SEED).permutation(num_train)
  parts = {"train": ("train", perm[val_size:]), "test": ("test", np.arange(len(files["test"][0])))}
  if val_size:
    parts["val"] = ("train", perm[:val_size])

  import tensorflow_datasets as tfds

  builder = tfds.ImageFolder(root)
  for split in SPLITS:
    listed = builder.info.splits[split].num_examples if split in builder.info.splits else 0
    if listed != len(files[split][0]):  # the two listings must agree, or rows would be missing
      raise DatasetMissingError(
          f"tfds ImageFolder lists {listed} images in {root}/{split}, this loader {len(files[split][0])}; "
          "check for unreadable files or folders."
      )
  size = _image_size(files["train"][0][0])
  keep = {name: np.array_split(idx, process_count)[process_index] for name, (_, idx) in parts.items()}
  decoded, wrong = {}, {}
  for split in SPLITS:  # one pass over each split's files for all the parts drawn from it
    names = [name for name, (source, _) in parts.items() if source == split]
    rows = np.concatenate([keep[name] for name in names])
    images, bad = _decode(builder, split, files[split][0], rows, size)
    wrong.update(bad)
    for name, chunk in zip(names, np.split(images, np.cumsum([len(keep[n]) for n in names])[:-1])):
      decoded[name] = chunk
  if wrong:
    raise _size_error(root, size, wrong, sum(len(k) for k in keep.values()))
  arrays = {name: (decoded[name], files[source][1][keep[name]]) for name, (source, _) in parts.items()}
  sizes = {name: len(idx) for name, (_, idx) in parts.items()}
  image_shape = (*size, 3)
  info = {
      "dir": root,
      "classes": list(class_names),
      "image_shape": list(image_shape),
      "copy_of": "cifar10" if is_cifar10_copy(class_names, image_shape) else None,
  }
  return arrays, sizes, class_names, info
