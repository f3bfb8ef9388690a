"""Client expiry: a write of a client the cluster forgot is never applied twice.

The dedup table remembers 10,000 clients; a client forgotten beyond that used to have a late retry
applied again. Now client ids carry a stamp (``frames.new_client_id``), the state machine keeps the
newest stamp of the clients it forgot (its horizon, once the feature command switched expiry on), and
refuses a write of an unknown client stamped at or below it (``expired``). A client that never sent that
write before takes a new id above the horizon and sends it again; one that did reports the outcome
unknown.

How: the id format and the feature command alone; the state machine, switched off (the old rules,
byte for byte in its snapshots) and on (a forgotten client's retry refused, a new client served, the
horizon across a snapshot), then a hypothesis run of clients writing, retrying and being forgotten in
any order, checking after every command that no write was applied twice and that every replica (one
restored from a snapshot half way) answers alike; the wire form of ``horizon`` and of the features in a
``Hello``; the two clients against a stand-in node that answers ``expired`` (a write never sent before
goes on under a new id stamped above the horizon, one that was sent before is reported as outcome
unknown); three in-memory nodes that switch expiry on once every member said it has it (and not
while one did not), where a client that 10,000 others pushed out of the table writes again, under a
new id, once.
"""
from __future__ import annotations

import itertools
import threading
import time
from functools import partial
from unittest import mock

import cbor2
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import commands, frames, statemachine, wire
from kvstore.client import Unavailable, connect
from kvstore.oneshot import OneShotClient
from kvstore.statemachine import EXPIRED_CLIENT, StateMachine

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, MemCluster

ON = commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, 1000)


def _id(stamp: int, tail: int = 0) -> bytes:
    """A stamped client id with a chosen stamp (what new_client_id makes, minus the clock)."""
    return frames.CLIENT_ID_TAG + stamp.to_bytes(8, "big") + tail.to_bytes(16, "big")


def _put(client_id: bytes, rq: int, key: str = "k", value: str = "v") -> bytes:
    return commands.encode_put(client_id, rq, rq, key, value)


# -----------------------------------------------------------------------------------------------
# the id and the feature command


def test_a_new_client_id_says_when_it_was_made_and_can_be_drawn_above_a_horizon():
    first = frames.new_client_id()
    assert len(first) == frames.CLIENT_ID_STAMPED_BYTES <= commands.CLIENT_ID_BYTES_MAX
    assert first.startswith(frames.CLIENT_ID_TAG)
    stamp = frames.client_id_stamp(first)
    assert stamp is not None and abs(stamp - time.time() * 1000) < 60_000
    assert frames.new_client_id() != first  # (16 random bytes each)
    later = frames.client_id_stamp(frames.new_client_id(after=stamp + 10**9))
    assert later == stamp + 10**9 + frames.RENEW_STEP_MS  # drawn after a refusal: just above what it named
    # An id made otherwise (older clients: 16 random bytes; anything another client sends) has no stamp
    for other in (b"x" * 16, b"y", _id(5)[:-1], b"kvs\x02" + _id(5)[4:], _id(frames.STAMP_LIMIT)):
        assert frames.client_id_stamp(other) is None, other
    # ... nor has one asked for above the limit: the client goes on unprotected rather than not at all
    assert frames.client_id_stamp(frames.new_client_id(after=frames.STAMP_LIMIT)) is None


def test_the_feature_command_round_trips_and_is_no_write():
    assert commands.decode_feature(ON) == (wire.FEATURE_CLIENT_EXPIRY, 1000)
    with pytest.raises(commands.CommandError, match="unknown command op code"):
        commands.decode_command(ON)  # (an older replica's view of it: malformed, nothing changed)
    assert commands.decode_feature(_put(b"c", 1)) is None
    assert commands.decode_feature(ON + b"\x00") is None  # trailing bytes
    longer = b"\x83\x10" + cbor2.dumps(wire.FEATURE_CLIENT_EXPIRY) + b"\x1b" + (1000).to_bytes(8, "big")
    assert cbor2.loads(longer)[2] == 1000 and commands.decode_feature(longer) is None  # not canonical
    with pytest.raises(ValueError):
        commands.encode_feature("", 1)


