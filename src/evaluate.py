"""Evaluation of saved checkpoints with the paper's test protocols, and ensembles (Tables 2-5).

  python -m src.main --config=configs/imagenet_resnet.py:depth=50 --config.mode=eval
  python -m src.main --config=configs/imagenet_resnet.py:depth=152 --config.mode=eval \\
      --config.eval.protocols='("ten_crop",)' --config.eval.ensemble='("runs/imagenet_resnet-depth=101",)'

Protocols (the image preparation is in src/data/imagenet.py):
  center      shorter side 256, the central 224 crop (CIFAR: the test image as it is)
  ten_crop    the four corners and the centre of that image, and of its mirror image (Tables 2, 3)
  multiscale  fully convolutional on the whole image with shorter sides 224, 256, 384, 480, 640 (Table 4)
Scores are softmax probabilities, averaged over crops, over scales and over the members of an ensemble
(Table 5). Results go to <workdir>/eval.json, top-1 and top-5 error per protocol.
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import PartitionSpec as P

from src import checkpoint, data, models, paper, parallel, replicas
from src.cpu import xla_flags
from src.config_check import validate
from src.errors import ConfigError
from src.step import build_model, normalize


def load_members(run_dir: str, num_classes: int, mesh=None) -> list:
  """[(model, variables, config)] of a run directory's newest checkpoint, built from its own config.json, so an
  ensemble can mix depths and shortcut options: one per replica (config.replica) of a run of several seeds.
  The variables are replicated over `mesh` (default: every device of this job), whatever devices saved them.
  Raises ConfigError when `run_dir` holds no run."""
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"eval: {run_dir} holds no run (no config.json); train it first or fix eval.ensemble.")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  state = checkpoint.load_saved_state(run_dir, sharding=parallel.replicated(mesh or parallel.make_mesh()))
  model = build_model(config, num_classes=num_classes)
  config.step = int(np.max(state["step"]))
  out = []
  for r, variables in enumerate(replicas.replica_variables(state, config)):
    member = ml_collections.ConfigDict(config.to_dict())
    member.replica = r
    out.append((model, variables, member))
  return out


def _local_rows(x, mesh):
  """This process's rows of a batch-sharded global array."""
  if jax.process_count() == 1:
    return np.asarray(x)
  return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, P("data")))


CROPS_PER_IMAGE = {"center": 1, "ten_crop": 10, "multiscale": 1}


