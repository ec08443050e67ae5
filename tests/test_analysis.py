"""Tables, figures, the report command and every notebook, on a small sweep made by the real train loop."""
import json
import os
import subprocess
import sys

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from PIL import Image

from src import paper
from src.analysis import load_metrics, load_runs, table6
from src.analysis.layer_responses import layer_response_std
from tests.conftest import REPO, run_main, tiny_cifar_args

RUNS = ["plain8", "plain14", "resnet8", "resnet14"]


@pytest.fixture(scope="module")
def sweep(fake_cifar10_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("analysis") / "sweep"
  args = tiny_cifar_args(fake_cifar10_dir, workdir, steps=20)
  args[0] = "--config=configs/cifar_depth_sweep.py:depths=8-14"
  run_main(args)
  return str(workdir)


def test_tables_hold_the_runs_numbers(sweep):
  runs = load_runs(sweep).set_index("run")
  assert sorted(runs.index) == sorted(RUNS)
  for name in RUNS:
    result = json.load(open(os.path.join(sweep, name, "result.json")))
    assert runs.loc[name, "test/error"] == pytest.approx(100 * result["test/error"])
    assert runs.loc[name, "params"] == result["params"] and runs.loc[name, "depth"] in (8, 14)
  curves = load_metrics(sweep)
  assert set(curves["run"]) == set(RUNS) and curves.groupby("run")["step"].max().eq(20).all()
  t6 = table6(sweep)
  assert list(t6.columns)[-1] == "paper test/error" and t6["paper test/error"].isna().all()  # no 8/14 in Table 6


def test_table6_carries_the_papers_number(sweep, tmp_path):
  # A run that claims to be a CIFAR-10 ResNet-56 gets the paper's 6.97 beside it.
  run = tmp_path / "resnet56"
  run.mkdir()
  (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/error": 0.5, "test/error": 0.1}) + "\n")
  (run / "result.json").write_text(json.dumps({"model": "cifar_resnet56", "dataset": "cifar10", "params": 853018}))
  assert table6(str(tmp_path)).loc[0, "paper test/error"] == paper.CIFAR_TEST_ERROR["cifar_resnet56"]


def test_layer_responses_one_std_per_3x3_layer(sweep):
  for name, depth in (("plain8", 8), ("resnet14", 14)):
    stds = layer_response_std(os.path.join(sweep, name), num_images=64)
    assert len(stds) == depth - 1  # conv1 + 6n 3x3 layers in the stages (the FC is not a 3x3 layer)
    assert np.all(np.isfinite(stds)) and np.all(stds > 0)


def test_report_writes_nontrivial_figures(sweep):
  proc = subprocess.run([sys.executable, "-m", "src.report", f"--workdir={sweep}", "--num_images=64"], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name in ("fig1.png", "fig6.png", "fig7.png"):
    path = os.path.join(sweep, name)
    image = Image.open(path).convert("RGB")
    assert image.size[0] > 300 and image.size[1] > 200 and os.path.getsize(path) > 10_000
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 50  # coloured lines, not a blank canvas
  md = open(os.path.join(sweep, "table6.md")).read()
  assert all(f"| {r} |" in md for r in RUNS)


@pytest.mark.parametrize("notebook", sorted(n for n in os.listdir(os.path.join(REPO, "notebooks"))
                                            if n.endswith(".ipynb")))
def test_notebook_executes(sweep, notebook, monkeypatch):
  path = os.path.join(REPO, "notebooks", notebook)
  nb = nbformat.read(path, as_version=4)
  assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
  monkeypatch.setenv("RESNET_WORKDIR", sweep)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
  errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
  assert not errors
