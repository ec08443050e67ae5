"""Benchmarks of the real train step: `python -m src.bench [--models ...] [--batch ...] [--dtype ...]`.

Per case (model x batch x dtype x conv_chunk x steps_per_call), one JSON line and a table row: compile time,
steady-state step time, training images/s, peak memory, achieved FLOP/s (XLA cost analysis of the compiled
step), the input pipeline's own images/s, and the step time with the real input pipeline against data already on
the device. `--torch` times a PyTorch eager peer of the CIFAR nets in the same interleaved windows as each
float32 case (columns torch_step_ms and speed_vs_torch; optional, PyTorch is not a dependency). `--compile_only`
compiles and runs nothing: compile times (how they grow with depth) and the compiled step's memory from XLA's memory
analysis (temporaries, arguments, outputs; `--remat false,true` to compare).

    python -m src.bench --models cifar_resnet20 --batch 128 --conv_chunk 0,16 --torch
    python -m src.bench --compile_only --models cifar_resnet110,cifar_resnet1202,resnet152 --batch 32
    python -m src.bench --models cifar_resnet20 --num_seeds 1,4,8        # replicas: images/s of all, per replica
    python -m src.bench --compile_only --models cifar_resnet1202 --batch 128 --remat false,true --conv_impl xla
    python -m src.bench --input_only --image_dir /data/imagenette2 --imagenet_data_dir /data/tfds --batch 64

`--input_only` times the ImageNet input pipeline alone (Sec. 3.4's train augmentation: decode, scale, crop, flip,
PCA colour), in images per second of one process: on a folder of photos (`--image_dir`, data.pipeline 'imagenet')
and/or on a prepared tfds imagenet2012 (`--imagenet_data_dir`), at `--crop` (224).
"""

if (
    __name__ == "__main__"
):  # before JAX starts: glibc reads its tunables only then (src/cpu/hugepages.py), XLA its flags
  from src.cpu import xla_flags
  from src.cpu.hugepages import restart_with_huge_pages

  restart_with_huge_pages()
  xla_flags.apply()

import argparse  # noqa: E402
import functools
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs.common import cifar_recipe
from src import data, models, optim, parallel, replicas
from src.step import build_model, create_state, jit_train_step, stack


def case_config(name, batch, dtype, conv_chunk, scan, steps_per_call, conv_impl="auto", remat=False, num_seeds=1):
  c = cifar_recipe(name if name.startswith("cifar_") else "cifar_resnet20")
  c.model.name = name
  c.model.shortcut = "A" if name.startswith("cifar_") else "B"
  c.model.dtype, c.model.scan = dtype, scan
  c.execution.conv_impl, c.execution.conv_chunk, c.execution.remat = conv_impl, conv_chunk, remat
  c.model.bn_group_size = 0
  c.batch_size, c.execution.steps_per_call, c.num_seeds = batch, steps_per_call, num_seeds
  return c


def random_batch(shape, batch, steps_per_call, seed=0, num_seeds=1):
  rng = np.random.default_rng(seed)
  lead = ((steps_per_call,) if steps_per_call > 1 else ()) + ((num_seeds,) if num_seeds > 1 else ())
  return {
      "image": rng.integers(0, 256, lead + (batch,) + shape, dtype=np.uint8),
      "label": rng.integers(0, 10, lead + (batch,)).astype(np.int32),
  }


def peak_memory_bytes():
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"]
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # CPU: the process's peak RSS


def build(config, shape, abstract=False):
  """The mesh, the train state and the jitted step. abstract: the state's shapes only (nothing initialised)."""
  mesh = parallel.make_mesh()
  model = build_model(config, num_classes=10)
  if abstract:
    state = jax.eval_shape(lambda: create_state(config, model, shape, mesh)[0])
    tx = optim.make_optimizer(config, state.params)
  else:
    state, tx = create_state(config, model, shape, mesh)
  return mesh, state, jit_train_step(config, model, tx, jnp.full(shape, 120.0), mesh)


def time_steps(runs: dict, n, windows=3) -> dict:
  """Median seconds per call of each run over `windows` windows of n calls, the runs' windows interleaved
  (A B A B ...) so that a machine's drift hits all alike. Each window starts after one untimed call (what the
  previous run left in caches and thread pools is not charged to this one) and blocks only at its end."""
  times = {k: [] for k in runs}
  for _ in range(windows):
    for k, run in runs.items():
      jax.block_until_ready(run())
      t = time.perf_counter()
      out = None
      for _ in range(n):
        out = run()
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t) / n)
  return {k: statistics.median(v) for k, v in times.items()}


