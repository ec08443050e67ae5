"""Whole-model parity: the project's nets and train step against the independent float64 reference of
tests/reference_resnet.py (no code shared with src/models, src/train or src/optim).

Two ways in, as users meet the nets:
- `apply`: `jax.grad` of `model.apply` under a plain `jax.jit`, as a notebook or a user's own code calls it:
  the loss, every gradient leaf and the new BN running statistics of one batch.
- `train_step`: the jitted train step exactly as `python -m src.main` compiles it (src.step.build_model and
  src.step.jit_train_step: injected CPU kernels, donation, shardings, XLA options), 3 SGD steps of the paper's recipe:
  the loss of each step, every parameter and BN running statistic after the 3 steps.

Each compares the largest relative error, max |project - reference| / max |reference| per leaf, with 1e-4 in
float32 (bf16 computes in 8-bit mantissas: BF16_TOLERANCE).

The ReLU's gradient jumps at 0, so wherever a pre-activation lies within float32 rounding of 0, float32 and float64
may take different sides: perturbing a float64 input by 1e-7 of itself moves its own gradients by up to 1e-2
(test_relu_decisions_make_raw_float32_gradients_ill_posed). The reference therefore takes the project's activation
decisions (each ReLU's sign, the stem max pool's choice), read from a forward pass of the same float32 weights and
batch, and computes the gradient of the same piecewise-linear function; `flips` counts where float64 alone would
have decided otherwise.

    python -m tests.test_parity       # prints the parity table of the README (a few minutes)
"""

import dataclasses
import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.common import cifar_recipe
from src import cpu, models, parallel
from src import step as train_steps
from src.cpu import onednn
from tests import reference_resnet as ref

FLOAT32_TOLERANCE = 1e-4
BF16_TOLERANCE = 5e-2
ONEDNN = not onednn.unavailable()


@dataclasses.dataclass(frozen=True)
class Case:
  """One net of the paper, its settings (get_model fields), and how the test runs it."""

  name: str
  arch: ref.Arch
  fields: tuple = ()  # get_model fields: (("shortcut", "B"), ...)
  conv_impl: str = "auto"
  dtype: str = "float32"
  batch: int = 32
  size: int = 32
  tolerance: float = 0.0  # 0: FLOAT32_TOLERANCE, or BF16_TOLERANCE for bfloat16

  @property
  def id(self):
    extra = ",".join(f"{k}={v}" for k, v in self.fields)
    return (
        f"{self.name}[{extra}]-{self.conv_impl}-{self.dtype}" if extra else f"{self.name}-{self.conv_impl}-{self.dtype}"
    )

  def model(self):
    group = self.arch.group
    return models.get_model(
        self.name,
        bn_group_size=group,
        dtype=self.dtype,
        **dict(self.fields),
        **cpu.model_kernels(self.conv_impl),
    )


R20 = ref.Arch("cifar", 20)
IMPLS = ["xla", "cpu"] + (["onednn"] if ONEDNN else [])
# Every conv_impl is held to the reference through one path at least: cpu through `apply`, xla and onednn through
# the train step below (which runs the same apply inside it); a second path each would add minutes of CI for little.
APPLY_CASES = [
    Case("cifar_resnet20", R20, conv_impl="cpu"),
    Case("cifar_plain20", dataclasses.replace(R20, residual=False)),
    Case("cifar_resnet20", dataclasses.replace(R20, shortcut="B", group=16), (("shortcut", "B"),)),
    Case("cifar_resnet20", dataclasses.replace(R20, shortcut="C"), (("shortcut", "C"),)),
    Case("cifar_resnet20", R20, (("scan", "true"),)),
    # 1e-4 is out of any float32 implementation's reach here: at this init the float64 reference's own gradients move
    # by 2.9e-5 when its input moves by 1e-7 (float32's rounding), a condition number of about 300 (XLA's convs
    # give 1.2e-4, oneDNN's 1.8e-4). Measured by tests/test_parity.py's sensitivity(); README, parity table.
    Case("resnet50", ref.Arch("imagenet", 50, shortcut="B"), batch=16, size=64, tolerance=3e-4),
    Case("resnet18", ref.Arch("imagenet", 18, shortcut="A", group=8), (("shortcut", "A"),), batch=16, size=64),
    Case("cifar_resnet20", R20, dtype="bfloat16"),
    # Pre-activation units (Identity Mappings): basic, and bottlenecks with projections (shortcut B).
    Case("cifar_preact_resnet20", dataclasses.replace(R20, preact=True)),
    # 164 layers at init are ill-conditioned as ResNet-50 is: the float64 reference's own gradients move by 1.3e-4
    # when its input moves by 1e-7 (sensitivity(), 2026-12-01); float32 through 164 layers lands at 3.4e-4.
    Case(
        "cifar_preact_resnet164",
        ref.Arch("cifar", 164, shortcut="B", preact=True),
        (("shortcut", "B"),),
        batch=8,
        tolerance=5e-4,
    ),
]
TRAIN_CASES = [  # plain nets, scanned stages, BN groups and shortcuts B/C are held to the reference through `apply`
    *[Case("cifar_resnet20", R20, conv_impl=impl) for impl in IMPLS if impl != "cpu"],
    Case("cifar_resnet20", R20, dtype="bfloat16"),
]


