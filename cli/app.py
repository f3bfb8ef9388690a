"""The ``kv`` typer app: global options, the client commands, ``kv serve``, and every other command.

Global options go before the subcommand, like etcdctl: ``kv -w json --endpoints 127.0.0.1:7001 get k``
(``kv_cli.main.run`` moves those written after it to the front). Exit codes: 0 ok; 1 the operation
failed (no quorum, timeout, cas mismatch, key not found on get, unhealthy, a key or value over the
store's limits); 2 usage error (bad arguments, invalid endpoints, no endpoints configured). Errors are
one line on stderr without a traceback unless ``--debug``.

The one-shot client commands (put, get, del, cas, ls, status, health) only parse their arguments here
and call ``kv_cli.oneshot``; ``kv_cli.fast`` runs the same functions without typer for well-formed
invocations, and falls back to this app for anything else (help, usage errors).

Registering commands: as with any typer app (``@app.command``, ``app.add_typer``), at the end of this
module; a module listed in ``OPTIONAL_COMMAND_MODULES`` (for example ``kv_cli.bench``) that exists is
imported and its ``register(app)`` adds its commands (a missing one is skipped). A command module should
import only typer and kv_cli at its top and the rest inside its commands: ``kv --help`` imports them all.

What typer costs, and what is done about it: building the click command of every command (typer reads
each signature) took ``kv --help`` longer than importing typer. ``KvGroup`` builds one only when it is
run or asked for its help; the list in ``kv --help`` comes from the same help texts, without building.
Importing typer itself is then most of what is left: ``kv_cli.helpcache`` prints help pages without it.
"""

from __future__ import annotations

import enum
import importlib
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from . import oneshot
from .common import (
    ENGINE_HELP,
    ENV_ENDPOINTS,
    RANGE_ITEMS_MAX,
    Engine,
    Settings,
    parse_duration,
    reporting_errors,
    version_facts,
    version_line,
)
from .output import OutputFormat, echo, print_json, print_table

OPTIONAL_COMMAND_MODULES = ("kv_cli.bench", "kv_cli.dashboard", "kv_cli.trace", "kv_cli.bulk")


class KvGroup(TyperGroup):
    """The top-level group, with the commands and groups registered on ``app`` built on demand.

    typer builds the click command of every registered command before the first one runs. The end of
    this module moves the registrations aside (``_deferred``), so typer builds only the group itself;
    here each one starts as a placeholder carrying the help texts typer would have given it (for
    ``kv --help``), and ``get_command`` builds the real one, with typer's own function, when it is run
    or asked for its help. The order is typer's: commands first, then groups, each in registration order.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        eager = dict(self.commands)  # anything registered after this module was loaded
        self.commands = {}
        self.deferred: dict[str, Any] = {}
        for info in _deferred.commands:
            self._defer(_command_name(info), info, _placeholder_of_command(info))
        for info in _deferred.groups:
            self._defer(info.name, info, _placeholder_of_group(info))
        self.commands.update(eager)

    def _defer(self, name: str, info: Any, placeholder: Any) -> None:
        self.commands[name] = placeholder
        self.deferred[name] = info

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        info = self.deferred.pop(cmd_name, None)
        if info is not None:
            self.commands[cmd_name] = _build(info)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # TyperGroup's, from self.commands instead of get_command: listing builds nothing.
        rows = [(name, cmd) for name, cmd in self.commands.items() if not cmd.hidden]
        if rows:
            limit = formatter.width - 6 - max(len(name) for name, _ in rows)
            with formatter.section("Commands"):
                formatter.write_dl([(name, cmd.get_short_help_str(limit)) for name, cmd in rows])


class _Deferred:
    """The registrations of ``app`` that ``KvGroup`` builds on demand."""

    def __init__(self) -> None:
        self.commands: list[Any] = []
        self.groups: list[Any] = []


_deferred = _Deferred()


def _command_name(info: Any) -> str:
    from typer.main import get_command_name

    return info.name or get_command_name(info.callback.__name__)


def _placeholder_of_command(info: Any) -> Any:
    """A click command with the help typer's ``get_command_from_info`` would give ``info`` (for lists)."""
    import inspect

    from typer.core import TyperCommand

    use_help = inspect.getdoc(info.callback) if info.help is None else inspect.cleandoc(info.help)
    return TyperCommand(name=_command_name(info), help=use_help, short_help=info.short_help, hidden=info.hidden,
                        deprecated=info.deprecated)


