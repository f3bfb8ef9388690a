"""Client connections against the node's file descriptors (``kvstore.descriptors``), on in-memory streams.

Checks:

* a node takes ``client_connections_max`` connections; one more is answered ``unavailable`` (refused,
  so the client knows its write was not applied) and closed, and once a connection closes a client is
  served again; connections that never send a frame are refused too, after a moment; at the limit,
  one that never sent a request gives its place at once to a new one that sends a request, and a
  client silent for IDLE_EVICT_SECONDS gives it too;
* a peer's connection is taken even while the client connections are at their limit: a follower
  restarted then is the one the leader needs for a majority, and writes go through;
* a snapshot, or its log rewrite, that finds no file descriptor (EMFILE) does not fence the node: it
  keeps serving, the next interval's snapshot is written, and after a restart every write is there;
* the numbers: the default and a wanted number against the limit on open files.
"""
from __future__ import annotations

import errno
import os
import resource

import pytest
import trio
import trio.testing

from kvstore import clients, descriptors, storage, wire
from kvstore.client import Unavailable, connect
from kvstore.metrics import make_registry, metrics_text

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, PEERS, MemCluster

ONE = {1: ("n1", 7001)}


async def _founded(cluster: MemCluster) -> None:
    """Until every node has recorded every member's incarnation (the cluster is founded: before that the
    nodes ask each other's status over client connections)."""
    with trio.fail_after(30):
        while not all(n.storage.members is not None and set(n.storage.members) == set(cluster.peers)
                      for n in cluster.nodes.values()):
            await trio.sleep(0.05)


async def _idle_connection(net: MemoryNetwork, host: str, port: int) -> trio.abc.Stream:
    """A connection that sends nothing (a leaked client connection, or a flood)."""
    stream = await net.transport().connect(host, port)
    await trio.sleep(0.01)  # let the node accept it
    return stream


async def _talking_connection(net: MemoryNetwork, host: str, port: int) -> trio.abc.Stream:
    """A connection that sent a request and got its answer, and stays open (a client between requests:
    not one to evict for IDLE_EVICT_SECONDS)."""
    stream = await net.transport().connect(host, port)
    await stream.send_all(wire.encode_frame(wire.GetRequest(id=1, key="k", linearizable=False)))
    with trio.fail_after(5):
        assert await wire.FrameReader(stream).receive_frames()
    return stream


async def test_a_connection_over_the_limit_is_refused_and_the_client_is_told_nothing_was_written(
        tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE, client_connections_max=2)
        await cluster.start_all()
        node = cluster.nodes[1]
        idle = [await _talking_connection(net, "n1", 7001) for _ in range(2)]
        assert node.status()["client_connections"] == 2

        async with connect(["n1:7001"], timeout=2, transport=net.transport()) as kv:
            with pytest.raises(Unavailable) as refused:
                await kv.put("k", "v")
        message = str(refused.value)
        assert "has all the client connections it takes (2" in message and "the write was not applied" in message
        assert not refused.value.outcome_unknown
        assert node.counters["connections_refused_over_limit"] >= 1
        assert node.status()["client_connections"] == 2  # the refused ones are closed

        # A third connection that says nothing is refused too, after a moment (the node reads it to the end).
        silent = await _idle_connection(net, "n1", 7001)
        refused_before = node.counters["connections_refused_over_limit"]
        with trio.fail_after(descriptors.OVER_LIMIT_FIRST_FRAME_SECONDS + 1):
            assert await silent.receive_some(100) == b""
        assert node.counters["connections_refused_over_limit"] == refused_before + 1
        exposition = metrics_text(make_registry(node)).decode()
        assert "kv_client_connections 2.0" in exposition and "kv_client_connections_max 2.0" in exposition
        assert f"kv_connections_refused_total {refused_before + 1}.0" in exposition

        await idle[0].aclose()
        await trio.sleep(0.01)
        async with connect(["n1:7001"], timeout=2, transport=net.transport()) as kv:
            await kv.put("k", "v")
            assert await kv.get("k") == "v"
        nursery.cancel_scope.cancel()


