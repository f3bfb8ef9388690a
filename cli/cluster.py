"""``kv cluster``: a local cluster of ``kv serve`` processes on 127.0.0.1, for development and tests.

Theory of operation: ``up`` spawns one ``python -m kv_cli serve`` per node, each in its own session
(``start_new_session``) so a Ctrl-C in the foreground view reaches only us, each with its data directory
DIR/node-N/data and its log DIR/node-N/server.log (beside, not inside, the data directory: the server
refuses a data directory holding files it does not know). DIR/cluster.json (written atomically) is the single
record of the cluster: cluster id, endpoints, and per node id, port, pid, data dir, log file and the
exact argv (so ``restart`` runs the node again with the same arguments). Every other subcommand reads
it. Before any signal is sent, the pid is checked to still be one of our nodes (on Linux through
/proc/PID/cmdline), so a reused pid is never signalled.

With ``up --tls`` the nodes serve mutual TLS only, with certificates made in DIR/certs (``kv certs``);
cluster.json's ``tls`` names the admin client's files, which every ``kv cluster`` command (and a client
command that takes its endpoints from this cluster) uses.

DIR defaults to ``$KV_CLUSTER_DIR`` or the per-user data directory (``~/.local/share/kv/cluster``), so
on one machine no flag is needed, and client commands without ``--endpoints`` use this cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from . import common, nodestatus
from .common import (
    ENGINE_HELP,
    Engine,
    OperationFailed,
    Settings,
    UsageProblem,
    default_cluster_dir,
    read_state,
    reporting_errors,
    write_state,
)
from .output import OutputFormat, cell, echo, jsonable, print_json, render_table

cluster_app = typer.Typer(
    help="Run a local cluster of `kv serve` processes on 127.0.0.1.\n\n"
    "Example: kv cluster up --detach; kv put k v; kv cluster kill 2; kv cluster down",
    no_args_is_help=True,
    rich_markup_mode=None,
)

HOST = "127.0.0.1"
DEFAULT_BASE_PORT = 7001
NODES_MAX = 15
DEFAULT_NODES = 3
LEADER_WAIT_SECONDS = 15.0
STOP_WAIT_SECONDS = 5.0
KILL_WAIT_SECONDS = 3.0
POLL_SECONDS = 0.1
STATUS_TIMEOUT_SECONDS = 1.0
VIEW_REFRESH_SECONDS = 1.0
VIEW_ALL_DEAD_SECONDS = 10.0
LOG_FILE_NAME = "server.log"
NODE_DATA_DIR_NAME = "data"

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="The cluster directory. Default: $KV_CLUSTER_DIR, else $XDG_DATA_HOME/kv/cluster "
             "(~/.local/share/kv/cluster).",
        show_default=False,
    ),
]


def _settings(ctx: typer.Context) -> Settings:
    settings = ctx.find_object(Settings)
    return settings if settings is not None else Settings()


def _cluster_dir(data_dir: Path | None) -> Path:
    return (data_dir if data_dir is not None else default_cluster_dir()).expanduser().absolute()


# --------------------------------------------------------------------------------------------------
# Processes


def process_state(pid: int | None, node: dict[str, Any] | None = None) -> str:
    """"running", "paused" or "dead" ("dead" also for a zombie or a pid that is no longer our node)."""
    if not isinstance(pid, int) or pid <= 0:
        return "dead"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "dead"
    except PermissionError:
        return "dead"  # someone else's process now: not our node
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():
        return "running"  # no /proc (macOS): signal 0 is all we can check
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "dead"
    state_char = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
    if state_char in ("Z", "X", "x"):
        return "dead"
    if node is not None:
        args = [a.decode("utf-8", "replace") for a in cmdline]
        if "serve" not in args or str(node.get("data_dir")) not in args:
            return "dead"  # the pid was reused by an unrelated process
    return "paused" if state_char in ("T", "t") else "running"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_dead(nodes: list[dict[str, Any]], seconds: float, children: dict[int, subprocess.Popen[bytes]]) -> bool:
    """Poll (bounded) until every node's process is gone; reap our own children. True if all gone."""
    deadline = time.monotonic() + seconds
    for _ in range(int(seconds / POLL_SECONDS) + 2):
        for child in children.values():
            child.poll()
        if all(process_state(n.get("pid"), n) == "dead" for n in nodes):
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return False


def stop_nodes(
    nodes: list[dict[str, Any]], children: dict[int, subprocess.Popen[bytes]] | None = None, *, quiet: bool = False
) -> None:
    """SIGTERM every live node (SIGCONT first, in case it is paused), wait, then SIGKILL what is left."""
    children = children or {}
    live = [n for n in nodes if process_state(n.get("pid"), n) != "dead"]
    for node in live:
        _signal(node["pid"], signal.SIGCONT)
        _signal(node["pid"], signal.SIGTERM)
    if live and not _wait_dead(live, STOP_WAIT_SECONDS, children):
        for node in live:
            if process_state(node.get("pid"), node) != "dead":
                if not quiet:
                    echo(f"node {node['id']} (pid {node['pid']}) did not stop: SIGKILL", err=True)
                _signal(node["pid"], signal.SIGKILL)
        _wait_dead(live, KILL_WAIT_SECONDS, children)
    for node in live:
        if not quiet:
            echo(f"stopped node {node['id']} (pid {node['pid']})", err=True)
    for node in nodes:
        if process_state(node.get("pid"), node) == "dead":
            node["pid"] = None