def _placeholder_of_group(info: Any) -> Any:
    """The same for a group (``get_group_from_info``'s help texts)."""
    from typer.core import TyperCommand
    from typer.main import solve_typer_info_defaults

    solved = solve_typer_info_defaults(info)
    return TyperCommand(name=info.name, help=solved.help, short_help=solved.short_help, hidden=solved.hidden,
                        deprecated=solved.deprecated)


def _build(info: Any) -> Any:
    """The click command or group of one registration, as typer builds it for a group of ``app``."""
    from typer.main import get_command_from_info, get_group_from_info
    from typer.models import CommandInfo

    if isinstance(info, CommandInfo):
        return get_command_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                                     rich_markup_mode=app.rich_markup_mode)
    return get_group_from_info(info, pretty_exceptions_short=app.pretty_exceptions_short,
                               rich_markup_mode=app.rich_markup_mode, suggest_commands=app.suggest_commands)


app = typer.Typer(
    name="kv",
    cls=KvGroup,
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


def _duration(text: str | float) -> float:
    """typer's parser of --command-timeout: ``common.parse_duration``, its error a usage error."""
    if isinstance(text, float):  # (the default)
        return text
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _print_version(value: bool) -> None:
    if value:
        echo(version_line())
        raise typer.Exit()


def settings_of(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


@app.callback()
def main(
    ctx: typer.Context,
    endpoints: Annotated[
        str | None,
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
        typer.Option("--command-timeout", parser=_duration, metavar="DURATION",
                     help="How long to wait for a command, retries included: seconds (2.5) or with a unit "
                          "(500ms, 5s, 1m)."),
    ] = 5.0,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    cacert: Annotated[str | None, typer.Option(
        "--cacert", envvar="KV_CACERT", show_envvar=True,
        help="TLS: the cluster's CA file (with --cert and --key; docs/security.md).")] = None,
    cert: Annotated[str | None, typer.Option(
        "--cert", envvar="KV_CERT", show_envvar=True, help="TLS: this client's certificate file.")] = None,
    key: Annotated[str | None, typer.Option(
        "--key", envvar="KV_KEY", show_envvar=True, help="TLS: this client's key file.")] = None,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version of kv and Python, and exit.")
    ] = False,
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


# --------------------------------------------------------------------------------------------------
# put / get / del / cas / ls / status / health: the arguments here, the work in kv_cli.oneshot


@app.command("put", epilog="Example: kv put greeting hello;  printf 'hi' | kv put greeting")
def put_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[
        str | None, typer.Argument(help="The value; read from stdin (exactly, bytes allowed) if omitted.")
    ] = None,
) -> None:
    """Write KEY=VALUE; prints OK."""
    oneshot.put(settings_of(ctx), key, value)


@app.command(
    "get",
    epilog="Example: kv get greeting;  kv get --prefix user/ --keys-only --limit 10;  kv -w json get greeting",
)
def get_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key (or the prefix with --prefix).")],
    prefix: Annotated[bool, typer.Option("--prefix", help="Get every key starting with KEY.")] = False,
    keys_only: Annotated[bool, typer.Option("--keys-only", help="Print keys only.")] = False,
    print_value_only: Annotated[bool, typer.Option(
        "--print-value-only", help="Print values only, without the key lines (simple output).")] = False,
    limit: Annotated[int, typer.Option("--limit", min=0, max=RANGE_ITEMS_MAX,
                                       help="With --prefix: at most this many keys, the first in key order "
                                            "(0: all, up to 100,000; kv dump reads any number).")] = 0,
    consistency: Annotated[
        Consistency,
        typer.Option("--consistency", help="l: linearizable (default); s: serializable, may be stale."),
    ] = Consistency.l,
) -> None:
    """Read KEY (prints the key line, then the value). Exit 1 if the key does not exist.

    With --prefix an empty result is not an error.
    """
    oneshot.get(settings_of(ctx), key, prefix=prefix, keys_only=keys_only, consistency=consistency.value,
                print_value_only=print_value_only, limit=limit)


@app.command("del", epilog="Example: kv del greeting;  kv del --prefix user/")
def del_command(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key (or the prefix with --prefix).")],
    prefix: Annotated[bool, typer.Option("--prefix", help="Delete every key starting with KEY.")] = False,
) -> None:
    """Delete KEY; prints how many keys were deleted (0 if it did not exist, which is not an error)."""
    oneshot.delete(settings_of(ctx), key, prefix=prefix)


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
    oneshot.cas(settings_of(ctx), key, values, absent=absent)


