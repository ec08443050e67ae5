"""Model registry: a model is a name plus a few fields.

cifar_resnet{6n+2}, cifar_plain{6n+2}   CIFAR-10 nets (Sec. 4.2), option A shortcuts by default
cifar_preact_resnet{d}                  pre-activation CIFAR nets (He et al. 2016, Identity Mappings): basic
                                        units below 164 layers (6n+2: 110), bottlenecks from 164 on (9n+2: 164,
                                        1001), as in that paper; option A by default, B for bottlenecks
resnet{18,34,50,101,152}, plain{...}    ImageNet nets (Table 1), option B shortcuts by default
vgg16, vgg19                            FLOP reference (Fig. 3)

  model = get_model("cifar_resnet56")
  variables = model.init(rng, images, train=False)       # {'params': ..., 'batch_stats': ...}
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

import functools
import re
from typing import Optional

import jax.numpy as jnp

from src.errors import ConfigError, require
from src.models.blocks import SHORTCUTS, BatchNorm, count_params, make_conv_norm  # noqa: F401
from src.models.blocks import BasicBlock, PreActBasicBlock, PreActBottleneck, check_scan
from src.models.cifar import CifarResNet, cifar_depth_to_n
from src.models.imagenet import LAYERS, ImageNetResNet, imagenet_layers
from src.models.vgg import CONFIGS as VGG_CONFIGS, VGG

FAMILIES = {
    # family: (pattern, input shape (H, W, C), classes, default shortcut)
    "cifar": (r"cifar_(resnet|plain|preact_resnet)(\d+)", (32, 32, 3), 10, "A"),
    "imagenet": (r"(resnet|plain)(\d+)", (224, 224, 3), 1000, "B"),
    "vgg": (r"(vgg)(\d+)", (224, 224, 3), 1000, None),
}
VALID_NAMES = (
    "cifar_resnet{6n+2} (e.g. cifar_resnet20, 32, 44, 56, 110, 1202), cifar_plain{6n+2}, "
    "cifar_preact_resnet{6n+2 below 164, 9n+2 from 164} (e.g. 110, 164, 1001), "
    f"resnet{{{','.join(map(str, LAYERS))}}}, plain{{{','.join(map(str, LAYERS))}}}, "
    f"vgg{{{','.join(map(str, VGG_CONFIGS))}}}"
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
TRAIN_DTYPES = ("bfloat16", "float32")  # float16 nets are built (FLOP counts), not trained: see check_config


def parse_name(name: str):
  """'cifar_plain56' -> ('cifar', 'plain', 56). Raises ValueError naming the valid choices."""
  for family, (pattern, *_) in FAMILIES.items():
    m = re.fullmatch(pattern, name)
    if m:
      kind, depth = m.group(1), int(m.group(2))
      if family == "cifar":
        cifar_depth_to_n(depth, cifar_block(kind, depth).layers)
      elif family == "imagenet":
        imagenet_layers(depth)
      elif depth not in VGG_CONFIGS:
        raise ValueError(f"Unknown VGG depth {depth} in {name!r}; valid: {sorted(VGG_CONFIGS)}.")
      return family, kind, depth
  raise ValueError(f"Unknown model {name!r}. Valid names: {VALID_NAMES}.")


PREACT_BOTTLENECK_FROM = 164  # Identity Mappings: ResNet-110 of basic units, ResNet-164 and -1001 of bottlenecks


def cifar_block(kind: str, depth: int):
  """The block class of a CIFAR net: the paper's basic block (resnet, plain), or the follow-up paper's
  pre-activation units, bottlenecks from 164 layers on."""
  if kind != "preact_resnet":
    return BasicBlock
  return PreActBottleneck if depth >= PREACT_BOTTLENECK_FROM else PreActBasicBlock


def input_shape(name: str):
  return FAMILIES[parse_name(name)[0]][1]


def get_model(
    name: str,
    *,
    num_classes: Optional[int] = None,
    shortcut: Optional[str] = None,
    stride_on_3x3: Optional[bool] = None,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    bn_group_size: Optional[int] = None,
    zero_init_residual: bool = False,
    scan="auto",
    remat: bool = False,
    dtype: str = "float32",
    conv_general_dilated=None,
    bn_normalize=None,
):
  """Builds a Flax module from a registry name and the paper's knobs (see the module docstring).

  shortcut: 'A' | 'B' | 'C' (None: the paper's choice for the family). stride_on_3x3: where a bottleneck strides
  (None: the paper's first 1x1 on ImageNet, the 3x3 in the pre-activation CIFAR nets). bn_group_size: examples per BN
  statistic in training (the paper's per-GPU BN); None = the whole batch.
  scan: True / False / "auto" (nn.scan over the identical blocks of stages longer than 20 blocks).
  remat: recompute the scanned blocks' activations in the backward pass instead of keeping them (nn.remat).
  The injection points (blocks.make_conv_norm): conv_general_dilated replaces lax.conv_general_dilated in every
  conv, bn_normalize BN's training-mode function; None keeps the plain ones. src.cpu.model_kernels() gives the
  CPU's faster equivalents, and the FLOP counter injects a conv that counts padding.
  Raises ValueError naming the valid choices for an unknown name, shortcut or dtype.
  """
  family, kind, depth = parse_name(name)
  _, _, default_classes, default_shortcut = FAMILIES[family]
  num_classes = num_classes or default_classes
  if dtype not in DTYPES:
    raise ValueError(f"Unknown dtype {dtype!r}; valid: {sorted(DTYPES)}.")
  if family == "vgg":
    return VGG(depth, num_classes=num_classes, dtype=DTYPES[dtype], conv_general_dilated=conv_general_dilated)
  if family == "cifar" and cifar_block(kind, depth) is PreActBottleneck:
    default_shortcut = "B"  # a 16 -> 64 first unit: projections, as in the follow-up paper's code
  shortcut = shortcut or default_shortcut
  if shortcut not in SHORTCUTS:
    raise ValueError(
        f"Unknown shortcut option {shortcut!r}; valid: {list(SHORTCUTS)} "
        "(A: zero-padded identity, B: projection where dimensions increase, C: all projections)."
    )
  conv, norm = make_conv_norm(
      dtype=DTYPES[dtype],
      bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon,
      bn_group_size=bn_group_size,
      conv_general_dilated=conv_general_dilated,
      bn_normalize=bn_normalize,
  )
  common = dict(
      conv=conv,
      norm=norm,
      residual=kind != "plain",
      shortcut=shortcut,
      num_classes=num_classes,
      zero_init_residual=zero_init_residual,
      scan=scan,
      remat=remat,
      dtype=DTYPES[dtype],
  )
  if family == "cifar":
    block = cifar_block(kind, depth)
    if block is PreActBottleneck and stride_on_3x3 is not None:
      block = functools.partial(block, stride_on_3x3=stride_on_3x3)
    return CifarResNet(depth, block_cls=block, **common)
  return ImageNetResNet(depth, stride_on_3x3=bool(stride_on_3x3), **common)


def model_from_config(model_config, num_classes: Optional[int] = None, **execution):
  """get_model from a config's `model` block (see configs/); `execution`: how it computes (remat, and the kernels
  src.cpu.model_kernels injects)."""
  # Workdirs written before the execution block existed hold these in `model`: how it computes, not which net.
  fields = {k: v for k, v in dict(model_config).items() if k not in ("conv_impl", "conv_chunk", "remat")}
  name = fields.pop("name")
  configured = fields.pop("num_classes", None)
  return get_model(name, num_classes=num_classes or configured, **fields, **execution)


def check_config(model_config):
  """Checks which net a config's `model` block names, for training: name, shortcut, dtype (float16 refused). How
  it is computed is check_computation's.

  Raises:
    ConfigError: naming the field and its valid values.
  """
  m = model_config
  try:
    parse_name(m.name)
  except ValueError as e:
    raise ConfigError(f"config.model.name: {e}") from None
  require(
      m.shortcut in (None,) + SHORTCUTS,
      "model.shortcut",
      f"must be one of {list(SHORTCUTS)} (or None for the paper's default), got {m.shortcut!r}.",
  )
  # float16 trains only with loss scaling (small gradients underflow to zero), which this train loop does not
  # do: refused rather than silently losing gradients. bfloat16 has float32's exponent range and needs none.
  require(
      m.dtype != "float16",
      "model.dtype",
      "float16 is refused: without loss scaling, which this train loop does not do, small gradients underflow to "
      "zero. Use bfloat16 (float32's range in half the bits: TPUs, NVIDIA A100 and later) or float32 (GPUs "
      "without bf16 such as V100 and T4).",
  )
  require(m.dtype in TRAIN_DTYPES, "model.dtype", f"must be one of {list(TRAIN_DTYPES)}, got {m.dtype!r}.")


def check_computation(model_config, execution, batch_size: int, device_count: Optional[int]):
  """Checks how a config's `model` block computes its net on a (checked) batch size over `device_count` devices:
  bn_group_size (0 or None: synchronised BN; else a group divides the batch, and no group straddles two devices;
  device_count None: no train batch is split, as in mode=eval, so only the first), scan, and the `execution`
  block's remat.

  Raises:
    ConfigError: naming the field and its valid values.
  """
  m = model_config
  group = m.bn_group_size
  if group:
    _check_bn_groups(group, batch_size, device_count)
  check_scan(m.scan)
  require(
      execution.remat in (True, False),
      "execution.remat",
      f"must be True or False (recompute scanned blocks in the backward pass), got {execution.remat!r}.",
  )


def _check_bn_groups(group, batch_size: int, device_count: int):
  require(
      isinstance(group, int) and group > 0 and batch_size % group == 0,
      "model.bn_group_size",
      f"must divide batch_size {batch_size} (the paper: 64 of 128 on CIFAR), or be 0 for synchronised BN; "
      f"got {group!r}.",
  )
  if device_count is None:
    return
  per_device = batch_size // device_count
  require(
      per_device % group == 0 or group % per_device == 0,
      "model.bn_group_size",
      f"{group} neither divides nor is a multiple of the per-device batch {per_device}: BN groups would "
      "straddle devices.",
  )
