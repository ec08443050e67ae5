"""The paper's SGD recipe as optax transforms, and its learning-rate schedules.

An optimiser is a function of (learning_rate, **fields of config.optim) returning an optax transform, registered
in OPTIMIZERS under the name `config.optim.name` selects; the recipe's is "sgd". make_optimizer wraps it in
optax.inject_hyperparams, so its learning rate lives in the optimiser state: the train step sets it every step
(set_learning_rate) from the schedule, the warm-up flag and the plateau rule, and a checkpoint holds it. A new
optimiser is one function and one entry here (and its fields in the config).
"""

import inspect

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from src.errors import positive_int, require


def check_config(config, *, has_val: bool):
  """Checks `schedule` (base_lr, boundaries, factor, kind, the plateau rule's fields, warm-up) and `optim`
  (momentum, weight_decay, momentum_form). has_val: the data has a validation split, which 'plateau' watches.

  Raises:
    ConfigError: naming the field and its valid values.
  """
  s = config.schedule
  require(s.base_lr > 0, "schedule.base_lr", f"must be > 0, got {s.base_lr!r}.")
  require(
      list(s.boundaries) == sorted(s.boundaries) and all(0 < b for b in s.boundaries),
      "schedule.boundaries",
      f"must be increasing positive step numbers, got {list(s.boundaries)!r}.",
  )
  require(0 < s.factor <= 1, "schedule.factor", f"must be in (0, 1], got {s.factor!r}.")
  kind = s.kind
  require(
      kind in ("step", "plateau"),
      "schedule.kind",
      f"must be 'step' (x factor at the boundaries) or 'plateau' (when the val error plateaus), got {kind!r}.",
  )
  if kind == "plateau":
    require(has_val, "schedule.kind", "'plateau' watches the validation error: set data.val_size > 0.")
    require(
        s.plateau_metric in ("val/error", "val/top5_error", "val/loss"),
        "schedule.plateau_metric",
        f"must be 'val/error', 'val/top5_error' or 'val/loss', got {s.plateau_metric!r}.",
    )
    positive_int(s["plateau_patience"], "schedule.plateau_patience")
    require(s.plateau_min_delta >= 0, "schedule.plateau_min_delta", f"must be >= 0, got {s.plateau_min_delta!r}.")
  require(s.warmup_lr >= 0, "schedule.warmup_lr", f"must be >= 0 (0 = no warm-up), got {s.warmup_lr!r}.")
  require(
      0 < s.warmup_until_error <= 1,
      "schedule.warmup_until_error",
      f"is a training error fraction in (0, 1] (paper: 0.8), got {s.warmup_until_error!r}.",
  )
  o = config.optim
  name = o.name
  require(name in OPTIMIZERS, "optim.name", f"must be one of {sorted(OPTIMIZERS)}, got {name!r}.")
  require(0 <= o.momentum < 1, "optim.momentum", f"must be in [0, 1), got {o.momentum!r}.")
  require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay!r}.")
  _check_momentum_form(o.momentum_form)


def _check_momentum_form(momentum_form):
  require(
      momentum_form in ("caffe", "optax"),
      "optim.momentum_form",
      f"must be 'caffe' (v = m v + lr g) or 'optax' (v = m v + g; w -= lr v), got {momentum_form!r}.",
  )


def weight_decay_mask(params, decay_bn_and_bias: bool):
  """Which leaves get weight decay. The paper does not say whether BN scale/bias and biases are decayed;
  Caffe, which it used, decays every parameter unless told otherwise, hence the default True."""
  if decay_bn_and_bias:
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda p: p.ndim > 1, params)  # conv / FC kernels only


