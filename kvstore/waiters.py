"""Request waiters: the clients waiting on this node, their deadlines, and the answers they get.

Theory of operation
-------------------
A client request that the core must see first waits here until the node can answer it:

* a **write** from its proposal until the state machine applies its command: ``writes`` maps the
  write's ``(client_id, request_id)`` (its exactly-once name, the *request key*) to every
  ``(conn, wire_id, deadline)`` waiting for it (a retry on another connection waits with the first).
  ``own_commands`` keeps what each command proposed here decodes to, so that applying it skips a
  decode (``kvstore.learners``); at most ``OWN_COMMANDS_MAX`` (a command never decided here, because
  leadership was lost, stays until the cache is cleared);
* a **linearizable read** from ``Replica.read`` until the core confirms its read index
  (``Actions.reads``), and then, if that slot is not applied yet (a lazy learner's queue), in
  ``deferred_reads`` until it is;
* a **serializable read** on a node with decided commands it has not applied, in ``local_reads`` until
  the state machine caught up with what the node had decided when the read arrived.

Every write and linearizable read has a deadline (arrival + ``request_timeout_seconds``); ``expire``,
called on ticks, fails those past it every ``EXPIRY_SCAN_SECONDS`` with ``timeout`` (a write's outcome
is then unknown). The replies for results, ``not_leader``, ``timeout`` and reads are made here
(``reply_result``, ``not_leader``, ``read_reply``); answers go through ``ClientConn.reply``, which only
collects them: the node sends them (``ClientLinks.send_replies``).

``requests`` counts the answers, ``(op, outcome) -> count`` (``kv_requests_total`` of
``kvstore.metrics``; the client links count the requests they answer themselves): the op is the
request's (``metrics.request_op``), kept with each waiting write, the outcome ``ok`` or the error
code's name (``metrics.OUTCOME_OF_CODE``).

Rules: this module never touches the ``Replica``, the storage or the peer links, and never changes the
state machine; it reads the one it is given to answer reads. Each wire id is answered once: a waiter is
removed before it is answered. ``wire_id`` is the id on the client's frame (what the reply carries),
never the exactly-once ``request_id``. Times are trio times passed in by the caller, so that tests can
drive this without a trio run.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from . import commands, failpoints, frames, wire
from .metrics import OUTCOME_OF_CODE, request_op
from .statemachine import EXPIRED_CLIENT, STALE_REQUEST, RangeTooLarge

if TYPE_CHECKING:
    from .events import Proposal
    from .statemachine import StateMachine

__all__ = ["Waiters", "reply_result", "result_op", "read_reply", "not_leader_reply", "OWN_COMMANDS_MAX",
           "EXPIRY_SCAN_SECONDS"]

# Commands this node proposed and has not applied yet, kept decoded (see Waiters.add_write)
OWN_COMMANDS_MAX = 100_000
# How often waiting requests are checked against the request timeout (see Waiters.expire)
EXPIRY_SCAN_SECONDS = 0.1


class Replier(Protocol):
    """Where a request's answer goes: a ``kvstore.clients.ClientConn`` (or a stand-in for one)."""

    def reply(self, message: object) -> None: ...

    def reply_frame(self, frame: bytes) -> None: ...

    def reply_read(self, sm: StateMachine, request: ReadRequest) -> None:
        """Answer read ``request`` from ``sm`` (a ``ClientConn`` may read it later, from the state then)."""


ReadRequest = wire.GetRequest | wire.ListRequest
DiskReply = Callable[..., wire.ErrorReply]  # Node._disk_reply: (wire_id, *, write_sent=False, read=False)


NOT_LEADER_MESSAGE = frames.NOT_LEADER_MESSAGE


def not_leader_reply(wire_id: int | None, leader_hint: str | None, *, refused: bool = False,
                     message: str = NOT_LEADER_MESSAGE) -> wire.ErrorReply:
    """The answer to a request that only the leader serves; ``leader_hint`` is its HOST:PORT if known.
    ``refused``: the request was turned away on arrival (never proposed), not failed after it waited here.
    ``message``: why, when there is more to say (a node removed from the members)."""
    return wire.ErrorReply(id=wire_id, code=wire.NOT_LEADER, message=message, leader=leader_hint, refused=refused)


