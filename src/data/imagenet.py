"""ImageNet (ILSVRC 2012) through tfds, streamed with tf.data: the paper's augmentation and test protocols.

    ds = imagenet.load(config.data, seed=config.seed, process_index=..., process_count=...)
    ds.train_batch(step, b)                      # {'image': uint8 [b,crop,crop,3], 'label': int32 [b]}
    ds.eval_batches("val", b, protocol="center" | "ten_crop")   # + 'mask' bool [b]
    ds.multiscale_batches("val")                 # one image at a time, at every shorter side of data.multiscale

Train (Sec. 3.4): shorter side resized to an integer uniform in [scale_min, scale_max], a random crop x crop,
a horizontal flip with probability 1/2, AlexNet's PCA colour augmentation. Test: shorter side eval_resize and
the central crop, or the 10 crops (corners and centre, of the image and of its mirror image), or whole images
at several scales (fully convolutional, Table 4).

The train stream of a process is a sequence of epochs over its own slice of the train split; epoch e reads
the slice's files in an order drawn from (seed, e) and shuffles through a buffer seeded by (seed, e). Every
example's augmentation is drawn from (seed, process_index, its position in the stream) with stateless ops,
so a batch is a pure function of (seed, step, process_index, batch size): a resumed run jumps to the epoch of
its step and skips the rest of the way, reading records without decoding them.

The dataset is read from tfds' TFRecord files directly (tfds' file instructions, parsed with tfds' features),
which is what lets a stream start at any epoch without replaying the ones before it.
"""

import hashlib
import os
import re

import numpy as np

from src.data.means import combine_means
from src.errors import DatasetMissingError, positive_int, require

NAME = "imagenet2012"
NUM_CLASSES = 1000
ARCHIVES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
PROTOCOLS = ("center", "ten_crop")  # of eval_batches
EVAL_PROTOCOLS = PROTOCOLS + ("multiscale",)  # what src.evaluate runs: + multiscale_batches

# AlexNet's PCA colour augmentation with the ImageNet RGB statistics of fb.resnet.torch, in 0..255 units:
# eigenvalues, and the eigenvectors as the columns of EIGVEC (rows: R, G, B).
EIGVAL = np.array([55.46, 4.794, 1.148], np.float32)
EIGVEC = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]], np.float32)

_EPOCHS = 2**40  # "endless"


_TF = []


def _tf():
  """TensorFlow for the input pipeline only: it must never take an accelerator from JAX."""
  if not _TF:
    import tensorflow as tf

    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF was initialised before: too late to hide them (tensorflow-cpu has none)
      pass
    _TF.append(tf)
  return _TF[0]


# ---------------------------------------------------------------------------------------------------------
# Pure image helpers (tf ops; they take numpy arrays or tensors, eagerly or inside tf.data).


