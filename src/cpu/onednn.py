"""Convolutions through oneDNN, the CPU kernel library PyTorch uses, as XLA FFI custom calls (conv_impl='onednn').

XLA:CPU runs convolutions with Eigen. On this project's 2-core AVX-512 machine, oneDNN runs the CIFAR nets'
convolutions 1.2-4x faster, their gradients most of all (README, Speed). onednn_conv.cc holds three handlers:
forward, input gradient and kernel gradient of an NHWC/HWIO float32 conv. They are tied together here by a
custom_vjp. The library is compiled on first use into build/ (about 5 s) from the system's oneDNN:

    apt-get install libdnnl-dev g++        # Debian/Ubuntu; or set DNNL_ROOT to an install with include/ and lib/

Everything else falls back: other dtypes (bf16) and layouts take conv.py's canonical conv, and
conv_impl='auto' picks 'cpu' when oneDNN is missing or the process has several (virtual) CPU devices. Jobs of
several processes split the batch across them with jax.shard_map. A strided 1x1 convolution (the projection
shortcut, the v1 bottleneck's first conv) is computed as the unit-stride 1x1 convolution of the subsampled input,
the same function: oneDNN 2.6's own strided 1x1 kernel gradient corrupts the heap on AVX-512 and is wrong on AVX2
(README, Speed; tests/test_onednn.py's stress test).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from src import parallel
from src.cpu.conv import canonical_conv, drop_in

SOURCE = Path(__file__).with_name("onednn_conv.cc")
BUILD_DIR = Path(__file__).resolve().parents[2] / "build"
TARGETS = {"fwd": "OnednnConvFwd", "input_grad": "OnednnConvBwdData", "kernel_grad": "OnednnConvBwdWeights"}
INSTALL_HINT = (
    "install oneDNN and a C++ compiler (Debian/Ubuntu: `apt-get install libdnnl-dev g++`), or set "
    "DNNL_ROOT to a oneDNN install; or use execution.conv_impl='cpu'"
)


def _compile_command(out: Path) -> list:
  root = os.environ.get("DNNL_ROOT")
  extra = [f"-I{root}/include", f"-L{root}/lib", f"-Wl,-rpath,{root}/lib"] if root else []
  return [
      os.environ.get("CXX", "c++"),
      "-O2",
      "-w",
      "-std=c++17",
      "-shared",
      "-fPIC",
      f"-I{jax.ffi.include_dir()}",
      *extra,
      str(SOURCE),
      "-o",
      str(out),
      "-ldnnl",
  ]


@functools.cache
def load() -> str:
  """Builds (once per source, jaxlib and compiler command) and registers the handlers. Returns '' on success, else
  why it failed: the error a run with conv_impl='onednn' reports."""
  key = hashlib.sha256(SOURCE.read_bytes() + repr((jax.__version__, _compile_command(Path("out")))).encode())
  lib = BUILD_DIR / f"onednn_conv-{key.hexdigest()[:12]}.so"
  if not lib.exists():
    try:
      BUILD_DIR.mkdir(exist_ok=True)
      fd, tmp = tempfile.mkstemp(suffix=".so", dir=BUILD_DIR)  # then an atomic rename: processes may race
      os.close(fd)
    except OSError as e:
      return f"cannot write the library to {BUILD_DIR} ({e})"
    try:
      done = subprocess.run(_compile_command(Path(tmp)), capture_output=True, text=True)
    except OSError as e:
      done = subprocess.CompletedProcess([], 1, "", str(e))
    if done.returncode:
      os.unlink(tmp)
      last = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
      return f"building {SOURCE.name} failed ({last})"
    os.replace(tmp, lib)
  try:
    handlers = ctypes.cdll.LoadLibrary(str(lib))
  except OSError as e:
    return f"loading {lib} failed: {e}"
  for target in TARGETS.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handlers, target)), platform="cpu")
  return ""


def unavailable() -> str:
  """Why conv_impl='onednn' cannot run in this process ('' if it can)."""
  if jax.default_backend() != "cpu":
    return f"it runs on the CPU only, and this backend is {jax.default_backend()!r}. Fix: use 'auto' or 'xla'"
  if jax.local_device_count() > 1:
    # Each virtual CPU device would run its own oneDNN thread team on the same cores: they starve each other.
    return (
        f"it needs one CPU device per process, and this one has {jax.local_device_count()} (XLA_FLAGS="
        "--xla_force_host_platform_device_count). Fix: use 'cpu' or 'auto'"
    )
  why = load()
  return f"{why}. Fix: {INSTALL_HINT}" if why else ""


def require():
  """Raises a clear error, before any expensive work, when conv_impl='onednn' cannot run here."""
  why = unavailable()
  if why:
    raise RuntimeError(f"execution.conv_impl='onednn': {why}.")


class _Spec(NamedTuple):
  strides: tuple  # (sh, sw)
  pads: tuple  # ((top, bottom), (left, right))


def _ffi(target, shape, spec, *args):
  (sh, sw), ((pt, pb), (pl, pr)) = spec.strides, spec.pads
  attrs = {k: np.int64(v) for k, v in dict(sh=sh, sw=sw, pt=pt, pb=pb, pl=pl, pr=pr).items()}
  out = jax.ShapeDtypeStruct(shape, jnp.float32)
  return jax.ffi.ffi_call(TARGETS[target], out, vmap_method="sequential")(*args, **attrs)


def _per_device(fn, batch, in_specs, out_specs, psum=False):
  """fn on each device's rows of the batch (psum: summed over devices). XLA cannot partition a custom call:
  it would gather the whole batch and run it on every device. The mesh: the one in context (jax.set_mesh),
  else the train loop's (src.parallel) when the job has several devices."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty and jax.device_count() > 1:
    mesh = parallel.make_mesh()
  if mesh.empty or mesh.shape.get("data", 1) == 1 or batch % mesh.shape["data"]:
    return fn
  body = (lambda *a: jax.lax.psum(fn(*a), "data")) if psum else fn
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


