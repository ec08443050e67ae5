"""The CPU machinery: faster ways for XLA:CPU to compute the paper's nets, none of which changes what is computed.

  conv.py                      conv gradients as canonical convolutions, fast inside loops (conv_impl='cpu')
  onednn.py, onednn_conv.cc    convolutions and their gradients in oneDNN through XLA's FFI (conv_impl='onednn')
  batchnorm.py                 BatchNorm's training gradient in closed form
  xla_flags.py                 XLA:CPU options for every jit of the process
  hugepages.py                 glibc huge pages for XLA:CPU's temporaries (src.main and src.bench restart once)

They reach src/models only through its two injection points, the conv and BN constructors of
`src.models.blocks.make_conv_norm`: `model_kernels()` gives what to inject. tests/test_parity.py holds every
combination, whole nets and whole train steps, to an independent float64 reference.
"""

from src.errors import require

CONV_IMPLS = ("auto", "xla", "cpu", "onednn")


def _check_conv_impl(conv_impl):
  require(conv_impl in CONV_IMPLS, "execution.conv_impl", f"must be one of {list(CONV_IMPLS)}, got {conv_impl!r}.")


def check_config(execution):
  """Checks a config's `execution` block's CPU fields: conv_impl (with 'onednn', that oneDNN builds and
  can run in this process: the kernels are built on first use, seconds) and conv_chunk.

  Raises:
    ConfigError: naming the field, its valid values, or why oneDNN cannot run here.
  """
  m = execution
  _check_conv_impl(m.conv_impl)
  if m.conv_impl == "onednn":  # builds the kernels on first use (seconds), so a missing library fails here
    from src.cpu import onednn

    why = onednn.unavailable()
    require(not why, "execution.conv_impl", f"'onednn' cannot run here: {why}.")
  require(
      m.conv_chunk >= 0, "execution.conv_chunk", f"must be >= 0 (0 = the whole batch at once), got {m.conv_chunk!r}."
  )


def resolve_conv_impl(conv_impl: str = "auto") -> str:
  """'auto' -> 'onednn' on a CPU process of one device where oneDNN builds, else 'cpu'; 'xla' on GPU/TPU.
  Raises ConfigError (a ValueError) for a name not in CONV_IMPLS."""
  _check_conv_impl(conv_impl)
  if conv_impl != "auto":
    return conv_impl
  import jax  # here, not at the top: src.main imports this package before restarting (hugepages.py)

  if jax.default_backend() != "cpu":
    return "xla"
  from src.cpu import onednn

  return "cpu" if onednn.unavailable() else "onednn"


def model_kernels(conv_impl: str = "auto", conv_chunk: int = 16) -> dict:
  """Keyword arguments for `src.models.get_model` / `model_from_config`: {'conv_general_dilated', 'bn_normalize'}.

  conv_impl: 'xla' injects nothing (the plain model: XLA's own kernels and autodiff everywhere); 'cpu' injects
  conv.py's convolution (kernel gradient summed over batch chunks of `conv_chunk` examples) and batchnorm.py's
  gradient; 'onednn' oneDNN's convolution (conv.py's for what oneDNN does not take: bf16) and the same BN gradient;
  'auto' picks (resolve_conv_impl). Raises RuntimeError naming the fix when 'onednn' cannot run here.
  """
  import jax

  impl = resolve_conv_impl(conv_impl)
  if impl == "xla":
    return {"conv_general_dilated": None, "bn_normalize": None}
  from src.cpu.batchnorm import fused_gradient_norm

  if impl == "onednn":
    from src.cpu import onednn

    onednn.require()
    conv = onednn.onednn_conv(conv_chunk, shards=jax.device_count())
  else:
    from src.cpu.conv import cpu_conv

    # Each chunk takes rows from every device's shard of the batch, so no device idles under SPMD.
    conv = cpu_conv(conv_chunk, shards=jax.device_count())
  return {"conv_general_dilated": conv, "bn_normalize": fused_gradient_norm}
