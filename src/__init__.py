"""Deep Residual Learning (He et al., CVPR 2016) in JAX/Flax; the README maps the package.

Importing any part of `src` sets the project's XLA:CPU options for every jit of the process (src/cpu/xla_flags.py).
"""

from src.cpu import xla_flags as _xla_flags

_xla_flags.apply()
