"""Table-1-style summaries: layers, parameters, FLOPs (multiply-adds) and output shape, computed by the code.

FLOPs come from XLA's cost analysis of the compiled forward pass (eval mode, batch 1), halved to give
multiply-adds. Two conventions:
  * `macs`: every kernel position counts, padding included. This is how the paper (and the usual Caffe-era
    counters) count: XLA is made to see the zero padding by padding the input explicitly behind an
    optimization barrier, so it cannot fold the pad back into the convolution.
  * `macs_xla`: what XLA counts for the ordinary model: it skips multiplications with padded zeros,
    about 6% fewer for ResNet-18/34 (conv1's 7x7 and the borders of the 7x7 maps).
Both include the few elementwise ops (BN, ReLU, additions), which XLA counts as one FLOP each.
Nets are built unscanned here because XLA counts a loop body once, not once per iteration.
"""

import jax
import jax.numpy as jnp
from jax import lax

from src.models import count_params, get_model, input_shape, parse_name
from src.models.imagenet import imagenet_layers
from src.models.vgg import CONFIGS as VGG_CONFIGS


def padding_counted_conv(lhs, rhs, window_strides, padding, *args, **kwargs):
  if not isinstance(padding, str):
    pads = [(0, 0)] + [tuple(p) for p in padding] + [(0, 0)]
    lhs, padding = lax.optimization_barrier(jnp.pad(lhs, pads)), "VALID"
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)


def forward_macs(model, shape) -> float:
  x = jnp.zeros((1,) + tuple(shape), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["flops"] / 2


def weight_layers(name: str) -> int:
  """Conv + FC layers on the main path (shortcut projections are not counted, as in the paper)."""
  family, _, depth = parse_name(name)
  if family == "cifar":  # 6n+2 or 9n+2, checked by parse_name
    return depth
  if family == "vgg":
    return sum(VGG_CONFIGS[depth]) + 3
  kind, blocks = imagenet_layers(depth)
  return 2 + (3 if kind == "bottleneck" else 2) * sum(blocks)


def summarize(name: str, *, shape=None, flops: bool = True, **fields) -> dict:
  shape = tuple(shape or input_shape(name))
  model = get_model(name, **fields)
  x = jnp.zeros((1,) + shape, jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  row = {
      "model": name,
      "layers": weight_layers(name),
      "params": count_params(variables["params"]),
      "input": "x".join(map(str, shape)),
      "output": tuple(out.shape[1:]),
  }
  if flops:
    flat = dict(fields, scan=False)
    if parse_name(name)[0] == "vgg":
      flat.pop("scan")
    row["macs"] = forward_macs(get_model(name, conv_general_dilated=padding_counted_conv, **flat), shape)
    row["macs_xla"] = forward_macs(get_model(name, **flat), shape)
  return row
