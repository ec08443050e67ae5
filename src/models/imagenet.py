"""The paper's ImageNet nets (Sec. 3.4, Table 1).

conv1 7x7/64 stride 2 -> 3x3 max pool stride 2 -> conv2_x..conv5_x (64, 128, 256, 512 wide; basic blocks for
18/34, bottlenecks 1x1 -> 3x3 -> 1x1 (4x) for 50/101/152; stride 2 at conv3_1, conv4_1, conv5_1) ->
global average pool -> 1000-way FC.
"""

import functools
from typing import Any, Callable, Optional, Type

import flax.linen as nn
import jax.numpy as jnp

from src.models.blocks import BasicBlock, Bottleneck, ConvBN, Stage, stage_specs

WIDTHS = (64, 128, 256, 512)
# depth -> (block type, blocks per stage), Table 1.
LAYERS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def imagenet_layers(depth: int):
  if depth not in LAYERS:
    raise ValueError(
        f"ImageNet nets of depth {depth} are not in the paper's Table 1; " f"valid depths: {sorted(LAYERS)}."
    )
  return LAYERS[depth]


class ImageNetResNet(nn.Module):
  """The ImageNet net of `depth` layers (Table 1): NHWC float inputs [N, H, W, C] -> float32 logits [N,
  num_classes]. `block_cls` (src/models/blocks.py) replaces Table 1's block for the depth (None: basic blocks for
  18/34, bottlenecks for 50/101/152)."""

  depth: int
  conv: Callable
  norm: Callable
  block_cls: Optional[Type[nn.Module]] = None
  residual: bool = True
  shortcut: str = "B"
  num_classes: int = 1000
  stride_on_3x3: bool = False
  zero_init_residual: bool = False
  scan: Any = "auto"  # see blocks.use_scan
  remat: bool = False  # see blocks.Stage
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    kind, blocks = imagenet_layers(self.depth)
    x = ConvBN(64, 7, self.conv, self.norm, strides=2, name="conv1")(x.astype(self.dtype), train)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    common = dict(
        conv=self.conv,
        norm=self.norm,
        residual=self.residual,
        shortcut=self.shortcut,
        zero_init_residual=self.zero_init_residual,
    )
    if self.block_cls is not None:
      block_cls = self.block_cls
    elif kind == "bottleneck":
      block_cls = functools.partial(Bottleneck, stride_on_3x3=self.stride_on_3x3)
    else:
      block_cls = BasicBlock
    for i, (width, n, strides) in enumerate(stage_specs(WIDTHS, blocks)):
      block = functools.partial(block_cls, filters=width, **common)
      x = Stage(block, n, strides, self.scan, self.remat, name=f"conv{i + 2}_x")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x.astype(jnp.float32))
