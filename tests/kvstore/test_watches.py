"""Watches (``kvstore.watches``, ``kv watch``): every change to a key or a prefix, as a node applies it.

How: the state machine's record of changes (``StateMachine.watch_out``) for each kind of write, a retry
and a write that changes nothing; ``Watches`` alone with a stand-in connection (matching, frames split by
size, cancel, the limits); the wire form of the events and of bad ones; and three in-memory nodes
(autojump clock) with a watch on each node, the leader, the standby and the lazy learner, while a client
writes: every node reports the same changes in the same order, with their revisions, and a lazy learner
as promptly as the others; a watch's connection is not closed as idle; ``unwatch`` ends a watch and the
connection goes on; a node that installs a peer's snapshot ends its watches instead of skipping changes.
"""
from __future__ import annotations

import collections

import pytest
import trio

from kvstore import acl, commands, watches, wire
from kvstore.client import RequestError, WatchEvent, WatchLost, connect
from kvstore.statemachine import StateMachine

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, MemCluster

CID = b"c" * 16


def _changes(sm: StateMachine, command: bytes) -> list[tuple[str, object]]:
    sm.watch_out = []
    sm.apply(command)
    out, sm.watch_out = sm.watch_out, None
    return [(key, change if isinstance(change, int) else sm.get(key) and sm.get(key).value)
            for key, change in watches.pairs(out)]


def test_the_state_machine_records_what_each_write_changed():
    sm = StateMachine()
    assert _changes(sm, commands.encode_put(CID, 1, 0, "a", "1")) == [("a", "1")]
    assert _changes(sm, commands.encode_put(CID, 1, 0, "a", "1")) == []  # a retry: nothing changes
    assert _changes(sm, commands.encode_put(CID, 2, 0, "ab", b"2")) == [("ab", b"2")]
    assert _changes(sm, commands.encode_cas(CID, 3, 0, "a", "wrong", "x")) == []  # no swap
    assert _changes(sm, commands.encode_cas(CID, 4, 0, "a", "1", "3")) == [("a", "3")]
    assert _changes(sm, commands.encode_delete(CID, 5, 0, "missing")) == []
    assert _changes(sm, commands.encode_put(CID, 6, 0, "b", "4")) == [("b", "4")]
    assert _changes(sm, commands.encode_delete(CID, 7, 0, "b")) == [("b", 7)]
    assert _changes(sm, commands.encode_delete(CID, 8, 0, "a", prefix=True)) == [("a", 8), ("ab", 8)]
    sm.apply(commands.encode_put(CID, 9, 0, "c", "5"))  # not recorded without a list
    assert sm.watch_out is None and sm.get("c").value == "5"


class _Conn:
    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.replies: list[object] = []

    def event_frame(self, frame: bytes, body: bytes = b"") -> None:
        self.frames.append(frame + body)

    def reply(self, message: object) -> None:
        self.replies.append(message)

    def events(self) -> list[tuple[int, list]]:
        decoded = [wire.decode_body(frame[4:]) for frame in self.frames]
        return [(m.id, m.events) for m in decoded]


def _applied(sm: StateMachine, *commands_: bytes) -> list:
    sm.watch_out = []
    for command in commands_:
        sm.apply(command)
    out, sm.watch_out = sm.watch_out, None
    return out


