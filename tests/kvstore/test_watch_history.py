"""Watch history (``kvstore.watches.History``, ``watch`` with ``rev``, ``kv watch --rev``).

How: ``History`` alone, fed what a state machine records (``StateMachine.watch_out``) step by step: what
it keeps, from which revision it is complete, what it drops past its bounds, a reset; the wire form of
a watch from a revision (absent when not set, so an older node sees the request it knows); then three
in-memory nodes (autojump clock): a watch from an earlier revision gets exactly the matching changes
from there, in order, then the live ones; a watch from below what a node keeps is refused with
``compacted`` on every node and the client says so; a watch from above a node's revision drops what is
below it; a watch that lost its node goes on on another from ``revision + 1`` without a change missed or
repeated; a node that installs a snapshot starts its history again; an older node that ignores ``rev``
is not taken for one that replays.
"""
from __future__ import annotations

from functools import partial

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import commands, wire
from kvstore.client import RequestError, Unavailable, WatchEvent, WatchLost, connect
from kvstore.statemachine import StateMachine
from kvstore.watches import History, pairs

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, MemCluster

CID = b"h" * 16


class _Applier:
    """A state machine and a history fed as ``Learner.apply_queued`` feeds them: one step per call."""

    def __init__(self, history: History) -> None:
        self.sm = StateMachine()
        self.history = history
        self.request_id = 0

    def step(self, *writes: tuple) -> None:
        sm = self.sm
        before = sm.revision
        sm.watch_out = []
        nbytes = 0
        for op, key, *rest in writes:
            self.request_id += 1
            rid = self.request_id
            if op == "put":
                command = commands.encode_put(CID, rid, 0, key, rest[0])
            elif op == "cas":
                command = commands.encode_cas(CID, rid, 0, key, rest[0], rest[1])
            else:
                command = commands.encode_delete(CID, rid, 0, key, prefix=bool(rest and rest[0]))
            nbytes += len(command)
            sm.apply(command)
        changes, sm.watch_out = sm.watch_out, None
        self.history.add(before + 1, sm.revision, changes, nbytes)
        return list(pairs(changes))


def _summary(sm: StateMachine, changes) -> list[tuple[str, str, int]]:
    from kvstore.statemachine import entry_mod_revision

    return [(key, "del", change) if isinstance(change, int) else (key, "put", entry_mod_revision(change))
            for key, change in changes]


def test_the_history_keeps_every_change_from_a_revision_and_filters_inside_a_step():
    app = _Applier(History(changes_max=100))
    app.step(("put", "a", "1"), ("put", "b", "2"))           # revisions 1, 2
    app.step(("cas", "a", "wrong", "x"), ("del", "missing"))  # 3, 4: no change
    app.step(("put", "a", "3"), ("del", "b"))                 # 5, 6
    app.step(("put", "c", "4"), ("put", "cd", "5"), ("del", "c", True))  # 7, 8, 9 (c and cd deleted at 9)
    history = app.history
    assert history.complete_from == 1 and history.changes == 8
    assert _summary(app.sm, history.since(1)) == [("a", "put", 1), ("b", "put", 2), ("a", "put", 5), ("b", "del", 6),
                                                  ("c", "put", 7), ("cd", "put", 8), ("c", "del", 9), ("cd", "del", 9)]
    assert _summary(app.sm, history.since(2)) == _summary(app.sm, history.since(1))[1:]  # inside the first step
    assert _summary(app.sm, history.since(3)) == _summary(app.sm, history.since(1))[2:]  # revisions without changes
    assert _summary(app.sm, history.since(9)) == [("c", "del", 9), ("cd", "del", 9)]
    assert history.since(10) == []  # nothing yet from the next revision


