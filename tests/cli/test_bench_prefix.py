"""``kv bench`` writes its keys under ``--prefix`` (default ``bench/``), not as bare numbers among the
user's keys, and says which keys before it starts and in its summary. A missing optional dependency
(``--plot`` without matplotlib) is exit 1 with the pip command, not a usage error. The load engine
(``kvstore.loadgen``) is run for real against in-memory targets that record every key they are sent;
its own keys stay bare numbers (the scripts of bench/ that drive it directly rely on that).
"""
from __future__ import annotations

import contextlib
import json

import pytest
from typer.testing import CliRunner

import kvstore.loadgen
from kv_cli.main import app


class _Recorder:
    def __init__(self, seen: dict[str, str]) -> None:
        self.seen = seen

    async def put(self, key: str, value: str) -> None:
        self.seen[key] = value

    async def get(self, key: str, consistency: str) -> None:
        self.seen.setdefault(key, "")


@pytest.fixture
def seen(monkeypatch) -> dict[str, str]:
    keys: dict[str, str] = {}

    @contextlib.asynccontextmanager
    async def targets(spec):
        yield [_Recorder(keys)]

    monkeypatch.setattr(kvstore.loadgen, "kv_targets", targets)
    return keys


def _bench(*args: str):
    return CliRunner().invoke(app, ["--endpoints", "127.0.0.1:7001", "bench", "--sequential-keys", "--total", "8",
                                    "--key-space-size", "4", *args], catch_exceptions=False)


def test_keys_go_under_bench_slash_by_default_and_the_run_says_so(seen):
    result = _bench()
    assert result.exit_code == 0, result.output
    assert sorted(seen) == ["bench/00000000", "bench/00000001", "bench/00000002", "bench/00000003"]
    said = "writes keys bench/00000000 .. bench/00000003 (4 keys, --prefix 'bench/')"
    assert result.stderr.splitlines()[0] == f"bench: {said}"  # before the run
    assert f"  Keys:        {said}" in result.stdout.splitlines()  # and in the summary


def test_another_prefix_or_none(seen):
    assert _bench("--prefix", "load-test:", "--no-progress").exit_code == 0
    assert sorted(seen)[0] == "load-test:00000000"
    seen.clear()
    result = _bench("--prefix", "", "-w", "json", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(seen) == ["00000000", "00000001", "00000002", "00000003"]  # the old keys, when asked for
    assert json.loads(result.stdout)["params"]["prefix"] == ""


def test_the_prefix_counts_toward_the_key_size_limit(seen):
    result = _bench("--prefix", "p" * 4090, "--no-progress")
    assert result.exit_code == 2 and "keys of 4098 characters are over the store's limit" in result.output
    assert seen == {}


def test_the_engine_alone_keeps_bare_numbers():
    assert kvstore.loadgen.LoadSpec(key_size=8).key(42) == "00000042"


@pytest.mark.parametrize(("module", "args", "says"), [
    ("matplotlib", ["--plot", "lat.png"], "pip install 'paxos-kv[plot]'"),
    ("hdrh", [], "pip install hdrhistogram"),
])
def test_a_missing_optional_dependency_is_a_failure_not_a_usage_error(seen, monkeypatch, tmp_path, module, args,
                                                                     says):
    """The arguments are right; the install lacks a package: exit 1 with the pip command, before the run."""
    import sys

    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    result = _bench("--no-progress", *args)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: ") and says in result.stderr and len(result.stderr.splitlines()) == 1
    assert seen == {}


@pytest.mark.parametrize("op", ["put", "get"])
def test_read_ratio_only_goes_with_mixed(seen, op):
    refused = _bench("--op", op, "--read-ratio", "0.9", "--no-progress")
    assert refused.exit_code == 2 and f"--read-ratio only applies to --op mixed, not --op {op}" in refused.output
    assert seen == {}
    assert _bench("--op", "mixed", "--read-ratio", "0.9", "--no-progress").exit_code == 0


def test_a_wide_key_space_pads_every_key_alike(seen):
    result = _bench("--key-size", "2", "--key-space-size", "1000", "--total", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    assert sorted(seen) == ["bench/000", "bench/001", "bench/002"]
    assert "keys bench/000 .. bench/999 (1000 keys" in result.stdout


def test_the_keys_notice_is_shown_with_no_progress_too(seen):
    """Which keys the run writes is a warning, not progress."""
    result = _bench("--no-progress")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == ["bench: writes keys bench/00000000 .. bench/00000003 (4 keys, "
                                          "--prefix 'bench/')"]
