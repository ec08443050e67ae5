"""A drop-in `lax.conv_general_dilated` whose kernel gradient is summed over batch chunks.

XLA's CPU weight-gradient convolution gets very slow once the batch is large (see ENV-NOTES); the same
gradient computed as a sum of per-chunk weight gradients is several times faster. The forward pass and
the input gradient are the ordinary convolutions.

    conv = nn.Conv(16, (3, 3), conv_general_dilated=chunked_conv(16))
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class _Spec(NamedTuple):
  """The convolution's static arguments, normalised so that they hash (custom_vjp nondiff argument)."""
  window_strides: tuple
  padding: Any  # str or tuple of (low, high) pairs
  lhs_dilation: Optional[tuple]
  rhs_dilation: Optional[tuple]
  dimension_numbers: lax.ConvDimensionNumbers
  feature_group_count: int
  precision: Any
  preferred_element_type: Any
  chunk: int
  options: tuple  # exploration knobs: (chunk_dx, chunk_fwd, sum_order)

  def conv(self, lhs, rhs, preferred_element_type=None):
    return lax.conv_general_dilated(
        lhs, rhs, self.window_strides, self.padding, self.lhs_dilation, self.rhs_dilation,
        self.dimension_numbers, self.feature_group_count, 1, self.precision,
        self.preferred_element_type if preferred_element_type is None else preferred_element_type)


def _tuple_or_none(v):
  return None if v is None else tuple(int(i) for i in v)


def _hashable_padding(padding):
  if isinstance(padding, str):
    return padding
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _hashable_precision(precision):
  if isinstance(precision, list):
    return tuple(precision)
  return precision


def _chunks(n, chunk):
  return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]


def _sum(parts, order):
  if order == "tree":
    while len(parts) > 1:
      parts = [parts[i] + parts[i + 1] if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]
  if order == "stack":
    return jnp.sum(jnp.stack(parts), axis=0)
  total = parts[0]
  for p in parts[1:]:
    total = total + p
  return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _chunked(spec: _Spec, lhs, rhs):
  return _forward(spec, lhs, rhs)


def _forward(spec, lhs, rhs):
  chunk_dx, chunk_fwd, order = spec.options[:3]
  if not chunk_fwd:
    return spec.conv(lhs, rhs)
  lb, ob = spec.dimension_numbers.lhs_spec[0], spec.dimension_numbers.out_spec[0]
  outs = [spec.conv(lax.slice_in_dim(lhs, a, b, axis=lb), rhs) for a, b in _chunks(lhs.shape[lb], spec.chunk)]
  return lax.concatenate(outs, ob)


def _chunk(x, axis, k, chunk, shards):
  """Examples of chunk k: with `shards` contiguous blocks (devices) along `axis`, chunk k takes
  examples [k*chunk, (k+1)*chunk) of every block, so that under SPMD each device works on its own rows."""
  if shards == 1:
    return lax.slice_in_dim(x, k * chunk, (k + 1) * chunk, axis=axis)
  n = x.shape[axis]
  shape = list(x.shape)
  shape[axis:axis + 1] = [shards, n // (shards * chunk), chunk]
  xk = lax.index_in_dim(x.reshape(shape), k, axis + 1, keepdims=False)
  shape = list(xk.shape)
  shape[axis:axis + 2] = [shards * chunk]
  return xk.reshape(shape)


def _chunked_fwd(spec, lhs, rhs):
  return _forward(spec, lhs, rhs), (lhs, rhs)


def _chunked_bwd(spec, res, g):
  x, rhs = res
  chunk_dx, chunk_fwd, order = spec.options[:3]
  shards = spec.options[3]
  dn = spec.dimension_numbers
  lb, ob = dn.lhs_spec[0], dn.out_spec[0]
  n = g.shape[ob]
  lhs_aval = jax.ShapeDtypeStruct(x.shape, x.dtype)
  ranges = _chunks(n, spec.chunk)
  # Input gradient: the ordinary transposed convolution (optionally per chunk, concatenated).
  if chunk_dx:
    dls = []
    for a, b in ranges:
      shp = list(lhs_aval.shape); shp[lb] = b - a
      t = jax.linear_transpose(lambda v: spec.conv(v, rhs), jax.ShapeDtypeStruct(tuple(shp), lhs_aval.dtype))
      dls.append(t(lax.slice_in_dim(g, a, b, axis=ob))[0])
    dlhs = lax.concatenate(dls, lb)
  else:
    dlhs, = jax.linear_transpose(lambda v: spec.conv(v, rhs), lhs_aval)(g)
  # Kernel gradient: sum over batch chunks of the per-chunk transposed convolution. Low-precision
  # inputs are accumulated in float32 and rounded once.
  low = jnp.dtype(rhs.dtype).itemsize < 4 and jnp.issubdtype(rhs.dtype, jnp.floating)
  acc = jnp.float32 if low else rhs.dtype
  parts = []
  per = spec.chunk * shards
  for k in range(n // per):
    xs = _chunk(x, lb, k, spec.chunk, shards).astype(acc)
    gs = _chunk(g, ob, k, spec.chunk, shards).astype(acc)
    t = jax.linear_transpose(lambda r: spec.conv(xs, r, preferred_element_type=acc),
                             jax.ShapeDtypeStruct(rhs.shape, acc))
    parts.append(t(gs)[0])
  drhs = _sum(parts, order).astype(rhs.dtype)
  return dlhs, drhs


_chunked.defvjp(_chunked_fwd, _chunked_bwd)


def chunked_conv(chunk: int, *, chunk_dx: bool = False, chunk_fwd: bool = False,
                 sum_order: str = "seq", shards: int = 1) -> Callable:
  """Returns a function with `lax.conv_general_dilated`'s signature and semantics whose kernel
  gradient is computed as a sum over batch chunks of `chunk` examples."""
  if chunk < 0:
    raise ValueError(f"chunk must be >= 0, got {chunk}")
  options = (bool(chunk_dx), bool(chunk_fwd), sum_order, int(shards))

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                           precision=None, preferred_element_type=None, out_sharding=None):
    plain = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
    if out_sharding is not None or batch_group_count != 1 or not chunk:
      return plain(out_sharding=out_sharding)
    lhs, rhs = jnp.asarray(lhs), jnp.asarray(rhs)
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    n = lhs.shape[dn.lhs_spec[0]]
    if n <= chunk * shards or n % (chunk * shards):
      return plain()
    spec = _Spec(tuple(int(s) for s in window_strides), _hashable_padding(padding),
                 _tuple_or_none(lhs_dilation), _tuple_or_none(rhs_dilation), dn, int(feature_group_count),
                 _hashable_precision(precision),
                 None if preferred_element_type is None else np.dtype(preferred_element_type), int(chunk),
                 options)
    return _chunked(spec, lhs, rhs)

  return conv_general_dilated