def test_past_its_bounds_the_history_drops_whole_steps_and_says_from_where_it_is_complete():
    app = _Applier(History(changes_max=3))
    app.step(("put", "a", "1"), ("put", "b", "2"))  # 1, 2
    app.step(("put", "c", "3"))                     # 3
    assert app.history.complete_from == 1
    app.step(("put", "d", "4"), ("put", "e", "5"))  # 4, 5: 5 changes > 3, the first step goes
    assert app.history.complete_from == 3 and app.history.changes == 3
    assert app.history.since(2) is None  # revision 2's change is gone: refused, not a gap
    assert [key for key, _ in app.history.since(3)] == ["c", "d", "e"]
    by_bytes = _Applier(History(changes_max=100, bytes_max=700))
    by_bytes.step(("put", "a", "x" * 300))  # ~460 bytes: its command and what keeping its change costs
    assert by_bytes.history.complete_from == 1
    by_bytes.step(("put", "b", "y" * 300))  # over 700 bytes together: the first step goes
    assert by_bytes.history.complete_from == 2 and [k for k, _ in by_bytes.history.since(2)] == ["b"]
    huge = _Applier(History(changes_max=2))
    huge.step(*[("put", f"k{i}", "v") for i in range(5)])  # one step over the bound: nothing kept, complete after it
    assert huge.history.complete_from == 6 and huge.history.since(6) == [] and huge.history.since(5) is None


def test_steps_without_a_change_cost_nothing():
    """Only no-op writes (deletes of missing keys): nothing kept, and the history stays complete."""
    app = _Applier(History(changes_max=10))
    for i in range(100):
        app.step(("del", f"missing{i}"))
    assert app.history.changes == 0 and app.history.bytes == 0 and not app.history._steps
    assert app.history.complete_from == 1 and app.history.since(1) == []


def test_a_reset_and_a_history_of_none():
    app = _Applier(History(changes_max=10))
    app.step(("put", "a", "1"))
    app.history.reset(40)  # a snapshot at revision 40 replaced the state
    assert app.history.since(40) is None and app.history.since(41) == [] and app.history.changes == 0
    off = _Applier(History(changes_max=0))
    off.step(("put", "a", "1"), ("put", "b", "2"))
    assert off.history.since(1) is None and off.history.since(3) == [] and off.history.complete_from == 3


def test_the_wire_form_of_a_watch_from_a_revision():
    plain = wire.encode_frame(wire.WatchRequest(id=1, key="k", prefix=False))
    assert b"rev" not in plain  # unchanged for a watch from now on: an older node knows every field
    assert wire.decode_body(plain[4:]).rev is None
    from_rev = wire.encode_frame(wire.WatchRequest(id=1, key="k", prefix=True, rev=17))
    assert wire.decode_body(from_rev[4:]) == wire.WatchRequest(id=1, key="k", prefix=True, rev=17)
    import cbor2
    for bad in (0, -1, "3", 2**64):
        body = cbor2.dumps({"t": "watch", "id": 1, "key": "k", "prefix": False, "rev": bad})
        with pytest.raises(wire.WireError, match="watch.rev"):
            wire.decode_body(body)


async def _collect(kv, key, n, *, prefix=True, rev=None, out=None):
    got = [] if out is None else out
    with trio.fail_after(10):
        async with kv.watch(key, prefix=prefix, rev=rev) as events:
            async for event in events:
                got.append(event)
                if len(got) == n:
                    return got, events.revision
    return got, None