@functools.lru_cache(maxsize=None)  # the same for every conv_impl, chunk, scan and steps_per_call of a model
def reference_flops(name, batch, dtype, shape):
  """FLOPs of one train step by XLA's cost analysis of the same step written without loops (XLA's own conv
  gradients, no scan, one step per call): the cost analysis counts a loop body once, whatever its trip count."""
  ref = case_config(name, batch, dtype, 0, "false", 1, "xla")
  mesh, state, step = build(ref, shape, abstract=True)  # lowered, not compiled: cheap even for ResNet-1202
  cost = step.lower(state, parallel.global_batch(random_batch(shape, batch, 1), mesh)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost.get("flops", 0.0)


def bench_case(
    name, batch, dtype, conv_impl, conv_chunk, scan, steps_per_call, steps, pipeline, torch=False, num_seeds=1
):
  shape = models.input_shape(name)
  if pipeline is not None and pipeline.image_shape[:2] == shape[:2]:
    shape = tuple(pipeline.image_shape)  # e.g. mnist5k's 1 channel: the nets take any number of channels
  config = case_config(name, batch, dtype, conv_chunk, scan, steps_per_call, conv_impl, num_seeds=num_seeds)
  mesh, state, step = build(config, shape)
  host = random_batch(shape, batch, steps_per_call, num_seeds=num_seeds)
  lead = int(steps_per_call > 1) + int(num_seeds > 1)  # the steps and replica axes before the batch axis
  on_device = parallel.global_batch(host, mesh, leading_axes=lead)
  t = time.perf_counter()
  compiled = step.lower(state, on_device).compile()
  compile_s = time.perf_counter() - t
  holder = {"state": state}

  def run_device():
    holder["state"], m = compiled(holder["state"], on_device)
    return m

  runs = {"device": run_device}
  row = {
      "model": name,
      "input": "x".join(map(str, shape)),
      "batch": batch,
      "dtype": dtype,
      "conv_impl": conv_impl,
      "conv_chunk": conv_chunk,
      "scan": scan,
      "steps_per_call": steps_per_call,
      "num_seeds": num_seeds,
      "compile_s": round(compile_s, 2),
  }
  if pipeline is not None and shape == tuple(pipeline.image_shape):
    step_i = [0]
    local = batch // jax.process_count()

    seeds = replicas.seeds(config)

    def next_host_batch():
      i = step_i[0]
      step_i[0] += steps_per_call
      if steps_per_call == 1:
        return replicas.train_batch(pipeline, i, local, seeds)
      return stack([replicas.train_batch(pipeline, i + j, local, seeds) for j in range(steps_per_call)])

    n = 20
    t = time.perf_counter()
    for _ in range(n):
      next_host_batch()
    row["pipeline_images_per_sec"] = round(n * batch * steps_per_call * num_seeds / (time.perf_counter() - t), 1)

    def run_pipeline():  # as the train loop does: host batch, global array, dispatch
      batch_now = parallel.global_batch(next_host_batch(), mesh, leading_axes=lead)
      holder["state"], m = compiled(holder["state"], batch_now)
      return m

    runs["pipeline"] = run_pipeline
  if torch and num_seeds == 1:  # the PyTorch peer, timed in the same interleaved windows: the ratio is immune to drift
    from src.bench_torch import torch_step

    torch_run, row["peer"] = torch_step(name, batch, shape)
    runs["torch"] = lambda: [torch_run() for _ in range(steps_per_call)]
  run_device()  # first call: dispatch caches
  secs = time_steps(runs, max(1, steps // steps_per_call))
  call_s = secs["device"]
  row.update(
      {
          "step_ms": round(1e3 * call_s / steps_per_call, 2),
          "images_per_sec": round(batch * steps_per_call * num_seeds / call_s, 1),  # of all replicas together
          "images_per_sec_per_replica": round(batch * steps_per_call / call_s, 1),
          "flops_per_step": num_seeds * reference_flops(name, batch, dtype, tuple(shape)),
          "peak_memory_mb": round(peak_memory_bytes() / 2**20, 1),
          "backend": jax.default_backend(),
      }
  )
  row["achieved_tflops"] = round(row["flops_per_step"] / (call_s / steps_per_call) / 1e12, 4)
  if "torch" in secs:
    row["torch_step_ms"] = round(1e3 * secs["torch"] / steps_per_call, 2)
    row["speed_vs_torch"] = round(secs["torch"] / call_s, 3)  # > 1: JAX trains faster
  if "pipeline" in secs:
    row["pipeline_step_ms"] = round(1e3 * secs["pipeline"] / steps_per_call, 2)
    row["pipeline_vs_device"] = round(secs["pipeline"] / call_s, 3)
  return row


def input_config(name: str, where: str, crop: int):
  """The ImageNet recipe's data config (configs/common.py) for imagenet2012 in tfds data_dir `where`, or for the
  folder of photos `where`, with every size scaled to `crop` as configs/imagenet_resnet.py:crop= does."""
  from configs import imagenet_resnet

  if name == "image_folder":
    return imagenet_resnet.get_config(f"depth=18,image_dir={where},crop={crop}").data
  c = imagenet_resnet.get_config("depth=18")
  c.data.data_dir = where
  if crop != 224:  # the same sizes as the folder's preset
    folder = imagenet_resnet.get_config(f"depth=18,image_dir=/nonexistent,crop={crop}").data
    for key in ("crop", "scale_min", "scale_max", "eval_resize", "multiscale", "multiscale_round"):
      c.data[key] = folder[key]
  return c.data


def bench_input(data_config, batch: int, steps: int, windows: int = 3) -> dict:
  """Train batches per second of one process's ImageNet pipeline (decode + augment, TF's threads on all cores):
  the median over `windows` windows of `steps` consecutive batches, after a first batch that starts the stream
  (its time, with the dataset's loading and mean, is start_s)."""
  t0 = time.perf_counter()
  ds = data.get_dataset(data_config, seed=0)
  ds.train_batch(0, batch)
  start = time.perf_counter() - t0
  times, step = [], 1
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(steps):
      ds.train_batch(step, batch)
      step += 1
    times.append(time.perf_counter() - t)
  return {
      "dataset": data_config.name,
      "batch": batch,
      "crop": data_config.crop,
      "start_s": round(start, 2),
      "images_per_sec": round(batch * steps / statistics.median(times), 1),
  }


def input_only(a, batches, emit, rows):
  """--input_only: bench_input of the folder and/or imagenet2012 at each batch size; the table of both."""
  for batch in batches:
    if a.image_dir:
      emit(bench_input(input_config("image_folder", a.image_dir, a.crop), batch, a.steps))
    if a.imagenet_data_dir:
      emit(bench_input(input_config("imagenet2012", a.imagenet_data_dir, a.crop), batch, a.steps))
  print("\n" + table(rows, ["dataset", "batch", "crop", "start_s", "images_per_sec"]))
  return rows


def compile_case(name, batch, scan, conv_impl="auto", conv_chunk=16, remat=False):
  """Compile time and XLA's memory analysis of the compiled train step (MB: temporaries, arguments, outputs);
  nothing runs. Memory XLA cannot see (oneDNN's scratch under conv_impl=onednn) is not in it."""
  shape = models.input_shape(name)
  config = case_config(name, batch, "float32", conv_chunk, scan, 1, conv_impl, remat)
  mesh, state, step = build(config, shape)
  host = random_batch(shape, batch, 1)
  t = time.perf_counter()
  compiled = step.lower(state, parallel.global_batch(host, mesh)).compile()
  compile_s = time.perf_counter() - t
  memory = compiled.memory_analysis()
  return {
      "model": name,
      "batch": batch,
      "scan": scan,
      "remat": remat,
      "conv_impl": conv_impl,
      "compile_s": round(compile_s, 2),
      "params": models.count_params(state.params),
      "temp_mb": round(memory.temp_size_in_bytes / 2**20, 1),
      "argument_mb": round(memory.argument_size_in_bytes / 2**20, 1),
      "output_mb": round(memory.output_size_in_bytes / 2**20, 1),
  }


def table(rows, keys):
  widths = [max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys]
  lines = ["  ".join(k.ljust(w) for k, w in zip(keys, widths))]
  lines += ["  ".join(str(r.get(k, "")).ljust(w) for k, w in zip(keys, widths)) for r in rows]
  return "\n".join(lines)


def csv(text, cast=str):
  return [cast(v) for v in text.split(",") if v]


def parse_scan(v):
  return v.lower()


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", default="cifar_resnet20,cifar_resnet56,cifar_resnet110,resnet50")
  p.add_argument("--batch", default="128")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--conv_impl", default="auto", help="auto, xla, cpu, onednn (comma-separated to compare)")
  p.add_argument("--conv_chunk", default="16", help="examples per kernel-gradient chunk of conv_impl=cpu")
  p.add_argument("--scan", default="auto", help="auto, true, false (comma-separated to compare)")
  p.add_argument("--remat", default="false", help="--compile_only: false, true (comma-separated to compare)")
  p.add_argument("--steps_per_call", default="1")
  p.add_argument("--num_seeds", default="1", help="replicas per program (src/replicas.py), e.g. 1,4,8")
  p.add_argument("--steps", type=int, default=10, help="steps per timing window (3 windows, median)")
  p.add_argument("--dataset", default="mnist5k", help="input pipeline for the pipeline columns ('' = skip)")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--compile_only", action="store_true")
  p.add_argument("--torch", action="store_true", help="also time the PyTorch eager peer (CIFAR nets)")
  p.add_argument("--out", default=None, help="append the JSON lines to this file")
  p.add_argument("--input_only", action="store_true", help="time the ImageNet input pipeline only (see above)")
  p.add_argument("--image_dir", default=None, help="--input_only: a folder of photos")
  p.add_argument("--imagenet_data_dir", default=None, help="--input_only: a tfds data_dir with imagenet2012")
  p.add_argument("--crop", type=int, default=224, help="--input_only: the train crop")
  a = p.parse_args(argv)
  if a.torch:
    try:
      import torch  # noqa: F401
    except ImportError as e:
      p.error(
          f"--torch needs PyTorch, an optional peer that this project does not install ({e}): "
          "`pip install torch --index-url https://download.pytorch.org/whl/cpu`, or drop --torch."
      )
  rows = []

  def emit(row):
    rows.append(row)
    line = json.dumps(row)
    print(line, flush=True)
    if a.out:
      with open(a.out, "a") as f:
        f.write(line + "\n")

  names, batches, scans = csv(a.models), csv(a.batch, int), csv(a.scan, parse_scan)
  if a.input_only:
    if not (a.image_dir or a.imagenet_data_dir):
      p.error("--input_only needs --image_dir and/or --imagenet_data_dir.")
    return input_only(a, batches, emit, rows)
  if a.compile_only:
    for name in names:
      for batch in batches:
        for scan in scans:
          for remat in csv(a.remat, lambda v: v.lower() == "true"):
            emit(compile_case(name, batch, scan, csv(a.conv_impl)[0], csv(a.conv_chunk, int)[0], remat))
    keys = ["model", "batch", "scan", "remat", "conv_impl", "params", "compile_s", "temp_mb", "argument_mb"]
    print("\n" + table(rows, keys + ["output_mb"]))
    return rows
  pipeline = None
  if a.dataset:
    cfg = cifar_recipe().data
    cfg.name, cfg.data_dir = a.dataset, a.data_dir
    pipeline = data.get_dataset(cfg, seed=0)
  for name in names:
    for batch in batches:
      for dtype in csv(a.dtype):
        for impl in csv(a.conv_impl):
          for chunk in csv(a.conv_chunk, int):
            for scan in scans:
              for k in csv(a.steps_per_call, int):
                for seeds in csv(a.num_seeds, int):
                  peer = a.torch and name.startswith("cifar_") and dtype == "float32"
                  emit(bench_case(name, batch, dtype, impl, chunk, scan, k, a.steps, pipeline, peer, seeds))
  keys = [
      "model",
      "batch",
      "dtype",
      "conv_impl",
      "conv_chunk",
      "scan",
      "steps_per_call",
      "num_seeds",
      "compile_s",
      "step_ms",
      "images_per_sec",
      "images_per_sec_per_replica",
      "achieved_tflops",
      "peak_memory_mb",
      "pipeline_images_per_sec",
      "pipeline_vs_device",
      "torch_step_ms",
      "speed_vs_torch",
  ]
  print("\n" + table(rows, keys))
  return rows


if __name__ == "__main__":
  main(sys.argv[1:])
