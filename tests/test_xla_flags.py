"""src/cpu/xla_flags.py: importing `src` changes no process state; `apply()` (which src.main and src.bench call) gives
every jit of the process the project's XLA:CPU options, not only the train step; a process where JAX started first
is told so."""

import subprocess
import sys

from tests.conftest import REPO

PROBE = """
import os, warnings
os.environ.pop("XLA_FLAGS", None)
import jax, jax.numpy as jnp
{before}
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
  import src, src.train, src.evaluate, src.analysis  # changes nothing
  assert "XLA_FLAGS" not in os.environ
  from src.cpu import xla_flags
  xla_flags.apply()
x = jnp.ones((32, 8, 8, 64))
hlo = jax.jit(lambda x: (x - x.mean(axis=(0, 1, 2))) * 2).lower(x).compile().as_text()
print("YNN", "__ynn" in hlo or "kind=kCustom" in hlo, "WARNED", any("JAX started before" in str(w.message) for w in caught))
"""


def probe(before=""):
  out = subprocess.run(
      [sys.executable, "-c", PROBE.format(before=before)],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
      env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"},
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


def test_a_users_own_jit_compiles_without_ynnpack_fusions():
  assert probe() == ["YNN", "False", "WARNED", "False"]


def test_jax_started_first_is_warned_about():
  # Too late for XLA_FLAGS: the user's jit keeps XLA's defaults (YNNPACK fusions on), and a warning says so.
  assert probe(before="jnp.ones(3).block_until_ready()") == ["YNN", "True", "WARNED", "True"]