def rel_error(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def worst(got_tree, want_tree):
  """(largest relative error over the leaves, its leaf's path)."""
  errors = jax.tree.map(rel_error, got_tree, want_tree)
  return max((e, jax.tree_util.keystr(p)) for p, e in jax.tree.leaves_with_path(errors))


def as_float64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), ref.unroll_scanned(jax.device_get(tree)))


def batch(case, seed):
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (case.batch, case.size, case.size, 3), dtype=np.uint8)
  return images, (np.arange(case.batch) * 7 + seed) % 10


class Decisions:
  """The activation decisions of the project's float32 forward pass (read from a jitted `capture_intermediates`
  pass of the same weights and batch), keyed as the reference's ReLUs and max pool; and how many of them float64
  alone would have taken otherwise."""

  def __init__(self, case, model):
    self.arch = case.arch
    self._capture = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats", "intermediates"], capture_intermediates=True)
    )
    with jax.enable_x64(True):
      self._reference = jax.jit(functools.partial(ref.relu_inputs, case.arch))

  def __call__(self, variables, x):
    """(decisions {key: bool mask or pool index}, flips) for float32 variables and input `x`."""
    with jax.enable_x64(True):
      own = jax.device_get(
          self._reference(
              as_float64(variables["params"]), as_float64(variables["batch_stats"]), np.asarray(x, np.float64)
          )
      )
    outputs = ref.unroll_scanned(jax.device_get(self._capture(variables, x)[1]["intermediates"]))
    out, flips = {}, 0
    for key in own:
      if key == ("pool",):  # the 3x3 max pool of relu(stem): the index of the max among the 9 views of each window
        stem = np.maximum(np.asarray(outputs["conv1"]["__call__"][0], np.float32), 0)
        out[key] = np.asarray(jnp.argmax(ref.pool_views(jnp.asarray(stem)), axis=0))
        continue
      node = outputs
      for part in key:
        node = node[part]
      out[key] = np.asarray(node["__call__"][0], np.float32) > 0  # a module's output: ConvBN response or relu(block)
      flips += int(np.sum((own[key] > 0) != out[key]))
    return out, flips


def apply_parity(case):
  """Errors of jit(value_and_grad(model.apply)) against the reference: {'loss', 'grads', 'stats', 'flips'}."""
  model = case.model()
  images, labels = batch(case, 0)
  x = jnp.asarray(images, jnp.float32) / 255.0 - 0.5
  variables = model.init(jax.random.key(0), x[:1], train=False)

  def loss_fn(params):
    logits, new = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]}, x, train=True, mutable=["batch_stats"]
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new["batch_stats"]

  (loss, stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])
  x64 = np.asarray(x, np.float64)
  dec, flips = Decisions(case, model)(variables, x)
  with jax.enable_x64(True):
    run = jax.jit(functools.partial(ref.loss_and_grads, case.arch))
    want_loss, want_grads, want_stats, _ = run(
        as_float64(variables["params"]), as_float64(variables["batch_stats"]), x64, labels, dec
    )
  return {
      "loss": (rel_error(loss, want_loss), "loss"),
      "grads": worst(ref.unroll_scanned(grads), want_grads),
      "stats": worst(ref.unroll_scanned(stats), want_stats),
      "flips": flips,
  }


def train_config(case):
  c = cifar_recipe(case.name)
  c.model.dtype, c.execution.conv_impl = case.dtype, case.conv_impl
  c.model.bn_group_size = case.arch.group or 0
  for k, v in case.fields:
    c.model[k] = v
  c.batch_size = case.batch
  return c


