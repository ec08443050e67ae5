"""Workdirs of runs -> tidy pandas tables and the paper's figures, so notebooks and src/report.py stay thin."""
from src.analysis.runs import load_metrics, load_runs, table6  # noqa: F401
