"""Training-mode BatchNorm with a hand-written gradient: the function of src/models/blocks.batch_statistics_norm,
injected through the models' `bn_normalize` point on the CPU.

Autodiff of the textbook formula leaves XLA:CPU more separate reductions and broadcasts in the backward pass; the
closed form below (Ioffe & Szegedy 2015, Sec. 3) needs two sums per channel. What it buys is small: train steps at
batch 128 on a 2-core CPU with oneDNN convs, interleaved windows, took 260 against 277 ms (ResNet-20) and 755
against 784 ms (ResNet-56), 4-6%; another sitting gave +1% and -7% (README, Speed). Its sums are plain sums, so
XLA reduces them pairwise. (They were once products with a vector of ones, which XLA:CPU runs as a
sequential dot: 20x the rounding error in the BN statistics, enough to flip 14 ReLU decisions of a ResNet-20
forward pass against float64, for no speed gain once the convolutions moved to oneDNN; see tests/test_parity.py.)
"""

import functools

import jax


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def fused_gradient_norm(rows, scale, bias, epsilon):
  """Same signature and values as blocks.batch_statistics_norm: rows float32 (groups, rows, C), scale and bias (C,);
  returns (y, mean, var) with per-group statistics (groups, C). Its gradient is the closed form."""
  return _fwd(rows, scale, bias, epsilon)[0]


def _fwd(rows, scale, bias, epsilon):
  mean = rows.mean(axis=1)
  centred = rows - mean[:, None]
  var = (centred * centred).mean(axis=1)
  inv = jax.lax.rsqrt(var + epsilon)
  return (centred * (inv * scale)[:, None] + bias, mean, var), (centred, inv, scale)


def _bwd(epsilon, residuals, cotangents):
  # mean and var feed only the running averages, which the caller stop_gradient's: their cotangents are zero.
  centred, inv, scale = residuals
  dy = cotangents[0]
  n = centred.shape[1]
  xhat = centred * inv[:, None]
  sum_dy, sum_dy_xhat = dy.sum(axis=1), (dy * xhat).sum(axis=1)  # (groups, C)
  drows = (scale * inv)[:, None] * (dy - (sum_dy / n)[:, None] - xhat * (sum_dy_xhat / n)[:, None])
  return drows, sum_dy_xhat.sum(axis=0), sum_dy.sum(axis=0)


fused_gradient_norm.defvjp(_fwd, _bwd)
