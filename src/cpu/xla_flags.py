"""XLA:CPU options of this project: the train step, evaluation and analysis compile with them, and after `apply()` a
user's own `jax.grad` of a model too, so they compute what the train step computes.

- `xla_cpu_experimental_ynn_fusion_type=""`: XLA:CPU's YNNPACK library fusions off. With them, XLA 0.10 sends the
  CIFAR nets' 3x3 convolutions on 16x16 and 8x8 maps to YNNPACK, 2x slower than Eigen there (README, Speed); their
  results agree with Eigen's to float32 rounding (tests/test_parity.py runs both).

The project's own jits (train and eval steps, evaluation, Fig. 7's responses) pass `compiler_options()` explicitly.
`apply()` sets them for every other jit of the process too, through XLA_FLAGS, which XLA reads when JAX's backend
starts: src.main and src.bench call it first thing; a notebook or script of your own may (importing `src` changes
no process state). A flag the user already put in XLA_FLAGS is left as the user set it. Called after JAX started,
XLA_FLAGS comes too late, and `apply()` warns that other jits of the process run with XLA's defaults.
"""

import os
import warnings

OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def _user_set(name: str) -> bool:
  return f"--{name}=" in os.environ.get("XLA_FLAGS", "")


def apply():
  """Adds OPTIONS to XLA_FLAGS (before JAX's backend starts). Idempotent; never overrides the user's flags."""
  from jax._src import xla_bridge  # no public way to ask whether the backend has started

  missing = {k: v for k, v in OPTIONS.items() if not _user_set(k)}
  if not missing:
    return
  if xla_bridge.backends_are_initialized():
    warnings.warn(
        f"JAX started before `src` was imported, so XLA_FLAGS can no longer set {sorted(missing)} for this process: "
        "the project's own jits pass them explicitly, other jits run with XLA's defaults. Import src (or set "
        "XLA_FLAGS) before the first JAX computation to have them everywhere.",
        stacklevel=3,
    )
    return
  flags = " ".join(f"--{k}={v}" for k, v in missing.items())
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()


def compiler_options():
  """The same options for one jit (`jax.jit(..., compiler_options=...)`), for XLA:CPU only; None elsewhere."""
  import jax

  if jax.default_backend() != "cpu":
    return None
  return {k: v for k, v in OPTIONS.items() if not _user_set(k)} or None
