"""The ``kv`` typer app: global options, the client commands and ``kv serve``.

Global options go before the subcommand, like etcdctl: ``kv -w json --endpoints 127.0.0.1:7001 get k``.
Exit codes: 0 ok; 1 the operation failed (no quorum, timeout, cas mismatch, key not found on get,
unhealthy); 2 usage error (bad arguments, invalid endpoints, no endpoints configured). Errors are one
line on stderr without a traceback unless ``--debug``.

Extension point: a module listed in ``OPTIONAL_COMMAND_MODULES`` (for example ``kv_cli.bench``) that
exists is imported and its ``register(app)`` adds its commands; a missing one is skipped.
"""

from __future__ import annotations

import base64
import enum
import importlib
import logging
import sys
from typing import Annotated, Any, Optional

import typer

from kv_cli import nodestatus
from kv_cli.certs import certs_app, serve_tls_options
from kv_cli.cluster import cluster_app
from kv_cli.common import (
    ENGINE_HELP,
    ENV_ENDPOINTS,
    Engine,
    OperationFailed,
    Settings,
    UsageProblem,
    open_client,
    reporting_errors,
)
from kv_cli.output import (
    OutputFormat,
    cell,
    echo_value,
    jsonable,
    print_json,
    print_table,
    value_fields,
)

OPTIONAL_COMMAND_MODULES = ("kv_cli.bench", "kv_cli.dashboard", "kv_cli.trace", "kv_cli.bulk")

app = typer.Typer(
    name="kv",
    help="kv: a replicated key-value store on Multi-Paxos.\n\n"
    "Example: kv cluster up --detach; kv put greeting hello; kv get greeting",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Consistency(str, enum.Enum):
    """l: linearizable (through the leader's read index); s: serializable (one node's local copy)."""

    l = "l"  # noqa: E741 (the etcdctl spelling)
    s = "s"


class FsyncMode(str, enum.Enum):
    always = "always"
    off = "off"


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


@app.callback()
def main(
    ctx: typer.Context,
    endpoints: Annotated[
        Optional[str],
        typer.Option(
            "--endpoints",
            envvar=ENV_ENDPOINTS,
            show_envvar=True,
            help="Comma list of HOST:PORT. Default: the local cluster started by `kv cluster up`.",
        ),
    ] = None,
    write_out: Annotated[
        OutputFormat,
        typer.Option("--write-out", "-w", case_sensitive=False, help="Output format."),
    ] = OutputFormat.simple,
    command_timeout: Annotated[
        float,
        typer.Option("--command-timeout", min=0.001, help="Seconds to wait for a command, retries included."),
    ] = 5.0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    cacert: Annotated[Optional[str], typer.Option(
        "--cacert", envvar="KV_CACERT", show_envvar=True,
        help="TLS: the cluster's CA file (with --cert and --key; docs/security.md).")] = None,
    cert: Annotated[Optional[str], typer.Option(
        "--cert", envvar="KV_CERT", show_envvar=True, help="TLS: this client's certificate file.")] = None,
    key: Annotated[Optional[str], typer.Option(
        "--key", envvar="KV_KEY", show_envvar=True, help="TLS: this client's key file.")] = None,
) -> None:
    """kv: a replicated key-value store on Multi-Paxos.

    Example: kv --endpoints 127.0.0.1:7001,127.0.0.1:7002 -w json get greeting
    """
    ctx.obj = Settings(
        endpoints_text=endpoints,  # "" is a usage error, not "use the default"
        write_out=write_out,
        command_timeout=command_timeout,
        debug=debug,
        cacert=cacert,
        cert=cert,
        key=key,
    )


def _check_key(key: str) -> None:
    if key == "":
        raise UsageProblem("the key must not be empty")


def _read_stdin_value() -> str | bytes:
    data = typer.get_binary_stream("stdin").read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


# --------------------------------------------------------------------------------------------------
# put / get / del / cas / ls


@app.command("put", epilog="Example: kv put greeting hello;  printf 'hi' | kv put greeting")
def put_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[
        Optional[str], typer.Argument(help="The value; read from stdin (exactly, bytes allowed) if omitted.")
    ] = None,
) -> None:
    """Write KEY=VALUE; prints OK."""
    settings = settings_of(ctx)
    with reporting_errors(settings):
        _check_key(key)
        settings.endpoints()  # validate before reading stdin or connecting
        data: str | bytes = _read_stdin_value() if value is None else value
        with open_client(settings) as client:
            revision = client.put(key, data)
        if settings.write_out is OutputFormat.json:
            print_json({"ok": True, "key": key, "revision": revision})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY", "REVISION"], [[key, revision]])
        else:
            typer.echo("OK")


