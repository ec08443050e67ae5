"""The paper's CIFAR-10 nets (Sec. 4.2): 6n+2 layers.

3x3 conv (16) on 32x32 -> three stages of 2n 3x3 convs with {16, 32, 64} filters on {32, 16, 8} maps
(downsampling by stride-2 convs) -> global average pool -> 10-way FC. Option A shortcuts in the paper.
"""

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from src.models.blocks import BasicBlock, ConvBN, Stage, stage_specs

WIDTHS = (16, 32, 64)


def cifar_depth_to_n(depth: int) -> int:
  if depth < 8 or (depth - 2) % 6:
    valid = ", ".join(str(6 * n + 2) for n in (1, 2, 3, 5, 7, 9, 18, 200))
    raise ValueError(
        f"CIFAR nets have 6n+2 layers; got depth {depth}. Valid depths: {valid}, ... " "(any 6n+2 with n >= 1)."
    )
  return (depth - 2) // 6


class CifarResNet(nn.Module):
  depth: int
  conv: Callable
  norm: Callable
  residual: bool = True
  shortcut: str = "A"
  num_classes: int = 10
  zero_init_residual: bool = False
  scan: Any = "auto"  # see blocks.use_scan
  remat: bool = False  # see blocks.Stage
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    n = cifar_depth_to_n(self.depth)
    x = nn.relu(ConvBN(WIDTHS[0], 3, self.conv, self.norm, name="conv1")(x.astype(self.dtype), train))
    for i, (width, blocks, strides) in enumerate(stage_specs(WIDTHS, [n] * 3)):
      block = functools.partial(
          BasicBlock,
          filters=width,
          conv=self.conv,
          norm=self.norm,
          residual=self.residual,
          shortcut=self.shortcut,
          zero_init_residual=self.zero_init_residual,
      )
      x = Stage(block, blocks, strides, self.scan, self.remat, name=f"stage{i + 1}")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=jnp.float32, name="fc")(x.astype(jnp.float32))