def test_watches_match_a_key_or_a_prefix_and_frames_keep_the_order_of_changes():
    counters: dict = collections.defaultdict(int)
    hub = watches.Watches(counters)
    one, two = _Conn(), _Conn()
    assert hub.add(one, 7, "user/", True) is None
    assert hub.add(one, 8, "user/ann", False) is None
    assert hub.add(two, 7, "", True) is None  # every key
    sm = StateMachine()
    hub.deliver(_applied(sm, commands.encode_put(CID, 1, 0, "user/ann", "a"),
                         commands.encode_put(CID, 2, 0, "other", "o"), commands.encode_put(CID, 3, 0, "user/bob", b"b"),
                         commands.encode_delete(CID, 4, 0, "user/ann")))
    assert dict(one.events()) == {7: [["put", "user/ann", "a", 1, 1], ["put", "user/bob", b"b", 1, 3],
                                      ["del", "user/ann", None, 0, 4]],
                                  8: [["put", "user/ann", "a", 1, 1], ["del", "user/ann", None, 0, 4]]}
    assert two.events() == [(7, [["put", "user/ann", "a", 1, 1], ["put", "other", "o", 1, 2],
                                 ["put", "user/bob", b"b", 1, 3], ["del", "user/ann", None, 0, 4]])]
    assert counters["watch_events"] == 9
    assert hub.cancel(one, 7) and not hub.cancel(one, 7) and len(hub) == 2
    hub.drop(two)
    one.frames.clear()
    hub.deliver(_applied(sm, commands.encode_put(CID, 5, 0, "user/ann", "z")))
    assert one.events() == [(8, [["put", "user/ann", "z", 1, 5]])] and len(hub) == 1


def test_a_large_batch_of_events_is_split_into_frames_of_about_a_mib(monkeypatch):
    monkeypatch.setattr(watches, "EVENTS_FRAME_BYTES", 1000)
    hub = watches.Watches(collections.defaultdict(int))
    conn = _Conn()
    hub.add(conn, 1, "k", True)
    sm = StateMachine()
    puts = [commands.encode_put(CID, i + 1, 0, f"k{i:02d}", "v" * 100) for i in range(30)]
    hub.deliver(_applied(sm, *puts, commands.encode_delete(CID, 31, 0, "k", prefix=True)))
    frames = conn.events()
    assert len(frames) > 3 and all(len(frame) <= 1000 for frame in conn.frames[:-1])
    flat = [event for _, events in frames for event in events]
    assert [e[1] for e in flat] == [f"k{i:02d}" for i in range(30)] * 2
    assert [e[4] for e in flat] == list(range(1, 31)) + [31] * 30


def test_the_limits_of_watches_per_connection_and_per_node(monkeypatch):
    monkeypatch.setattr(watches, "WATCHES_MAX", 70)
    hub = watches.Watches(collections.defaultdict(int))
    conn, other = _Conn(), _Conn()
    for i in range(watches.WATCHES_PER_CONNECTION_MAX):
        assert hub.add(conn, i, f"k{i}", False) is None
    refusal = hub.add(conn, 999, "k", False)
    assert refusal is not None and refusal.code == wire.BAD_REQUEST and "at most 64" in refusal.message
    assert hub.add(conn, 3, "again", False).code == wire.BAD_REQUEST  # its id is in use
    for i in range(70 - 64):
        assert hub.add(other, i, "x", True) is None
    full = hub.add(other, 100, "x", True)
    assert full is not None and full.code == wire.UNAVAILABLE
    hub.end_all("gone")
    assert len(hub) == 0 and len(conn.frames) == 64


def test_the_wire_form_of_events_and_what_is_refused():
    frame = wire.encode_events_frame(5, [["put", "k", b"v", 2, 9], ["del", "k", None, 0, 10]])
    assert wire.decode_body(frame[4:]) == wire.WatchEvents(id=5, events=[["put", "k", b"v", 2, 9],
                                                                         ["del", "k", None, 0, 10]])
    assert frame == wire.encode_frame(wire.WatchEvents(id=5, events=[["put", "k", b"v", 2, 9],
                                                                     ["del", "k", None, 0, 10]]))
    import cbor2
    for bad in ([], [["put", "k", "v", 1]], [["set", "k", "v", 1, 1]], [["put", 5, "v", 1, 1]],
                [["put", "k", 5, 1, 1]], [["del", "k", "v", 0, 1]], [["put", "k", "v", -1, 1]],
                [["put", "k", "v", 1, 0]], "x"):
        with pytest.raises(wire.WireError):
            wire.decode_body(cbor2.dumps({"t": "ev", "id": 1, "ev": bad}))
    assert wire.decode_body(cbor2.dumps({"t": "watch", "id": 3, "key": "a", "prefix": False})) == \
        wire.WatchRequest(id=3, key="a", prefix=False)
    for bad_watch in ({"t": "watch", "id": 3, "key": 1, "prefix": False}, {"t": "watch", "id": 3, "key": "a"},
                      {"t": "unwatch", "id": 3, "watch": -1}):
        with pytest.raises(wire.WireError):
            wire.decode_body(cbor2.dumps(bad_watch))


