"""``kvstore.waiters.Waiters``: the requests waiting on a node, without a node.

How: a ``Waiters`` with a fake connection that records what it is answered (decoded from the frames
it is given), a real ``StateMachine`` for reads, and times passed in by hand (no trio run). Checks:

* deadlines: a write or a linearizable read past its deadline is answered ``timeout`` and forgotten,
  one still within it is kept, and the waiters are scanned at most every ``EXPIRY_SCAN_SECONDS``;
* deferred reads: a confirmed read whose slot the state machine has not applied waits for it and is
  then answered from the state as of that apply; serializable (local) reads alike;
* giving up: a node turning lazy learner fails waiting writes and deferred reads with ``not_leader``
  (and its leader hint) and keeps the rest; a disk fence answers every write (outcome unknown) and
  linearizable read, and keeps serializable reads; a dropped proposal's writers get ``not_leader``;
* the result replies: a result, a stale retry and a bad command.
"""
from __future__ import annotations

from kvstore import commands, wire
from kvstore.events import Proposal
from kvstore.statemachine import STALE_REQUEST, StateMachine
from kvstore.waiters import EXPIRY_SCAN_SECONDS, Waiters, read_reply, reply_result

TIMEOUT_S = 5.0
CID = b"client-1"


class FakeConn:
    """A ``ClientConn`` stand-in: keeps every answer, decoded like the client would."""

    def __init__(self) -> None:
        self.answers: list = []

    def reply(self, message) -> None:
        self.reply_frame(wire.encode_frame(message))

    def reply_frame(self, frame: bytes) -> None:
        self.answers.append(wire.decode_body(frame[wire.HEADER_BYTES:]))

    def reply_read(self, sm, request) -> None:
        self.reply(read_reply(sm, request))


def _waiters(hint: str | None = "n2:7002") -> tuple[Waiters, dict]:
    counters: dict = {"writes_expired": 0}
    return Waiters(TIMEOUT_S, lambda: hint, counters), counters


def _put(conn, request_id: int, wire_id: int, key: str = "k") -> Proposal:
    command, decoded = commands.encode_write(wire.PutRequest(
        id=wire_id, key=key, value="v", client_id=CID, request_id=request_id, ack_below=0))
    return Proposal(command, decoded, (CID, request_id), conn, wire_id)


def _get(wire_id: int, key: str = "k") -> wire.GetRequest:
    return wire.GetRequest(id=wire_id, key=key, linearizable=True)


def _codes(conn) -> list:
    return [(a.id, getattr(a, "code", "ok")) for a in conn.answers]


def test_a_write_past_its_deadline_is_answered_timeout_and_forgotten():
    waiters, counters = _waiters()
    conn = FakeConn()
    waiters.add_write(_put(conn, 1, wire_id=10), now=0.0)
    waiters.add_write(_put(conn, 2, wire_id=11), now=1.0)  # deadline 6.0
    waiters.expire(TIMEOUT_S)  # exactly at the first deadline: not past it
    assert conn.answers == []
    waiters.expire(TIMEOUT_S + EXPIRY_SCAN_SECONDS + 0.01)
    assert _codes(conn) == [(10, wire.TIMEOUT)]
    assert counters["writes_expired"] == 1
    assert set(waiters.writes) == {(CID, 2)}  # the other one waits on


def test_a_retry_waits_with_the_first_attempt_and_each_expires_on_its_own_deadline():
    waiters, _ = _waiters()
    first, retry = FakeConn(), FakeConn()
    waiters.add_write(_put(first, 1, wire_id=10), now=0.0)
    waiters.add_write(_put(retry, 1, wire_id=20), now=3.0)  # the same request key on another connection
    waiters.expire(5.5)
    assert _codes(first) == [(10, wire.TIMEOUT)] and retry.answers == []
    assert [w[1] for w in waiters.writes[(CID, 1)]] == [20]


def test_waiters_are_scanned_at_most_every_expiry_scan_interval():
    waiters, _ = _waiters()
    conn = FakeConn()
    waiters.expire(10.0)  # a scan: nothing waits yet
    waiters.add_write(_put(conn, 1, wire_id=10), now=10.0 - TIMEOUT_S - 1)  # overdue already
    waiters.expire(10.0 + EXPIRY_SCAN_SECONDS / 2)
    assert conn.answers == [], "scanned again within EXPIRY_SCAN_SECONDS"
    waiters.expire(10.0 + EXPIRY_SCAN_SECONDS)
    assert _codes(conn) == [(10, wire.TIMEOUT)]


