"""The paper's training-curve figures (Fig. 1, 4, 6) from `load_metrics` tables. Errors are in %."""

import matplotlib.pyplot as plt  # the backend is the caller's: inline in notebooks, Agg in src/report.py

COLORS = plt.get_cmap("tab10")
LABELS = {"plain": "plain", "resnet": "ResNet"}


def _colors(df):
  """{(net, run): colour}. One colour per depth, the same in both panels, so plain-20 and ResNet-20 match as in
  the paper; a second run of a net and depth (another length, the PyTorch peer) gets the next unused colour."""
  depths = sorted(df["depth"].dropna().unique())
  by_depth = {d: COLORS(i % 10) for i, d in enumerate(depths)}
  colors, extra = {}, len(depths)
  for net, group in df.groupby("net"):
    seen = set()
    for depth, name in _runs_of(group):
      if depth in seen:
        colors[(net, name)], extra = COLORS(extra % 10), extra + 1
      else:
        colors[(net, name)] = by_depth[depth]
        seen.add(depth)
  return colors


def _runs_of(df):
  """[(depth, run)] of the runs in a table (runs without a depth left out), shallowest first, runs of one depth
  by name."""
  depths = df.groupby("run")["depth"].first().dropna()
  return sorted((d, r) for r, d in depths.items())


def over_seeds(run, key):
  """(step, mean, min, max) of `key` over a run's replicas at each logged step (one replica: min = max = mean)."""
  curve = run.dropna(subset=[key]).groupby("step")[key].agg(["mean", "min", "max"]).reset_index()
  return curve["step"], curve["mean"], curve["min"], curve["max"]


def _curve(ax, run, key, style, lw, color, label=None):
  """The mean over seeds, and a band from the lowest to the highest seed where a run has several."""
  step, mean, low, high = over_seeds(run, key)
  ax.plot(step, mean, style, lw=lw, color=color, label=label)
  if "replica" in run and run["replica"].nunique() > 1:
    ax.fill_between(step, low, high, color=color, alpha=0.2, lw=0)


def _curves(ax, df, net, eval_key, colors):
  runs = df[df["net"] == net]
  listed = _runs_of(runs)
  depths = [d for d, _ in listed]
  for depth, name in listed:
    run = runs[runs["run"] == name].sort_values("step")
    color = colors[(net, name)]
    label = f"{LABELS[net]}-{int(depth)}" + (f" ({name})" if depths.count(depth) > 1 else "")
    _curve(ax, run, "train/error", "--", 0.8, color)  # thin dashed: training
    if eval_key in run:
      _curve(ax, run, eval_key, "-", 2.2, color, label=label)
  ax.set_xlabel("iterations")
  ax.set_ylabel("error (%)")
  ax.set_title(f"{LABELS[net]} nets" if net == "plain" else "ResNets")
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)


def plot_fig6(df, eval_key="test/error"):
  """Fig. 6: plain nets (left), ResNets (right); thin dashed = training error, bold = `eval_key` error. Runs of
  several seeds: the mean over them, in a band from the lowest to the highest seed. A table with one kind of net
  only (e.g. ResNets at a length no plain net was run for) gets that one panel, not an empty one beside it."""
  nets = [net for net in ("plain", "resnet") if (df["net"] == net).any()] or ["plain", "resnet"]
  fig, axes = plt.subplots(1, len(nets), figsize=(5.5 * len(nets), 4), sharey=True, squeeze=False)
  colors = _colors(df)
  for ax, net in zip(axes[0], nets):
    _curves(ax, df, net, eval_key, colors)
  fig.suptitle(f"dashed: training error, bold: {eval_key.split('/')[0]} error")
  fig.tight_layout()
  return fig


def plot_fig4(df):
  """Fig. 4 (ImageNet): the layout of Fig. 6 with the validation error (centre crop) in bold."""
  return plot_fig6(df, eval_key="val/error")


def plot_fig1(df):
  """Fig. 1: the shallowest vs the deepest plain net, training error (left) and test error (right)."""
  plain = df[df["net"] == "plain"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)  # test error is logged less often: same x range
  depths = sorted(plain["depth"].dropna().unique())
  chosen = [depths[0], depths[-1]] if len(depths) > 1 else depths
  for i, depth in enumerate(chosen):
    run = plain[plain["depth"] == depth].sort_values("step")
    for ax, key in zip(axes, ("train/error", "test/error")):
      if key in run:
        _curve(ax, run, key, "-", 1.8, COLORS(i), label=f"{depth}-layer")
  for ax, name in zip(axes, ("training error (%)", "test error (%)")):
    ax.set_xlabel("iterations")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend()
  fig.tight_layout()
  return fig