# -----------------------------------------------------------------------------------------------
# the state machine


@pytest.fixture
def few_clients():
    with mock.patch.object(statemachine, "CLIENTS_MAX", 3):
        yield 3


def test_while_off_the_old_rules_hold_and_snapshots_are_unchanged(few_clients):
    sm = StateMachine()
    clients = [_id(100 + i, i) for i in range(4)]
    for client_id in clients:
        sm.apply(_put(client_id, 1))
    assert sm.remembered(clients[0]) is None and not sm.expiry_on and sm.horizon == 0
    assert sm.apply(_put(clients[0], 1))[1] == {"rev": 5}  # the documented price, without the feature
    assert sm.snapshot()[:1] == b"\xa5" and "expiry" not in cbor2.loads(sm.snapshot())  # what older nodes read


def test_once_on_a_forgotten_clients_retry_is_refused_and_changes_nothing(few_clients):
    sm = StateMachine()
    assert sm.apply(ON) == (None, {"feature": wire.FEATURE_CLIENT_EXPIRY})
    # (a new cluster: nothing can have been forgotten before, so the horizon starts at 0)
    assert sm.expiry_on and sm.log_time == 1000 and sm.horizon == 0
    assert sm.apply(commands.encode_clock(3500)) == (None, {"clock": 3500})  # (the cluster's clock: stamps up to 5500)
    assert sm.log_time == 3500 and sm.revision == 0
    old = _id(4000, 1)
    assert sm.apply(_put(old, 1, value="first"))[1] == {"rev": 1}
    for i in range(3):
        sm.apply(_put(_id(5000 + i, i), 1, key=f"other{i}"))
    assert sm.remembered(old) is None and sm.horizon == 4000  # forgotten: its stamp is the horizon
    before = (sm.revision, sm.state_hash())
    expired = {"error": EXPIRED_CLIENT, "horizon": 4000}
    assert sm.apply(_put(old, 1, value="retry")) == ((old, 1), expired)  # the retry: not applied again
    assert sm.apply(_put(old, 2)) == ((old, 2), expired)  # nor anything new under that id
    assert sm.apply(commands.encode_cas(old, 3, 3, "k", "first", "x")) == ((old, 3), expired)
    assert (sm.revision, sm.state_hash()) == before and sm.get("k").value == "first"
    assert sm.remembered(old) is None and sm.clients_count() == 3  # (nor was it remembered again)
    # A client it never knew, stamped at the horizon (a clock behind), is refused too; above it, served
    assert sm.apply(_put(_id(4000, 9), 1))[1] == expired
    assert sm.apply(_put(_id(4001, 9), 1))[1] == {"rev": 5}
    # Ids without a stamp are never refused (older clients), and do not move the horizon when forgotten
    for i in range(4):
        assert "rev" in sm.apply(_put(bytes([i]) * 16, 1))[1]
    assert sm.horizon == 5002


def test_the_feature_command_applies_once_and_unknown_features_change_nothing():
    sm = StateMachine()
    sm.apply(ON)
    assert sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, 99_999))[1] == {
        "feature": wire.FEATURE_CLIENT_EXPIRY}
    assert (sm.horizon, sm.log_time) == (0, 1000)  # (a second one, from a later leader, moves nothing)
    other = StateMachine()
    assert other.apply(commands.encode_feature("time-travel", 5)) == (
        None, {"error": "malformed command: unknown feature 'time-travel'"})
    assert not other.expiry_on and other.horizon == 0


