"""Loading a workdir (one run, or a sweep of runs in subdirectories) into tidy tables. Errors are in %."""

import json
import os
import re

import pandas as pd

from src import paper, replicas
from src.metrics import read_metrics

IMAGENET = "imagenet2012"  # config.data.name of ImageNet runs (Tables 2-4 give their paper numbers)


def recipe(config: dict, result: dict) -> str:
  """'imagenet' for runs of the ImageNet recipe (Sec. 3.4: imagenet2012, or an image folder read with
  data.pipeline='imagenet'; Fig. 4, Tables 2-4), else 'cifar' (Sec. 4.2: Fig. 1, 6, 7, Table 6)."""
  data = {**config.get("data", {}), **(result.get("data") or {})}
  imagenet = (result.get("dataset") or data.get("name")) == IMAGENET or data.get("pipeline") == "imagenet"
  return "imagenet" if imagenet else "cifar"


def run_dirs(workdir: str) -> list:
  """Run directories under `workdir` (itself, if it is a run): those with a metrics.jsonl."""
  if os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return [workdir]
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"No such workdir: {workdir}")
  return sorted(
      os.path.join(workdir, d) for d in os.listdir(workdir) if os.path.exists(os.path.join(workdir, d, "metrics.jsonl"))
  )


def _json(path):
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def describe(model_name: str) -> dict:
  """'cifar_plain56' -> net 'plain', depth 56 (the registry's names; see src/models); the PyTorch peer's
  'pytorch_cifar_resnet20' (src/bench_torch.py) -> 'resnet', 20."""
  m = re.fullmatch(r"(pytorch_)?(cifar_)?(resnet|plain|vgg)(\d+)", model_name)
  return {"net": m.group(3), "depth": int(m.group(4))} if m else {"net": model_name, "depth": None}


def _is_error(key: str) -> bool:
  # train/error, val/error, test/error, val/top5_error, ...; over several seeds also test/error_std, test/error_min
  return "/" in key and key.endswith(("error", "error_std", "error_min"))


def _newest(rows: list) -> dict:
  """The newest value of each metric in metrics.jsonl rows (an unfinished run's latest numbers); over several seeds
  (rows with a 'replica'), each replica's newest, then their mean, std and min (src.replicas.summary)."""
  per_replica = {}
  for r in rows:
    per_replica.setdefault(r.get("replica", 0), {}).update(r)
  if len(per_replica) <= 1:
    return next(iter(per_replica.values()), {})
  runs = list(per_replica.values())
  return {"step": max(r.get("step", 0) for r in runs), **replicas.summary(runs)}


def load_runs(workdir: str) -> pd.DataFrame:
  """One row per run: run (its directory name), name, model, net (plain/resnet), depth, shortcut, dataset,
  recipe ('cifar' or 'imagenet', `recipe`), copy_of ('cifar10' for an image folder holding CIFAR-10, from
  result.json: known once the run has finished), params, steps, finished, wall_time_s, the final errors and, for
  CIFAR-10 runs and finished runs on a CIFAR-10 copy, Table 6's test error (src.paper.cifar_test_error)."""
  rows = []
  for d in run_dirs(workdir):
    config, result = _json(os.path.join(d, "config.json")), _json(os.path.join(d, "result.json"))
    model = result.get("model") or config.get("model", {}).get("name", "")
    dataset = result.get("dataset") or config.get("data", {}).get("name")
    last = _newest(read_metrics(os.path.join(d, "metrics.jsonl")))  # unfinished runs: their newest numbers
    last.update({k: v for k, v in result.items() if _is_error(k)})  # a finished run's own final numbers win
    run = os.path.basename(os.path.normpath(d))
    row = {
        "run": run,
        "name": result.get("name") or config.get("name") or run,
        "dir": d,
        "model": model,
        **describe(model),
        "shortcut": config.get("model", {}).get("shortcut"),
        "dataset": dataset,
        "recipe": recipe(config, result),
        "copy_of": (result.get("data") or {}).get("copy_of"),
        "params": result.get("params"),
        "num_seeds": result.get("num_seeds", config.get("num_seeds", 1)),
        "steps": result.get("steps", last.get("step")),
        "finished": bool(result),
        "wall_time_s": result.get("wall_time_s"),
    }
    row.update({k: 100 * v for k, v in sorted(last.items()) if _is_error(k)})
    # Table 6 is CIFAR-10: beside a run on other data (mnist5k) it would mislead.
    row["paper test/error"] = paper.cifar_test_error({"model": model, "dataset": dataset, "data": result.get("data")})
    rows.append(row)
  return pd.DataFrame(rows)


