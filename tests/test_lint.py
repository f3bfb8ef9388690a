"""The package is linted and type-checked with the configuration in pyproject.toml, as part of the
test command: ``ruff check`` over everything, ``mypy`` over paxos/ (strict), kvstore/ and cli/.

Both tools come with the test extras (``pip install -e '.[test]'``); a finding fails the test with the
tool's own report, so fix the code rather than the configuration.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_finds_nothing():
    # the files and the strictness per package come from [tool.mypy] in pyproject.toml
    result = run("mypy", "--cache-dir", str(ROOT / ".mypy_cache"))
    assert result.returncode == 0, result.stdout + result.stderr
