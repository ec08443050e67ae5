"""Transparent huge pages for the host's malloc, set before JAX starts (`python -m src.main` and `src.bench`).

XLA:CPU maps fresh memory for each call's temporaries, so with one step per call every step pays for the page
faults of its activations: 50k faults, 12% of a CIFAR ResNet-20 step on a 2-core CPU (README, Speed). glibc's
`hugetlb` tunable backs those mappings with 2 MiB pages: under 600 faults. glibc reads tunables only at start-up,
hence a restart of the command (os.execv: the same process id, arguments and environment, plus the tunable).

It restarts only where it helps (`why_not()` says why not): Linux with glibc >= 2.35 (the first with the
tunable), transparent huge pages not `never`, and a job that will run on the CPU (no GPU or TPU plugin of JAX
installed, JAX_PLATFORMS unset or naming cpu): on accelerators the activations live in device memory.
Turn it off with RESNET_HUGE_PAGES=0, or by setting glibc.malloc.hugetlb yourself in GLIBC_TUNABLES.
"""

import importlib.util
import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "RESNET_HUGE_PAGES"
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm7_plugin", "jax_rocm60_plugin", "libtpu")
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def tunables_with_huge_pages(current):
  """GLIBC_TUNABLES with huge pages on, or None when it already says something about them (the user's choice)."""
  if TUNABLE in (current or ""):
    return None
  return ":".join(filter(None, [current, f"{TUNABLE}=1"]))


def why_not(environ=os.environ) -> str:
  """'' where the restart helps; otherwise the reason it is skipped."""
  if environ.get(OPT_OUT, "1") == "0":
    return f"{OPT_OUT}=0"
  if not sys.platform.startswith("linux"):
    return f"not Linux ({sys.platform})"
  libc = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else ""
  name, _, version = (libc or "").partition(" ")
  if name != "glibc" or tuple(map(int, version.split(".")[:2])) < (2, 35):
    return f"needs glibc >= 2.35, this is {libc or 'another libc'}"
  try:
    with open(THP) as f:
      if "[never]" in f.read():
        return "transparent huge pages are off ([never])"
  except OSError:
    return f"no {THP}"
  platforms = environ.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    return f"JAX_PLATFORMS={platforms}"
  if not platforms:
    plugins = [p for p in ACCELERATOR_PLUGINS if importlib.util.find_spec(p) is not None]
    if plugins:
      return f"JAX will run on an accelerator ({plugins[0]} is installed)"
  if tunables_with_huge_pages(environ.get("GLIBC_TUNABLES")) is None:
    return f"GLIBC_TUNABLES already sets {TUNABLE}"
  return ""


def restart_with_huge_pages():
  """Re-executes this very command with huge pages on, where that helps (once: the restarted process finds the
  tunable set). Call it first thing in a `__main__`, before JAX starts."""
  if why_not():
    return
  os.environ["GLIBC_TUNABLES"] = tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES"))
  os.execv(sys.executable, sys.orig_argv)
