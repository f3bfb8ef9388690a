"""``kv serve``: what it does once its options are parsed, by typer (``kv_cli.app``) or by the fast path
(``kv_cli.fast``), which parses plain ``kv serve`` arguments without typer.

Why a fast path for a long-running command: a node pays for its start-up on every restart, and typer
(which builds a pydantic adapter per option) and the app's commands cost ``kv serve`` about 0.16 s and
12 MiB of resident memory that the node then keeps for its whole life (a node holds ~34 MiB before any
data without them, ~46 MiB with them). This module imports neither typer nor the app.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import OperationFailed, Settings, UsageProblem, reporting_errors
from .output import echo

FSYNC_MODES = ("always", "off")
ENGINES = ("core", "classic")


def serve(settings: Settings, *, node_id: int, data_dir: str, peers: str = "", join: str | None = None,
          tick_ms: float | None = None, election_timeout_ticks: int | None = None,
          heartbeat_ticks: int | None = None, batch_size: int | None = None, window: int | None = None,
          snapshot_every: int | None = None, idle_snapshot_seconds: float | None = None,
          watch_history: int | None = None,
          fsync: str | None = None, arriving_frames_max_mib: int | None = None,
          max_client_connections: int | None = None, cluster_id: str | None = None,
          exit_on_disk_failure: bool = False, lazy_learners: bool | None = None, check_quorum: bool = True,
          engine: str = "core",
          metrics_addr: str | None = None, cacert: str | None = None, cert: str | None = None,
          key: str | None = None, acl: str | None = None) -> None:
    """Run one node in the foreground until Ctrl-C or SIGTERM (``kv serve``; its help text has the
    options). ``fsync`` is one of ``FSYNC_MODES`` or None, ``engine`` one of ``ENGINES``."""
    with reporting_errors(settings):
        from kvstore.endpoints import EndpointError, parse_endpoint, parse_peers
        from kvstore.httpserve import parse_listen_address
        from kvstore.members import JoinError
        from kvstore.server import ServerOptions, run_node

        join_list: list[str] = []
        if join is not None:
            try:
                join_list = [f"{h}:{p}" for h, p in (parse_endpoint(e) for e in join.split(",") if e.strip())]
            except EndpointError as exc:
                raise UsageProblem(f"invalid --join {join!r}: {exc}") from None
            if not join_list:
                raise UsageProblem("--join needs HOST:PORT of at least one member")
            if peers:
                # (QA: both were taken, the join refused, and the directory it made refused the retry)
                raise UsageProblem("give --peers (found a new cluster) or --join (join a running one), not both: a "
                                   "node joining learns the members and its own address from the cluster")
        if arriving_frames_max_mib is not None and arriving_frames_max_mib < 9:
            raise UsageProblem(f"--arriving-frames-max-mib {arriving_frames_max_mib}: at least 9 (one request of the "
                               "largest size, 8 MiB, must fit)")
        if max_client_connections is not None:
            from kvstore.descriptors import TooFewDescriptors, connections_max, raise_soft_limit

            if max_client_connections < 1:
                raise UsageProblem(f"--max-client-connections {max_client_connections}: at least 1")
            try:
                connections_max(max_client_connections, raise_soft_limit())
            except TooFewDescriptors as exc:
                raise UsageProblem(f"--max-client-connections {max_client_connections}: {exc}") from None
        recorded_from = ""
        if peers or join_list:
            try:
                peer_map = parse_peers(peers) if peers else {}
            except EndpointError as exc:
                raise UsageProblem(f"invalid --peers {peers!r}: {exc}") from None
            _check_own_address(data_dir, node_id, peer_map)
            _check_distinct_addresses(peers, peer_map)
        else:
            recorded = recorded_members(data_dir, node_id)
            owner = _directory_owner(data_dir)
            if recorded is None and owner is not None and owner[0] != node_id:
                raise UsageProblem(f"data dir {data_dir} belongs to node {owner[0]} of cluster {owner[1]!r}, not node "
                                   f"{node_id}: give that node's --id, or this node's own directory")
            if recorded is None:
                raise UsageProblem("give --peers (found a new cluster) or --join (join a running one); a node "
                                   "restarted on the data directory it ran with before needs neither")
            peer_map, recorded_cluster_id = recorded
            if cluster_id is None:
                cluster_id = recorded_cluster_id
            recorded_from = f", members as recorded in {data_dir} (cluster {cluster_id})"
        if node_id not in peer_map and not join_list:
            raise UsageProblem(f"--id {node_id} is not one of the --peers ids {sorted(peer_map)}")
        # ServerOptions field -> the option's value; an option not given (None) keeps the server's default
        given: dict[str, Any] = {
            "tick_seconds": None if tick_ms is None else tick_ms / 1000.0,
            "election_timeout_ticks": election_timeout_ticks, "heartbeat_ticks": heartbeat_ticks,
            "batch_count_max": batch_size, "window": window, "snapshot_every": snapshot_every,
            "idle_snapshot_seconds": idle_snapshot_seconds, "fsync": None if fsync is None else fsync == "always",
            "watch_history": watch_history,
            "cluster_id": cluster_id, "lazy_learners": lazy_learners,
            "arriving_frames_bytes_max": None if arriving_frames_max_mib is None else arriving_frames_max_mib << 20,
            "client_connections_max": max_client_connections,
        }
        overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
        heartbeat = overrides.get("heartbeat_ticks", ServerOptions.heartbeat_ticks)
        timeout = overrides.get("election_timeout_ticks", ServerOptions.election_timeout_ticks)
        if timeout < 2 * heartbeat:
            defaulted = "" if election_timeout_ticks is not None else " (the default)"
            raise UsageProblem(f"--election-timeout-ticks {timeout}{defaulted} must be at least twice "
                               f"--heartbeat-ticks {heartbeat}: followers would call elections while the leader is "
                               "alive (5 to 10 times is usual)")
        if exit_on_disk_failure:
            overrides["exit_on_disk_failure"] = True
        if not check_quorum:
            overrides["check_quorum"] = False
        overrides["engine"] = engine
        if metrics_addr is not None:
            try:
                parse_listen_address(metrics_addr)  # HOST:PORT; port 0 picks a free one
            except EndpointError as exc:
                raise UsageProblem(f"invalid --metrics-addr {metrics_addr!r}: {exc}") from None
            overrides["metrics_addr"] = metrics_addr
        overrides.update(serve_tls_options(cacert, cert, key, acl, node_id))  # checked: UsageProblem if unusable
        try:
            options = ServerOptions(**overrides)
        except ValueError as exc:  # (the rest of the options' own rules: an empty --cluster-id, ...)
            raise UsageProblem(f"invalid options: {exc}") from None
        # A taken port, found before the data directory is touched (the node reports it too, if it is
        # taken between this check and its own bind)
        if node_id in peer_map:
            _check_listen(f"node {node_id}", *peer_map[node_id])
        if metrics_addr is not None:
            _check_listen(f"node {node_id}'s metrics", *parse_listen_address(metrics_addr))
        import logging
        import sys

        logging.basicConfig(
            level=logging.DEBUG if settings.debug else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
        where = "{}:{}".format(*peer_map[node_id]) if node_id in peer_map else "its configured address"
        echo(f"kv serve: node {node_id} on {where}, data dir {data_dir}, engine {options.engine}"
             + (f", joining via {','.join(join_list)}" if join_list else "") + recorded_from, err=True)
        try:
            run_node(node_id, peer_map, data_dir, options, join=join_list or None,
                     adopt_cluster_id=bool(join_list) and cluster_id is None)
        except KeyboardInterrupt:
            pass
        except JoinError as exc:
            raise OperationFailed(f"cannot join: {exc}") from None
        echo(f"kv serve: node {node_id} stopped", err=True)


def _directory_owner(data_dir: str) -> tuple[int, str] | None:
    """The node id and cluster id that ``data_dir``'s meta.json names, if it names them."""
    import json

    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(meta, dict) and type(meta.get("node_id")) is int and isinstance(meta.get("cluster_id"), str):
        return meta["node_id"], meta["cluster_id"]
    return None


