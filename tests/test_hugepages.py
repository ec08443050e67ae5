"""src/cpu/hugepages.py: `python -m src.main` restarts itself once with glibc's huge-page tunable where that helps,
keeping the user's tunables; it can be turned off."""

import os
import subprocess
import sys

import pytest

from src.cpu import hugepages
from src.cpu.hugepages import tunables_with_huge_pages
from tests.conftest import REPO


def test_tunable_is_added_once_and_kept_alongside_others():
  assert tunables_with_huge_pages(None) == "glibc.malloc.hugetlb=1"
  assert tunables_with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert tunables_with_huge_pages("glibc.malloc.hugetlb=0") is None  # the user's choice (opt-out) stands


def test_restarts_only_where_it_helps():
  assert hugepages.why_not({"RESNET_HUGE_PAGES": "0"}) == "RESNET_HUGE_PAGES=0"
  assert hugepages.why_not({"JAX_PLATFORMS": "cuda"}) == "JAX_PLATFORMS=cuda"
  assert "already sets" in hugepages.why_not({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})


def run_probe(tmp_path, **env_extra):
  # The config file is Python that src.main loads while parsing its flags: it reports what the process sees.
  config = tmp_path / "probe.py"
  config.write_text("import os\nprint('TUNABLES', os.environ.get('GLIBC_TUNABLES'))\nraise SystemExit(0)\n")
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RESNET_HUGE_PAGES", "JAX_PLATFORMS")}
  out = subprocess.run(
      [sys.executable, "-m", "src.main", f"--config={config}"],
      cwd=REPO,
      env={**env, **env_extra},
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [l for l in out.stdout.splitlines() if l.startswith("TUNABLES")]
  assert len(lines) == 1, out.stdout
  return lines[0].split()[1]


@pytest.mark.skipif(bool(hugepages.why_not({})), reason=f"no huge pages here: {hugepages.why_not({})}")
def test_main_runs_with_huge_pages_unless_turned_off(tmp_path):
  assert run_probe(tmp_path) == "glibc.malloc.hugetlb=1"
  assert run_probe(tmp_path, RESNET_HUGE_PAGES="0") == "None"
