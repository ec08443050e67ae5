"""Workdirs of runs -> tidy pandas tables and the paper's figures, so notebooks and src/report.py stay thin.

runs.py            load_runs, load_metrics, table6, imagenet_table, paper_imagenet, to_markdown
plots.py           plot_fig1, plot_fig4, plot_fig6 (matplotlib figures from load_metrics)
layer_responses.py layer_response_std, response_stds, plot_fig7 (Fig. 7 from checkpoints; imports JAX)
"""

from src.analysis.runs import imagenet_table, load_metrics, load_runs, paper_imagenet, table6, to_markdown  # noqa: F401
