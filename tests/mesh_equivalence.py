"""Run under XLA_FLAGS=--xla_force_host_platform_device_count=8 by tests/test_parallel.py.

Trains a few steps of the real train step on a 1-device and an 8-device mesh and prints JSON facts:
losses, max parameter differences, and per-device-BN outputs against a reference computed by hand.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import cifar_recipe
from src import models, parallel
from src import step as train_steps


def batches(n, batch=32, seed=0):
  rng = np.random.default_rng(seed)
  return [
      {
          "image": rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8),
          "label": rng.integers(0, 10, (batch,)).astype(np.int32),
      }
      for _ in range(n)
  ]


def run(config, devices, data, mean):
  mesh = parallel.make_mesh(devices)
  model = train_steps.build_model(config, num_classes=10)
  state, tx = train_steps.create_state(config, model, (32, 32, 3), mesh)
  step = train_steps.jit_train_step(config, model, tx, mean, mesh)
  losses = []
  for b in data:
    state, m = step(state, parallel.global_batch(b, mesh))
    losses.append(float(m["train/loss"]))
  return state, losses, step, mesh


def max_diff(a, b):
  a, b = jax.device_get((a, b))
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  assert jax.device_count() == 8, jax.devices()
  data, mean = batches(3), jnp.full((32, 32, 3), 120.0)
  out = {}
  # 1. Synchronised BN: 8 devices must compute what 1 device computes on the whole batch.
  sync = cifar_recipe("cifar_resnet8")
  sync.model.bn_group_size = 0
  s1, l1, _, _ = run(sync, jax.devices()[:1], data, mean)
  s8, l8, step8, mesh8 = run(sync, jax.devices(), data, mean)
  out["sync_losses_1"], out["sync_losses_8"] = l1, l8
  out["sync_param_diff"] = max_diff(s1.params, s8.params)
  out["sync_stats_diff"] = max_diff(s1.batch_stats, s8.batch_stats)
  out["param_scale"] = max(float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(s1.params))
  # 2. Per-device BN (the paper's): groups of 4 = the 4 images on each of the 8 devices. Reference by hand:
  #    the same net with whole-batch BN applied to each device's shard separately.
  per_dev = cifar_recipe("cifar_resnet8")
  per_dev.model.bn_group_size = 4
  grouped = models.model_from_config(per_dev.model, num_classes=10)
  whole = models.model_from_config(sync.model, num_classes=10)
  variables = jax.device_get({"params": s1.params, "batch_stats": s1.batch_stats})
  x = train_steps.normalize(jnp.asarray(data[0]["image"]), mean)
  apply = jax.jit(
      lambda v, x: grouped.apply(v, x, train=True, mutable=["batch_stats"]),
      in_shardings=(parallel.replicated(mesh8), parallel.batch_sharded(mesh8)),
  )
  logits, stats = apply(variables, x)
  shards = [whole.apply(variables, x[i : i + 4], train=True, mutable=["batch_stats"]) for i in range(0, 32, 4)]
  out["per_device_logits_diff"] = float(jnp.max(jnp.abs(logits - jnp.concatenate([s[0] for s in shards]))))
  mean_stats = jax.tree.map(lambda *a: sum(a) / len(a), *[s[1] for s in shards])
  out["per_device_stats_diff"] = max_diff(stats, mean_stats)
  out["sync_vs_per_device_logits_diff"] = float(
      jnp.max(jnp.abs(logits - whole.apply(variables, x, train=True, mutable=["batch_stats"])[0]))
  )

  # 3. What the partitioner did: all-reduces in the compiled 8-device train steps (gradients only vs
  #    gradients + BN statistics).
  def all_reduces(config):
    model = models.model_from_config(config.model, num_classes=10)
    state, tx = train_steps.create_state(config, model, (32, 32, 3), mesh8)
    rep = parallel.replicated(mesh8)
    fn = jax.jit(train_steps.make_train_step(config, model, tx, mean), out_shardings=(rep, rep))
    hlo = fn.lower(state, parallel.global_batch(data[0], mesh8)).compile().as_text()
    return hlo.count(" all-reduce(") + hlo.count(" all-reduce-start(")

  out["all_reduces_sync"], out["all_reduces_per_device"] = all_reduces(sync), all_reduces(per_dev)
  json.dump(out, sys.stdout)


if __name__ == "__main__":
  main()
