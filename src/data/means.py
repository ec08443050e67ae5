"""Per-pixel means of a training split that is sharded over processes (each process holds a part)."""

import numpy as np


def combine_means(means, counts) -> np.ndarray:
  """Mean of the union of shards from per-shard means and sizes (float64 accumulation, float32 out)."""
  counts = np.asarray(counts, np.float64)
  return (np.tensordot(counts, np.asarray(means, np.float64), axes=1) / counts.sum()).astype(np.float32)


def global_mean(local_images: np.ndarray, process_count: int) -> np.ndarray:
  """Per-pixel mean over all processes' training shards."""
  local = local_images.mean(axis=0, dtype=np.float64).astype(np.float32)
  if process_count == 1:
    return local
  from jax.experimental import multihost_utils

  means, counts = multihost_utils.process_allgather((local, np.int32(len(local_images))))
  return combine_means(means, counts)
