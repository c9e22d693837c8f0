"""The code stays ruff- and mypy-clean (strict on the pure modules, see pyproject)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_clean():
    dirs = [d for d in ("replverify", "tests", "benchmarks") if (ROOT / d).is_dir()]
    result = _run("ruff", "check", *dirs)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_clean():
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean():
    result = _run("mypy", "replverify")
    assert result.returncode == 0, result.stdout + result.stderr
