"""A sweep: several runs of one config, each in `<workdir>/<name>/`, then a results table beside the paper's.

`config.sweep` is a list of {"name": ..., <dotted field>: value, ...} overrides. Runs that finished
(result.json present) are skipped, so a sweep started again continues at the run it was in.
"""

import copy
import csv
import json
import os

from src import paper
from src.config_check import validate
from src.parallel import Preemption
from src.train import train_and_evaluate


def run_config(config, overrides: dict):
  """The config of one run: `config` without its sweep, with dotted-name overrides applied."""
  run = copy.deepcopy(config)
  with run.unlocked():
    del run["sweep"]
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    target = run
    for part in parents:
      target = target[part]
    if leaf not in target:
      raise KeyError(f"sweep override {key!r}: no such config field.")
    target[leaf] = value
  return run


def run_sweep(config, workdir: str, log=print):
  runs = [run_config(config, overrides) for overrides in config.sweep]
  for run in runs:  # every run's config is checked before the first one starts
    validate(run)
  results = []
  # One SIGTERM handler and one time budget for the whole sweep: a signal between two runs stops the next.
  preempt = Preemption(time_limit_minutes=config.time_limit_minutes)
  try:
    for i, run in enumerate(runs):
      run_dir = os.path.join(workdir, run.name)
      result_path = os.path.join(run_dir, "result.json")
      if os.path.exists(result_path):
        with open(result_path) as f:
          results.append(json.load(f))
        log(f"[{i + 1}/{len(runs)}] {run.name}: done already, skipped.")
        continue
      log(f"[{i + 1}/{len(runs)}] {run.name}: training {run.model.name} for {run.num_steps} steps in {run_dir}")
      results.append(train_and_evaluate(run, run_dir, preempt))
  finally:
    preempt.restore()
  write_results(results, workdir)
  return results


COLUMNS = (
    "name",
    "model",
    "params",
    "steps",
    "num_seeds",
    "train/error",
    "val/error",
    "test/error",
    "best test/error",
    "paper test error",
    "wall_time_s",
)
# With several seeds (src/replicas.py) the error columns are means over replicas; their stds go to the CSV too.
STD_COLUMNS = ("train/error_std", "val/error_std", "test/error_std")


COPY_MARK = "†"  # beside Table 6's number: the run's data is an image-folder copy of CIFAR-10


def write_results(results, workdir: str):
  """Writes <workdir>/results.csv and results.md: one row per run (its result.json), Table 6's test error beside
  CIFAR-10 runs (src.paper.cifar_test_error). Runs on an image-folder copy of CIFAR-10 get the paper's number
  marked with a dagger and a note (errors expected somewhat above Table 6); the CSV names each run's data."""
  rows, copies = [], []
  for r in results:
    row = {k: r.get(k) for k in COLUMNS + STD_COLUMNS}
    row["num_seeds"] = r.get("num_seeds", 1)
    # Best over replicas, as Table 6 gives ResNet-110's best of 5 runs; with one seed, the run's own.
    row["best test/error"] = r.get("test/error_min", r.get("test/error"))
    # Table 6 is CIFAR-10: beside a run on other data (mnist5k) it would mislead.
    row["paper test error"] = paper.cifar_test_error(r)
    copy = paper.cifar10_data(r) == "copy"
    row["data"] = f"{r.get('dataset')} (CIFAR-10 copy)" if copy else r.get("dataset")
    if copy:
      copies.append((r.get("data") or {}).get("dir"))
    rows.append((row, copy))
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=COLUMNS + STD_COLUMNS + ("data",))
    w.writeheader()
    w.writerows(row for row, _ in rows)

  def fmt(key, v, copy, row):
    reference = paper.net_test_error(row["model"]) if key == "paper test error" and v is None else None
    if reference is not None:  # other data (mnist5k): the net's CIFAR-10 number, marked as not comparable
      return f"({reference:.2f} on CIFAR-10)"
    if v is None:
      return "-"
    if key == "paper test error":
      runs = paper.CIFAR_TEST_ERROR_RUNS.get(row["model"])
      spread = f" ({runs[0]:.2f} ± {runs[1]:.2f})" if runs else ""
      return f"{v:.2f}" + (COPY_MARK if copy else "") + spread
    if key.endswith("/error") and row["num_seeds"] > 1 and row.get(key + "_std") is not None:
      return f"{100 * v:.2f} ± {100 * row[key + '_std']:.2f}"
    if key.endswith("/error"):
      return f"{100 * v:.2f}"
    if key == "params":
      return f"{v / 1e6:.2f}M"
    if key == "wall_time_s":
      return f"{v / 60:.1f} min"
    return str(v)

  header = [
      "run",
      "model",
      "params",
      "steps",
      "seeds",
      "train err %",
      "val err %",
      "test err %",
      "best test err %",
      "paper test err %",
      "wall time",
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(fmt(k, row[k], copy, row) for k in COLUMNS) + " |" for row, copy in rows]
  with open(os.path.join(workdir, "results.md"), "w", encoding="utf-8") as f:
    datasets = sorted({str(row["data"]) for row, _ in rows})
    f.write(
        f"# Results ({', '.join(datasets)})\n\nFinal errors of each run (with several seeds: mean ± std over "
        "them, and the best, as Table 6 reports ResNet-110: best (mean ± std) of 5 runs); the paper's column is "
        "Table 6 (CIFAR-10 test error; for pre-activation nets Identity Mappings' Table 3), shown for CIFAR-10 runs"
        + (f" and, marked {COPY_MARK}, for runs on an image-folder copy of CIFAR-10" if copies else "")
        + "; beside runs on other data, in brackets, for reference only: other data, another difficulty.\n\n"
    )
    if copies:
      dirs = ", ".join(sorted({str(d) for d in copies}))
      f.write(f"{COPY_MARK} Runs {paper.CIFAR10_COPY_NOTE} (data: {dirs}).\n\n")
    f.write("\n".join(lines) + "\n")
