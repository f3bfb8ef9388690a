"""The fast path (``kv_cli.fast``) and the typer app give the same result, and the fast path declines
whatever it does not fully understand.

How: with the fake client (conftest.py), each argument list runs once through the typer app (CliRunner)
and once through ``fast.run_fast`` in-process, from the same state of the fake cluster, and stdout,
stderr and the exit code must be the same; the fake must have seen the same calls. ``parse`` must return
None (typer's turn) for help, unknown or malformed options, missing or extra arguments, ``-``/``--`` and
values typer would refuse. Also: the ``kv --help`` listing (built from placeholders, without building
the commands) equals the listing of the built commands, and every command still builds and has help.
"""
from __future__ import annotations

import copy

import pytest
from typer.testing import CliRunner

from kv_cli import fast
from kv_cli.main import app
from kv_cli.serve import serve as _REAL_SERVE

EP = ["--endpoints", "127.0.0.1:7001,127.0.0.1:7002"]

SAME = [
    ["put", "k", "v"],
    ["-w", "json", "put", "k", "v"],
    ["-w", "TABLE", "put", "k", "v"],
    ["get", "greeting"],
    ["get", "missing"],
    ["-w", "json", "get", "missing"],
    ["-wjson", "get", "bin"],
    ["--write-out=table", "get", "--prefix", ""],
    ["get", "--prefix", "--keys-only", "user/"],
    ["get", "--prefix", "--limit", "1", "user/"],
    ["-w", "json", "get", "--prefix", "--limit=1", "--keys-only", "user/"],
    ["get", "--print-value-only", "greeting"],
    ["get", "--prefix", "--print-value-only", "user/"],
    ["get", "--keys-only", "--print-value-only", "greeting"],
    ["get", "--limit", "2", "greeting"],
    ["ls", "--limit", "1"],
    ["get", "--consistency", "s", "greeting"],
    ["get", "--consistency=s", "greeting"],
    ["--command-timeout", "2.5", "get", "bin"],
    ["--debug", "get", "greeting"],
    ["del", "greeting"],
    ["-w", "json", "del", "--prefix", "user/"],
    ["cas", "n", "1", "2"],
    ["cas", "n", "9", "2"],
    ["cas", "--absent", "lock", "me"],
    ["cas", "--absent", "lock", "me", "extra"],
    ["cas", "k", "a", "b", "c"],
    ["ls"],
    ["ls", "user/"],
    ["-w", "json", "ls"],
    ["status"],
    ["-w", "table", "status"],
    ["health"],
    ["-w", "json", "health"],
    ["get", ""],
    ["put", "", "v"],
    ["--endpoints", "nowhere", "get", "k"],
    ["--endpoints", "", "get", "k"],
    ["--cacert", "/nonexistent", "get", "k"],
]
STATUS = {"endpoint": "127.0.0.1:7001", "reachable": True, "id": 1, "leader": 1, "is_leader": True,
          "decided_slot": 3, "applied_slot": 3}


def _seed(fake) -> None:
    fake.set("greeting", "hello")
    fake.set("bin", b"\x00\xff")
    fake.set("user/a", "1")
    fake.set("user/b", "2")
    fake.set("n", "1")
    fake.statuses = [STATUS, {"endpoint": "127.0.0.1:7002", "reachable": False, "error": "refused"}]


def _run_typer(args):
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    return result.exit_code, result.stdout_bytes, result.stderr


def _run_fast(capfdbinary, args):
    try:
        assert fast.run_fast(args), f"the fast path declined {args}"
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capfdbinary.readouterr()
    return code, out, err.decode()


@pytest.mark.parametrize("args", SAME, ids=[" ".join(a) or "-" for a in SAME])
def test_the_fast_path_and_typer_agree(fake, capfdbinary, args):
    argv = args if args[0].startswith("--endpoints") else [*EP, *args]
    _seed(fake)
    before = (copy.deepcopy(fake.data), fake.revision)
    by_typer = _run_typer(argv)
    typer_calls = list(fake.calls)
    fake.data, fake.revision = copy.deepcopy(before[0]), before[1]
    fake.calls.clear()
    capfdbinary.readouterr()
    by_fast = _run_fast(capfdbinary, argv)
    assert by_fast == by_typer
    assert fake.calls == typer_calls


