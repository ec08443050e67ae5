"""The PyTorch eager peer of the CIFAR nets, for `python -m src.bench --torch` only (PyTorch is optional).

The same network as src/models/cifar.py: 3x3 convs (16/32/64), BN, ReLU, option-A shortcuts (stride-2
subsample + zero channel padding), global average pool, FC; SGD momentum 0.9, weight decay 1e-4; fp32.
"""

import os

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
