"""The paper's SGD recipe as optax transforms, and its learning-rate schedules.

The learning rate lives in the optimiser state (optax.inject_hyperparams), so the train step can set it
from the schedule and the ResNet-110 warm-up flag, and a checkpoint holds it.
"""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax


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
  velocity's old scale. (Neither scales g by (1 - m), a third form some frameworks use.)
  """
  decay = optax.add_decayed_weights(weight_decay, mask)
  if momentum_form == "caffe":
    return optax.chain(
        decay, optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum, nesterov=nesterov)
    )
  if momentum_form == "optax":
    return optax.chain(
        decay, optax.trace(decay=momentum, nesterov=nesterov), optax.scale_by_learning_rate(learning_rate)
    )
  raise ValueError(f"optim.momentum_form must be 'caffe' or 'optax', got {momentum_form!r}.")


def make_optimizer(config, params):
  o = config.optim
  mask = weight_decay_mask(params, o.decay_bn_and_bias)
  return optax.inject_hyperparams(sgd, static_args=("momentum", "weight_decay", "momentum_form", "nesterov", "mask"))(
      learning_rate=config.schedule.base_lr,
      momentum=o.momentum,
      weight_decay=o.weight_decay,
      momentum_form=o.momentum_form,
      nesterov=o.nesterov,
      mask=mask,
  )


def make_schedule(config):
  """kind 'step': base_lr, multiplied by `factor` at each boundary (CIFAR: 0.1 at 32k and 48k; ImageNet's
  common fixed-epoch form: epochs 30 and 60). kind 'plateau': base_lr times PlateauState.scale."""
  s = config.schedule
  if s.get("kind", "step") == "plateau":
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
  if s.get("kind", "step") != "plateau":
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