def resized_shape(height, width, size, round_to=1):
  """(h, w) int32 with the shorter side exactly `size` and the aspect ratio kept (rounded to whole pixels).

  round_to > 1: the longer side is rounded to a multiple of round_to (at least `size`), which bounds the
  number of distinct shapes multi-scale testing compiles for. A square image stays square.
  """
  tf = _tf()
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  size = tf.cast(size, tf.float64)
  longer = tf.maximum(h, w) * size / tf.minimum(h, w)
  longer = tf.maximum(size, tf.floor(longer / round_to + 0.5) * round_to)
  new_h = tf.where(h < w, size, longer)  # h == w: both sides are `size`
  new_w = tf.where(h < w, longer, size)
  new_h = tf.where(tf.equal(h, w), size, new_h)
  return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def resize(image, height, width):
  """Bilinear, antialiased resize of a uint8 [h, w, 3] image; rounded and clipped back to uint8."""
  tf = _tf()
  image = tf.convert_to_tensor(image)
  out = tf.image.resize(image, tf.stack([height, width]), method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def resize_shorter_side(image, size, round_to=1):
  """Shorter side to exactly `size` (see resized_shape for round_to)."""
  tf = _tf()
  shape = tf.shape(image)
  return resize(image, *resized_shape(shape[0], shape[1], size, round_to))


def center_crop(image, crop):
  tf = _tf()
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  top, left = (shape[0] - crop) // 2, (shape[1] - crop) // 2
  return image[top : top + crop, left : left + crop]


def ten_crop(image, crop):
  """[10, crop, crop, 3]: top-left, top-right, bottom-left, bottom-right, centre of `image`, then the same
  five of the mirrored image (so crop 5, the mirror's top-left, is the mirror of crop 1, the top-right)."""
  tf = _tf()
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  corners = [(0, 0), (0, w - crop), (h - crop, 0), (h - crop, w - crop), ((h - crop) // 2, (w - crop) // 2)]
  crops = []
  for img in (image, image[:, ::-1]):
    crops += [img[y : y + crop, x : x + crop] for y, x in corners]
  return tf.stack(crops)


def lighting(image, alpha):
  """AlexNet's PCA colour augmentation: adds EIGVEC @ (alpha * EIGVAL) to every pixel (alpha [3])."""
  tf = _tf()
  offset = tf.linalg.matvec(tf.constant(EIGVEC), tf.cast(alpha, tf.float32) * tf.constant(EIGVAL))
  out = tf.cast(image, tf.float32) + offset
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def _scale_size(seed, scale_min, scale_max):
  tf = _tf()
  return tf.random.stateless_uniform([], seed=seed, minval=scale_min, maxval=scale_max + 1, dtype=tf.int32)


def random_scale(image, seed, scale_min, scale_max):
  """Shorter side resized to an integer drawn uniformly from [scale_min, scale_max] (seed: int [2])."""
  return resize_shorter_side(image, _scale_size(seed, scale_min, scale_max))


def _crop_window(seed, height, width, crop, flip):
  """(top, left, mirror?) of a random crop x crop window of a height x width image."""
  tf = _tf()
  s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=3)
  top = tf.random.stateless_uniform([], seed=s[0], minval=0, maxval=height - crop + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], seed=s[1], minval=0, maxval=width - crop + 1, dtype=tf.int32)
  mirror = tf.random.stateless_uniform([], seed=s[2]) < 0.5 if flip else tf.constant(False)
  return top, left, mirror


def random_crop_flip(image, seed, crop, flip=True):
  """A random crop x crop window, mirrored with probability 1/2 if `flip` (seed: int [2])."""
  tf = _tf()
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  top, left, mirror = _crop_window(seed, shape[0], shape[1], crop, flip)
  out = image[top : top + crop, left : left + crop]
  return tf.cond(mirror, lambda: out[:, ::-1], lambda: out)


def scale_crop(image, height, width, top, left, crop):
  """The crop x crop window at (top, left) of `image` resized to height x width, computing only the window:
  the resize of `resize` (the same kernel and scale), equal to resize-then-crop up to float rounding (a
  pixel may differ by 1), and 2-4x cheaper than resizing the whole image to 256..480."""
  tf = _tf()
  image = tf.convert_to_tensor(image)
  scale = tf.cast(tf.stack([height, width]), tf.float32) / tf.cast(tf.shape(image)[:2], tf.float32)
  out = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(image, tf.float32)[None],
      size=tf.constant([crop, crop]),
      scale=scale,
      translation=-tf.cast(tf.stack([top, left]), tf.float32),
      kernel_type="triangle",
      antialias=True,
  )[0]
  return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)


def random_scale_crop_flip(image, seed, crop, scale_min, scale_max, flip=True):
  """Scale augmentation (Sec. 3.4) from one seed (int [2]): random_scale with the first half of the seed's
  split, then random_crop_flip with the second half, computed as one scale_crop of the window."""
  tf = _tf()
  image = tf.convert_to_tensor(image)
  s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
  shape = tf.shape(image)
  height, width = resized_shape(shape[0], shape[1], _scale_size(s[0], scale_min, scale_max))
  top, left, mirror = _crop_window(s[1], height, width, crop, flip)
  out = scale_crop(image, height, width, top, left, crop)
  return tf.cond(mirror, lambda: out[:, ::-1], lambda: out)