@app.command("ls", epilog="Example: kv ls;  kv ls user/")
def ls_command(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="List only keys starting with PREFIX.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=0, max=RANGE_ITEMS_MAX,
                                       help="At most this many keys, the first in key order (0: all, up to "
                                            "100,000; kv dump reads any number).")] = 0,
    consistency: Annotated[
        Consistency, typer.Option("--consistency", help="l: linearizable (default); s: serializable.")
    ] = Consistency.l,
) -> None:
    """List keys (all, or those starting with PREFIX), in key order."""
    oneshot.ls(settings_of(ctx), prefix, consistency=consistency.value, limit=limit)


@app.command("status", epilog="Example: kv status;  kv -w table status;  kv -w json status")
def status_command(ctx: typer.Context) -> None:
    """Show every node: id, address, reachable, leader, ballot, decided/applied slot, log and snapshot.

    Exit 1 if no endpoint is reachable.
    """
    oneshot.status(settings_of(ctx))


@app.command("health", epilog="Example: kv health && echo ready")
def health_command(ctx: typer.Context) -> None:
    """Exit 0 if a quorum of the endpoints is reachable and a leader is known, else 1."""
    oneshot.health(settings_of(ctx))


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
                        "(kv member ...); a founded directory keeps its own record, so a node restarted on "
                        "its data directory needs neither --peers nor --join.")] = "",
    join: Annotated[str | None, typer.Option(
        "--join", help="Join a running cluster: HOST:PORT[,...] of its members. Add the node first with "
                       "kv member add ID HOST:PORT; it starts as a learner (kv member promote ID).")] = None,
    tick_ms: Annotated[float | None, typer.Option("--tick-ms", min=0.1, max=1000.0,
                                                  help="Milliseconds per tick (at most 1000).")] = None,
    election_timeout_ticks: Annotated[
        int | None,
        typer.Option("--election-timeout-ticks", min=1,
                     help="Ticks without a leader before an election (at least twice --heartbeat-ticks)."),
    ] = None,
    heartbeat_ticks: Annotated[
        int | None, typer.Option("--heartbeat-ticks", min=1, help="Ticks between leader heartbeats.")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Commands per slot at most.")] = None,
    window: Annotated[int | None, typer.Option("--window", min=1, help="Slots in flight at most.")] = None,
    snapshot_every: Annotated[
        int | None,
        typer.Option("--snapshot-every", min=1,
                     help="Snapshot after this many applied commands (default 100000; at least an eighth of "
                          "the keys)."),
    ] = None,
    idle_snapshot_seconds: Annotated[
        float | None,
        typer.Option("--idle-snapshot-seconds", min=0.0,
                     help="Snapshot early once no write was decided for this long, if at least 10000 commands "
                          "(and an eighth of the snapshot interval) were applied since the last snapshot: gives "
                          "back the memory the log holds and shortens restarts (default 5; 0: never)."),
    ] = None,
    watch_history: Annotated[
        int | None,
        typer.Option("--watch-history", min=0, max=10_000_000,
                     help="Changes kept for watches that start at an earlier revision (kv watch --rev; a watch "
                          "moving to this node after its node stopped), 32 MiB of writes at most (default 50000; "
                          "0: none)."),
    ] = None,
    fsync: Annotated[
        FsyncMode | None, typer.Option("--fsync", help="always: fsync the log (default); off: don't.")
    ] = None,
    arriving_frames_max_mib: Annotated[
        int | None,
        typer.Option("--arriving-frames-max-mib", min=9,
                     help="MiB that requests still arriving may hold together, over all client connections: "
                          "one over 64 KiB that finds too little left is refused (unavailable) and its "
                          "connection closed (default 64; at least 9, one frame of the largest size)."),
    ] = None,
    max_client_connections: Annotated[
        int | None,
        typer.Option("--max-client-connections", min=1,
                     help="Client connections the node takes at once; one more is answered unavailable and "
                          "closed, and the client tries another node, unless a connection has been silent for "
                          "10 s: that one is closed instead (default 4096, fewer if ulimit -n is low: 128 open "
                          "files stay for the node's own)."),
    ] = None,
    cluster_id: Annotated[
        str | None, typer.Option("--cluster-id", help="Refuse data directories of another cluster (default: kv; "
                                                      "with --join, the cluster's; without --peers or --join, "
                                                      "the data directory's).")
    ] = None,
    exit_on_disk_failure: Annotated[
        bool,
        typer.Option("--exit-on-disk-failure",
                     help="After a failed fsync, exit with status 75 (for a supervisor to restart the node) "
                          "instead of staying up fenced: no vote, no writes, status and serializable reads "
                          "only. Either way the node sends no Paxos message after the failure."),
    ] = False,
    lazy_learners: Annotated[
        bool | None,
        typer.Option("--lazy-learners/--eager-learners",
                     help="Lazy (default): under sustained writes, followers other than the standby take the "
                          "leader's snapshots instead of applying every command. Eager: every follower applies "
                          "every command as it is decided."),
    ] = None,
    check_quorum: Annotated[
        bool,
        typer.Option("--check-quorum/--no-check-quorum",
                     help="A leader that hears no answer from a majority for an election timeout steps down, "
                          "so that its clients go to the majority's leader (default). Off: it leads on until "
                          "a higher ballot reaches it (for tests that need a change or a write kept in "
                          "flight)."),
    ] = True,
    engine: Annotated[Engine, typer.Option("--engine", help=ENGINE_HELP)] = Engine.core,
    metrics_addr: Annotated[
        str | None,
        typer.Option("--metrics-addr", help="Serve Prometheus metrics at http://HOST:PORT/metrics "
                                            "(docs/operations.md, Metrics). Default: none."),
    ] = None,
    cacert: Annotated[str | None, typer.Option(
        "--cacert", help="Serve mutual TLS only (peers and clients): the cluster's CA file. With --cert and "
                         "--key; SIGHUP reads the three again (docs/security.md).")] = None,
    cert: Annotated[str | None, typer.Option("--cert", help="TLS: this node's certificate (node-ID.pem).")] = None,
    key: Annotated[str | None, typer.Option("--key", help="TLS: this node's key (node-ID.key).")] = None,
    acl: Annotated[str | None, typer.Option(
        "--acl", help="Access rules per client certificate (TOML; needs TLS; SIGHUP reads it again). "
                      "Default: every certificate of the CA has full access.")] = None,
) -> None:
    """Run one node in the foreground until Ctrl-C or SIGTERM."""
    from .serve import serve

    serve(settings_of(ctx), node_id=node_id, data_dir=data_dir, peers=peers, join=join, tick_ms=tick_ms,
          election_timeout_ticks=election_timeout_ticks, heartbeat_ticks=heartbeat_ticks, batch_size=batch_size,
          window=window, snapshot_every=snapshot_every, idle_snapshot_seconds=idle_snapshot_seconds,
          watch_history=watch_history,
          fsync=None if fsync is None else fsync.value, arriving_frames_max_mib=arriving_frames_max_mib,
          max_client_connections=max_client_connections, cluster_id=cluster_id,
          exit_on_disk_failure=exit_on_disk_failure, lazy_learners=lazy_learners,
          check_quorum=check_quorum, engine=engine.value, metrics_addr=metrics_addr, cacert=cacert, cert=cert,
          key=key, acl=acl)


