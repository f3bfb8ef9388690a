"""``kv dashboard``: a web page of the cluster, served from this process (no CDN, works offline).

Theory of operation
-------------------
One trio run, two tasks. The **poller** asks every endpoint for its status through the client library
(``AsyncClient.cluster_status``) every ``--interval`` seconds, joins the answers with the process
states of a ``kv cluster up`` cluster (its ``cluster.json``: running, paused or dead), and keeps the
last ``HISTORY_SECONDS`` of samples: writes per second and their mean latency, from the differences
of the nodes' ``writes_answered`` and ``write_latency_us`` counters (a node whose counters went down
was restarted: its difference counts from zero). The **web server** (``kvstore.httpserve``, on
127.0.0.1 unless ``--host`` says otherwise) serves the page and its script and style from this
package (``kv_cli/dashboard_static``), the latest state as JSON (``/api/state``), the fault buttons
(``POST /api/nodes/ID/ACTION``) and a Paxos trace drawn on request (``/trace``, ``paxos.trace``).

The fault buttons (kill, pause, resume, restart) exist only for a ``kv cluster up`` cluster whose
endpoints are the ones watched: each runs ``kv cluster ACTION ID --data-dir DIR`` as a child process,
exactly what a user would type, so the node a restart starts is that command's, not ours.

Rules: the page never reaches the cluster itself, only this process; this process only reads the
cluster (status) except through those commands; every wait is bounded (status calls by
``STATUS_TIMEOUT_SECONDS``, commands by ``ACTION_TIMEOUT_SECONDS``).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    OperationFailed,
    Settings,
    UsageProblem,
    default_cluster_dir,
    parse_endpoint_list,
    read_state,
    reporting_errors,
)

if TYPE_CHECKING:
    from kvstore.httpserve import Request, Response

HISTORY_SECONDS = 600.0
STATUS_TIMEOUT_SECONDS = 1.0
ACTION_TIMEOUT_SECONDS = 30.0
ACTIONS = ("kill", "pause", "resume", "restart")
STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
          "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
# The status fields the page shows, as the node reports them (docs/protocol.md, status)
NODE_FIELDS = ("address", "leader", "is_leader", "ballot", "decided_slot", "applied_slot", "learner", "apply_backlog",
               "disk", "disk_error", "snapshot_slot", "log_bytes", "keys", "revision", "engine", "error")

EPILOG = "Example: kv cluster up --detach; kv dashboard   (then open http://127.0.0.1:8080/)"


def static_file(name: str) -> bytes:
    from importlib import resources

    return (resources.files("kv_cli") / "dashboard_static" / name).read_bytes()


class Dashboard:
    """What the page shows, kept up to date by ``poll_forever``; ``handle`` answers its requests."""

    def __init__(self, endpoints: list[str], cluster_dir: Path | None, *, interval: float = 1.0,
                 status_of: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None,
                 tls: dict[str, str] | None = None) -> None:
        self.endpoints = endpoints
        self.tls = tls or {}  # cacert, cert, key: how to reach a TLS cluster (see _watched_tls)
        self.cluster_dir = cluster_dir  # a kv cluster up cluster whose endpoints these are: fault buttons
        self.interval = interval
        self.history: deque[dict[str, Any]] = deque(maxlen=max(2, int(HISTORY_SECONDS / interval)))
        self.nodes: list[dict[str, Any]] = []
        self.polls = 0
        # what happened, newest last: leader changes, button presses
        self.events: deque[dict[str, Any]] = deque(maxlen=50)
        self._status_of = status_of or self._cluster_status
        self._previous: dict[str, tuple[int, int]] = {}  # endpoint -> (writes_answered, write_latency_us)
        self._previous_time: float | None = None
        self._leader: Any = None
        self._started = time.time()
        # The fault buttons send this with every action (see handle): a page of another site can make the
        # browser POST here, but it cannot read /api/state to learn the token (no CORS), nor send a
        # custom header without a preflight that this server never approves.
        import secrets

        self.action_token = secrets.token_urlsafe(16)

    # ------------------------------------------------------------------ polling

    async def _cluster_status(self) -> list[dict[str, Any]]:
        from kvstore.client import connect

        tls = self.tls
        async with connect(self.endpoints, timeout=STATUS_TIMEOUT_SECONDS, cacert=tls.get("cacert"),
                           cert=tls.get("cert"), key=tls.get("key")) as kv:
            statuses: list[dict[str, Any]] = await kv.cluster_status()
            return statuses

    async def poll_forever(self) -> None:
        import trio

        while True:
            await self.poll_once()
            await trio.sleep(self.interval)

    async def poll_once(self) -> None:
        try:
            statuses = await self._status_of()
        except Exception as exc:  # the client could not even start: every node unreachable
            statuses = [{"endpoint": e, "reachable": False, "error": str(exc)} for e in self.endpoints]
        self.record(statuses, time.time())

    def record(self, statuses: list[dict[str, Any]], now: float) -> None:
        """Take one round of statuses (what ``cluster_status`` returns) taken at ``now``."""
        processes = self._processes()
        nodes = []
        writes = latency_us = 0
        for status in statuses:
            endpoint = str(status.get("endpoint", ""))
            node: dict[str, Any] = {"endpoint": endpoint, "reachable": bool(status.get("reachable")),
                                    "id": status.get("id")}
            for name in NODE_FIELDS:
                node[name] = status.get(name)
            node.update(processes.get(endpoint, {}))
            counters = status.get("counters") or {}
            answered, spent = counters.get("writes_answered", 0), counters.get("write_latency_us", 0)
            before = self._previous.get(endpoint)
            if status.get("reachable"):
                if before is None or answered < before[0]:  # first sight, or restarted: counts from zero
                    before = (0, 0) if before is not None else (answered, spent)
                writes += answered - before[0]
                latency_us += spent - before[1]
                self._previous[endpoint] = (answered, spent)
            nodes.append(node)
        decided = [n["decided_slot"] for n in nodes if n["reachable"] and n["decided_slot"] is not None]
        top = max(decided, default=None)
        for node in nodes:
            node["lag"] = (top - node["applied_slot"]) if top is not None and node["applied_slot"] is not None \
                and node["reachable"] else None
        leaders = [n.get("id") for n in nodes if n["reachable"] and n.get("is_leader")]
        leader = leaders[0] if len(leaders) == 1 else None
        if leader != self._leader:
            self.note(f"leader: node {leader}" if leader is not None else "no leader")
            self._leader = leader
        if self._previous_time is not None and now > self._previous_time:
            seconds = now - self._previous_time
            self.history.append({"t": round(now, 3), "writes_per_second": round(writes / seconds, 1),
                                 "latency_ms": round(latency_us / writes / 1000, 3) if writes else None})
        self._previous_time = now
        self.nodes = nodes
        self.polls += 1

    def _processes(self) -> dict[str, dict[str, Any]]:
        """endpoint -> {"node_id", "process", "pid"} of the kv cluster up cluster, if any."""
        if self.cluster_dir is None:
            return {}
        from .cluster import HOST, process_state

        try:
            state = read_state(self.cluster_dir)
        except UsageProblem:
            return {}
        if state is None:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for node in state["nodes"]:
            process = process_state(node.get("pid"), node)
            out[f"{HOST}:{node['port']}"] = {"node_id": node.get("id"), "process": process,
                                             "pid": node.get("pid") if process != "dead" else None}
        return out

    def note(self, text: str) -> None:
        self.events.append({"t": round(time.time(), 3), "text": text})

    def state(self) -> dict[str, Any]:
        return {"endpoints": self.endpoints, "faults": self.cluster_dir is not None, "polls": self.polls,
                "interval": self.interval, "nodes": self.nodes, "history": list(self.history),
                "events": list(self.events), "leader": self._leader, "action_token": self.action_token}

    # ------------------------------------------------------------------ the fault buttons

    async def act(self, node_id: int, action: str) -> tuple[bool, str]:
        """Run ``kv cluster ACTION NODE_ID --data-dir DIR``; (whether it succeeded, what it printed)."""
        if self.cluster_dir is None:
            return False, "not a kv cluster up cluster: no fault buttons"
        if action not in ACTIONS:
            return False, f"unknown action {action!r}"
        command = [sys.executable, "-m", "kv_cli", "cluster", action, str(node_id), "--data-dir", str(self.cluster_dir)]
        import trio

        with trio.move_on_after(ACTION_TIMEOUT_SECONDS):
            result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False,
                                            stdin=b"")
            text = (result.stdout + result.stderr).decode("utf-8", "replace").strip()
            ok = result.returncode == 0
            self.note(f"{action} node {node_id}: {text}")
            return ok, text
        return False, f"kv cluster {action} {node_id} did not finish within {ACTION_TIMEOUT_SECONDS:g}s"

    # ------------------------------------------------------------------ the web server

    async def handle(self, request: Request) -> Response:
        from kvstore.httpserve import Response

        if not _addressed_to_this_machine(request.headers.get("host", "")):
            # DNS rebinding: a page of another site whose name now resolves to 127.0.0.1 is same-origin to
            # the browser; its requests still carry that name.
            return Response(403, b"this dashboard answers requests addressed to localhost, an IP address or "
                                 b"this machine's name only\n")
        path = request.path
        if request.method == "GET" and path in STATIC:
            name, content_type = STATIC[path]
            return Response(200, static_file(name), content_type)
        if request.method == "GET" and path == "/api/state":
            import json

            return Response(200, json.dumps(self.state()).encode(), "application/json")
        if request.method == "GET" and path == "/trace":
            return self._trace(request.query)
        if path.startswith("/api/nodes/"):
            parts = path.split("/")  # "", "api", "nodes", ID, ACTION
            if request.method != "POST":
                return Response(405, b"POST only\n")
            if len(parts) != 5 or not _small_int(parts[3]):
                return Response(404, b"POST /api/nodes/ID/ACTION\n")
            if request.headers.get("x-kv-action-token") != self.action_token:
                return Response(403, b"the fault buttons of this dashboard's page send a token with each action; "
                                     b"this request has none, or another (a request from another site?)\n")
            ok, text = await self.act(int(parts[3]), parts[4])
            import json

            return Response(200 if ok else 409, json.dumps({"ok": ok, "output": text}).encode(), "application/json")
        return Response(404, b"not found\n")

    def _trace(self, query: dict[str, str]) -> Response:
        from kvstore.httpserve import Response
        from paxos.trace import SCENARIOS, run_scenario
        from paxos.trace_html import render

        scenario = query.get("scenario", "leader-change")
        seed_text = query.get("seed", "1")
        if scenario not in SCENARIOS or not _small_int(seed_text):
            return Response(400, f"scenario: one of {', '.join(SCENARIOS)}; seed: an int >= 0\n".encode())
        try:
            page = render(run_scenario(scenario, int(seed_text)), heartbeats=query.get("heartbeats") == "1")
        except RuntimeError as exc:
            return Response(500, f"{exc}\n".encode())
        return Response(200, page.encode(), "text/html; charset=utf-8")


def _small_int(text: str) -> bool:
    """ASCII digits that ``int`` takes (QA: ``str.isdigit`` is true of "²", and 5,000 digits are past
    Python's limit for ``int``: both raised in the handler, a 500 with a traceback in the log)."""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def _addressed_to_this_machine(host_header: str) -> bool:
    """Whether an HTTP Host header names this machine as a browser on it would: localhost, an IP address
    (any: the dashboard may listen on all of them), or this machine's name. An empty header (HTTP/1.0,
    a script) is allowed: the check is against browsers tricked by another site."""
    import ipaddress
    import socket

    if not host_header:
        return True
    host = host_header
    if host.startswith("["):  # [IPv6]:port
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    return host in names


def _watched_tls(settings: Settings, data_dir: Path | None) -> dict[str, str]:
    """The client's TLS files for the watched cluster: the global options (--cacert, --cert, --key, or
    KV_CACERT, KV_CERT, KV_KEY), else the admin certificate of the local cluster when it is the one watched
    (kv cluster up --tls); {} without TLS. (QA: every node of a TLS cluster showed as unreachable.)"""
    given = settings.tls()  # UsageProblem for half a set, or a missing file
    if given or settings.endpoints_text is not None:
        return given
    state = read_state((data_dir or default_cluster_dir()).expanduser().absolute())
    tls = state.get("tls") if isinstance(state, dict) else None
    return {k: str(v) for k, v in tls.items() if k in ("cacert", "cert", "key")} if isinstance(tls, dict) else {}


async def serve_dashboard(dashboard: Dashboard, address: str, *, task_status: Any = None) -> None:
    """Serve the page at ``address`` and poll the cluster; ``task_status.started(port)`` once listening
    (trio's ``nursery.start``; None: nobody waits for it). trio is imported here: ``kv --help`` registers
    this module's command and should not pay for it."""
    import trio

    from kvstore.httpserve import serve_http

    if task_status is None:
        task_status = trio.TASK_STATUS_IGNORED

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, dashboard.handle, address)
        nursery.start_soon(dashboard.poll_forever)
        task_status.started(port)


