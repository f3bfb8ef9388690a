"""``kvstore.clients``: how a client's request is routed, without a node or a socket.

How: ``ClientLinks._route`` on a fake node whose leadership, fence and learner state the test sets,
with a fake connection that records its answers (``test_waiters.FakeConn``). Each request either gets
its answer at once or leaves an event for the driver. Checks:

* a write becomes a ``Proposal`` whose command decodes to what the client asked, named by its
  ``(client_id, request_id)`` and answered under its wire id; a bad write gets ``bad_request``, on a
  follower ``not_leader``, on a fenced node the disk's answer (in that order);
* a linearizable read becomes a ``Read`` on the leader, ``not_leader`` elsewhere, the disk's answer
  when fenced;
* a serializable read is answered at once from the state machine, or, on a node with an apply queue
  or a lazy learner, waits for the slot the core has handed out and wakes the driver (and keeps a lazy
  learner eager for a while);
* ``ClientLinks.send_replies`` sends each connection's collected replies in one write.
"""
from __future__ import annotations

import collections
from collections import defaultdict
from types import SimpleNamespace

import trio

from kvstore import commands, wire
from kvstore.clients import ClientConn, ClientLinks
from kvstore.events import WAKE, Proposal, Read
from kvstore.statemachine import StateMachine
from kvstore.waiters import Waiters

from .test_waiters import FakeConn

CID = b"client-1"


class FakeNode:
    def __init__(self, *, leader: bool = True, fenced: bool = False) -> None:
        self.counters: dict = defaultdict(int)
        self._fenced = fenced
        self.client_connections_max, self.client_connections_headroom = 4096, 64
        self.replica = SimpleNamespace(is_leader=leader, applied_slot=7)
        self.waiters = Waiters(5.0, lambda: "n2:7002", self.counters)
        sm = StateMachine()
        sm.apply(commands.encode_put(CID, 1, 0, "k", "v"))
        self.local_reads_at: list[float] = []
        self.learner = SimpleNamespace(lazy=False, queue=collections.deque(), sm=sm,
                                       note_local_read=self.local_reads_at.append)

    def _disk_reply(self, wire_id, *, write_sent=False, read=False):
        return wire.ErrorReply(id=wire_id, code=wire.DISK_FAILED, message="disk", leader=None)

    def status(self) -> dict:
        return {"id": 1}


def _route(node: FakeNode, request) -> tuple[FakeConn, list]:
    conn, events = FakeConn(), []
    ClientLinks(node)._route(conn, request, events)
    return conn, events


def _put(**fields) -> wire.PutRequest:
    return wire.PutRequest(**{**dict(id=5, key="k", value="v2", client_id=CID, request_id=9, ack_below=0), **fields})


def _codes(conn: FakeConn) -> list:
    return [(a.id, getattr(a, "code", "ok")) for a in conn.answers]


async def test_a_write_on_the_leader_becomes_a_proposal_of_its_command():
    conn, events = _route(FakeNode(), _put())
    assert conn.answers == [] and len(events) == 1
    proposal = events[0]
    assert isinstance(proposal, Proposal)
    assert proposal.request_key == (CID, 9) and proposal.wire_id == 5
    assert commands.decode_command(proposal.command) == proposal.decoded
    assert (proposal.decoded.op, proposal.decoded.key, proposal.decoded.value) == ("put", "k", "v2")


async def test_a_write_is_checked_then_refused_by_a_fenced_node_then_by_a_follower():
    assert _codes(_route(FakeNode(leader=False, fenced=True), _put(key=""))[0]) == [(5, wire.BAD_REQUEST)]
    assert _codes(_route(FakeNode(leader=False, fenced=True), _put())[0]) == [(5, wire.DISK_FAILED)]
    conn, events = _route(FakeNode(leader=False), _put())
    assert _codes(conn) == [(5, wire.NOT_LEADER)] and conn.answers[0].leader == "n2:7002" and events == []


async def test_a_linearizable_read_goes_to_the_core_only_on_a_healthy_leader():
    request = wire.GetRequest(id=6, key="k", linearizable=True)
    conn, events = _route(FakeNode(), request)
    assert conn.answers == [] and len(events) == 1 and isinstance(events[0], Read) and events[0].request is request
    assert _codes(_route(FakeNode(leader=False), request)[0]) == [(6, wire.NOT_LEADER)]
    assert _codes(_route(FakeNode(fenced=True), request)[0]) == [(6, wire.DISK_FAILED)]


async def test_a_serializable_read_is_answered_at_once_or_waits_for_the_apply_queue():
    request = wire.GetRequest(id=7, key="k", linearizable=False)
    conn, events = _route(FakeNode(leader=False, fenced=True), request)  # a follower, a fenced node: at once
    assert [(a.id, a.result["value"]) for a in conn.answers] == [(7, "v")] and events == []
    for behind in ("queue", "lazy"):
        node = FakeNode(leader=False)
        if behind == "queue":
            node.learner.queue.append((7, (b"cmd",)))
        else:
            node.learner.lazy = True
        conn, events = _route(node, request)
        assert conn.answers == [] and events == [WAKE]
        assert node.waiters.local_reads == [(7, conn, request)]  # the slot the core has handed out
        assert len(node.local_reads_at) == 1


