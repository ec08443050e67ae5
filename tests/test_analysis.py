"""Tables, figures, the report command and every notebook, on a small sweep made by the real train loop."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import nbformat
import numpy as np
import pandas as pd
import pytest
from nbclient import NotebookClient
from PIL import Image

from src import paper
from src.analysis import imagenet_table, load_metrics, load_runs, table6
from src.analysis.layer_responses import layer_response_std, ordered_responses
from src.metrics import read_metrics
from src.models import get_model
from tests.conftest import REPO, run_main, tiny_cifar_args

RUNS = ["plain8", "plain14", "resnet8", "resnet14"]
NOTEBOOKS = sorted(n for n in os.listdir(os.path.join(REPO, "notebooks")) if n.endswith(".ipynb"))


@pytest.fixture(scope="module")
def sweep(fake_cifar10_dir, tmp_path_factory):
  """The 4-run depth sweep (plain/ResNet-8/14), 20 steps each on the fake CIFAR-10: about a minute."""
  workdir = tmp_path_factory.mktemp("analysis") / "sweep"
  args = tiny_cifar_args(fake_cifar10_dir, workdir, steps=20)
  args[0] = "--config=configs/cifar_depth_sweep.py:depths=8-14"
  run_main(args)
  return str(workdir)


@pytest.fixture(scope="module")
def imagenet_workdir(tmp_path_factory):
  """Two ImageNet-like runs written by hand (no ImageNet here): what Fig. 4 and Tables 2-4 read."""
  workdir = tmp_path_factory.mktemp("imagenet")
  for run, model, data in (
      ("plain18", "plain18", {"name": "imagenet2012"}),
      ("resnet34", "resnet34", {"name": "imagenet2012"}),
      ("photos34", "resnet34", {"name": "image_folder", "pipeline": "imagenet"}),  # the ImageNet recipe on photos
  ):
    d = workdir / run
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"name": run, "data": data, "model": {"name": model, "shortcut": "B"}}))
    rows = [{"step": s, "train/error": 0.9 - s / 2000} for s in range(100, 1001, 100)]
    for r in rows[1::2]:
      r.update({"val/error": r["train/error"] + 0.05, "val/top5_error": r["train/error"] - 0.2})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "result.json").write_text(
        json.dumps(
            {"name": run, "model": model, "dataset": data["name"], "steps": 1000, "params": 21_800_000, **rows[-1]}
        )
    )
  evaluated = {"ten_crop": {"top1_error": 0.25, "top5_error": 0.08, "count": 50000}}  # as src.evaluate writes it
  (workdir / "resnet34" / "eval.json").write_text(json.dumps({"members": [], "split": "val", "results": evaluated}))
  return str(workdir)


def test_tables_hold_the_runs_numbers(sweep):
  runs = load_runs(sweep).set_index("run")
  assert sorted(runs.index) == sorted(RUNS)
  for name in RUNS:
    result = json.load(open(os.path.join(sweep, name, "result.json")))
    for key in ("train/error", "val/error", "test/error"):
      assert runs.loc[name, key] == pytest.approx(100 * result[key])
    assert runs.loc[name, "params"] == result["params"] and runs.loc[name, "steps"] == 20
    net, depth = re.fullmatch(r"(plain|resnet)(\d+)", name).groups()
    assert (runs.loc[name, "net"], runs.loc[name, "depth"]) == (net, int(depth))
  curves = load_metrics(sweep)
  assert set(curves["run"]) == set(RUNS)
  for name in RUNS:  # every logged row, errors in %
    logged = read_metrics(os.path.join(sweep, name, "metrics.jsonl"))
    mine = curves[curves["run"] == name].sort_values("step")
    assert list(mine["step"]) == [r["step"] for r in logged] == [5, 10, 15, 20]
    assert np.allclose(mine["train/error"], [100 * r["train/error"] for r in logged])
    evals = mine.dropna(subset=["test/error"])
    assert list(evals["step"]) == [10, 20]
    assert np.allclose(evals["test/error"], [100 * r["test/error"] for r in logged if "test/error" in r])
  t6 = table6(sweep)
  assert sorted(t6["run"]) == sorted(RUNS) and t6["paper test/error"].isna().all()  # no 8/14 in Table 6


def test_table6_carries_the_papers_number(tmp_path):
  # Runs that claim to be CIFAR-10 ResNet-56 and -110 get the paper's numbers beside them; mnist5k gets none.
  for run, model, dataset in (
      ("resnet56", "cifar_resnet56", "cifar10"),
      ("resnet110", "cifar_resnet110", "cifar10"),
      ("digits", "cifar_resnet20", "mnist5k"),
  ):
    (tmp_path / run).mkdir()
    (tmp_path / run / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/error": 0.5, "test/error": 0.1}))
    (tmp_path / run / "result.json").write_text(json.dumps({"model": model, "dataset": dataset, "params": 1}))
  t6 = table6(str(tmp_path)).set_index("run")
  assert t6.loc["resnet56", "paper test/error"] == paper.CIFAR_TEST_ERROR["cifar_resnet56"]
  assert t6.loc["resnet110", "paper test/error"] == paper.CIFAR_TEST_ERROR["cifar_resnet110"]
  assert t6.loc["digits", "paper test/error"] is None or np.isnan(t6.loc["digits", "paper test/error"])


def test_fig6_draws_two_runs_of_one_depth_as_two_curves(tmp_path):
  """A ResNet-20 at two lengths and the PyTorch peer's in one workdir (as docs/runs): three curves, each its own
  run's steps in order, not one curve zig-zagging between them."""
  import matplotlib

  matplotlib.use("Agg")
  from src.analysis.plots import plot_fig6

  for run, model, steps in (
      ("r20-8k", "cifar_resnet20", 8),
      ("r20-16k", "cifar_resnet20", 16),
      ("peer", "pytorch_cifar_resnet20", 16),
      ("r56", "cifar_resnet56", 8),
  ):
    d = tmp_path / run
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": {"name": model}, "data": {"name": "image_folder"}}))
    rows = [{"step": s * 1000, "train/error": 0.5 / s, "test/error": 0.6 / s} for s in range(1, steps + 1)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  curves = load_metrics(str(tmp_path))
  assert set(curves.loc[curves["run"] == "peer", "net"]) == {"resnet"}
  fig = plot_fig6(curves)
  assert len(fig.axes) == 1 and fig.axes[0].get_title() == "ResNets"  # no empty plain-net panel beside it
  ax = fig.axes[0]
  labels = sorted(ax.get_legend_handles_labels()[1])
  assert labels == ["ResNet-20 (peer)", "ResNet-20 (r20-16k)", "ResNet-20 (r20-8k)", "ResNet-56"]
  bold = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
  assert sorted(len(line.get_xdata()) for line in bold) == [8, 8, 16, 16]
  assert all((np.diff(line.get_xdata()) > 0).all() for line in bold)
  assert len({line.get_color() for line in bold}) == 4


def test_imagenet_table_beside_the_paper(imagenet_workdir):
  t = imagenet_table(imagenet_workdir).set_index("run")
  assert t.loc["resnet34", "top-1"] == pytest.approx(100 * (0.9 - 0.5 + 0.05))  # the final val/error, in %
  assert t.loc["resnet34", "top-5"] == pytest.approx(100 * (0.9 - 0.5 - 0.2))
  assert (t.loc["resnet34", "paper 10-crop top-1"], t.loc["resnet34", "paper 10-crop top-5"]) == paper.IMAGENET_10CROP[
      "resnet34:B"
  ]  # ResNet-34 is looked up by its shortcut option
  assert t.loc["resnet34", "paper multi-scale top-1"] == paper.IMAGENET_MULTISCALE["resnet34:B"][0]
  assert t.loc["plain18", "paper 10-crop top-1"] == paper.IMAGENET_10CROP["plain18"][0]
  assert (t.loc["resnet34", "10-crop top-1"], t.loc["resnet34", "10-crop top-5"]) == (25.0, 8.0)  # from eval.json
  assert pd.isna(t.loc["plain18", "10-crop top-1"]) and pd.isna(t.loc["resnet34", "multi-scale top-1"])
  # The ImageNet recipe on a folder of photos: in Tables 2-4 and Fig. 4, not Table 6, and without ImageNet's numbers.
  assert t.loc["photos34", "top-1"] == t.loc["resnet34", "top-1"] and pd.isna(t.loc["photos34", "paper 10-crop top-1"])
  assert table6(imagenet_workdir).empty


def test_layer_responses_one_std_per_3x3_layer(sweep):
  for name, depth in (("plain8", 8), ("resnet14", 14)):
    stds, names = layer_response_std(os.path.join(sweep, name), num_images=64, return_names=True)
    n = (depth - 2) // 6
    assert len(stds) == 1 + 2 * 3 * n == depth - 1  # conv1 + 2 per block; the FC is not a 3x3 layer
    assert names[:3] == ["conv1", "stage1/block0/conv1", "stage1/block0/conv2"]
    assert np.all(np.isfinite(stds)) and np.all(stds > 0)


@pytest.mark.parametrize("scan", [False, True])
def test_layer_order_is_the_call_order(scan):
  # 12 blocks a stage: unrolled, jit hands back 'block10' before 'block2' in sorted dicts; scanned, the
  # blocks sit on a leading axis. Both must come out as block0, 1, 2, ..., 11.
  model = get_model("cifar_plain74", scan=scan)
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x, train=False)
  inter = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["intermediates"])[1]["intermediates"])(variables)
  names = [n for n, _ in ordered_responses(inter)]
  block = "blocks[{}]".format if scan else "block{}".format
  expected = ["conv1"] + [
      f"stage{s}/{block0}/conv{c}"
      for s in (1, 2, 3)
      for block0 in ["block0"] + [block(i - 1 if scan else i) for i in range(1, 12)]
      for c in (1, 2)
  ]
  assert names == expected


