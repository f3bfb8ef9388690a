"""The trio node on in-memory streams with trio's autojump clock.

Three ``kvstore.server.Node`` objects run in one trio run, joined by ``memnet.MemoryNetwork``; time is
virtual (the autojump clock skips ahead whenever every task is blocked), so elections and timeouts take
no real time. Checks: a leader emerges and serves writes and reads; replicas converge; a crashed leader
is replaced and, restarted from its data dir, catches up; a garbage frame closes only its own
connection.
"""
from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from kvstore import wire
from kvstore.client import Unavailable, connect
from kvstore.metrics import make_registry, metrics_text
from kvstore.server import Node, ServerOptions

from .memnet import MemoryNetwork, resolve_as_written

PEERS = {1: ("n1", 7001), 2: ("n2", 7002), 3: ("n3", 7003)}
ENDPOINTS = [f"{h}:{p}" for h, p in PEERS.values()]


def _options(**overrides) -> ServerOptions:
    return ServerOptions(**{**dict(fsync=False, tick_seconds=0.01, heartbeat_ticks=5, election_timeout_ticks=30,
                                   request_timeout=5.0), **overrides})


class MemCluster:
    def __init__(self, nursery, tmp_path, net: MemoryNetwork, peers=PEERS, **options) -> None:
        self.peers = peers
        self.options = options
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.net = net
        self.nodes: dict[int, Node] = {}
        self.scopes: dict[int, trio.CancelScope] = {}
        self.stopped: dict[int, trio.Event] = {}

    async def start(self, node_id: int) -> None:
        previous = self.stopped.get(node_id)
        if previous is not None:
            await previous.wait()  # a crashed incarnation must let go of its data dir first
        node = Node(node_id, self.peers, self.tmp_path / f"node-{node_id}", _options(**self.options),
                    transport=self.net.transport())
        scope = trio.CancelScope()
        stopped = self.stopped[node_id] = trio.Event()

        async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await node.run(task_status=task_status)
            finally:
                stopped.set()

        await self.nursery.start(run)
        self.nodes[node_id] = node
        self.scopes[node_id] = scope

    async def start_all(self) -> int:
        """Start every node, then wait for a leader; its id."""
        for node_id in self.peers:
            await self.start(node_id)
        return await self.wait_leader()

    def crash(self, node_id: int) -> None:
        self.net.down(*self.peers[node_id])
        self.scopes.pop(node_id).cancel()
        self.nodes.pop(node_id)

    async def wait_leader(self) -> int:
        with trio.fail_after(30):
            while True:
                leaders = [i for i, n in self.nodes.items() if n.replica.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.05)

    async def wait_leader_among(self, ids) -> int:
        with trio.fail_after(30):
            while True:
                leaders = [i for i in ids if self.nodes[i].replica.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await trio.sleep(0.05)

    async def wait_converged(self) -> None:
        with trio.fail_after(30):
            while True:
                seen = {(n.replica.applied_slot, n.sm.state_hash()) for n in self.nodes.values()}
                if len(seen) == 1:
                    return
                await trio.sleep(0.05)


@pytest.mark.parametrize("engine", ["core", "classic"])
async def test_three_nodes_elect_serve_and_converge(tmp_path, autojump_clock, engine):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, engine=engine)
        for i in PEERS:
            await cluster.start(i)
        await cluster.wait_leader()
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(20):
                await kv.put(f"k{i}", f"v{i}")
            assert await kv.get("k7") == "v7"
            assert await kv.cas("k1", "v1", "x") is True
            assert await kv.delete_prefix("k1") == 11  # k1, k10..k19
            listed = [k for k, _ in await kv.list("k")]
            assert listed == sorted(f"k{i}" for i in range(20) if not str(i).startswith("1"))
        await cluster.wait_converged()
        assert {n.status()["engine"] for n in cluster.nodes.values()} == {engine}
        assert {type(n.replica).__name__ for n in cluster.nodes.values()} == {
            "ClassicReplica" if engine == "classic" else "Replica"}
        nursery.cancel_scope.cancel()


def test_an_unknown_engine_is_refused():
    assert ServerOptions().engine == "core"
    with pytest.raises(ValueError, match="unknown engine 'multi'"):
        ServerOptions(engine="multi")


