"""Client links: accepted connections, the client request loop, and the replies going back.

Theory of operation
-------------------
The node accepts every connection here (``ClientLinks.handle_connection``). The first frame decides
what it is: a peer's ``Hello`` hands the connection to ``kvstore.peers``; anything else makes it a
client connection, a ``ClientConn``. Clients may pipeline many requests on one connection. The reader
task (``_serve``) decodes every frame that arrived at once and routes each request (``_route``):

* a write is turned into command bytes (``commands.encode_write``) and becomes an ``events.Proposal``;
  a follower answers ``not_leader`` with a hint and the client library retries on the leader. Writes
  carry ``(client_id, request_id)``; the state machine deduplicates, so a retry is safe;
* a linearizable read becomes an ``events.Read`` (the leader confirms its leadership for it);
* a serializable read is answered at once from the local state machine, or, on a node with decided
  commands it has not applied, waits for them (``Waiters.add_local_read``, and a ``WAKE`` for the
  driver);
* ``status`` is answered at once.

With TLS (``kvstore.tls``) the handshake comes first, in the connection's task, and names the client
(``ClientConn.principal``); with an ACL (``kvstore.acl``) ``_route`` answers a request the client's
certificate may not make with ``permission_denied`` before anything else looks at it.

The events of one read go to the node in one ``Node._post``. Replies collect per connection
(``ClientConn.reply``) while the node works through a batch and leave together when the node calls
``send_replies``: one write per connection per batch, straight to the socket (``Outbox``); a writer task per
connection sends what the socket did not take at once. A once-a-second sweep from the ticker closes
connections idle for ``idle_client_timeout_seconds`` (``close_idle``), instead of a trio deadline per
receive.

Rules: a reader task never feeds the core except through ``Node._post``; to route a request it only
reads the core's leadership (``Replica.is_leader``), which the driver changes only between its
batches. Bad input (a ``WireError``) gets one log line and, where possible, an error reply, and closes
that connection only; any other exception in a connection task is logged with its traceback and closes
that connection only: the node keeps serving.
"""
from __future__ import annotations

import collections
import logging
from typing import TYPE_CHECKING

import trio

from . import commands, descriptors, frames, tls, wire
from .events import WAKE, Proposal, Read
from .frames import split_frames
from .metrics import OUTCOME_OF_CODE, request_op
from .netio import JOIN_BYTES_MAX, Outbox, set_keepalive
from .peers import remote_name, set_nodelay
from .waiters import ReadRequest, read_reply
from .watches import Change

if TYPE_CHECKING:
    from collections.abc import Callable

    from .acl import Acl
    from .server import Node
    from .statemachine import StateMachine
    from .tls import Principal

__all__ = ["ClientConn", "ClientLinks"]

# How much of a plaintext client's first request a TLS-only node reads to address its refusal to it
PLAINTEXT_PEEK_BYTES = 64 * 1024

log = logging.getLogger("kvstore.server")

# How long a connection may take to send the rest of a frame refused for want of room (see
# ClientLinks._discard_refused); what it sends is dropped as it comes, so only the time is bounded.
REFUSED_FRAME_DRAIN_SECONDS = 5.0
# Answers a client may leave unread: beyond, the connection is closed (eight answers of the largest
# frame, kvstore.frames.FRAME_BYTES_MAX)
CLIENT_BACKLOG_BYTES_MAX = 64 * 1024 * 1024
# Answers encoded ahead of what a client has read, at most (more wait unencoded: ClientConn)
REPLY_WINDOW_BYTES = 8 * 1024 * 1024
# Entries of range answers built per step of the node's driver, at least (see RangeBudget): as many as
# one answer may hold
RANGE_STEP_ENTRIES = frames.RANGE_ITEMS_MAX
# A connection whose held-back answers see no progress for this long is closed as unread (ClientLinks._await_room)
REPLY_STALL_SECONDS = 30.0
# How long the answers still queued may take to leave once a connection ends (a client that reads
# nothing would hold the connection, and its answers, for as long as it lives)
REPLY_DRAIN_SECONDS = 10.0


class RangeBudget:
    """The entries of range answers a node builds per step of its driver (see ``ClientConn.reply_read``).

    Each answer is built in the node's event loop, about a microsecond per entry, and a range answer is
    bounded (``frames.RANGE_ITEMS_MAX`` entries) but many may come at once: a client pipelining twenty
    lists of 90,000 keys had them all built in one step, 1 s in which the node heard nothing, and the
    leader changed (QA). The driver renews the budget at each of its steps (``renew``); a range read
    that finds it spent waits parked on its connection (its answer built from the state then, as any
    parked read's is: ``ClientConn.send_pending``), and the connection waits in ``waiting`` for the next
    step, which ``wake`` asks for (the driver's next step comes after every other task's: a pass of the
    scheduler). At least one answer is built per step, however large, so every read is answered."""

    __slots__ = ("left", "waiting", "wake", "woken")

    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.left = RANGE_STEP_ENTRIES
        self.waiting: list[ClientConn] = []  # connections holding range reads back for the next step
        self.wake = wake  # asks the driver for another step (the node posts a Wake)
        self.woken = False

    def renew(self) -> None:
        """A new driver step: its budget goes first to the connections held back, in the order they waited,
        then to range reads that come meanwhile. (Before, a read held back waited while fresh reads of other
        connections spent each step's budget first: delayed by every busy client, though never stranded.)"""
        self.left = RANGE_STEP_ENTRIES
        self.woken = False  # (the Wake asked for, if any, is this step's: a wait from now on asks again)
        if self.waiting:
            self.resume()

    def hold(self, conn: ClientConn) -> None:
        if conn not in self.waiting:
            self.waiting.append(conn)
        if not self.woken:
            self.woken = True
            self.wake()

    def resume(self) -> None:
        """Let the connections held back build what this step's budget allows (``send_replies``)."""
        waiting = self.waiting
        if not waiting:
            return
        if self.left > 0:
            self.waiting, self.woken = [], False
            for conn in waiting:
                conn.send_pending()
        elif not self.woken:  # this step's budget went to other answers first: the next step resumes them
            self.woken = True
            self.wake()


