"""src/hugepages.py: `python -m src.main` restarts itself once with glibc's huge-page tunable, keeping the user's."""

import os
import subprocess
import sys

from src.hugepages import tunables_with_huge_pages
from tests.conftest import REPO


def test_tunable_is_added_once_and_kept_alongside_others():
  assert tunables_with_huge_pages(None) == "glibc.malloc.hugetlb=1"
  assert tunables_with_huge_pages("glibc.malloc.arena_max=2") == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert tunables_with_huge_pages("glibc.malloc.hugetlb=0") is None  # the user's choice (opt-out) stands


def test_main_runs_with_huge_pages(tmp_path):
  # The config file is Python that src.main loads while parsing its flags: it reports what the process sees.
  config = tmp_path / "probe.py"
  config.write_text("import os\nprint('TUNABLES', os.environ.get('GLIBC_TUNABLES'))\nraise SystemExit(0)\n")
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run(
      [sys.executable, "-m", "src.main", f"--config={config}"],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  lines = [l for l in out.stdout.splitlines() if l.startswith("TUNABLES")]
  assert len(lines) == 1 and lines[0].split()[1] == "glibc.malloc.hugetlb=1", out.stdout