# --------------------------------------------------------------------------------------------------
# version

@app.command("version", epilog="Example: kv version;  kv -w json version")
def version_command(ctx: typer.Context) -> None:
    """Print the version of kv (the paxos-kv package) and of the Python running it."""
    settings = settings_of(ctx)
    with reporting_errors(settings):
        if settings.write_out is OutputFormat.json:
            print_json(version_facts())
        elif settings.write_out is OutputFormat.table:
            print_table(["KV", "PYTHON"], [list(version_facts().values())])
        else:
            echo(version_line())


# --------------------------------------------------------------------------------------------------
# Registration


def _register_command_modules() -> None:
    from .certs import certs_app
    from .cluster import cluster_app
    from .member import member_app, move_leader_command
    from .snapshot import snapshot_app
    from .watch import register as register_watch

    app.add_typer(cluster_app, name="cluster")
    app.add_typer(certs_app, name="certs")
    app.add_typer(member_app, name="member")
    app.command("move-leader", epilog="Example: kv move-leader 3")(move_leader_command)
    app.add_typer(snapshot_app, name="snapshot")
    register_watch(app)


def _register_optional_commands() -> None:
    for name in OPTIONAL_COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet: fine
            raise
        module.register(app)


_register_command_modules()
_register_optional_commands()

# Last: hand every registration to KvGroup, which builds each command only when it is used.
_deferred.commands[:] = app.registered_commands
_deferred.groups[:] = app.registered_groups
app.registered_commands = []
app.registered_groups = []

__all__ = ["app"]