def _entry_record(key: str, value: Any, *, keys_only: bool, entry: Any = None) -> dict[str, Any]:
    record: dict[str, Any] = {"key": key}
    if not keys_only and value is not None:
        record.update(value_fields(value))
    if entry is not None:
        for name in ("version", "mod_revision", "create_revision"):
            if getattr(entry, name, None) is not None:
                record[name] = getattr(entry, name)
    return record


@app.command(
    "get",
    epilog="Example: kv get greeting;  kv get --prefix user/ --keys-only;  kv -w json get greeting",
)
def get_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key (or the prefix with --prefix).")],
    prefix: Annotated[bool, typer.Option("--prefix", help="Get every key starting with KEY.")] = False,
    keys_only: Annotated[bool, typer.Option("--keys-only", help="Print keys only.")] = False,
    consistency: Annotated[
        Consistency,
        typer.Option("--consistency", help="l: linearizable (default); s: serializable, may be stale."),
    ] = Consistency.l,
) -> None:
    """Read KEY (prints the key line, then the value). Exit 1 if the key does not exist.

    With --prefix an empty result is not an error.
    """
    settings = settings_of(ctx)
    with reporting_errors(settings):
        if not prefix:
            _check_key(key)
        settings.endpoints()
        records: list[dict[str, Any]] = []
        with open_client(settings) as client:
            if prefix:
                for k, v in client.list(key, keys_only=keys_only, consistency=consistency.value):
                    records.append(_entry_record(k, v, keys_only=keys_only))
            else:
                entry = client.get_entry(key, consistency=consistency.value)
                if entry is not None:
                    records.append(_entry_record(entry.key, entry.value, keys_only=keys_only, entry=entry))
        if not prefix and not records:
            if settings.write_out is OutputFormat.json:
                print_json({"kvs": [], "count": 0})
            raise OperationFailed(f"key not found: {key}")
        _print_records(settings, records, keys_only=keys_only)


def _print_records(settings: Settings, records: list[dict[str, Any]], *, keys_only: bool) -> None:
    if settings.write_out is OutputFormat.json:
        print_json({"kvs": records, "count": len(records)})
    elif settings.write_out is OutputFormat.table:
        headers = ["KEY"] if keys_only else ["KEY", "VALUE"]
        extra = [n for n in ("version", "mod_revision") if any(n in r for r in records)]
        headers += [n.upper() for n in extra]
        rows = []
        for r in records:
            row: list[Any] = [r["key"]]
            if not keys_only:
                value = r.get("value")
                row.append(f"base64:{value}" if r.get("value_encoding") == "base64" else value)
            row += [r.get(n) for n in extra]
            rows.append(row)
        print_table(headers, rows)
    else:
        for r in records:
            typer.echo(r["key"])
            if not keys_only:
                echo_value(_raw_value(r))


def _raw_value(record: dict[str, Any]) -> str | bytes:
    if record.get("value_encoding") == "base64":
        return base64.b64decode(record["value"])
    return record.get("value", "")