def test_a_linearizable_read_past_its_deadline_times_out():
    waiters, _ = _waiters()
    conn = FakeConn()
    read_id = waiters.new_read_id()
    waiters.add_read(read_id, conn, _get(7), now=0.0)
    waiters.expire(TIMEOUT_S - 0.01)
    assert conn.answers == []
    waiters.expire(TIMEOUT_S + 0.2)
    assert _codes(conn) == [(7, wire.TIMEOUT)] and waiters.reads == {}


def test_a_confirmed_read_waits_until_its_slot_is_applied():
    waiters, _ = _waiters()
    sm = StateMachine()
    conn = FakeConn()
    read_id = waiters.new_read_id()
    waiters.add_read(read_id, conn, _get(7), now=0.0)
    waiters.answer_confirmed([(read_id, 10)], applied_slot=5, sm=sm)
    assert conn.answers == [] and waiters.deferred_reads == [(10, read_id)] and waiters.waiting_for_applies
    sm.apply(commands.encode_put(CID, 1, 0, "k", "v"))
    waiters.answer_caught_up(9, sm)
    assert conn.answers == []
    waiters.answer_caught_up(10, sm)
    assert [(a.id, a.result["found"], a.result.get("value")) for a in conn.answers] == [(7, True, "v")]
    assert not waiters.waiting_for_applies and waiters.reads == {}


def test_a_confirmed_read_whose_slot_is_applied_is_answered_at_once():
    waiters, _ = _waiters()
    conn = FakeConn()
    read_id = waiters.new_read_id()
    waiters.add_read(read_id, conn, _get(7), now=0.0)
    waiters.answer_confirmed([(read_id, 5)], applied_slot=5, sm=StateMachine())
    assert [(a.id, a.result["found"]) for a in conn.answers] == [(7, False)]
    assert waiters.deferred_reads == []


def test_a_serializable_read_waits_for_the_slot_it_arrived_at():
    waiters, _ = _waiters()
    sm = StateMachine()
    conn = FakeConn()
    waiters.add_local_read(3, conn, wire.GetRequest(id=8, key="k", linearizable=False))
    waiters.answer_caught_up(2, sm)
    assert conn.answers == []
    sm.apply(commands.encode_put(CID, 1, 0, "k", "v"))
    waiters.answer_caught_up(3, sm)
    assert [(a.id, a.result["value"]) for a in conn.answers] == [(8, "v")] and waiters.local_reads == []


def test_turning_lazy_fails_writes_and_deferred_reads_with_not_leader_and_keeps_the_rest():
    waiters, _ = _waiters(hint="n2:7002")
    conn = FakeConn()
    waiters.add_write(_put(conn, 1, wire_id=10), now=0.0)
    deferred, pending = waiters.new_read_id(), waiters.new_read_id()
    waiters.add_read(deferred, conn, _get(11), now=0.0)
    waiters.add_read(pending, conn, _get(12), now=0.0)
    waiters.answer_confirmed([(deferred, 9)], applied_slot=1, sm=StateMachine())
    waiters.add_local_read(9, conn, wire.GetRequest(id=13, key="k", linearizable=False))
    waiters.fail_for_follower()
    assert _codes(conn) == [(10, wire.NOT_LEADER), (11, wire.NOT_LEADER)]
    assert {a.leader for a in conn.answers} == {"n2:7002"}
    assert waiters.writes == {} and waiters.own_commands == {} and waiters.deferred_reads == []
    assert set(waiters.reads) == {pending} and len(waiters.local_reads) == 1


def test_a_disk_fence_answers_writes_and_linearizable_reads_and_keeps_serializable_reads():
    waiters, _ = _waiters()
    conn = FakeConn()
    waiters.add_write(_put(conn, 1, wire_id=10), now=0.0)
    waiters.add_read(waiters.new_read_id(), conn, _get(11), now=0.0)
    waiters.add_local_read(9, conn, wire.GetRequest(id=12, key="k", linearizable=False))
    told = []

    def disk_reply(wire_id, *, write_sent=False, read=False):
        told.append((wire_id, write_sent, read))
        return wire.ErrorReply(id=wire_id, code=wire.DISK_FAILED, message="disk", leader=None)

    waiters.fail_for_disk(disk_reply)
    assert told == [(10, True, False), (11, False, True)]
    assert _codes(conn) == [(10, wire.DISK_FAILED), (11, wire.DISK_FAILED)]
    assert waiters.writes == {} and waiters.reads == {} and len(waiters.local_reads) == 1


