"""Model registry: a model is a name plus a few fields.

cifar_resnet{6n+2}, cifar_plain{6n+2}   CIFAR-10 nets (Sec. 4.2), option A shortcuts by default
resnet{18,34,50,101,152}, plain{...}    ImageNet nets (Table 1), option B shortcuts by default
vgg16, vgg19                            FLOP reference (Fig. 3)

  model = get_model("cifar_resnet56")
  variables = model.init(rng, images, train=False)       # {'params': ..., 'batch_stats': ...}
  logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

import re
from typing import Optional

import jax
import jax.numpy as jnp

from src.models.blocks import SHORTCUTS, BatchNorm, count_params, make_conv_norm  # noqa: F401
from src.models.cifar import CifarResNet, cifar_depth_to_n
from src.models import onednn
from src.models.conv import cpu_conv
from src.models.imagenet import LAYERS, ImageNetResNet, imagenet_layers
from src.models.vgg import CONFIGS as VGG_CONFIGS, VGG

FAMILIES = {
    # family: (pattern, input shape (H, W, C), classes, default shortcut)
    "cifar": (r"cifar_(resnet|plain)(\d+)", (32, 32, 3), 10, "A"),
    "imagenet": (r"(resnet|plain)(\d+)", (224, 224, 3), 1000, "B"),
    "vgg": (r"(vgg)(\d+)", (224, 224, 3), 1000, None),
}
CONV_IMPLS = ("auto", "xla", "cpu", "onednn")
VALID_NAMES = (
    "cifar_resnet{6n+2} (e.g. cifar_resnet20, 32, 44, 56, 110, 1202), cifar_plain{6n+2}, "
    f"resnet{{{','.join(map(str, LAYERS))}}}, plain{{{','.join(map(str, LAYERS))}}}, "
    f"vgg{{{','.join(map(str, VGG_CONFIGS))}}}"
)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_name(name: str):
  """'cifar_plain56' -> ('cifar', 'plain', 56). Raises ValueError naming the valid choices."""
  for family, (pattern, *_) in FAMILIES.items():
    m = re.fullmatch(pattern, name)
    if m:
      kind, depth = m.group(1), int(m.group(2))
      if family == "cifar":
        cifar_depth_to_n(depth)
      elif family == "imagenet":
        imagenet_layers(depth)
      elif depth not in VGG_CONFIGS:
        raise ValueError(f"Unknown VGG depth {depth} in {name!r}; valid: {sorted(VGG_CONFIGS)}.")
      return family, kind, depth
  raise ValueError(f"Unknown model {name!r}. Valid names: {VALID_NAMES}.")


def input_shape(name: str):
  return FAMILIES[parse_name(name)[0]][1]


def get_model(
    name: str,
    *,
    num_classes: Optional[int] = None,
    shortcut: Optional[str] = None,
    stride_on_3x3: bool = False,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    bn_group_size: Optional[int] = None,
    zero_init_residual: bool = False,
    scan="auto",
    remat: bool = False,
    dtype: str = "float32",
    conv_impl: str = "auto",
    conv_chunk: int = 16,
    conv_general_dilated=None,
):
  """Builds a Flax module from a registry name and the paper's knobs (see the module docstring).

  shortcut: 'A' | 'B' | 'C' (None: the paper's choice for the family). bn_group_size: examples per BN
  statistic in training (the paper's per-GPU BN); None = the whole batch. conv_impl: 'xla' (XLA's own conv
  gradients), 'cpu' (gradients XLA:CPU runs fast, kernel gradient in batch chunks of conv_chunk examples, same
  result; see src/models/conv.py), 'onednn' (float32 convs and their gradients in oneDNN, src/models/onednn.py)
  or 'auto' (on the CPU 'onednn' where oneDNN builds and the process has one device, else 'cpu'; elsewhere 'xla').
  scan: True / False / "auto" (nn.scan over the identical blocks of stages longer than 20 blocks).
  remat: recompute the scanned blocks' activations in the backward pass instead of keeping them (nn.remat).
  conv_general_dilated replaces lax.conv_general_dilated in every conv (used by the FLOP counter).
  """
  family, kind, depth = parse_name(name)
  _, _, default_classes, default_shortcut = FAMILIES[family]
  num_classes = num_classes or default_classes
  if dtype not in DTYPES:
    raise ValueError(f"Unknown dtype {dtype!r}; valid: {sorted(DTYPES)}.")
  if family == "vgg":
    return VGG(depth, num_classes=num_classes, dtype=DTYPES[dtype], conv_general_dilated=conv_general_dilated)
  shortcut = shortcut or default_shortcut
  if shortcut not in SHORTCUTS:
    raise ValueError(
        f"Unknown shortcut option {shortcut!r}; valid: {list(SHORTCUTS)} "
        "(A: zero-padded identity, B: projection where dimensions increase, C: all projections)."
    )
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f"Unknown conv_impl {conv_impl!r}; valid: {list(CONV_IMPLS)}.")
  conv_fn = conv_general_dilated
  if conv_fn is None and conv_impl == "auto" and jax.default_backend() == "cpu":
    conv_impl = "cpu" if onednn.unavailable() else "onednn"
  if conv_fn is None and conv_impl == "onednn":
    onednn.require()
    conv_fn = onednn.onednn_conv(conv_chunk, shards=jax.device_count())  # cpu_conv for what oneDNN skips
  elif conv_fn is None and conv_impl == "cpu":
    # Each chunk takes rows from every device's shard of the batch, so no device idles under SPMD.
    conv_fn = cpu_conv(conv_chunk, shards=jax.device_count())
  conv, norm = make_conv_norm(
      dtype=DTYPES[dtype],
      bn_momentum=bn_momentum,
      bn_epsilon=bn_epsilon,
      bn_group_size=bn_group_size,
      conv_general_dilated=conv_fn,
  )
  common = dict(
      conv=conv,
      norm=norm,
      residual=kind == "resnet",
      shortcut=shortcut,
      num_classes=num_classes,
      zero_init_residual=zero_init_residual,
      scan=scan,
      remat=remat,
      dtype=DTYPES[dtype],
  )
  if family == "cifar":
    return CifarResNet(depth, **common)
  return ImageNetResNet(depth, stride_on_3x3=stride_on_3x3, **common)


def model_from_config(model_config, num_classes: Optional[int] = None):
  """get_model from a config's `model` block (see configs/)."""
  fields = dict(model_config)
  name = fields.pop("name")
  configured = fields.pop("num_classes", None)
  return get_model(name, num_classes=num_classes or configured, **fields)