def _check_png(path):
  image = Image.open(path).convert("RGB")
  assert image.size[0] > 300 and image.size[1] > 200 and os.path.getsize(path) > 10_000, path
  assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 50, path  # coloured lines, not a blank canvas


def _report(workdir):
  proc = subprocess.run(
      [sys.executable, "-m", "src.report", f"--workdir={workdir}", "--num_images=64"],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_report_writes_nontrivial_figures(sweep):
  out = _report(sweep)
  for name in ("fig1.png", "fig6.png", "fig7.png", "table6.md"):
    assert f"wrote {os.path.join(sweep, name)}" in out
  for name in ("fig1.png", "fig6.png", "fig7.png"):
    _check_png(os.path.join(sweep, name))
  md = open(os.path.join(sweep, "table6.md")).read()
  assert all(f"| {r} |" in md for r in RUNS)
  assert not os.path.exists(os.path.join(sweep, "fig4.png")) and "no ImageNet runs" in out


def test_report_on_imagenet_runs(imagenet_workdir):
  out = _report(imagenet_workdir)
  _check_png(os.path.join(imagenet_workdir, "fig4.png"))
  md = open(os.path.join(imagenet_workdir, "imagenet.md")).read()
  assert "| resnet34 | resnet34 | B |" in md and "24.52" in md  # the paper's ResNet-34 B beside the run
  assert "fig6.png" not in out and "table6.md" not in out  # the CIFAR figures need CIFAR-style runs


def _execute(notebook, workdir, monkeypatch):
  nb = nbformat.read(os.path.join(REPO, "notebooks", notebook), as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "commit without outputs"
  assert "parameters" in code[0].metadata.get("tags", []) and "workdir =" in code[0].source
  monkeypatch.setenv("RESNET_WORKDIR", workdir)
  NotebookClient(
      nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}
  ).execute()  # raises on a failed cell
  return [o for c in nb.cells for o in c.get("outputs", [])]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_notebook_executes(sweep, notebook, monkeypatch):
  outputs = _execute(notebook, sweep, monkeypatch)
  assert not [o for o in outputs if o.get("output_type") == "error"]
  if notebook != "imagenet.ipynb":  # the figures are drawn inline, not lost to a non-interactive backend
    assert any("image/png" in o.get("data", {}) for o in outputs)


def test_imagenet_notebook_on_imagenet_runs(imagenet_workdir, monkeypatch):
  outputs = _execute("imagenet.ipynb", imagenet_workdir, monkeypatch)
  assert any("image/png" in o.get("data", {}) for o in outputs)  # Fig. 4
  assert any("3 runs of the ImageNet recipe" in o.get("text", "") for o in outputs)