def port_in_use(port: int) -> bool:
    """True if something listens on HOST:port (bind with SO_REUSEADDR, as servers do, and see)."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port))
    except OSError:
        return True
    finally:
        sock.close()
    return False


def _project_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def spawn_node(node: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start one node from its stored argv, logging to its log file; sets node["pid"].

    A node whose argv names this ``kv``'s Python gets this project first on its ``PYTHONPATH`` (a source
    checkout runs without an install); one started by another install (another virtualenv: a cluster
    brought up before an upgrade) runs that install's own code, not this one's under its interpreter
    (upgrade QA: a restarted node ran the new code with the old install's packages and failed)."""
    Path(node["log_file"]).parent.mkdir(parents=True, exist_ok=True)
    env = os.environ.copy()
    if os.path.abspath(node["argv"][0]) == os.path.abspath(sys.executable):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_project_root(), env.get("PYTHONPATH")) if p)
    # `python -m kv_cli` would put the caller's working directory first on sys.path: a source checkout
    # of another version there ran instead of the node's own (upgrade QA, a restart from inside one).
    env["PYTHONSAFEPATH"] = "1"
    with open(node["log_file"], "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(node['argv'])}\n".encode())
        log.flush()
        child = subprocess.Popen(
            node["argv"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    node["pid"] = child.pid
    return child


def _log_tail(node: dict[str, Any], lines: int = 5) -> str:
    try:
        text = Path(node["log_file"]).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    shown = " | ".join(tail) if tail else "(empty log)"
    if "add a new member under a new id" in shown:
        # The node's advice is for any cluster; a local one replaces a node in two commands (etcd QA)
        shown += f" | (a local cluster: kv cluster remove {node['id']}, then kv cluster add)"
    return shown


# --------------------------------------------------------------------------------------------------
# Cluster status as one view: the state file's processes joined with what the nodes report


def _tls_of(state: dict[str, Any] | None) -> dict[str, str]:
    """The client's TLS files (cacert, cert, key) of a cluster started with --tls; {} without TLS."""
    tls = state.get("tls") if isinstance(state, dict) else None
    return {k: str(v) for k, v in tls.items() if k in ("cacert", "cert", "key")} if isinstance(tls, dict) else {}


def _node_tls_argv(state: dict[str, Any], node_id: int) -> list[str]:
    """``kv serve``'s TLS options for node ``node_id`` of a --tls cluster (its certificate in DIR/certs)."""
    tls = _tls_of(state)
    if not tls:
        return []
    certs = Path(tls["cacert"]).parent
    return ["--cacert", tls["cacert"], "--cert", str(certs / f"node-{node_id}.pem"),
            "--key", str(certs / f"node-{node_id}.key")]


# kv serve's options that `kv cluster up` sets anew each time it starts a stopped cluster (with their values)
_RESET_OPTIONS = ("--engine", "--cacert", "--cert", "--key")


def _respawn_argv(argv: list[str], node_id: int, engine: Engine, state: dict[str, Any]) -> list[str]:
    """A stopped node's recorded ``kv serve`` argv, to start it again: this Python (the one recorded may be
    a virtualenv removed since), ``engine``, and the TLS files of ``state`` (none without TLS)."""
    kept = [sys.executable]
    args = iter(argv[1:])
    for arg in args:
        if arg in _RESET_OPTIONS:
            next(args, None)
        elif not arg.startswith(tuple(f"{option}=" for option in _RESET_OPTIONS)):
            kept.append(arg)
    return kept + ["--engine", engine.value] + _node_tls_argv(state, node_id)


def query_statuses(endpoints: list[str], timeout: float, tls: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Node statuses from the client, or [] if none could be had (the nodes may be starting). The one-shot
    client: it asks every node at once, without starting trio (kv cluster status is a short process too)."""
    try:
        with common.make_oneshot_client(endpoints, timeout, **(tls or {})) as client:
            return [dict(s) for s in client.cluster_status()]
    except Exception:  # any failure just means "no status yet"; callers show what they know
        return []


def _status_for(
    node: dict[str, Any], index: int, node_count: int, statuses: list[dict[str, Any]]
) -> dict[str, Any]:
    endpoint = f"{HOST}:{node['port']}"
    for status in statuses:
        if nodestatus.field(status, "ADDRESS") == endpoint:
            answered = nodestatus.field(status, "ID")
            # Another node at its port (a removed node started again where a new member serves: QA)
            # is not this one answering.
            return status if answered in (None, node["id"]) else {}
    for status in statuses:
        if nodestatus.field(status, "ID") == node["id"]:
            return status
    if len(statuses) == node_count and index < len(statuses):  # same order as endpoints
        return statuses[index]
    return {}


VIEW_HEADERS = ["NODE", "PORT", "PID", "PROCESS", "ROLE", "REACHABLE", "LEADER", "BALLOT", "DECIDED", "APPLIED"]


def view_rows(state: dict[str, Any], statuses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for index, node in enumerate(state["nodes"]):
        status = _status_for(node, index, len(state["nodes"]), statuses)
        process = process_state(node.get("pid"), node)
        rows.append(
            {
                "id": node["id"],
                "port": node["port"],
                "pid": node.get("pid") if process != "dead" else None,
                "process": process,
                "role": status.get("role") if status else None,
                "reachable": nodestatus.is_reachable(status) if status else False,
                "leader": nodestatus.field(status, "LEADER"),
                "is_leader": nodestatus.is_leader(status) if status else False,
                "ballot": nodestatus.field(status, "BALLOT"),
                "decided_slot": nodestatus.field(status, "DECIDED"),
                "applied_slot": nodestatus.field(status, "APPLIED"),
                "data_dir": node["data_dir"],
                "log_file": node["log_file"],
            }
        )
    return rows


def render_view(rows: list[dict[str, Any]]) -> str:
    table_rows = [
        [
            r["id"],
            r["port"],
            r["pid"],
            r["process"],
            r["role"],
            r["reachable"],
            r["leader"],
            r["ballot"],
            r["decided_slot"],
            r["applied_slot"],
        ]
        for r in rows
    ]
    return render_table(VIEW_HEADERS, table_rows)


# --------------------------------------------------------------------------------------------------
# Commands


# What every node of cluster.json must have for these commands (common.state_problem checks the types)
NODE_NEEDS = ("id", "port", "data_dir", "log_file", "argv")


def _load(cluster_dir: Path) -> dict[str, Any]:
    state = read_state(cluster_dir, NODE_NEEDS)
    if state is None:
        raise OperationFailed(f"no cluster in {cluster_dir} (start one with `kv cluster up`)")
    return state


def _node(state: dict[str, Any], node_id: int) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = state["nodes"]
    for node in nodes:
        if node.get("id") == node_id:
            return node
    ids = [n.get("id") for n in state["nodes"]]
    raise UsageProblem(f"no node {node_id} in this cluster (nodes: {ids})")


RESTART_WAIT_SECONDS = 20.0
PORT_FREE_WAIT_SECONDS = 5.0  # for the port of a node just killed to be closed (see _signal_command)


def _wait_answering(state: dict[str, Any], node: dict[str, Any], child: subprocess.Popen[bytes],
                    seconds: float) -> bool:
    """Poll (bounded) until the node just started answers status as a member of its cluster (its
    ``members`` known: a node that lost its disk answers while it asks its peers, and is refused and
    exits a moment later, QA): True; False if it still does not after ``seconds``. OperationFailed, with
    its log's tail, if it exits meanwhile (a damaged log, a lost disk, a port taken: the node says why in
    its log and stops at once)."""
    endpoint = f"{HOST}:{node['port']}"
    deadline = time.monotonic() + seconds
    while True:
        if child.poll() is not None:
            raise OperationFailed(f"node {node['id']} exited with code {child.returncode} right after it started; "
                                  f"{node['log_file']}: {_log_tail(node)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        # (a node of a version without the field answers without it: answering is all it can say; upgrade
        # QA: such a node serving after 1 s was reported "does not answer yet after 20 s")
        if any(nodestatus.is_reachable(s) and (s.get("members") is not None or "members" not in s)
               for s in query_statuses([endpoint], min(0.5, remaining), _tls_of(state))):
            return True
        time.sleep(POLL_SECONDS)


class NoLeaderYet(OperationFailed):
    """No leader within the wait (``_wait_for_leader``): with ``--detach`` the nodes still running stay."""


def _no_leader_text(state: dict[str, Any], children: dict[int, subprocess.Popen[bytes]], seconds: float,
                    statuses: list[dict[str, Any]], exited: set[int] | None) -> str:
    """Why there may be no leader: the nodes that exited at start (with their logs' ends), and members the
    running nodes know that this cluster's file does not (added by hand with kv member add: QA, a replaced
    disk's new member was not started, and the message named none of it)."""
    parts = [f"no leader after {seconds:.0f} s"]
    by_id = {node["id"]: node for node in state["nodes"]}
    for node_id in sorted(exited or ()):
        child = children.get(node_id)
        code = child.returncode if child is not None else None
        parts.append(f"node {node_id} exited at start (code {code}): {_log_tail(by_id[node_id])}")
    known = set(by_id)
    for status in statuses:
        config = status.get("config") if isinstance(status, dict) else None
        voters = config.get("voters") if isinstance(config, dict) else None
        if isinstance(voters, list):
            missing = sorted(v for v in voters if isinstance(v, int) and v not in known)
            if missing:
                parts.append(f"the members' voters are {', '.join(map(str, sorted(voters)))}: "
                             f"{', '.join(map(str, missing))} not in this cluster's file (added by hand with kv "
                             "member add? start them as you did then)")
            break
    parts.append(f"see the logs {state['nodes'][0]['log_file']} and its siblings")
    return "; ".join(parts)


def _wait_for_leader(
    state: dict[str, Any], children: dict[int, subprocess.Popen[bytes]], seconds: float,
    exited: set[int] | None = None,
) -> Any:
    """Poll (bounded) until a leader is reported; raise OperationFailed if a node exits or time runs out.

    With ``exited`` (a stopped cluster brought up again, whose list may hold nodes removed from the
    members meanwhile: a removed node whose disk was lost is refused at start), a node that exits is
    added to it instead, as long as some node still runs; the caller sorts out which were removed."""
    progress_tty = sys.stderr.isatty()
    start = time.monotonic()
    deadline = start + seconds
    if not progress_tty:
        echo(f"waiting for a leader (up to {seconds:.0f} s)...", err=True)
    leader = None
    statuses: list[dict[str, Any]] = []
    for _ in range(int(seconds / (POLL_SECONDS * 2)) + 2):
        for node in state["nodes"]:
            child = children.get(node["id"])
            if child is not None and child.poll() is not None:
                if exited is not None and any(c.poll() is None for c in children.values()):
                    exited.add(node["id"])
                    continue
                raise OperationFailed(
                    f"node {node['id']} exited with code {child.returncode} during startup; "
                    f"{node['log_file']}: {_log_tail(node)}"
                )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        statuses = query_statuses(state["endpoints"], min(STATUS_TIMEOUT_SECONDS, remaining), _tls_of(state))
        leader = nodestatus.known_leader(statuses)
        reachable = sum(1 for s in statuses if nodestatus.is_reachable(s))
        if progress_tty:
            echo(
                f"\rwaiting for a leader: {time.monotonic() - start:4.1f} s, "
                f"{reachable}/{len(state['nodes'])} nodes answer",
                err=True,
                nl=False,
            )
        if leader is not None:
            break
        time.sleep(POLL_SECONDS * 2)
    if progress_tty:
        echo("", err=True)
    if leader is None:
        raise NoLeaderYet(_no_leader_text(state, children, seconds, statuses, exited))
    return leader


def _drop_removed(settings: Settings, state: dict[str, Any], children: dict[int, subprocess.Popen[bytes]],
                  exited: set[int]) -> list[dict[str, Any]]:
    """A stopped cluster is up again and has a leader: drop from ``state`` (and stop) the nodes its
    members retired while it was up before (``kv member remove``, which, unlike ``kv cluster remove``,
    does not know this file), and return the nodes kept. A node in ``exited`` that is still a member
    failed for another reason: OperationFailed with its log's tail.

    Regression (QA): after ``kv member remove`` of nodes, ``kv cluster down; kv cluster up`` started
    the removed nodes again; one whose directory was wiped was refused at start, and ``up`` then
    stopped the whole cluster."""
    from kvstore.errors import KVError

    try:
        listed = _admin(settings, state, "member_list")
    except (OperationFailed, KVError, OSError):
        listed = {}  # (then every node is kept, and one that exited fails the start as before)
    retired = {int(i) for i in listed.get("retired", ())}
    kept: list[dict[str, Any]] = []
    for node in state["nodes"]:
        node_id = int(node["id"])
        if node_id in retired:
            child = children.pop(node_id, None)
            stop_nodes([node], {node_id: child} if child is not None else {}, quiet=True)
            echo(f"node {node_id} was removed from the members while the cluster ran (kv member remove); "
                 "dropping it from this cluster", err=True)
            continue
        if node_id in exited:
            raise OperationFailed(f"node {node_id} exited with code {children[node_id].returncode} during startup; "
                                  f"{node['log_file']}: {_log_tail(node)}")
        kept.append(node)
    dropped = {int(n["id"]) for n in state["nodes"]} - {int(n["id"]) for n in kept}
    if dropped:
        state["nodes"] = kept
        state["endpoints"] = [f"{HOST}:{n['port']}" for n in kept]
        state["removed_ids"] = sorted(set(state.get("removed_ids", [])) | dropped)
        state["membership_changed"] = True
    return kept


def _install_sigterm_as_interrupt() -> None:
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    with contextlib.suppress(ValueError):  # not the main thread (e.g. some test runners)
        signal.signal(signal.SIGTERM, handler)


def _foreground_view(cluster_dir: Path, state: dict[str, Any], children: dict[int, subprocess.Popen[bytes]],
                     timeout: float) -> int:
    """Redraw the cluster each second until Ctrl-C (or every node has been dead for a while)."""
    tty = sys.stdout.isatty()
    last_text = None
    all_dead_since: float | None = None
    echo("Ctrl-C stops the cluster.", err=True)
    while True:  # ends on Ctrl-C/SIGTERM, or when every node stayed dead VIEW_ALL_DEAD_SECONDS
        for child in children.values():
            child.poll()  # reap nodes killed by `kv cluster kill` from another terminal
        with contextlib.suppress(UsageProblem):
            fresh = read_state(cluster_dir, NODE_NEEDS)
            if fresh is not None:
                state = fresh
        statuses = query_statuses(state["endpoints"], min(STATUS_TIMEOUT_SECONDS, timeout), _tls_of(state))
        rows = view_rows(state, statuses)
        text = render_view(rows)
        if tty:
            echo("\x1b[H\x1b[2J" + time.strftime("%H:%M:%S ") + f"cluster {cluster_dir}\n" + text
                       + "\n\nCtrl-C stops the cluster.")
        elif text != last_text:
            echo(text + "\n")
        last_text = text
        if all(r["process"] == "dead" for r in rows):
            now = time.monotonic()
            all_dead_since = all_dead_since if all_dead_since is not None else now
            if now - all_dead_since >= VIEW_ALL_DEAD_SECONDS:
                echo("every node has exited; leaving the view", err=True)
                return common.EXIT_FAILED
        else:
            all_dead_since = None
        time.sleep(VIEW_REFRESH_SECONDS)


@cluster_app.command("up", epilog="Example: kv cluster up --detach;  kv cluster up --nodes 5 --base-port 8001")
def up_command(
    ctx: typer.Context,
    nodes: Annotated[int | None, typer.Option(
        "--nodes", min=1, max=NODES_MAX, help="How many nodes (default: 3, or a stopped cluster's own).")] = None,
    data_dir: DataDirOption = None,
    base_port: Annotated[
        int, typer.Option("--base-port", min=1, max=65535, help="Node N listens on base+N-1.")
    ] = DEFAULT_BASE_PORT,
    detach: Annotated[
        bool, typer.Option("--detach", help="Return once a leader is known; nodes keep running.")
    ] = False,
    engine: Annotated[
        Engine | None,
        typer.Option("--engine", help="Every node's engine (default: the stopped cluster's in DIR, else core): "
                                      + ENGINE_HELP),
    ] = None,
    tls: Annotated[bool, typer.Option(
        "--tls", help="Mutual TLS: make a CA and certificates in DIR/certs (kv certs init) and serve TLS only; "
                      "prints KV_CACERT/KV_CERT/KV_KEY (the admin client) to export. A stopped --tls cluster "
                      "comes up with TLS again.")] = False,
) -> None:
    """Start a local cluster, wait for a leader, print the endpoints; without --detach show a live view.

    Ctrl-C in the live view stops every node (SIGTERM, then SIGKILL after a bounded wait).
    """
    settings = _settings(ctx)
    cluster_dir = _cluster_dir(data_dir)
    children: dict[int, subprocess.Popen[bytes]] = {}
    state: dict[str, Any] | None = None
    with reporting_errors(settings):
        if base_port + (nodes or DEFAULT_NODES) - 1 > 65535:
            raise UsageProblem(f"--base-port {base_port} with {nodes or DEFAULT_NODES} nodes goes past port 65535")
        old = read_state(cluster_dir, NODE_NEEDS)
        nodes_given = nodes is not None
        if nodes is None:  # up again on a stopped cluster: as many as it has
            nodes = len(old["nodes"]) if old is not None else DEFAULT_NODES
        import secrets

        cluster_id = f"kv-{secrets.token_hex(4)}"
        if old is not None:
            live = [n for n in old["nodes"] if process_state(n.get("pid"), n) != "dead"]
            if live:
                pids = ", ".join(str(n["pid"]) for n in live)
                raise OperationFailed(
                    f"cluster already running in {cluster_dir} (pids {pids}); "
                    "see `kv cluster status`, stop it with `kv cluster down`"
                )
            if len(old["nodes"]) != nodes and nodes_given:
                # (a usage problem, as another --base-port is; QA: a changed cluster ignored --nodes silently)
                changed = " (as membership changes left it)" if old.get("membership_changed") else ""
                raise UsageProblem(
                    f"{cluster_dir} holds a {len(old['nodes'])}-node cluster{changed}; "
                    f"use --nodes {len(old['nodes'])} (or none) or another --data-dir"
                )
            cluster_id = str(old.get("cluster_id") or cluster_id)
            if engine is None and old.get("engine") is not None:
                engine = Engine(old["engine"])  # up again on a stopped cluster keeps its engine
        if engine is None:
            engine = Engine.core
        tls_files = _tls_of(old)  # up again on a stopped --tls cluster keeps TLS
        changed_members = old is not None and bool(old.get("membership_changed"))
        if tls and not tls_files:
            from .certs import ADMIN_NAME, add_node, init_dir

            certs = cluster_dir / "certs"
            if not (certs / "ca.pem").exists():
                init_dir(certs, nodes=nodes)
            # (after kv cluster add/remove the members' ids are not 1..N: each gets its certificate)
            ids = [int(n["id"]) for n in old["nodes"]] if old is not None and changed_members else range(1, nodes + 1)
            for i in ids:
                if not (certs / f"node-{i}.pem").exists():
                    add_node(certs, i)
            tls_files = {"cacert": str(certs / "ca.pem"), "cert": str(certs / f"{ADMIN_NAME}.pem"),
                         "key": str(certs / f"{ADMIN_NAME}.key")}
        ports = [base_port + i for i in range(nodes)]
        if old is not None:
            # A stopped cluster comes up where it was (its members know one another by these addresses;
            # after kv cluster add/remove, the members as those left them).
            recorded = [int(n["port"]) for n in old["nodes"]]
            bases = {int(n["port"]) - (int(n["id"]) - 1) for n in old["nodes"]}  # the --base-port it was made with
            if base_port != DEFAULT_BASE_PORT and base_port not in bases:
                raise UsageProblem(
                    f"the stopped cluster in {cluster_dir} uses ports {', '.join(map(str, recorded))}; "
                    "`kv cluster up` restarts it there: drop --base-port, or use another --data-dir for a new cluster")
            ports = recorded
        taken = [p for p in ports if port_in_use(p)]
        if taken:
            hint = ("they are this stopped cluster's: stop what uses them" if old is not None
                    else "pick another --base-port")
            raise OperationFailed(
                f"port{'s' if len(taken) > 1 else ''} {', '.join(map(str, taken))} on {HOST} already in use; {hint}"
            )
        peers = ",".join(f"{i + 1}={HOST}:{port}" for i, port in enumerate(ports))
        node_list: list[dict[str, Any]] = []
        for i, port in enumerate([] if changed_members else ports):
            node_dir = cluster_dir / f"node-{i + 1}"
            # the server refuses a data dir holding files it does not know, so the log sits beside it
            data = node_dir / NODE_DATA_DIR_NAME
            argv = [sys.executable, "-m", "kv_cli", "serve", "--id", str(i + 1), "--peers", peers,
                    "--data-dir", str(data), "--cluster-id", cluster_id, "--engine", engine.value]
            argv += _node_tls_argv({"tls": tls_files}, i + 1)
            node_list.append({"id": i + 1, "port": port, "pid": None, "data_dir": str(data),
                              "log_file": str(node_dir / LOG_FILE_NAME), "argv": argv})
        state = {
            "cluster_id": cluster_id,
            "engine": engine.value,  # every node's; `restart` keeps it (it reruns the node's argv)
            "endpoints": [f"{HOST}:{port}" for port in ports],
            "peers": peers,
            "nodes": node_list,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if tls_files:
            state["tls"] = tls_files  # the admin client's files: kv cluster commands and client commands use them
        if old is not None and changed_members:
            # kv cluster add/remove changed the members: start them as they were (their own argv, on this
            # Python, with the engine and TLS asked for now, as a cluster whose members did not change is)
            state = old
            state["engine"] = engine.value
            if tls_files:
                state["tls"] = tls_files
            node_list = old["nodes"]
            for node in node_list:
                node["argv"] = _respawn_argv(node["argv"], int(node["id"]), engine, state)
            nodes = len(node_list)
        exited: set[int] | None = set() if old is not None else None
        try:
            for node in node_list:
                children[node["id"]] = spawn_node(node)
            write_state(cluster_dir, state)
            leader = _wait_for_leader(state, children, LEADER_WAIT_SECONDS, exited)
            if old is not None:
                node_list = _drop_removed(settings, state, children, exited or set())
                nodes = len(node_list)
                write_state(cluster_dir, state)
        except OperationFailed as exc:
            if detach and (all(c.poll() is None for c in children.values())
                           or (isinstance(exc, NoLeaderYet) and any(c.poll() is None for c in children.values()))):
                # no leader yet, but nodes run: leave them, the user may look at them (docs/cli.md)
                echo("the nodes keep running: `kv cluster status`, `kv cluster down`", err=True)
            else:
                stop_nodes(node_list, children, quiet=True)
                write_state(cluster_dir, state)
            raise
        except BaseException:  # Ctrl-C or a failure to spawn: leave nothing behind
            stop_nodes(node_list, children, quiet=True)
            write_state(cluster_dir, state)
            raise
        endpoints = ",".join(state["endpoints"])
        echo(f"cluster {cluster_id} up in {cluster_dir}: {nodes} nodes ({engine.value} engine), "
                   f"leader {leader}", err=True)
        echo(f"endpoints: {endpoints}")
        echo(f"export KV_ENDPOINTS={endpoints}")
        for name, value in _tls_of(state).items():
            echo(f"export KV_{name.upper()}={value}")
    if detach:
        return
    _install_sigterm_as_interrupt()
    code = common.EXIT_OK
    try:
        code = _foreground_view(cluster_dir, state, children, settings.command_timeout)
    except KeyboardInterrupt:
        echo("\nstopping the cluster...", err=True)
    finally:
        with contextlib.suppress(UsageProblem):
            state = read_state(cluster_dir, NODE_NEEDS) or state
        stop_nodes(state["nodes"], children)
        write_state(cluster_dir, state)
    raise typer.Exit(code)


@cluster_app.command("down", epilog="Example: kv cluster down")
def down_command(ctx: typer.Context, data_dir: DataDirOption = None) -> None:
    """Stop every node of the local cluster (SIGTERM, then SIGKILL after a bounded wait). Data stays."""
    settings = _settings(ctx)
    cluster_dir = _cluster_dir(data_dir)
    with reporting_errors(settings):
        state = read_state(cluster_dir, NODE_NEEDS)
        if state is None:
            echo(f"no cluster in {cluster_dir}: nothing to stop", err=True)
            return
        if all(process_state(n.get("pid"), n) == "dead" for n in state["nodes"]):
            echo(f"the cluster in {cluster_dir} is not running", err=True)
        stop_nodes(state["nodes"])
        write_state(cluster_dir, state)
        echo("OK")


@cluster_app.command("status", epilog="Example: kv cluster status;  kv -w json cluster status")
def status_command(ctx: typer.Context, data_dir: DataDirOption = None) -> None:
    """Show each node's pid, process state, and what it reports (leader, ballot, decided/applied slot)."""
    settings = _settings(ctx)
    cluster_dir = _cluster_dir(data_dir)
    with reporting_errors(settings):
        state = _load(cluster_dir)
        running = any(process_state(n.get("pid"), n) != "dead" for n in state["nodes"])
        statuses = query_statuses(state["endpoints"], settings.command_timeout, _tls_of(state)) if running else []
        rows = view_rows(state, statuses)
        if settings.write_out is OutputFormat.json:
            print_json(jsonable({"cluster_id": state.get("cluster_id"), "dir": str(cluster_dir),
                                 "endpoints": state["endpoints"], "nodes": rows}))
        elif settings.write_out is OutputFormat.table:
            echo(render_view(rows))
        else:
            echo(f"cluster {state.get('cluster_id')} in {cluster_dir}")
            echo(f"endpoints: {','.join(state['endpoints'])}")
            for r in rows:
                echo(
                    f"node {r['id']}: port={r['port']} pid={cell(r['pid'])} process={r['process']} "
                    f"role={cell(r['role'])} reachable={cell(r['reachable'])} leader={cell(r['leader'])} "
                    f"decided={cell(r['decided_slot'])} applied={cell(r['applied_slot'])}"
                )


NodeArgument = Annotated[int, typer.Argument(help="The node id (1..N).", show_default=False)]


def _signal_command(ctx: typer.Context, node_id: int, data_dir: Path | None, action: str, *,
                    crash: bool = False) -> None:
    settings = _settings(ctx)
    cluster_dir = _cluster_dir(data_dir)
    with reporting_errors(settings):
        state = _load(cluster_dir)
        node = _node(state, node_id)
        process = process_state(node.get("pid"), node)
        if action == "kill":
            if process == "dead":
                echo(f"node {node_id} is not running", err=True)
            else:
                pid = node["pid"]
                _signal(pid, signal.SIGKILL)
                _wait_dead([node], KILL_WAIT_SECONDS, {})
                echo(f"killed node {node_id} (pid {pid})")
            node["pid"] = None
            write_state(cluster_dir, state)
        elif action == "restart":
            python = node["argv"][0]
            if shutil.which(python) is None:  # before the node is killed (QA: killed, then not started)
                raise OperationFailed(f"node {node_id}'s command line runs {python}, which no longer exists; "
                                      "bring the cluster down and up with this kv (kv cluster down; kv cluster up)")
            if process != "dead" and crash:
                _signal(node["pid"], signal.SIGKILL)
                if not _wait_dead([node], KILL_WAIT_SECONDS, {}):
                    raise OperationFailed(f"node {node_id} (pid {node['pid']}) did not die")
            elif process != "dead":
                # As a service manager would: SIGTERM, so that a leader hands over first (a new leader
                # within tens of ms instead of an election timeout), then SIGKILL after a bounded wait.
                pid = node["pid"]
                stop_nodes([node], quiet=True)  # (pid None once it is dead)
                if node.get("pid") is not None:
                    raise OperationFailed(f"node {node_id} (pid {pid}) did not die")
            # A killed process's main thread is a zombie ("dead" above) before its last thread has
            # closed the listening socket: give the port a moment (QA: 2 in 8 restarts of a live node
            # failed here, leaving it down).
            deadline = time.monotonic() + PORT_FREE_WAIT_SECONDS
            while port_in_use(node["port"]):
                if time.monotonic() >= deadline:
                    raise OperationFailed(f"port {node['port']} on {HOST} is in use; cannot restart node {node_id}")
                time.sleep(POLL_SECONDS)
            child = spawn_node(node)
            write_state(cluster_dir, state)
            if _wait_answering(state, node, child, RESTART_WAIT_SECONDS):
                echo(f"restarted node {node_id} (pid {node['pid']})")
            else:
                echo(f"restarted node {node_id} (pid {node['pid']}); it does not answer yet after "
                           f"{RESTART_WAIT_SECONDS:g} s (a long log to read?): kv cluster status", err=True)
        elif action in ("pause", "resume"):
            if process == "dead":
                raise OperationFailed(f"node {node_id} is not running")
            _signal(node["pid"], signal.SIGSTOP if action == "pause" else signal.SIGCONT)
            echo(f"{'paused' if action == 'pause' else 'resumed'} node {node_id} (pid {node['pid']})")
        else:  # pragma: no cover - programmer mistake
            raise AssertionError(action)


@cluster_app.command("kill", epilog="Example: kv cluster kill 2")
def kill_command(ctx: typer.Context, node_id: NodeArgument, data_dir: DataDirOption = None) -> None:
    """SIGKILL node N (a crash: no clean shutdown)."""
    _signal_command(ctx, node_id, data_dir, "kill")


@cluster_app.command("restart", epilog="Examples: kv cluster restart 2; kv cluster restart 2 --kill")
def restart_command(ctx: typer.Context, node_id: NodeArgument, data_dir: DataDirOption = None,
                    kill: Annotated[bool, typer.Option(
                        "--kill", help="SIGKILL it first (a crash and a restart), not SIGTERM")] = False) -> None:
    """Start node N again with the same arguments. A live node is stopped first with SIGTERM (a leader
    hands over to another voter first), then SIGKILL if it has not stopped within 5 s; --kill: SIGKILL."""
    _signal_command(ctx, node_id, data_dir, "restart", crash=kill)


@cluster_app.command("pause", epilog="Example: kv cluster pause 1")
def pause_command(ctx: typer.Context, node_id: NodeArgument, data_dir: DataDirOption = None) -> None:
    """SIGSTOP node N (it stays alive but silent, like a long GC pause or a partition)."""
    _signal_command(ctx, node_id, data_dir, "pause")


@cluster_app.command("resume", epilog="Example: kv cluster resume 1")
def resume_command(ctx: typer.Context, node_id: NodeArgument, data_dir: DataDirOption = None) -> None:
    """SIGCONT node N (undo `kv cluster pause`)."""
    _signal_command(ctx, node_id, data_dir, "resume")


# --------------------------------------------------------------------------------------------------
# Membership of the local cluster: kv cluster add / kv cluster remove (kvstore.members)

ADD_CATCH_UP_SECONDS = 60.0


def _admin(settings: Settings, state: dict[str, Any], op: str, node: int = 0, address: str = "") -> dict[str, Any]:
    with common.make_client(state["endpoints"], max(settings.command_timeout, 15.0), **_tls_of(state)) as client:
        result: dict[str, Any] = client.admin(op, node, address)
        return result


def _warn_fault_tolerance(result: dict[str, Any]) -> None:
    """kv member's warning about 2 voters or an even number (cli.member.fault_tolerance_warning)."""
    from .member import fault_tolerance_warning

    warning = fault_tolerance_warning(result)
    if warning is not None:
        echo(warning, err=True)


@cluster_app.command("add", epilog="Example: kv cluster add;  kv cluster add --port 7010")
def add_command(
    ctx: typer.Context,
    data_dir: DataDirOption = None,
    port: Annotated[int | None, typer.Option("--port", min=1, max=65535,
                                                help="The new node's port (default: after the highest).")] = None,
) -> None:
    """Start a new node and make it a voter: kv member add, kv serve --join, wait for it to catch up,
    kv member promote. Prints each step."""
    settings = _settings(ctx)
    cluster_dir = _cluster_dir(data_dir)
    with reporting_errors(settings):
        state = _load(cluster_dir)
        if not any(process_state(n.get("pid"), n) != "dead" for n in state["nodes"]):
            raise OperationFailed(f"the cluster in {cluster_dir} is not running (kv cluster up)")
        used = [n["id"] for n in state["nodes"]] + list(state.get("removed_ids", []))
        # and the ids the cluster knows of that this file does not (kv member add, then remove)
        listed = _admin(settings, state, "member_list")
        used += [m["id"] for m in listed.get("members", ())] + list(listed.get("retired", ()))
        node_id = max(used) + 1
        port = port if port is not None else max(n["port"] for n in state["nodes"]) + 1
        if port_in_use(port):
            raise OperationFailed(f"port {port} on {HOST} is already in use; pick another with --port")
        address = f"{HOST}:{port}"
        _admin(settings, state, "member_add", node_id, address)
        echo(f"added node {node_id} ({address}) as a learner", err=True)
        node_dir = cluster_dir / f"node-{node_id}"
        data = node_dir / NODE_DATA_DIR_NAME
        argv = [sys.executable, "-m", "kv_cli", "serve", "--id", str(node_id), "--join", ",".join(state["endpoints"]),
                "--data-dir", str(data), "--cluster-id", str(state.get("cluster_id")),
                "--engine", str(state.get("engine", "core"))]
        if _tls_of(state):
            from .certs import add_node

            if not Path(_node_tls_argv(state, node_id)[3]).exists():
                add_node(Path(_tls_of(state)["cacert"]).parent, node_id)
            argv += _node_tls_argv(state, node_id)
        node = {"id": node_id, "port": port, "pid": None, "data_dir": str(data),
                "log_file": str(node_dir / LOG_FILE_NAME), "argv": argv}
        spawn_node(node)
        state["nodes"].append(node)
        state["endpoints"].append(address)
        state["membership_changed"] = True
        write_state(cluster_dir, state)
        echo(f"started node {node_id} (pid {node['pid']}); waiting for it to catch up...", err=True)
        deadline = time.monotonic() + ADD_CATCH_UP_SECONDS
        last = ""
        while True:
            try:
                promoted = _admin(settings, state, "member_promote", node_id)
                break
            except Exception as exc:  # noqa: BLE001 -- lagging or not answering yet: retry until the deadline
                last = str(exc)
                if process_state(node.get("pid"), node) == "dead":
                    raise OperationFailed(f"node {node_id} exited: {_log_tail(node)}") from None
                if "already a voter" in last:  # (a promote before this one got no answer, and was made)
                    promoted = _admin(settings, state, "member_list")
                    break
                # (an admin request that got no answer is not sent again by the client: "may or may not
                # have been carried out"; the next promote says "already a voter" if it was)
                if not any(reason in last for reason in ("behind", "not answered", "in progress",
                                                         "may or may not have been carried out")):
                    raise
                if time.monotonic() > deadline:
                    raise OperationFailed(f"node {node_id} did not catch up within {ADD_CATCH_UP_SECONDS:g} s "
                                          f"({last}); it stays a learner: kv member promote {node_id}") from None
                time.sleep(0.5)
        echo(f"promoted node {node_id} to voter", err=True)
        _warn_fault_tolerance(promoted)
        echo(f"endpoints: {','.join(state['endpoints'])}")
        echo(f"export KV_ENDPOINTS={','.join(state['endpoints'])}")


@cluster_app.command("remove", epilog="Example: kv cluster remove 2")
def remove_command(ctx: typer.Context, node_id: NodeArgument, data_dir: DataDirOption = None) -> None:
    """Remove node N from the members (kv member remove; a leader hands over first), then stop it. Its
    data directory stays on disk; the id is never reused."""
    settings = _settings(ctx)
    cluster_dir = _cluster_dir(data_dir)
    with reporting_errors(settings):
        state = _load(cluster_dir)
        node = _node(state, node_id)
        listed = _admin(settings, state, "member_list")
        if node_id in listed.get("retired", ()):
            # Removed already (kv member remove, or a kv cluster remove whose answer was lost): only this
            # file still lists it, and kv cluster up would start it again.
            echo(f"node {node_id} was removed from the members already; dropping it from this cluster",
                       err=True)
        else:
            removed = _admin(settings, state, "member_remove", node_id)
            echo(f"removed node {node_id} from the members", err=True)
            _warn_fault_tolerance(removed)
        stop_nodes([node], quiet=True)
        state["nodes"] = [n for n in state["nodes"] if n["id"] != node_id]
        state["endpoints"] = [f"{HOST}:{n['port']}" for n in state["nodes"]]
        state["removed_ids"] = sorted(set(state.get("removed_ids", [])) | {node_id})
        state["membership_changed"] = True
        write_state(cluster_dir, state)
        echo(f"stopped node {node_id}; its data stays in {node['data_dir']}", err=True)
        echo(f"endpoints: {','.join(state['endpoints'])}")
        echo(f"export KV_ENDPOINTS={','.join(state['endpoints'])}")  # (as add prints: etcd QA)
