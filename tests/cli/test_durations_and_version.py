"""etcdctl habits: ``--command-timeout 5s`` (a duration with a unit, as well as plain seconds), and
``kv version`` / ``kv --version``. The fast path (``kv_cli.fast``) and the typer app take the same
durations, with the same function (``common.parse_duration``), and print the same version line.
"""
from __future__ import annotations

import json
import platform
from importlib import metadata

import pytest
from typer.testing import CliRunner

from kv_cli import fast
from kv_cli.common import parse_duration
from kv_cli.main import app

EP = ["--endpoints", "127.0.0.1:7001"]


@pytest.mark.parametrize(("text", "seconds"), [
    ("5", 5.0), ("2.5", 2.5), ("5s", 5.0), ("500ms", 0.5), ("1m", 60.0), ("1.5m", 90.0), ("1ms", 0.001),
    (" 5S ", 5.0), ("0.001", 0.001),
])
def test_durations_with_and_without_a_unit(text, seconds, fake):
    assert parse_duration(text) == pytest.approx(seconds)
    fake.set("k", "v")
    parsed = fast.parse(["--command-timeout", text, *EP, "get", "k"])
    assert parsed is not None and parsed[1].command_timeout == pytest.approx(seconds)
    result = CliRunner().invoke(app, ["--command-timeout", text, *EP, "get", "k"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert fake.connects[-1][1] == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "problem"), [
    ("0", "too short: at least 1ms"), ("0.5ms", "too short"), ("-1s", "too short"), ("5h", "not a duration"),
    ("abc", "not a duration"), ("s", "not a duration"), ("inf", "not a duration"), ("nan", "not a duration"),
    ("1e400", "not a duration"), ("9300000000", "too long: at most 1e"), ("16667m", "too long"),
])
def test_refused_durations_are_usage_errors_on_both_paths(text, problem, fake):
    with pytest.raises(ValueError, match=problem):
        parse_duration(text)
    assert fast.parse(["--command-timeout", text, *EP, "get", "k"]) is None  # typer's to report
    result = CliRunner().invoke(app, ["--command-timeout", text, *EP, "get", "k"])
    assert result.exit_code == 2 and problem in result.stderr, result.output
    assert fake.connects == []


def test_the_longest_duration_is_the_clients_longest_timeout_and_both_clients_refuse_past_it():
    """QA: ``--command-timeout 9.3e9`` made ``kv status`` call a healthy cluster unreachable (the socket
    timeout raised OverflowError in each status thread); the library's clients took it too."""
    from kv_cli import common
    from kvstore import frames
    from kvstore.client import AsyncClient, Client
    from kvstore.oneshot import OneShotClient

    assert common.TIMEOUT_SECONDS_MAX == frames.TIMEOUT_SECONDS_MAX
    assert parse_duration("1000000") == frames.TIMEOUT_SECONDS_MAX
    for bad in (1e10, 0, -1, float("nan"), float("inf"), "5", True, None):
        with pytest.raises(ValueError, match="timeout must be a number of seconds above 0 and at most 1e"):
            OneShotClient("127.0.0.1:1", timeout=bad)
        with pytest.raises(ValueError, match="timeout must be"):
            Client("127.0.0.1:1", timeout=bad)
        with pytest.raises(ValueError, match="timeout must be"):
            AsyncClient("127.0.0.1:1", None, timeout=bad)  # (checked before the nursery is used)
    assert OneShotClient("127.0.0.1:1", timeout=1e6).timeout == 1e6


def test_version_on_both_paths(capsys):
    line = f"kv {metadata.version('paxos-kv')} (paxos-kv), Python {platform.python_version()}\n"
    for argv in (["--version"], ["version"]):
        assert fast.run_fast(argv)
        assert capsys.readouterr().out == line
        result = CliRunner().invoke(app, argv, catch_exceptions=False)
        assert result.exit_code == 0 and result.stdout == line
    as_json = CliRunner().invoke(app, ["-w", "json", "version"], catch_exceptions=False)
    assert json.loads(as_json.stdout) == {"kv": metadata.version("paxos-kv"), "python": platform.python_version()}