@app.command("del", epilog="Example: kv del greeting;  kv del --prefix user/")
def del_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key (or the prefix with --prefix).")],
    prefix: Annotated[bool, typer.Option("--prefix", help="Delete every key starting with KEY.")] = False,
) -> None:
    """Delete KEY; prints how many keys were deleted (0 if it did not exist, which is not an error)."""
    settings = settings_of(ctx)
    with reporting_errors(settings):
        if not prefix:
            _check_key(key)
        settings.endpoints()
        with open_client(settings) as client:
            if prefix:
                deleted = int(client.delete_prefix(key))
            else:
                deleted = 1 if client.delete(key) else 0
        if settings.write_out is OutputFormat.json:
            print_json({"deleted": deleted, "key": key, "prefix": prefix})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY", "PREFIX", "DELETED"], [[key, prefix, deleted]])
        else:
            typer.echo(str(deleted))


@app.command(
    "cas",
    epilog="Example: kv cas counter 1 2  (set counter to 2 if it is 1);  "
    "kv cas --absent lock me  (create lock only if absent)",
)
def cas_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key.")],
    values: Annotated[
        list[str], typer.Argument(help="EXPECTED NEW, or only NEW with --absent.", show_default=False)
    ],
    absent: Annotated[bool, typer.Option("--absent", help="Expect KEY to be absent (no EXPECTED).")] = False,
) -> None:
    """Compare-and-swap: set KEY to NEW only if its value is EXPECTED. Exit 1 on mismatch.

    Usage: kv cas KEY EXPECTED NEW, or kv cas --absent KEY NEW.
    """
    settings = settings_of(ctx)
    with reporting_errors(settings):
        _check_key(key)
        expected: str | None
        if absent:
            if len(values) != 1:
                raise UsageProblem("with --absent give exactly KEY NEW (kv cas --absent KEY NEW)")
            expected, new = None, values[0]
        else:
            if len(values) != 2:
                raise UsageProblem("give KEY EXPECTED NEW (or --absent KEY NEW)")
            expected, new = values
        settings.endpoints()
        with open_client(settings) as client:
            succeeded = bool(client.cas(key, expected, new))
        if settings.write_out is OutputFormat.json:
            print_json({"succeeded": succeeded, "key": key})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY", "SUCCEEDED"], [[key, succeeded]])
        elif succeeded:
            typer.echo("OK")
        if not succeeded:
            if expected is None:
                raise OperationFailed(f"compare failed: {key} exists")
            raise OperationFailed(f"compare failed: the value of {key} is not {expected!r}")


@app.command("ls", epilog="Example: kv ls;  kv ls user/")
def ls_command(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="List only keys starting with PREFIX.")] = "",
    consistency: Annotated[
        Consistency, typer.Option("--consistency", help="l: linearizable (default); s: serializable.")
    ] = Consistency.l,
) -> None:
    """List keys (all, or those starting with PREFIX), in key order."""
    settings = settings_of(ctx)
    with reporting_errors(settings):
        settings.endpoints()
        with open_client(settings) as client:
            keys = [k for k, _ in client.list(prefix, keys_only=True, consistency=consistency.value)]
        if settings.write_out is OutputFormat.json:
            print_json({"keys": keys, "count": len(keys)})
        elif settings.write_out is OutputFormat.table:
            print_table(["KEY"], [[k] for k in keys])
        else:
            for k in keys:
                typer.echo(k)


# --------------------------------------------------------------------------------------------------
# status / health


