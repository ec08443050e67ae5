"""The step library: the train state, the jitted train and eval steps exactly as the train loop runs them, and the
model a config builds. src/train.py (the loop), src/evaluate.py, src/bench.py and src/analysis use them.

    model = build_model(config, num_classes=10)
    state, tx = create_state(config, model, (32, 32, 3), mesh)
    train_step = jit_train_step(config, model, tx, mean, mesh)     # (state, batch) -> (state, metrics)
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from src import cpu, models, optim, parallel, replicas
from src.cpu import xla_flags


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  warmup_done: jax.Array  # ResNet-110's warm-up has ended (sticky)
  plateau: optim.PlateauState  # the plateau schedule's lr factor and its evidence (ImageNet, Sec. 3.4)


def normalize(images, mean):
  """uint8 images -> float, per-pixel mean subtracted (Sec. 4.2), scaled to about [-1, 1]."""
  return (images.astype(jnp.float32) - mean) / 255.0


def create_state(config, model, image_shape, mesh):
  """The initial TrainState, replicated over `mesh`, and the optimiser. With config.num_seeds = K > 1, every leaf
  has a leading replica axis of K, replica r initialised with seed config.seed + r (src/replicas.py)."""

  def init(seed):
    variables = model.init(jax.random.key(seed), jnp.zeros((1,) + tuple(image_shape)), train=False)
    tx = optim.make_optimizer(config, variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
        warmup_done=jnp.zeros((), bool),
        plateau=optim.plateau_init(),
    )

  k = replicas.num_seeds(config)
  seeds = np.asarray(replicas.seeds(config), np.int32) if k > 1 else config.seed
  state = jax.jit(replicas.vmap(init, k), out_shardings=parallel.replicated(mesh))(seeds)
  return state, optim.make_optimizer(config, state.params)


def build_model(config, num_classes=None):
  """The config's net (its `model` block), computed as its `execution` block says: remat, and the kernels that
  `execution.conv_impl` picks for this backend injected (src.cpu)."""
  e = config.execution
  kernels = cpu.model_kernels(e.conv_impl, e.conv_chunk)
  return models.model_from_config(config.model, num_classes=num_classes, remat=e.remat, **kernels)


def make_train_step(config, model, tx, mean):
  schedule = optim.make_schedule(config)

  def train_step(state: TrainState, batch):
    images, labels = normalize(batch["image"], mean), batch["label"]
    lr = optim.learning_rate(schedule, config, state.step, state.warmup_done, state.plateau.scale)

    def loss_fn(params):
      logits, new_vars = model.apply(
          {"params": params, "batch_stats": state.batch_stats}, images, train=True, mutable=["batch_stats"]
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (logits, new_vars["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt_state = optim.set_learning_rate(state.opt_state, lr)
    updates, opt_state = tx.update(grads, opt_state, state.params)
    error = jnp.mean(jnp.argmax(logits, -1) != labels)
    new_state = TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
        warmup_done=optim.warmup_finished(config, state.step, state.warmup_done, error),
        plateau=state.plateau,
    )
    # Every metric returned here is logged (per replica, averaged over the steps between log steps; `lr` is its
    # last value): a new one is a new key of this dict.
    return new_state, {"train/loss": loss, "train/error": error, "lr": lr}

  return train_step


def jit_train_step(config, model, tx, mean, mesh):
  """The jitted train step exactly as the train loop runs it: (state, batch) -> (state, metrics), the state donated
  and replicated over `mesh`, `steps_per_call` steps per call (then batches carry a leading steps axis), each a
  step of every replica (num_seeds > 1: vmapped over the replica axis of the state and of the batch)."""
  step = replicas.vmap(make_train_step(config, model, tx, mean), replicas.num_seeds(config))
  if config.execution.steps_per_call > 1:
    step = make_multi_step(step)
  rep = parallel.replicated(mesh)
  return jax.jit(step, donate_argnums=0, out_shardings=(rep, rep), compiler_options=xla_flags.compiler_options())


def make_multi_step(train_step):
  """steps_per_call steps in one jitted call (lax.scan over a stack of batches): on GPUs the small CIFAR
  batches are dominated by per-step dispatch overhead, which this amortises. Same maths as single steps."""

  def multi_step(state, batches):
    return jax.lax.scan(train_step, state, batches)

  return multi_step


def stack(batches):
  return {key: np.stack([b[key] for b in batches]) for key in batches[0]}


def make_eval_step(model, mean):
  def eval_step(state: TrainState, batch):
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, normalize(batch["image"], mean), train=False
    )
    mask = batch["mask"].astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    wrong = (jnp.argmax(logits, -1) != batch["label"]).astype(jnp.float32)
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]  # a folder of fewer than 5 classes: top-all
    wrong5 = 1.0 - jnp.any(top5 == batch["label"][:, None], -1).astype(jnp.float32)
    return {
        "wrong": jnp.sum(wrong * mask),
        "wrong5": jnp.sum(wrong5 * mask),
        "loss": jnp.sum(loss * mask),
        "count": jnp.sum(mask),
    }

  return eval_step


def evaluate(eval_step, state, ds, split, local_batch, mesh) -> dict:
  """{'<split>/error', '<split>/loss' (and top5_error above 10 classes)}: floats, or arrays of one value per replica
  when the eval step is vmapped over replicas (jit_eval_step)."""
  totals = None
  for batch in ds.eval_batches(split, local_batch):
    out = eval_step(state, parallel.global_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = jax.device_get(totals)
  n = np.asarray(totals["count"], np.float64)
  out = {f"{split}/error": totals["wrong"] / n, f"{split}/loss": totals["loss"] / n}
  if ds.num_classes > 10:  # ImageNet reports top-5 as well
    out[f"{split}/top5_error"] = totals["wrong5"] / n
  return {k: v.astype(np.float64) if np.ndim(v) else float(v) for k, v in out.items()}


def jit_eval_step(config, model, mean, mesh):
  """The jitted eval step: (state, batch) -> summed errors and losses, per replica (vmapped) when num_seeds > 1."""
  step = replicas.vmap(make_eval_step(model, mean), replicas.num_seeds(config), in_axes=(0, None))
  return jax.jit(step, out_shardings=parallel.replicated(mesh), compiler_options=xla_flags.compiler_options())
