"""The paper's CIFAR-10 nets (Sec. 4.2): 6n+2 layers.

3x3 conv (16) on 32x32 -> three stages of 2n 3x3 convs with {16, 32, 64} filters on {32, 16, 8} maps
(downsampling by stride-2 convs) -> global average pool -> 10-way FC. Option A shortcuts in the paper.

The block is a field (`block_cls`): bottleneck blocks give 9n+2 layers (stages of n blocks, {64, 128, 256} wide at
their outputs), and pre-activation blocks (the follow-up paper, Identity Mappings) a stem of one conv and a final
BN -> ReLU before the pool.
"""

import functools
from typing import Any, Callable, Type

import flax.linen as nn
import jax.numpy as jnp

from src.models.blocks import BasicBlock, ConvBN, Stage, block_class, stage_specs

WIDTHS = (16, 32, 64)


def cifar_depth_to_n(depth: int, layers_per_block: int = 2) -> int:
  """Blocks per stage n of a CIFAR net of `depth` layers: depth = 3 n layers_per_block + 2 (6n+2 with basic blocks,
  9n+2 with bottlenecks). Raises ValueError naming valid depths."""
  per_stage = 3 * layers_per_block
  if depth < per_stage + 2 or (depth - 2) % per_stage:
    examples = (1, 2, 3, 5, 7, 9, 18, 200) if layers_per_block == 2 else (1, 2, 12, 18, 111)
    valid = ", ".join(str(per_stage * n + 2) for n in examples)
    raise ValueError(
        f"CIFAR nets of {'basic' if layers_per_block == 2 else 'bottleneck'} blocks have {per_stage}n+2 layers; "
        f"got depth {depth}. Valid depths: {valid}, ... (any {per_stage}n+2 with n >= 1)."
    )
  return (depth - 2) // per_stage


class CifarResNet(nn.Module):
  """The CIFAR-10 net of `depth` layers built from `block_cls` (src/models/blocks.py): NHWC float inputs [N, 32, 32,
  C] -> float32 logits [N, num_classes]."""

  depth: int
  conv: Callable
  norm: Callable
  block_cls: Type[nn.Module] = BasicBlock
  residual: bool = True
  shortcut: str = "A"
  num_classes: int = 10
  zero_init_residual: bool = False
  scan: Any = "auto"  # see blocks.use_scan
  remat: bool = False  # see blocks.Stage
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    block_cls = block_class(self.block_cls)
    n = cifar_depth_to_n(self.depth, block_cls.layers)
    x = x.astype(self.dtype)
    if block_cls.preactivation:  # conv1 alone: its BN -> ReLU is the first unit's pre-activation
      x = self.conv(WIDTHS[0], (3, 3), padding=[(1, 1), (1, 1)], name="conv1")(x)
    else:
      x = nn.relu(ConvBN(WIDTHS[0], 3, self.conv, self.norm, name="conv1")(x, train))
    for i, (width, blocks, strides) in enumerate(stage_specs(WIDTHS, [n] * 3)):
      block = functools.partial(
          self.block_cls,
          filters=width,
          conv=self.conv,
          norm=self.norm,
          residual=self.residual,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
      )
      x = Stage(block, blocks, strides, self.scan, self.remat, name=f"stage{i + 1}")(x, train)
    if block_cls.preactivation:  # the last unit's sum has had no activation (Identity Mappings, Sec. 4)
      x = nn.relu(self.norm(name="final_bn")(x, train))
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x.astype(jnp.float32))
