"""The paper's building blocks (Sec. 3 and Fig. 2, 5): conv -> BN -> ReLU, the shortcut added before the
block's last ReLU, shortcut options A/B/C, and a plain counterpart that is the same block with no shortcut; and
the pre-activation units of the follow-up paper (He et al. 2016, "Identity Mappings in Deep Residual Networks").

Every 3x3 (and bottleneck 1x1) response after BN and before the ReLU/addition is `sow`n into the
'intermediates' collection under the name 'response': that is what Fig. 7 plots. A pre-activation unit has no
BN between a conv and the addition, so there the response is each conv's output (the residual function's own
output for the unit's last conv).

A block class is what a net is built from (`CifarResNet(block_cls=...)`): a subclass of `Block`, whose fields and
class attributes the nets rely on.
"""

import functools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from src.errors import require

SHORTCUTS = ("A", "B", "C")

# He et al. 2015 ("MSRA") init, std = sqrt(2 / fan_in): Caffe's MSRAFiller default, which the paper used.
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def batch_statistics_norm(rows, scale, bias, epsilon):
  """Training-mode BN (Ioffe & Szegedy 2015, Alg. 1) of `rows`, float32 (groups, rows, C): each group normalised
  by its own mean and (biased) variance, then scaled and shifted. Returns (y, mean, var), the statistics (groups, C).
  The variance is two-pass (centred first): stable for activations far from zero."""
  mean = rows.mean(axis=1)
  centred = rows - mean[:, None]
  var = jnp.square(centred).mean(axis=1)
  return centred * (jax.lax.rsqrt(var + epsilon) * scale)[:, None] + bias, mean, var


