"""The paper's training-curve figures from `load_metrics` tables. Errors are in %."""
import matplotlib

matplotlib.use("Agg")  # headless: notebooks display the returned figures themselves
import matplotlib.pyplot as plt  # noqa: E402

COLORS = plt.get_cmap("tab10")


def _curves(ax, df, eval_key, title):
  depths = sorted(d for d in df["depth"].dropna().unique())
  for i, depth in enumerate(depths):
    run = df[df["depth"] == depth].sort_values("step")
    color = COLORS(i % 10)
    train = run.dropna(subset=["train/error"])
    ax.plot(train["step"], train["train/error"], "--", lw=0.8, color=color)  # thin dashed: training error
    if eval_key in run:
      ev = run.dropna(subset=[eval_key])
      ax.plot(ev["step"], ev[eval_key], "-", lw=2.2, color=color, label=f"{title.split()[0]}-{depth}")
  ax.set_xlabel("iterations")
  ax.set_ylabel("error (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  if depths:
    ax.legend(fontsize=8)


def plot_fig6(df, eval_key="test/error"):
  """Fig. 6: plain nets (left), ResNets (right); dashed = training error, bold = test error."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
  _curves(axes[0], df[df["net"] == "plain"], eval_key, "plain nets")
  _curves(axes[1], df[df["net"] == "resnet"], eval_key, "resnet nets")
  fig.suptitle(f"dashed: training error, bold: {eval_key.split('/')[0]} error")
  fig.tight_layout()
  return fig


def plot_fig4(df):
  """Fig. 4 (ImageNet): the same layout as Fig. 6, with the validation error (centre crop) in bold."""
  return plot_fig6(df, eval_key="val/error")


def plot_fig1(df):
  """Fig. 1: the shallowest vs the deepest plain net, training error (left) and test error (right)."""
  plain = df[df["net"] == "plain"]
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  depths = sorted(plain["depth"].dropna().unique())
  chosen = [depths[0], depths[-1]] if len(depths) > 1 else depths
  for i, depth in enumerate(chosen):
    run = plain[plain["depth"] == depth].sort_values("step")
    for ax, key in zip(axes, ("train/error", "test/error")):
      if key in run:
        r = run.dropna(subset=[key])
        ax.plot(r["step"], r[key], color=COLORS(i), lw=1.8, label=f"{depth}-layer")
  for ax, name in zip(axes, ("training error (%)", "test error (%)")):
    ax.set_xlabel("iterations")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  return fig