async def test_crashed_leader_is_replaced_and_catches_up_after_restart(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        for i in PEERS:
            await cluster.start(i)
        old = await cluster.wait_leader()
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(10):
                await kv.put(f"a{i}", "x")
            cluster.crash(old)
            new = await cluster.wait_leader()
            assert new != old
            for i in range(10):
                await kv.put(f"b{i}", "y")
            await cluster.start(old)
            await cluster.wait_converged()
            assert len(await kv.list("")) == 20
        assert len(cluster.nodes[old].sm) == 20
        nursery.cancel_scope.cancel()


async def test_garbage_frame_closes_only_that_connection(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        bad = await net.transport().connect(*PEERS[leader])
        await bad.send_all(b"\x00\x00\x00\x05" + b"\xff" * 5)  # five bytes that are not CBOR
        reader = wire.FrameReader(bad)
        with trio.fail_after(5):
            frames = await reader.receive_frames()
        reply = wire.decode_body(frames[0])
        assert isinstance(reply, wire.ErrorReply) and reply.code == wire.PROTOCOL
        with trio.fail_after(5):
            assert await reader.receive_frames() == []  # then the node closed it
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.put("still", "serving")
            assert await kv.get("still") == "serving"
        assert cluster.nodes[leader].counters["protocol_errors"] == 1
        nursery.cancel_scope.cancel()


async def test_a_retry_the_cluster_no_longer_remembers_is_answered_stale(tmp_path, autojump_clock, monkeypatch):
    """A write retried after more newer writes of its client than the dedup table keeps gets code
    ``stale`` (outcome unknown), not ``bad_request``: the first attempt was applied here."""
    from kvstore import statemachine

    monkeypatch.setattr(statemachine, "RESULTS_PER_CLIENT_MAX", 4)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        stream = await net.transport().connect(*PEERS[leader])
        reader = wire.FrameReader(stream)
        cid = b"c" * 16

        async def put(wire_id: int, rq: int):
            await stream.send_all(wire.encode_frame(wire.PutRequest(
                id=wire_id, key=f"k{rq}", value="v", client_id=cid, request_id=rq, ack_below=0)))
            with trio.fail_after(5):
                return wire.decode_body((await reader.receive_frames())[0])

        for rq in range(1, 7):  # rq 1 and 2 are forgotten: only four results are kept
            assert isinstance(await put(rq, rq), wire.OkReply)
        reply = await put(7, 1)  # a very late retry of rq 1
        assert isinstance(reply, wire.ErrorReply) and reply.code == wire.STALE and reply.id == 7
        assert "may or may not have been applied" in reply.message
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            assert await kv.get("k1") == "v"  # it was
        nursery.cancel_scope.cancel()


async def test_idle_client_connection_is_closed_and_a_busy_one_is_kept(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, idle_client_timeout=30.0)
        leader = await cluster.start_all()
        idle = await net.transport().connect(*PEERS[leader])
        busy = await net.transport().connect(*PEERS[leader])
        idle_reader, busy_reader = wire.FrameReader(idle), wire.FrameReader(busy)
        for stream, reader in ((idle, idle_reader), (busy, busy_reader)):
            await stream.send_all(wire.encode_frame(wire.StatusRequest(id=1)))
            with trio.fail_after(5):
                assert isinstance(wire.decode_body((await reader.receive_frames())[0]), wire.OkReply)
        started = trio.current_time()
        closed_at = []

        async def watch_idle() -> None:
            assert await idle_reader.receive_frames() == []  # the node closed it
            closed_at.append(trio.current_time() - started)

        nursery.start_soon(watch_idle)
        for n in range(2, 6):  # the busy one sends a request every 10 s, the idle one nothing
            await trio.sleep(10)
            await busy.send_all(wire.encode_frame(wire.StatusRequest(id=n)))
            with trio.fail_after(5):
                assert isinstance(wire.decode_body((await busy_reader.receive_frames())[0]), wire.OkReply)
        assert len(closed_at) == 1 and 30.0 <= closed_at[0] <= 31.5  # checked once a second
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("heartbeat_ticks, election_timeout_ticks, step", [(5, 30, 5), (3, 12, 3), (1, 4, 1)])
async def test_followers_take_ticks_a_few_at_a_time_and_a_stable_leader_keeps_its_ballot(
        tmp_path, autojump_clock, heartbeat_ticks, election_timeout_ticks, step):
    """A follower that hears from a leader wakes for ticks 1/step as often as the leader (each wake
    delivers `step` ticks; fewer when the election timeout is short), and that never makes it start an
    election while heartbeats arrive."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, heartbeat_ticks=heartbeat_ticks,
                             election_timeout_ticks=election_timeout_ticks)
        leader = await cluster.start_all()
        ballot = cluster.nodes[leader].replica.ballot
        before = {i: n.counters["tick_wakeups"] for i, n in cluster.nodes.items()}
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(30):  # a minute of virtual time with a few writes
                await kv.put(f"k{i}", "v")
                await trio.sleep(2)
        wakeups = {i: n.counters["tick_wakeups"] - before[i] for i, n in cluster.nodes.items()}
        assert all(n.replica.ballot == ballot for n in cluster.nodes.values())  # no election happened
        assert all(n.replica.leader_id == leader for n in cluster.nodes.values())
        for i, count in wakeups.items():
            if i != leader:
                assert (step - 0.5) * count <= wakeups[leader] <= (step + 0.5) * count, wakeups
        await cluster.wait_converged()
        nursery.cancel_scope.cancel()


async def test_no_quorum_write_times_out_with_unknown_outcome(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        for i in list(cluster.nodes):
            if i != leader:
                cluster.crash(i)
        async with connect([f"{h}:{p}" for h, p in [PEERS[leader]]], timeout=3, transport=net.transport()) as kv:
            with pytest.raises(Unavailable) as info:
                await kv.put("k", "v")
        assert info.value.outcome_unknown
        nursery.cancel_scope.cancel()


async def test_write_waiting_past_the_request_timeout_is_answered_with_timeout(tmp_path, autojump_clock):
    """The node itself fails a write it could not decide within request_timeout (no quorum), so a
    client is never left waiting forever on a connection that stays open. (The request timeout here is
    below the election timeout: later, the leader would step down for want of a quorum and answer the
    write ``not_leader`` instead, tests/integration/test_check_quorum.py.)"""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, request_timeout=0.1)
        leader = await cluster.start_all()
        for i in list(cluster.nodes):
            if i != leader:
                cluster.crash(i)
        node = cluster.nodes[leader]
        stream = await net.transport().connect(*PEERS[leader])
        await stream.send_all(wire.encode_frame(wire.PutRequest(
            id=7, key="k", value="v", client_id=b"c" * 16, request_id=1, ack_below=1)))
        reader = wire.FrameReader(stream)
        with trio.fail_after(node.options.request_timeout * 3):
            frames = await reader.receive_frames()
        reply = wire.decode_body(frames[0])
        assert isinstance(reply, wire.ErrorReply) and reply.code == wire.TIMEOUT and reply.id == 7
        assert node.counters["writes_expired"] == 1
        nursery.cancel_scope.cancel()


async def _crash_and_recover(cluster: MemCluster, kv, node_id: int, *, keys: int) -> Node:
    """Crash node ``node_id`` and start it again from its data directory; it must come back with the
    same state: ``keys`` keys in a linearizable list (so after its replayed log is applied) and the state
    hash it had. Returns the restarted node. (Nothing here waits before the crash: no snapshot can start
    between the caller's last look at the node and the crash.)"""
    expected = cluster.nodes[node_id].sm.state_hash()
    cluster.crash(node_id)
    await cluster.start(node_id)
    await cluster.wait_leader()
    assert len(await kv.list("")) == keys
    restarted = cluster.nodes[node_id]
    assert restarted.sm.state_hash() == expected
    return restarted


async def test_snapshots_taken_under_writes_then_restart_from_snapshot_and_log(tmp_path):
    """A node snapshots again and again (three times at least) under concurrent writes (applies held
    back while the frozen state is written, so state machine, core and log agree), and after a crash
    recovers exactly from the latest snapshot plus the log above it.

    One node, so that the check is about snapshots and recovery only (the 3-node case with very frequent
    compaction has its own test below). Real clock on purpose: snapshots are written from worker
    threads, and the autojump clock would skip virtual time while they run. Before the crash, a few
    more writes one at a time until no snapshot is being written and some applied slots are above the
    snapshot: so the restart needs both halves, and losing either (the snapshot, or the log above it)
    loses keys."""
    peers = {1: ("n1", 7001)}
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=peers, snapshot_every=10)
        await cluster.start(1)
        await cluster.wait_leader()
        node = cluster.nodes[1]
        written = 0
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            async def writer(w: int) -> None:
                # At least 40 writes each, then on until the node has snapshotted three times (how
                # many snapshots 160 writes give depends on how fast the worker thread writes them).
                nonlocal written
                for i in range(1000):
                    if i >= 40 and node.counters["snapshots"] >= 3:
                        return
                    await kv.put(f"w{w}-{i}", f"{i}")
                    written += 1
            async with trio.open_nursery() as writers:
                for w in range(4):
                    writers.start_soon(writer, w)
            assert node.counters["snapshots"] >= 3  # again and again, while the writers ran
            extra = waits = 0
            status = node.status()
            while status["snapshotting"] or status["applied_slot"] <= status["snapshot_slot"]:
                assert extra < 100 and waits < 2000, f"no moment with applied slots above a finished snapshot: {status}"
                if status["snapshotting"]:
                    await trio.sleep(0.005)  # let it finish: writing more would only start the next one
                    waits += 1
                else:
                    await kv.put(f"extra-{extra}", "x")
                    extra += 1
                status = node.status()
            # No checkpoint between the status read and the crash: no snapshot can start in between.
            assert 0 < status["snapshot_slot"] < status["applied_slot"]
            restarted = await _crash_and_recover(cluster, kv, 1, keys=written + extra)
            assert restarted.replica.snapshot_slot >= status["snapshot_slot"]  # started from it
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("engine", ["core", "classic"])
async def test_a_quiet_node_snapshots_early_once_and_restarts_from_it(tmp_path, engine):
    """After a burst of writes and a quiet ``idle_snapshot_seconds``, a node snapshots before its
    interval: the core then holds no decided value above the snapshot (the memory the rule gives
    back). A few writes below the floor afterwards start no second one. A crash after that restarts
    from the quiet snapshot and the log above it. Real clock: snapshots are written from worker threads."""
    peers = {1: ("n1", 7001)}
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers=peers, snapshot_every=200,
                             idle_snapshot_seconds=0.3, idle_snapshot_commands=40, engine=engine)
        await cluster.start(1)
        await cluster.wait_leader()
        node = cluster.nodes[1]
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            for i in range(50):
                await kv.put(f"k{i}", "v")
            with trio.fail_after(20):
                while node.counters["snapshots"] < 1:
                    await trio.sleep(0.05)
            assert node.counters["snapshots_when_idle"] == 1
            exposition = metrics_text(make_registry(node)).decode()
            assert "kv_quiet_snapshots_total 1.0" in exposition
            assert 'kv_snapshots_total{kind="written"} 1.0' in exposition
            status = node.status()
            assert status["snapshot_slot"] == status["applied_slot"] > 0
            assert node.replica.durable_state().decided == {}  # nothing above the snapshot is held
            for i in range(10):  # 10 < 40 commands since (the floor: 200 // 8 is less): no second one
                await kv.put(f"more{i}", "v")
            await trio.sleep(1.0)
            assert node.counters["snapshots"] == 1 and node.counters["snapshots_when_idle"] == 1
            status = node.status()
            assert 0 < status["snapshot_slot"] < status["applied_slot"]
            restarted = await _crash_and_recover(cluster, kv, 1, keys=60)
            assert restarted.replica.snapshot_slot == status["snapshot_slot"]
        nursery.cancel_scope.cancel()


async def test_leader_with_a_full_disk_refuses_writes_and_the_cluster_carries_on(tmp_path, autojump_clock):
    """ENOSPC on the leader's log: it refuses writes (storage_full) without corrupting its state, the
    others elect a new leader, the client's write succeeds there; the full node, restarted with space,
    catches up with everything."""
    import errno as _errno

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        for i in PEERS:
            await cluster.start(i)
        full = await cluster.wait_leader()
        async with connect(ENDPOINTS, timeout=20, transport=net.transport()) as kv:
            await kv.put("before", "1")

            def no_space(fd, data):
                raise OSError(_errno.ENOSPC, "No space left on device")

            cluster.nodes[full].storage._write = no_space
            await kv.put("during", "2")  # the full leader refuses; a new leader takes it
            assert cluster.nodes[full].storage_full
            assert cluster.nodes[full].status()["storage_full"] is True
            new = await cluster.wait_leader_among([i for i in PEERS if i != full])
            assert new != full
            # A write sent to the full node now is turned away on arrival (never proposed): the client
            # that can reach no other node reports it as not written, not as outcome unknown.
            host, port = PEERS[full]
            async with connect([f"{host}:{port}"], timeout=1, transport=net.transport()) as only_full:
                with pytest.raises(Unavailable) as refused:
                    await only_full.put("refused", "3")
            assert not refused.value.outcome_unknown, str(refused.value)
            assert "disk is full" in str(refused.value) and str(refused.value).endswith("the write was not applied")
            # A linearizable read there is refused too, and told what the node still serves (QA: it was
            # told the node refuses writes); a serializable read is served.
            async with connect([f"{host}:{port}"], timeout=1, transport=net.transport()) as only_full:
                with pytest.raises(Unavailable, match=r"disk is full; it serves only serializable reads"):
                    await only_full.get("before")
                assert await only_full.get("before", consistency="s") == "1"
            cluster.crash(full)
            await cluster.start(full)  # restarted with a working disk
            await cluster.wait_converged()
            assert await kv.get("during") == "2" and await kv.get("before") == "1"
        nursery.cancel_scope.cancel()


async def test_a_ballot_that_leaps_far_above_every_known_one_is_dropped(tmp_path, autojump_clock):
    """A forged (or garbled) Prepare at ballot 2**64 - 1, handed to a follower as from a peer: dropped and
    counted, so the follower neither promises it nor campaigns above it (2**64 fits no message), and the
    cluster goes on serving. A Prepare a few numbers above the known ballots is the core's to judge, as
    before: it reaches the core (which promises it), and the cluster elects a leader again."""
    from paxos.ballot import Ballot
    from paxos.messages import Nack, Prepare

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        for i in PEERS:
            await cluster.start(i)
        leader = await cluster.wait_leader()
        target, liar = [i for i in PEERS if i != leader]
        node = cluster.nodes[target]
        known = node.replica.ballot
        async with connect(ENDPOINTS, timeout=20, transport=net.transport()) as kv:
            await kv.put("before", "1")
            for forged in (Prepare(sender=liar, ballot=Ballot(2**64 - 1, liar), first_slot=1),
                           Nack(sender=liar, ballot=known, promised=Ballot(known.number + 2**33, liar))):
                node._post([forged], from_peer=True)
                await trio.sleep(0.5)
            assert node.counters["ballot_leaps_refused"] == 2
            assert node.replica.ballot == known
            await kv.put("after", "2")
            assert await kv.get("before") == "1" and await kv.get("after") == "2"
            near = Ballot(known.number + 5, liar)
            node._post([Prepare(sender=liar, ballot=near, first_slot=1)], from_peer=True)
            await trio.sleep(0)
            assert node.replica.ballot == near and node.counters["ballot_leaps_refused"] == 2
            await kv.put("later", "3")  # the deposed round ends; some node leads again at a higher ballot
            assert await kv.get("later") == "3"
        nursery.cancel_scope.cancel()


async def test_three_nodes_under_very_frequent_snapshots_finish_the_writes_and_agree(tmp_path):
    """Three nodes snapshot every 10 commands, each at its own points, under four concurrent writers
    (40 puts each), with the real clock (snapshots are written from worker threads, which the
    autojump clock would skip past). Every write must succeed within the bound, a leader must be there
    at the end, and all replicas must reach the same applied slot and state hash, holding all 160 keys.
    A node that installs a peer's snapshot in the middle of a driver batch must not replay the slots
    the snapshot covers (paxos.replica.install_snapshot), or its state would diverge."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, snapshot_every=10)
        for i in PEERS:
            await cluster.start(i)
        await cluster.wait_leader()
        async with connect(ENDPOINTS, timeout=20, transport=net.transport()) as kv:
            async def writer(w: int) -> None:
                for i in range(40):
                    await kv.put(f"w{w}-{i}", f"{i}")
            with trio.fail_after(60):
                async with trio.open_nursery() as writers:
                    for w in range(4):
                        writers.start_soon(writer, w)
            await cluster.wait_leader()
            await cluster.wait_converged()
            assert all(n.replica.snapshot_slot > 0 for n in cluster.nodes.values())
            assert all(len(n.sm) == 160 for n in cluster.nodes.values())
            assert len(await kv.list("w")) == 160
        nursery.cancel_scope.cancel()


async def test_serve_options_reach_the_core_check_quorum_on_by_default_and_off_on_request(tmp_path):
    """``kv serve --no-check-quorum`` (ServerOptions.check_quorum) is what the core is built with."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        on = MemCluster(nursery, tmp_path / "on", net)
        await on.start(1)
        off = MemCluster(nursery, tmp_path / "off", MemoryNetwork(), check_quorum=False)
        await off.start(1)
        assert on.nodes[1].replica.options.check_quorum is True
        assert off.nodes[1].replica.options.check_quorum is False
        nursery.cancel_scope.cancel()


async def test_the_standby_follows_a_change_of_members(tmp_path, autojump_clock):
    """The standby (the follower that always applies; kvstore.learners.standby_of) is picked among the
    voters of the current configuration, not the ``--peers`` a node started with. Regression (QA): after
    ``kv cluster add; kv cluster remove 1`` every node still counted the removed node 1, took it for the
    standby, and so no follower stayed eager: a new leader had a backlog to apply first."""
    from kvstore.learners import standby_of

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        removed = min(i for i in PEERS if i != leader)  # the standby until it is removed
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.member_remove(removed)
            await kv.put("k", "v")
        voters = tuple(sorted(i for i in PEERS if i != removed))
        with trio.fail_after(30):
            while any(cluster.nodes[i].replica.config.node_ids != voters for i in voters):
                await trio.sleep(0.05)
        for i in voters:
            node = cluster.nodes[i]
            assert node.learner.members == voters
            assert standby_of(node.learner.members, leader) in set(voters) - {leader}
        nursery.cancel_scope.cancel()


async def test_a_removed_member_leaves_nothing_behind_in_the_others(tmp_path, autojump_clock):
    """Resources QA: the incarnation a removed member presented, and when it may get our snapshot again,
    stayed in every other node's memory for good (one entry per id ever used)."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, snapshot_every=10)  # a snapshot past the change drops it
        leader = await cluster.start_all()
        removed = max(i for i in PEERS if i != leader)
        voters = tuple(sorted(i for i in PEERS if i != removed))
        for i in voters:  # as after its Hello on a link to node i, and a snapshot sent to it
            cluster.nodes[i].members.seen_incarnations.setdefault(removed, "its incarnation")
            cluster.nodes[i].snapshots._resend_after[removed] = (1, 0.0)
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.member_remove(removed)
            with trio.fail_after(30):  # until no configuration still scheduled names it (Members.sync)
                while any(removed in cluster.nodes[i].peers for i in voters):
                    await kv.put("k", "v")
        for i in voters:
            node = cluster.nodes[i]
            assert removed not in node.members.seen_incarnations
            assert removed not in node.snapshots._resend_after
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("spelled", ["alike", "otherwise"])
async def test_a_new_member_at_a_removed_member_s_address_gets_steady_links(tmp_path, autojump_clock, monkeypatch,
                                                                            spelled):
    """QA: ``kv cluster remove 3; kv cluster add`` gives node 3's port to node 4. The others still dialed
    node 3 there (its configuration is still scheduled), node 4 took that link as one more from the same
    node and dropped the first, and the two links closed each other every few milliseconds: the leader
    stepped down again and again. A removed member whose address a member of the newest configuration
    has now is no longer dialed; and when the new member's address is another name for the same socket
    (``localhost`` for ``127.0.0.1``: a second QA pass), the node that answers refuses a link its dialer
    meant for another node (``Hello.to``)."""
    from kvstore import members

    monkeypatch.setattr(members, "_resolve", resolve_as_written)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        removed = max(i for i in PEERS if i != leader)
        cluster.crash(removed)
        host, port = PEERS[removed]
        new_host = host if spelled == "alike" else f"alias-of-{host}"
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.member_remove(removed)
            await kv.member_add(4, f"{new_host}:{port}")
            joiner = Node(4, {4: (new_host, port)}, tmp_path / "node-4", _options(),
                          transport=net.transport(), join=[e for e in ENDPOINTS if e != f"{host}:{port}"])
            await nursery.start(joiner.run)
            net.listeners[(host, port)] = net.listeners[(new_host, port)]  # (one socket, two names)
            for _ in range(20):
                await kv.put("k", "v")
            await trio.sleep(2)  # 200 ticks: links close each other every few ms if both are dialed
            replaced = joiner.counters["peer_links_replaced"]
            for _ in range(20):
                await kv.put("k", "v")
            await trio.sleep(2)
            assert joiner.counters["peer_links_replaced"] == replaced, "the links to node 4 keep replacing each other"
        if spelled == "alike":
            for i in PEERS:
                if i != removed:
                    assert removed not in cluster.nodes[i].peers
        else:
            assert joiner.counters["peers_refused_misdialed"] > 0  # dialed for node 3, refused
        nursery.cancel_scope.cancel()


async def test_a_log_of_large_values_is_snapshotted_by_its_bytes_long_before_the_command_interval(
        tmp_path, monkeypatch):  # (a real clock: the snapshot's worker thread would make autojump fire timeouts)
    """QA: with 64 KiB values the 100,000 commands between snapshots were 6.4 GB of log, held in memory
    by the core too. A snapshot is also due once the log above the last one passes
    ``SNAPSHOT_LOG_BYTES_MIN`` and twice that snapshot's size."""
    from kvstore import server

    monkeypatch.setattr(server, "SNAPSHOT_LOG_BYTES_MIN", 1024 * 1024, raising=False)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers={1: ("n1", 7001)}, idle_snapshot_seconds=0)
        await cluster.start_all()
        node = cluster.nodes[1]
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            for i in range(40):  # 40 x 64 KiB: 2.5 MiB of log, 40 of the 100,000 commands
                await kv.put(f"k{i % 4}", "x" * 65536)
            with trio.fail_after(30):
                while node.storage.snapshot_slot == 0:
                    await kv.put("k0", "x" * 65536)
                    await trio.sleep(0.01)
            assert node.storage.snapshot_slot < 100 and node.storage.snapshot_bytes > 65536
        nursery.cancel_scope.cancel()



