"""Fig. 7: the standard deviation of each 3x3 layer's response (after BN, before ReLU/addition). In a
pre-activation net (Identity Mappings) no BN stands between a conv and the addition: there each conv's output is
measured, which for a unit's last conv is its residual function's contribution to the sum.

The nets `sow` every such response into 'intermediates' as 'response' (src/models/blocks.py); here a
checkpoint is restored and run in eval mode on test images. A layer's std is the std of its response over
images and positions, averaged over channels.
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from src import data, models, replicas
from src.analysis.runs import load_runs
from src.checkpoint import load_saved_state
from src.cpu import xla_flags
from src.step import normalize


def _natural(name):
  """'block10' after 'block9': jit returns dicts with sorted keys, and plain sorting breaks the call order."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def ordered_responses(tree, prefix=""):
  """[(layer name, response)] in the nets' call order: conv1, then per stage block0, block1, ... (unrolled) or
  block0, blocks[0], blocks[1], ... (scanned: the leading block axis is expanded), conv1 before conv2 in a
  block. Shortcut projections are skipped: Fig. 7 plots the layers of the residual functions."""
  out = []
  for name in sorted(tree, key=_natural):
    value, path = tree[name], f"{prefix}{name}"
    if name == "projection":
      continue
    if name == "response":
      out.append((prefix.rstrip("/"), value[0]))  # sow keeps a tuple of the values sown
    elif name == "blocks":  # nn.scan: every leaf is stacked over blocks
      inner = ordered_responses(value)
      for i in range(inner[0][1].shape[0] if inner else 0):
        out.extend((f"{path}[{i}]/{layer.removeprefix('block/')}", r[i]) for layer, r in inner)
    elif isinstance(value, dict):
      out.extend(ordered_responses(value, f"{path}/"))
  return out


def _load(run_dir, replica=0):
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  ds = data.get_dataset(config.data, seed=config.seed)
  model = models.model_from_config(config.model, num_classes=ds.num_classes)
  return ds, model, replicas.replica_variables(load_saved_state(run_dir), config)[replica]


def _moments(model):
  """A jitted fn: per layer and channel, the masked sums over images of the per-image mean of x and x^2 over
  positions. Reduced on the device, so the full responses (GBs for deep nets) never reach the host."""

  def moments(variables, images, mask):
    inter = model.apply(variables, images, train=False, mutable=["intermediates"])[1]["intermediates"]

    def reduce(x):  # [..., B, H, W, C] (scanned stages lead with a block axis) -> [..., 2, C]
      x = x.astype(jnp.float32)
      w = mask.astype(jnp.float32)[:, None]
      return jnp.stack([(x.mean((-3, -2)) * w).sum(-2), ((x**2).mean((-3, -2)) * w).sum(-2)], -2)

    return jax.tree.map(reduce, inter)

  return jax.jit(moments, compiler_options=xla_flags.compiler_options())


def layer_response_std(
    run_dir: str, split: str = "test", num_images: int = 500, return_names: bool = False, replica: int = 0
):
  """Per-layer response std (numpy, in layer order) of the run's newest checkpoint on the first `num_images`
  images of `split`; with return_names, also the layer names (e.g. 'stage2/block0/conv1'). `replica`: which seed
  of a run of several (src/replicas.py)."""
  ds, model, variables = _load(run_dir, replica)
  moments = _moments(model)
  sums, names, seen = None, None, 0
  for batch in ds.eval_batches(split, min(num_images, 250)):
    # Padding examples (mask 0) and those beyond num_images are left out of the statistics.
    keep = batch["mask"].astype(bool) & (seen + np.cumsum(batch["mask"]) <= num_images)
    layers = ordered_responses(
        moments(variables, normalize(jnp.asarray(batch["image"]), jnp.asarray(ds.mean)), jnp.asarray(keep))
    )
    names = [n for n, _ in layers]
    moms = [np.asarray(m, np.float64) for _, m in layers]  # [2, C] per layer: sums of E_hw[x], E_hw[x^2]
    sums = moms if sums is None else [a + b for a, b in zip(sums, moms)]
    seen += int(keep.sum())
    if seen >= num_images:
      break
  if not seen:
    raise ValueError(f"No {split} images to measure {run_dir} on.")
  stds = []
  for s, sq in sums:  # per-channel std over images and positions, then the mean over channels
    mean = s / seen
    stds.append(float(np.mean(np.sqrt(np.maximum(sq / seen - mean**2, 0)))))
  return (np.asarray(stds), names) if return_names else np.asarray(stds)


def has_checkpoint(run_dir: str) -> bool:
  ckpts = os.path.join(run_dir, "checkpoints")
  return os.path.isdir(ckpts) and any(s.isdigit() for s in os.listdir(ckpts))


def response_stds(workdir: str, split: str = "test", num_images: int = 500) -> dict:
  """{run: per-layer stds} for every CIFAR-style run of the workdir that has a checkpoint (Fig. 7 is CIFAR)."""
  runs = load_runs(workdir)
  return {
      r.run: layer_response_std(r.dir, split, num_images)
      for r in runs.itertuples()
      if r.recipe == "cifar" and has_checkpoint(r.dir)
  }


def plot_fig7(stds: dict):
  """stds: {label: per-layer stds}. Top: layer index; bottom: sorted by magnitude (descending)."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 1, figsize=(8, 6))
  for label, s in stds.items():
    style = "--" if label.startswith("plain") else "-"  # the paper: dashed plain nets, solid ResNets
    axes[0].plot(np.arange(1, len(s) + 1), s, style, label=label)
    axes[1].plot(np.arange(1, len(s) + 1), np.sort(s)[::-1], style, label=label)
  axes[0].set_xlabel("layer index (original)")
  axes[1].set_xlabel("layer index (sorted by magnitude)")
  for ax in axes:
    ax.set_ylabel("std")
    ax.grid(alpha=0.3)
    if stds:
      ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
