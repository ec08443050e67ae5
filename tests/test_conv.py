"""src/cpu/conv.py: the CPU convolution is the ordinary convolution, gradients included, and its gradient
convolutions stay in the canonical form XLA:CPU runs fast, inside loops too."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from src.cpu.conv import cpu_conv

DN = ("NHWC", "HWIO", "NHWC")


def grads(conv, x, w, strides, padding):
  def f(x, w):
    y = conv(x, w, strides, padding, dimension_numbers=DN)
    return jnp.sum(jnp.sin(y))  # a non-trivial cotangent

  return jax.jit(jax.grad(f, argnums=(0, 1)))(x, w)


GEOMETRIES = pytest.mark.parametrize(
    "kernel,strides,padding,size",
    [
        (3, (1, 1), "SAME", 12),
        (3, (2, 2), [(1, 1), (1, 1)], 12),
        (3, (1, 1), "VALID", 12),
        (1, (2, 2), [(0, 0), (0, 0)], 12),  # option B/C projection shortcut
        (7, (2, 2), [(3, 3), (3, 3)], 16),  # ImageNet stem
        (3, (2, 2), "SAME", 11),  # odd size: the forward ignores the last row
        (5, (3, 2), [(2, 1), (0, 2)], 13),
    ],
)  # asymmetric everything


@pytest.mark.parametrize("batch", [64, 40, 8])  # divisible by the chunk, not divisible, smaller than it
@GEOMETRIES
def test_forward_and_gradients_match_lax(batch, kernel, strides, padding, size):
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 8))
  w = jax.random.normal(jax.random.key(1), (kernel, kernel, 8, 16)) * 0.1
  conv = cpu_conv(16)
  np.testing.assert_array_equal(
      conv(x, w, strides, padding, dimension_numbers=DN),
      lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN),
  )
  (dx, dw), (rx, rw) = grads(conv, x, w, strides, padding), grads(lax.conv_general_dilated, x, w, strides, padding)
  np.testing.assert_allclose(dx, rx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, rw, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("shards", [2, 4])
def test_chunks_across_device_shards_give_the_same_gradients(shards):
  x = jax.random.normal(jax.random.key(0), (64, 8, 8, 8))
  w = jax.random.normal(jax.random.key(1), (3, 3, 8, 16)) * 0.1
  (dx, dw), (rx, rw) = (
      grads(cpu_conv(8, shards=shards), x, w, (1, 1), "SAME"),
      grads(lax.conv_general_dilated, x, w, (1, 1), "SAME"),
  )
  np.testing.assert_allclose(dx, rx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, rw, rtol=1e-5, atol=1e-4)


def test_bfloat16_inputs():
  x = jax.random.normal(jax.random.key(0), (32, 8, 8, 8)).astype(jnp.bfloat16)
  w = (jax.random.normal(jax.random.key(1), (3, 3, 8, 8)) * 0.1).astype(jnp.bfloat16)
  (_, dw), (_, rw) = grads(cpu_conv(8), x, w, (1, 1), "SAME"), grads(lax.conv_general_dilated, x, w, (1, 1), "SAME")
  assert dw.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(dw, np.float32), np.asarray(rw, np.float32), rtol=5e-2, atol=5e-2)


def test_nn_conv_accepts_it():
  layer = nn.Conv(4, (3, 3), conv_general_dilated=cpu_conv(4))
  x = jnp.ones((8, 6, 6, 2))
  variables = layer.init(jax.random.key(0), x)
  assert layer.apply(variables, x).shape == (8, 6, 6, 4)


def conv_layouts(conv):
  """dim_labels of every convolution XLA:CPU compiles for the gradient of a 3-step scan of conv."""
  w = jnp.ones((3, 3, 3, 8, 8)) * 0.1
  x = jnp.ones((16, 8, 8, 8))

  def loss(w, x):
    step = lambda h, wi: (jax.nn.relu(conv(h, wi, (1, 1), "SAME", dimension_numbers=DN)), None)
    return jnp.sum(jax.lax.scan(step, x, w)[0] ** 2)

  hlo = jax.jit(jax.grad(loss)).lower(w, x).compile().as_text()
  return set(re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo))


def test_gradient_convs_inside_a_scan_are_canonical():
  # XLA:CPU runs only b01f_01io->b01f convolutions with Eigen; it leaves the default gradient convs of a
  # loop body in other layouts, and those run through a naive loop nest (jax-ml/jax#12868, ~100x slower).
  assert conv_layouts(cpu_conv(8)) == {"b01f_01io->b01f"}
  assert conv_layouts(lax.conv_general_dilated) != {"b01f_01io->b01f"}  # what this module works around