def recorded_members(data_dir: str, node_id: int) -> tuple[dict[int, tuple[str, int]], str] | None:
    """For ``kv serve`` without ``--peers`` or ``--join``: the members' addresses and the cluster id that
    ``data_dir`` recorded when node ``node_id`` founded or joined its cluster
    (``kvstore.storage.recorded_config``), or None if it holds no such record for that node. The node
    then learns every later change of members from its own log, as after any restart."""
    from kvstore.endpoints import EndpointError, parse_endpoint
    from kvstore.storage import recorded_config

    recorded = recorded_config(data_dir, node_id)
    if recorded is None:
        return None
    addresses, cluster_id = recorded
    try:
        return {member: parse_endpoint(address) for member, address in addresses.items()}, cluster_id
    except EndpointError:
        return None


def _ips_of(host: str, port: int) -> set[str]:
    """The IP addresses ``host`` resolves to for TCP here; empty if it does not resolve."""
    import socket

    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return set()


def _same_host(ip: str) -> str:
    """An address as this host reaches it: an IPv4 address mapped into IPv6 as itself, and the wildcard
    addresses (which a connect on Linux takes for this host) as the loopback (QA: 0.0.0.0:P and
    [::ffff:127.0.0.1]:P were taken beside 127.0.0.1:P)."""
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[len("::ffff:"):]
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ip, ip)


