"""Up-front validation of a run's config: every problem is found before data loading or compilation and
reported with the field's name and its valid values. Nothing on disk is touched."""

import os

import jax

from src import models
from src import cpu
from src.data import DATASETS

PROTOCOLS = ("center", "ten_crop", "multiscale")
TRAIN_DTYPES = ("bfloat16", "float32")  # the model registry also builds float16 nets (FLOP counts), not trained


class ConfigError(ValueError):
  pass


def _check(ok, field, message):
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def _positive_int(config, field):
  value = config
  for part in field.split("."):
    value = value[part]
  _check(
      isinstance(value, int) and not isinstance(value, bool) and value > 0,
      field,
      f"must be a positive integer, got {value!r}.",
  )
  return value


def validate(config, *, device_count=None, process_count=None):
  device_count = device_count or jax.device_count()
  process_count = process_count or jax.process_count()
  m = config.model
  try:
    models.parse_name(m.name)
  except ValueError as e:
    raise ConfigError(f"config.model.name: {e}") from None
  _check(
      m.shortcut in (None,) + models.SHORTCUTS,
      "model.shortcut",
      f"must be one of {list(models.SHORTCUTS)} (or None for the paper's default), got {m.shortcut!r}.",
  )
  # float16 trains only with loss scaling (small gradients underflow to zero), which this train loop does not
  # do: refused rather than silently losing gradients. bfloat16 has float32's exponent range and needs none.
  _check(
      m.dtype != "float16",
      "model.dtype",
      "float16 is refused: without loss scaling, which this train loop does not do, small gradients underflow to "
      "zero. Use bfloat16 (float32's range in half the bits: TPUs, NVIDIA A100 and later) or float32 (GPUs "
      "without bf16 such as V100 and T4).",
  )
  _check(m.dtype in TRAIN_DTYPES, "model.dtype", f"must be one of {list(TRAIN_DTYPES)}, got {m.dtype!r}.")
  _check(config.data.name in DATASETS, "data.name", f"must be one of {list(DATASETS)}, got {config.data.name!r}.")
  imagenet = config.data.name == "imagenet2012"
  if imagenet:
    d = config.data
    _positive_int(config, "data.crop")
    _check(
        d.crop <= d.scale_min <= d.scale_max,
        "data.scale_min",
        f"need crop <= scale_min <= scale_max (paper: 224 <= 256 <= 480), got {d.crop}, {d.scale_min}, "
        f"{d.scale_max}.",
    )
    _check(d.eval_resize >= d.crop, "data.eval_resize", f"must be >= data.crop ({d.crop}), got {d.eval_resize!r}.")
    _check(d.mean in ("pixel", "channel"), "data.mean", f"must be 'pixel' or 'channel', got {d.mean!r}.")
    _check(
        len(d.multiscale) > 0 and all(isinstance(x, int) and x > 0 for x in d.multiscale),
        "data.multiscale",
        f"must be positive shorter sides (paper: 224, 256, 384, 480, 640), got {d.multiscale!r}.",
    )
    _check(d.color_pca >= 0, "data.color_pca", f"must be >= 0 (0 = off), got {d.color_pca!r}.")
  else:
    if config.data.name == "image_folder":
      d = config.data.get("dir")
      _check(
          isinstance(d, str) and d != "",
          "data.dir",
          "must be the image folder's root, laid out as <dir>/train/<class>/<image> and <dir>/test/<class>/<image> "
          f"(e.g. --config.data.dir=/data/cifar10-jpeg, or the preset argument image_dir=...), got {d!r}.",
      )
    _check(
        isinstance(config.data.val_size, int) and config.data.val_size >= 0,
        "data.val_size",
        f"must be an integer >= 0 (0 trains on the whole train split), got {config.data.val_size!r}.",
    )
  has_val = imagenet or config.data.val_size > 0
  _check(
      config.get("mode", "train") in ("train", "eval"),
      "mode",
      f"must be 'train' or 'eval' (evaluate the newest checkpoint), got {config.get('mode')!r}.",
  )
  if "eval" in config:
    e = config.eval
    _check(
        e.split in (("val",) if imagenet else ("val", "test")) and (e.split != "val" or has_val),
        "eval.split",
        f"must be a split this dataset has ({'val' if imagenet else 'test, or val with data.val_size > 0'}), "
        f"got {e.split!r}.",
    )
    valid = PROTOCOLS if imagenet else ("center",)
    _check(
        len(e.protocols) > 0 and all(p in valid for p in e.protocols),
        "eval.protocols",
        f"must be some of {list(valid)} for {config.data.name}, got {list(e.protocols)!r}.",
    )
    _check(not isinstance(e.ensemble, str), "eval.ensemble", "must be a tuple of workdirs, e.g. '(\"runs/a\",)'.")
  batch = _positive_int(config, "batch_size")
  _check(
      batch % device_count == 0,
      "batch_size",
      f"{batch} is not divisible by the {device_count} devices of this job; use a multiple of {device_count}.",
  )
  _check(batch % process_count == 0, "batch_size", f"{batch} is not divisible by the {process_count} processes.")
  eval_batch = _positive_int(config, "eval_batch_size")
  _check(
      eval_batch % device_count == 0,
      "eval_batch_size",
      f"{eval_batch} is not divisible by the {device_count} devices; use a multiple of {device_count}.",
  )
  group = m.bn_group_size
  if group:
    _check(
        isinstance(group, int) and group > 0 and batch % group == 0,
        "model.bn_group_size",
        f"must divide batch_size {batch} (the paper: 64 of 128 on CIFAR), or be 0 for synchronised BN; "
        f"got {group!r}.",
    )
    per_device = batch // device_count
    _check(
        per_device % group == 0 or group % per_device == 0,
        "model.bn_group_size",
        f"{group} neither divides nor is a multiple of the per-device batch {per_device}: BN groups would "
        "straddle devices.",
    )
  _check(
      str(m.scan).lower() in ("auto", "true", "false"),
      "model.scan",
      f"must be 'auto', 'true' or 'false', got {m.scan!r}.",
  )
  _check(
      m.get("remat", False) in (True, False),
      "model.remat",
      f"must be True or False (recompute scanned blocks in the backward pass), got {m.get('remat')!r}.",
  )
  _check(
      m.conv_impl in cpu.CONV_IMPLS,
      "model.conv_impl",
      f"must be one of {list(cpu.CONV_IMPLS)}, " f"got {m.conv_impl!r}.",
  )
  if m.conv_impl == "onednn":  # builds the kernels on first use (seconds), so a missing library fails here
    from src.cpu import onednn

    why = onednn.unavailable()
    _check(not why, "model.conv_impl", f"'onednn' cannot run here: {why}.")
  _check(m.conv_chunk >= 0, "model.conv_chunk", f"must be >= 0 (0 = the whole batch at once), got {m.conv_chunk!r}.")
  steps = _positive_int(config, "num_steps")
  limit = config.get("time_limit_minutes", 0.0)
  _check(
      isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit >= 0,
      "time_limit_minutes",
      f"must be a number of minutes >= 0 (0 = no limit), got {limit!r}.",
  )
  for field in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    _positive_int(config, field)
  if "num_seeds" in config:
    _positive_int(config, "num_seeds")
    _check(
        config.num_seeds == 1 or config.data.name != "imagenet2012",
        "num_seeds",
        f"{config.num_seeds} replicas need a dataset held in memory (CIFAR-10, image folders, mnist5k): ImageNet's "
        "streamed pipeline would read the data once per replica. Use num_seeds=1, or a sweep over seeds.",
    )
  k = _positive_int(config, "steps_per_call")
  for field in ("num_steps", "log_every", "checkpoint_every"):
    _check(config[field] % k == 0, field, f"{config[field]} must be a multiple of steps_per_call ({k}).")
  _check(
      config.eval_every % config.log_every == 0,
      "eval_every",
      f"{config.eval_every} must be a multiple of log_every ({config.log_every}).",
  )
  s = config.schedule
  _check(s.base_lr > 0, "schedule.base_lr", f"must be > 0, got {s.base_lr!r}.")
  _check(
      list(s.boundaries) == sorted(s.boundaries) and all(0 < b for b in s.boundaries),
      "schedule.boundaries",
      f"must be increasing positive step numbers, got {list(s.boundaries)!r}.",
  )
  _check(0 < s.factor <= 1, "schedule.factor", f"must be in (0, 1], got {s.factor!r}.")
  kind = s.get("kind", "step")
  _check(
      kind in ("step", "plateau"),
      "schedule.kind",
      f"must be 'step' (x factor at the boundaries) or 'plateau' (when the val error plateaus), got {kind!r}.",
  )
  if kind == "plateau":
    _check(has_val, "schedule.kind", "'plateau' watches the validation error: set data.val_size > 0.")
    _check(
        s.plateau_metric in ("val/error", "val/top5_error", "val/loss"),
        "schedule.plateau_metric",
        f"must be 'val/error', 'val/top5_error' or 'val/loss', got {s.plateau_metric!r}.",
    )
    _positive_int(config, "schedule.plateau_patience")
    _check(s.plateau_min_delta >= 0, "schedule.plateau_min_delta", f"must be >= 0, got {s.plateau_min_delta!r}.")
  _check(s.warmup_lr >= 0, "schedule.warmup_lr", f"must be >= 0 (0 = no warm-up), got {s.warmup_lr!r}.")
  _check(
      0 < s.warmup_until_error <= 1,
      "schedule.warmup_until_error",
      f"is a training error fraction in (0, 1] (paper: 0.8), got {s.warmup_until_error!r}.",
  )
  o = config.optim
  _check(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum!r}.")
  _check(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay!r}.")
  _check(
      o.momentum_form in ("caffe", "optax"),
      "optim.momentum_form",
      f"must be 'caffe' (v = m v + lr g) or 'optax' (v = m v + g; w -= lr v), got {o.momentum_form!r}.",
  )
  del steps


def check_workdir(workdir: str):
  """The workdir must be creatable and writable; checked before anything runs."""
  path = os.path.abspath(workdir)
  probe = path
  while not os.path.exists(probe):
    probe = os.path.dirname(probe)
  if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
    raise ConfigError(f"--workdir={workdir}: {probe} is not a writable directory; choose a workdir you can write to.")
