"""The code stays ruff-clean and mypy --strict clean (run as part of the test suite)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff() -> None:
    done = _run("ruff", "check", "poller", "plugins", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    done = _run("mypy", "poller", "plugins")
    assert done.returncode == 0, done.stdout + done.stderr
