"""The PyTorch eager peer of the CIFAR nets, for `python -m src.bench --torch` only (PyTorch is optional).

The same network as src/models/cifar.py: 3x3 convs (16/32/64), BN, ReLU, option-A shortcuts (stride-2
subsample + zero channel padding), global average pool, FC; SGD momentum 0.9, weight decay 1e-4; fp32.
"""
import os
import statistics
import time

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
    s = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
    if self.pad:
      s = F.pad(s, (0, 0, 0, 0, 0, self.pad))
    return F.relu(y + s)


class CifarResNet(tnn.Module):
  def __init__(self, depth, num_classes=10):
    super().__init__()
    n = (depth - 2) // 6
    self.conv = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
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


def bench_torch(name, batch, steps, windows=3):
  torch.set_num_threads(os.cpu_count())
  depth = int(name.rsplit("resnet", 1)[-1].rsplit("plain", 1)[-1])
  model = CifarResNet(depth)
  opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()

  step()
  times = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(steps):
      step()
    times.append((time.perf_counter() - t) / steps)
  s = statistics.median(times)
  return {"model": name, "framework": f"pytorch {torch.__version__} eager", "batch": batch, "dtype": "float32",
          "step_ms": round(1e3 * s, 2), "images_per_sec": round(batch / s, 1), "threads": torch.get_num_threads()}