def test_the_acl_asks_read_access_for_a_watch():
    rules = acl.parse('[clients.reader]\nread = ["app/"]\n')
    from kvstore.tlsfiles import Principal

    reader = Principal(name="reader", node_id=None)
    assert rules.refusal(reader, wire.WatchRequest(id=1, key="app/x", prefix=False)) is None
    assert rules.refusal(reader, wire.WatchRequest(id=1, key="app/", prefix=True)) is None
    assert "may not watch" in rules.refusal(reader, wire.WatchRequest(id=1, key="", prefix=True))
    assert "may not watch" in rules.refusal(reader, wire.WatchRequest(id=1, key="other", prefix=False))


@pytest.mark.parametrize("engine", ["core", "classic"])
async def test_every_node_reports_the_same_changes_in_order_the_lazy_learner_too(tmp_path, autojump_clock, engine):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, idle_client_timeout_seconds=2.0, engine=engine)
        leader = await cluster.start_all()
        seen: dict[int, list[WatchEvent]] = {i: [] for i in cluster.nodes}
        starts: dict[int, int] = {}
        wanted = 7

        async def watch_on(node_id: int, task_status=trio.TASK_STATUS_IGNORED) -> None:
            async with connect([ENDPOINTS[node_id - 1]], timeout=5, transport=net.transport()) as kv:
                async with kv.watch("app/", prefix=True) as events:
                    starts[node_id] = events.revision
                    task_status.started()
                    async for event in events:
                        seen[node_id].append(event)
                        if len(seen[node_id]) == wanted:
                            return

        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            for i in range(200):  # writes go on: a follower turns lazy learner
                await kv.put(f"warm/{i}", "x")
                lazy = [node_id for node_id, node in cluster.nodes.items() if node.learner.lazy]
                if lazy:
                    break
            assert lazy, "no node turned lazy"
        async with trio.open_nursery() as watching:
            for node_id in cluster.nodes:
                await watching.start(watch_on, node_id)
            assert not cluster.nodes[lazy[0]].learner.lazy  # turned eager by its watch
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
                await trio.sleep(3)  # longer than the idle timeout: the watches' connections stay
                await kv.put("app/a", "1")
                await kv.put("other", "x")  # not watched
                await kv.put("app/b", b"2")
                assert not await kv.cas("app/a", "no", "y")
                assert await kv.cas("app/a", "1", "3")
                await kv.delete("app/b")
                await kv.put("app/c", "4")
                await kv.put("app/d", "5")
                assert await kv.delete_prefix("app/") == 3
                with trio.fail_after(2):  # every node, the lazy learner as well, reports within moments
                    while any(len(events) < wanted for events in seen.values()):
                        await trio.sleep(0.01)
        start = starts[leader]
        expected = [WatchEvent("put", "app/a", "1", 1, start + 1), WatchEvent("put", "app/b", b"2", 1, start + 3),
                    WatchEvent("put", "app/a", "3", 2, start + 5), WatchEvent("del", "app/b", None, 0, start + 6),
                    WatchEvent("put", "app/c", "4", 1, start + 7), WatchEvent("put", "app/d", "5", 1, start + 8),
                    WatchEvent("del", "app/a", None, 0, start + 9)]
        for node_id, events in seen.items():
            assert starts[node_id] <= start, starts  # (a node behind starts from its own revision)
            assert events == expected, node_id
        nursery.cancel_scope.cancel()


