"""VGG-16/19 (Simonyan & Zisserman), the paper's FLOP reference in Fig. 3 (19.6e9 / 15.3e9 multiply-adds)."""

from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from src.models.blocks import he_normal

CONFIGS = {
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
WIDTHS = (64, 128, 256, 512, 512)


class VGG(nn.Module):
  depth: int
  num_classes: int = 1000
  dtype: Any = jnp.float32
  conv_general_dilated: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.depth not in CONFIGS:
      raise ValueError(f"VGG depth {self.depth} unknown; valid depths: {sorted(CONFIGS)}.")
    x = x.astype(self.dtype)
    extra = {} if self.conv_general_dilated is None else {"conv_general_dilated": self.conv_general_dilated}
    for width, n in zip(WIDTHS, CONFIGS[self.depth]):
      for _ in range(n):
        x = nn.relu(nn.Conv(width, (3, 3), padding=[(1, 1)] * 2, kernel_init=he_normal, dtype=self.dtype, **extra)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    for width in (4096, 4096):
      x = nn.relu(nn.Dense(width, dtype=self.dtype)(x))  # dropout omitted: it changes no FLOP or shape
    return nn.Dense(self.num_classes, dtype=jnp.float32)(x.astype(jnp.float32))
