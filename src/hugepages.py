"""Transparent huge pages for the host's malloc, set before JAX starts (`python -m src.main` and `src.bench`).

XLA:CPU maps fresh memory for each call's temporaries, so with one step per call every step pays for the page
faults of its activations: 50k faults, 12% of a CIFAR ResNet-20 step on a 2-core CPU (README, Speed). glibc's
`hugetlb` tunable backs those mappings with 2 MiB pages (when the kernel's THP mode is `madvise` or `always`):
under 600 faults. glibc reads tunables only at start-up, hence the restart. GLIBC_TUNABLES=glibc.malloc.hugetlb=0
opts out; other systems ignore it.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"


def tunables_with_huge_pages(current):
  """GLIBC_TUNABLES with huge pages on, or None when it already says something about them."""
  if TUNABLE in (current or ""):
    return None
  return ":".join(filter(None, [current, f"{TUNABLE}=1"]))


def restart_with_huge_pages():
  """Re-executes this very command with huge pages on (once: the restarted process finds the tunable set)."""
  value = tunables_with_huge_pages(os.environ.get("GLIBC_TUNABLES"))
  if sys.platform.startswith("linux") and value is not None:
    os.environ["GLIBC_TUNABLES"] = value
    os.execv(sys.executable, sys.orig_argv)
