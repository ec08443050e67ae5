"""The PyTorch eager peer of the CIFAR nets (PyTorch is optional, not a dependency): timed beside the JAX step by
`python -m src.bench --torch`, and trained on an image folder by this module, as an independent cross-check of
the early training curves (README, "Your own data"):

  python -m src.bench_torch --image_dir=/tmp/cifar10-jpeg --depth=56 --steps=400

The same network as src/models/cifar.py: 3x3 convs (16/32/64), BN, ReLU, option-A shortcuts (stride-2
subsample + zero channel padding), global average pool, FC; SGD momentum 0.9, weight decay 1e-4; fp32.
"""

import argparse
import os
import time

import numpy as np

import torch
import torch.nn as tnn
import torch.nn.functional as F


class Block(tnn.Module):

  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(cout)
    self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(cout)
    self.stride, self.pad = stride, cout - cin

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    s = x[:, :, :: self.stride, :: self.stride] if self.stride > 1 else x
    if self.pad:
      s = F.pad(s, (0, 0, 0, 0, 0, self.pad))
    return F.relu(y + s)


class CifarResNet(tnn.Module):

  def __init__(self, depth, num_classes=10, in_channels=3):
    super().__init__()
    n = (depth - 2) // 6
    self.conv = tnn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
    self.bn = tnn.BatchNorm2d(16)
    layers, cin = [], 16
    for i, w in enumerate((16, 32, 64)):
      for j in range(n):
        layers.append(Block(cin, w, 2 if (j == 0 and i > 0) else 1))
        cin = w
    self.blocks = tnn.Sequential(*layers)
    self.fc = tnn.Linear(64, num_classes)

  def forward(self, x):
    x = self.blocks(F.relu(self.bn(self.conv(x))))
    return self.fc(x.mean((2, 3)))


def torch_step(name, batch, shape=(32, 32, 3)):
  """One eager train step of the PyTorch peer (a callable) and a description of it, for src.bench to time in
  the same windows as the JAX step. shape: the JAX input (H, W, C), so that both nets see the same images."""
  torch.set_num_threads(os.cpu_count())
  depth = int(name.rsplit("resnet", 1)[-1].rsplit("plain", 1)[-1])
  model = CifarResNet(depth, in_channels=shape[2])
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x, y = torch.randn(batch, shape[2], *shape[:2]), torch.randint(0, 10, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  step()
  return step, f"pytorch {torch.__version__} eager, {torch.get_num_threads()} threads"


def train_curve(image_dir: str, depth: int, steps: int, seed: int = 0, log=print) -> list:
  """Trains the peer ResNet-`depth` with the paper's CIFAR recipe at lr 0.1 (Sec. 4.2) and returns the mean
  training error (a fraction) of each 100 steps, as src.train logs it.

  Shares no code with src/data or src/train: Pillow decodes <image_dir>/train/<class>/<image> (classes in sorted
  order), 45,000 images drawn by a permutation, per-pixel mean subtracted, batches of 128 drawn with replacement,
  pad 4 + random 32x32 crop + horizontal flip, BN over groups of 64 (the paper's per-GPU BN), He init (fan-in) of
  the convolutions. Raises FileNotFoundError if <image_dir>/train is missing.
  """
  from PIL import Image

  torch.manual_seed(seed)
  root = os.path.join(image_dir, "train")
  images, labels = [], []
  for label, name in enumerate(sorted(os.listdir(root))):
    for f in sorted(os.listdir(os.path.join(root, name))):
      with Image.open(os.path.join(root, name, f)) as im:
        images.append(np.asarray(im.convert("RGB")))
      labels.append(label)
  keep = np.random.RandomState(0).permutation(len(images))[:45000]
  x = np.stack(images)[keep].astype(np.float32) / 255.0
  x = torch.from_numpy(x - x.mean(0)).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(np.array(labels)[keep])
  model = CifarResNet(depth)
  for m in model.modules():
    if isinstance(m, tnn.Conv2d):
      tnn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  rng, errors, curve, t0 = np.random.RandomState(seed), [], [], time.time()
  for step in range(1, steps + 1):
    idx = rng.randint(0, len(x), 128)
    padded = F.pad(x[idx], (4, 4, 4, 4))
    dx, dy = rng.randint(0, 9, 128), rng.randint(0, 9, 128)
    xb = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(128)])
    flip = torch.from_numpy(rng.rand(128) < 0.5)
    xb[flip] = xb[flip].flip(3)
    opt.zero_grad(set_to_none=True)
    logits = torch.cat([model(xb[:64]), model(xb[64:])])
    F.cross_entropy(logits, y[idx]).backward()
    opt.step()
    errors.append((logits.argmax(1) != y[idx]).float().mean().item())
    if step % 100 == 0:
      curve.append(float(np.mean(errors[-100:])))
      log(f"peer resnet{depth} seed {seed} step {step} train/error {100 * curve[-1]:.2f}% ({time.time() - t0:.0f} s)")
  return curve


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--image_dir", required=True, help="<dir>/train/<class>/<image>, e.g. the CIFAR-10 JPEG copy")
  p.add_argument("--depth", type=int, default=56, help="6n+2")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, default=os.cpu_count())
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  train_curve(a.image_dir, a.depth, a.steps, a.seed)