@pytest.mark.parametrize("args", [
    [], ["--help"], ["-h"], ["get", "--help"], ["get", "-h"], ["get"], ["get", "a", "b"], ["put"],
    ["put", "k", "v", "extra"], ["cas", "k"], ["status", "x"], ["get", "--prefix=yes", "k"], ["get", "-x", "k"],
    ["get", "--consistency", "L", "k"], ["get", "--consistency"], ["get", "--limit", "x", "k"],
    ["get", "--limit", "-1", "k"], ["ls", "--limit", "1.5"], ["-w", "yaml", "get", "k"], ["-w=json", "get", "k"],
    ["--command-timeout", "0", "get", "k"], ["--command-timeout", "abc", "get", "k"],
    ["--command-timeout", "nan", "get", "k"], ["--command-timeout", "inf", "get", "k"], ["--endpoints"],
    ["put", "k", "-"], ["put", "--", "-x"], ["put", "k", "-5"], ["--debug=1", "get", "k"], ["--verbose", "get", "k"],
    ["cluster", "status"], ["serve"], ["member", "list"], ["nosuch"], ["get", "k", "--help"],
    ["serve", "--id", "1"], ["serve", "--data-dir", "d"], ["serve", "--id", "x", "--data-dir", "d"],
    ["serve", "--id", "+1", "--data-dir", "d"], ["serve", "--id", "1_0", "--data-dir", "d"],
    ["serve", "--id", "1", "--id", "2", "--data-dir", "d"], ["serve", "--id", "1", "--data-dir", "d", "extra"],
    ["serve", "--id", "1", "--data-dir", "d", "--window", "0"],
    ["serve", "--id", "1", "--data-dir", "d", "--tick-ms", "0.05"],
    ["serve", "--id", "1", "--data-dir", "d", "--tick-ms", "1e3"],
    ["serve", "--id", "1", "--data-dir", "d", "--idle-snapshot-seconds", "-1"],
    ["serve", "--id", "1", "--data-dir", "d", "--fsync", "Always"],
    ["serve", "--id", "1", "--data-dir", "d", "--engine", "CORE"],
    ["serve", "--id", "1", "--data-dir", "d", "--lazy-learners", "--eager-learners"],
    ["serve", "--id", "1", "--data-dir", "d", "--exit-on-disk-failure=true"],
    ["serve", "--id", "1", "--data-dir", "d", "--peers"], ["serve", "--id", "1", "--data-dir", "d", "--help"],
    ["serve", "--id", "1", "--data-dir", "d", "--verbose"], ["serve", "--id", "1", "--data-dir", "d", "--"],
])
def test_the_fast_path_leaves_anything_else_to_typer(args):
    assert fast.parse(args) is None


def test_environment_variables_as_typer_reads_them(monkeypatch):
    monkeypatch.setenv("KV_ENDPOINTS", "127.0.0.1:9")
    monkeypatch.setenv("KV_CACERT", "")  # empty: not given, as click has it
    parsed = fast.parse(["get", "k"])
    assert parsed is not None
    settings = parsed[1]
    assert settings.endpoints_text == "127.0.0.1:9" and settings.cacert is None
    flag = fast.parse(["--endpoints", "127.0.0.1:8", "get", "k"])
    assert flag is not None and flag[1].endpoints_text == "127.0.0.1:8"


def test_the_help_listing_is_the_built_commands_listing():
    """``kv --help`` lists placeholders; the same rows must come from the real commands."""
    import typer.main
    from typer import _click

    group = typer.main.get_command(app)
    ctx = _click.Context(group, info_name="kv")
    listed = group.get_help(ctx)
    names = list(group.commands)
    assert names[:8] == ["put", "get", "del", "cas", "ls", "status", "health", "serve"]
    assert {"cluster", "certs", "member", "snapshot", "move-leader", "bench", "trace", "dashboard"} <= set(names)
    limit = 80 - 6 - max(len(n) for n in names)
    for name in names:
        placeholder = group.commands[name].get_short_help_str(limit)
        built = group.get_command(ctx, name)
        assert built.get_short_help_str(limit) == placeholder, name
        assert built.callback is not None or hasattr(built, "commands"), name
    assert group.get_help(ctx) == listed  # the listing did not change once every command was built