def test_the_driver_takes_frames_of_large_values_into_batches_of_batch_bytes_max():
    """A follower that fell behind for a moment with 1 MiB values took 50-100 MiB of Accepts into one
    batch, and encoded, wrote and fsynced them in one step of 0.3-0.9 s: long enough to cost a leader
    (bench/big_values.py). A batch stops once its posts' frames reach ``BATCH_BYTES_MAX`` (one post at
    least); the rest waits, in order, for the next batch. Small posts say no size."""
    from kvstore.server import BATCH_BYTES_MAX, SIZED_POST_BYTES, gather_batch

    node = Node.__new__(Node)  # (only _post's queueing: the driver is busy, the node is not quiet)
    node._driver_idle, node._quiet, node._fenced = False, False, False
    send, recv = trio.open_memory_channel(math.inf)
    node._events_send = send
    mib = 1 << 20
    for i in range(20):  # 20 reads of one 1 MiB Accept each
        node._post([f"accept-{i}"], from_peer=True, nbytes=mib)
    node._post(["small-1", "small-2"], nbytes=SIZED_POST_BYTES - 1)
    batches = []
    while True:
        try:
            first = recv.receive_nowait()
        except trio.WouldBlock:
            break
        batches.append(gather_batch(first, recv.receive_nowait))
    assert BATCH_BYTES_MAX == 8 * mib
    assert [(count, nbytes) for _, count, nbytes in batches] == [(8, 8 * mib), (8, 8 * mib), (6, 4 * mib)]
    flat = [event for batch, _, _ in batches for item in batch for event in (item if type(item) is list else [item])]
    assert flat == [f"accept-{i}" for i in range(20)] + ["small-1", "small-2"]


