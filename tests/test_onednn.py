"""src/models/onednn.py: the oneDNN convolution is the ordinary convolution, gradients included, in a model, in a
scan and across processes; and a missing oneDNN gives a clear error (conv_impl='onednn') or the fallback (auto)."""

import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from src.models import get_model, onednn
from tests.conftest import REPO, tiny_cifar_args
from tests.test_conv import DN, GEOMETRIES, grads

pytestmark = pytest.mark.skipif(
    bool(onednn.unavailable()), reason=f"oneDNN unavailable here ({onednn.unavailable()}); .ci/run installs it"
)


def custom_calls(fn, *args):
  return set(re.findall(r'custom_call_target="(Onednn\w+)"', jax.jit(fn).lower(*args).compile().as_text()))


@pytest.mark.parametrize("batch", [16, 3])
@GEOMETRIES  # the conv geometries of tests/test_conv.py
def test_forward_and_gradients_match_lax(batch, kernel, strides, padding, size):
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 8))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 8, 16)) * 0.1
  conv = onednn.onednn_conv()
  np.testing.assert_allclose(
      jax.jit(lambda x, w: conv(x, w, strides, padding, dimension_numbers=DN))(x, w),
      lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN),
      rtol=1e-5,
      atol=1e-5,
  )
  (dx, dw), (rx, rw) = grads(conv, x, w, strides, padding), grads(lax.conv_general_dilated, x, w, strides, padding)
  np.testing.assert_allclose(dx, rx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, rw, rtol=1e-5, atol=1e-4)
  assert custom_calls(lambda x, w: grads(conv, x, w, strides, padding), x, w) == set(onednn.TARGETS.values())


def test_resnet_training_gradients_match_xla_and_bf16_falls_back():
  x = jax.random.normal(jax.random.key(2), (32, 32, 32, 3))
  y = jnp.arange(32) % 10
  out = {}
  for impl in ("xla", "onednn", "auto"):
    model = get_model("cifar_resnet8", conv_impl=impl)
    variables = model.init(jax.random.key(0), x[:1], train=False)

    def loss(params, model=model, variables=variables):
      logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(32), y])

    step = jax.value_and_grad(loss)
    out[impl] = jax.jit(step)(variables["params"])
    if impl != "xla":  # auto: oneDNN is there, one CPU device
      assert custom_calls(step, variables["params"]) == set(onednn.TARGETS.values())
  np.testing.assert_allclose(out["xla"][0], out["onednn"][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(out["xla"][1]), jax.tree.leaves(out["onednn"][1])):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  bf16 = get_model("cifar_resnet8", conv_impl="onednn", dtype="bfloat16")
  variables = bf16.init(jax.random.key(0), x[:1], train=False)
  assert not custom_calls(lambda v: bf16.apply(v, x, train=False), variables)  # bf16: conv.py's conv instead


def test_inside_a_scan():
  conv = onednn.onednn_conv()
  w = jax.random.normal(jax.random.key(0), (3, 3, 3, 8, 8)) * 0.1
  x = jax.random.normal(jax.random.key(1), (16, 8, 8, 8))

  def loss(conv, w, x):
    step = lambda h, wi: (jax.nn.relu(conv(h, wi, (1, 1), "SAME", dimension_numbers=DN)), None)
    return jnp.sum(jax.lax.scan(step, x, w)[0] ** 2)

  got = jax.jit(jax.grad(lambda w, x: loss(conv, w, x)))(w, x)
  want = jax.jit(jax.grad(lambda w, x: loss(lax.conv_general_dilated, w, x)))(w, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_missing_onednn_is_a_clear_error_and_auto_falls_back(tmp_path):
  # A compiler that fails stands for a machine without oneDNN: the build fails, as it would there.
  code = """
import jax
from src import config_check
from src.models import get_model, onednn
from configs.common import cifar_recipe
c = cifar_recipe("cifar_resnet8"); c.model.conv_impl = "onednn"
try:
  config_check.validate(c)
except config_check.ConfigError as e:
  print("ERROR", e)
model = get_model("cifar_resnet8")  # auto
x = jax.numpy.ones((2, 32, 32, 3))
print("HLO", "Onednn" in jax.jit(lambda v: model.apply(v, x, train=False)).lower(model.init(jax.random.key(0), x, train=False)).as_text())
"""
  env = {**os.environ, "CXX": "false", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "ERROR config.model.conv_impl: 'onednn' cannot run here: building onednn_conv.cc failed" in out.stdout
  assert "apt-get install libdnnl-dev g++" in out.stdout and "model.conv_impl='cpu'" in out.stdout
  assert "HLO False" in out.stdout


def test_two_processes_train_as_with_the_cpu_conv(fake_cifar10_dir, tmp_path):
  losses = {}
  for impl in ("cpu", "onednn"):
    workdir = tmp_path / impl
    cmd = [
        sys.executable,
        "launch/local.py",
        "--num-processes=2",
        "--devices-per-process=1",
        "--timeout=300",
        "--",
        *tiny_cifar_args(fake_cifar10_dir, workdir, steps=10),
        f"--config.model.conv_impl={impl}",
    ]
    out = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=400, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    losses[impl] = [
        json.loads(l)["train/loss"] for l in (workdir / "metrics.jsonl").read_text().splitlines() if "train/loss" in l
    ]
  assert len(losses["cpu"]) >= 2
  np.testing.assert_allclose(losses["onednn"], losses["cpu"], rtol=1e-4)