def test_the_horizon_and_the_switch_survive_a_snapshot(few_clients):
    sm = StateMachine()
    sm.apply(ON)
    sm.apply(commands.encode_clock(4000))
    for i in range(5):
        sm.apply(_put(_id(5000 + i, i), 1))
    restored = StateMachine.restore(sm.snapshot())
    assert restored.expiry_on and restored.horizon == sm.horizon == 5001
    assert restored.snapshot() == sm.snapshot()
    assert restored.apply(_put(_id(5001, 1), 1))[1]["error"] == EXPIRED_CLIENT
    with sm.freeze() as frozen:  # (a snapshot streamed while writes go on: the horizon as of the freeze)
        sm.apply(_put(_id(6000), 1))
        assert cbor2.loads(b"".join(frozen.chunks()))["expiry"] == [5001, 4000, []]
    for bad in (-1, "5", 2**64, None):
        top = cbor2.loads(sm.snapshot())
        top["expiry"] = bad
        with pytest.raises(statemachine.SnapshotError, match="expiry"):
            StateMachine.restore(cbor2.dumps(top))


def test_a_new_client_stamped_far_ahead_of_the_clusters_clock_is_refused():
    """The cluster's clock (the switch's stamp, then each clock command's, which the leader proposes
    before a new client's write): a new client stamped more than STAMP_AHEAD_MS above it is refused,
    unless it is at most RENEW_ROOM_MS above the horizon (an id drawn after a refusal, RENEW_STEP_MS above
    what it named, always passes). Checked as every replica applies the write (QA: a leader's check on
    arrival missed writes that arrived before the switch applied; a forged stamp 2**62 - 1 got in)."""
    sm = StateMachine()
    now = 10**12
    top = now + frames.STAMP_AHEAD_MS
    far = _id(top + 1, 1)
    sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, now))
    refused = {"error": EXPIRED_CLIENT, "horizon": now}
    for client_id in (far, _id(frames.STAMP_LIMIT - 1, 2)):
        assert sm.apply(_put(client_id, 1))[1] == refused
    assert sm.revision == 0 and sm.clients_count() == 0
    assert sm.apply(_put(_id(top, 3), 1))[1] == {"rev": 1}  # (at the bound: in)
    sm.apply(commands.encode_clock(now + 1))
    assert sm.apply(_put(far, 1))[1] == {"rev": 2}  # the clock moved on: in
    sm.apply(commands.encode_clock(now))  # (the clock never goes back)
    assert sm.log_time == now + 1
    assert sm.apply(_put(b"x" * 16, 1))[1] == {"rev": 3}  # (unstamped: never refused)
    sm.horizon = now + 50_000  # (ahead of the clock: clients of a fast machine forgotten)
    renewed = frames.new_client_id(after=max(sm.horizon, sm.log_time))
    assert sm.apply(_put(renewed, 1))[1] == {"rev": 4}
    beyond = _id(sm.horizon + frames.RENEW_ROOM_MS + 1, 4)
    assert sm.apply(_put(beyond, 1))[1] == {"error": EXPIRED_CLIENT, "horizon": now + 50_000}
    off = StateMachine()  # (off: anything goes, as before)
    assert off.apply(_put(_id(frames.STAMP_LIMIT - 1, 5), 1))[1] == {"rev": 1}
    assert off.apply(commands.encode_clock(now)) == (None, {"clock": now}) and off.log_time == 0


