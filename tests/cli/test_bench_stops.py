"""How a ``kv bench`` run that does not run to its end ends: cut short by its time limit (``--time-limit``,
600 s by default with ``--total``: exit 1 with the summary, not a quiet exit 0), or by Ctrl-C / SIGTERM
(the partial summary, marked interrupted, then exit 130 / 143). The load engine runs for real against
in-memory targets (``kvstore.loadgen.kv_targets`` replaced); no timing is asserted.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal

import pytest
import trio
from typer.testing import CliRunner

import kvstore.loadgen
from kv_cli.main import app


def _use_targets(monkeypatch, target) -> None:
    @contextlib.asynccontextmanager
    async def targets(spec):
        yield [target]

    monkeypatch.setattr(kvstore.loadgen, "kv_targets", targets)


def _bench(*args: str):
    return CliRunner().invoke(app, ["--endpoints", "127.0.0.1:7001", "bench", "--no-progress", *args],
                              catch_exceptions=False)


class _Slow:
    """Each put takes 20 ms: 1,000 of them one at a time cannot finish within 0.3 s."""

    async def put(self, key: str, value: str) -> None:
        await trio.sleep(0.02)

    async def get(self, key: str, consistency: str) -> None:
        await trio.sleep(0.02)


def test_a_run_its_time_limit_cuts_short_fails_with_its_summary(monkeypatch):
    _use_targets(monkeypatch, _Slow())
    result = _bench("--total", "1000", "--clients", "1", "--time-limit", "0.3")
    assert result.exit_code == 1, result.output
    assert "stopped by the time limit of 0.3 s" in result.stdout  # the summary is still there
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: stopped after 0.3 s with ") and last.endswith(" of 1000 requests done: "
                                                                                 "raise --time-limit"), last
    done = int(last.split(" with ")[1].split(" of ")[0])
    assert 0 < done < 1000
    as_json = _bench("--total", "1000", "--clients", "1", "--time-limit", "0.3", "-w", "json")
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert data["stopped_by"] == "time limit" and data["time_limit_s"] == 0.3 and data["interrupted"] is None


def test_the_time_limit_is_an_option_and_must_outlast_the_duration(monkeypatch):
    _use_targets(monkeypatch, _Slow())
    assert "--time-limit" in _bench("--help").stdout
    refused = _bench("--duration", "2", "--time-limit", "1")
    assert refused.exit_code == 2 and "--time-limit 1 is not more than --duration 2" in refused.output
    assert _bench("--time-limit", "0").exit_code == 2


class _Interrupting:
    """Answers puts at once until the 20th of the run, which sends ``signum`` to this process and then
    never answers (a request in flight at the interruption)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.puts = 0

    async def put(self, key: str, value: str) -> None:
        self.puts += 1
        if self.puts == 21:  # (the first is the warm-up's, before the run)
            os.kill(os.getpid(), self.signum)
            await trio.sleep_forever()
        await trio.lowlevel.checkpoint()

    async def get(self, key: str, consistency: str) -> None:
        await trio.lowlevel.checkpoint()


class _Unhandled(Exception):
    """The signal reached the process's own handler: kv bench did not take it."""


@pytest.fixture
def signals_fail_the_test():
    """Without kv bench's handling, a SIGTERM would end the test session and a SIGINT stop it: make
    either a plain failure of this test instead."""
    def unhandled(signum, frame):
        raise _Unhandled(signal.Signals(signum).name)

    before = {s: signal.signal(s, unhandled) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_prints_the_partial_summary_and_exits_128_plus_its_number(monkeypatch, signals_fail_the_test,
                                                                           signum, code):
    name = signal.Signals(signum).name
    _use_targets(monkeypatch, _Interrupting(signum))
    result = _bench("--total", "100000", "--clients", "1")
    assert result.exit_code == code, result.output
    assert f"stopped by {name} (interrupted: partial results); 1 in flight not finished" in result.stdout
    assert f"bench: interrupted by {name} after " in result.stderr
    assert "the summary covers the 19 requests answered; 1 requests in flight were not finished" in result.stderr

    _use_targets(monkeypatch, _Interrupting(signum))
    as_json = _bench("--total", "100000", "--clients", "1", "-w", "json")
    assert as_json.exit_code == code
    data = json.loads(as_json.stdout)
    assert data["interrupted"] == name and data["stopped_by"] == "signal"
    assert data["ok"] == 19 and data["unfinished"] == 1 and data["sent"] == 20


class _Denied:
    """Answers gets, refuses every put with ``permission_denied`` (an access rule that lets this client
    read but not write); counts what reaches it."""

    def __init__(self, code: str = "permission_denied") -> None:
        self.code = code
        self.puts = 0
        self.gets = 0

    async def put(self, key: str, value: str) -> None:
        self.puts += 1
        await trio.sleep(0)
        raise kvstore.loadgen.RequestError(f"client bench-client may not write {key!r}", self.code)

    async def get(self, key: str, consistency: str) -> None:
        self.gets += 1
        await trio.sleep(0)


@pytest.mark.parametrize("code", ["permission_denied", "too_large"])
def test_an_error_every_request_would_get_stops_the_run_at_once(monkeypatch, code):
    # (QA: 9,296 denied puts in 2 s, then exit 1 with "no request succeeded")
    target = _Denied(code)
    _use_targets(monkeypatch, target)
    result = _bench("--total", "100000", "--clients", "16")
    assert result.exit_code == 1, result.output
    assert target.puts <= 1 + 16  # the warm-up's first, then at most one per request slot in flight
    assert "stopped by an error every request would get (client bench-client may not write" in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: stopped at the first error that every request would get: client bench-client "
                           "may not write"), last
    assert "cluster may be down" not in result.stderr

    target = _Denied(code)
    _use_targets(monkeypatch, target)
    as_json = _bench("--total", "100000", "--clients", "16", "-w", "json")
    assert as_json.exit_code == 1
    data = json.loads(as_json.stdout)
    assert data["stopped_by"] == "error" and data["errors"] == {f"RequestError:{code}": data["sent"]}
    assert 1 <= data["sent"] <= 16


def test_errors_a_retry_may_mend_do_not_stop_the_run(monkeypatch):
    target = _Denied("storage_full")  # (a node whose disk filled up: another may serve, or it frees)
    _use_targets(monkeypatch, target)
    result = _bench("--total", "300", "--clients", "4", "-w", "json")
    assert result.exit_code == 1  # no request succeeded
    data = json.loads(result.stdout)
    assert data["stopped_by"] == "total" and data["sent"] == 300 and target.puts == 300 + 1
