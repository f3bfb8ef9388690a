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
    assert sm.expiry_on and sm.horizon == 1000 and sm.revision == 0
    old = _id(2000, 1)
    assert sm.apply(_put(old, 1, value="first"))[1] == {"rev": 1}
    for i in range(3):
        sm.apply(_put(_id(3000 + i, i), 1, key=f"other{i}"))
    assert sm.remembered(old) is None and sm.horizon == 2000  # forgotten: its stamp is the horizon
    before = (sm.revision, sm.state_hash())
    expired = {"error": EXPIRED_CLIENT, "horizon": 2000}
    assert sm.apply(_put(old, 1, value="retry")) == ((old, 1), expired)  # the retry: not applied again
    assert sm.apply(_put(old, 2)) == ((old, 2), expired)  # nor anything new under that id
    assert sm.apply(commands.encode_cas(old, 3, 3, "k", "first", "x")) == ((old, 3), expired)
    assert (sm.revision, sm.state_hash()) == before and sm.get("k").value == "first"
    assert sm.remembered(old) is None and sm.clients_count() == 3  # (nor was it remembered again)
    # A client it never knew, stamped at the horizon (a clock behind), is refused too; above it, served
    assert sm.apply(_put(_id(2000, 9), 1))[1] == expired
    assert sm.apply(_put(_id(2001, 9), 1))[1] == {"rev": 5}
    # Ids without a stamp are never refused (older clients), and do not move the horizon when forgotten
    for i in range(4):
        assert "rev" in sm.apply(_put(bytes([i]) * 16, 1))[1]
    assert sm.horizon == 3002


def test_the_feature_command_applies_once_and_unknown_features_change_nothing():
    sm = StateMachine()
    sm.apply(ON)
    assert sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, 99_999))[1] == {
        "feature": wire.FEATURE_CLIENT_EXPIRY}
    assert sm.horizon == 1000  # (a second one, from a later leader, does not move it)
    other = StateMachine()
    assert other.apply(commands.encode_feature("time-travel", 5)) == (
        None, {"error": "malformed command: unknown feature 'time-travel'"})
    assert not other.expiry_on and other.horizon == 0


def test_the_horizon_and_the_switch_survive_a_snapshot(few_clients):
    sm = StateMachine()
    sm.apply(ON)
    for i in range(5):
        sm.apply(_put(_id(5000 + i, i), 1))
    restored = StateMachine.restore(sm.snapshot())
    assert restored.expiry_on and restored.horizon == sm.horizon == 5001
    assert restored.snapshot() == sm.snapshot()
    assert restored.apply(_put(_id(5001, 1), 1))[1]["error"] == EXPIRED_CLIENT
    with sm.freeze() as frozen:  # (a snapshot streamed while writes go on: the horizon as of the freeze)
        sm.apply(_put(_id(6000), 1))
        assert cbor2.loads(b"".join(frozen.chunks()))["expiry"] == 5001
    for bad in (-1, "5", 2**64, None):
        top = cbor2.loads(sm.snapshot())
        top["expiry"] = bad
        with pytest.raises(statemachine.SnapshotError, match="expiry"):
            StateMachine.restore(cbor2.dumps(top))


def test_the_leaders_check_on_arrival_bounds_how_far_ahead_the_horizon_can_get():
    """``stamp_too_far_ahead`` (the leader, before it proposes): a new client stamped more than
    STAMP_AHEAD_MS above the leader's clock is refused, unless it is at most RENEW_ROOM_MS above the
    horizon (an id drawn after a refusal, RENEW_STEP_MS above it, always passes); known clients,
    unstamped ids and a cluster with expiry off are never refused so (QA: a forged stamp 2**62 - 1)."""
    sm = StateMachine()
    now = 10**12
    far = _id(now + frames.STAMP_AHEAD_MS + 1)
    assert sm.stamp_too_far_ahead(far, lambda: now) is None  # (off: anything goes, as before)
    sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, now))
    assert sm.stamp_too_far_ahead(_id(now + frames.STAMP_AHEAD_MS), lambda: now) is None
    assert sm.stamp_too_far_ahead(far, lambda: now) == now  # (draw above the leader's clock)
    assert sm.stamp_too_far_ahead(_id(frames.STAMP_LIMIT - 1), lambda: now) == now
    assert sm.stamp_too_far_ahead(b"x" * 16, lambda: now) is None
    sm.horizon = now + 50_000  # (ahead of the clock: clients of a fast machine forgotten)
    renewed = frames.new_client_id(after=max(sm.horizon, now))
    assert sm.stamp_too_far_ahead(renewed, lambda: now) is None
    assert sm.stamp_too_far_ahead(_id(sm.horizon + frames.RENEW_ROOM_MS + 1), lambda: now) == sm.horizon
    sm.apply(_put(far, 1))  # (known: not refused however it is stamped)
    assert sm.stamp_too_far_ahead(far, lambda: now) is None