def result_op(result: dict[str, Any]) -> str | None:
    """The kind of write a state machine result answers (``StateMachine.apply``), None for an error."""
    if "ok" in result:
        return "cas"
    if "deleted" in result:
        return "delete"
    return "put" if "rev" in result else None


def reply_result(conn: Replier, wire_id: int, result: dict[str, Any]) -> str:
    """Answer a write with the state machine's result for it; returns the outcome (ok, stale, error)."""
    failpoints.hit("before_reply")  # a test can crash the node after apply, before the client hears
    error = result.get("error")
    if error == STALE_REQUEST:
        # A retry whose first result the state machine no longer remembers (see docs/protocol.md):
        # the first attempt may or may not have been applied, so this is not the client's mistake.
        conn.reply(wire.ErrorReply(
            id=wire_id, code=wire.STALE, leader=None,
            message="the cluster no longer remembers this write's outcome (more than 4,096 newer writes "
                    "of this client were answered meanwhile, or another client uses its client id); it may or "
                    "may not have been applied"))
        return "stale"
    if error == EXPIRED_CLIENT:
        # A client the state machine forgot (or a new one whose clock is behind): see frames.new_client_id.
        conn.reply(wire.ErrorReply(
            # (the higher of the horizon and the cluster's clock: a new id goes above it, frames.new_client_id)
            id=wire_id, code=wire.EXPIRED, leader=None, horizon=result["horizon"],
            message="the cluster no longer remembers this client (more than 10,000 newer clients wrote since "
                    "its last write, or its id is older than the newest client forgotten); this write was not "
                    "applied, and an earlier attempt of it, if one was sent, may or may not have been"))
        return "expired"
    if error is not None:
        conn.reply(wire.ErrorReply(id=wire_id, code=wire.BAD_REQUEST, message=str(error), leader=None))
        return "error"
    conn.reply_frame(wire.encode_write_result_frame(wire_id, result))
    return "ok"


def read_reply(sm: StateMachine, request: ReadRequest) -> wire.OkReply | wire.ErrorReply:
    """The answer to a ``GetRequest`` or ``ListRequest`` from the state machine ``sm`` as it is now.

    A range takes only its ``limit`` first keys, and one whose keys and values alone hold more than a
    frame is refused (``too_large``) before it is built: this runs in the node's event loop, and QA
    found one ``kv get --prefix ""`` of 63 MB holding a leader for 0.5 s (it was built and encoded in
    full, then refused), and ten reads with ``limit`` 1 for 1.5 s: an election each time. A range that
    slips under this bound and is still too large once encoded is refused there (``ClientConn``)."""
    if isinstance(request, wire.GetRequest):
        entry = sm.get(request.key)
        if entry is None:
            result: dict[str, Any] = {"found": False, "rev": sm.revision}
        else:
            result = {"found": True, "value": entry.value, "ver": entry.version,
                      "mrev": entry.mod_revision, "rev": sm.revision}
        return wire.OkReply(id=request.id, result=result)
    # (a limit of RANGE_ITEMS_MAX + 1 is a client's limit of RANGE_ITEMS_MAX and one entry more, to tell
    # whether the limit left entries out: etcd's "more")
    limited = 0 < request.limit <= frames.RANGE_ITEMS_MAX + 1
    try:
        items = sm.range_items(request.prefix, request.limit, values=not request.keys_only, meta=request.meta,
                               items_max=request.limit if limited else frames.RANGE_ITEMS_MAX,
                               bytes_min_max=frames.FRAME_BYTES_MAX)
    except RangeTooLarge as exc:
        return wire.ErrorReply(id=request.id, code=wire.TOO_LARGE, leader=None,
                               message=f"the reply is too large ({exc}); narrow the request (prefix, limit), "
                                       "or read everything with a dump")
    return wire.OkReply(id=request.id, result={"items": items, "rev": sm.revision})


