"""``kv dump FILE`` and ``kv snapshot save FILE`` write FILE.part (or a temp file) and rename it over FILE.
A FILE that is a directory failed only at that rename, after the whole transfer; a device or a pipe
(``/dev/null``, ``/dev/stdout``) was replaced by a plain file. Both are now refused before anything
connects, as is a FILE whose directory does not exist, with the same words and exit 2 from both
commands (QA: snapshot save said it with exit 1, dump in other words with exit 2).
"""
from __future__ import annotations

import os
import sys

import pytest

from tests.cli.test_parse_output import assert_one_error_line, run


def test_dump_into_a_directory_is_refused_before_connecting(fake, tmp_path):
    result = run("--endpoints", "127.0.0.1:7001", "dump", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, f"{tmp_path} is a directory")
    assert not (tmp_path.parent / f"{tmp_path.name}.part").exists()


def test_snapshot_save_into_a_directory_is_refused_before_connecting(fake, tmp_path):
    result = run("--endpoints", "127.0.0.1:7001", "snapshot", "save", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, f"{tmp_path} is a directory")
    assert fake.connects == []


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform.startswith("win"), reason="needs a FIFO")
@pytest.mark.parametrize("command", [["dump"], ["snapshot", "save"]])
def test_a_pipe_or_device_is_not_replaced_by_a_file(fake, tmp_path, command):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = run("--endpoints", "127.0.0.1:7001", *command, str(fifo))
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, f"{fifo} is not a regular file")
    assert fake.connects == []
    assert not fifo.is_file() and fifo.exists()


@pytest.mark.parametrize("command", [["dump"], ["snapshot", "save"]])
def test_a_file_in_a_missing_directory_is_refused_alike_by_both(fake, tmp_path, command):
    target = tmp_path / "nowhere" / "out"
    result = run("--endpoints", "127.0.0.1:7001", *command, str(target))
    assert result.exit_code == 2, result.output
    assert_one_error_line(result, f"cannot write {target}: there is no directory {target.parent}")
    assert fake.connects == [] and not target.parent.exists()