async def test_a_watch_from_an_earlier_revision_gets_the_kept_changes_then_the_new_ones(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        await cluster.start_all()
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            first = await kv.put("app/a", "1")
            await kv.put("other", "x")
            await kv.put("app/b", "2")
            await kv.delete("app/a")
            for node_id in cluster.nodes:  # each node, from its history (or, if it has not applied them yet, live)
                async with connect([ENDPOINTS[node_id - 1]], timeout=5, transport=net.transport()) as one:
                    got, _ = await _collect(one, "app/", 3, rev=first)
                    assert got == [WatchEvent("put", "app/a", "1", 1, first),
                                   WatchEvent("put", "app/b", "2", 1, first + 2),
                                   WatchEvent("del", "app/a", None, 0, first + 3)], node_id
            # the kept changes, then the live ones, nothing between or twice
            live: list[WatchEvent] = []

            async def watch_all(task_status=trio.TASK_STATUS_IGNORED):
                async with kv.watch("app/", prefix=True, rev=first + 2) as events:
                    task_status.started()
                    async for event in events:
                        live.append(event)
                        if len(live) == 4:
                            return
            with trio.fail_after(10):
                async with trio.open_nursery() as watching:
                    await watching.start(watch_all)
                    await kv.put("app/c", "3")
                    await kv.put("app/b", "4")
            assert [(e.kind, e.key, e.mod_revision) for e in live] == [
                ("put", "app/b", first + 2), ("del", "app/a", first + 3),
                ("put", "app/c", first + 4), ("put", "app/b", first + 5)]
        nursery.cancel_scope.cancel()


async def test_a_watch_from_below_what_every_node_keeps_is_refused_compacted(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        # (no lazy learner: one that applied nothing yet would take the watch, and report every change as it
        # applies its backlog)
        cluster = MemCluster(nursery, tmp_path, net, watch_history=3, lazy_learners=False)
        await cluster.start_all()
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            for i in range(10):
                await kv.put(f"k{i}", "v")
            with trio.fail_after(5):  # every node applied them (a node behind would take the watch: it reports
                # every change from its own revision on as it applies, and the client drops those below 2)
                while any(node.learner.sm.revision < 10 for node in cluster.nodes.values()):
                    await trio.sleep(0.05)
            with pytest.raises(RequestError, match="no node keeps the changes from revision 2 on") as refused:
                async with kv.watch("k", prefix=True, rev=2):
                    pass
            assert refused.value.code == wire.COMPACTED
            assert "keeps the changes from revision" in str(refused.value)
            # a node's status says from where a watch may start; from there it is taken
            statuses = [s for s in await kv.cluster_status() if s["reachable"]]
            oldest = min(s["watch_history_from"] for s in statuses)
            got, revision = await _collect(kv, "k", 1, rev=oldest)
            assert got[0].mod_revision == oldest and revision == oldest
        nursery.cancel_scope.cancel()


async def test_a_watch_from_above_a_nodes_revision_drops_what_is_below_it(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        await cluster.start_all()
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            now = await kv.put("a", "0")
            got: list[WatchEvent] = []

            async def watch(task_status=trio.TASK_STATUS_IGNORED):
                # as a client resuming on a node behind the one it watched: revision now + 3 is not here yet
                async with kv.watch("a", rev=now + 3) as events:
                    assert events.revision == now + 2
                    task_status.started()
                    async for event in events:
                        got.append(event)
                        if len(got) == 2:
                            return
            with trio.fail_after(10):
                async with trio.open_nursery() as watching:
                    await watching.start(watch)
                    for value in "12345":
                        await kv.put("a", value)
            assert [(e.value, e.mod_revision) for e in got] == [("3", now + 3), ("4", now + 4)]
        nursery.cancel_scope.cancel()


async def test_a_watch_that_lost_its_node_goes_on_elsewhere_without_a_gap(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        follower = next(i for i in cluster.nodes if i != leader)
        node = cluster.nodes[follower]
        seen: list[WatchEvent] = []
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            async with connect([ENDPOINTS[follower - 1]], timeout=5, transport=net.transport()) as there:
                with pytest.raises(WatchLost, match="ended by the test") as lost:
                    async with there.watch("w/", prefix=True) as events:
                        for i in range(3):
                            await kv.put(f"w/{i}", str(i))
                        async for event in events:
                            seen.append(event)
                            if len(seen) == 3:
                                break
                        node.watches.end_all("ended by the test")
                        node.clients.send_replies()
                        with trio.fail_after(10):
                            async for event in events:
                                seen.append(event)
            assert lost.value.revision == seen[-1].mod_revision
            # more changes while no watch runs; then on from the revision after the last one given out
            await kv.put("w/3", "3")
            await kv.put("other", "x")
            await kv.delete("w/0")
            got, _ = await _collect(kv, "w/", 5, rev=lost.value.revision + 1, out=seen)
        assert [(e.kind, e.key) for e in got] == [("put", "w/0"), ("put", "w/1"), ("put", "w/2"), ("put", "w/3"),
                                                 ("del", "w/0")]
        revisions = [e.mod_revision for e in got]
        assert revisions == sorted(set(revisions))  # in order, none twice
        nursery.cancel_scope.cancel()


async def test_an_older_node_that_ignores_rev_is_not_taken_for_one_that_replays():
    """A node before watch histories answers ok without "from": the client must not take it (it would
    report only the new changes, silently missing those from rev on)."""
    async def older_node(stream):
        reader = wire.FrameReader(stream)
        frames = await reader.receive_frames()
        request = wire.decode_body(frames[0])
        await stream.send_all(wire.encode_frame(wire.OkReply(id=request.id, result={"watching": True, "rev": 9})))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, older_node, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        try:
            async with connect([f"127.0.0.1:{port}"], timeout=2) as kv:
                with pytest.raises(Unavailable, match="keeps no history of changes"):
                    async with kv.watch("k", rev=3):
                        pass
                async with kv.watch("k") as events:  # from now on: taken as before
                    assert events.revision == 9
        finally:
            nursery.cancel_scope.cancel()


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.lists(st.tuples(st.sampled_from(["put", "del", "delp", "cas"]), st.sampled_from("abc"),
                                         st.sampled_from(["1", "2"])), min_size=1, max_size=4), max_size=25),
       changes_max=st.integers(0, 12), asked=st.integers(1, 60))
def test_the_history_agrees_with_every_change_recorded(steps, changes_max, asked):
    """Against a list of every change ever made: what ``since`` gives is exactly the changes at or above
    the revision asked, when it gives anything; it refuses only below where it is complete; and it keeps
    at most its bound (but for one step over it)."""
    app = _Applier(History(changes_max=changes_max))
    every: list[tuple[str, str, int]] = []
    for step in steps:
        writes = [("del", key, True) if op == "delp" else ("cas", key, value, "x") if op == "cas"
                  else ("put", key, value) if op == "put" else ("del", key) for op, key, value in step]
        every.extend(_summary(app.sm, app.step(*writes)))  # (what the state machine recorded, kept or not)
        assert _held(app.history) == 2 * app.history.changes  # (the ring holds the kept changes only)
    got = app.history.since(asked)
    if asked < app.history.complete_from:
        assert got is None
    else:
        assert got is not None
        assert _summary(app.sm, got) == [c for c in every if c[2] >= asked]
    assert app.history.changes <= max(changes_max, max((len(s) * 3 for s in steps), default=0))


@pytest.mark.parametrize("answers", [True, False])
async def test_a_watch_asks_a_silent_node_for_a_sign_of_life_and_ends_if_none_comes(autojump_clock, answers):
    """A paused or hung node keeps the watch's connection open; TCP keepalive alone took about a minute to
    notice, and kv watch waited that long before going on elsewhere. After WATCH_SILENCE_SECONDS of
    silence the watch asks (an ``unwatch`` of no watch); a node that answers keeps it, one that does not
    ends it with WatchLost after as long again."""
    from kvstore.client import WATCH_SILENCE_SECONDS

    asked: list[float] = []

    async def node(stream):
        reader = wire.FrameReader(stream)
        request = wire.decode_body((await reader.receive_frames())[0])
        await stream.send_all(wire.encode_frame(wire.OkReply(id=request.id, result={"watching": True, "rev": 4})))
        while True:
            for body in await reader.receive_frames():
                ping = wire.decode_body(body)
                asked.append(trio.current_time())
                if answers:
                    await stream.send_all(wire.encode_frame(wire.OkReply(id=ping.id, result={"cancelled": False})))

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, node, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        try:
            async with connect([f"127.0.0.1:{port}"], timeout=2) as kv:
                async with kv.watch("k") as events:
                    started = trio.current_time()
                    if answers:
                        with trio.move_on_after(60):
                            async for _ in events:
                                raise AssertionError("no event was sent")
                        assert len(asked) >= 10  # one every WATCH_SILENCE_SECONDS, answered
                    else:
                        with pytest.raises(WatchLost, match="did not answer for 10 s") as lost:
                            async for _ in events:
                                pass
                        assert lost.value.revision == 4 and len(asked) == 1
                        assert trio.current_time() - started == pytest.approx(2 * WATCH_SILENCE_SECONDS, abs=0.5)
        finally:
            nursery.cancel_scope.cancel()


class _Frames:
    """A stand-in FrameReader: each receive gives the next list of frame bodies; then the end."""

    def __init__(self, *batches: list[list]) -> None:
        self.batches = [[wire.encode_frame(wire.WatchEvents(id=1, events=events))[4:] for events in batch]
                        for batch in batches]

    async def receive_frames(self):
        return self.batches.pop(0) if self.batches else []


def _del(key: str, revision: int) -> list:
    return ["del", key, None, 0, revision]


async def _drain(watch) -> tuple[list, WatchLost]:
    got = []
    with pytest.raises(WatchLost) as lost:
        async for event in watch:
            got.append((event.kind, event.key, event.mod_revision))
    return got, lost.value


async def test_a_resumed_watch_does_not_give_out_a_revisions_deletes_twice():
    """QA: a delete (or a prefix delete's deletes) as the last change before a watch was lost counts only
    once a later change shows up, so the watch resumed from that revision, and the node gave them again:
    kv watch printed them twice. The lost watch says which keys of that revision it gave out (``given``)
    and ``watch(resume=lost)`` skips those, also across a second loss before that revision is complete."""
    from kvstore.client import Watch

    first = Watch("n1", _Frames([[["put", "p/a", "1", 1, 3]], [_del("p/a", 5), _del("p/b", 5)]]), 1, 2)
    got, lost = await _drain(first)
    assert got == [("put", "p/a", 3), ("del", "p/a", 5), ("del", "p/b", 5)]
    assert lost.revision == 4 and lost.given == {"p/a", "p/b"}
    # resumed from revision 5 on a node that replays all of it: nothing given out twice ...
    second = Watch("n2", _Frames([[_del("p/a", 5), _del("p/b", 5)]]), 1, 4, skip_given=lost.given)
    got, lost2 = await _drain(second)
    assert got == [] and lost2.revision == 4 and lost2.given == {"p/a", "p/b"}  # (carried over)
    # ... and again, where the rest of revision 5 and later changes come
    third = Watch("n3", _Frames([[_del("p/a", 5), _del("p/b", 5), _del("p/c", 5)], [["put", "p/d", "4", 1, 6]]]),
                  1, 4, skip_given=lost2.given)
    got, lost3 = await _drain(third)
    assert got == [("del", "p/c", 5), ("put", "p/d", 6)] and lost3.revision == 6 and lost3.given == frozenset()


async def test_kv_watchs_resume_skips_what_the_lost_watch_gave_out(tmp_path, autojump_clock):
    """The same through AsyncClient.watch(resume=...) against in-memory nodes: a delete last, then the
    watch lost, then a put."""
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        follower = next(i for i in cluster.nodes if i != leader)
        node = cluster.nodes[follower]
        seen: list[WatchEvent] = []
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            async with connect([ENDPOINTS[follower - 1]], timeout=5, transport=net.transport()) as there:
                with pytest.raises(WatchLost) as lost:
                    async with there.watch("p/", prefix=True) as events:
                        await kv.put("p/a", "1")
                        await kv.delete("p/a")
                        with trio.fail_after(10):
                            async for event in events:
                                seen.append(event)
                                if len(seen) == 2:
                                    node.watches.end_all("ended by the test")
                                    node.clients.send_replies()
            assert lost.value.given == {"p/a"}
            await kv.put("p/b", "2")
            with pytest.raises(ValueError, match="rev or resume"):
                async with kv.watch("p/", prefix=True, rev=3, resume=lost.value):
                    pass
            with trio.fail_after(10):
                async with kv.watch("p/", prefix=True, resume=lost.value) as events:
                    async for event in events:
                        seen.append(event)
                        break
        assert [(e.kind, e.key) for e in seen] == [("put", "p/a"), ("del", "p/a"), ("put", "p/b")]
        nursery.cancel_scope.cancel()


def _held(history: History) -> int:
    return sum(slot is not None for slot in history._ring)


def test_the_ring_lets_go_of_what_it_no_longer_keeps():
    """QA: a dropped step's slots kept their values until the ring came round (50,000 changes later): 1 MiB
    values over ten keys held 500 MiB where the history counted 31 MiB. And a reset lets go of everything
    (it reallocated the ring: 0.1-1.4 s for 10,000,000 changes at each snapshot a lazy learner adopted)."""
    app = _Applier(History(changes_max=1000, bytes_max=8 << 20))
    for i in range(40):
        app.step(("put", f"k{i % 10}", b"v" * (1 << 20)))
    history = app.history
    assert history.changes <= 8 and history.complete_from > 30
    assert _held(history) == 2 * history.changes  # only the kept changes' slots hold anything
    kept_bytes = sum(len(slot) for slot in history._ring if isinstance(slot, bytes))
    assert kept_bytes <= 8 << 20
    history.reset(app.sm.revision)
    assert _held(history) == 0 and history.changes == 0


async def test_a_watch_goes_past_a_first_node_that_does_not_answer(autojump_clock):
    """QA: an attempt that timed out left ``frames`` unset (UnboundLocalError from kv watch and the
    library) or another node's; a paused first node ended every kv watch that moved after a pause. And a
    watch resumed from a lost one asks the node it was lost on last."""
    async def paused(stream):
        await trio.sleep_forever()

    async def answers(stream):
        reader = wire.FrameReader(stream)
        request = wire.decode_body((await reader.receive_frames())[0])
        result = {"watching": True, "rev": 7, **({} if request.rev is None else {"from": request.rev})}
        await stream.send_all(wire.encode_frame(wire.OkReply(id=request.id, result=result)))
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        ports = []
        for handler in (paused, answers, answers):
            listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
            ports.append(listeners[0].socket.getsockname()[1])
        try:
            names = [f"127.0.0.1:{port}" for port in ports]
            async with connect(names[:2], timeout=5) as kv:
                async with kv.watch("k", rev=3) as events:
                    assert events.endpoint == names[1]
            async with connect(names[1:], timeout=5) as kv:
                lost = WatchLost("gone", 7, endpoint=names[1])
                async with kv.watch("k", resume=lost) as events:
                    assert events.endpoint == names[2] and events.revision == 7
        finally:
            nursery.cancel_scope.cancel()


class _Conn:
    """A stand-in connection: the events of each frame it is sent, decoded, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.errors: list[str] = []

    def reply(self, message) -> None:
        raise AssertionError(f"a watch's events go as event frames, not {message!r}")

    def event_frame(self, frame: bytes, body: bytes = b"") -> None:
        message = wire.decode_body((frame + body)[4:])
        if isinstance(message, wire.ErrorReply):
            self.errors.append(message.message)
        else:
            self.events.extend((e[1], e[4]) for e in message.events)


async def test_a_long_replay_goes_in_steps_and_the_live_changes_wait_for_it(monkeypatch):
    """A replay of the whole default history in one step held the node's loop 180-270 ms (QA: 420 ms
    under load), most of an election timeout. Past ``REPLAY_CHANGES_PER_STEP`` changes it goes on in a
    task, a step at a time, and the live changes that come meanwhile are sent after it, in order: the
    watch sees every revision once, in order. A watch cancelled meanwhile gets nothing more."""
    from collections import defaultdict

    from kvstore import watches as watches_module
    from kvstore.watches import Watches

    monkeypatch.setattr(watches_module, "REPLAY_CHANGES_PER_STEP", 4)
    applier = _Applier(History(100, revision=0))
    for i in range(1, 16):
        applier.step(("put", f"k{i % 3}", str(i)))
    counters: dict[str, int] = defaultdict(int)
    watches = Watches(counters)
    watching, cancelled, other = _Conn(), _Conn(), _Conn()
    async with trio.open_nursery() as nursery:
        for conn in (watching, cancelled):
            assert watches.add(conn, 1, "k", True) is None
            watches.replay(conn, 1, applier.history.since(2), nursery.start_soon)
        assert watches.add(other, 1, "k", True) is None  # (live only: not held back)
        assert [r for _, r in watching.events] == [2, 3, 4, 5]  # the first step at once, the rest later
        for i in range(16, 19):  # live changes while the replays go on
            changes = applier.step(("put", f"k{i % 3}", str(i)))
            watches.deliver([x for pair in changes for x in pair])
            if i == 16:
                watches.cancel(cancelled, 1)
            await trio.sleep(0)
    assert [r for _, r in watching.events] == list(range(2, 19))
    assert [r for _, r in cancelled.events] == [2, 3, 4, 5]  # (before its next step: nothing more, nor held)
    assert [r for _, r in other.events] == [16, 17, 18]
    assert counters["watch_replays_in_steps"] == 2 and counters["watch_events_replayed"] == 14 + 4
    # A short replay still goes whole, at once
    quick = _Conn()
    assert watches.add(quick, 2, "k", True) is None
    watches.replay(quick, 2, applier.history.since(16), nursery.start_soon)
    assert [r for _, r in quick.events] == [16, 17, 18]