class ClientConn:
    """One client connection. Replies collect in ``pending`` while the node works through a batch and
    leave together when the node calls ``send_replies`` (one write per connection per batch).

    At most ``REPLY_WINDOW_BYTES`` of answers are encoded ahead of what the client has read: beyond,
    answers wait in ``parked`` as they are (a reply holds the stored value, not a copy) and are encoded
    as the writer task sends (``Outbox.drained``), and the connection's reader stops reading requests
    until they are all out (``ClientLinks._await_room``). (QA: 600 gets of a 1 MiB value in one 20 KB
    write made the node build 600 MB of answers in one step: 1.9 GB of memory, 2 s without a heartbeat,
    a leader change.)"""

    __slots__ = ("outbox", "pending", "pending_bytes", "parked", "read_state", "finishing", "closed", "name",
                 "_dirty", "last_heard", "scope", "principal", "requests", "answered", "budget", "parked_frame_bytes")

    def __init__(self, name: str, dirty: list[ClientConn], budget: RangeBudget | None = None) -> None:
        self.principal: Principal | None = None  # who its TLS certificate names; None without TLS
        self.outbox = Outbox()
        self.outbox.drained = self.send_pending
        self.outbox.drained_below = REPLY_WINDOW_BYTES
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        # answers not encoded yet: messages, frames, or read requests (to be read from read_state())
        self.parked: collections.deque[object] = collections.deque()
        self.parked_frame_bytes = 0  # bytes of the encoded frames in parked (watch events, reply_frame)
        self.read_state: Callable[[], StateMachine] = _no_state
        self.finishing = False  # the connection ended: the outbox closes once nothing is parked
        self.closed = False
        self.name = name
        self._dirty = dirty  # the node's list of connections with pending replies
        self.last_heard = trio.current_time()  # when its last frames arrived (see ClientLinks.close_idle)
        self.scope = trio.CancelScope()  # cancelled to close the connection
        # Requests routed and replies given: every request gets one reply, so after a bad frame the
        # connection stays until the requests before it are answered (ClientLinks._answer_then_refuse).
        self.requests = 0
        self.answered = 0
        self.budget = budget if budget is not None else RangeBudget()  # (the node's, shared: see RangeBudget)

    def reply(self, message: object) -> None:
        if self.closed:
            return
        if self.parked or self.pending_bytes + self.outbox.backlog_bytes >= REPLY_WINDOW_BYTES:
            self.answered += 1
            self.parked.append(message)  # (in order behind those parked already)
            return
        self._add(_encode_reply(message))

    def reply_read(self, sm: StateMachine, request: ReadRequest) -> None:
        """The answer to read ``request`` from ``sm``; held back (see the class), it is read when it can
        leave, from the state machine then (``read_state``): a later state, which a read may see since its
        answer leaves later, and which holds no copy of the values meanwhile."""
        if self.closed:
            return
        if self.parked or self.pending_bytes + self.outbox.backlog_bytes >= REPLY_WINDOW_BYTES:
            self.answered += 1
            self.parked.append(request)
            return
        if type(request) is wire.ListRequest:
            frame = self._range_frame(sm, request)
            if frame is None:
                self.answered += 1
                self.parked.append(request)
                return
            self._add(frame)
            return
        self._add(_encode_reply(read_reply(sm, request)))

    def _range_frame(self, sm: StateMachine, request: wire.ListRequest) -> bytes | None:
        """The answer to range read ``request``, charged to the node's ``RangeBudget``; None (and this
        connection waits for the driver's next step) if the budget of this step is spent."""
        budget = self.budget
        if budget.left <= 0:
            budget.hold(self)
            return None
        reply = read_reply(sm, request)
        budget.left -= _entries_of(reply, request)
        return _encode_range_reply(reply)

    def reply_frame(self, frame: bytes) -> None:
        """``reply`` with a frame encoded already (small, so never too large)."""
        if self.closed:
            return
        if self.parked:
            self.answered += 1
            self.parked_frame_bytes += len(frame)
            self.parked.append(frame)
            return
        self._add(frame)

    def event_frame(self, frame: bytes, body: bytes = b"") -> None:
        """A frame of a watch's events (``kvstore.watches``): ``frame``, then ``body`` (its events array,
        shared with the other watches told of the same changes: not copied here). It leaves in order with
        the answers, and is none of them (``answered`` counts answers to requests)."""
        if self.closed:
            return
        size = len(frame) + len(body)
        if self.parked:
            # Behind a held-back answer: bounded as a backlog is (a slow reader makes progress, so the
            # stall clock of _await_room alone would let this grow without end).
            self.parked_frame_bytes += size
            if self.parked_frame_bytes + self.outbox.backlog_bytes > CLIENT_BACKLOG_BYTES_MAX:
                self._close_unread(self.parked_frame_bytes + self.outbox.backlog_bytes)
                self.parked.clear()
                return
            self.parked.append(frame)
            if body:
                self.parked.append(body)  # (parked bytes items leave in order, each counted in parked_frame_bytes)
            return
        if not self.pending:
            self._dirty.append(self)
        self.pending.append(frame)
        if body:
            self.pending.append(body)
        self.pending_bytes += size

    def _add(self, frame: bytes) -> None:
        self.answered += 1
        if not self.pending:
            self._dirty.append(self)
        self.pending.append(frame)
        self.pending_bytes += len(frame)

    def send_pending(self) -> None:
        """Write what is pending, then as many parked answers as the window takes (also called by the
        writer task when it has sent enough: ``Outbox.drained``)."""
        outbox = self.outbox
        held = False  # range reads wait for the driver's next step (RangeBudget)
        while True:
            pending = self.pending
            if pending:
                self.pending = []
                if not self.closed:
                    if len(pending) == 1:
                        outbox.write(pending[0])
                    elif self.pending_bytes <= JOIN_BYTES_MAX:
                        outbox.write(b"".join(pending))
                    else:  # in pieces of about a MiB, so that a slow reader's progress shows (_await_room)
                        _write_in_pieces(outbox, pending)
                    if outbox.backlog_bytes > CLIENT_BACKLOG_BYTES_MAX:
                        self._close_unread(outbox.backlog_bytes)
                self.pending_bytes = 0
            parked = self.parked
            if self.closed or held or not parked or outbox.backlog_bytes >= REPLY_WINDOW_BYTES:
                break
            # Room again: encode parked answers up to the window (not listed in _dirty: written here).
            room = REPLY_WINDOW_BYTES - outbox.backlog_bytes
            while parked and self.pending_bytes < room:
                item = parked[0]
                if type(item) is bytes:
                    frame = item
                    self.parked_frame_bytes -= len(frame)
                elif type(item) is wire.ListRequest:
                    built = self._range_frame(self.read_state(), item)
                    if built is None:
                        held = True
                        break
                    frame = built
                elif type(item) is wire.GetRequest:
                    frame = _encode_reply(read_reply(self.read_state(), item))
                else:
                    frame = _encode_reply(item)
                parked.popleft()
                self.pending.append(frame)
                self.pending_bytes += len(frame)
        if self.closed:
            parked.clear()
        if self.finishing and not parked:
            outbox.close()

    def finish(self) -> None:
        """The connection ended: send what is pending, and close the outbox once the parked answers are out
        (its writer task then ends; the caller bounds how long that may take)."""
        self.finishing = True
        self.send_pending()

    def _close_unread(self, queued: int) -> None:
        """The client reads none of its answers (QA: a client pipelining reads of a 1 MB value and
        never reading made the node hold 1.5 GB, and the connection was never closed)."""
        self.closed = True
        self.scope.cancel()
        log.warning("closing client %s: %d MiB of answers it has not read (it sends requests and does not "
                    "read the answers)", self.name, queued // (1024 * 1024))


def _no_state() -> StateMachine:
    raise RuntimeError("a ClientConn held back a read without read_state")


def _write_in_pieces(outbox: Outbox, frames: list[bytes]) -> None:
    piece: list[bytes] = []
    size = 0
    for frame in frames:
        if len(frame) >= JOIN_BYTES_MAX:  # (a large piece goes as it is: a watch's events body, shared, not copied)
            if piece:
                outbox.write(piece[0] if len(piece) == 1 else b"".join(piece))
                piece, size = [], 0
            outbox.write(frame)
            continue
        piece.append(frame)
        size += len(frame)
        if size >= JOIN_BYTES_MAX:
            outbox.write(piece[0] if len(piece) == 1 else b"".join(piece))
            piece, size = [], 0
    if piece:
        outbox.write(piece[0] if len(piece) == 1 else b"".join(piece))


def _entries_of(reply: object, request: wire.ListRequest) -> int:
    """What a range answer cost (its entries) against ``RangeBudget``. A ``too_large`` refusal looked at
    as many entries as the request could take before it gave up (its limit, or RANGE_ITEMS_MAX + 1 keys;
    with values, up to a frame's bytes of them built): charged that much, not 1."""
    result = getattr(reply, "result", None)
    if type(result) is dict and "items" in result:
        return max(1, len(result["items"]))
    if getattr(reply, "code", None) == wire.TOO_LARGE:
        limit = request.limit
        return limit if 0 < limit <= frames.RANGE_ITEMS_MAX + 1 else frames.RANGE_ITEMS_MAX + 1
    return 1


def _encode_range_reply(reply: wire.OkReply | wire.ErrorReply) -> bytes:
    """``_encode_reply`` of ``read_reply``'s answer to a ``ListRequest``, without checking its items
    (``wire.encode_range_result_frame``)."""
    if type(reply) is not wire.OkReply:
        return _encode_reply(reply)
    try:
        return wire.encode_range_result_frame(reply.id, reply.result)
    except wire.FrameTooLarge as exc:
        return _too_large(reply.id, exc)


def _too_large(wire_id: int | None, exc: Exception) -> bytes:
    return wire.encode_frame(wire.ErrorReply(
        id=wire_id, code=wire.TOO_LARGE,
        message=f"the reply is too large for one frame ({exc}); narrow the request (prefix, limit)", leader=None))


def _encode_reply(message: object) -> bytes:
    try:
        return wire.encode_frame(message)
    except wire.FrameTooLarge as exc:
        return _too_large(getattr(message, "id", None), exc)


class ClientLinks:
    """The client connections of node ``node`` (a ``kvstore.server.Node``); see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.counters = node.counters
        self.dirty: list[ClientConn] = []  # connections with replies to send
        # range answers built per driver step (see RangeBudget): the driver renews it, a Wake resumes it
        self.range_budget = RangeBudget(lambda: node._post_event(WAKE))
        self.conns: set[ClientConn] = set()
        self.acl: Acl | None = None  # kvstore.acl.Acl (kv serve --acl): checked in _route; replaced on SIGHUP
        # Accepted connections not known to be peers' (clients, and connections before their first frame),
        # and how many the node takes (kvstore.descriptors; Node.client_connections_max)
        self.open_connections = 0
        self.connections_max: int = node.client_connections_max
        self.connections_headroom: int = node.client_connections_headroom  # (see handle_connection)
        # Connections under the limit still waiting for their first frame: the scope of that wait -> when
        # they connected (one that waits long may give its place to a newcomer: _evict_silent)
        self.silent: dict[trio.CancelScope, float] = {}

    def send_replies(self) -> None:
        """Send the replies collected since the last call: one write per client connection."""
        dirty = self.dirty
        if dirty:
            for conn in dirty:
                conn.send_pending()
            dirty.clear()
        self.range_budget.resume()

    def close_idle(self, now: float) -> None:
        """Close client connections that sent nothing for ``idle_client_timeout_seconds`` (the ticker
        calls this once a second, so a connection may stay up to a second longer); and log how many bad
        frames a flood that ended left out of the log."""
        for kind, count in BAD_FRAMES_LOGGED.overdue():  # (a flood of bad frames ended: how many were not logged)
            log.warning("%d more connections closed over a bad frame left out of the log, the last: %s", count,
                        _LEFT_OUT_EXAMPLES.pop(kind, kind))
        limit = now - self.node.options.idle_client_timeout_seconds
        watching = self.node.watches.watching
        for conn in self.conns:
            if conn.last_heard < limit and not watching(conn):  # (a watch waits for changes, however long)
                conn.scope.cancel()

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve one accepted connection: a peer link (first frame Hello) or a client."""
        node = self.node
        idle_timeout_seconds = node.options.idle_client_timeout_seconds
        name = remote_name(stream)
        conn: ClientConn | None = None
        principal = None
        reader: wire.FrameReader | None = None
        # Until it shows it is a peer's, a connection counts against the client connections' limit
        # (kvstore.descriptors); past the limit, it has a moment to say Hello and is refused otherwise.
        self.open_connections += 1
        counted = True
        over = self.open_connections - self.connections_max
        try:
            if over > self.connections_headroom:
                # Not even a frame read (the reserve is for the node's files): the refusal goes out at once,
                # and a client that sent a request meanwhile may see a reset instead.
                self._count_over_limit(name, " at once")
                with trio.move_on_after(0.1):
                    await stream.send_all(self._over_limit_reply(None))
                return
            set_nodelay(stream)
            set_keepalive(stream)  # (a watch's connection may be silent for hours: peers.set_keepalive)
            reader = wire.FrameReader(stream, node.options.frame_bytes_max, node.frame_budget)
            frames: list[bytes] = []
            first_wait = idle_timeout_seconds if over <= 0 else descriptors.OVER_LIMIT_FIRST_FRAME_SECONDS
            with trio.move_on_after(first_wait) as waiting:
                if over <= 0:
                    self.silent[waiting] = trio.current_time()
                try:
                    if isinstance(stream, tls.TlsStream):  # kv serve --cert: every connection (kvstore.tls)
                        try:
                            principal = await tls.handshake(stream, node, name)
                        except tls.NotTls as exc:
                            await self._refuse_plaintext(stream.transport_stream, name, exc.head)
                            return
                        if principal is None:
                            return
                    frames = await reader.receive_frames()
                finally:
                    self.silent.pop(waiting, None)
            if not frames:
                if over > 0:
                    self._count_over_limit(name, " (it sent no request)")
                return
            try:
                first = wire.decode_body(frames[0])
            except wire.WireError as exc:
                # Answer a bad first frame like any later one: addressed to its request id if it has one.
                self.counters["protocol_errors"] += 1
                _log_bad_frame(name, exc)
                with trio.move_on_after(1):
                    await stream.send_all(wire.encode_frame(wire.ErrorReply(
                        id=wire.request_id_of(frames[0]), code=wire.PROTOCOL, message=str(exc), leader=None)))
                return
            if isinstance(first, wire.Hello):
                self.open_connections -= 1
                counted = False
                await node.peer_links.serve(first, reader, frames[1:], name)
                return
            if over > 0 and not self._evict_silent():
                self._count_over_limit(name, "")
                with trio.move_on_after(1):
                    await stream.send_all(self._over_limit_reply(wire.request_id_of(frames[0])))
                return
            conn = ClientConn(name, self.dirty, self.range_budget)
            conn.principal = principal
            conn.read_state = lambda: node.learner.sm  # (the learner's state machine may be replaced)
            raw_stream = conn.outbox.attach(stream)  # (a TLS stream's TCP stream: the outbox seals)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer, raw_stream, conn)
                # Errors are handled inside the nursery block: trio would wrap anything raised here
                # in an ExceptionGroup, which the handlers below would not recognise.
                try:
                    self.conns.add(conn)
                    with conn.scope:
                        await self._serve(conn, reader, frames, name)
                    if conn.scope.cancelled_caught:
                        log.debug("closed client %s: idle for %gs", name, idle_timeout_seconds)
                except wire.WireError as exc:
                    self.counters["protocol_errors"] += 1
                    _log_bad_frame(name, exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug("connection from %s closed: %s", name, exc)
                finally:
                    self.conns.discard(conn)
                    node.watches.drop(conn)
                    # let the writer send what is queued, for a while, then stop it
                    self.send_replies()
                    conn.finish()
                    nursery.cancel_scope.deadline = trio.current_time() + REPLY_DRAIN_SECONDS
        except wire.WireError as exc:
            code = self._count_refusal(exc, name)
            with trio.move_on_after(1):
                try:
                    await stream.send_all(wire.encode_frame(
                        wire.ErrorReply(id=None, code=code, message=str(exc), leader=None,
                                        refused=code == wire.UNAVAILABLE)))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
            if isinstance(exc, wire.FrameBudgetExhausted) and reader is not None:
                await self._discard_refused(reader, exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("connection from %s closed: %s", name, exc)
        except Exception:  # one connection's bug must never take the node down
            self.counters["connection_crashes"] += 1
            log.exception("connection from %s failed", name)
        finally:
            if counted:
                self.open_connections -= 1
            if conn is not None:
                conn.closed = True
                conn.outbox.detach()  # before the stream closes its descriptor
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    def _evict_silent(self) -> bool:
        """The client connections are at their limit and a new one sent a request: close the oldest
        connection that never sent a frame, whatever its age, else the client with nothing unanswered
        that has been silent longest, if for ``IDLE_EVICT_SECONDS`` at least; True if one was closed. Our
        clients reconnect by themselves when they need the node again.

        A connection that has not sent a request (nor, with TLS, finished its handshake) has shown
        nothing, and a real client sends its first request within milliseconds of connecting: with an
        age limit for those too, a process without a certificate that replaced its silent sockets every
        few seconds kept every client out (QA)."""
        before = trio.current_time() - descriptors.IDLE_EVICT_SECONDS
        victim: trio.CancelScope | None = None
        if self.silent:
            victim = min(self.silent.items(), key=lambda item: item[1])[0]
        if victim is None:
            watching = self.node.watches.watching
            idle = [c for c in self.conns
                    if c.last_heard <= before and c.answered >= c.requests and not c.closed and not watching(c)]
            if idle:
                victim = min(idle, key=lambda c: c.last_heard).scope
        if victim is None:
            return False
        victim.cancel()
        self.silent.pop(victim, None)
        self.counters["connections_evicted_silent"] += 1
        return True

    def _over_limit_reply(self, request_id: int | None) -> bytes:
        """The frame that refuses a connection over the limit (``refused``: nothing of it was run)."""
        return wire.encode_frame(wire.ErrorReply(
            id=request_id, code=wire.UNAVAILABLE, leader=None, refused=True,
            message=f"node {self.node.node_id} has all the client connections it takes ({self.connections_max}, "
                    "kv serve --max-client-connections): try another node, or later"))

    async def _refuse_plaintext(self, transport: trio.abc.Stream, name: str, head: bytes) -> None:
        """A client (or peer) without TLS dialed this TLS-only node: tell it so, in plaintext, addressed to
        its first request (so that the client gives up at once instead of retrying until its timeout:
        no node of a TLS cluster will take it), then the caller closes the connection. The request is
        read up to ``PLAINTEXT_PEEK_BYTES`` and 1 s at most, never run."""
        node = self.node
        self.counters["tls_plaintext_refused"] += 1
        more = tls.REFUSALS_LOGGED.allow("plaintext")
        if more is not None:
            log.warning("refused connection from %s: it does not speak TLS and node %d takes TLS only (a client "
                        "without --cacert, --cert and --key, or a peer without --cert?)%s", name, node.node_id, more)
        buffer = bytearray(head)
        request_id = None
        peer = False
        with trio.move_on_after(1):
            while len(buffer) <= PLAINTEXT_PEEK_BYTES:
                try:
                    bodies = split_frames(buffer, node.options.frame_bytes_max)
                except wire.WireError:
                    break  # not even our frames: nothing to address the answer to
                if bodies:
                    request_id = wire.request_id_of(bodies[0])
                    try:
                        peer = type(wire.decode_body(bodies[0])) is wire.Hello  # (a member reads this in its log)
                    except wire.WireError:
                        pass
                    break
                data = await transport.receive_some(PLAINTEXT_PEEK_BYTES)
                if not data:
                    return
                buffer += data
        reply = wire.ErrorReply(
            id=request_id, code=wire.PROTOCOL, leader=None, refused=True,
            message=f"node {node.node_id} takes TLS connections only: start this node with --cacert, --cert and --key "
                    "as the other members (docs/security.md)" if peer else
                    f"node {node.node_id} takes TLS connections only: give the client the cluster's CA and a client "
                    "certificate (kv --cacert, --cert and --key, or KV_CACERT, KV_CERT and KV_KEY); "
                    "nothing of the request was run")
        with trio.move_on_after(1):
            try:
                await transport.send_all(wire.encode_frame(reply))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # it went away: nothing more to tell it

    def _count_over_limit(self, name: str, how: str) -> None:
        """A connection refused because the client connections are at their limit: counted, and logged
        now and then (a flood of them must not flood the log too). ``how``: said after its name."""
        counters = self.counters
        counters["connections_refused_over_limit"] += 1
        if counters["connections_refused_over_limit"] in (1, 10, 100, 1000, 10000):
            log.warning("node %d refused a connection from %s%s: %d client connections are open, the most it "
                        "takes (kv serve --max-client-connections); %d refused so far", self.node.node_id, name,
                        how, self.connections_max, counters["connections_refused_over_limit"])

    async def _writer(self, stream: trio.abc.Stream, conn: ClientConn) -> None:
        try:
            await conn.outbox.run(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.closed = True  # the client went away; the reader sees the end of the stream
        finally:
            conn.outbox.detach()

    async def _serve(self, conn: ClientConn, reader: wire.FrameReader, frames: list[bytes], name: str) -> None:
        """The client request loop: route what arrived, hand the node the events, send the answers
        given here, then wait for more frames."""
        post = self.node._post
        route = self._route
        while True:
            events: list[object] = []
            for i, request in enumerate(wire.decode_bodies(frames)):
                if conn.parked:  # answers wait for the client to read: no more requests until they are out
                    post(events)
                    events = []
                    self.send_replies()
                    if not await self._await_room(conn):
                        return
                if isinstance(request, wire.WireError):
                    post(events)
                    await self._answer_then_refuse(conn, name, request, wire.request_id_of(frames[i]))
                    return
                try:
                    route(conn, request, events)
                except wire.WireError as exc:  # a peer's message (see _route)
                    post(events)
                    await self._answer_then_refuse(conn, name, exc, None)
                    return
                conn.requests += 1
            post(events, nbytes=len(frames[0]) if len(frames) == 1 else sum(map(len, frames)))
            self.send_replies()  # answers given here (not_leader, serializable reads, status)
            if conn.parked and not await self._await_room(conn):
                return
            # No timeout scope per receive (a trio deadline each time, with many requests a second):
            # the ticker closes connections idle for too long (close_idle).
            try:
                frames = await reader.receive_frames()
            except wire.WireError as exc:  # a bad length, a frame cut short: after complete frames
                await self._answer_then_refuse(conn, name, exc, None)
                if isinstance(exc, wire.FrameBudgetExhausted):
                    self.send_replies()
                    await self._discard_refused(reader, exc)
                return
            if not frames:
                # The client ended its side (``shutdown(SHUT_WR)``, as ``nc -N`` does) and may still read:
                # what it sent is answered first, as before a bad frame (QA: the answers of writes still
                # waiting for consensus were dropped, though the writes went on to be applied).
                await self._await_answers(conn)
                return
            conn.last_heard = trio.current_time()

    async def _await_room(self, conn: ClientConn) -> bool:
        """Wait until the answers ``conn`` holds back are all encoded and written (its client reads them);
        False if the connection closed meanwhile. One that sends nothing (directly or by its writer) for
        ``REPLY_STALL_SECONDS`` is closed as unread: not reading its answers, the client holds no more
        than the window of them, and its connection only until then."""
        sent = conn.outbox.sent_bytes
        stalled_since = trio.current_time()
        while conn.parked and not conn.closed:
            await trio.sleep(0.005)  # (a rare path: a poll is simpler than an event per send)
            now = trio.current_time()
            if conn.outbox.sent_bytes != sent:
                sent, stalled_since = conn.outbox.sent_bytes, now
            elif now - stalled_since >= REPLY_STALL_SECONDS:
                conn._close_unread(conn.outbox.backlog_bytes + conn.pending_bytes)
        return not conn.closed

    async def _answer_then_refuse(self, conn: ClientConn, name: str, error: wire.WireError,
                                  request_id: int | None) -> None:
        """A bad frame (docs/protocol.md, section 2), or one the node has no room for: the requests that
        arrived complete before it are still answered (within the request timeout), then the error goes
        (``protocol``, or ``unavailable`` and ``refused``: see ``_count_refusal``), and the caller closes
        the connection. The frames after it are never read."""
        code = self._count_refusal(error, name)
        await self._await_answers(conn)
        # (unavailable: a frame refused for want of room; nothing of it or after it was read, so every
        # request of this connection still unanswered now was turned away: ``refused``)
        conn.reply(wire.ErrorReply(id=request_id, code=code, message=str(error), leader=None,
                                   refused=code == wire.UNAVAILABLE))

    async def _await_answers(self, conn: ClientConn) -> None:
        """Wait until every request ``conn`` sent has its answer (within the request timeout), or it closed."""
        self.send_replies()
        if conn.answered < conn.requests and not conn.closed:
            with trio.move_on_after(self.node.options.request_timeout_seconds + 1.0):
                while conn.answered < conn.requests and not conn.closed:
                    await trio.sleep(0.01)  # (a rare path: a poll is simpler than an event per reply)

    async def _discard_refused(self, reader: wire.FrameReader, error: wire.FrameBudgetExhausted) -> None:
        """After the refusal of a frame the node had no room for: read the rest of that frame and drop it
        (for ``REFUSED_FRAME_DRAIN_SECONDS`` at most), so that the connection then closes cleanly and
        the client reads the refusal. Closed with those bytes unread, it would end in a reset, which
        can reach the client before the refusal does: the client could then only say that its write
        may or may not have been applied."""
        try:
            with trio.move_on_after(REFUSED_FRAME_DRAIN_SECONDS):
                await reader.discard(error.unread)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    def _count_refusal(self, error: wire.WireError, name: str) -> str:
        """Count and log why a connection is being closed for what it sent; return the error code to
        answer with: ``unavailable`` for a large frame the node has no room for now
        (``wire.FrameBudget``: not the sender's fault, worth sending again later), else ``protocol``."""
        if isinstance(error, wire.FrameBudgetExhausted):
            self.counters["frames_refused_for_room"] += 1
            log.warning("closing connection from %s: %s", name, error)
            return wire.UNAVAILABLE
        self.counters["protocol_errors"] += 1
        _log_bad_frame(name, error)  # (a TLS member dialing a node without TLS: throttled)
        return wire.PROTOCOL

    def _route(self, conn: ClientConn, request: object, events: list[object]) -> None:
        """Answer ``request`` here, or append what the driver must do for it to ``events``. What is answered
        here is counted here (``Waiters.requests``); the waiters count the rest."""
        node = self.node
        requests = node.waiters.requests
        if self.acl is not None:
            refused = self.acl.refusal(conn.principal, request)  # kv serve --acl (kvstore.acl)
            if refused is not None:
                requests[request_op(request), "denied"] += 1
                # (only client requests are refused, and each has an id)
                conn.reply(wire.ErrorReply(id=getattr(request, "id", None), code=wire.PERMISSION_DENIED,
                                           message=refused, leader=None))
                return
        match request:
            case wire.PutRequest() | wire.DeleteRequest() | wire.CasRequest():
                try:
                    command, decoded = commands.encode_write(request)
                except ValueError as exc:
                    requests[request_op(request), "error"] += 1
                    conn.reply(wire.ErrorReply(id=request.id, code=wire.BAD_REQUEST, message=str(exc), leader=None))
                    return
                if node._fenced:
                    reply = node._disk_reply(request.id)
                    requests[request_op(request), OUTCOME_OF_CODE.get(reply.code, "error")] += 1
                    conn.reply(reply)
                    return
                if not node.replica.is_leader:
                    requests[request_op(request), "not_leader"] += 1
                    conn.reply(node.waiters.not_leader(request.id, refused=True))
                    return
                events.append(Proposal(command, decoded, (request.client_id, request.request_id), conn, request.id))
            case wire.GetRequest() | wire.ListRequest():
                problem = (commands.key_problem(request.key) if isinstance(request, wire.GetRequest)
                           else commands.prefix_problem(request.prefix))
                if problem is not None:
                    # (QA: an empty key or one over the limit was answered "not found", and a prefix over
                    # the limit an empty list, where docs/protocol.md says bad_request, as for a put of it)
                    requests[request_op(request), "error"] += 1
                    conn.reply(wire.ErrorReply(id=request.id, code=wire.BAD_REQUEST, message=problem, leader=None))
                    return
                if request.linearizable:
                    if node._fenced:
                        reply = node._disk_reply(request.id, read=True)
                        requests[request_op(request), OUTCOME_OF_CODE.get(reply.code, "error")] += 1
                        conn.reply(reply)
                        return
                    if not node.replica.is_leader:
                        requests[request_op(request), "not_leader"] += 1
                        conn.reply(node.waiters.not_leader(request.id, refused=True))
                        return
                    events.append(Read(conn, request))
                    return
                learner = node.learner
                if learner.lazy or learner.queue:
                    # This node has decided commands it has not applied: the read waits for them (and a
                    # lazy learner turns eager for a while, see Learner.should_be_lazy).
                    learner.note_local_read(trio.current_time())
                    node.waiters.add_local_read(node.replica.applied_slot, conn, request)
                    events.append(WAKE)
                else:
                    requests[request_op(request), "ok"] += 1
                    conn.reply_read(learner.sm, request)
            case wire.StatusRequest():
                requests["status", "ok"] += 1
                conn.reply(wire.OkReply(id=request.id, result=node.status()))
            case wire.WatchRequest():
                self._watch(conn, request)
            case wire.UnwatchRequest():
                requests["unwatch", "ok"] += 1
                cancelled = node.watches.cancel(conn, request.watch)
                conn.reply(wire.OkReply(id=request.id, result={"cancelled": cancelled}))
            case wire.AdminRequest():
                node.members.handle(conn, request)  # a task of its own: a change takes round trips
            case wire.BackupRequest():
                node.members.backup(conn, request)  # kv snapshot save (kvstore.backup): a task of its own
            case wire.Hello() | wire.PaxosBatch() | wire.SnapshotChunk():
                # A peer's message after client requests: no request id to answer, so a protocol error
                # and the connection closes (_serve); a peer says hello in its first frame.
                raise wire.WireError(f"a {type(request).__name__} is a peer message; a peer link begins with hello")
            case _:  # a reply sent to the server: answered, the connection stays
                conn.reply(wire.ErrorReply(id=getattr(request, "id", None), code=wire.BAD_REQUEST,
                                           message=f"{type(request).__name__} is not a client request",
                                           leader=None))


    def _watch(self, conn: ClientConn, request: wire.WatchRequest) -> None:
        """``kv watch`` (``kvstore.watches``): answered with the revision the events start after."""
        node = self.node
        requests = node.waiters.requests
        problem = (commands.prefix_problem if request.prefix else commands.key_problem)(request.key)
        # Connections with watches are never closed as idle nor evicted: at most half of the client
        # connections may hold them, so that watchers (or abandoned ones) cannot lock other clients out.
        room = max(1, self.connections_max // 2)
        refusal: wire.ErrorReply | None
        if problem is not None:
            refusal = wire.ErrorReply(id=request.id, code=wire.BAD_REQUEST, message=problem, leader=None)
        elif node._fenced or node.replica.config.role(node.node_id) is None:
            # (it applies nothing new: its disk failed, or it was removed and nobody sends it the log)
            why = "its disk failed or is full" if node._fenced else "it was removed from the cluster"
            refusal = wire.ErrorReply(id=request.id, code=wire.UNAVAILABLE, leader=None, refused=True,
                                      message=f"node {node.node_id} reports no changes ({why}): watch on another node")
        elif not node.watches.watching(conn) and node.watches.connections >= room:
            refusal = wire.ErrorReply(id=request.id, code=wire.UNAVAILABLE, leader=None, refused=True,
                                      message=f"{room} connections hold watches on this node, its most: try "
                                              "another node")
        elif request.rev is not None and (kept := self._kept_since(request.rev)) is None:
            refusal = wire.ErrorReply(
                id=request.id, code=wire.COMPACTED, leader=None, refused=True,
                message=f"node {node.node_id} keeps the changes from revision {node.history.complete_from} on, "
                        f"not from {request.rev}: watch from there, or on another node, or read the keys again "
                        "and watch from their revision")
        else:
            refusal = node.watches.add(conn, request.id, request.key, request.prefix)
        if refusal is not None:
            requests["watch", OUTCOME_OF_CODE.get(refusal.code, "error")] += 1
            conn.reply(refusal)
            return
        requests["watch", "ok"] += 1
        learner = node.learner
        if request.rev is None:
            conn.reply(wire.OkReply(id=request.id, result={"watching": True, "rev": learner.sm.revision}))
        else:
            # From an earlier revision (kv watch --rev): the kept changes from it go first (a long replay in
            # steps, the live changes held back), so none comes before them nor falls between (kvstore.watches)
            conn.reply(wire.OkReply(id=request.id, result={"watching": True, "rev": learner.sm.revision,
                                                           "from": request.rev}))
            assert kept is not None  # (else refused above)
            node.watches.replay(conn, request.id, kept, node.nursery.start_soon)
        if learner.lazy:
            # A lazy learner turns eager while it has watches (Learner.should_be_lazy): at once, so
            # that what it decided and has not applied yet is reported now, not at its next tick.
            learner.update(trio.current_time(), node.replica.leader_id, node.replica.is_leader, node._fenced)
            node._post_event(WAKE)

    def _kept_since(self, revision: int) -> list[Change] | None:
        """The changes this node keeps from ``revision`` on (none yet if it is above the node's revision:
        the client drops what comes below it); None if it no longer keeps them all."""
        node = self.node
        return node.history.since(revision) if revision <= node.learner.sm.revision else []


_NO_DIGITS = str.maketrans("", "", "0123456789")
# Bad frames logged: ten at once of each reason, then one a second (QA: a client looping on bad frames
# wrote 2,000 lines a second, 24 GB of log a day); protocol_errors counts every one.
BAD_FRAMES_LOGGED = tls.LogThrottle(1.0, burst=10)
_LEFT_OUT_EXAMPLES: dict[str, str] = {}  # reason (digits left out) -> the last such error left out of the log


def _log_bad_frame(name: str, exc: Exception) -> None:
    """One warning for a connection closed over a bad frame, at most ten at once and then one a second of
    each reason (``BAD_FRAMES_LOGGED``; its numbers do not make another reason); those that are TLS records
    (a TLS peer or client dialing this node without TLS: its members redial ten times a second) at most
    once a second, as ``tls.REFUSALS_LOGGED`` does for handshakes. ``protocol_errors`` counts every one."""
    if isinstance(exc, wire.FrameCutShort):
        # A client that gave up while writing (on every failover with large values: QA), not a bad peer
        log.info("connection from %s ended in the middle of a frame: %s", name, exc)
        return
    text = str(exc)
    kind = text.translate(_NO_DIGITS)
    more = tls.REFUSALS_LOGGED.allow("speaks TLS") if "speaks TLS" in text else BAD_FRAMES_LOGGED.allow(kind)
    if more is None and "speaks TLS" not in text:
        if len(_LEFT_OUT_EXAMPLES) > 256:
            _LEFT_OUT_EXAMPLES.clear()
        _LEFT_OUT_EXAMPLES[kind] = text  # (named when the count is logged: ClientLinks.close_idle)
    if more is not None:
        log.warning("closing connection from %s: bad frame: %s%s", name, exc, more)