@pytest.mark.parametrize("name", ["cluster", "certs", "member", "snapshot", "move-leader", "bench", "trace",
                                  "dashboard", "serve", "get"])
def test_every_command_builds_and_has_help(name):
    result = CliRunner().invoke(app, [name, "--help"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"Usage: kv {name}" in result.stdout


SERVE = [
    ["serve", "--id", "1", "--data-dir", "d", "--peers", "1=127.0.0.1:7001"],
    ["--debug", "-w", "json", "serve", "--data-dir=d", "--id=2", "--join", "127.0.0.1:7001,127.0.0.1:7002"],
    ["serve", "--id", "3", "--data-dir", "d", "--peers", "1=a:1,3=b:2", "--tick-ms", "0.5", "--election-timeout-ticks",
     "12", "--heartbeat-ticks", "3", "--batch-size", "64", "--window=8", "--snapshot-every", "1000",
     "--idle-snapshot-seconds", "2.5", "--fsync", "off",
     "--cluster-id", "c1", "--exit-on-disk-failure", "--eager-learners", "--no-check-quorum", "--engine",
     "classic", "--metrics-addr",
     "127.0.0.1:0", "--cacert", "ca.pem", "--cert", "n.pem", "--key", "n.key", "--acl", "acl.toml"],
    ["serve", "--id", "0", "--data-dir", "", "--tick-ms=.5", "--lazy-learners", "--fsync=always", "--engine=core"],
    ["serve", "--id", "1", "--data-dir", "d", "--tick-ms", "5."],
    ["serve", "--id", "1", "--data-dir", "d", "--idle-snapshot-seconds", "0"],
    ["serve", "--id", "1", "--data-dir", "d", "--watch-history", "0"],
    ["serve", "--id", "1", "--data-dir", "d", "--watch-history", "120000"],
]


def _serve_call(monkeypatch, run) -> dict[str, object]:
    """What ``kv_cli.serve.serve`` was called with (defaults filled in), running nothing."""
    import inspect

    from kv_cli import serve as serve_module

    calls = []
    signature = inspect.signature(_REAL_SERVE)

    def record(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(bound.arguments)

    monkeypatch.setattr(serve_module, "serve", record)
    run()
    assert len(calls) == 1
    settings = calls[0].pop("settings")
    return {**calls[0], "settings": vars(settings)}


@pytest.mark.parametrize("args", SERVE, ids=[" ".join(a) for a in SERVE])
def test_kv_serve_options_are_the_same_by_the_fast_path_and_by_typer(monkeypatch, args):
    by_typer = _serve_call(monkeypatch, lambda: CliRunner().invoke(app, args, catch_exceptions=False))
    by_fast = _serve_call(monkeypatch, lambda: fast.run_fast(args))
    assert by_fast == by_typer


def test_kv_serve_watch_history_0_stays_on_the_fast_path():
    """``--watch-history 0`` went to typer (the fast path took only numbers from 1), whose import the node
    then kept: 15 MiB of RSS more on a node with a million keys (bench/memory_bench.py)."""
    assert fast._parse_serve(["--id", "1", "--data-dir", "d", "--watch-history", "0"])["watch_history"] == 0


def test_kv_serve_starts_without_importing_typer():
    """The point of the fast path for ``kv serve``: a node does not load typer (nor pydantic under it)."""
    import subprocess
    import sys

    script = (
        "import sys\n"
        "import kv_cli.serve\n"
        "kv_cli.serve.serve = lambda settings, **options: print(options['node_id'], options['data_dir'])\n"
        "from kv_cli.main import run\n"
        "sys.argv = ['kv', 'serve', '--id', '7', '--data-dir', 'somewhere', '--peers', '7=127.0.0.1:1']\n"
        "run()\n"
        "print(sorted(m for m in ('typer', 'click', 'pydantic', 'kv_cli.app') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.splitlines() == ["7 somewhere", "[]"]