async def test_at_the_limit_a_connection_silent_for_long_gives_its_place_to_a_new_client(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE, client_connections_max=2)
        await cluster.start_all()
        node = cluster.nodes[1]
        silent = await _idle_connection(net, "n1", 7001)  # never sends a frame
        async with connect(["n1:7001"], timeout=2, transport=net.transport()) as idle_client:
            await idle_client.put("a", "1")  # then says nothing
            await trio.sleep(descriptors.IDLE_EVICT_SECONDS + 1)
            async with connect(["n1:7001"], timeout=2, transport=net.transport()) as kv:
                await kv.put("b", "2")  # the never-silent connection goes first
                with trio.fail_after(1):
                    assert await silent.receive_some(100) == b""
                assert node.counters["connections_evicted_silent"] == 1
                await trio.sleep(descriptors.IDLE_EVICT_SECONDS + 1)
                async with connect(["n1:7001"], timeout=2, transport=net.transport()) as third:
                    await third.put("c", "3")  # now the oldest silent client, idle_client or kv
                assert node.counters["connections_evicted_silent"] == 2
            # An evicted client connects again when it needs the node (and finds room: kv is closed).
            assert await idle_client.get("c") == "3"
        assert node.counters.get("connections_refused_over_limit", 0) == 0
        assert "kv_connections_evicted_total 2.0" in metrics_text(make_registry(node)).decode()
        nursery.cancel_scope.cancel()