def test_switching_on_forgets_the_clients_stamped_far_ahead_of_the_switch(few_clients):
    """Clients taken while expiry was off were never checked on arrival: one stamped far ahead would move
    the horizon there once forgotten (QA: a forged 2**62 - 1 written during a rolling upgrade). The
    switch forgets them (and bans them), and leaves the horizon where it starts."""
    sm = StateMachine()
    switch = 10**12
    forged, fast, fine = _id(frames.STAMP_LIMIT - 1, 1), _id(switch + frames.STAMP_AHEAD_MS + 1, 2), _id(switch, 3)
    for client_id in (forged, fast, fine):
        sm.apply(_put(client_id, 1))
    assert sm.clients_count() == 3 and sm.results_count() == 3
    sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, switch))
    assert sm.remembered(forged) is None and sm.remembered(fast) is None and sm.remembered(fine) == (1, [1])
    assert sm.horizon == 0 and sm.results_count() == 1  # (3 writes: none can have been forgotten)
    for i in range(few_clients):  # (the one left is forgotten as usual: its stamp is the horizon)
        assert "rev" in sm.apply(_put(_id(switch + 1 + i, 10 + i), 1))[1]
    assert sm.remembered(fine) is None and sm.horizon == switch
    # ... and banned: a late retry of theirs is refused even once the clock has caught up with their stamps
    # (QA: a client 25 s ahead, forgotten at the switch, had its retry applied again 17 s later)
    sm.apply(commands.encode_clock(switch + 10**6))
    revision = sm.revision
    for client_id in (fast, forged):
        assert sm.apply(_put(client_id, 1))[1]["error"] == EXPIRED_CLIENT
    assert sm.revision == revision
    restored = StateMachine.restore(sm.snapshot())
    assert restored.snapshot() == sm.snapshot()
    assert restored.apply(_put(fast, 1))[1]["error"] == EXPIRED_CLIENT
    top = cbor2.loads(sm.snapshot())
    assert top["expiry"] == [switch, switch + 10**6, sorted([forged, fast])]
    for bad in ([1, 2], [1, 2, [b"short"]], [1, 2, sorted([fast, forged])[::-1]], [1, -2, []], [1, 2, [fast, fast]]):
        with pytest.raises(statemachine.SnapshotError, match="expiry"):
            StateMachine.restore(cbor2.dumps({**top, "expiry": bad}))


def test_the_horizon_starts_at_the_switch_only_if_a_client_can_have_been_forgotten_before(few_clients):
    """At the switch the horizon starts at the switch's stamp, which covers the clients forgotten before;
    but at 0 while the revision is CLIENTS_MAX or less (none can have been: a client joins the table with a
    write it executes), so that a new cluster does not refuse the clients made in its first moments (a
    write of one retried across the switch would then say its outcome was unknown)."""
    switch = 10**12
    early = _id(switch - 5, 1)  # (made before the switch, writes after it)
    new = StateMachine()
    new.apply(_put(_id(switch - 9, 9), 1))
    new.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, switch))
    assert new.horizon == 0 and new.apply(_put(early, 1))[1] == {"rev": 2}
    old = StateMachine()
    forgotten = _id(switch - 100, 2)
    old.apply(_put(forgotten, 1))
    for i in range(few_clients):
        old.apply(_put(_id(switch - 90 + i, 10 + i), 1))
    assert old.remembered(forgotten) is None and old.revision == few_clients + 1
    old.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, switch))
    assert old.horizon == switch
    assert old.apply(_put(forgotten, 1))[1] == {"error": EXPIRED_CLIENT, "horizon": switch}
    assert old.apply(_put(early, 1))[1]["error"] == EXPIRED_CLIENT  # (it draws a new id, once)


# Ops: a write of client i (a new client, its clock skewed by some ms or far ahead, if there are not i yet),
# a retry of one of client i's writes, a clock command (the leader's clock), a replica restarted from its
# snapshot.
_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 6), st.integers(-3, 3) | st.just(frames.STAMP_AHEAD_MS + 50)),
    st.tuples(st.just("retry"), st.integers(0, 6), st.integers(0, 4)),
    st.tuples(st.just("clock"), st.integers(0, 3000), st.just(0)),
    st.tuples(st.just("snapshot"), st.just(0), st.just(0)),
), max_size=80)