async def test_unwatch_ends_a_watch_and_a_bad_one_is_refused(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        node = cluster.nodes[leader]
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            with pytest.raises(RequestError, match="empty"):
                async with kv.watch(""):
                    pass
            stream = await net.transport().connect(*cluster.peers[leader])
            reader = wire.FrameReader(stream)
            await stream.send_all(wire.encode_frame(wire.WatchRequest(id=4, key="k", prefix=False)))
            ok = wire.decode_body((await reader.receive_frames())[0])
            assert isinstance(ok, wire.OkReply) and ok.result["watching"] is True
            assert len(node.watches) == 1
            await kv.put("k", "1")
            got = wire.decode_body((await reader.receive_frames())[0])
            assert isinstance(got, wire.WatchEvents) and got.id == 4 and got.events[0][:3] == ["put", "k", "1"]
            await stream.send_all(wire.encode_frame(wire.UnwatchRequest(id=5, watch=4)))
            done = wire.decode_body((await reader.receive_frames())[0])
            assert isinstance(done, wire.OkReply) and done.id == 5 and done.result == {"cancelled": True}
            assert len(node.watches) == 0
            await kv.put("k", "2")
            await stream.send_all(wire.encode_frame(wire.StatusRequest(id=6)))
            after = wire.decode_body((await reader.receive_frames())[0])
            assert isinstance(after, wire.OkReply) and after.id == 6  # no event came in between
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_node_that_installs_a_snapshot_ends_its_watches(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        follower = next(i for i in cluster.nodes if i != leader)
        node = cluster.nodes[follower]
        async with connect([ENDPOINTS[follower - 1]], timeout=5, transport=net.transport()) as kv:
            async with kv.watch("k") as events:
                with trio.fail_after(5):
                    while len(node.watches) != 1:
                        await trio.sleep(0.01)
                node.learner.install(node.learner.applied_slot, StateMachine.restore(node.learner.sm.snapshot()))
                node.clients.send_replies()
                with pytest.raises(WatchLost, match="installed a snapshot") as lost:
                    with trio.fail_after(10):
                        async for _ in events:
                            pass
                assert lost.value.revision == events.revision
        assert len(node.watches) == 0
        nursery.cancel_scope.cancel()


async def test_a_node_whose_disk_fails_ends_its_watches_and_refuses_new_ones(tmp_path, autojump_clock):
    """A fenced node applies nothing decided after its disk failed: a watch there would wait in silence."""
    from kvstore.client import Unavailable
    from kvstore.storage import StorageError

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        follower = next(i for i in cluster.nodes if i != leader)
        node = cluster.nodes[follower]
        async with connect([ENDPOINTS[follower - 1]], timeout=2, transport=net.transport()) as kv:
            async with kv.watch("k") as events:
                with trio.fail_after(5):
                    while len(node.watches) != 1:
                        await trio.sleep(0.01)
                node._stop_voting(StorageError("injected: fsync failed"))
                with pytest.raises(WatchLost, match="disk failed"):
                    with trio.fail_after(10):
                        async for _ in events:
                            pass
            with pytest.raises(Unavailable, match="reports no changes"):
                async with kv.watch("k"):
                    pass
        assert len(node.watches) == 0
        nursery.cancel_scope.cancel()


async def test_a_removed_node_ends_its_watches(tmp_path, autojump_clock):
    """Nobody sends a removed member the log: a watch there would wait in silence."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        removed = max(i for i in cluster.nodes if i != leader)
        async with connect([ENDPOINTS[removed - 1]], timeout=5, transport=net.transport()) as watcher:
            async with watcher.watch("k", prefix=True) as events:
                async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
                    await kv.put("k1", "before")
                    first = await events.__anext__()
                    assert first[:3] == ("put", "k1", "before")
                    await kv.member_remove(removed)
                    with pytest.raises(WatchLost, match="was removed from the cluster"):
                        with trio.fail_after(10):
                            async for _ in events:
                                pass
        assert len(cluster.nodes[removed].watches) == 0
        nursery.cancel_scope.cancel()
