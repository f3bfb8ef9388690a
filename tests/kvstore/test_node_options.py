"""Embedding a node: ``ServerOptions`` refuses values a node cannot run with when it is built, and a
``Node`` whose construction fails gives its data directory back.

Regressions (QA, a developer embedding the store): ``tick_seconds=0``, ``"0.01"`` (a str), ``window=0``,
``cluster_id=""``, ``frame_bytes_max=10`` and a malformed ``metrics_addr`` were accepted, and failed
later (inside the node's nursery, or as a node that drops every client frame); and a ``Node`` whose
constructor raised after opening its storage kept the directory locked, so that the corrected retry in
the same process was told "in use by another process".
"""
from __future__ import annotations

import os

import pytest

from kvstore.server import FRAME_BYTES_LEAST, Node, ServerOptions

PEERS = {1: ("127.0.0.1", 1), 2: ("127.0.0.1", 2), 3: ("127.0.0.1", 3)}


@pytest.mark.parametrize("field, value", [
    ("tick_seconds", 0), ("tick_seconds", -1.0), ("tick_seconds", "0.01"), ("tick_seconds", float("nan")),
    ("request_timeout_seconds", 0), ("connect_timeout_seconds", -0.5), ("idle_client_timeout_seconds", 0),
    ("backoff_seconds_max", float("inf")), ("inline_fsync_seconds_max", -1), ("idle_snapshot_seconds", -1),
    ("heartbeat_ticks", 0), ("election_timeout_ticks", 0), ("window", 0), ("batch_count_max", 0),
    ("snapshot_every", 0), ("idle_snapshot_commands", -1), ("log_preallocate_bytes", -1), ("window", 2.0),
    ("heartbeat_ticks", True), ("frame_bytes_max", 10), ("frame_bytes_max", FRAME_BYTES_LEAST - 1),
    ("cluster_id", ""), ("cluster_id", 7), ("metrics_addr", "nonsense"),
])
def test_options_a_node_cannot_run_with_are_refused_when_built(field, value):
    with pytest.raises(ValueError, match=field if field != "metrics_addr" else "nonsense"):
        ServerOptions(**{field: value})


@pytest.mark.parametrize("heartbeat, election", [(20, None), (16, 30), (5, 9), (1, 1)])
def test_an_election_timeout_shorter_than_two_heartbeats_is_refused(heartbeat, election):
    # (QA: --heartbeat-ticks 40 with the default election timeout of 30 ticks ran, and its followers
    # called an election between every two heartbeats of a live leader)
    given = {"heartbeat_ticks": heartbeat} | ({} if election is None else {"election_timeout_ticks": election})
    timeout = election or ServerOptions().election_timeout_ticks
    with pytest.raises(ValueError, match=rf"election_timeout_ticks \({timeout}\) must be at least twice "
                                         rf"heartbeat_ticks \({heartbeat}\)"):
        ServerOptions(**given)


@pytest.mark.parametrize("heartbeat, election", [(15, 30), (1, 2), (3, 12), (5, 30)])
def test_an_election_timeout_of_two_heartbeats_or_more_is_taken(heartbeat, election):
    options = ServerOptions(heartbeat_ticks=heartbeat, election_timeout_ticks=election)
    assert (options.heartbeat_ticks, options.election_timeout_ticks) == (heartbeat, election)


def test_the_defaults_and_the_edges_that_mean_off_are_taken():
    ServerOptions()
    ServerOptions(inline_fsync_seconds_max=0, idle_snapshot_seconds=0, idle_snapshot_commands=0,
                  log_preallocate_bytes=0, frame_bytes_max=FRAME_BYTES_LEAST, metrics_addr="127.0.0.1:0",
                  tick_seconds=1)


def test_a_node_that_fails_to_build_gives_its_data_directory_back(tmp_path, monkeypatch):
    """An id missing from the peers is refused before the new directory is touched (it would have been
    founded as that node's); a failure after the storage opened closes it again."""
    import kvstore.server

    fds_before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        with pytest.raises(ValueError, match="node id 4 is not among the peers"):
            Node(4, PEERS, tmp_path / "data", ServerOptions(fsync=False))
    assert not (tmp_path / "data").exists()

    def broken(*args, **kwargs):
        raise RuntimeError("the state machine could not be built")

    with monkeypatch.context() as patched:
        patched.setattr(kvstore.server, "Learner", broken)
        for _ in range(3):
            with pytest.raises(RuntimeError, match="could not be built"):
                Node(1, PEERS, tmp_path / "data", ServerOptions(fsync=False))
    assert len(os.listdir("/proc/self/fd")) == fds_before  # nothing left open
    node = Node(1, PEERS, tmp_path / "data", ServerOptions(fsync=False))  # the corrected call, same process
    node.storage.close()


async def test_a_taken_port_is_a_listen_error_and_a_node_runs_once(tmp_path):
    """QA (embedding): ``nursery.start(node.run)`` on a taken port raised ``ExceptionGroup(ListenError)``,
    which ``except ListenError`` does not catch; and a Node run a second time failed with trio's
    "Each CancelScope may only be used for a single 'with' block". Now the ListenError itself, and a
    RuntimeError saying to build a new Node (a Node closes its storage when it stops)."""
    import socket

    import trio

    from kvstore.server import ListenError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        node = Node(1, {1: ("127.0.0.1", port)}, tmp_path / "a", ServerOptions(fsync=False))
        async with trio.open_nursery() as nursery:
            with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
                await nursery.start(node.run)
    finally:
        taken.close()
    from ..integration.harness import free_ports

    free_port = free_ports(1)[0]
    free = Node(1, {1: ("127.0.0.1", free_port)}, tmp_path / "b", ServerOptions(fsync=False))
    async with trio.open_nursery() as nursery:
        await nursery.start(free.run)
        nursery.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="ran already .* build a new Node"):
        await free.run()
    again = Node(1, {1: ("127.0.0.1", free_port)}, tmp_path / "b", ServerOptions(fsync=False))  # a new one is fine
    again.storage.close()
