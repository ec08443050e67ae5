"""`python -m src.report --workdir=DIR`: the paper's figures (PNG) and tables (Markdown) from a workdir of runs.

Writes into DIR, for the CIFAR-style runs (cifar10, mnist5k, image_folder): fig1.png (shallowest vs deepest
plain net), fig6.png (plain nets vs ResNets, training and test error), fig7.png (layer response stds; runs with
checkpoints), table6.md (test error beside the paper's); for runs of the ImageNet recipe (imagenet2012, or a
folder of photos read with data.pipeline='imagenet'): fig4.png and imagenet.md (Tables 2-4). Whatever a workdir
has no runs for is skipped.
"""

import argparse
import os

import matplotlib

matplotlib.use("Agg")  # headless: files only, before anything imports pyplot
import matplotlib.pyplot as plt  # noqa: E402

from src import paper  # noqa: E402
from src.analysis.plots import plot_fig1, plot_fig4, plot_fig6  # noqa: E402
from src.analysis.runs import imagenet_table, load_metrics, load_runs, table6, to_markdown  # noqa: E402


def write_report(workdir: str, num_images: int = 500, log=print) -> list:
  runs, curves = load_runs(workdir), load_metrics(workdir)
  if runs.empty:
    raise SystemExit(f"error: no runs (directories with metrics.jsonl) under {workdir}")
  written = []

  def save(fig, name):
    path = os.path.join(workdir, name)
    fig.savefig(path, dpi=120)
    plt.close(fig)  # many figures in one process otherwise pile up in pyplot's registry
    written.append(path)

  def save_text(text, name):
    path = os.path.join(workdir, name)
    with open(path, "w") as f:
      f.write(text)
    written.append(path)

  cifar = curves[curves["recipe"] == "cifar"]
  if len(cifar):
    if (cifar["net"] == "plain").any():
      save(plot_fig1(cifar), "fig1.png")
    save(plot_fig6(cifar), "fig6.png")
    from src.analysis.layer_responses import plot_fig7, response_stds  # JAX: only when needed

    stds = response_stds(workdir, num_images=num_images)
    if stds:
      save(plot_fig7(stds), "fig7.png")
    else:
      log("no checkpoints: fig7.png skipped")
    save_text(
        "# Table 6 (errors in %)\n\nThe paper's column: CIFAR-10 test error of He et al. (2016), Table 6, "
        "shown for CIFAR-10 runs"
        + (
            f" and for copy_of cifar10 runs, {paper.CIFAR10_COPY_NOTE}.\n\n"
            if runs["copy_of"].notna().any()
            else " only.\n\n"
        )
        + to_markdown(table6(workdir)),
        "table6.md",
    )
  imagenet = curves[curves["recipe"] == "imagenet"]
  if len(imagenet):
    save(plot_fig4(imagenet), "fig4.png")
    save_text(
        "# ImageNet (Tables 2-4; errors in %)\n\nThe runs' top-1/top-5: validation, single centre crop; "
        "the paper's: 10-crop (Tables 2-3) and multi-scale (Table 4).\n\n" + to_markdown(imagenet_table(workdir)),
        "imagenet.md",
    )
  else:
    log("no ImageNet runs: fig4.png and imagenet.md skipped")
  return written


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True, help="a sweep workdir (run directories inside) or one run directory")
  p.add_argument("--num_images", type=int, default=500, help="test images for Fig. 7")
  args = p.parse_args()
  for path in write_report(args.workdir, args.num_images):
    print(f"wrote {path}")


if __name__ == "__main__":
  main()