def test_a_dropped_proposal_gets_not_leader_and_leaves_the_own_commands():
    waiters, _ = _waiters(hint=None)
    conn = FakeConn()
    proposal = _put(conn, 1, wire_id=10)
    waiters.add_write(proposal, now=0.0)
    assert waiters.own_commands == {proposal.command: proposal.decoded}
    waiters.fail_dropped_proposals([proposal.command, b"not a command"])
    assert _codes(conn) == [(10, wire.NOT_LEADER)] and conn.answers[0].leader is None
    assert waiters.writes == {} and waiters.own_commands == {}


def test_rejected_reads_get_not_leader():
    waiters, _ = _waiters()
    conn = FakeConn()
    read_id = waiters.new_read_id()
    waiters.add_read(read_id, conn, _get(7), now=0.0)
    waiters.reject([read_id, read_id + 100])
    assert _codes(conn) == [(7, wire.NOT_LEADER)] and waiters.reads == {}


def test_result_replies():
    conn = FakeConn()
    reply_result(conn, 1, {"rev": 4})
    reply_result(conn, 2, {"error": STALE_REQUEST})
    reply_result(conn, 3, {"error": "malformed"})
    assert _codes(conn) == [(1, "ok"), (2, wire.STALE), (3, wire.BAD_REQUEST)]
    assert conn.answers[0].result == {"rev": 4} and conn.answers[2].message == "malformed"


def _store(n: int, value: bytes = b"v") -> StateMachine:
    sm = StateMachine()
    for i in range(n):
        sm.apply(commands.encode_put(b"c" * 16, i + 1, i, f"k{i:05d}", value))
    return sm


def _list(**fields) -> wire.ListRequest:
    return wire.ListRequest(id=7, **{"prefix": "", "limit": 0, "keys_only": False, "linearizable": True, **fields})


def test_a_range_answer_takes_its_limit_and_nothing_past_it():
    sm = _store(300)
    looked = []
    get = sm._entries.__getitem__
    sm._entries = type("Counting", (dict,), {"__getitem__": lambda self, k: looked.append(k) or get(k)})(sm._entries)
    reply = read_reply(sm, _list(limit=2))
    assert reply.result["items"] == [["k00000", b"v"], ["k00001", b"v"]]
    assert looked == ["k00000", "k00001"]


def test_a_range_of_more_than_range_items_max_entries_is_too_large_and_a_limit_within_it_is_answered(monkeypatch):
    """Without a limit at most RANGE_ITEMS_MAX entries; with one, up to RANGE_ITEMS_MAX + 1 (a client's
    limit and the one more it asks to tell etcd's "more")."""
    from kvstore import frames
    monkeypatch.setattr(frames, "RANGE_ITEMS_MAX", 100)
    sm = _store(102)
    for shape in ({}, {"keys_only": True}, {"meta": True}, {"limit": 102}):
        reply = read_reply(sm, _list(**shape))
        assert isinstance(reply, wire.ErrorReply) and reply.code == wire.TOO_LARGE, shape
        assert "narrow the request" in reply.message
    assert "more than 100 entries" in read_reply(sm, _list()).message
    assert len(read_reply(sm, _list(limit=101)).result["items"]) == 101
    assert len(read_reply(sm, _list(limit=100)).result["items"]) == 100
    assert len(read_reply(sm, _list(prefix="k0000")).result["items"]) == 10


def test_a_range_whose_values_cannot_fit_a_frame_is_too_large_before_it_is_built():
    sm = _store(9, b"x" * (1 << 20))  # 9 MiB of values, past the 8 MiB frame
    reply = read_reply(sm, _list())
    assert isinstance(reply, wire.ErrorReply) and reply.code == wire.TOO_LARGE
    assert "8 of its 9 entries already hold more than" in reply.message  # (8 MiB and 48 bytes)
    assert len(read_reply(sm, _list(keys_only=True)).result["items"]) == 9  # the keys alone fit