@settings(max_examples=400, deadline=None)
@given(ops=_ops, switch_at=st.integers(0, 6))
def test_no_write_is_applied_twice_however_clients_are_forgotten(ops, switch_at):
    """Replay: the ops are drawn by hypothesis (a failure prints them). After every command: once the
    feature is on, no write is applied that was applied before, whenever (while off too), but for the one
    gap the rules leave: a client forgotten while it was off, stamped above the switch (a clock ahead);
    a refusal changes nothing; a replica restored from a snapshot at any point answers every later
    command exactly as the one that never restarted."""
    with mock.patch.object(statemachine, "CLIENTS_MAX", 2):
        one, two = StateMachine(), StateMachine()
        clock = 100
        clients: list[tuple[bytes, list[int]]] = []  # (id, request ids sent)
        applied: dict[tuple[bytes, int], int] = {}  # identity -> times a write of it was applied
        gap: set[bytes] = set()  # clients the rules do not protect (see above)
        for step, (kind, i, n) in enumerate(ops):
            if step == switch_at:
                command = commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, clock)
                gap = {c for c, sent in clients if sent and one.remembered(c) is None
                       and frames.client_id_stamp(c) > clock}
            elif kind == "clock":
                clock += i
                command = commands.encode_clock(clock)
            elif kind == "snapshot":
                two = StateMachine.restore(two.snapshot())
                continue
            elif kind == "write":
                if i >= len(clients):
                    clock += 1
                    clients.append((_id(clock + n, len(clients)), []))
                    i = len(clients) - 1
                client_id, sent = clients[i]
                sent.append(len(sent) + 1)
                command = _put(client_id, sent[-1], value=f"{step}")
            else:
                if i >= len(clients) or not clients[i][1]:
                    continue
                client_id, sent = clients[i]
                command = _put(client_id, sent[n % len(sent)], value=f"{step}")
            revision = one.revision
            identity, result = one.apply(command)
            assert two.apply(command) == (identity, result), step
            assert two.revision == one.revision and two.state_hash() == one.state_hash()
            executed = one.revision == revision + 1
            if executed:
                assert result == {"rev": one.revision}
            if result.get("error") == EXPIRED_CLIENT:
                assert not executed and result["horizon"] == max(one.horizon, one.log_time)
            if executed:
                applied[identity] = applied.get(identity, 0) + 1
                if one.expiry_on and identity[0] not in gap:
                    assert applied[identity] == 1, f"applied again: {identity} at step {step}"
        assert one.snapshot() == two.snapshot()


# -----------------------------------------------------------------------------------------------
# the wire


def test_the_wire_carries_the_horizon_and_the_features():
    reply = wire.ErrorReply(id=3, code=wire.EXPIRED, message="forgot", leader=None, horizon=2**40)
    frame = wire.encode_frame(reply)
    assert wire.decode_body(frame[4:]) == reply
    assert frames.decode_reply(frame[4:]).horizon == 2**40
    plain = wire.encode_frame(wire.ErrorReply(id=3, code=wire.STALE, message="m", leader=None))
    assert b"horizon" not in plain and frames.decode_reply(plain[4:]).horizon == 0  # (older clients: as before)
    with pytest.raises(wire.WireError, match="horizon"):
        frames.decode_reply(cbor2.dumps({"t": "err", "id": 1, "code": "expired", "msg": "", "leader": None,
                                         "horizon": -1}))
    hello = wire.Hello(node_id=2, cluster_id="c", features=wire.FEATURES)
    assert wire.decode_body(wire.encode_frame(hello)[4:]) == hello
    older = wire.encode_frame(wire.Hello(node_id=2, cluster_id="c"))
    assert b"feat" not in older and wire.decode_body(older[4:]).features == ()
    for bad in ("x", [1], ["x"] * 33, [""]):
        with pytest.raises(wire.WireError, match="feat"):
            wire.decode_body(cbor2.dumps({"t": "hello", "node": 2, "cluster": "c", "feat": bad}))


# -----------------------------------------------------------------------------------------------
# the clients, against a stand-in node


