"""The paper's SGD recipe as optax transforms, and its learning-rate schedules.

The learning rate lives in the optimiser state (optax.inject_hyperparams), so the train step can set it
from the schedule and the ResNet-110 warm-up flag, and a checkpoint holds it.
"""
import jax
import jax.numpy as jnp
import optax


def weight_decay_mask(params, decay_bn_and_bias: bool):
  """Which leaves get weight decay. The paper does not say whether BN scale/bias and biases are decayed;
  Caffe, which it used, decays every parameter unless told otherwise, hence the default True."""
  if decay_bn_and_bias:
    return jax.tree.map(lambda _: True, params)
  return jax.tree.map(lambda p: p.ndim > 1, params)  # conv / FC kernels only


def sgd(learning_rate, *, momentum: float, weight_decay: float, momentum_form: str, nesterov: bool = False,
        mask=None):
  """SGD with momentum and L2 weight decay (added to the gradient, as Caffe's weight_decay does).

  momentum_form='caffe': v <- m v + lr (g + wd w), w <- w - v   (Caffe; the paper's framework)
  momentum_form='optax': v <- m v + (g + wd w), w <- w - lr v   (optax.sgd, PyTorch)
  Both are equal while lr is constant; they differ right after an lr step: Caffe's form keeps the
  velocity's old scale. (Neither scales g by (1 - m), a third form some frameworks use.)
  """
  decay = optax.add_decayed_weights(weight_decay, mask)
  if momentum_form == "caffe":
    return optax.chain(decay, optax.scale_by_learning_rate(learning_rate),
                       optax.trace(decay=momentum, nesterov=nesterov))
  if momentum_form == "optax":
    return optax.chain(decay, optax.trace(decay=momentum, nesterov=nesterov),
                       optax.scale_by_learning_rate(learning_rate))
  raise ValueError(f"optim.momentum_form must be 'caffe' or 'optax', got {momentum_form!r}.")


def make_optimizer(config, params):
  o = config.optim
  mask = weight_decay_mask(params, o.decay_bn_and_bias)
  return optax.inject_hyperparams(sgd, static_args=("momentum", "weight_decay", "momentum_form", "nesterov", "mask"))(
      learning_rate=config.schedule.base_lr, momentum=o.momentum, weight_decay=o.weight_decay,
      momentum_form=o.momentum_form, nesterov=o.nesterov, mask=mask)


def make_schedule(config):
  """Step schedule: base_lr, multiplied by `factor` at each boundary (CIFAR: 0.1 at 32k and 48k)."""
  s = config.schedule
  return optax.piecewise_constant_schedule(s.base_lr, {int(b): s.factor for b in s.boundaries})


def learning_rate(schedule, config, step, warmup_done):
  """The lr for this step. ResNet-110's warm-up (Sec. 4.2): warmup_lr until the training error first
  falls below warmup_until_error (or warmup_max_steps pass), then back to the schedule for good."""
  lr = schedule(step)
  s = config.schedule
  if s.warmup_lr:
    lr = jnp.where(warmup_done, lr, s.warmup_lr)
  return lr


def warmup_finished(config, step, warmup_done, batch_error):
  s = config.schedule
  return warmup_done | (batch_error < s.warmup_until_error) | (step + 1 >= s.warmup_max_steps)