def sgd(learning_rate, *, momentum: float, weight_decay: float, momentum_form: str, nesterov: bool = False, mask=None):
  """SGD with momentum and L2 weight decay (added to the gradient, as Caffe's weight_decay does).

  momentum_form='caffe': v <- m v + lr (g + wd w), w <- w - v   (Caffe; the paper's framework)
  momentum_form='optax': v <- m v + (g + wd w), w <- w - lr v   (optax.sgd, PyTorch)
  Both are equal while lr is constant; they differ right after an lr step: Caffe's form keeps the
  velocity's old scale. (Neither scales g by (1 - m), a third form some frameworks use.) Another form raises
  ConfigError (a ValueError).
  """
  _check_momentum_form(momentum_form)
  decay = optax.add_decayed_weights(weight_decay, mask)
  if momentum_form == "caffe":
    return optax.chain(
        decay, optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum, nesterov=nesterov)
    )
  return optax.chain(decay, optax.trace(decay=momentum, nesterov=nesterov), optax.scale_by_learning_rate(learning_rate))


OPTIMIZERS = {"sgd": sgd}


def make_optimizer(config, params):
  """The optimiser `config.optim.name` names: its keyword parameters (named explicitly: optax.inject_hyperparams
  reads them) take the config.optim fields of the same names as static arguments (`mask`: the weight-decay mask
  from decay_bn_and_bias), its learning rate is an injected hyperparameter."""
  make = OPTIMIZERS[config.optim.name]
  wanted = inspect.signature(make).parameters
  fields = {k: v for k, v in dict(config.optim).items() if k in wanted and k != "learning_rate"}
  if "mask" in wanted:
    fields["mask"] = weight_decay_mask(params, config.optim.decay_bn_and_bias)
  return optax.inject_hyperparams(make, static_args=tuple(fields))(learning_rate=config.schedule.base_lr, **fields)


def set_learning_rate(opt_state, lr):
  """The optimiser state of make_optimizer with this step's learning rate (an optax.InjectHyperparamsState)."""
  opt_state.hyperparams["learning_rate"] = lr
  return opt_state


def make_schedule(config):
  """kind 'step': base_lr, multiplied by `factor` at each boundary (CIFAR: 0.1 at 32k and 48k; ImageNet's
  common fixed-epoch form: epochs 30 and 60). kind 'plateau': base_lr times PlateauState.scale."""
  s = config.schedule
  if s.kind == "plateau":
    return optax.constant_schedule(s.base_lr)
  return optax.piecewise_constant_schedule(s.base_lr, {int(b): s.factor for b in s.boundaries})


@flax.struct.dataclass
class PlateauState:
  """The paper's ImageNet rule, "divided by 10 when the error plateaus" (Sec. 3.4), as checkpointed state."""

  best: jax.Array  # lowest monitored (validation) error so far
  waited: jax.Array  # evaluations since it last improved by more than plateau_min_delta
  scale: jax.Array  # product of the factors applied so far; multiplies the lr


def plateau_init() -> PlateauState:
  return PlateauState(
      best=jnp.asarray(np.inf, jnp.float32), waited=jnp.zeros((), jnp.int32), scale=jnp.ones((), jnp.float32)
  )


def plateau_update(config, p: PlateauState, error: float) -> PlateauState:
  """After an evaluation: an error that is not `plateau_min_delta` below the best for `plateau_patience`
  evaluations in a row multiplies the lr by `factor` (and the count starts again). Host-side, on floats."""
  s = config.schedule
  if s.kind != "plateau":
    return p
  best, waited, scale = float(p.best), int(p.waited), float(p.scale)
  if error < best - s.plateau_min_delta:
    best, waited = error, 0
  else:
    best, waited = min(best, error), waited + 1
  if waited >= s.plateau_patience:
    scale, waited = scale * s.factor, 0
  return PlateauState(best=np.float32(best), waited=np.int32(waited), scale=np.float32(scale))


def learning_rate(schedule, config, step, warmup_done, scale=1.0):
  """The lr for this step. ResNet-110's warm-up (Sec. 4.2): warmup_lr until the training error first
  falls below warmup_until_error (or warmup_max_steps pass), then back to the schedule for good.
  `scale`: the plateau rule's factor (1 for step schedules)."""
  lr = schedule(step) * scale
  s = config.schedule
  if s.warmup_lr:
    lr = jnp.where(warmup_done, lr, s.warmup_lr)
  return lr


def warmup_finished(config, step, warmup_done, batch_error):
  s = config.schedule
  return warmup_done | (batch_error < s.warmup_until_error) | (step + 1 >= s.warmup_max_steps)