class BatchNorm(nn.Module):
  """BatchNorm whose training statistics are taken over groups of `group_size` examples.

  The paper computes BN statistics per GPU (64 images on CIFAR, 32 on ImageNet). Grouping the batch
  reproduces exactly that, independent of how many devices run the job: with the batch sharded across
  devices in order, each group lies on one device and XLA needs no communication for it. group_size=None
  (or >= the batch) gives statistics over the whole (global) batch, i.e. synchronised BN.
  Running averages are the mean over groups. Statistics are computed in float32 whatever the dtype.

  `normalize` computes training-mode BN, (rows, scale, bias, epsilon) -> (y, mean, var) as batch_statistics_norm:
  the same function with a faster gradient may be injected (src/cpu/batchnorm.py does on the CPU).
  """

  momentum: float = 0.9
  epsilon: float = 1e-5
  group_size: Optional[int] = None
  scale_init: Callable = nn.initializers.ones
  dtype: Any = jnp.float32
  normalize: Callable = batch_statistics_norm

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    scale = self.param("scale", self.scale_init, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    xf = x.astype(jnp.float32)
    if train:
      b = x.shape[0]
      g = b if not self.group_size or self.group_size >= b else self.group_size
      if b % g:
        raise ValueError(f"BatchNorm: batch {b} is not divisible by bn_group_size {g}")
      y, mean, var = self.normalize(xf.reshape(b // g, -1, c), scale, bias, self.epsilon)
      if not self.is_initializing():
        m, mean, var = self.momentum, jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        ra_mean.value = m * ra_mean.value + (1 - m) * mean.mean(0)
        ra_var.value = m * ra_var.value + (1 - m) * var.mean(0)
      return y.reshape(x.shape).astype(self.dtype)
    y = (xf - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


def _pad(k):
  # Caffe/Torch style symmetric padding k//2: with stride 2 on even inputs, 'SAME' would pad (0, 1) instead.
  return [(k // 2, k // 2)] * 2


class ConvBN(nn.Module):
  """k x k conv (no bias: BN follows) -> BN; the response is sown for Fig. 7."""

  filters: int
  kernel: int
  conv: Callable
  norm: Callable
  strides: int = 1
  scale_init: Optional[Callable] = None

  @nn.compact
  def __call__(self, x, train):
    x = self.conv(
        self.filters, (self.kernel, self.kernel), (self.strides, self.strides), padding=_pad(self.kernel), name="conv"
    )(x)
    norm = self.norm if self.scale_init is None else functools.partial(self.norm, scale_init=self.scale_init)
    x = norm(name="bn")(x, train)
    self.sow("intermediates", "response", x)
    return x


def shortcut(x, filters: int, strides: int, option: str, conv, norm, train):
  """The identity branch (eq. 1) or, where the options ask for it, the projection W_s x (eq. 2): conv -> BN, or
  with norm=None the 1x1 conv alone (the pre-activation units, as in the follow-up paper's code)."""
  needs_change = strides != 1 or x.shape[-1] != filters
  if option == "C" or (option == "B" and needs_change):
    if norm is None:
      return conv(filters, (1, 1), (strides, strides), padding=_pad(1), name="projection")(x)
    return ConvBN(filters, 1, conv, norm, strides, name="projection")(x, train)
  if not needs_change:
    return x
  # Option A: parameter-free. Subsample by the stride, pad the new channels with zeros.
  x = x[:, ::strides, ::strides, :]
  return jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, filters - x.shape[-1])])


def block_class(block):
  """The Block subclass of `block`, a class or a functools.partial of one."""
  return getattr(block, "func", block)


class Block(nn.Module):
  """What every block class has, and what the nets and Stage rely on: the width `filters`, the conv and BN
  constructors, the stride of its first layer, residual (False: the plain counterpart), the shortcut option and
  zero_init_residual; class attributes `expansion` (output width / filters), `layers` (weight layers) and
  `preactivation` (the net then has a stem of one conv and a final BN -> ReLU). Input and output NHWC."""

  filters: int
  conv: Callable
  norm: Callable
  strides: int = 1
  residual: bool = True
  shortcut: str = "A"
  zero_init_residual: bool = False
  expansion = 1
  layers = 2
  preactivation = False


class BasicBlock(Block):
  """Two 3x3 convs (Fig. 5 left). residual=False is the plain counterpart."""

  @nn.compact
  def __call__(self, x, train):
    last_init = nn.initializers.zeros if self.zero_init_residual else None
    y = nn.relu(ConvBN(self.filters, 3, self.conv, self.norm, self.strides, name="conv1")(x, train))
    y = ConvBN(self.filters, 3, self.conv, self.norm, scale_init=last_init, name="conv2")(y, train)
    if self.residual:
      y = y + shortcut(x, self.filters, self.strides, self.shortcut, self.conv, self.norm, train)
    return nn.relu(y)


class Bottleneck(Block):
  """1x1 (w) -> 3x3 (w) -> 1x1 (4w) (Fig. 5 right). The paper (v1) strides the first 1x1;
  stride_on_3x3=True gives the later "v1.5" variant."""

  shortcut: str = "B"
  stride_on_3x3: bool = False
  expansion = 4
  layers = 3

  @nn.compact
  def __call__(self, x, train):
    s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
    last_init = nn.initializers.zeros if self.zero_init_residual else None
    y = nn.relu(ConvBN(self.filters, 1, self.conv, self.norm, s1, name="conv1")(x, train))
    y = nn.relu(ConvBN(self.filters, 3, self.conv, self.norm, s3, name="conv2")(y, train))
    y = ConvBN(4 * self.filters, 1, self.conv, self.norm, scale_init=last_init, name="conv3")(y, train)
    if self.residual:
      y = y + shortcut(x, 4 * self.filters, self.strides, self.shortcut, self.conv, self.norm, train)
    return nn.relu(y)


class BNConv(nn.Module):
  """BN -> ReLU -> k x k conv, the layer of a pre-activation unit; returns (the activated input, the conv's
  output) and sows the output for Fig. 7."""

  filters: int
  kernel: int
  conv: Callable
  norm: Callable
  strides: int = 1

  @nn.compact
  def __call__(self, x, train):
    a = nn.relu(self.norm(name="bn")(x, train))
    y = self.conv(
        self.filters, (self.kernel, self.kernel), (self.strides, self.strides), padding=_pad(self.kernel), name="conv"
    )(a)
    self.sow("intermediates", "response", y)
    return a, y


class _PreAct(Block):
  """The shared part of the pre-activation units (He et al. 2016, Identity Mappings, Fig. 4(e)): the residual
  function is a chain of BNConv layers, and the sum leaves the unit with no ReLU after it.

  `shared_preact` (the first unit of each stage; set by Stage): the shortcut takes the pre-activated input too,
  as the paper does after conv1 ("before splitting into two paths") and its code (fb.resnet.torch's preresnet)
  wherever a stage begins; in the other units it takes the unit's input as it is.
  """

  shared_preact: bool = False
  preactivation = True

  def layers_spec(self):  # (filters, kernel, stride) of each layer of the residual function, in order
    raise NotImplementedError

  @nn.compact
  def __call__(self, x, train):
    if not self.residual or self.zero_init_residual:
      raise ValueError("pre-activation units are residual, and zero_init_residual is not defined for them.")
    y = x
    for i, (filters, kernel, stride) in enumerate(self.layers_spec()):
      a, y = BNConv(filters, kernel, self.conv, self.norm, stride, name=f"conv{i + 1}")(y, train)
      preact = a if i == 0 else preact
    source = preact if self.shared_preact else x
    return y + shortcut(source, self.expansion * self.filters, self.strides, self.shortcut, self.conv, None, train)


class PreActBasicBlock(_PreAct):
  """Two 3x3 convs, each after BN -> ReLU (Identity Mappings, Fig. 4(e)); CIFAR ResNet-110 of that paper."""

  expansion = 1
  layers = 2

  def layers_spec(self):
    return [(self.filters, 3, self.strides), (self.filters, 3, 1)]


class PreActBottleneck(_PreAct):
  """1x1 (w) -> 3x3 (w) -> 1x1 (4w), each after BN -> ReLU; the stride on the 3x3, as the follow-up paper's code
  (fb.resnet.torch) has it (stride_on_3x3=False moves it to the first 1x1). CIFAR ResNet-164 and -1001."""

  stride_on_3x3: bool = True
  expansion = 4
  layers = 3

  def layers_spec(self):
    s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
    return [(self.filters, 1, s1), (self.filters, 3, s3), (4 * self.filters, 1, 1)]


class _ScanBody(nn.Module):
  """Adapts a block to nn.scan's (carry, x) -> (carry, y) signature."""

  block: Callable
  train: bool

  @nn.compact
  def __call__(self, x, _):
    return self.block(name="block")(x, self.train), None


SCAN_AUTO_MIN_BLOCKS = 20


def check_scan(scan):
  """Checks a `scan` setting: True, False, or "auto", "true" or "false" in any case (configs hold a string).

  Raises:
    ConfigError (a ValueError): naming config.model.scan and its valid values.
  """
  require(
      str(scan).lower() in ("auto", "true", "false"), "model.scan", f"must be 'auto', 'true' or 'false', got {scan!r}."
  )


def use_scan(scan, num_blocks: int) -> bool:
  """scan=True/False, or "auto": scan only stages of more than 20 blocks (ResNet-101/152/1202).
  Scanning keeps compile time flat in depth, but XLA:CPU runs the scanned step about 10x slower
  (measured: ResNet-20 batch 128, 19 vs 240 img/s), so shallower nets are unrolled. A string that is none of
  these raises ConfigError (check_scan)."""
  if isinstance(scan, str):  # configs hold a string: "auto", "true" or "false"
    check_scan(scan)
    if scan.lower() == "auto":
      return num_blocks > SCAN_AUTO_MIN_BLOCKS
    return scan.lower() == "true"
  return bool(scan)


class Stage(nn.Module):
  """`num_blocks` blocks of one width; the first may downsample. With scan, the identical blocks
  2..n run as one `nn.scan` (stacked params, names blocks/block/...), so compile time does not grow
  with depth; unrolled, they are block1..block{n-1}. remat: the scanned blocks keep only their input for the
  backward pass and recompute the rest (`nn.remat`): same maths and parameters, less memory, about one more
  forward pass of compute (ResNet-1202 at batch 128: README, Models)."""

  block: Callable  # functools.partial of BasicBlock/Bottleneck with everything but `strides`
  num_blocks: int
  strides: int
  scan: Any = "auto"
  remat: bool = False

  @nn.compact
  def __call__(self, x, train):
    first = {"shared_preact": True} if block_class(self.block).preactivation else {}
    x = self.block(strides=self.strides, name="block0", **first)(x, train)
    rest = self.num_blocks - 1
    if rest == 0:
      return x
    if use_scan(self.scan, self.num_blocks):
      # prevent_cse=False: inside a scan, XLA cannot merge the recomputation into the forward pass anyway.
      body = nn.remat(_ScanBody, prevent_cse=False) if self.remat else _ScanBody
      scanned = nn.scan(
          body,
          variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
          split_rngs={"params": True},
          length=rest,
      )
      x, _ = scanned(self.block, train, name="blocks")(x, None)
      return x
    for i in range(1, self.num_blocks):
      x = self.block(name=f"block{i}")(x, train)
    return x


def make_conv_norm(*, dtype, bn_momentum, bn_epsilon, bn_group_size, conv_general_dilated=None, bn_normalize=None):
  """The conv and BN constructors every model shares (He init, no conv bias, BN in float32): the models' two
  injection points. `conv_general_dilated` replaces lax.conv_general_dilated in every conv and `bn_normalize` the
  training-mode BN function (None: the plain ones). Both must compute the same function: src/cpu supplies faster
  ones for the CPU, and tests/test_parity.py holds every combination to an independent float64 reference."""
  conv_extra = {} if conv_general_dilated is None else {"conv_general_dilated": conv_general_dilated}
  norm_extra = {} if bn_normalize is None else {"normalize": bn_normalize}
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=he_normal, dtype=dtype, **conv_extra)
  norm = functools.partial(
      BatchNorm, momentum=bn_momentum, epsilon=bn_epsilon, group_size=bn_group_size, dtype=dtype, **norm_extra
  )
  return conv, norm


def count_params(params) -> int:
  return sum(int(p.size) for p in jax.tree.leaves(params))


def stage_specs(widths: Sequence[int], blocks: Sequence[int]):
  """(width, num_blocks, stride) per stage: the first stage keeps the resolution, the others halve it."""
  return [(w, n, 1 if i == 0 else 2) for i, (w, n) in enumerate(zip(widths, blocks))]