def _watched(settings: Settings, data_dir: Path | None) -> tuple[list[str], Path | None]:
    """The endpoints to watch, and the cluster directory whose fault buttons apply (None: no buttons).
    (``_watched_tls`` gives the TLS files to watch them with.)"""
    cluster_dir = (data_dir or default_cluster_dir()).expanduser().absolute()
    state = read_state(cluster_dir)
    cluster_endpoints = None
    if state is not None and isinstance(state.get("endpoints"), list):
        cluster_endpoints = parse_endpoint_list(",".join(map(str, state["endpoints"])))
    if settings.endpoints_text is not None:
        endpoints = settings.endpoints()
    elif cluster_endpoints:
        endpoints = cluster_endpoints
    else:
        raise UsageProblem(f"no endpoints: pass --endpoints HOST:PORT,... (or KV_ENDPOINTS), or start a local "
                           f"cluster with `kv cluster up` (none found in {cluster_dir})")
    same = cluster_endpoints is not None and set(cluster_endpoints) == set(endpoints)
    return endpoints, cluster_dir if same else None


def dashboard_command(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="The page's port (0: any free one).")] = 8080,
    host: Annotated[str, typer.Option("--host", help="The address to serve on (only this machine by default).")]
    = "127.0.0.1",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The kv cluster up directory for the fault buttons. Default: "
                                        "$KV_CLUSTER_DIR, else $XDG_DATA_HOME/kv/cluster "
                                        "(~/.local/share/kv/cluster).", show_default=False),
    ] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.2, max=60.0, help="Seconds between polls.")] = 1.0,
) -> None:
    """Serve a live web page of the cluster: nodes, leader, slots, charts, and fault buttons for a local cluster."""
    settings = ctx.find_object(Settings) or Settings()
    with reporting_errors(settings):
        endpoints, cluster_dir = _watched(settings, data_dir)
        from kvstore.endpoints import EndpointError, format_endpoint
        from kvstore.httpserve import parse_listen_address

        try:
            parse_listen_address(format_endpoint(host, port))
        except EndpointError as exc:
            raise UsageProblem(f"invalid --host/--port: {exc}") from None

        dashboard = Dashboard(endpoints, cluster_dir, interval=interval, tls=_watched_tls(settings, data_dir))
        import trio

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                bound = await nursery.start(serve_dashboard, dashboard, format_endpoint(host, port))
                shown = host if host not in ("0.0.0.0", "::") else "127.0.0.1"
                typer.echo(f"kv dashboard: http://{format_endpoint(shown, bound)}/ watching {', '.join(endpoints)}"
                           + ("" if cluster_dir is None else f" (fault buttons: {cluster_dir})"), err=True)

        try:
            trio.run(main)
        except KeyboardInterrupt:
            pass
        except BaseExceptionGroup as group:  # the nursery wraps a listener that could not start
            refused = group.subgroup(OSError)
            if refused is None:
                raise
            leaf: BaseException = refused.exceptions[0]
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            reason = getattr(leaf, "strerror", None) or leaf
            raise OperationFailed(f"cannot serve on {host}:{port}: {reason}") from None


def register(app: typer.Typer) -> None:
    """Add ``dashboard`` to ``app`` (the ``kv`` app calls this)."""
    app.command("dashboard", epilog=EPILOG)(dashboard_command)


__all__ = ["Dashboard", "dashboard_command", "register", "serve_dashboard", "HISTORY_SECONDS"]