class Waiters:
    """The requests waiting on one node (see the module docstring)."""

    def __init__(self, request_timeout_seconds: float, leader_hint: Callable[[], str | None],
                 counters: dict[str, int]) -> None:
        self.timeout_seconds = request_timeout_seconds
        self._leader_hint = leader_hint  # the leader's HOST:PORT for not_leader answers, None if unknown
        self._counters = counters
        # request key (client_id, request_id) -> [(conn, wire_id, deadline, op), ...]
        self.writes: dict[tuple[bytes, int], list[tuple[Replier, int, float, str]]] = defaultdict(list)
        self.own_commands: dict[bytes, commands.Command] = {}  # command bytes -> the Command, proposed here
        self.reads: dict[int, tuple[Replier, ReadRequest, float]] = {}  # read id -> (conn, request, deadline)
        self.deferred_reads: list[tuple[int, int]] = []  # (slot, read_id): confirmed, waiting for applies
        # (slot, conn, request): serializable, waiting for applies
        self.local_reads: list[tuple[int, Replier, ReadRequest]] = []
        self._read_ids = itertools.count(1)
        self._next_expiry_scan = 0.0
        # (op, outcome) -> answers (see the module docstring)
        self.requests: defaultdict[tuple[str, str], int] = defaultdict(int)
        # what a not_leader answer says (kvstore.members: once this node is no longer a member, that)
        self.not_leader_message = NOT_LEADER_MESSAGE

    def not_leader(self, wire_id: int | None, *, refused: bool = False) -> wire.ErrorReply:
        return not_leader_reply(wire_id, self._leader_hint(), refused=refused, message=self.not_leader_message)

    # -----------------------------------------------------------------------------------------------
    # writes

    def add_write(self, proposal: Proposal, now: float) -> None:
        """``proposal`` (an ``events.Proposal``) was accepted by the core: wait for its command's apply."""
        own = self.own_commands
        if len(own) >= OWN_COMMANDS_MAX:
            own.clear()
        own[proposal.command] = proposal.decoded
        self.writes[proposal.request_key].append(
            (proposal.conn, proposal.wire_id, now + self.timeout_seconds, proposal.decoded.op))

    def fail_dropped_proposals(self, dropped: Iterable[bytes]) -> None:
        """The core dropped these proposals (command bytes; leadership was lost before they got a slot):
        ``not_leader``, so that their clients retry on the leader with the same request id."""
        own = self.own_commands
        for command in dropped:
            own.pop(command, None)
            try:
                cmd = commands.decode_command(command)
            except commands.CommandError:
                continue
            for conn, wire_id, _, op in self.writes.pop((cmd.client_id, cmd.request_id), ()):
                self.requests[op, "not_leader"] += 1
                conn.reply(self.not_leader(wire_id))

    # -----------------------------------------------------------------------------------------------
    # reads

    def new_read_id(self) -> int:
        return next(self._read_ids)

    def add_read(self, read_id: int, conn: Replier, request: ReadRequest, now: float) -> None:
        """The core took linearizable read ``read_id``: wait for its confirmation (``answer_confirmed``)."""
        self.reads[read_id] = (conn, request, now + self.timeout_seconds)

    def answer_confirmed(self, confirmed: Iterable[tuple[int, int]], applied_slot: int, sm: StateMachine) -> None:
        """The core confirmed these ``(read_id, slot)`` reads: answer those whose slot the state machine
        has applied, defer the others until it has (``answer_caught_up``)."""
        reads = self.reads
        for read_id, slot in confirmed:
            if slot > applied_slot:
                self.deferred_reads.append((slot, read_id))
                continue
            entry = reads.pop(read_id, None)
            if entry is not None:
                self.requests[request_op(entry[1]), "ok"] += 1
                entry[0].reply_read(sm, entry[1])

    def reject(self, read_ids: Iterable[int]) -> None:
        """The core could not confirm these reads (leadership lost): ``not_leader``."""
        for read_id in read_ids:
            entry = self.reads.pop(read_id, None)
            if entry is not None:
                self.requests[request_op(entry[1]), "not_leader"] += 1
                entry[0].reply(self.not_leader(entry[1].id))

    def add_local_read(self, slot: int, conn: Replier, request: ReadRequest) -> None:
        """A serializable read that must wait until the state machine has applied ``slot``."""
        self.local_reads.append((slot, conn, request))

    @property
    def waiting_for_applies(self) -> bool:
        return bool(self.deferred_reads or self.local_reads)

    def answer_caught_up(self, applied_slot: int, sm: StateMachine) -> None:
        """Answer the reads that waited for applies up to ``applied_slot`` (``sm`` has applied them)."""
        if self.deferred_reads:
            later = []
            for slot, read_id in self.deferred_reads:
                if slot > applied_slot:
                    later.append((slot, read_id))
                    continue
                entry = self.reads.pop(read_id, None)
                if entry is not None:
                    self.requests[request_op(entry[1]), "ok"] += 1
                    entry[0].reply_read(sm, entry[1])
            self.deferred_reads = later
        if self.local_reads:
            later_local = []
            for item in self.local_reads:
                if item[0] > applied_slot:
                    later_local.append(item)
                else:
                    self.requests[request_op(item[2]), "ok"] += 1
                    item[1].reply_read(sm, item[2])
            self.local_reads = later_local

    # -----------------------------------------------------------------------------------------------
    # deadlines and giving up

    def expire(self, now: float) -> None:
        """Fail requests that waited past their deadline (a write's outcome is then unknown).

        Looks at the waiting requests every ``EXPIRY_SCAN_SECONDS`` (so a request fails up to that much
        after its deadline): only those still unanswered are kept, a few thousand at most under load,
        where a queue of every write's deadline held the last request timeout's worth of writes (5 s:
        300,000 entries, ~50 MB, at 60,000 puts/s).
        """
        if now < self._next_expiry_scan:
            return
        self._next_expiry_scan = now + EXPIRY_SCAN_SECONDS
        waiting = self.writes
        overdue = [key for key, waiters in waiting.items() if any(w[2] < now for w in waiters)]
        requests = self.requests
        for key in overdue:
            waiters = waiting.pop(key)
            keep = []
            for waiter in waiters:
                if waiter[2] >= now:
                    keep.append(waiter)
                    continue
                conn, wire_id, _, op = waiter
                self._counters["writes_expired"] += 1
                requests[op, "timeout"] += 1
                conn.reply(wire.ErrorReply(id=wire_id, code=wire.TIMEOUT, leader=None,
                                           message="write not decided in time; outcome unknown"))
            if keep:
                waiting[key] = keep
        expired_reads = [read_id for read_id, (_, _, deadline) in self.reads.items() if deadline < now]
        for read_id in expired_reads:
            conn, request, _ = self.reads.pop(read_id)
            requests[request_op(request), "timeout"] += 1
            conn.reply(wire.ErrorReply(id=request.id, code=wire.TIMEOUT,
                                       message="read not confirmed in time", leader=None))

    def fail_writes_not_leader(self) -> int:
        """The writes waiting here get ``not_leader`` (the node stopped leading); their clients retry on
        the leader with the same request id, where the outcome is remembered. Returns how many."""
        failed = 0
        for waiters in self.writes.values():
            for conn, wire_id, _, op in waiters:
                self.requests[op, "not_leader"] += 1
                conn.reply(self.not_leader(wire_id))
                failed += 1
        self.writes.clear()
        self.own_commands.clear()
        return failed

    def fail_for_follower(self) -> None:
        """This node turned lazy learner (a follower that may skip applies): the writes still waiting
        here (it led until lately) and the confirmed reads waiting for applies get ``not_leader``; their
        clients retry on the leader with the same request id, where the outcome is remembered."""
        self.fail_writes_not_leader()
        for _, read_id in self.deferred_reads:
            entry = self.reads.pop(read_id, None)
            if entry is not None:
                self.requests[request_op(entry[1]), "not_leader"] += 1
                entry[0].reply(self.not_leader(entry[1].id))
        self.deferred_reads = []

    def fail_for_disk(self, disk_reply: DiskReply) -> None:
        """The node was fenced by its disk: every waiting write (``disk_reply(wire_id, write_sent=True)``)
        and linearizable read (``disk_reply(wire_id, read=True)``) is answered and forgotten. Serializable reads
        waiting for applies stay: the state machine holds what was decided before the failure."""
        for waiters in self.writes.values():
            for conn, wire_id, _, op in waiters:
                reply = disk_reply(wire_id, write_sent=True)
                self.requests[op, OUTCOME_OF_CODE.get(reply.code, "error")] += 1
                conn.reply(reply)
        self.writes.clear()
        self.own_commands.clear()
        for conn, request, _ in self.reads.values():
            reply = disk_reply(request.id, read=True)
            self.requests[request_op(request), OUTCOME_OF_CODE.get(reply.code, "error")] += 1
            conn.reply(reply)
        self.reads.clear()
        self.deferred_reads = []
