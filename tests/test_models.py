"""The paper's networks against its own numbers (Table 1, Table 6, Fig. 3) and its architecture rules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from src import paper
from src.models import count_params, get_model, parse_name
from src.models.summary import forward_macs, padding_counted_conv, summarize


def init(model, shape, batch=2):
  x = jnp.zeros((batch,) + shape)
  return model.init(jax.random.key(0), x, train=False)


def abstract_params(name, **fields):
  model = get_model(name, **fields)
  shape = (32, 32, 3) if name.startswith("cifar") else (224, 224, 3)
  x = jnp.zeros((1,) + shape)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]


# Table 6: depth -> params as the paper prints them.
TABLE6_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}


@pytest.mark.parametrize("depth", sorted(TABLE6_PARAMS))
def test_cifar_params_match_table6(depth):
  n = count_params(abstract_params(f"cifar_resnet{depth}")) / 1e6
  printed = TABLE6_PARAMS[depth]
  decimals = len(printed.rstrip("M").split(".")[1])
  assert f"{n:.{decimals}f}M" == printed
  # Option A shortcuts are parameter-free: the plain counterpart has exactly as many parameters.
  assert count_params(abstract_params(f"cifar_plain{depth}")) == count_params(abstract_params(f"cifar_resnet{depth}"))


@pytest.mark.parametrize("name", sorted(paper.PREACT_CIFAR_PARAMS))
def test_preact_params_match_identity_mappings(name):
  """Identity Mappings (He et al. 2016) prints 1.7M, 1.7M, 10.2M for its pre-activation ResNet-110, 164, 1001:
  conv and FC weights (BN's scales and biases would make ResNet-1001 10.33M)."""
  params = abstract_params(name)
  weights = sum(int(np.prod(p.shape)) for path, p in jax.tree.leaves_with_path(params) if "bn" not in str(path))
  printed = float(paper.PREACT_CIFAR_PARAMS[name].rstrip("M"))
  decimals = len(paper.PREACT_CIFAR_PARAMS[name].rstrip("M").split(".")[1])
  assert abs(weights / 1e6 - printed) < 0.5 * 10**-decimals, weights
  family, kind, depth = parse_name(name)
  block = "bottleneck" if depth >= 164 else "basic"
  # Bottlenecks from 164 layers on (9n+2), basic units below (6n+2), as in that paper.
  assert (block == "bottleneck") == ("conv3" in params["stage1"]["block0"])
  assert "final_bn" in params and "bn" not in params["conv1"]  # BN -> ReLU before the pool; conv1 stands alone


# Table 1 / Fig. 3 multiply-adds at 224x224.
PAPER_MACS = {
    "resnet18": 1.8e9,
    "resnet34": 3.6e9,
    "resnet50": 3.8e9,
    "resnet101": 7.6e9,
    "resnet152": 11.3e9,
    "vgg19": 19.6e9,
}


@pytest.mark.parametrize("name", sorted(PAPER_MACS))
def test_flops_match_paper(name):
  fields = {} if name.startswith("vgg") else {"scan": False}
  macs = forward_macs(get_model(name, conv_general_dilated=padding_counted_conv, **fields), (224, 224, 3))
  assert abs(macs / PAPER_MACS[name] - 1) < 0.05, macs


def test_plain34_flops_equal_resnet34():
  macs = {
      k: forward_macs(
          get_model(f"{k}34", shortcut="A", scan=False, conv_general_dilated=padding_counted_conv), (224, 224, 3)
      )
      for k in ("plain", "resnet")
  }
  assert abs(macs["plain"] / macs["resnet"] - 1) < 0.01, macs
  assert abs(macs["plain"] / 3.6e9 - 1) < 0.05


def test_scanned_and_unrolled_count_the_same_but_xla_counts_a_loop_once():
  # Why summary.py builds unscanned nets for FLOPs: XLA's cost analysis counts a while-loop body once.
  scanned = forward_macs(get_model("resnet34", scan=True), (224, 224, 3))
  unrolled = forward_macs(get_model("resnet34", scan=False), (224, 224, 3))
  assert scanned < 0.6 * unrolled
  assert count_params(abstract_params("resnet34", scan=True)) == count_params(abstract_params("resnet34", scan=False))


def projection_params(cin, cout):
  return cin * cout + 2 * cout  # 1x1 conv without bias + BN scale and bias


def test_shortcut_options_add_exactly_the_projections():
  # ResNet-34: option B projects where the width doubles (conv3_1, conv4_1, conv5_1); C projects every block.
  a, b, c = (count_params(abstract_params("resnet34", shortcut=s)) for s in "ABC")
  widths, blocks = (64, 128, 256, 512), (3, 4, 6, 3)
  increases = sum(projection_params(widths[i - 1], widths[i]) for i in range(1, 4))
  every = sum(
      projection_params(widths[i - 1] if (j == 0 and i > 0) else widths[i], widths[i])
      for i in range(4)
      for j in range(blocks[i])
  )
  assert b - a == increases
  assert c - a == every
  # CIFAR-20: two width increases (16->32, 32->64); option A adds nothing over the plain net.
  assert count_params(abstract_params("cifar_resnet20", shortcut="B")) - count_params(
      abstract_params("cifar_plain20")
  ) == projection_params(16, 32) + projection_params(32, 64)


def test_resnet50_option_b_projects_the_first_block_of_every_stage():
  # Bottleneck widths go 64 -> 256 in conv2_1 too, so B projects there as well (4 projections in all).
  a, b = (count_params(abstract_params("resnet50", shortcut=s)) for s in "AB")
  assert b - a == (
      projection_params(64, 256)
      + projection_params(256, 512)
      + projection_params(512, 1024)
      + projection_params(1024, 2048)
  )


@pytest.mark.parametrize(
    "name,shape,out",
    [
        ("cifar_resnet20", (32, 32, 3), 10),
        ("cifar_plain20", (32, 32, 3), 10),
        ("resnet18", (224, 224, 3), 1000),
        ("plain34", (224, 224, 3), 1000),
        ("resnet50", (64, 64, 3), 1000),
    ],
)
def test_output_shapes(name, shape, out):
  model = get_model(name)
  variables = init(model, shape)
  logits = model.apply(variables, jnp.ones((2,) + shape), train=False)
  assert logits.shape == (2, out) and bool(jnp.all(jnp.isfinite(logits)))


def test_bottleneck_stride_placement():
  x = jnp.ones((1, 64, 64, 3))
  for on_3x3, conv1_side in ((False, 8), (True, 16)):
    model = get_model("resnet50", stride_on_3x3=on_3x3)
    variables = init(model, (64, 64, 3), batch=1)
    _, state = model.apply(variables, x, train=False, capture_intermediates=False, mutable=["intermediates"])
    block = state["intermediates"]["conv3_x"]["block0"]  # conv3_1: 16x16 in, 8x8 out
    assert block["conv1"]["response"][0].shape[1] == conv1_side
    assert block["conv2"]["response"][0].shape[1] == 8


def test_batchnorm_train_and_eval_modes():
  model = get_model("cifar_resnet20")
  variables = init(model, (32, 32, 3))
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3)) * 3 + 1
  _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"])
  # Train mode normalises with the batch's statistics: the first BN output has zero mean, unit variance.
  r = state["intermediates"]["conv1"]["response"][0]
  np.testing.assert_allclose(r.mean((0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(r.var((0, 1, 2)), 1, atol=1e-2)
  # ...and moves the running averages by (1 - momentum) towards them.
  old = variables["batch_stats"]["conv1"]["bn"]
  new = state["batch_stats"]["conv1"]["bn"]
  conv_out = jax.lax.conv_general_dilated(
      x,
      variables["params"]["conv1"]["conv"]["kernel"],
      (1, 1),
      [(1, 1)] * 2,
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  np.testing.assert_allclose(new["mean"], 0.9 * old["mean"] + 0.1 * conv_out.mean((0, 1, 2)), rtol=1e-4, atol=1e-6)
  # Eval mode uses the running averages, is deterministic per example, and changes nothing.
  full = model.apply(variables, x, train=False)
  single = model.apply(variables, x[:1], train=False)
  np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-5)


def test_bn_groups_are_per_device_statistics():
  # bn_group_size=4 on a batch of 8 == running the net separately on each half (per-GPU BN in the paper).
  grouped = get_model("cifar_resnet20", bn_group_size=4)
  whole = get_model("cifar_resnet20")
  variables = init(whole, (32, 32, 3))
  x = jax.random.normal(jax.random.key(2), (8, 32, 32, 3))
  out, state = grouped.apply(variables, x, train=True, mutable=["batch_stats"])
  halves = [whole.apply(variables, x[i : i + 4], train=True, mutable=["batch_stats"]) for i in (0, 4)]
  np.testing.assert_allclose(out, jnp.concatenate([h[0] for h in halves]), rtol=1e-4, atol=1e-5)
  mean_of_halves = jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1])
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(mean_of_halves)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  assert not np.allclose(out, whole.apply(variables, x, train=True, mutable=["batch_stats"])[0], atol=1e-3)


@pytest.mark.parametrize("fused", [False, True], ids=["plain", "cpu_fused_gradient"])
@pytest.mark.parametrize("group,dtype", [(None, jnp.float32), (4, jnp.float32), (4, jnp.bfloat16)])
def test_batchnorm_gradients_match_the_textbook_formula(group, dtype, fused):
  # BatchNorm, plain and with src/cpu's hand-written gradient injected, against autodiff of the formula written
  # out here, per group of `group` examples. (Whole nets: tests/test_parity.py.)
  from src.cpu.batchnorm import fused_gradient_norm
  from src.models.blocks import BatchNorm

  bn = BatchNorm(group_size=group, dtype=dtype, **({"normalize": fused_gradient_norm} if fused else {}))
  x = (jax.random.normal(jax.random.key(3), (8, 5, 5, 6)) * 3 + 2).astype(dtype)
  variables = bn.init(jax.random.key(0), x, train=False)
  params = {"scale": jnp.linspace(0.5, 1.5, 6), "bias": jnp.linspace(-1, 1, 6)}
  dy = jax.random.normal(jax.random.key(4), x.shape)

  def textbook(params, x):
    g = group or 8
    xg = x.astype(jnp.float32).reshape((8 // g, g) + x.shape[1:])
    mean = xg.mean((1, 2, 3), keepdims=True)
    var = jnp.square(xg - mean).mean((1, 2, 3), keepdims=True)
    y = ((xg - mean) / jnp.sqrt(var + 1e-5)).reshape(x.shape) * params["scale"] + params["bias"]
    return jnp.sum(y.astype(dtype).astype(jnp.float32) * dy), (mean.reshape(-1, 6).mean(0), var.reshape(-1, 6).mean(0))

  def ours(params, x):
    y, state = bn.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return jnp.sum(y.astype(jnp.float32) * dy), state["batch_stats"]

  (loss, stats), grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1), has_aux=True))(params, x)
  (want_loss, (mean, var)), want = jax.value_and_grad(textbook, argnums=(0, 1), has_aux=True)(params, x)
  tol = 1e-4 if dtype == jnp.float32 else 3e-2
  np.testing.assert_allclose(loss, want_loss, rtol=tol)
  np.testing.assert_allclose(stats["mean"], 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


def unroll(scanned_params):
  """Maps a scanned net's stacked 'blocks' params onto the unrolled net's block1..block{n-1} names."""
  out = {}
  for k, v in scanned_params.items():
    if k == "blocks":
      stacked = v["block"]
      n = jax.tree.leaves(stacked)[0].shape[0]
      for i in range(n):
        out[f"block{i + 1}"] = jax.tree.map(lambda a: a[i], stacked)
    elif isinstance(v, dict):
      out[k] = unroll(v)
    else:
      out[k] = v
  return out


def test_scan_auto_unrolls_short_stages_and_scans_long_ones():
  names = lambda name: set(abstract_params(name)["stage1"])
  assert names("cifar_resnet110") == {f"block{i}" for i in range(18)}  # 18 blocks: unrolled
  assert names("cifar_resnet1202") == {"block0", "blocks"}  # 200 blocks: scanned
  assert set(abstract_params("resnet152")["conv4_x"]) == {"block0", "blocks"}  # 36 blocks


def test_scan_is_the_same_network():
  scanned, unrolled = get_model("cifar_resnet32", scan=True), get_model("cifar_resnet32", scan=False)
  variables = init(scanned, (32, 32, 3))
  flat = jax.tree.map(lambda a: a, {k: unroll(v) for k, v in variables.items()})
  x = jax.random.normal(jax.random.key(3), (4, 32, 32, 3))
  a, sa = scanned.apply(variables, x, train=True, mutable=["batch_stats"])
  b, sb = unrolled.apply(flat, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert jax.tree.structure(unroll(sa["batch_stats"])) == jax.tree.structure(sb["batch_stats"])


@pytest.mark.parametrize("name", ["cifar_resnet110", "cifar_plain110"])
def test_gradients_reach_the_first_layer_of_110_layers(name):
  model = get_model(name, scan=True)
  variables = init(model, (32, 32, 3))
  x = jax.random.normal(jax.random.key(4), (8, 32, 32, 3))
  y = jnp.arange(8) % 10

  def loss(params):
    logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  grads = jax.grad(loss)(variables["params"])
  first = grads["conv1"]["conv"]["kernel"]
  assert bool(jnp.all(jnp.isfinite(first))) and float(jnp.abs(first).max()) > 0
  last_stage = grads["stage3"]["blocks"]["block"]["conv2"]["conv"]["kernel"]
  assert last_stage.shape[0] == 17  # 18 blocks per stage: block0 plus a scan of 17
  assert float(jnp.abs(first).mean()) > 1e-8


@pytest.mark.parametrize(
    "name,expected",
    [
        ("cifar_resnet21", "6n+2"),
        ("cifar_plain4", "6n+2"),
        ("cifar_preact_resnet199", "9n+2"),
        ("resnet42", "valid depths: [18, 34, 50, 101, 152]"),
        ("densenet121", "Valid names"),
        ("vgg11", "valid: [16, 19]"),
    ],
)
def test_registry_rejects_bad_names_with_the_valid_choices(name, expected):
  with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
    get_model(name)


def test_registry_rejects_bad_fields():
  with pytest.raises(ValueError, match="valid: \\['A', 'B', 'C'\\]"):
    get_model("resnet34", shortcut="D")
  with pytest.raises(ValueError, match="dtype"):
    get_model("resnet34", dtype="float8")
  assert parse_name("cifar_plain1202") == ("cifar", "plain", 1202)


def test_summary_row():
  row = summarize("cifar_resnet56")
  assert row["layers"] == 56 and row["output"] == (10,) and row["input"] == "32x32x3"
  assert row["macs_xla"] < row["macs"]  # XLA skips products with padded zeros; the paper's count does not
  # Both count the paper's convolutions whatever CPU kernels are installed (oneDNN's custom calls would hide them
  # from XLA's cost analysis): the padded border is a few % of a 3x3 conv on 8..32 pixel maps, never most of it.
  assert 0.85 < row["macs_xla"] / row["macs"] < 1
  assert summarize("resnet152", flops=False)["layers"] == 152


def test_remat_is_the_same_network_with_less_memory():
  # nn.remat around the scanned blocks (ResNet-1202's config): the same parameters, loss and gradients; the
  # backward pass keeps only each block's input, so the compiled gradient needs less memory.
  x = jax.random.normal(jax.random.key(5), (8, 32, 32, 3))
  y = jnp.arange(8) % 10
  plain, remat = (get_model("cifar_resnet32", scan=True, remat=r) for r in (False, True))
  variables = jax.jit(plain.init, static_argnames="train")(jax.random.key(0), x[:2], train=False)
  assert jax.tree.structure(jax.eval_shape(remat.init, jax.random.key(0), x[:2])) == jax.tree.structure(variables)

  def compiled(model):
    def loss(params):
      logits, state = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), state

    return jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(variables["params"]).compile()

  plain, remat = compiled(plain), compiled(remat)
  (loss_a, state_a), grads_a = plain(variables["params"])
  (loss_b, state_b), grads_b = remat(variables["params"])
  np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
  for a, b in zip(jax.tree.leaves((grads_a, state_a)), jax.tree.leaves((grads_b, state_b))):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
  memory = [c.memory_analysis().temp_size_in_bytes for c in (plain, remat)]
  assert memory[1] < 0.6 * memory[0], memory
