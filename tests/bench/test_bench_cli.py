"""``kv bench`` and ``kvstore.loadgen`` on a real 1-node cluster at tiny sizes, plus argument checks.

The command is mounted with ``kv_cli.bench.register`` on a fresh typer app (as ``kv_cli.main`` does). Real
cluster tests start one ``kv serve`` process (``tests.integration.harness.Cluster``) and check counts,
output shapes and exit codes; no timing is asserted.
"""
from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from kv_cli.bench import register
from kvstore.client import connect
from kvstore.loadgen import LoadSpec, run_load

from ..integration.harness import Cluster


def make_app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test app"""

    register(app)
    return app


runner = CliRunner()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 1)
    try:
        c.start_all()
        c.leader()
        yield c
    finally:
        c.close()


def test_usage_errors_exit_2_before_connecting(tmp_path, monkeypatch):
    monkeypatch.delenv("KV_ENDPOINTS", raising=False)
    monkeypatch.setenv("KV_CLUSTER_DIR", str(tmp_path / "none"))
    app = make_app()
    assert runner.invoke(app, ["bench", "--total", "5"]).exit_code == 2  # no endpoints anywhere
    assert runner.invoke(app, ["bench", "--endpoints", "nonsense"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--endpoints", "127.0.0.1:1", "--clients", "0"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--endpoints", "127.0.0.1:1", "--op", "scan"]).exit_code == 2
    assert runner.invoke(app, ["bench", "--endpoints", "127.0.0.1:1", "--plot", "x.svg"]).exit_code == 2
    # Sizes the store would refuse, more connections than requests, a plot nobody can write: before the run
    for args, says in ((["--val-size", "1048577"], "over the store's limit of 1048576 bytes"),
                       (["--key-size", "4097"], "over the store's limit of 4096 bytes"),
                       (["--conns", "8", "--clients", "2"], "--conns 8 is more than --clients 2"),
                       (["--plot", str(tmp_path / "missing" / "x.png")], "cannot write in")):
        refused = runner.invoke(app, ["bench", "--endpoints", "127.0.0.1:1", *args])
        assert refused.exit_code == 2 and says in refused.output, (args, refused.output)
    help_text = runner.invoke(app, ["bench", "--help"]).stdout
    for flag in ("--clients", "--conns", "--total", "--duration", "--key-size", "--val-size", "--key-space-size",
                 "--sequential-keys", "--consistency", "--op", "--read-ratio", "--rate", "--plot"):
        assert flag in help_text


@pytest.mark.slow
def test_bench_json_output_on_a_real_node(cluster):
    app = make_app()
    result = runner.invoke(app, ["bench", "--endpoints", ",".join(cluster.endpoints), "-w", "json", "--total", "60",
                                 "--clients", "4", "--conns", "2", "--key-space-size", "20"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["ok"] == 60 and data["errors"] == {} and data["error_count"] == 0
    assert data["params"]["clients"] == 4 and data["params"]["conns"] == 2
    assert all(data["latency_ms"][k] is not None for k in ("min", "p50", "p90", "p99", "max"))
    assert data["throughput_ops_s"] > 0 and data["machine"]["python"]


@pytest.mark.slow
def test_bench_text_and_table_output_and_mixed_reads(cluster):
    app = make_app()
    eps = ",".join(cluster.endpoints)
    text = runner.invoke(app, ["bench", "--endpoints", eps, "--total", "30", "--op", "mixed", "--read-ratio", "0.5",
                               "--consistency", "s", "--no-progress"])
    assert text.exit_code == 0, text.output
    assert "Throughput:" in text.stdout and "p99" in text.stdout
    table = runner.invoke(app, ["bench", "--endpoints", eps, "-w", "table", "--total", "20", "--op", "get"])
    assert table.exit_code == 0, table.output
    assert table.stdout.splitlines()[0].split()[:4] == ["OK", "ERRORS", "SECONDS", "REQ/S"]
    assert "bench:" in table.stderr  # progress lines when stderr is not a terminal


@pytest.mark.slow
def test_bench_plot(cluster, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "lat.png"
    result = runner.invoke(make_app(), ["bench", "--endpoints", ",".join(cluster.endpoints), "--duration", "1.2",
                                        "--rate", "50", "--plot", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
async def test_loadgen_writes_land_in_the_store(cluster):
    spec = LoadSpec(endpoints=cluster.endpoints, clients=8, conns=2, total=40, key_space_size=40,
                    sequential_keys=True, key_size=4, val_size=10)
    result = await run_load(spec)
    assert result.ok == 40 and not result.errors
    async with connect(cluster.endpoints, timeout=10) as kv:
        items = await kv.list("")
    assert [k for k, _ in items] == [f"{i:04d}" for i in range(40)]
    assert all(v == spec.value() for _, v in items)


@pytest.mark.slow
def test_a_cluster_the_warm_up_cannot_reach_fails_the_command_at_once(tmp_path):
    """Nobody listens: the warm-up's first put gives up after --timeout, and the run does not start
    (it used to count a timeout per request slot until its 600 s time limit)."""
    from ..integration.harness import free_ports

    port = free_ports(1)[0]
    result = runner.invoke(make_app(), ["bench", "--endpoints", f"127.0.0.1:{port}", "--total", "1000",
                                        "--timeout", "0.5", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "the warm-up reached no node, so the run did not start" in result.output, result.output
    assert "Summary" not in result.output


@pytest.mark.slow
def test_unreachable_cluster_counts_errors_and_exits_1(tmp_path):
    from ..integration.harness import free_ports

    port = free_ports(1)[0]
    result = runner.invoke(make_app(), ["bench", "--endpoints", f"127.0.0.1:{port}", "--total", "3",
                                        "--clients", "1", "--timeout", "0.3", "--warmup", "0", "-w", "json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["ok"] == 0 and data["error_count"] == 3