def test_a_snapshot_by_bytes_is_due_when_the_log_grew_by_the_bound_since_its_compaction():
    """A node whose applies lag its log keeps the slots above its applied one when it compacts; with 1
    MiB values those alone were past the bound, so every slot it applied began another snapshot of its
    whole state (0.5-1.6 s each, back to back: bench/big_values.py). The bound counts the log's growth
    since the compaction."""
    from types import SimpleNamespace

    from kvstore.server import SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_FACTOR

    mib = 1 << 20
    snapshot = 200 * mib
    bound = max(SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_FACTOR * snapshot)
    node = SimpleNamespace(learner=SimpleNamespace(applied_since_snapshot=1))
    due = Node._log_outgrew_snapshot

    node.storage = SimpleNamespace(log_bytes=bound + 4 * mib, log_bytes_kept=bound, snapshot_bytes=snapshot)
    assert not due(node)  # the compaction kept more than the bound: 4 MiB written since is not a snapshot
    node.storage.log_bytes = 2 * bound
    assert due(node)
    node.storage = SimpleNamespace(log_bytes=bound, log_bytes_kept=0, snapshot_bytes=snapshot)
    assert due(node)  # (a log only appended to since the node started)
    node.learner.applied_since_snapshot = 0
    assert not due(node)


def test_storage_says_what_its_last_compaction_kept(tmp_path):
    from kvstore.storage import Storage
    from paxos.actions import AcceptRecord, DurableState
    from paxos.ballot import Ballot

    with Storage.open(tmp_path, node_id=1, cluster_id="c") as storage:
        records = [AcceptRecord(s, Ballot(1, 1), (b"v" * 1000,)) for s in range(1, 11)]
        storage.append(records)
        storage.sync()
        assert storage.log_bytes > 10_000 and storage.log_bytes_kept < 100  # (the new log: its fence and mark)
        storage.write_snapshot(5, b"state through slot 5", DurableState.replay(records[5:]))
        kept = storage.log_bytes
        assert 5000 < kept < 6000 and storage.log_bytes_kept == kept
        storage.append([AcceptRecord(11, Ballot(1, 1), (b"w",))])
        storage.sync()
        assert storage.log_bytes > kept and storage.log_bytes_kept == kept


