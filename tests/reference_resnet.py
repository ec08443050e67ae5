"""An independent float64 reference of the paper's nets and of one SGD step, for the whole-model parity tests.

It shares no code with src/models, src/train or src/optim: every layer is written here from its definition, with
`lax.conv_general_dilated`, the textbook BatchNorm formula (statistics per group of examples, biased variance),
the shortcut options A/B/C of Sec. 3.3, the pre-activation units of He et al. 2016 (Identity Mappings: BN -> ReLU ->
conv, no ReLU after the sum, BN -> ReLU before the pool), softmax cross-entropy, and Caffe's SGD
(v = m v + lr (g + wd w); w -= v).
Only the parameter names are the project's, so that its weights can be copied in.

    with jax.enable_x64(True):
      loss, grads, new_stats = loss_and_grads(arch, params64, stats64, images64, labels)
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# Table 1: blocks per stage of the ImageNet nets, and Sec. 4.2's CIFAR widths.
IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)


@dataclasses.dataclass(frozen=True)
class Arch:
  """What the reference builds: family 'cifar' | 'imagenet', depth, residual (False: plain), shortcut 'A' | 'B' | 'C',
  group (examples per BN statistic; None: the whole batch), BN momentum and epsilon, preact (CIFAR: the
  pre-activation units; bottlenecks, strided on the 3x3, from 164 layers on)."""

  family: str
  depth: int
  residual: bool = True
  shortcut: str = "A"
  group: int | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  preact: bool = False


def conv(x, w, stride, pad):
  return lax.conv_general_dilated(
      x,
      w,
      (stride, stride),
      [(pad, pad)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=lax.Precision.HIGHEST,
  )


def batch_norm(x, p, stats, arch, train, new_stats):
  """Textbook BN (Ioffe & Szegedy 2015, Alg. 1) per group of `arch.group` examples; running averages of the group
  statistics' mean. Appends the new running statistics to `new_stats` (train mode)."""
  if not train:
    return (x - stats["mean"]) / jnp.sqrt(stats["var"] + arch.epsilon) * p["scale"] + p["bias"]
  n = x.shape[0]
  g = n if not arch.group or arch.group >= n else arch.group
  xg = x.reshape((n // g, g) + x.shape[1:])
  mean = xg.mean(axis=(1, 2, 3), keepdims=True)
  var = ((xg - mean) ** 2).mean(axis=(1, 2, 3), keepdims=True)
  y = ((xg - mean) / jnp.sqrt(var + arch.epsilon)).reshape(x.shape) * p["scale"] + p["bias"]
  m = arch.momentum
  new_stats.append(
      {
          "mean": m * stats["mean"] + (1 - m) * mean.mean(axis=(0, 1, 2, 3)),
          "var": m * stats["var"] + (1 - m) * var.mean(axis=(0, 1, 2, 3)),
      }
  )
  return y


class Net:
  """The forward pass over the project's parameter names; collects the new BN statistics in call order.

  `decisions` (optional): the activation decisions of another run of the same net, {path: bool mask} for each ReLU
  (True where its input is > 0) and {("pool",): int index of the max in each 3x3 window} for the ImageNet stem's max
  pool. The ReLU's gradient is a step at 0: where a pre-activation lies within float32 rounding of 0, float32 and
  float64 may take different sides, and each such flip moves a gradient by up to about 1e-2 of its largest entry
  (tests/test_parity.py measures this). Given the float32 run's decisions, the float64 pass computes the gradient of
  the same piecewise-linear function, and the comparison measures rounding alone. Without them, its own are used.
  """

  def __init__(self, arch, params, stats, train, decisions=None):
    self.arch, self.params, self.stats, self.train = arch, params, stats, train
    self.decisions = decisions
    self.relu_inputs = {}  # path -> the input of each ReLU (its decision is > 0)
    self.new_stats = {}
    self.responses = {}  # path -> the response after BN, before the ReLU or addition (what Fig. 7 plots)

  def conv_bn(self, x, path, stride, pad):
    p, s = _get(self.params, path), _get(self.stats, path)
    y = conv(x, p["conv"]["kernel"], stride, pad)
    out = []
    y = batch_norm(y, p["bn"], s["bn"], self.arch, self.train, out)
    if out:
      self.new_stats[path + ("bn",)] = out[0]
    self.responses[path] = y
    return y

  def relu(self, z, path):
    self.relu_inputs[path] = z
    if self.decisions is None:
      return jax.nn.relu(z)
    return jnp.where(self.decisions[path], z, 0.0)

  def max_pool(self, x):
    """3x3 max pool, stride 2, padding 1 (the ImageNet stem), as a choice among the 9 shifted views."""
    views = pool_views(x)
    self.relu_inputs[("pool",)] = views
    index = jnp.argmax(views, axis=0) if self.decisions is None else self.decisions[("pool",)]
    return jnp.take_along_axis(views, index[None], axis=0)[0]

  def shortcut(self, x, path, width, stride):
    option, change = self.arch.shortcut, stride != 1 or x.shape[-1] != width
    if option == "C" or (option == "B" and change):
      return self.conv_bn(x, path + ("projection",), stride, 0)
    if not change:
      return x
    x = x[:, ::stride, ::stride, :]  # option A: subsample, zero-pad the new channels
    return jnp.pad(x, [(0, 0), (0, 0), (0, 0), (0, width - x.shape[-1])])

  def basic(self, x, path, width, stride):
    y = self.relu(self.conv_bn(x, path + ("conv1",), stride, 1), path + ("conv1",))
    y = self.conv_bn(y, path + ("conv2",), 1, 1)
    if self.arch.residual:
      y = y + self.shortcut(x, path, width, stride)
    return self.relu(y, path)

  def bottleneck(self, x, path, width, stride):
    # The paper's v1: the stride on the first 1x1.
    y = self.relu(self.conv_bn(x, path + ("conv1",), stride, 0), path + ("conv1",))
    y = self.relu(self.conv_bn(y, path + ("conv2",), 1, 1), path + ("conv2",))
    y = self.conv_bn(y, path + ("conv3",), 1, 0)
    if self.arch.residual:
      y = y + self.shortcut(x, path, 4 * width, stride)
    return self.relu(y, path)

  def bn(self, x, path):
    """A BN on its own (the pre-activation units), with its new running statistics."""
    out = []
    y = batch_norm(x, _get(self.params, path), _get(self.stats, path), self.arch, self.train, out)
    if out:
      self.new_stats[path] = out[0]
    return y

  def preact_unit(self, x, path, width, stride, first):
    """BN -> ReLU -> conv per layer; the first unit of a stage feeds its shortcut the pre-activated input."""
    if self.arch.depth >= 164:
      layers, out_width = [("conv1", 1, 1), ("conv2", 3, stride), ("conv3", 1, 1)], 4 * width
    else:
      layers, out_width = [("conv1", 3, stride), ("conv2", 3, 1)], width
    y = x
    for i, (name, k, s) in enumerate(layers):
      y = self.relu(self.bn(y, path + (name, "bn")), path + (name, "bn"))
      pre = y if i == 0 else pre
      y = conv(y, _get(self.params, path + (name, "conv"))["kernel"], s, k // 2)
      self.responses[path + (name,)] = y
    source = pre if first else x
    option, change = self.arch.shortcut, stride != 1 or source.shape[-1] != out_width
    if option == "C" or (option == "B" and change):
      return y + conv(source, _get(self.params, path + ("projection",))["kernel"], stride, 0)
    if not change:
      return y + source
    source = source[:, ::stride, ::stride, :]
    return y + jnp.pad(source, [(0, 0), (0, 0), (0, 0), (0, out_width - source.shape[-1])])

  def preact_cifar(self, x):
    n = (self.arch.depth - 2) // (9 if self.arch.depth >= 164 else 6)
    x = conv(x, self.params["conv1"]["kernel"], 1, 1)
    for i, width in enumerate(CIFAR_WIDTHS):
      for j in range(n):
        x = self.preact_unit(x, (f"stage{i + 1}", f"block{j}"), width, 2 if (i > 0 and j == 0) else 1, j == 0)
    x = self.relu(self.bn(x, ("final_bn",)), ("final_bn",))
    fc = self.params["fc"]
    return x.mean(axis=(1, 2)) @ fc["kernel"] + fc["bias"]

  def __call__(self, x):
    a = self.arch
    if a.preact:
      return self.preact_cifar(x)
    if a.family == "cifar":
      n = (a.depth - 2) // 6
      x = self.relu(self.conv_bn(x, ("conv1",), 1, 1), ("conv1",))
      stages = [(f"stage{i + 1}", w, n, self.basic) for i, w in enumerate(CIFAR_WIDTHS)]
    else:
      blocks = IMAGENET_BLOCKS[a.depth]
      block = self.bottleneck if a.depth >= 50 else self.basic
      x = self.max_pool(self.relu(self.conv_bn(x, ("conv1",), 2, 3), ("conv1",)))
      stages = [(f"conv{i + 2}_x", w, nb, block) for i, (w, nb) in enumerate(zip(IMAGENET_WIDTHS, blocks))]
    for i, (name, width, num, block) in enumerate(stages):
      for j in range(num):
        x = block(x, (name, f"block{j}"), width, 2 if (i > 0 and j == 0) else 1)
    x = x.mean(axis=(1, 2))
    fc = self.params["fc"]
    return x @ fc["kernel"] + fc["bias"]


def pool_views(x):
  """The 9 inputs of each window of a 3x3, stride-2, padding-1 max pool of NHWC `x`: (9, N, Ho, Wo, C)."""
  _, h, w, _ = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  padded = jnp.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-jnp.inf)
  return jnp.stack([padded[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2] for i in range(3) for j in range(3)])


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def loss_fn(arch, params, stats, images, labels, decisions=None):
  """Mean softmax cross-entropy of the net in train mode, and the new BN running statistics (same tree as `stats`)."""
  net = Net(arch, params, stats, train=True, decisions=decisions)
  logits = net(images)
  logp = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
  loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))
  new_stats = {}
  for path, value in net.new_stats.items():
    _set(new_stats, path, value)
  return loss, (logits, new_stats)


