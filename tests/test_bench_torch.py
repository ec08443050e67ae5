"""The PyTorch peer (src/bench_torch.py; PyTorch is optional, so this skips without it): it trains on an image
folder with the paper's schedule, writes the files src.main writes, stops on its time budget and resumes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.conftest import REPO  # noqa: E402


def test_peer_trains_stops_on_its_budget_and_resumes(tmp_path):
  from PIL import Image

  rng = np.random.default_rng(0)
  for split, n in (("train", 40), ("test", 10)):
    for c in ("a", "b", "c"):
      os.makedirs(tmp_path / "data" / split / c)
      for i in range(n):  # class c is brighter: learnable
        pixels = rng.integers(0, 100, (32, 32, 3)) + 60 * "abc".index(c)
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "data" / split / c / f"{i}.png")
  (tmp_path / "data" / "train" / ".ipynb_checkpoints").mkdir()  # hidden: not a class
  args = [sys.executable, "-m", "src.bench_torch", f"--image_dir={tmp_path / 'data'}", "--depth=8", "--steps=200"]
  args += ["--val_size=20", f"--workdir={tmp_path / 'run'}", "--threads=1", "--time_limit_minutes=0.01"]
  first = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  assert "time limit: saved the checkpoint of step 100" in first.stdout, first.stdout + first.stderr
  assert not (tmp_path / "run" / "result.json").exists()
  second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
  assert "resumed from" in second.stdout and "at step 100" in second.stdout, second.stdout + second.stderr
  rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [100, 200]
  assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.001])  # x0.1 after 50% (step 100) and 75% (150) of the steps
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  assert result["steps"] == 200 and result["test/error"] < 0.5  # 3 classes: chance is 0.67
  assert set(json.loads((tmp_path / "run" / "config.json").read_text())["boundaries"]) == {100, 150}
