"""What the small bench scripts print and save, without running them: ``cli_startup.py --json`` alone saves
under bench/results (as bench/README.md says), ``tls_cost.py`` prints rounded figures, and
``membership_bench.py`` prints a table unless ``--json``. The scripts are loaded as modules."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def load(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"{name}_under_test", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return load


def test_cli_startup_json_without_a_file_saves_under_bench_results(load):
    cli_startup = load("cli_startup")
    parser = cli_startup.build_parser()
    assert parser.parse_args(["--json"]).json == "" and parser.parse_args([]).json is None
    assert parser.parse_args(["--json", "out.json"]).json == "out.json"
    saved = cli_startup.json_path("")
    assert saved.parent == BENCH / "results" and saved.name.startswith("cli_startup-") and saved.suffix == ".json"
    assert cli_startup.json_path("x/out.json") == Path("x/out.json")


def test_tls_cost_prints_rounded_figures(load):
    tls_cost = load("tls_cost")
    lines: list[str] = []
    row = {"in_flight": 256, "plain_ops_s": 5000.0, "tls_ops_s": 4500.0, "ratio": 0.9, "plain_p50_ms": 12.3456789,
           "tls_p50_ms": 13.0000001, "cpu_plain_us": 895.8499999999999, "cpu_tls_us": 1002.0500000000001}
    tls_cost.report({"rounds": 2, "summary": [row]}, log=lines.append)
    text = "\n".join(lines)
    assert "plain 895.8 us, tls 1002.1 us" in text and "99999" not in text and "00000" not in text


def _window(puts_per_s, p50, p99, count):
    return {"puts_per_s": puts_per_s, "p50_ms": p50, "p99_ms": p99, "count": count}


def test_membership_bench_prints_a_table(load):
    membership = load("membership_bench")
    result = {"preload_keys": 0, "preload_seconds": 0.0, "inflight": 64, "seconds": 15.0, "change_seconds": 2.5,
              "before": _window(2000.0, 20.0, 40.0, 10000), "during": _window(1500.0, 25.0, 90.5, 3750),
              "after": _window(0.0, None, None, 0), "longest_gap_ms": 180.0, "election_timeout_ms": 1000.0,
              "longest_gap_starts_after_add_s": 0.4, "marks_after_add_s": {},
              "ratios": {"longest_gap_over_election_timeout": 0.18}}
    lines = membership.format_table(result).splitlines()
    assert lines[0].split() == ["window", "puts/s", "x", "before", "p50", "ms", "p99", "ms", "puts"]
    assert lines[1].split() == ["before", "2000.0", "1.00", "20.00", "40.00", "10000"]
    assert lines[2].split() == ["during", "1500.0", "0.75", "25.00", "90.50", "3750"]
    assert lines[3].split() == ["after", "0.0", "0.00", "-", "-", "0"]
    assert "longest gap between acknowledged writes 180.0 ms = 0.18 x the election timeout" in lines[4]
    assert "{" not in "\n".join(lines)


def test_big_values_runs_briefly_and_reports_its_counts(tmp_path):
    """``bench/big_values.py`` in a short form (3 nodes, 64 KiB values, 2 s): it starts its cluster,
    writes, prints every figure, and stops its servers (no figure is judged here)."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(BENCH / "big_values.py"), "--seconds", "2", "--value-kib", "64", "--keys", "8",
         "--writers", "2", "--root", str(tmp_path / "cluster")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:])
    assert int(figures["puts"]) > 0 and figures["failed"].strip() == "0"
    assert {"p99_ms", "max_ms", "leader_changes", "stepped_down_no_quorum", "peak_rss_mib"} <= figures.keys()
    assert all((tmp_path / "cluster" / f"node-{i}.log").exists() for i in (1, 2, 3))
