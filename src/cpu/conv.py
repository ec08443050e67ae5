"""A drop-in `lax.conv_general_dilated` whose gradients run fast on XLA:CPU. Same maths, same results.

Two things make the default conv gradients slow on the CPU (measured numbers: README, Speed):
- XLA:CPU sends a convolution to its fast (Eigen) kernel only in canonical form: NHWC input, HWIO kernel,
  batch-major output. The gradient convolutions JAX emits are not canonical; XLA rewrites them outside
  loops, but not inside a `while` body, so under `lax.scan` (nn.scan stages, steps_per_call > 1) they fall
  back to a naive loop nest, about 100x slower (jax-ml/jax#12868). Here both gradients are written as
  canonical convolutions with explicit transposes, so they are fast everywhere.
- The kernel gradient contracts over the whole batch; XLA:CPU runs it faster as a sum of per-chunk
  gradients of `chunk` examples.

    conv = nn.Conv(16, (3, 3), conv_general_dilated=cpu_conv(16))

Only for NHWC/HWIO convolutions without dilation or groups (every conv of the paper's nets); anything
else is passed to `lax.conv_general_dilated` unchanged. On GPU/TPU keep the default conv: cuDNN and the
TPU compiler have native gradient kernels.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = ("NHWC", "HWIO", "NHWC")  # the canonical form (see the module docstring)


class _Spec(NamedTuple):
  """Static arguments (hashable: the custom_vjp's non-differentiable argument)."""

  strides: tuple  # (sh, sw)
  pads: tuple  # ((lo, hi), (lo, hi))
  chunk: int  # examples per kernel-gradient chunk (0: the whole batch in one)
  shards: int  # devices the batch is split over (each chunk takes rows from every shard)
  precision: object
  out_dtype: object  # preferred_element_type, or None


def _conv(x, w, spec, strides=None, pads=None, out_dtype=None):
  return lax.conv_general_dilated(
      x,
      w,
      spec.strides if strides is None else strides,
      spec.pads if pads is None else pads,
      dimension_numbers=_NHWC,
      precision=spec.precision,
      preferred_element_type=out_dtype,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cpu_conv(spec, x, w):
  return _conv(x, w, spec, out_dtype=spec.out_dtype)


def _fwd(spec, x, w):
  return _cpu_conv(spec, x, w), (x, w)


def _dilate(v, strides):
  """Zeros between the rows and columns of NHWC `v`: the stride of the forward conv, made explicit."""
  if strides == (1, 1):
    return v
  zero = jnp.zeros((), v.dtype)
  return lax.pad(v, zero, [(0, 0, 0), (0, 0, strides[0] - 1), (0, 0, strides[1] - 1), (0, 0, 0)])


def _input_grad(spec, g, w, in_hw):
  # dx = (g with the stride's zeros) convolved with the kernel flipped in space, input/output swapped.
  k, out_hw = w.shape[:2], g.shape[1:3]
  pads = [
      (kk - 1 - lo, n - 1 + lo - (o - 1) * s) for kk, (lo, _), n, o, s in zip(k, spec.pads, in_hw, out_hw, spec.strides)
  ]
  w_t = jnp.swapaxes(w[::-1, ::-1], 2, 3)
  return _conv(_dilate(g, spec.strides), w_t, spec, strides=(1, 1), pads=pads)


def _chunk(v, k, chunk, shards):
  """Examples [k*chunk, (k+1)*chunk) of every one of `shards` contiguous blocks of the batch: under SPMD
  each device then works on its own rows."""
  n = v.shape[0]
  blocks = v.reshape((shards, n // shards) + v.shape[1:])
  return lax.dynamic_slice_in_dim(blocks, k * chunk, chunk, axis=1).reshape((shards * chunk,) + v.shape[1:])


def _kernel_grad(spec, x, g, w):
  # dw[i, j, c, d] = sum over examples and output pixels of x_padded[n, s*o + i, c] * g[n, o, d]: a
  # canonical conv with the channels of x as its batch, the examples as features and g as the kernel.
  k, in_hw, out_hw = w.shape[:2], x.shape[1:3], g.shape[1:3]
  pads = [(lo, kk - n - lo + (o - 1) * s) for kk, (lo, _), n, o, s in zip(k, spec.pads, in_hw, out_hw, spec.strides)]
  low = jnp.dtype(w.dtype).itemsize < 4 and jnp.issubdtype(w.dtype, jnp.floating)
  acc = jnp.float32 if low else w.dtype  # low-precision inputs: accumulate in float32, round once
  n, chunk, shards = x.shape[0], spec.chunk, spec.shards
  if not chunk or n % (chunk * shards) or n <= chunk * shards:
    chunk, shards = n, 1  # the whole batch in one
  parts = n // (chunk * shards)

  def part(p):
    xs = _chunk(x, p, chunk, shards).astype(acc).transpose(3, 1, 2, 0)  # C, H, W, n
    gs = _dilate(_chunk(g, p, chunk, shards), spec.strides).astype(acc).transpose(1, 2, 0, 3)  # Ho, Wo, n, D
    return _conv(xs, gs, spec, strides=(1, 1), pads=pads, out_dtype=acc)  # C, kh, kw, D

  # A loop, not Python unrolling: the same speed, half the compile time, and deep nets run faster.
  total = part(0) if parts == 1 else lax.fori_loop(1, parts, lambda p, t: t + part(p), part(0))
  return total.transpose(1, 2, 0, 3).astype(w.dtype)


def _bwd(spec, res, g):
  x, w = res
  return _input_grad(spec, g, w, x.shape[1:3]).astype(x.dtype), _kernel_grad(spec, x, g, w)


_cpu_conv.defvjp(_fwd, _bwd)


def drop_in(fast: Callable) -> Callable:
  """A `lax.conv_general_dilated` that sends plain NHWC/HWIO convolutions (no dilation, no groups) to
  `fast(lhs, rhs, strides, pads, precision, out_dtype)` and anything else to lax unchanged."""

  def conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=None,
      rhs_dilation=None,
      dimension_numbers=None,
      feature_group_count=1,
      batch_group_count=1,
      precision=None,
      preferred_element_type=None,
      out_sharding=None,
  ):
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    dilated = any(d != 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
    nhwc = lhs.ndim == 4 and (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    )
    if dilated or not nhwc or feature_group_count != 1 or batch_group_count != 1 or out_sharding is not None:
      return lax.conv_general_dilated(
          lhs,
          rhs,
          window_strides,
          padding,
          lhs_dilation=lhs_dilation,
          rhs_dilation=rhs_dilation,
          dimension_numbers=dimension_numbers,
          feature_group_count=feature_group_count,
          batch_group_count=batch_group_count,
          precision=precision,
          preferred_element_type=preferred_element_type,
          out_sharding=out_sharding,
      )
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
      padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if isinstance(precision, list):
      precision = tuple(precision)
    out_dtype = None if preferred_element_type is None else jnp.dtype(preferred_element_type)
    return fast(lhs, rhs, strides, pads, precision, out_dtype)

  return conv_general_dilated


def canonical_conv(chunk: int = 0, shards: int = 1) -> Callable:
  """The custom-gradient conv on canonical arguments: fast(lhs, rhs, strides, pads, precision, out_dtype)."""
  if chunk < 0:
    raise ValueError(f"chunk must be >= 0, got {chunk}")
  return lambda lhs, rhs, strides, pads, precision, out_dtype: _cpu_conv(
      _Spec(strides, pads, int(chunk), int(shards), precision, out_dtype), lhs, rhs
  )


def cpu_conv(chunk: int = 0, shards: int = 1) -> Callable:
  """`lax.conv_general_dilated` with canonical gradient convolutions and the kernel gradient summed over
  batch chunks of `chunk` examples (0: one chunk). `shards`: the devices the batch is split over."""
  return drop_in(canonical_conv(chunk, shards))