def _check_distinct_addresses(text: str, peer_map: dict[int, tuple[str, int]]) -> None:
    """UsageProblem if two ``--peers`` ids name one address under two names (``localhost`` and ``127.0.0.1``:
    parse_peers refuses the same spelling twice). The nodes would dial each other's id at one socket,
    and its node refuse the link (QA: "refuses a link from a node that says it is node 1"). Names that
    do not resolve here are left to the node's own dialing."""
    by_port: dict[int, list[int]] = {}
    for member, (_host, port) in sorted(peer_map.items()):
        by_port.setdefault(port, []).append(member)
    resolved: dict[int, set[str]] = {}
    for port, members in by_port.items():
        if len(members) < 2:
            continue
        for member in members:
            resolved[member] = {_same_host(ip) for ip in _ips_of(peer_map[member][0], port)}
        for i, first in enumerate(members):
            for second in members[i + 1:]:
                if resolved[first] & resolved[second]:
                    raise UsageProblem(
                        f"invalid --peers {text!r}: nodes {first} and {second} have the same address under two "
                        f"names ({peer_map[first][0]}:{port} and {peer_map[second][0]}:{port}); give each node "
                        "its own host:port")


def _check_own_address(data_dir: str, node_id: int, peer_map: dict[int, tuple[str, int]]) -> None:
    """UsageProblem if ``data_dir`` recorded another address for node ``node_id`` than ``--peers`` gives it.

    The members dial a node at the address the cluster's configuration holds, and ``--peers`` never
    changes that on a founded directory: a node restarted with another port listened there, reachable by
    nobody, and said nothing (QA: it stayed at its decided slot for good, its reads "key not found")."""
    recorded = recorded_members(data_dir, node_id)
    if recorded is None or node_id not in recorded[0] or node_id not in peer_map:
        return
    (was_host, was_port), (host, port) = recorded[0][node_id], peer_map[node_id]
    if (was_host, was_port) == (host, port):
        return
    if was_port == port and _ips_of(was_host, port) & _ips_of(host, port):
        return  # another name for the same address (localhost for 127.0.0.1)
    raise UsageProblem(
        f"data dir {data_dir} records node {node_id}'s address as {was_host}:{was_port}, where the members dial it, "
        f"but --peers gives {host}:{port}: a node's address is the cluster's, and --peers does not change it. "
        f"Restart it with its recorded address (or with --id and --data-dir alone); to move it, add the machine "
        f"under a new id (docs/operations.md, Membership)")


def _check_listen(what: str, host: str, port: int) -> None:
    """OperationFailed if a listener cannot bind ``host:port`` now (port 0 always can)."""
    if port == 0:
        return
    import os
    import socket

    try:
        socket.create_server((host, port)).close()  # (SO_REUSEADDR, as the server's own listener)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise OperationFailed(f"{what} cannot listen on {host}:{port}: {reason}") from None


def serve_tls_options(cacert: str | None, cert: str | None, key: str | None, acl: str | None,
                      node_id: int | None = None) -> dict[str, Any]:
    """``kv serve``'s TLS options as ``ServerOptions`` fields, checked now (UsageProblem, exit 2) rather
    than when the node starts: all three files or none, usable together, the certificate node
    ``node_id``'s own, an ACL only with TLS and readable."""
    from kvstore.acl import AclError, load
    from kvstore.tls import TlsError, TlsFiles, check_node_certificate, client_context, server_context

    try:
        files = TlsFiles.of(cacert, cert, key)
    except TlsError as exc:
        raise UsageProblem(str(exc)) from None
    if files is None:
        if acl:
            raise UsageProblem("--acl names client certificates: it needs --cacert, --cert and --key")
        return {}
    try:
        server_context(files)
        client_context(files)
        if node_id is not None:
            check_node_certificate(files.cert, node_id)
        if acl:
            load(acl)
    except (TlsError, AclError) as exc:
        raise UsageProblem(str(exc)) from None
    return {"cacert": files.cacert, "cert": files.cert, "key": files.key, "acl": acl}