def load_metrics(workdir: str) -> pd.DataFrame:
  """Every logged row of every run, wide: run, net, depth, dataset, recipe, step, then one column per metric as in
  metrics.jsonl (train/error every log_every steps; val/ and test/ columns only at evaluations, else NaN; a
  'replica' column in runs of several seeds, one row per replica and step)."""
  frames = []
  for run in load_runs(workdir).itertuples():
    df = pd.DataFrame(read_metrics(os.path.join(run.dir, "metrics.jsonl")))
    for col in df.columns:
      if _is_error(col):
        df[col] = 100 * df[col]
    for i, (key, value) in enumerate(
        (
            ("run", run.run),
            ("net", run.net),
            ("depth", run.depth),
            ("dataset", run.dataset),
            ("recipe", run.recipe),
        )
    ):
      df.insert(i, key, value)
    frames.append(df)
  return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def table6(workdir: str) -> pd.DataFrame:
  """Table 6: each run's test error beside the paper's (only CIFAR-10 ResNets have a paper number). Where a run's
  data is an image-folder copy of CIFAR-10, a `copy_of` column says so: its errors are expected somewhat above
  the paper's (src.paper.CIFAR10_COPY_NOTE). Runs of several seeds give the mean over them, `test/error_std` and
  the best, `test/error_min`: Table 6 gives ResNet-110 as best (mean +- std) of 5 runs, 6.43 (6.61 +- 0.16)."""
  runs = load_runs(workdir)
  runs = runs[runs["recipe"] == "cifar"].sort_values(["net", "depth"])
  cols = ["run", "model", "dataset", "params", "steps", "train/error", "val/error", "test/error", "paper test/error"]
  if (runs["num_seeds"] > 1).any():
    cols[cols.index("test/error") + 1 : cols.index("test/error") + 1] = ["test/error_std", "test/error_min"]
    cols.insert(cols.index("steps"), "num_seeds")
  if runs["copy_of"].notna().any():
    cols.insert(3, "copy_of")
  out = runs[[c for c in cols if c in runs]].reset_index(drop=True)
  out["params"] = out["params"].map(_millions)
  return out


def _millions(p):
  return "-" if p is None or p != p else f"{p / 1e6:.2f}M"


def imagenet_table(workdir: str) -> pd.DataFrame:
  """Tables 2-4: each run of the ImageNet recipe's validation top-1 (and top-5, where logged) beside the paper's
  10-crop and multi-scale numbers (for imagenet2012 runs only: beside a folder of other photos they would
  mislead). The training-time errors are single centre-crop; where the run was evaluated with
  `--config.mode=eval` (eval.json), its 10-crop and multi-scale errors stand beside the paper's."""
  runs = load_runs(workdir)
  runs = runs[runs["recipe"] == "imagenet"].sort_values(["net", "depth"]) if len(runs) else runs
  rows = []
  for r in runs.to_dict("records"):
    key = paper.imagenet_key(r["model"], r["shortcut"]) if r["dataset"] == IMAGENET else None
    top5 = next((r[k] for k in r if k.startswith("val/top5") and r[k] == r[k]), None)
    ten, multi = paper.IMAGENET_10CROP.get(key, (None, None)), paper.IMAGENET_MULTISCALE.get(key, (None, None))
    evals = _json(os.path.join(r["dir"], "eval.json")).get("results", {})
    measured = {
        f"{label} {k}": (100 * evals[protocol][f"{k.replace('-', '')}_error"] if protocol in evals else None)
        for protocol, label in (("ten_crop", "10-crop"), ("multiscale", "multi-scale"))
        for k in ("top-1", "top-5")
    }
    rows.append(
        {
            "run": r["run"],
            "model": r["model"],
            "shortcut": r["shortcut"],
            "params": _millions(r["params"]),
            "steps": r["steps"],
            "top-1": r.get("val/error"),
            "top-5": top5,
            "10-crop top-1": measured["10-crop top-1"],
            "paper 10-crop top-1": ten[0],
            "10-crop top-5": measured["10-crop top-5"],
            "paper 10-crop top-5": ten[1],
            "multi-scale top-1": measured["multi-scale top-1"],
            "paper multi-scale top-1": multi[0],
            "multi-scale top-5": measured["multi-scale top-5"],
            "paper multi-scale top-5": multi[1],
        }
    )
  return pd.DataFrame(rows)


def paper_imagenet() -> pd.DataFrame:
  """The paper's ImageNet numbers (Tables 2-4, top-1 / top-5 validation error in %), from src.paper."""
  return pd.DataFrame(
      [
          {
              "net": k,
              "10-crop top-1": v[0],
              "10-crop top-5": v[1],
              "multi-scale top-1": paper.IMAGENET_MULTISCALE.get(k, (None, None))[0],
              "multi-scale top-5": paper.IMAGENET_MULTISCALE.get(k, (None, None))[1],
          }
          for k, v in paper.IMAGENET_10CROP.items()
      ]
  )


def to_markdown(df: pd.DataFrame) -> str:
  """A Markdown table without the optional `tabulate` dependency."""

  def cell(v):
    if v is None or (isinstance(v, float) and v != v):
      return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)

  lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
  return "\n".join(lines) + "\n"
