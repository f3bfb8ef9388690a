"""An older cbor2 than the package needs is named at import, not reported as "not valid CBOR" per frame.

cbor2 6.2 added the decoder options every decode of ``kvstore.frames`` and ``kvstore.wire`` passes
(``max_depth``, ``strict_hashable_types``). pyproject.toml said ``cbor2>=5.4``, so an environment with an
older cbor2 kept it, and every frame of every peer and client was refused as "not valid CBOR: ...
unexpected keyword argument 'strict_hashable_types'". These tests stand in an older cbor2's decoder (one
without those options) for the installed one.
"""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import cbor2
import pytest

from kvstore import frames

REPO = Path(__file__).resolve().parents[2]


class _OldDecoder:
    """A decoder as cbor2 before 6.2 made it: no ``max_depth`` or ``strict_hashable_types``."""

    def __init__(self, fp, tag_hook=None, object_hook=None, str_errors="strict"):
        self.fp = fp


def test_an_older_cbor2_is_named_with_the_fix(monkeypatch):
    monkeypatch.setattr(cbor2, "CBORDecoder", _OldDecoder)
    with pytest.raises(ImportError) as info:
        frames.check_cbor2()
    message = str(info.value)
    assert f"needs cbor2 {frames.CBOR2_VERSION_MIN} or later" in message
    assert f"pip install --upgrade 'cbor2>={frames.CBOR2_VERSION_MIN}'" in message


def test_the_installed_cbor2_passes():
    frames.check_cbor2()  # raises if this environment's cbor2 is too old


def test_pyproject_asks_for_the_version_the_check_needs():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert f"cbor2>={frames.CBOR2_VERSION_MIN}" in dependencies


def test_kv_says_so_in_one_line():
    # The kv command run with an older cbor2's decoder: an error line and exit 1, not a traceback.
    program = (
        "import sys, cbor2\n"
        "class Old:\n"
        "    def __init__(self, fp, tag_hook=None, object_hook=None, str_errors='strict'): pass\n"
        "cbor2.CBORDecoder = Old\n"
        "from kv_cli.main import run\n"
        "sys.argv = ['kv', '--endpoints', '127.0.0.1:9', 'put', 'k', 'v']\n"
        "run()\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"Error: paxos-kv needs cbor2 {frames.CBOR2_VERSION_MIN} or later"), lines