def train_step_parity(case, steps=3):
  """Errors of 3 steps of the train step as src.main compiles it against 3 reference SGD steps."""
  config = train_config(case)
  mesh = parallel.make_mesh()
  model = train_steps.build_model(config, num_classes=10)
  state, tx = train_steps.create_state(config, model, (case.size, case.size, 3), mesh)
  mean = np.random.default_rng(9).uniform(100, 150, (case.size, case.size, 3)).astype(np.float32)
  step = train_steps.jit_train_step(config, model, tx, jnp.asarray(mean), mesh)
  start = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  losses, decided, flips, decide = [], [], 0, Decisions(case, model)
  for i in range(steps):
    images, labels = batch(case, i)
    x = train_steps.normalize(jnp.asarray(images), jnp.asarray(mean))
    dec, n = decide(jax.device_get({"params": state.params, "batch_stats": state.batch_stats}), x)
    decided.append(dec)
    flips += n
    state, metrics = step(state, parallel.global_batch({"image": images, "label": labels}, mesh))
    losses.append(float(metrics["train/loss"]))
  with jax.enable_x64(True):
    params, stats, want_losses = ref.sgd_steps(
        case.arch,
        as_float64(start["params"]),
        as_float64(start["batch_stats"]),
        [((batch(case, i)[0].astype(np.float64) - mean) / 255.0, batch(case, i)[1]) for i in range(steps)],
        lrs=[config.schedule.base_lr] * steps,
        momentum=config.optim.momentum,
        weight_decay=config.optim.weight_decay,
        decisions=decided,
    )
  return {
      "loss": (max(rel_error(a, b) for a, b in zip(losses, want_losses)), "losses"),
      "params": worst(ref.unroll_scanned(jax.device_get(state.params)), params),
      "stats": worst(ref.unroll_scanned(jax.device_get(state.batch_stats)), stats),
      "flips": flips,
  }


def tolerance(case):
  return case.tolerance or (BF16_TOLERANCE if case.dtype == "bfloat16" else FLOAT32_TOLERANCE)


def assert_within(errors, case):
  for what, value in errors.items():
    if what != "flips":
      error, where = value
      assert error <= tolerance(case), f"{case.id}: {what} relative error {error:.2e} at {where} ({errors})"


@pytest.mark.parametrize("case", APPLY_CASES, ids=lambda c: c.id)
def test_apply_matches_float64_reference(case):
  assert_within(apply_parity(case), case)


@pytest.mark.parametrize("case", TRAIN_CASES, ids=lambda c: c.id)
def test_train_step_matches_float64_reference(case):
  assert_within(train_step_parity(case), case)


def test_relu_decisions_make_raw_float32_gradients_ill_posed():
  # Why the reference takes the project's activation decisions: the float64 net's own gradients move by far more
  # than 1e-4 when its input moves by float32's rounding (1e-7 relative), but not at 1e-9.
  case = Case("cifar_resnet20", R20)
  model = case.model()
  images, labels = batch(case, 0)
  x = np.asarray(images, np.float64) / 255.0 - 0.5
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  with jax.enable_x64(True):
    run = jax.jit(functools.partial(ref.loss_and_grads, case.arch))
    params, stats = as_float64(variables["params"]), as_float64(variables["batch_stats"])
    base = run(params, stats, x, labels)[1]
    noise = np.random.default_rng(1).standard_normal(x.shape)
    moved = {eps: worst(run(params, stats, x * (1 + eps * noise), labels)[1], base)[0] for eps in (1e-9, 1e-7)}
  assert moved[1e-9] < 1e-6 and moved[1e-7] > 1e-3, moved


def sensitivity(case, eps=1e-7):
  """How far the float64 reference's gradients move (largest relative change of a leaf) when its input moves by
  `eps` of itself, with the activation decisions held fixed: the error float32's input rounding alone implies."""
  model = case.model()
  images, labels = batch(case, 0)
  x = jnp.asarray(images, jnp.float32) / 255.0 - 0.5
  variables = model.init(jax.random.key(0), x[:1], train=False)
  x64 = np.asarray(x, np.float64)
  dec, _ = Decisions(case, model)(variables, x)
  with jax.enable_x64(True):
    run = jax.jit(functools.partial(ref.loss_and_grads, case.arch))
    params, stats = as_float64(variables["params"]), as_float64(variables["batch_stats"])
    moved = x64 * (1 + eps * np.random.default_rng(1).standard_normal(x64.shape))
    return worst(run(params, stats, moved, labels, dec)[1], run(params, stats, x64, labels, dec)[1])[0]


def table(cases_apply=APPLY_CASES, cases_train=TRAIN_CASES):
  rows = [
      "| path | case | loss | grads / params | BN stats | ReLU flips | tolerance |",
      "|---|---|---|---|---|---|---|",
  ]
  for path, cases, fn, key in (
      ("apply", cases_apply, apply_parity, "grads"),
      ("train_step", cases_train, train_step_parity, "params"),
  ):
    for case in cases:
      e = fn(case)
      rows.append(
          f"| {path} | {case.id} | {e['loss'][0]:.1e} | {e[key][0]:.1e} | {e['stats'][0]:.1e} | {e['flips']} | "
          f"{tolerance(case):.0e} |"
      )
      print(rows[-1], flush=True)
  return "\n".join(rows)


if __name__ == "__main__":
  for case in APPLY_CASES:
    if case.dtype == "float32" and case.conv_impl in ("auto", "xla"):
      print(f"sensitivity of {case.id} to a 1e-7 input change: {sensitivity(case):.1e}", flush=True)
  print(table(), file=sys.stderr)