_B, _R = jax.sharding.PartitionSpec("data"), jax.sharding.PartitionSpec()  # split on the batch; replicated


def _out_shape(spec, x_shape, w_shape):
  hw = [(n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(x_shape[1:3], spec.pads, w_shape[:2], spec.strides)]
  return (x_shape[0], *hw, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(spec, x, w):
  fwd = lambda x, w: _ffi("fwd", _out_shape(spec, x.shape, w.shape), spec, x, w)
  return _per_device(fwd, x.shape[0], (_B, _R), _B)(x, w)


def _fwd(spec, x, w):
  return _conv(spec, x, w), (x, w)


def _bwd(spec, res, g):
  x, w = res
  input_grad = lambda g, w: _ffi("input_grad", g.shape[:1] + x.shape[1:], spec, g, w)
  kernel_grad = lambda x, g: _ffi("kernel_grad", w.shape, spec, x, g)
  n = x.shape[0]
  return (_per_device(input_grad, n, (_B, _R), _B)(g, w), _per_device(kernel_grad, n, (_B, _B), _R, psum=True)(x, g))


_conv.defvjp(_fwd, _bwd)


def _subsample(x, strides, pads):
  """The pixels a strided 1x1 convolution reads: `x` (N, H, W, C) padded, then every stride-th row and column."""
  (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)])
  return x[:, ::sh, ::sw, :]


def onednn_conv(chunk: int = 16, shards: int = 1) -> Callable:
  """`lax.conv_general_dilated` running float32 NHWC/HWIO convs and their gradients in oneDNN; any other conv
  takes cpu_conv(chunk, shards). Call `require()` first for a clear error when oneDNN is missing."""
  fallback = canonical_conv(chunk, shards)

  def fast(lhs, rhs, strides, pads, precision, out_dtype):
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32 or out_dtype not in (None, jnp.float32):
      return fallback(lhs, rhs, strides, pads, precision, out_dtype)
    if rhs.shape[:2] == (1, 1) and strides != (1, 1):  # see the module docstring
      lhs, strides, pads = _subsample(lhs, strides, pads), (1, 1), ((0, 0), (0, 0))
    return _conv(_Spec(strides, pads), lhs, rhs)

  return drop_in(fast)
