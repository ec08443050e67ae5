"""Deep Residual Learning (He et al., CVPR 2016) in JAX/Flax; the README maps the package.

Importing `src` or any of its modules changes no process state: the entry points (src.main, src.bench) set the
project's XLA:CPU options for their process (src/cpu/xla_flags.py), and the project's own jits pass them
explicitly wherever they run.
"""