class _StandIn:
    """A node that answers writes from a script: "expired" (horizon 10**13), "silence" (no answer: the
    client gives the attempt up), or "ok". Records the (client id, request id) of every write it read."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.seen: list[tuple[bytes, int]] = []

    async def serve(self, stream) -> None:
        reader = wire.FrameReader(stream)
        try:
            while True:
                for frame in await reader.receive_frames():
                    request = wire.decode_body(frame)
                    self.seen.append((request.client_id, request.request_id))
                    answer = self.script.pop(0) if self.script else "ok"
                    if answer == "expired":
                        reply = wire.ErrorReply(id=request.id, code=wire.EXPIRED, message="forgot you",
                                                leader=None, horizon=10**13)
                    elif answer == "ok":
                        reply = wire.OkReply(id=request.id, result={"rev": 7})
                    else:
                        continue
                    await stream.send_all(wire.encode_frame(reply))
        except (trio.BrokenResourceError, trio.ClosedResourceError, wire.WireError):
            pass


async def _with_stand_in(script, body):
    stand_in = _StandIn(script)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, stand_in.serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        try:
            await body(f"127.0.0.1:{port}")
        finally:
            nursery.cancel_scope.cancel()
    return stand_in.seen


@pytest.mark.parametrize("how", ["await", "submit", "blocking"])
async def test_a_write_never_sent_before_goes_on_under_a_new_id_above_the_horizon(how):
    results = []

    async def body(endpoint):
        if how == "blocking":
            def blocking():
                with OneShotClient([endpoint], timeout=5) as kv:
                    results.append(kv.put("k", "v"))
            await trio.to_thread.run_sync(blocking)
            return
        async with connect([endpoint], timeout=5) as kv:
            if how == "await":
                results.append(await kv.put("k", "v"))
            else:
                done = trio.Event()
                kv.submit_put("k", "v", lambda outcome: (results.append(outcome), done.set()))
                with trio.fail_after(5):
                    await done.wait()
            assert kv.client_id_renewals == 1
    seen = await _with_stand_in(["expired", "ok"], body)
    assert results == [7]
    (first, rq1), (second, rq2) = seen
    assert rq1 == rq2 and first != second  # the same write, under a new client id ...
    assert frames.client_id_stamp(second) == 10**13 + frames.RENEW_STEP_MS  # ... stamped above the horizon named


@pytest.mark.parametrize("how", ["await", "blocking"])
async def test_a_write_sent_before_that_comes_back_expired_is_reported_as_outcome_unknown(how):
    errors = []

    async def body(endpoint):
        if how == "blocking":
            def blocking():
                with OneShotClient([endpoint], timeout=3) as kv:  # (1 s for the unanswered attempt)
                    try:
                        kv.put("k", "v")
                    except Unavailable as exc:
                        errors.append(exc)
            await trio.to_thread.run_sync(blocking)
            return
        async with connect([endpoint], timeout=3) as kv:
            with pytest.raises(Unavailable) as caught:
                await kv.put("k", "v")
            errors.append(caught.value)
            assert kv.client_id_renewals == 0
    seen = await _with_stand_in(["silence", "expired"], body)
    (error,) = errors
    assert error.outcome_unknown and str(error) == frames.EXPIRED_IN_DOUBT
    assert len(seen) == 2 and seen[0] == seen[1]  # a retry of the same write, under its own id both times


async def test_a_clock_far_behind_gives_up_after_a_few_new_ids():
    async def body(endpoint):
        async with connect([endpoint], timeout=5) as kv:
            with pytest.raises(Unavailable, match="refused this write as from a client it forgot 3 times") as caught:
                await kv.put("k", "v")
            assert not caught.value.outcome_unknown  # (never applied: every attempt was refused)
    seen = await _with_stand_in(["expired"] * 3, body)
    assert len({client_id for client_id, _ in seen}) == 3


# -----------------------------------------------------------------------------------------------
# three in-memory nodes


async def _wait_all(cluster, check, seconds=20):
    with trio.fail_after(seconds):
        while not all(check(node) for node in cluster.nodes.values()):
            await trio.sleep(0.05)


async def test_the_cluster_switches_expiry_on_and_a_forgotten_client_writes_again_once(
        tmp_path, autojump_clock, few_clients):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        await cluster.start_all()
        await _wait_all(cluster, lambda node: node.status()["client_expiry"])
        horizons = {node.status()["client_expiry_horizon"] for node in cluster.nodes.values()}
        assert horizons == {0}  # (a new cluster: nothing can have been forgotten)
        stamps = itertools.count(time.time_ns() // 10**6 - 60_000)  # (made a minute ago, in this order)
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            kv.client_id = first_id = _id(next(stamps), 1)
            await kv.put("mine", "1")
            others = []
            for i in range(few_clients):  # newer clients push it out of every replica's table
                async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as other:
                    other.client_id = _id(next(stamps), 100 + i)
                    await other.put(f"other{i}", "x")
                    others.append(other.client_id)
            revision = await kv.put("mine", "2")  # refused as expired, then under a new id: applied once
            assert kv.client_id != first_id and kv.client_id_renewals == 1
            assert await kv.get_entry("mine") == (("mine", "2", 2, revision))
            assert revision == few_clients + 2
        await _wait_all(cluster, lambda node: node.sm.revision == revision)
        # (its first id, then the first of the others when its new id came in)
        horizon = frames.client_id_stamp(others[0])
        assert {node.sm.horizon for node in cluster.nodes.values()} == {horizon}
        leader = cluster.nodes[await cluster.wait_leader()]
        assert leader.waiters.requests["put", "expired"] == 1
        # A new client whose clock is far behind: refused once, then stamped above the horizon and the
        # cluster's clock (which the leader proposed before this new client's write)
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as behind:
            behind.client_id = _id(5, 1)
            before = time.time_ns() // 1_000_000
            await behind.put("behind", "1")
            assert behind.client_id_renewals == 1
            renewed = frames.client_id_stamp(behind.client_id)
            assert renewed == max(horizon, leader.sm.log_time) + frames.RENEW_STEP_MS
            assert leader.sm.log_time >= before - 1_000  # (the cluster's clock, a second old at most)
        # One far ahead (a clock an hour fast, or forged) is refused as every replica applies it, so it never
        # reaches the table nor moves the horizon; it goes on at the cluster's clock
        for stamp in (before + 3_600_000, frames.STAMP_LIMIT - 1):
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as ahead:
                ahead.client_id = _id(stamp, 2)
                await ahead.put("ahead", str(stamp))
                assert ahead.client_id_renewals == 1
                assert before - 1_000 <= frames.client_id_stamp(ahead.client_id) < before + 60_000
        assert leader.waiters.requests["put", "expired"] == 4
        for i in range(few_clients + 1):  # ... not even once forgotten: its stamp never reached the table
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as other:
                await other.put(f"later{i}", "x")
        assert leader.sm.horizon < before + 60_000
        nursery.cancel_scope.cancel()


async def test_the_leader_gives_the_cluster_its_clock_before_a_new_clients_write(tmp_path, autojump_clock):
    """New clients' stamps are checked against the cluster's clock, which the leader proposes (a clock
    command) before the write of a client new to it when the last is more than CLOCK_REFRESH_MS old: a
    client stamped by a clock that moved on since the switch is taken at once, not refused as ahead."""
    from types import SimpleNamespace

    from kvstore import server as server_module

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = cluster.nodes[await cluster.start_all()]
        await _wait_all(cluster, lambda node: node.sm.expiry_on)
        later = time.time_ns() + 3_600 * 10**9  # (the leader's clock, an hour on)
        with mock.patch.object(server_module, "time", SimpleNamespace(time_ns=lambda: later)):
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
                kv.client_id = _id(later // 10**6 - 1_000, 1)  # (made a second before)
                await kv.put("k", "v")
                assert kv.client_id_renewals == 0
            assert leader.sm.log_time == later // 10**6
            await _wait_all(cluster, lambda node: node.sm.log_time == later // 10**6)
        nursery.cancel_scope.cancel()


async def test_expiry_stays_off_while_a_member_does_not_say_it_has_it(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        with mock.patch.object(wire, "FEATURES", ()):  # every node as an older one: no feature on any link
            cluster = MemCluster(nursery, tmp_path, net)
            await cluster.start_all()
            await trio.sleep(15)
            assert not any(node.status()["client_expiry"] for node in cluster.nodes.values())
        nursery.cancel_scope.cancel()


def test_the_blocking_clients_threads_each_draw_a_stamped_id():
    client = OneShotClient(["127.0.0.1:1"], timeout=1)
    ids = [client.sibling().client_id for _ in range(3)] + [client.client_id]
    assert len(set(ids)) == 4 and all(frames.client_id_stamp(i) is not None for i in ids)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(client.sibling().client_id))
    thread.start()
    thread.join()
    assert frames.client_id_stamp(seen[0]) is not None
    client.close()
