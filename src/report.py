"""`python -m src.report --workdir=DIR`: the paper's figures (PNG) and tables (Markdown) from a workdir of runs.

Writes into DIR: fig1.png (plain nets, shallow vs deep), fig6.png (plain vs ResNets, training and test error),
fig7.png (layer response std, when checkpoints exist), table6.md (test error beside the paper's).
"""
import argparse
import os

from src.analysis import load_metrics, load_runs, table6
from src.analysis.plots import plot_fig1, plot_fig6
from src.analysis.runs import to_markdown


def write_report(workdir: str, num_images: int = 500) -> list:
  written = []
  runs, curves = load_runs(workdir), load_metrics(workdir)
  if runs.empty:
    raise SystemExit(f"error: no runs (directories with metrics.jsonl) under {workdir}")

  def save(fig, name):
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=120)
    written.append(path)

  if (runs["net"] == "plain").any():
    save(plot_fig1(curves), "fig1.png")
  save(plot_fig6(curves), "fig6.png")
  has_ckpt = [r for r in runs.itertuples() if os.path.isdir(os.path.join(r.dir, "checkpoints"))]
  if has_ckpt:
    from src.analysis.layer_responses import layer_response_std, plot_fig7
    stds = {r.run: layer_response_std(r.dir, num_images=num_images) for r in has_ckpt}
    save(plot_fig7(stds), "fig7.png")
  path = os.path.join(workdir, "table6.md")
  with open(path, "w") as f:
    f.write("# Table 6 (errors in %)\n\nThe paper's column: CIFAR-10 test error of He et al. (2016), Table 6.\n\n")
    f.write(to_markdown(table6(workdir)))
  written.append(path)
  return written


def main():
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument("--workdir", required=True)
  p.add_argument("--num_images", type=int, default=500, help="test images for Fig. 7")
  for path in write_report(p.parse_args().workdir, p.parse_args().num_images):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
