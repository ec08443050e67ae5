"""Seeds as a batch dimension: `config.num_seeds = K` trains K independent runs of one config in one jitted program.

Replica r is the run with seed `config.seed + r`: its own initialisation, data order and augmentation. The K-replica
train state is the single run's TrainState with a leading axis of K on every leaf (params, BN statistics, optimiser
state, step, the ResNet-110 warm-up flag, the plateau schedule), and the train step is `jax.vmap` of the single run's
step over it and over a leading axis of K on the batch. Every device holds every replica and its slice of every
replica's batch (the batch axis stays split over the mesh's 'data' axis), so data parallelism, BN groups and
steps_per_call work unchanged. One run is a few small convolutions per step: on an accelerator K replicas fill the
chip for little more than the cost of one (README, Speed).

Why: Table 6 gives ResNet-110 as the best of 5 runs, 6.43%, with mean 6.61 +- 0.16; one run per depth cannot say
whether ResNet-44 beats ResNet-32. results.md gives mean +- std and the best over replicas for every run.

num_seeds = 1 is the plain single run: no replica axis anywhere, in the state, checkpoints or metrics.
"""

import jax
import numpy as np


def num_seeds(config) -> int:
  return int(config.get("num_seeds", 1))


def seeds(config) -> list:
  """The replicas' seeds: config.seed, config.seed + 1, ..."""
  return [config.seed + r for r in range(num_seeds(config))]


def vmap(fn, k: int, in_axes=0):
  """`fn` over a leading replica axis of its arguments (`in_axes` as jax.vmap), or `fn` itself for one replica."""
  return fn if k == 1 else jax.vmap(fn, in_axes=in_axes)


def train_batch(ds, step: int, local_batch: int, seeds: list) -> dict:
  """Batch `step` of every replica: the single run's batch for one seed, else a leading replica axis [K, b, ...]."""
  if len(seeds) == 1:
    return ds.train_batch(step, local_batch)
  batches = [ds.train_batch(step, local_batch, seed=s) for s in seeds]
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def per_replica(values: dict, k: int) -> list:
  """{name: array of k per-replica values (or a scalar, k == 1)} -> k dicts of floats."""
  return [{name: float(np.reshape(v, (k,))[r]) for name, v in values.items()} for r in range(k)]


def rows(step_metrics: list, k: int):
  """The train step's metrics fetched since the last log step -> (one row per replica, number of steps).

  step_metrics: a list of {name: value} as the jitted step returns them, each value of shape [K] (or a scalar, one
  replica) per step, with a leading steps axis under steps_per_call. Every metric the step returns gets a column:
  `lr` its newest value, every other its mean over the steps.
  """
  logged = {name: np.concatenate([np.reshape(m[name], (-1, k)) for m in step_metrics]) for name in step_metrics[0]}
  num = len(next(iter(logged.values())))
  out = [{name: float(v[-1, r] if name == "lr" else np.mean(v[:, r])) for name, v in logged.items()} for r in range(k)]
  return out, num


def error_line(rows: list) -> str:
  """'val/error 8.12%  test/error 8.40%', or with several replicas 'test/error 8.40 +- 0.12% (3 seeds)'."""
  names = [k for k in rows[0] if k.endswith("error")]
  if len(rows) == 1:
    return "  ".join(f"{k} {100 * rows[0][k]:.2f}%" for k in names)
  stats = summary(rows, names)
  return "  ".join(f"{k} {100 * stats[k]:.2f} +- {100 * stats[k + '_std']:.2f}%" for k in names) + (
      f"  ({len(rows)} seeds)"
  )


def result(last: list, seeds: list) -> dict:
  """A run's final metrics in result.json from each replica's newest row: a single run's own; with several
  replicas the mean, std and best over them at the top and every replica's own numbers under `replicas`."""
  if len(last) == 1:
    return {k: v for k, v in last[0].items() if "/" in k}
  out = {"num_seeds": len(last), **summary(last)}
  out["replicas"] = [{"seed": s, **{k: v for k, v in row.items() if "/" in k}} for s, row in zip(seeds, last)]
  return out


def replica_variables(state, config) -> list:
  """[{'params', 'batch_stats'}] of each replica of a saved train state (src.checkpoint.load_saved_state), in
  seed order: one entry for a single run."""
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  k = num_seeds(config)
  return [variables] if k == 1 else [jax.tree.map(lambda a, r=r: a[r], variables) for r in range(k)]


def summary(runs: list, keys=None) -> dict:
  """Mean, std (ddof 1, as the paper's +-; 0 for one run) and min over replicas of each metric `keys` (default:
  every key with a '/', e.g. 'test/error'): {'test/error': mean, 'test/error_std': ..., 'test/error_min': ...}."""
  keys = keys or sorted({k for r in runs for k in r if "/" in k})
  out = {}
  for key in keys:
    values = np.asarray([r[key] for r in runs if key in r], np.float64)
    if len(values):
      out[key] = float(values.mean())
      out[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
      out[f"{key}_min"] = float(values.min())
  return out