async def test_the_node_serves_while_its_log_is_compacted(tmp_path, monkeypatch):
    """The driver waited for the whole log rewrite after each snapshot (``compact_log``): with 1 MiB
    values 0.1-1.5 s without a heartbeat sent or answered, and a leader change per snapshot
    (bench/big_values.py). Now a worker thread writes the new log's bulk while the node goes on:
    here that worker is held until 20 more writes were answered, and those writes are in the log the
    compaction puts in place (a restart finds them)."""
    import threading

    from kvstore import server
    from kvstore.storage import Storage

    monkeypatch.setattr(server, "SNAPSHOT_LOG_BYTES_MIN", 256 * 1024, raising=False)
    release, started = threading.Event(), threading.Event()
    real = Storage.write_compaction

    def held(self):
        started.set()
        assert release.wait(30)
        return real(self)

    monkeypatch.setattr(Storage, "write_compaction", held)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, peers={1: ("n1", 7001)}, idle_snapshot_seconds=0, fsync=True)
        await cluster.start_all()
        node = cluster.nodes[1]
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            i = 0
            with trio.fail_after(30):
                while not started.is_set():  # 64 KiB values until a snapshot's compaction begins
                    await kv.put(f"k{i % 8}", "x" * 65536)
                    i += 1
                    await trio.sleep(0)
            slot = node.storage.snapshot_slot
            assert slot > 0 and node.storage._compaction is not None
            for j in range(20):  # answered while the worker is held
                await kv.put(f"during-{j}", f"v{j}")
            assert node.storage._compaction is not None and node.snapshots.busy
            release.set()
            with trio.fail_after(30):
                while node.storage._compaction is not None or node.snapshots.busy:
                    await trio.sleep(0.01)
            assert node.storage.log_bytes_kept > 0 and node.counters["snapshots"] >= 1
            await kv.put("after", "1")
        cluster.crash(1)
        await cluster.start(1)
        async with connect(["n1:7001"], timeout=10, transport=net.transport()) as kv:
            assert [await kv.get(f"during-{j}") for j in range(20)] == [f"v{j}" for j in range(20)]
            assert await kv.get("after") == "1"
        nursery.cancel_scope.cancel()
