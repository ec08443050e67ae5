"""src/replicas.py: num_seeds = K trains K runs in one jitted program. Replica k is the run of seed + k (through a
resume), and results, analysis, evaluation and notebooks report mean +- std and the best over seeds."""

import json
import os

import jax
import matplotlib
import numpy as np
import pytest

from configs.common import cifar_recipe, imagenet_recipe
from src import config_check, paper, sweep
from src.analysis import load_metrics, load_runs, table6
from src.analysis.plots import plot_fig6
from src.checkpoint import load_saved_state
from src.errors import ConfigError
from src.metrics import read_metrics
from tests.conftest import run_main, tiny_cifar_args

matplotlib.use("Agg")
SEEDS = 3


@pytest.fixture(scope="module")
def runs(fake_cifar10_dir, tmp_path_factory):
  """A 3-seed ResNet-8 run, stopped at step 10 and resumed to 20; the single run of seed 1, 20 steps straight."""
  root = tmp_path_factory.mktemp("replicas")
  replicated, single = root / "seeds", root / "seed1"
  for steps in (10, 20):  # the replicated run resumes from its step-10 checkpoint (num_steps may change)
    run_main(tiny_cifar_args(fake_cifar10_dir, replicated, steps=20, num_seeds=SEEDS, num_steps=steps))
  run_main(tiny_cifar_args(fake_cifar10_dir, single, steps=20, seed=1))
  return str(replicated), str(single)


def test_replica_k_is_the_run_of_seed_plus_k_through_a_resume(runs):
  replicated, single = runs
  logged = read_metrics(os.path.join(replicated, "metrics.jsonl"))
  assert sorted({r["replica"] for r in logged}) == list(range(SEEDS))
  mine = [r for r in logged if r["replica"] == 1]
  alone = read_metrics(os.path.join(single, "metrics.jsonl"))
  assert [r["step"] for r in mine] == [r["step"] for r in alone] == [5, 10, 15, 20]
  for key in ("train/loss", "test/loss", "val/loss"):
    got = np.asarray([r[key] for r in mine if key in r])
    want = np.asarray([r[key] for r in alone if key in r])
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=key)
  # Parameters after 20 steps, relative to the largest parameter (the zero-initialised BN biases are sums of
  # updates alone).
  k, one = load_saved_state(replicated), load_saved_state(single)
  assert int(k["step"][1]) == int(one["step"]) == 20
  scale = max(float(np.abs(p).max()) for p in jax.tree.leaves(one["params"]))
  diff = max(
      float(np.abs(a[1] - b).max()) for a, b in zip(jax.tree.leaves(k["params"]), jax.tree.leaves(one["params"]))
  )
  assert diff <= 1e-5 * scale, diff / scale
  # The other replicas are other runs.
  assert not np.allclose(k["params"]["fc"]["kernel"][0], k["params"]["fc"]["kernel"][2])


def test_result_and_tables_give_mean_std_and_best(runs):
  replicated, single = runs
  result = json.load(open(os.path.join(replicated, "result.json")))
  each = [r["test/error"] for r in result["replicas"]]
  assert [r["seed"] for r in result["replicas"]] == [0, 1, 2] and result["num_seeds"] == SEEDS
  assert result["test/error"] == pytest.approx(np.mean(each))
  assert result["test/error_std"] == pytest.approx(np.std(each, ddof=1))
  assert result["test/error_min"] == min(each)
  assert result["params"] == json.load(open(os.path.join(single, "result.json")))["params"]  # one replica's
  row = load_runs(replicated).iloc[0]
  assert row["num_seeds"] == SEEDS and row["test/error_std"] == pytest.approx(100 * result["test/error_std"])
  t6 = table6(replicated)
  assert {"test/error_std", "test/error_min", "num_seeds"} <= set(t6.columns)
  fig = plot_fig6(load_metrics(replicated))
  assert any(ax.collections for ax in fig.axes)  # the band over seeds


def test_results_md_beside_table6_as_the_paper_prints_resnet110(tmp_path):
  common = {"dataset": "cifar10", "steps": 64000, "params": 1_700_000, "wall_time_s": 60}
  runs = [
      {
          "name": "resnet110",
          "model": "cifar_resnet110",
          "num_seeds": 5,
          "test/error": 0.0661,
          "test/error_std": 0.0016,
          "test/error_min": 0.0643,
          **common,
      }
  ]
  sweep.write_results(runs, str(tmp_path))
  md = (tmp_path / "results.md").read_text()
  assert "| 5 |" in md and "6.61 ± 0.16" in md and "| 6.43 |" in md  # ours: mean ± std, then the best
  runs_paper = paper.CIFAR_TEST_ERROR_RUNS["cifar_resnet110"]
  assert f"6.43 ({runs_paper[0]:.2f} ± {runs_paper[1]:.2f})" in md  # Table 6's own "best (mean ± std)"


def test_eval_mode_evaluates_every_replica(runs, fake_cifar10_dir):
  replicated, _ = runs
  run_main([*tiny_cifar_args(fake_cifar10_dir, replicated, steps=20, num_seeds=SEEDS), "--config.mode=eval"])
  out = json.load(open(os.path.join(replicated, "eval.json")))
  assert [m["replica"] for m in out["members"]] == list(range(SEEDS))
  center = out["results"]["center"]
  each = [r["top1_error"] for r in center["replicas"]]
  assert center["top1_error"] == pytest.approx(np.mean(each)) and center["top1_error_std"] == pytest.approx(
      np.std(each, ddof=1)
  )
  final = json.load(open(os.path.join(replicated, "result.json")))["replicas"]
  assert each == pytest.approx([r["test/error"] for r in final])  # the checkpoint of step 20, replica by replica


@pytest.mark.parametrize(
    "num_seeds,dataset,message",
    [
        (0, "cifar10", "config.num_seeds: must be a positive integer"),
        (2, "imagenet2012", "need a dataset held in memory"),
    ],
)
def test_bad_num_seeds_is_refused(num_seeds, dataset, message):
  c = cifar_recipe("cifar_resnet8") if dataset == "cifar10" else imagenet_recipe("resnet18")
  c.num_seeds = num_seeds
  with pytest.raises(ConfigError, match=message):
    config_check.validate(c)


@pytest.mark.parametrize("notebook", ["cifar_depth_sweep.ipynb", "layer_responses.ipynb"])
def test_notebooks_on_a_run_of_several_seeds(runs, notebook, monkeypatch):
  from tests.test_analysis import _execute

  outputs = _execute(notebook, runs[0], monkeypatch)
  assert not [o for o in outputs if o.get("output_type") == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)