def relu_inputs(arch, params, stats, images):
  """{key: the input of each ReLU, and ('pool',): the max pool's 9 views} of the train-mode forward pass."""
  net = Net(arch, params, stats, train=True)
  net(images)
  return net.relu_inputs


def loss_and_grads(arch, params, stats, images, labels, decisions=None):
  """(loss, gradients w.r.t. params, new BN statistics, logits); run inside `jax.enable_x64(True)` in float64."""
  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
      arch, params, stats, images, labels, decisions
  )
  return loss, grads, new_stats, logits


def sgd_steps(arch, params, stats, batches, *, lrs, momentum=0.9, weight_decay=1e-4, decisions=None):
  """Caffe's SGD (the paper's framework), every parameter decayed: v = m v + lr (g + wd w); w -= v.
  Returns (params, stats, losses) after one step per (images, labels) in `batches`, lr `lrs[i]` at step i,
  with the activation decisions `decisions[i]` (see Net) if given."""
  velocity = jax.tree.map(jnp.zeros_like, params)
  losses = []
  step = jax.jit(lambda p, s, x, y, d: loss_and_grads(arch, p, s, x, y, d))
  for i, ((images, labels), lr) in enumerate(zip(batches, lrs)):
    loss, grads, stats, _ = step(params, stats, images, labels, None if decisions is None else decisions[i])
    losses.append(float(loss))
    velocity = jax.tree.map(lambda v, g, w: momentum * v + lr * (g + weight_decay * w), velocity, grads, params)
    params = jax.tree.map(lambda w, v: w - v, params, velocity)
  return params, stats, np.asarray(losses)


def unroll_scanned(tree):
  """The project's scanned stages store blocks 1..n-1 stacked under 'blocks'/'block'; the reference wants
  block1..block{n-1}."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key == "blocks":
      stacked = value["block"]
      for i in range(jax.tree.leaves(stacked)[0].shape[0]):
        out[f"block{i + 1}"] = unroll_scanned(jax.tree.map(lambda a, i=i: a[i], stacked))
    else:
      out[key] = unroll_scanned(value)
  return out
