"""The PyTorch eager peer of the CIFAR nets (PyTorch is optional, not a dependency): timed beside the JAX step by
`python -m src.bench --torch`, and trained on an image folder by this module with the paper's recipe, as an
independent cross-check of this project's numbers (README, Reproduction):

  python -m src.bench_torch --image_dir=/tmp/cifar10-jpeg --depth=20 --steps=16000 --workdir=runs/peer-r20-16k

The same network as src/models/cifar.py: 3x3 convs (16/32/64), BN, ReLU, option-A shortcuts (stride-2
subsample + zero channel padding), global average pool, FC; SGD momentum 0.9, weight decay 1e-4; fp32. The
workdir gets the files src.main writes (config.json, metrics.jsonl, result.json) so that src.analysis and
src.report read the peer as one more run; started again it resumes from its checkpoint (peer.pt), and
--time_limit_minutes ends a start early with the checkpoint saved, as src.main's does.
"""

import argparse
import json
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


def load_folder(root: str):
  """uint8 [N, H, W, 3] images and int64 labels of <root>/<class>/<image>, classes in sorted order, decoded by
  Pillow (its own reading: no code shared with src/data). Hidden files and folders are skipped."""
  from PIL import Image

  images, labels = [], []
  classes = sorted(c for c in os.listdir(root) if not c.startswith("."))
  for label, name in enumerate(classes):
    for f in sorted(f for f in os.listdir(os.path.join(root, name)) if not f.startswith(".")):
      with Image.open(os.path.join(root, name, f)) as im:
        images.append(np.asarray(im.convert("RGB")))
      labels.append(label)
  return np.stack(images), np.array(labels, np.int64)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def train_peer(
    image_dir: str,
    depth: int,
    steps: int,
    workdir: str,
    seed: int = 0,
    val_size: int = 5000,
    time_limit_minutes: float = 0.0,
    log=print,
) -> dict:
  """Trains the peer ResNet-`depth` with the paper's CIFAR-10 recipe (Sec. 4.2), its schedule scaled to `steps`
  (lr 0.1, x0.1 at 50% and 75% of the steps), and returns its final errors (fractions), also in
  <workdir>/result.json.

  Its own reading, sampling and augmentation, sharing no code with src/data or src/train: Pillow decodes
  <image_dir>/{train,test}/<class>/<image>; `val_size` train images drawn by a permutation (seed 0) are held out;
  per-pixel mean of the rest subtracted; batches of 128 from per-epoch shuffles (torch.randperm), pad 4 + random
  32x32 crop + horizontal flip; BN over groups of 64 (the paper's two GPUs: two forward calls per step); He init
  (fan-in) of the convolutions, PyTorch's default for the FC layer and BN; torch.optim.SGD (v = m v + g,
  w -= lr v) with weight decay on every parameter. Logs every 100 steps, evaluates val and test every
  min(2000, steps / 8) steps and checkpoints there (<workdir>/peer.pt, written atomically).

  Raises FileNotFoundError if <image_dir>/train or /test is missing. Exits with status 0 (SystemExit) after
  saving when `time_limit_minutes` > 0 is nearly spent (2 x the longest log interval + 10 s left).
  """
  t_begin = time.time()
  config = dict(
      image_dir=image_dir,
      depth=depth,
      steps=steps,
      seed=seed,
      val_size=val_size,
      batch_size=128,
      group=64,
      base_lr=0.1,
      boundaries=[steps // 2, steps * 3 // 4],
      factor=0.1,
      momentum=0.9,
      weight_decay=1e-4,
      peer=f"pytorch {torch.__version__} eager, {torch.get_num_threads()} threads",
  )
  peer = _Peer(config, workdir, log)
  eval_every = min(2000, max(100, round(steps / 8 / 100) * 100))
  longest, t_check = 0.0, time.time()
  for step in range(peer.step + 1, steps + 1):
    peer.train_step(step)
    if step % 100 and step != steps:
      continue
    row = peer.log_row(step, evaluate=step % eval_every == 0 or step == steps)
    now = time.time()
    longest, t_check = max(longest, now - t_check), now
    stop = time_limit_minutes > 0 and now - t_begin + 2 * longest + 10 >= 60 * time_limit_minutes
    log(
        f"peer resnet{depth} step {step}/{steps} "
        + "  ".join(f"{k} {v:.4g}" for k, v in row.items() if "/" in k)
        + f"  ({now - peer.t_start:.0f} s)"
    )
    if step % eval_every == 0 or step == steps or stop:
      peer.save(step)
    if stop and step != steps:
      log(f"peer: time limit: saved the checkpoint of step {step}; exiting. Start the same command again.")
      raise SystemExit(0)
  return peer.result()


class _Peer:
  """One peer run: its data, net, optimiser and random streams, resumed from <workdir>/peer.pt if there."""

  def __init__(self, config, workdir, log):
    self.config, self.workdir = config, workdir
    os.makedirs(workdir, exist_ok=True)
    self.ckpt_path, self.metrics_path = os.path.join(workdir, "peer.pt"), os.path.join(workdir, "metrics.jsonl")
    self._load_data(config["image_dir"], config["val_size"])
    torch.manual_seed(config["seed"])
    self.model = CifarResNet(config["depth"], num_classes=self.num_classes)
    for m in self.model.modules():
      if isinstance(m, tnn.Conv2d):
        tnn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    self.gen = torch.Generator().manual_seed(config["seed"])  # the data order: per-epoch shuffles
    self.rng = np.random.RandomState(config["seed"] + 1)  # augmentation
    self.step, self.order, self.pos, self.wall_before = 0, torch.empty(0, dtype=torch.int64), 0, 0.0
    if os.path.exists(self.ckpt_path):
      self._resume(log)
    rows = []
    if os.path.exists(self.metrics_path):  # keep exactly the rows up to the checkpoint's step
      with open(self.metrics_path) as f:
        rows = [r for r in map(json.loads, filter(str.strip, f)) if r["step"] <= self.step]
    with open(self.metrics_path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    _write_json(os.path.join(workdir, "config.json"), config)
    self.start, self.t_start = self.step, time.time()
    self.losses, self.errors, self.last = [], [], {}
    self.model.train()

  def _load_data(self, image_dir, val_size):
    images, labels = load_folder(os.path.join(image_dir, "train"))
    test_images, test_labels = load_folder(os.path.join(image_dir, "test"))
    perm = np.random.RandomState(0).permutation(len(images))
    train_idx, val_idx = perm[val_size:], perm[:val_size]
    mean = images[train_idx].astype(np.float64).mean(0).astype(np.float32) / 255.0

    def tensor(x):  # uint8 NHWC -> float NCHW, mean subtracted
      return torch.from_numpy(x.astype(np.float32) / 255.0 - mean).permute(0, 3, 1, 2).contiguous()

    self.x, self.y = tensor(images[train_idx]), torch.from_numpy(labels[train_idx])
    self.splits = {"val": (tensor(images[val_idx]), torch.from_numpy(labels[val_idx]))} if val_size else {}
    self.splits["test"] = (tensor(test_images), torch.from_numpy(test_labels))
    self.num_classes = int(labels.max()) + 1

  def _resume(self, log):
    ck = torch.load(self.ckpt_path, weights_only=False)
    if ck["config"] != self.config:
      raise SystemExit(
          f"error: {self.workdir} holds a peer run of another config ({ck['config']}); use another workdir."
      )
    self.model.load_state_dict(ck["model"])
    self.opt.load_state_dict(ck["opt"])
    self.gen.set_state(ck["gen"])
    self.rng.set_state(ck["rng"])
    self.step, self.order, self.pos, self.wall_before = ck["step"], ck["order"], ck["pos"], ck["wall_time_s"]
    log(f"peer: resumed from {self.ckpt_path} at step {self.step}")

  def batch(self):
    """The next 128 training images, augmented, and their labels."""
    while self.pos + 128 > len(self.order):  # a new epoch; the remainder of the old one starts the batch
      self.order, self.pos = torch.cat([self.order[self.pos :], torch.randperm(len(self.x), generator=self.gen)]), 0
    idx = self.order[self.pos : self.pos + 128]
    self.pos += 128
    padded = F.pad(self.x[idx], (4, 4, 4, 4))
    dx, dy = self.rng.randint(0, 9, 128), self.rng.randint(0, 9, 128)
    xb = torch.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(128)])
    flip = torch.from_numpy(self.rng.rand(128) < 0.5)
    xb[flip] = xb[flip].flip(3)
    return xb, self.y[idx]

  def lr(self, step):
    return 0.1 * 0.1 ** sum(step > b for b in self.config["boundaries"])

  def train_step(self, step):
    """SGD step `step` (1-based), BN over the two halves of the batch separately."""
    for group in self.opt.param_groups:
      group["lr"] = self.lr(step)
    xb, yb = self.batch()
    self.opt.zero_grad(set_to_none=True)
    logits = torch.cat([self.model(xb[:64]), self.model(xb[64:])])
    loss = F.cross_entropy(logits, yb)
    loss.backward()
    self.opt.step()
    self.losses.append(loss.item())
    self.errors.append((logits.argmax(1) != yb).float().mean().item())
    self.step = step

  def evaluate(self):
    self.model.eval()
    out = {}
    with torch.no_grad():
      for split, (ex, ey) in self.splits.items():
        logits = torch.cat([self.model(ex[i : i + 1000]) for i in range(0, len(ex), 1000)])
        out[f"{split}/error"] = float((logits.argmax(1) != ey).float().mean())
        out[f"{split}/loss"] = float(F.cross_entropy(logits, ey))
    self.model.train()
    return out

  def log_row(self, step, evaluate: bool) -> dict:
    """The metrics.jsonl row of this log step (the mean loss and error since the last one), appended there."""
    row = {
        "step": step,
        "train/loss": float(np.mean(self.losses)),
        "train/error": float(np.mean(self.errors)),
        "lr": self.lr(step),
    }
    self.losses, self.errors = [], []
    if evaluate:
      row.update(self.evaluate())
    with open(self.metrics_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    self.last.update(row)
    return row

  def wall_time(self):
    return self.wall_before + time.time() - self.t_start

  def save(self, step):
    ck = dict(
        model=self.model.state_dict(),
        opt=self.opt.state_dict(),
        gen=self.gen.get_state(),
        rng=self.rng.get_state(),
        step=step,
        order=self.order,
        pos=self.pos,
        config=self.config,
        wall_time_s=self.wall_time(),
    )
    torch.save(ck, self.ckpt_path + ".tmp")
    os.replace(self.ckpt_path + ".tmp", self.ckpt_path)

  def result(self) -> dict:
    last = self.last or self.evaluate()  # started again after the end: evaluate the saved net
    c = self.config
    result = {
        "name": f"peer-resnet{c['depth']}",
        "model": f"pytorch_cifar_resnet{c['depth']}",
        "dataset": "image_folder",
        "data": {"dir": c["image_dir"]},
        "steps": c["steps"],
        "params": sum(p.numel() for p in self.model.parameters()),
        "wall_time_s": self.wall_time(),
        "resumed_from": self.start,
        **{k: v for k, v in last.items() if "/" in k},
    }
    _write_json(os.path.join(self.workdir, "result.json"), result)
    return result


if __name__ == "__main__":
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--image_dir", required=True, help="<dir>/{train,test}/<class>/<image>, e.g. the CIFAR-10 JPEG copy")
  p.add_argument("--workdir", required=True, help="where config.json, metrics.jsonl, result.json, peer.pt go")
  p.add_argument("--depth", type=int, default=20, help="6n+2")
  p.add_argument("--steps", type=int, default=64000, help="the schedule: x0.1 at 50%% and 75%% (paper: 64000)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--val_size", type=int, default=5000)
  p.add_argument("--time_limit_minutes", type=float, default=0.0, help="> 0: save and exit 0 before it ends")
  p.add_argument("--threads", type=int, default=os.cpu_count())
  a = p.parse_args()
  torch.set_num_threads(a.threads)
  train_peer(a.image_dir, a.depth, a.steps, a.workdir, a.seed, a.val_size, a.time_limit_minutes)
