"""Fig. 7: the standard deviation of each 3x3 layer's response (after BN, before ReLU/addition).

The nets `sow` every such response into 'intermediates' as 'bn_response' (src/models/blocks.py); here a
checkpoint is restored and run in eval mode on test images. A layer's std is the std of its response over
images and positions, averaged over channels.
"""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from src import data, models
from src.checkpoint import load_saved_state
from src.train import normalize


def _responses(tree, out):
  """bn_response arrays in call order; scanned stages (leading block axis) expand block by block.
  Shortcut projections are skipped: Fig. 7 plots the layers of the residual functions."""
  for name, value in tree.items():
    if name == "projection":
      continue
    if name == "bn_response":
      out.append(("x", value[0]))
    elif name == "blocks":
      inner = []
      _responses(value, inner)
      n = inner[0][1].shape[0]
      for i in range(n):
        out.extend(("x", r[i]) for _, r in inner)
    elif isinstance(value, dict):
      _responses(value, out)
  return out


def layer_response_std(run_dir: str, split: str = "test", num_images: int = 500) -> np.ndarray:
  with open(os.path.join(run_dir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  ds = data.get_dataset(config.data, seed=config.seed)
  model = models.model_from_config(config.model, num_classes=ds.num_classes)
  state = load_saved_state(run_dir)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"])[1]["intermediates"])
  sums = None
  seen = 0
  for batch in ds.eval_batches(split, min(num_images, 250)):
    keep = batch["mask"]
    inter = apply(variables, normalize(jnp.asarray(batch["image"]), jnp.asarray(ds.mean)))
    layers = [np.asarray(r)[keep] for _, r in _responses(inter, [])]
    stats = [(x.reshape(-1, x.shape[-1]).sum(0), (x.reshape(-1, x.shape[-1]) ** 2).sum(0),
              x.size // x.shape[-1]) for x in layers]
    sums = stats if sums is None else [(a + c, b + d, n + m) for (a, b, n), (c, d, m) in zip(sums, stats)]
    seen += int(keep.sum())
    if seen >= num_images:
      break
  stds = []
  for s, sq, n in sums:  # per-channel std over images and positions, then the mean over channels
    mean = s / n
    stds.append(float(np.mean(np.sqrt(np.maximum(sq / n - mean ** 2, 0)))))
  return np.asarray(stds)


def plot_fig7(stds: dict):
  """stds: {label: per-layer stds}. Top: layer index; bottom: sorted by magnitude (descending)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 1, figsize=(8, 6))
  for label, s in stds.items():
    style = "--" if label.startswith("plain") else "-"
    axes[0].plot(np.arange(1, len(s) + 1), s, style, label=label)
    axes[1].plot(np.arange(1, len(s) + 1), np.sort(s)[::-1], style, label=label)
  axes[0].set_xlabel("layer index (original)")
  axes[1].set_xlabel("layer index (sorted by magnitude)")
  for ax in axes:
    ax.set_ylabel("std")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  return fig
