"""Stress for src/cpu/onednn.py, run as its own process by tests/test_onednn.py: many geometries and batch sizes,
each called repeatedly, from two threads at once, while a third thread keeps XLA busy with its own convolutions.
Every result is checked against lax; a heap corruption ends the process (glibc's malloc checks are on).

    python -m tests.onednn_stress [repeats]      # prints 'ok <calls>' or raises
"""

import itertools
import sys
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from src.cpu import onednn, xla_flags

xla_flags.apply()  # lax's reference convolutions with the project's XLA:CPU options, as in src.main

DN = ("NHWC", "HWIO", "NHWC")
# (kernel, strides, padding, size): the paper's convs (3x3, strided 3x3, 1x1 projections, the 7x7 stem) and odd ones.
GEOMETRIES = [
    (3, (1, 1), [(1, 1), (1, 1)], 8),
    (3, (2, 2), [(1, 1), (1, 1)], 12),
    (1, (2, 2), [(0, 0), (0, 0)], 12),
    (1, (2, 2), [(0, 0), (0, 0)], 16),
    (7, (2, 2), [(3, 3), (3, 3)], 16),
    (5, (3, 2), [(2, 1), (0, 2)], 13),
]
BATCHES = (1, 3)
CHANNELS = ((3, 16), (16, 32))


def _grads(conv, strides, padding):
  def loss(x, w):
    return jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=DN)))

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _cases(part):
  cases = list(itertools.product(GEOMETRIES, BATCHES, CHANNELS))
  return cases[part::2]


def _worker(part, repeats, errors, calls):
  conv = onednn.onednn_conv()
  try:
    for rep in range(repeats):
      for (k, strides, padding, size), batch, (cin, cout) in _cases(part):
        key = jax.random.key(rep * 1000 + batch)
        x = jax.random.normal(key, (batch, size, size, cin))
        w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * 0.1
        got = _grads(conv, strides, padding)(x, w)
        want = _grads(lax.conv_general_dilated, strides, padding)(x, w)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
          b = np.asarray(b)
          err = float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-30))
          if err > 1e-4:
            raise AssertionError(
                f"k{k} s{strides} {padding} size {size} batch {batch} {cin}->{cout}: rel err {err:.1e}"
            )
        calls[part] += 1
  except Exception as e:  # reported by the main thread
    errors.append(e)


def _xla_load(stop):
  x, w = jnp.ones((8, 32, 32, 16)), jnp.ones((3, 3, 16, 16)) * 0.01
  f = jax.jit(lambda x, w: lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN).sum())
  while not stop.is_set():
    f(x, w).block_until_ready()


def main(repeats=2):
  onednn.require()
  errors, calls, stop = [], [0, 0], threading.Event()
  load = threading.Thread(target=_xla_load, args=(stop,))
  load.start()
  workers = [threading.Thread(target=_worker, args=(part, repeats, errors, calls)) for part in (0, 1)]
  for t in workers:
    t.start()
  for t in workers:
    t.join()
  stop.set()
  load.join()
  if errors:
    raise errors[0]
  print("ok", sum(calls), flush=True)


if __name__ == "__main__":
  main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
