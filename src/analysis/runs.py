"""Loading a workdir (one run, or a sweep of runs in subdirectories) into tidy tables."""
import json
import os
import re

import pandas as pd

from src import paper
from src.metrics import read_metrics


def run_dirs(workdir: str) -> list:
  """Run directories under `workdir` (itself, if it is a run): those with a metrics.jsonl."""
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return [workdir]
  return sorted(os.path.join(workdir, d) for d in os.listdir(workdir)
                if os.path.exists(os.path.join(workdir, d, "metrics.jsonl")))


def _json(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def describe(model_name: str) -> dict:
  m = re.fullmatch(r"(cifar_)?(resnet|plain|vgg)(\d+)", model_name)
  return {"net": m.group(2), "depth": int(m.group(3))} if m else {"net": model_name, "depth": None}


def load_runs(workdir: str) -> pd.DataFrame:
  """One row per run: name, model, net (plain/resnet), depth, dataset, params, steps, final errors and,
  for CIFAR-10 ResNets, the paper's Table 6 test error (in %)."""
  rows = []
  for d in run_dirs(workdir):
    config, result = _json(os.path.join(d, "config.json")), _json(os.path.join(d, "result.json"))
    model = result.get("model") or config.get("model", {}).get("name", "")
    dataset = result.get("dataset") or config.get("data", {}).get("name")
    metrics = read_metrics(os.path.join(d, "metrics.jsonl"))
    last = {}
    for r in metrics:  # the newest value of each metric
      last.update(r)
    row = {"run": os.path.basename(os.path.normpath(d)), "dir": d, "model": model, **describe(model),
           "dataset": dataset, "params": result.get("params"), "steps": last.get("step"),
           "finished": bool(result), "wall_time_s": result.get("wall_time_s")}
    for key in ("train/error", "val/error", "test/error", "test/top5_error"):
      if key in last:
        row[key] = 100 * last[key]
    row["paper test/error"] = paper.CIFAR_TEST_ERROR.get(model) if dataset == "cifar10" else None
    rows.append(row)
  return pd.DataFrame(rows)


def load_metrics(workdir: str) -> pd.DataFrame:
  """Every logged row of every run, wide: run, net, depth, step, and one column per metric (errors in %)."""
  frames = []
  for run in load_runs(workdir).itertuples():
    df = pd.DataFrame(read_metrics(os.path.join(run.dir, "metrics.jsonl")))
    for col in df.columns:
      if col.endswith("error"):
        df[col] = 100 * df[col]
    df.insert(0, "run", run.run)
    df.insert(1, "net", run.net)
    df.insert(2, "depth", run.depth)
    frames.append(df)
  return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table6(workdir: str) -> pd.DataFrame:
  """Table 6: each run's test error beside the paper's (CIFAR-10 runs only carry the paper's number)."""
  runs = load_runs(workdir).sort_values(["net", "depth"])
  cols = ["run", "model", "params", "steps", "train/error", "val/error", "test/error", "paper test/error"]
  out = runs[[c for c in cols if c in runs]].reset_index(drop=True)
  out["params"] = out["params"].map(lambda p: f"{p / 1e6:.2f}M" if p == p and p is not None else "-")
  return out


def to_markdown(df: pd.DataFrame) -> str:
  """A Markdown table without the optional `tabulate` dependency."""
  def cell(v):
    if v is None or (isinstance(v, float) and v != v):
      return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)
  lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
  return "\n".join(lines) + "\n"