def images_per_call(protocol: str, local_batch: int) -> int:
  """Images of one eval call on this process. eval_batch_size counts network inputs, not images: a 10-crop call
  takes a tenth of the images, so it holds as many 224x224 crops as a centre-crop call and needs the memory of one
  ordinary eval batch (ResNet-50 at 512: 6.5 GiB of temporaries, where 512 images x 10 crops needed 65 GiB; README).
  Rounded down to a multiple of this process's devices, at least one image per device."""
  devices = jax.local_device_count()
  return max(devices, local_batch // CROPS_PER_IMAGE[protocol] // devices * devices)


def scores_fn(model, mean, mesh, protocol: str):
  """The jitted eval call of `protocol`: (variables, uint8 images) -> softmax scores, float32 [b, classes].

  center: images [b, h, w, c], batch-sharded. ten_crop: [b, 10, h, w, c], scores averaged over the crops.
  multiscale: one whole image [1, H, W, c] on one device, `mean` per channel [c]."""
  compiler_options = xla_flags.compiler_options()
  if protocol == "multiscale":
    return jax.jit(
        lambda v, x: jax.nn.softmax(model.apply(v, normalize(x, mean), train=False)), compiler_options=compiler_options
    )

  def scores(v, images):
    crops = images.reshape((-1,) + images.shape[-3:])  # [b, 10, h, w, c] -> [10 b, h, w, c]
    p = jax.nn.softmax(model.apply(v, normalize(crops, mean), train=False))
    return p.reshape(images.shape[0], -1, p.shape[-1]).mean(axis=1)  # averaged over the crops

  return jax.jit(scores, out_shardings=parallel.batch_sharded(mesh), compiler_options=compiler_options)


def predict(model, variables, ds, split: str, protocol: str, batch_size: int, mesh):
  """Softmax scores of this process's examples of `split` under `protocol`: (probs [n, C], labels [n]).
  batch_size: this process's share of eval_batch_size, in network inputs (images_per_call)."""
  probs, labels = [], []
  if protocol == "multiscale":
    # Whole images of varying shape, one at a time on this process's first device; the mean is the
    # per-channel mean of the crop-sized mean image (it has no meaning at other sizes).
    apply = scores_fn(model, jnp.asarray(ds.mean.mean(axis=(0, 1))), mesh, protocol)
    # Through the host: the variables are global arrays, which one process cannot move onto one device.
    variables = jax.device_put(jax.tree.map(np.asarray, variables), jax.local_devices()[0])
    for item in ds.multiscale_batches(split):
      if item["mask"][0]:
        probs.append(np.mean([np.asarray(apply(variables, x))[0] for x in item["images"]], axis=0))
        labels.append(int(item["label"][0]))
    return np.asarray(probs, np.float32).reshape(len(labels), -1), np.asarray(labels, np.int32)

  apply = scores_fn(model, jnp.asarray(ds.mean), mesh, protocol)
  variables = parallel.replicate(variables, mesh)
  images = images_per_call(protocol, batch_size)
  batches = (
      ds.eval_batches(split, images)
      if protocol == "center"  # every dataset's default
      else ds.eval_batches(split, images, protocol=protocol)
  )
  for batch in batches:
    mask = batch.pop("mask")
    p = _local_rows(apply(variables, parallel.global_batch({"image": batch["image"]}, mesh)["image"]), mesh)
    probs.append(p[mask])
    labels.append(batch["label"][mask])
  return np.concatenate(probs), np.concatenate(labels).astype(np.int32)


def eval_call_memory(config, protocol: str, num_classes: int = 1000) -> dict:
  """XLA's memory analysis of one compiled eval call of `protocol` at config.eval_batch_size, on this process's
  devices: {'temp_bytes', 'argument_bytes', 'output_bytes', 'images', 'input_shape'}. Compiles, runs nothing.

  Centre and 10-crop calls take images_per_call images of data.crop (CIFAR: 32x32); multi-scale one image with
  the largest data.multiscale shorter side and a 4:3 longer side rounded as the pipeline does (640 x 864).
  Memory that XLA does not allocate (oneDNN's scratch under conv_impl=onednn) is not counted.
  """
  mesh = parallel.make_mesh()
  model = build_model(config, num_classes=num_classes)
  d = config.data
  crop = d.get("crop", 32)
  channels = 3
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, crop, crop, channels)), train=False))
  if protocol == "multiscale":
    side, r = max(d.multiscale), d.multiscale_round
    longer = max(side, int(side * 4 / 3 / r + 0.5) * r)
    mean = jnp.zeros((channels,))
    x = jax.ShapeDtypeStruct((1, side, longer, channels), jnp.uint8)
    images = 1
  else:
    mean = jnp.zeros((crop, crop, channels))
    images = images_per_call(protocol, config.eval_batch_size // jax.process_count()) * jax.process_count()
    crops = (CROPS_PER_IMAGE[protocol],) if protocol == "ten_crop" else ()
    x = jax.ShapeDtypeStruct((images, *crops, crop, crop, channels), jnp.uint8, sharding=parallel.batch_sharded(mesh))
  fn = scores_fn(model, mean, mesh, protocol)
  m = fn.lower(variables, x).compile().memory_analysis()
  return {
      "temp_bytes": int(m.temp_size_in_bytes),
      "argument_bytes": int(m.argument_size_in_bytes),
      "output_bytes": int(m.output_size_in_bytes),
      "images": images,
      "input_shape": tuple(x.shape),
  }


def topk_errors(probs, labels, ks=(1, 5)) -> dict:
  """Top-k error counts of these examples: {'top1': wrong, 'top5': wrong, 'count': n}."""
  ranked = np.argsort(-probs, axis=1, kind="stable")
  out = {f"top{k}": int(np.sum(~np.any(ranked[:, :k] == labels[:, None], axis=1))) for k in ks}
  out["count"] = len(labels)
  return out


def _global_sum(counts: dict) -> dict:
  if jax.process_count() == 1:
    return counts
  keys = sorted(counts)
  summed = multihost_utils.process_allgather(np.asarray([counts[k] for k in keys], np.int64)).sum(axis=0)
  return dict(zip(keys, (int(v) for v in summed)))


def _errors(probs, labels) -> dict:
  counts = _global_sum(topk_errors(probs, labels))
  return {
      "top1_error": counts["top1"] / counts["count"],
      "top5_error": counts["top5"] / counts["count"],
      "count": counts["count"],
  }


def paper_error(config, protocol: str):
  """The paper's (top-1, top-5) error for this model and protocol, where it reports one: on ImageNet only."""
  if config.data.name != "imagenet2012":
    return None
  table = {"ten_crop": paper.IMAGENET_10CROP, "multiscale": paper.IMAGENET_MULTISCALE}.get(protocol, {})
  return table.get(paper.imagenet_key(config.model.name, config.model.shortcut))


def run_eval(config, workdir: str, log=print) -> dict:
  """Evaluates the newest checkpoint of `workdir` (with those of config.eval.ensemble: an ensemble, every replica
  of a run of several seeds a member). A run of several seeds alone: each replica on its own, and the mean."""
  validate(config)
  members = [workdir, *config.eval.ensemble]
  for run_dir in members:  # every member is checked before any data is read
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
      raise ConfigError(f"eval: no checkpoints in {run_dir}; train it first (mode=train) or fix eval.ensemble.")
  mesh = parallel.make_mesh()
  pid, nproc = jax.process_index(), jax.process_count()
  ds = data.get_dataset(config.data, seed=config.seed, process_index=pid, process_count=nproc)
  loaded = [(run_dir, *m) for run_dir in members for m in load_members(run_dir, ds.num_classes, mesh)]
  for run_dir, _, _, member_config in loaded:
    if member_config.data.name != config.data.name:
      raise ConfigError(f"eval: {run_dir} was trained on {member_config.data.name}, not {config.data.name}.")
  seeds_alone = len(members) == 1 and len(loaded) > 1  # the replicas of one run: each on its own
  results = {}
  for protocol in config.eval.protocols:
    outputs = [
        predict(
            model,
            variables,
            ds,
            config.eval.split,
            protocol,
            config.eval_batch_size // nproc,
            mesh,
        )
        for _, model, variables, _ in loaded
    ]
    labels = outputs[0][1]
    assert all(np.array_equal(labels, other) for _, other in outputs), "members saw different examples"
    if seeds_alone:
      each = [_errors(probs, labels) for probs, _ in outputs]
      stats = replicas.summary(each, ["top1_error", "top5_error"])
      results[protocol] = {**stats, "count": each[0]["count"], "replicas": each}
    else:
      results[protocol] = _errors(np.mean([p for p, _ in outputs], axis=0), labels)  # the ensemble: mean softmax
    reference = paper_error(config, protocol) if len(members) == 1 else None
    got = results[protocol]
    spread = f" +- {100 * got['top1_error_std']:.2f} over {len(loaded)} seeds" if seeds_alone else ""
    log(
        f"{config.eval.split} {protocol:10s} top-1 {100 * got['top1_error']:6.2f}%{spread}  "
        f"top-5 {100 * got['top5_error']:6.2f}%  ({got['count']} images)"
        + (f"   paper: {reference[0]}% / {reference[1] or '-'}%" if reference else "")
    )
  out = {
      "members": [
          {"workdir": os.path.abspath(m), "model": c.model.name, "step": c.step, "replica": c.replica}
          for m, _, _, c in loaded
      ],
      "split": config.eval.split,
      "results": results,
  }
  if pid == 0:
    with open(os.path.join(workdir, "eval.json"), "w") as f:
      json.dump(out, f, indent=2)
  return out
