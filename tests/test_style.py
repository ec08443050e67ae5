"""One code style: Google's two-space indentation, enforced by pyink (configured in pyproject.toml)."""

import subprocess
import sys

from tests.conftest import REPO


def test_code_is_formatted_with_pyink():
  out = subprocess.run(
      [sys.executable, "-m", "pyink", "--check", "--diff", "."], cwd=REPO, capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, f"Run `python -m pyink .` to format:\n{out.stdout[-4000:]}{out.stderr[-2000:]}"