def train_augment(image, seed, *, crop, scale_min, scale_max, flip, color_pca):
  """The whole train augmentation of one decoded image (seed: int [2])."""
  tf = _tf()
  s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=2)
  out = random_scale_crop_flip(image, s[0], crop, scale_min, scale_max, flip)
  if color_pca:
    out = lighting(out, tf.random.stateless_normal([3], seed=s[1]) * color_pca)
  return out


# ---------------------------------------------------------------------------------------------------------
# Preparation and reading.


def _missing_message(manual_dir, missing, root):
  return (
      f"ImageNet (imagenet2012) is not prepared in the tfds data_dir {root!r}, and "
      f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing from the manual_dir\n"
      f"    {manual_dir}\n"
      f"Put {ARCHIVES[0]} (147,897,477,120 bytes) and {ARCHIVES[1]} (6,744,924,160 bytes) from "
      f"https://image-net.org/download-images there (or set data.manual_dir to where they are); tfds then "
      f"prepares {root}/{NAME} on first use (hours). Or set data.data_dir to where it is already prepared."
  )


def prepare(data_dir=None, manual_dir=None):
  """Returns a prepared tfds builder; DatasetMissingError (before anything slow) if the archives are missing."""
  import tensorflow_datasets as tfds

  builder = tfds.builder(NAME, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  root = os.fspath(builder.data_dir_root)
  manual_dir = os.fspath(manual_dir or os.path.join(root, "downloads", "manual"))
  missing = [a for a in ARCHIVES if not os.path.isfile(os.path.join(manual_dir, a))]
  if missing:
    raise DatasetMissingError(_missing_message(manual_dir, missing, root))
  _tf()
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def shard_range(n: int, index: int, count: int):
  """[start, stop) of part `index` of `count` near-equal contiguous parts of range(n)."""
  return n * index // count, n * (index + 1) // count


def slice_instructions(instructions, start: int, stop: int):
  """The examples [start, stop) of a split given as tfds file instructions: [(filename, skip, take)]."""
  out, pos = [], 0
  for ins in instructions:
    lo, hi = max(start, pos), min(stop, pos + ins.take)
    if lo < hi:
      out.append((ins.filename, ins.skip + lo - pos, hi - lo))
    pos += ins.take
  return out


def _seed_int(*key) -> int:
  return int(np.random.SeedSequence(list(key)).generate_state(1, np.uint32)[0])


class TfdsRecords:
  """imagenet2012 as tfds prepared it: the ImageNetDataset's source of encoded images (see FolderFiles in
  src/data/image_folder.py for the other).

  A source holds the examples of 'train' and 'val' in a fixed "file order" and gives them as tf.data datasets of
  elements, cheap to skip, that `read` turns into (encoded image bytes, int32 label): here an element is one
  serialized TFRecord example (skipping reads it, never decodes it).
  """

  def __init__(self, builder, data_config):
    g = data_config.get
    self.builder = builder
    self.split_specs = {"train": g("train_split", "train"), "val": g("val_split", "validation")}
    self.shuffle_buffer = g("shuffle_buffer", 10_000)
    if builder.info.file_format is not None and "tfrecord" not in str(builder.info.file_format).lower():
      raise ValueError(
          f"imagenet: {builder.data_dir} is prepared as {builder.info.file_format}; this pipeline "
          f"reads tfds' default TFRecord files (prepare it again without file_format)"
      )
    self.sizes = {s: builder.info.splits[spec].num_examples for s, spec in self.split_specs.items()}
    self._features = builder.info.features
    spec = self.split_specs["train"]
    tag = re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-") + "-" + hashlib.sha1(spec.encode()).hexdigest()[:8]
    self.mean_cache = os.path.join(os.fspath(builder.data_dir), f"mean_{tag}")  # + what else the mean depends on
    self.info = {}

  def _files(self, split, start, stop):
    return slice_instructions(self.builder.info.splits[self.split_specs[split]].file_instructions, start, stop)

  @staticmethod
  def _file_tensors(files):
    """(file names, skips, takes) of [(filename, skip, take)] as tensors (typed: `files` may be empty)."""
    tf = _tf()
    return (
        tf.constant([f for f, _, _ in files], tf.string),
        tf.constant([s for _, s, _ in files], tf.int64),
        tf.constant([t for _, _, t in files], tf.int64),
    )

  def elements(self, split, start, stop):
    """The serialized examples [start, stop) of `split`, in file order."""
    tf = _tf()
    ds = tf.data.Dataset.from_tensor_slices(self._file_tensors(self._files(split, start, stop)))
    return ds.flat_map(lambda f, s, t: tf.data.TFRecordDataset(f).skip(s).take(t))

  def train_epoch(self, start, stop, epoch, seed, process_index):
    """The train examples [start, stop) for epoch `epoch` (an int64 tensor): their files in an order drawn from
    (seed, epoch), interleaved, through a shuffle buffer seeded by (seed, epoch)."""
    tf = _tf()
    files = self._files("train", start, stop)
    names, skips, takes = self._file_tensors(files)
    key = tf.stack([tf.constant(_seed_int(seed, 0, process_index), tf.int64), epoch])
    order = tf.argsort(tf.random.stateless_uniform([len(files)], seed=key))
    ds = tf.data.Dataset.from_tensor_slices((tf.gather(names, order), tf.gather(skips, order), tf.gather(takes, order)))
    ds = ds.interleave(
        lambda f, s, t: tf.data.TFRecordDataset(f).skip(s).take(t),
        cycle_length=min(len(files), 16),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    shuffle_seed = tf.constant(_seed_int(seed, 1, process_index) % 2**31, tf.int64) + epoch
    return ds.shuffle(self.shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False)

  def read(self, serialized):
    """(encoded JPEG bytes, int32 label) of one tfds record; the image is decoded later, by `decode`."""
    import tensorflow_datasets as tfds

    tf = _tf()
    ex = self._features.deserialize_example(serialized, decoders={"image": tfds.decode.SkipDecoding()})
    return ex["image"], tf.cast(ex["label"], tf.int32)

  @staticmethod
  def decode(encoded):
    return _tf().io.decode_jpeg(encoded, channels=3)  # tfds re-encoded ImageNet's CMYK and PNG files as JPEG

  def undecodable(self, elements):
    return None  # tfds wrote every record from an image it decoded


class ImageNetDataset:
  """One process's view of ImageNet, or of a folder of photos, through the paper's ImageNet pipeline; see the
  module docstring.

  Args:
    source: where the encoded images come from: TfdsRecords (imagenet2012) or image_folder.FolderFiles.
    data_config: crop, scale_min, scale_max, flip, color_pca, eval_resize, multiscale, multiscale_round, mean,
      mean_images (configs/common.py imagenet_recipe).
    seed, process_index, process_count: the run seed; this process and the job's process count.

  Raises:
    ConfigError: inconsistent crop / scale / resize / mean fields (check_config).
    ValueError: fewer train images than processes.
  """

  num_classes = NUM_CLASSES
  splits = ("val",)

  def __init__(self, source, data_config, *, seed, process_index=0, process_count=1):
    check_config(data_config)  # src.main has checked them already; a direct caller gets the same errors
    d = data_config
    self.source = source
    self.seed, self.process_index, self.process_count = seed, process_index, process_count
    self.crop, self.scale_min, self.scale_max = d.crop, d.scale_min, d.scale_max
    self.flip, self.color_pca = d.flip, float(d.color_pca)
    self.eval_resize = d.eval_resize
    self.multiscale, self.multiscale_round = tuple(d.multiscale), d.multiscale_round
    self.mean_mode, self.mean_images = d.mean, d.mean_images
    self.num_classes = getattr(source, "num_classes", NUM_CLASSES)
    self.class_names = getattr(source, "class_names", None)
    self.info = dict(source.info)
    self._sizes = dict(source.sizes)
    self.num_train = self._sizes["train"]
    self.image_shape = (self.crop, self.crop, 3)
    self._train_range = shard_range(self.num_train, process_index, process_count)
    self.num_local_train = self._train_range[1] - self._train_range[0]
    if self.num_local_train <= 0:
      raise ValueError(
          f"imagenet: {self.num_train} training examples cannot be split over " f"{process_count} processes"
      )
    self._train_iter, self._next_step, self._iter_batch = None, None, None
    pixel_mean = self._pixel_mean()
    if self.mean_mode == "channel":
      pixel_mean = np.broadcast_to(pixel_mean.mean(axis=(0, 1), dtype=np.float64), pixel_mean.shape)
    self.mean = np.ascontiguousarray(pixel_mean, dtype=np.float32)

  def num_examples(self, split: str) -> int:
    if split not in self._sizes:
      raise KeyError(f"no split {split!r}; available: train, {', '.join(self.splits)}")
    return self._sizes[split]

  # --- reading ---------------------------------------------------------------------------------------

  def _decoded(self, *element):
    """(uint8 [h, w, 3], int32 label) of one element of the source (tf.data passes a tuple's parts apart)."""
    encoded, label = self.source.read(*element)
    return self.source.decode(encoded), label

  def _options(self):
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return options

  def _local_range(self, split):
    return shard_range(self.num_examples(split), self.process_index, self.process_count)

  def _eval_dataset(self, split, fn):
    """This process's part of `split`, in file order: fn(decoded image) and the label, per example."""
    tf = _tf()
    ds = self.source.elements(split, *self._local_range(split))
    ds = ds.map(self._decoded, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda image, label: (fn(image), label), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.with_options(self._options())

  def _stream(self, ds, what, elements):
    """Iterates `ds`; an image that cannot be decoded ends it with DatasetMissingError naming the file (found
    by the source among `elements()`, the elements the failing stream was reading)."""
    tf = _tf()
    try:
      yield from ds.as_numpy_iterator()
    except tf.errors.InvalidArgumentError as e:
      bad = self.source.undecodable(elements())
      said = e.message.splitlines()[0]
      raise DatasetMissingError(
          f"An image of {what} could not be decoded: {bad or 'a record of the prepared dataset'}; TensorFlow said: "
          f"{said[said.rfind(': ') + 2 :].rstrip('.')}. Replace or remove it; the checkpoints already written "
          "are kept, and the same command continues from the newest."
      ) from None

  # --- train -----------------------------------------------------------------------------------------

  def _train_elements(self, step, local_batch_size):
    """The elements of this process's train stream from batch `step` on (skipping costs no decoding)."""
    tf = _tf()
    start = step * local_batch_size
    epoch, offset = divmod(start, self.num_local_train)
    lo, hi = self._train_range
    epochs = tf.data.Dataset.range(epoch, _EPOCHS)
    ds = epochs.flat_map(lambda e: self.source.train_epoch(lo, hi, e, self.seed, self.process_index))
    return ds.skip(offset)

  def _train_dataset(self, step, local_batch_size):
    tf = _tf()
    start = step * local_batch_size
    ds = self._train_elements(step, local_batch_size)
    ds = tf.data.Dataset.zip((tf.data.Dataset.range(start, 2**62), ds))  # position in the stream
    base = tf.constant(_seed_int(self.seed, 2, self.process_index) % 2**31, tf.int64)
    aug = dict(
        crop=self.crop, scale_min=self.scale_min, scale_max=self.scale_max, flip=self.flip, color_pca=self.color_pca
    )

    def prepare_example(position, element):
      image, label = self._decoded(*element) if isinstance(element, tuple) else self._decoded(element)
      image = train_augment(image, tf.stack([base, position]), **aug)
      return {"image": tf.ensure_shape(image, self.image_shape), "label": label}

    ds = ds.map(prepare_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(self._options())

  def train_batch(self, step: int, local_batch_size: int) -> dict:
    """Batch `step` of this process's endless train stream: a pure function of (seed, step, process_index,
    local_batch_size). Consecutive steps stream; any other step rebuilds the stream positioned there.

    Raises:
      DatasetMissingError: an image of the batch cannot be decoded (named).
    """
    if self._train_iter is None or step != self._next_step or local_batch_size != self._iter_batch:
      ds = self._train_dataset(step, local_batch_size)
      # On a decoding error: the elements of the batch being read (self._next_step, set below).
      failing = lambda: self._train_elements(self._next_step, local_batch_size).take(local_batch_size)  # noqa: E731
      self._train_iter = self._stream(ds, "train", failing)
      self._iter_batch = local_batch_size
    self._next_step = step
    batch = next(self._train_iter)
    self._next_step = step + 1
    return batch

  # --- eval ------------------------------------------------------------------------------------------

  def _local_slots(self, split):
    """Examples per process, the same on every process (from the global size)."""
    return -(-self.num_examples(split) // self.process_count)

  def _eval_stream(self, split, ds):
    return self._stream(ds, repr(split), lambda: self.source.elements(split, *self._local_range(split)))

  def eval_batches(self, split: str, local_batch_size: int, protocol: str = "center"):
    """This process's part of `split` in batches {'image', 'label' int32, 'mask' bool}; padding rows have
    mask False and zero images; every process yields the same number of batches.

    center: image uint8 [b, crop, crop, 3], shorter side eval_resize, central crop.
    ten_crop: image uint8 [b, 10, crop, crop, 3] (order: see ten_crop)."""
    if split not in self.splits:
      raise KeyError(f"no eval split {split!r}; available: {self.splits}")
    if protocol not in PROTOCOLS:
      raise ValueError(f"unknown protocol {protocol!r}; valid: {PROTOCOLS} (and multiscale_batches)")
    tf = _tf()
    crop, size = self.crop, self.eval_resize
    if protocol == "center":
      fn, shape = (lambda img: center_crop(resize_shorter_side(img, size), crop)), self.image_shape
    else:
      fn, shape = (lambda img: ten_crop(resize_shorter_side(img, size), crop)), (10, *self.image_shape)
    ds = self._eval_dataset(split, lambda img: tf.ensure_shape(fn(img), shape))
    num_batches = -(-self._local_slots(split) // local_batch_size)
    count = 0  # the shards differ by at most one example: only the last batch can be short
    for images, labels in self._eval_stream(split, ds.batch(local_batch_size).prefetch(2)):
      yield _padded(images, labels, local_batch_size)
      count += 1
    for _ in range(num_batches - count):
      yield _padded(np.zeros((0, *shape), np.uint8), np.zeros(0, np.int32), local_batch_size)

  def multiscale_batches(self, split: str):
    """One example at a time: {'images': [uint8 [1, H_s, W_s, 3] per s in multiscale], 'label' int32 [1],
    'mask' bool [1]}, min(H_s, W_s) == s, the longer side a multiple of multiscale_round; decoded once.
    Every process yields the same number of items (padding: mask False, zero s x s images)."""
    if split not in self.splits:
      raise KeyError(f"no eval split {split!r}; available: {self.splits}")
    scales, r = self.multiscale, self.multiscale_round
    ds = self._eval_dataset(split, lambda img: tuple(resize_shorter_side(img, s, r) for s in scales))
    count = 0
    for images, label in self._eval_stream(split, ds.prefetch(2)):
      yield {"images": [x[None] for x in images], "label": np.asarray([label], np.int32), "mask": np.ones(1, bool)}
      count += 1
    for _ in range(self._local_slots(split) - count):
      yield {
          "images": [np.zeros((1, s, s, 3), np.uint8) for s in scales],
          "label": np.zeros(1, np.int32),
          "mask": np.zeros(1, bool),
      }

  # --- mean ------------------------------------------------------------------------------------------

  def _mean_cache_path(self):
    if self.source.mean_cache is None:
      return None
    return f"{self.source.mean_cache}_n{self.mean_images}_resize{self.eval_resize}_crop{self.crop}.npy"

  def _pixel_mean(self) -> np.ndarray:
    """Per-pixel mean [crop, crop, 3] of the first mean_images training images (file order: tfds shuffled
    ImageNet when preparing it; an image folder's order is a fixed permutation), shorter side eval_resize, centre
    crop. Each process averages its part, the parts are combined; for imagenet2012 the result is cached beside
    the prepared dataset."""
    import jax
    from jax.experimental import multihost_utils

    path = self._mean_cache_path()
    have = path is not None and os.path.exists(path)
    # The parts are JAX processes' parts. One process standing in for several (the tests' process_index=i of n)
    # has no others to combine its part with: it computes the whole mean, which is also what it caches.
    parts = self.process_count > 1 and jax.process_count() == self.process_count
    if parts:  # all processes must agree to skip the collective below
      have = bool(np.min(multihost_utils.process_allgather(np.int32(have))))
    if have:  # the file name holds everything the mean depends on
      return np.load(path).astype(np.float32)
    tf = _tf()
    m = min(self.mean_images, self.num_train)
    start, stop = shard_range(m, self.process_index, self.process_count) if parts else (0, m)
    total, count = np.zeros(self.image_shape, np.float64), 0
    if stop > start:
      ds = self.source.elements("train", start, stop).map(self._decoded, num_parallel_calls=tf.data.AUTOTUNE)
      ds = ds.map(
          lambda image, _: center_crop(resize_shorter_side(image, self.eval_resize), self.crop),
          num_parallel_calls=tf.data.AUTOTUNE,
      )
      stream = self._stream(
          ds.batch(256).prefetch(2).with_options(self._options()),
          "train",
          lambda: self.source.elements("train", start, stop),
      )
      for images in stream:
        total += images.sum(axis=0, dtype=np.float64)
        count += len(images)
    local = (total / max(count, 1)).astype(np.float32)
    if parts:
      means, counts = multihost_utils.process_allgather((local, np.int32(count)))
      mean = combine_means(means, counts)
    else:
      mean = local
    if path is None:
      return mean
    tmp = f"{path}.tmp{os.getpid()}"
    try:  # a read-only data_dir only loses the cache
      with open(tmp, "wb") as f:
        np.save(f, mean)
      os.replace(tmp, path)
    except OSError:
      pass
    return mean


def _padded(images, labels, size):
  n = len(labels)
  pad = size - n
  return {
      "image": np.concatenate([images, np.zeros((pad, *images.shape[1:]), np.uint8)]) if pad else images,
      "label": np.concatenate([labels.astype(np.int32), np.zeros(pad, np.int32)]),
      "mask": np.arange(size) < n,
  }


def check_config(data_config):
  """Checks the augmentation and test fields (crop, scale_min/max, eval_resize, mean, multiscale, color_pca).

  Raises:
    ConfigError: naming the field and its valid values.
  """
  d = data_config
  positive_int(d["crop"], "data.crop")
  require(
      d.crop <= d.scale_min <= d.scale_max,
      "data.scale_min",
      f"need crop <= scale_min <= scale_max (paper: 224 <= 256 <= 480), got {d.crop}, {d.scale_min}, "
      f"{d.scale_max}.",
  )
  require(d.eval_resize >= d.crop, "data.eval_resize", f"must be >= data.crop ({d.crop}), got {d.eval_resize!r}.")
  require(d.mean in ("pixel", "channel"), "data.mean", f"must be 'pixel' or 'channel', got {d.mean!r}.")
  require(
      len(d.multiscale) > 0 and all(isinstance(x, int) and x > 0 for x in d.multiscale),
      "data.multiscale",
      f"must be positive shorter sides (paper: 224, 256, 384, 480, 640), got {d.multiscale!r}.",
  )
  require(d.color_pca >= 0, "data.color_pca", f"must be >= 0 (0 = off), got {d.color_pca!r}.")


def load(data_config, *, seed, process_index=0, process_count=1) -> ImageNetDataset:
  """ImageNet as data_config describes it (fields: see configs/common.py imagenet_recipe); prepares it
  from the archives in manual_dir on first use."""
  builder = prepare(data_config.get("data_dir"), data_config.get("manual_dir"))
  source = TfdsRecords(builder, data_config)
  return ImageNetDataset(source, data_config, seed=seed, process_index=process_index, process_count=process_count)