def test_switching_on_forgets_the_clients_stamped_far_ahead_of_the_switch(few_clients):
    """Clients taken while expiry was off were never checked on arrival: one stamped far ahead would move
    the horizon there once forgotten (QA: a forged 2**62 - 1 written during a rolling upgrade). The
    switch forgets them, and leaves the horizon where it starts."""
    sm = StateMachine()
    switch = 10**12
    forged, fast, fine = _id(frames.STAMP_LIMIT - 1, 1), _id(switch + frames.STAMP_AHEAD_MS + 1, 2), _id(switch, 3)
    for client_id in (forged, fast, fine):
        sm.apply(_put(client_id, 1))
    assert sm.clients_count() == 3 and sm.results_count() == 3
    sm.apply(commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, switch))
    assert sm.remembered(forged) is None and sm.remembered(fast) is None and sm.remembered(fine) == (1, [1])
    assert sm.horizon == switch and sm.results_count() == 1
    for i in range(few_clients):  # (the one left is forgotten as usual: its stamp is the horizon)
        sm.apply(_put(_id(switch + 1 + i, 10 + i), 1))
    assert sm.horizon == switch
    restored = StateMachine.restore(sm.snapshot())
    assert restored.snapshot() == sm.snapshot()


# Ops: a write of client i (a new client, its clock skewed by some ms, if there are not i yet), a retry of
# one of client i's writes, a replica restarted from its snapshot.
_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.integers(0, 6), st.integers(-3, 3)),
    st.tuples(st.just("retry"), st.integers(0, 6), st.integers(0, 4)),
    st.tuples(st.just("snapshot"), st.just(0), st.just(0)),
), max_size=80)


@settings(max_examples=400, deadline=None)
@given(ops=_ops, switch_at=st.integers(0, 6))
def test_no_write_is_applied_twice_however_clients_are_forgotten(ops, switch_at):
    """Replay: the ops are drawn by hypothesis (a failure prints them). After every command: no write
    applied twice once the feature is on; a refusal changes nothing; a replica restored from a snapshot
    at any point answers every later command exactly as the one that never restarted."""
    with mock.patch.object(statemachine, "CLIENTS_MAX", 2):
        one, two = StateMachine(), StateMachine()
        clock = 100
        clients: list[tuple[bytes, list[int]]] = []  # (id, request ids sent)
        applied: dict[tuple[bytes, int], int] = {}  # identity -> times a write of it was applied (while on)
        for step, (kind, i, n) in enumerate(ops):
            if step == switch_at:
                command = commands.encode_feature(wire.FEATURE_CLIENT_EXPIRY, clock)
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
                assert not executed and result["horizon"] == one.horizon
            if executed and one.expiry_on:
                applied[identity] = applied.get(identity, 0) + 1
                assert applied[identity] == 1, f"applied twice: {identity} at step {step}"
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
        assert len(horizons) == 1
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
            first_id = kv.client_id
            await kv.put("mine", "1")
            others = []
            for i in range(few_clients):  # newer clients push it out of every replica's table
                async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as other:
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
        # A new client whose clock is far behind: refused once, then stamped at the node's clock (not just
        # above the horizon, which moves with the time itself while many new clients come: QA)
        async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as behind:
            behind.client_id = _id(5, 1)
            before = time.time_ns() // 1_000_000
            await behind.put("behind", "1")
            assert behind.client_id_renewals == 1 and frames.client_id_stamp(behind.client_id) > before > horizon
        # One far ahead (a clock an hour fast, or forged) is refused on arrival, before it is proposed, so
        # it never moves the horizon; it goes on at the leader's clock
        for stamp in (before + 3_600_000, frames.STAMP_LIMIT - 1):
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as ahead:
                ahead.client_id = _id(stamp, 2)
                await ahead.put("ahead", str(stamp))
                assert ahead.client_id_renewals == 1
                assert before <= frames.client_id_stamp(ahead.client_id) < before + 60_000
        assert leader.waiters.requests["put", "expired"] == 4
        for i in range(few_clients + 1):  # ... not even once forgotten: its stamp never reached the table
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as other:
                await other.put(f"later{i}", "x")
        assert leader.sm.horizon < before + 60_000
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