async def test_at_the_limit_connections_that_never_spoke_give_their_place_at_once(tmp_path, autojump_clock):
    """A process without a certificate opened connections up to the limit, sent nothing, and replaced
    them every 5 s: none was ever silent for IDLE_EVICT_SECONDS, so every client was refused (QA). A
    connection that never sent a request now gives its place, oldest first, to a new one that sends a
    request, whatever its age; one that does not send a request is still refused."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE, client_connections_max=2)
        await cluster.start_all()
        node = cluster.nodes[1]
        for round_ in range(3):
            flood = [await _idle_connection(net, "n1", 7001) for _ in range(2)]
            await trio.sleep(0.5)  # young: far below IDLE_EVICT_SECONDS
            async with connect(["n1:7001"], timeout=2, transport=net.transport()) as kv:
                await kv.put("k", str(round_))
                with trio.fail_after(1):
                    assert await flood[0].receive_some(100) == b""  # the older one gave its place
                assert node.counters["connections_evicted_silent"] == round_ + 1
            for sock in flood:
                await sock.aclose()
            await trio.sleep(0.01)
        assert node.counters.get("connections_refused_over_limit", 0) == 0
        nursery.cancel_scope.cancel()


async def test_a_refused_connection_gets_the_refusal_for_its_first_request(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE, client_connections_max=1)
        await cluster.start_all()
        await _talking_connection(net, "n1", 7001)
        stream = await net.transport().connect("n1", 7001)
        await stream.send_all(wire.encode_frame(wire.GetRequest(id=41, key="k", linearizable=True)))
        reader = wire.FrameReader(stream)
        with trio.fail_after(5):
            frames = await reader.receive_frames()
        reply = wire.decode_body(frames[0])
        assert isinstance(reply, wire.ErrorReply)
        assert (reply.id, reply.code, reply.refused) == (41, wire.UNAVAILABLE, True)
        with trio.fail_after(5):
            assert await reader.receive_frames() == []  # and the connection is closed
        nursery.cancel_scope.cancel()


async def test_peers_are_taken_while_the_client_connections_are_at_their_limit(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, client_connections_max=1)
        leader = await cluster.start_all()
        await _founded(cluster)
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.put("before", "1")
        restarted, gone = [i for i in PEERS if i != leader]
        await trio.sleep(0.1)  # the client's connection is closed on the nodes' side too
        # Every node's one client connection is taken by a connection that says nothing.
        idle = {i: await _idle_connection(net, *PEERS[i]) for i in PEERS}
        assert [cluster.nodes[i].status()["client_connections"] for i in PEERS] == [1, 1, 1]
        refused = cluster.nodes[leader].counters["connections_refused_over_limit"]
        cluster.crash(gone)
        cluster.crash(restarted)
        await cluster.start(restarted)  # its links to the leader, both ways, arrive over the limit
        await idle[leader].aclose()
        await trio.sleep(0.01)
        # The leader's only majority is the restarted follower: the write needs the peer links.
        async with connect([ENDPOINTS[leader - 1]], timeout=10, transport=net.transport()) as kv:
            await kv.put("after", "2")
            assert await kv.get("after") == "2"
        assert cluster.nodes[leader].counters["connections_refused_over_limit"] == refused
        nursery.cancel_scope.cancel()


def _failing_creates(monkeypatch, suffix: str, failures: list[str]) -> None:
    """``os.open`` in kvstore.storage fails with EMFILE for temp files named ``*suffix`` (until removed)."""
    real_open = os.open

    def open_(path, flags, *args):
        name = os.fspath(path)
        if name.endswith(suffix + storage.TMP_SUFFIX) and flags & os.O_CREAT:
            failures.append(name)
            raise OSError(errno.EMFILE, "Too many open files (injected by the test)")
        return real_open(path, flags, *args)

    monkeypatch.setattr(storage.os, "open", open_)


@pytest.mark.parametrize("suffix", [".snap", ".wal"], ids=["snapshot-file", "log-rewrite"])
async def test_a_snapshot_that_finds_no_descriptor_is_postponed_and_the_node_keeps_voting(
        tmp_path, monkeypatch, suffix):
    net = MemoryNetwork()
    failures: list[str] = []
    values = {}

    async def put_all(kv, keys) -> None:
        for i in keys:
            values[f"k{i}"] = f"v{i}"
            await kv.put(f"k{i}", f"v{i}")

    async def restart_and_check() -> None:
        cluster.crash(1)
        await cluster.start(1)
        await cluster.wait_leader()
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            assert {k: await kv.get(k) for k in values} == values

    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE, snapshot_every=100, idle_snapshot_seconds=0)
        await cluster.start_all()
        node = cluster.nodes[1]
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            _failing_creates(monkeypatch, suffix, failures)
            await put_all(kv, range(250))
            with trio.fail_after(10):
                while node.snapshots.busy or not node.counters["snapshots_postponed_no_descriptors"]:
                    await trio.sleep(0.01)
            assert failures and node.status()["disk"] == "ok" and not node._fenced
            postponed = node.counters["snapshots_postponed_no_descriptors"]
            assert f"kv_snapshots_postponed_total {postponed}.0" in metrics_text(make_registry(node)).decode()
            await put_all(kv, range(250, 260))  # it goes on voting
            monkeypatch.undo()
        # What the postponed snapshot left (no snapshot, or a snapshot beside the old log) recovers whole.
        await restart_and_check()
        node = cluster.nodes[1]
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            await put_all(kv, range(260, 600))
            with trio.fail_after(10):
                while node.snapshots.busy or node.storage.snapshot_slot < 400:
                    await trio.sleep(0.01)
            assert node.status()["disk"] == "ok"
        await restart_and_check()
        nursery.cancel_scope.cancel()


def test_the_default_number_of_client_connections_fits_the_limit_on_open_files():
    reserved = descriptors.RESERVED_DESCRIPTORS
    assert descriptors.connections_max(0, 1 << 20) == descriptors.CLIENT_CONNECTIONS_DEFAULT
    assert descriptors.connections_max(0, 1024) == 1024 - reserved
    assert descriptors.connections_max(0, 200) == 100  # a very low limit: half of it
    assert descriptors.connections_max(0, 1) == 1
    assert descriptors.connections_max(500, 1024) == 500
    with pytest.raises(descriptors.TooFewDescriptors, match=r"need 1128 open files .* may open 1024 .*at most 896"):
        descriptors.connections_max(1000, 1024)
    # Past the limit, room for peers to say Hello: half of what is left, at most half the reserve.
    assert descriptors.over_limit_headroom(896, 1024) == reserved // 2
    assert descriptors.over_limit_headroom(100, 200) == 50
    assert descriptors.over_limit_headroom(200, 200) == 0


def test_a_server_raises_its_soft_limit_on_open_files_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 128:
        pytest.fail(f"this machine's hard limit on open files ({hard}) is too low for the test suite")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        assert descriptors.open_files_limit() == 64
        raised = descriptors.raise_soft_limit()
        now_soft, now_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert now_hard == hard and raised == descriptors.open_files_limit()
        assert now_soft == hard or (hard == resource.RLIM_INFINITY and now_soft > 64)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_newer_link_from_a_member_replaces_the_older_so_hellos_cannot_pile_up(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, client_connections_max=1)
        await cluster.start_all()
        node = cluster.nodes[1]
        await _founded(cluster)
        hello = wire.encode_frame(wire.Hello(node_id=2, cluster_id="kv", incarnation=node.storage.members[2],
                                             features=wire.FEATURES))
        # Links that claim to be node 2's (anyone can say Hello without TLS): each newer one replaces
        # the one before, the real node 2's included; none counts against the client connections.
        fakes = []
        for _ in range(3):
            fake = await net.transport().connect(*PEERS[1])
            await fake.send_all(hello)
            await trio.sleep(0.05)
            fakes.append(fake)
        for older in fakes[:-1]:
            with trio.fail_after(1):
                assert await older.receive_some(100) == b""  # closed by the node
        assert node.counters["peer_links_replaced"] >= 3  # the real link, then two fakes
        assert node.status()["client_connections"] == 0
        await fakes[-1].aclose()
        # Node 2's own link comes back (its sender redials) and the cluster serves.
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(5):
                await kv.put(f"k{i}", "v")
        await cluster.wait_converged()
        nursery.cancel_scope.cancel()


async def test_a_client_that_reads_none_of_its_answers_is_closed_and_the_node_serves_others(
        tmp_path, autojump_clock, monkeypatch, caplog):
    """QA: a client that pipelined reads of a 1 MB value and never read the answers made the node hold
    1.5 GB, and its connection was never closed (the writer task waited on it for good, so neither the
    idle sweep nor the end of the request loop could close it). Past ``CLIENT_BACKLOG_BYTES_MAX`` of
    unread answers the connection is closed, and what is still queued gets ``REPLY_DRAIN_SECONDS``."""
    monkeypatch.setattr(clients, "CLIENT_BACKLOG_BYTES_MAX", 3 * 1024 * 1024, raising=False)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE)
        await cluster.start_all()
        node = cluster.nodes[1]
        async with connect(["n1:7001"], timeout=5, transport=net.transport()) as kv:
            await kv.put("big", "x" * 1_000_000)
        ours, theirs = trio.testing.lockstep_stream_pair()  # our send_all waits for their reads: none come
        ended = trio.Event()

        async def serve() -> None:
            await node.clients.handle_connection(theirs)
            ended.set()

        nursery.start_soon(serve)
        request = b"".join(wire.encode_frame(wire.GetRequest(id=i, key="big", linearizable=False))
                           for i in range(1, 11))
        with trio.move_on_after(1):
            await ours.send_all(request)  # (taken as the node reads it; answers pile up unread)
        with trio.fail_after(clients.REPLY_DRAIN_SECONDS + 5):
            await ended.wait()
        assert any("answers it has not read" in r.getMessage() for r in caplog.records)
        async with connect(["n1:7001"], timeout=5, transport=net.transport()) as kv:
            assert len(await kv.get("big")) == 1_000_000
        nursery.cancel_scope.cancel()


async def test_a_client_gone_in_the_middle_of_a_frame_is_no_warning(tmp_path, autojump_clock, caplog):
    """QA: every failover with 64 KiB values logged a WARNING "bad frame: connection closed in the middle
    of a frame" (the client gave up on the node while writing a request): an INFO line now."""
    import logging

    caplog.set_level(logging.INFO, logger="kvstore.server")
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=ONE)
        await cluster.start_all()
        stream = await net.transport().connect("n1", 7001)
        frame = wire.encode_frame(wire.PutRequest(id=1, key="k", value="v" * 1000, client_id=b"c" * 16,
                                                  request_id=1, ack_below=1))
        await stream.send_all(frame[:500])
        await stream.aclose()
        await trio.sleep(0.1)
        lines = [r for r in caplog.records if "in the middle of a frame" in r.getMessage()]
        assert lines and all(r.levelno == logging.INFO for r in lines), [(r.levelname, r.getMessage()) for r in lines]
        nursery.cancel_scope.cancel()