async def test_status_is_answered_at_once():
    conn, events = _route(FakeNode(), wire.StatusRequest(id=8))
    assert [(a.id, a.result) for a in conn.answers] == [(8, {"id": 1})] and events == []


async def test_replies_collected_for_a_connection_leave_in_one_write():
    links = ClientLinks(FakeNode())
    conn = ClientConn("c", links.dirty)  # no socket: what is written stays queued in its outbox

    def writes() -> list[bytes]:
        out = []
        while True:
            try:
                out.append(conn.outbox._recv.receive_nowait())
            except trio.WouldBlock:
                return out

    conn.reply(wire.OkReply(id=1, result={}))
    conn.reply(wire.OkReply(id=2, result={}))
    assert writes() == [] and links.dirty == [conn]
    links.send_replies()
    sent = writes()
    assert len(sent) == 1 and [wire.decode_body(b).id for b in wire.split_frames(bytearray(sent[0]))] == [1, 2]
    assert links.dirty == [] and conn.pending == []


def test_bad_frames_that_are_tls_records_are_logged_at_most_once_a_second(caplog, monkeypatch):
    """A node started without TLS in a TLS cluster: its members redial it ten times a second and each
    ClientHello is a bad frame (QA: ten warnings a second). Those are logged at most once a second; any
    other bad frame still gets its line."""
    import logging

    from kvstore import clients, tls

    monkeypatch.setattr(tls, "REFUSALS_LOGGED", tls.LogThrottle())
    tls_hello = wire.WireError("frame length 369295616 is over the limit: the other side speaks TLS and this "
                               "side does not (--cacert, --cert and --key)")
    with caplog.at_level(logging.WARNING, logger="kvstore.clients"):
        for i in range(10):
            clients._log_bad_frame(f"127.0.0.1:{1000 + i}", tls_hello)
        for i in range(3):
            clients._log_bad_frame(f"127.0.0.1:{2000 + i}", wire.WireError("bad CBOR"))
    lines = [r.getMessage() for r in caplog.records]
    assert sum("speaks TLS" in line for line in lines) == 1
    assert sum("bad CBOR" in line for line in lines) == 3


def test_bad_frames_of_one_reason_are_logged_ten_at_once_then_once_a_second(caplog, monkeypatch):
    """QA: a client looping on bad frames made the node log 2,000 lines a second (24 GB a day). Each reason
    (its numbers aside) is logged ten times at once, then once a second, and the next line says how many
    were left out; another reason has lines of its own."""
    import logging

    from kvstore import clients, tls

    now = [100.0]
    monkeypatch.setattr(tls.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(clients, "BAD_FRAMES_LOGGED", tls.LogThrottle(1.0, burst=10))
    with caplog.at_level(logging.WARNING, logger="kvstore.clients"):
        for i in range(3000):
            clients._log_bad_frame(f"127.0.0.1:{1000 + i % 50000}", wire.WireError(f"frame length {2**31 + i} is "
                                                                                    "outside [1, 8388608]"))
        clients._log_bad_frame("127.0.0.1:9", wire.WireError("put.key: expected a text string, got int"))
        assert len(caplog.records) == 11
        now[0] += 1.0
        clients._log_bad_frame("127.0.0.1:10", wire.WireError("frame length 5 is outside [1, 8388608]"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].endswith("(2990 more like it left out of the log since the last such line)"), lines[-1]


def test_the_count_of_bad_frames_left_out_is_logged_once_the_flood_ends(caplog, monkeypatch):
    """QA re-run: the count of lines left out at the end of a flood waited for the next bad frame of that
    kind, and was never logged if none came. The node's once-a-second sweep logs it, naming the last one."""
    import logging

    from kvstore import clients, tls

    now = [100.0]
    monkeypatch.setattr(tls.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(clients, "BAD_FRAMES_LOGGED", tls.LogThrottle(1.0, burst=10))
    with caplog.at_level(logging.WARNING, logger="kvstore.clients"):
        for i in range(25):
            clients._log_bad_frame(f"127.0.0.1:{1000 + i}", wire.WireError(f"frame length {2**31 + i} is outside"))
        assert clients.BAD_FRAMES_LOGGED.overdue() == []  # not yet: the flood may go on
        now[0] += 1.0
        [(kind, count)] = clients.BAD_FRAMES_LOGGED.overdue()
        assert count == 15 and clients._LEFT_OUT_EXAMPLES[kind] == f"frame length {2**31 + 24} is outside"
        assert clients.BAD_FRAMES_LOGGED.overdue() == []  # logged once