def status_rows(statuses: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    columns = nodestatus.present_columns(statuses)
    extra = nodestatus.extra_keys(statuses)
    rows = []
    for status in statuses:
        row = [nodestatus.field(status, c) for c in columns]
        if "STATE_HASH" in columns:  # the full digest is in -w json
            i = columns.index("STATE_HASH")
            row[i] = nodestatus.short_hash(row[i])
        row += [status.get(k) for k in extra]
        rows.append(row)
    return columns + [k.upper() for k in extra], rows


@app.command("status", epilog="Example: kv status;  kv -w table status;  kv -w json status")
def status_command(ctx: typer.Context) -> None:
    """Show every node: id, address, reachable, leader, ballot, decided/applied slot, log and snapshot.

    Exit 1 if no endpoint is reachable.
    """
    settings = settings_of(ctx)
    with reporting_errors(settings):
        settings.endpoints()
        with open_client(settings) as client:
            statuses = [dict(s) for s in client.cluster_status()]
        if settings.write_out is OutputFormat.json:
            print_json(jsonable(statuses))
        else:
            headers, rows = status_rows(statuses)
            if settings.write_out is OutputFormat.table:
                print_table(headers, rows)
            else:
                for row in rows:
                    typer.echo(", ".join(f"{h.lower()}={cell(v)}" for h, v in zip(headers, row)))
            for line in nodestatus.disk_problems(statuses):
                typer.echo(line, err=True)
        if not any(nodestatus.is_reachable(s) for s in statuses):
            raise OperationFailed("no endpoint is reachable")


@app.command("health", epilog="Example: kv health && echo ready")
def health_command(ctx: typer.Context) -> None:
    """Exit 0 if a quorum of the endpoints is reachable and a leader is known, else 1."""
    settings = settings_of(ctx)
    with reporting_errors(settings):
        endpoints = settings.endpoints()
        with open_client(settings) as client:
            statuses = [dict(s) for s in client.cluster_status()]
        reachable = sum(1 for s in statuses if nodestatus.is_reachable(s))
        total = max(len(endpoints), len(statuses))
        quorum = total // 2 + 1
        leader = nodestatus.known_leader(statuses)
        healthy = reachable >= quorum and leader is not None
        if settings.write_out is OutputFormat.json:
            print_json(
                {
                    "healthy": healthy,
                    "reachable": reachable,
                    "endpoints": total,
                    "quorum": quorum,
                    "leader": jsonable(leader),
                    "nodes": jsonable(statuses),
                }
            )
        elif settings.write_out is OutputFormat.table:
            rows = [
                [nodestatus.field(s, "ADDRESS"), nodestatus.is_reachable(s), nodestatus.field(s, "LEADER")]
                for s in statuses
            ]
            print_table(["ADDRESS", "REACHABLE", "LEADER"], rows)
        else:
            for s in statuses:
                state = "reachable" if nodestatus.is_reachable(s) else "unreachable"
                typer.echo(f"{nodestatus.field(s, 'ADDRESS') or '?'}: {state}")
        summary = f"{reachable}/{total} reachable (quorum {quorum}), leader {leader if leader is not None else 'unknown'}"
        if not healthy:
            raise OperationFailed(f"cluster is unhealthy: {summary}")
        if settings.write_out is OutputFormat.simple:
            typer.echo(f"cluster is healthy: {summary}")


# --------------------------------------------------------------------------------------------------
# serve


@app.command(
    "serve",
    epilog="Example: kv serve --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 "
    "--data-dir /var/lib/kv/node-1",
)
def serve_command(
    ctx: typer.Context,
    node_id: Annotated[int, typer.Option("--id", help="This node's id; a key of --peers, or a member added "
                                                       "with kv member add (with --join).")],
    data_dir: Annotated[str, typer.Option("--data-dir", help="This node's data directory.")],
    peers: Annotated[str, typer.Option(
        "--peers", help="Bootstrap list, used only when a new cluster is founded: every founding member, "
                        "ID=HOST:PORT,ID=HOST:PORT,... Later membership lives in the cluster's log "
                        "(kv member ...); a founded directory keeps its own record.")] = "",
    join: Annotated[Optional[str], typer.Option(
        "--join", help="Join a running cluster: HOST:PORT[,...] of its members. Add the node first with "
                       "kv member add ID HOST:PORT; it starts as a learner (kv member promote ID).")] = None,
    tick_ms: Annotated[Optional[float], typer.Option("--tick-ms", min=0.1, help="Milliseconds per tick.")] = None,
    election_timeout_ticks: Annotated[
        Optional[int], typer.Option("--election-timeout-ticks", min=1, help="Ticks without a leader before an election.")
    ] = None,
    heartbeat_ticks: Annotated[
        Optional[int], typer.Option("--heartbeat-ticks", min=1, help="Ticks between leader heartbeats.")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Commands per slot at most.")] = None,
    window: Annotated[Optional[int], typer.Option("--window", min=1, help="Slots in flight at most.")] = None,
    snapshot_every: Annotated[
        Optional[int],
        typer.Option("--snapshot-every", min=1,
                     help="Snapshot after this many applied commands (default 100000; at least an eighth of the keys)."),
    ] = None,
    fsync: Annotated[Optional[FsyncMode], typer.Option("--fsync", help="always: fsync the log (default); off: don't.")] = None,
    cluster_id: Annotated[
        Optional[str], typer.Option("--cluster-id", help="Refuse data directories of another cluster.")
    ] = None,
    exit_on_disk_failure: Annotated[
        bool,
        typer.Option("--exit-on-disk-failure",
                     help="After a failed fsync, exit with status 75 (for a supervisor to restart the node) "
                          "instead of staying up fenced: no vote, no writes, status and serializable reads "
                          "only. Either way the node sends no Paxos message after the failure."),
    ] = False,
    lazy_learners: Annotated[
        Optional[bool],
        typer.Option("--lazy-learners/--eager-learners",
                     help="Lazy (default): under sustained writes, followers other than the standby take the "
                          "leader's snapshots instead of applying every command. Eager: every follower applies "
                          "every command as it is decided."),
    ] = None,
    engine: Annotated[Engine, typer.Option("--engine", help=ENGINE_HELP)] = Engine.core,
    metrics_addr: Annotated[
        Optional[str],
        typer.Option("--metrics-addr", help="Serve Prometheus metrics at http://HOST:PORT/metrics "
                                            "(docs/operations.md, Metrics). Default: none."),
    ] = None,
    cacert: Annotated[Optional[str], typer.Option(
        "--cacert", help="Serve mutual TLS only (peers and clients): the cluster's CA file. With --cert and "
                         "--key; SIGHUP reads the three again (docs/security.md).")] = None,
    cert: Annotated[Optional[str], typer.Option("--cert", help="TLS: this node's certificate (node-ID.pem).")] = None,
    key: Annotated[Optional[str], typer.Option("--key", help="TLS: this node's key (node-ID.key).")] = None,
    acl: Annotated[Optional[str], typer.Option(
        "--acl", help="Access rules per client certificate (TOML; needs TLS; SIGHUP reads it again). "
                      "Default: every certificate of the CA has full access.")] = None,
) -> None:
    """Run one node in the foreground until Ctrl-C or SIGTERM."""
    settings = settings_of(ctx)
    with reporting_errors(settings):
        from kvstore.endpoints import EndpointError, parse_endpoint, parse_peers
        from kvstore.httpserve import parse_listen_address
        from kvstore.server import ServerOptions, run_node

        from kvstore.members import JoinError

        join_list: list[str] = []
        if join is not None:
            try:
                join_list = [f"{h}:{p}" for h, p in (parse_endpoint(e) for e in join.split(",") if e.strip())]
            except EndpointError as exc:
                raise UsageProblem(f"invalid --join {join!r}: {exc}") from None
            if not join_list:
                raise UsageProblem("--join needs HOST:PORT of at least one member")
        if not peers and not join_list:
            raise UsageProblem("give --peers (found a new cluster) or --join (join a running one)")
        try:
            peer_map = parse_peers(peers) if peers else {}
        except EndpointError as exc:
            raise UsageProblem(f"invalid --peers {peers!r}: {exc}") from None
        if node_id not in peer_map and not join_list:
            raise UsageProblem(f"--id {node_id} is not one of the --peers ids {sorted(peer_map)}")
        overrides: dict[str, Any] = {}
        if tick_ms is not None:
            overrides["tick_seconds"] = tick_ms / 1000.0
        if election_timeout_ticks is not None:
            overrides["election_timeout_ticks"] = election_timeout_ticks
        if heartbeat_ticks is not None:
            overrides["heartbeat_ticks"] = heartbeat_ticks
        if batch_size is not None:
            overrides["batch_count_max"] = batch_size
        if window is not None:
            overrides["window"] = window
        if snapshot_every is not None:
            overrides["snapshot_every"] = snapshot_every
        if fsync is not None:
            overrides["fsync"] = fsync is FsyncMode.always
        if cluster_id is not None:
            overrides["cluster_id"] = cluster_id
        if lazy_learners is not None:
            overrides["lazy_learners"] = lazy_learners
        if exit_on_disk_failure:
            overrides["exit_on_disk_failure"] = True
        overrides["engine"] = engine.value
        if metrics_addr is not None:
            try:
                parse_listen_address(metrics_addr)  # HOST:PORT; port 0 picks a free one
            except EndpointError as exc:
                raise UsageProblem(f"invalid --metrics-addr {metrics_addr!r}: {exc}") from None
            overrides["metrics_addr"] = metrics_addr
        overrides.update(serve_tls_options(cacert, cert, key, acl))  # checked: UsageProblem if unusable
        options = ServerOptions(**overrides)
        logging.basicConfig(
            level=logging.DEBUG if settings.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        where = "{}:{}".format(*peer_map[node_id]) if node_id in peer_map else "its configured address"
        typer.echo(f"kv serve: node {node_id} on {where}, data dir {data_dir}, engine {options.engine}"
                   + (f", joining via {','.join(join_list)}" if join_list else ""), err=True)
        try:
            run_node(node_id, peer_map, data_dir, options, join=join_list or None)
        except KeyboardInterrupt:
            pass
        except JoinError as exc:
            raise OperationFailed(f"cannot join: {exc}") from None
        typer.echo(f"kv serve: node {node_id} stopped", err=True)


app.add_typer(cluster_app, name="cluster")
app.add_typer(certs_app, name="certs")


def _register_member_commands() -> None:
    from kv_cli.member import member_app, move_leader_command

    app.add_typer(member_app, name="member")
    app.command("move-leader", epilog="Example: kv move-leader 3")(move_leader_command)


_register_member_commands()


def _register_snapshot_commands() -> None:
    from kv_cli.snapshot import snapshot_app

    app.add_typer(snapshot_app, name="snapshot")


_register_snapshot_commands()


def _register_optional_commands() -> None:
    for name in OPTIONAL_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet: fine
            raise
        module.register(app)


_register_optional_commands()

__all__ = ["app"]


# etcdctl users write global flags after the command too (``etcdctl endpoint status -w table``).
# Click only takes them before it, so the entry point moves them there first.
_GLOBAL_WITH_VALUE = ("--endpoints", "--write-out", "-w", "--command-timeout", "--cacert", "--cert", "--key")
_GLOBAL_FLAGS = ("--debug",)
_OWN_FLAGS_COMMANDS = ("bench", "serve")  # these define some of the same names themselves


def hoist_global_options(argv: list[str]) -> list[str]:
    """Move global options that follow the subcommand to the front; everything else keeps its order."""
    front: list[str] = []
    rest: list[str] = []
    command_seen = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest.extend(argv[i:])
            break
        if not command_seen and not arg.startswith("-"):
            command_seen = True
            if arg in _OWN_FLAGS_COMMANDS:
                rest.extend(argv[i:])
                break
            rest.append(arg)
        elif command_seen and arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front.extend(argv[i:i + 2])
            i += 1
        elif command_seen and (arg in _GLOBAL_FLAGS or arg.split("=", 1)[0] in _GLOBAL_WITH_VALUE):
            front.append(arg)
        elif not command_seen and arg in _GLOBAL_WITH_VALUE and i + 1 < len(argv):
            front.extend(argv[i:i + 2])
            i += 1
        elif not command_seen:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def run() -> None:
    """The ``kv`` console script."""
    import sys

    app(args=hoist_global_options(sys.argv[1:]), prog_name="kv")
