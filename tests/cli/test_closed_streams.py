"""A closed stdin or stdout, or a stdout that cannot be written (a full disk), is one clear line and an
exit code, never an exception name: ``kv put k <&-`` (exit 2: no value), ``kv get k >&-`` and
``kv status >/dev/full`` (exit 1: the output was lost). The fast path and the typer app say the same.

The shell does the closing: Python starts with ``sys.stdin``/``sys.stdout`` set to None for a descriptor
closed before it ran, which is what the commands met in the QA walk-through.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

from kv_cli import fast
from kv_cli.main import app
from tests.cli.test_bulk import kv_command
from tests.ports import free_ports

pytestmark = pytest.mark.skipif(sys.platform.startswith("win"), reason="POSIX shell redirections")


def _kv_in_shell(args: str, redirect: str, port: int) -> subprocess.CompletedProcess[str]:
    """``kv ARGS REDIRECT`` through sh, the endpoint a port nobody listens on (refused at once)."""
    command = " ".join(shlex.quote(a) for a in kv_command())
    env = {**os.environ, "KV_ENDPOINTS": f"127.0.0.1:{port}", "KV_HELP_CACHE": "0"}
    return subprocess.run(["sh", "-c", f"{command} --command-timeout 2 {args} {redirect}"], capture_output=True,
                          text=True, env=env, timeout=60)


@pytest.mark.parametrize(("args", "redirect", "code", "message"), [
    ("put k", "<&-", 2, "Error: no value given and standard input is closed"),
    ("load -", "<&-", 2, "Error: cannot read stdin: standard input is closed"),
    ("dump", ">&-", 1, "Error: cannot write the output: standard output is closed"),
    ("status", ">&-", 1, "Error: cannot write the output: standard output is closed"),
    ("-w json status", ">&-", 1, "Error: cannot write the output: standard output is closed"),
    ("status", ">/dev/full", 1, "Error: cannot write the output: No space left on device"),
    ("--help", ">/dev/full", 1, "Error: cannot write the output: No space left on device"),
])
def test_a_closed_or_full_stream_is_one_line(args, redirect, code, message):
    if "/dev/full" in redirect and not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    result = _kv_in_shell(args, redirect, free_ports(1)[0])
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.splitlines()) == 1, result.stderr


def test_get_to_a_closed_stdout_fast_and_typer_alike(fake, monkeypatch, capfd):
    """The key is there and read; only printing it fails: the same line and exit 1 on both paths."""
    fake.set("k", "v")
    argv = ["--endpoints", "127.0.0.1:7001", "get", "k"]
    monkeypatch.setattr(sys, "stdout", None)
    with pytest.raises(SystemExit) as by_fast:
        fast.run_fast(argv)
    fast_err = capfd.readouterr().err
    with pytest.raises(SystemExit) as by_typer:
        app(args=argv, prog_name="kv")
    typer_err = capfd.readouterr().err
    assert by_fast.value.code == by_typer.value.code == 1
    assert fast_err == typer_err == "Error: cannot write the output: standard output is closed\n"


def test_a_put_value_from_a_closed_stdin_is_a_usage_error(fake, monkeypatch, capfd):
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(SystemExit) as caught:
        fast.run_fast(["--endpoints", "127.0.0.1:7001", "put", "k"])
    assert caught.value.code == 2
    assert capfd.readouterr().err.startswith("Error: no value given and standard input is closed")
    assert fake.calls == []  # nothing was sent
