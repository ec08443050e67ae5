"""The benchmark command runs and reports sane numbers; the train step compiles once and never again."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import cifar_recipe
from src import models, parallel
from src import step as train_steps
from tests.conftest import REPO


def test_bench_command_reports_every_column():
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "src.bench",
          "--models",
          "cifar_resnet8",
          "--batch",
          "16",
          "--steps",
          "2",
          "--steps_per_call",
          "1,2",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(l) for l in proc.stdout.splitlines() if l.startswith("{")]
  assert [r["steps_per_call"] for r in rows] == [1, 2]
  assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"]  # per step, loops counted in full
  for r in rows:
    assert r["compile_s"] > 0 and r["step_ms"] > 0 and r["flops_per_step"] > 1e8 and r["peak_memory_mb"] > 0
    np.testing.assert_allclose(r["images_per_sec"], 16 / (r["step_ms"] / 1e3), rtol=0.02)
    assert r["pipeline_images_per_sec"] > 0 and r["pipeline_vs_device"] > 0
  assert "images_per_sec" in proc.stdout.splitlines()[-len(rows) - 1]  # the table's header


def test_train_step_never_recompiles():
  config = cifar_recipe("cifar_resnet8")
  config.schedule.boundaries = (2, 4)  # lr changes and the warm-up switch are traced values: no recompiles
  config.schedule.warmup_lr, config.schedule.warmup_max_steps = 0.01, 3
  mesh, model = parallel.make_mesh(), models.model_from_config(config.model, num_classes=10)
  state, tx = train_steps.create_state(config, model, (32, 32, 3), mesh)
  rep = parallel.replicated(mesh)
  compiles = []
  step = jax.jit(
      train_steps.make_train_step(config, model, tx, jnp.zeros((32, 32, 3))), donate_argnums=0, out_shardings=(rep, rep)
  )
  rng = np.random.default_rng(0)
  lrs = []
  with jax.log_compiles(True):
    import logging

    handler = logging.Handler()
    handler.emit = lambda record: compiles.append(record.getMessage())
    logging.getLogger("jax._src.interpreters.pxla").addHandler(handler)
    logging.getLogger("jax._src.dispatch").addHandler(handler)
    try:
      for _ in range(6):
        batch = {
            "image": rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, (64,)).astype(np.int32),
        }
        state, m = step(state, parallel.global_batch(batch, mesh))
        lrs.append(float(m["lr"]))
    finally:
      logging.getLogger("jax._src.interpreters.pxla").removeHandler(handler)
      logging.getLogger("jax._src.dispatch").removeHandler(handler)
  assert len(set(np.round(lrs, 6))) >= 2  # the lr did change across the steps
  assert step._cache_size() == 1
  assert sum(c.startswith("Finished XLA compilation of jit(train_step)") for c in compiles) == 1, compiles
