"""The client library: async for trio, and a blocking client for plain scripts and threads.

Theory of operation
-------------------
A client holds at most one connection, to the node it believes leads. Many requests may be in flight
on it at once: each frame carries a per-connection request id, and one reader task hands each reply to
the request waiting for it.

Every call has a deadline (``timeout``). Until then the client retries:

* ``not_leader`` with a hint: reconnect to the hinted leader at once;
* ``not_leader`` without a hint, a refused or broken connection: try the next endpoint after a short,
  growing pause (an election is probably under way);
* no answer in time: give up on that node's connection and go on as after a broken one. A node that
  stopped answering (paused, cut off) takes an attempt timeout to be given up, while the others elect
  a leader in a fraction of that. So once the connection has been silent for ``PROBE_SILENCE_SECONDS``
  with requests out, the client asks every endpoint whom it follows (``_probe_leader``); if they name
  another leader than the connection's node (by node id), the requests go there at once, with their
  request ids.

Writes carry ``(client_id, request_id, ack_below)``. A retry reuses the same ``request_id``, so the
state machine applies the write once and returns its first result even when the first attempt was
decided but its reply lost. That is what makes retrying a write after a leader failure safe. When the
deadline passes, ``Unavailable`` says whether a write's outcome is unknown (it may have been applied).
A new write waits while it would be ``WRITE_WINDOW`` or more above the oldest write still out: the state
machine remembers only that many results per client, so within the window every retry is remembered.
The client id says when it was made (``frames.new_client_id``). A cluster that forgot this client (more
than 10,000 newer clients wrote since its last write) refuses its writes as ``expired``: one that was
never sent before goes out again under a new client id (``_renew_client_id``), one that was is reported
as outcome unknown (``Unavailable``): it may have been applied before the cluster forgot the client.

Reads are linearizable by default (the leader confirms leadership with a majority before answering);
``consistency="s"`` reads whatever the contacted node has applied, which can be stale.

``submit_put`` and ``submit_get`` are for a caller that keeps many requests in flight from one task
(``kv bench``): instead of a task waiting per request, a callback gets the outcome. The first attempt
goes out on the open connection and its reply is handed to the callback by the connection's reader;
a failed attempt (not the leader, no answer in time, a lost connection) continues exactly as ``put``
or ``get`` would, in a task of the client, with the same request id and deadline.
"""
from __future__ import annotations

import builtins
import collections
import heapq
import itertools
import math
import random
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import trio

from . import wire
from .endpoints import format_endpoint, next_in_rotation, parse_endpoint, parse_endpoint_list
from .errors import Entry, KVError, RequestError, Unavailable, WatchEvent, WatchLost, entries_of
from .frames import CONNECT_SECONDS, U64_LIMIT, check_timeout, client_id_stamp, new_client_id
from .limits import KEY_BYTES_MAX, VALUE_BYTES_MAX, check_key, check_value
from .netio import Outbox, set_keepalive

__all__ = ["AsyncClient", "Client", "connect", "Entry", "KVError", "RequestError", "Unavailable", "Watch", "WatchEvent",
           "WatchLost", "WRITE_WINDOW"]

if TYPE_CHECKING:
    from .oneshot import OneShotClient
    from .server import Transport
    from .tls import TlsTransport

_P = ParamSpec("_P")
_T = TypeVar("_T")
# What a request attempt builds from its connection's request id: the message, or its frame already
_Build = Callable[[int], object]
# A submitted request's continuation: the result map, or the exception the awaited call would raise
_Finish = Callable[[object], None]


def _check_put(key: object, value: object) -> None:
    """``check_key(key)`` and ``check_value(value)``, as one call for the common case (ASCII text or
    bytes within the limits) that every put pays."""
    if not (type(key) is str and key.isascii() and len(key) <= KEY_BYTES_MAX
            and (type(value) is bytes or (type(value) is str and value.isascii())) and len(value) <= VALUE_BYTES_MAX):
        check_key(key)
        check_value(value)


class _ConnectionLost(Exception):
    pass


# A first attempt made already (a submitted request): its connection and its reply
_Attempt = tuple["_Connection | None", object]


# A write goes out only while its request id is less than this far above the oldest write still out
# (its ack_below). The state machine remembers at most this many results per client and raises the
# client's floor past the ones it forgets (kvstore.statemachine.RESULTS_PER_CLIENT_MAX), so a write
# retried while this many newer ones were answered would be refused as stale, its outcome unknown
# (with 256 in flight, a leader failover did this). Within the window every retry is remembered.
WRITE_WINDOW = 4096
RENEWALS_MAX = 3  # new client ids one write may take after "expired" answers (see _renew_client_id)
SOLO_CALLS = 64  # calls in a row with nothing else in flight before a connection writes at once


class _Expired(Exception):
    """``_call``: a write refused as expired whose earlier attempts, if any, were turned away on arrival
    (so it was not applied): ``_write`` sends it again under a new client id."""

    def __init__(self, horizon: int) -> None:
        super().__init__(horizon)
        self.horizon = horizon


def _expired_again(times: int) -> str:
    return (f"the cluster refused this write as from a client it forgot {times} times, each time under a new "
            f"client id; the write was not applied (is this machine's clock far behind the cluster's clients'?)")


_TIMED_OUT = object()  # a waiter's reply when its attempt deadline passed (see _Connection.watchdog)
WATCHDOG_SECONDS = 0.05
# A connection with requests out that received nothing for this long has the endpoints asked whom they
# follow (see AsyncClient._probe_leader): less than the servers' election timeout (0.3 s by default), an
# answer's normal wait many times over, and the one-shot client's hedge (kvstore.oneshot.HEDGE_SECONDS).
PROBE_SILENCE_SECONDS = 0.25
# ... doubled after each probe that found the connection's node alive and still leading (a slow leader:
# a slow disk, a long step), up to this; back to PROBE_SILENCE_SECONDS after as long without such a silence
PROBE_SILENCE_SECONDS_MAX = 2.0
# How long each endpoint gets to answer a probe (a connect and one status request) ...
PROBE_ANSWER_SECONDS = 0.5
# ... and, once another endpoint names a leader, how much longer the connection's own node gets, when its
# node id is not known yet: a node reached under two spellings (a DNS name and the --peers address) is
# the same node, and only its id says so (QA: requests moved back and forth between the two, 2 times a second)
PROBE_OWN_GRACE_SECONDS = 0.1
# A watch that received nothing for this long asks its node for a sign of life (an ``unwatch`` of no
# watch: a tiny answer), and ends with WatchLost if nothing comes for as long again: a paused or hung node
# keeps the connection open, and TCP keepalive alone noticed it only after about a minute (kv watch then
# goes on on another node).
WATCH_SILENCE_SECONDS = 5.0


_Task = trio.lowlevel.Task


def _wake(waiter: list[Any], reply: object) -> None:
    """Answer a waiter ``[task or callback or None, reply, answered]`` that its caller just took out of
    the table.

    ``reply`` is the reply, ``_TIMED_OUT``, or None for a lost connection. The task is None while
    the caller has not parked yet (the reply came during its own write); it then finds the answer
    without parking. A submitted request (``_Connection.submit``) has a callback instead of a task,
    called here with the reply. Only whoever removes a waiter from ``_Connection.waiters`` may call
    this, so a task is rescheduled (or a callback called) at most once.
    """
    waiter[1] = reply
    waiter[2] = True
    task = waiter[0]
    if task is not None:
        if type(task) is _Task:
            trio.lowlevel.reschedule(task)
        else:
            task(reply)


class _Connection:
    """One TCP connection with a reader task that routes replies to waiters by request id.

    One request at a time, the caller reads its own reply instead (``_read_own``): the reader task
    sits idle, so the reply wakes the caller directly, not the reader, which would then wake the
    caller in the scheduler's next pass. At any moment at most one task reads the socket: the reader
    task (not idle), or the one caller in ``caller_reading``.

    Each request waits until its own attempt deadline at most. Rather than a trio cancel scope per
    request (a quarter of the client's CPU per put with many in flight), a watchdog task wakes every
    ``WATCHDOG_SECONDS`` and answers the overdue waiters with ``_TIMED_OUT``; the caller then gives up
    on this connection, and closing it also ends a send that was stuck on a node that stopped reading.
    """

    def __init__(self, endpoint: tuple[str, int], stream: trio.abc.Stream) -> None:
        self.endpoint = endpoint
        self.stream = stream
        self.waiters: dict[int, list[Any]] = {}  # id -> [task, reply, answered] (see _wake)
        # Attempt deadlines by watchdog period: period number -> ids due by its end. The watchdog
        # takes whole periods as they pass, so a request costs one append instead of a heap push
        # and pop (the heap held every request of the last attempt timeout, answered or not).
        self.deadlines: dict[int, list[int]] = {}
        self.next_period = math.ceil(trio.current_time() / WATCHDOG_SECONDS)  # the first not yet taken
        self.ids = itertools.count(1)
        self.broken = False
        self.error: BaseException | None = None  # why the reader stopped, if the connection failed
        self.gathering = False  # a caller is collecting this scheduler pass's frames into one write
        self.queued: list[bytes] = []
        self.calls = 0
        self.last_overlap = -SOLO_CALLS  # the call number when a call last found another in flight
        self.dispatching = False  # the reader is handing out replies (it writes what they submit)
        self.send_pending = False  # submitted frames wait in queued for _send_submitted
        self.outbox = Outbox()
        self.raw_stream = self.outbox.attach(stream)  # (a TLS stream's TCP stream: the outbox seals)
        self.frames = wire.FrameReader(stream)
        self.reader_task: _Task | None = None
        self.reader_idle = False  # the reader task is parked, reading nothing (see _read_own)
        self.caller_reading: list[Any] | None = None  # the waiter of the caller reading the socket
        # Silence (see watchdog): batches of frames read so far, and what to call once the connection
        # has had requests out and read nothing for PROBE_SILENCE_SECONDS (None: nothing).
        self.received = 0
        self.on_silence: Callable[[_Connection], None] | None = None
        self.probe_after = PROBE_SILENCE_SECONDS  # the silence that calls on_silence (see AsyncClient._probe_leader)
        self.private = False  # a connection of one admin request's own (see AsyncClient._call)

    async def writer(self) -> None:
        """Send what the socket did not take at once (see ``kvstore.netio.Outbox``)."""
        try:
            await self.outbox.run(self.raw_stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.fail_all()

    async def reader(self) -> None:
        self.reader_task = trio.lowlevel.current_task()
        try:
            while not self.broken:
                if not self.waiters and self.calls - self.last_overlap > SOLO_CALLS:
                    # Nothing out, and one request at a time lately: the next caller reads its own reply
                    # (see _read_own). Woken when others wait for replies while nobody reads.
                    await self._idle()
                    continue
                frames = await self.frames.receive_frames()
                if not frames:
                    break
                self._dispatch(frames)
        except (wire.WireError, _ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # (kept for the waiters' callers: a TLS alert refusing our certificate ends up here)
            self.error = exc.__cause__ if exc.__cause__ is not None else exc
        finally:
            self.fail_all()

    def _dispatch(self, frames: list[bytes]) -> None:
        """Hand the replies in ``frames`` to their waiters (whoever reads the socket calls this).
        Raises ``WireError`` or ``_ConnectionLost`` when the connection is no good any more."""
        waiters = self.waiters
        self.dispatching = True
        self.received += 1
        try:
            for reply in wire.decode_bodies(frames):
                if isinstance(reply, wire.WireError):
                    raise reply
                rid = getattr(reply, "id", None)
                if rid is None:  # the server gave up on this connection (protocol error)
                    if type(reply) is wire.ErrorReply and reply.refused:
                        # ... turning away every request of it still unanswered, none of them
                        # read (a large frame it had no room for): each gets this answer
                        waiting, self.waiters = self.waiters, {}
                        for unanswered in waiting.values():
                            _wake(unanswered, reply)
                    raise _ConnectionLost(getattr(reply, "message", "connection closed by server"))
                waiter = waiters.pop(rid, None)
                if waiter is not None:
                    _wake(waiter, reply)
        finally:
            self.dispatching = False
        if self.send_pending:
            # What the callbacks of these replies submitted leaves in one write.
            self._send_submitted()

    async def _idle(self) -> None:
        """Park the reader task until ``_wake_reader`` (or a cancellation: the client's end)."""
        self.reader_idle = True

        def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
            self.reader_idle = False
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _wake_reader(self) -> None:
        """Have the reader task read again, if it is idle."""
        if self.reader_idle:
            self.reader_idle = False
            assert self.reader_task is not None  # (set before it first parks)
            trio.lowlevel.reschedule(self.reader_task)

    async def _read_own(self, rid: int, waiter: list[Any]) -> None:
        """Read the socket until ``waiter`` (request ``rid``, this task's) is answered, handing out
        every other reply read meanwhile as the reader task would.

        Only while the reader task is idle and no other caller reads. On the way out the reader task
        takes over if others still wait for replies. If the watchdog answers ``waiter`` with
        ``_TIMED_OUT`` meanwhile, it closes the stream to end this task's wait (the caller gives up on
        the connection then anyway). A failure
        of the connection fails it for every waiter, as in the reader task. Cancelled, the request
        leaves the table (its reply, if it comes, is dropped) and the socket is left in a clean state:
        ``FrameReader`` loses no bytes to a cancellation.
        """
        self.caller_reading = waiter
        try:
            while not waiter[2]:
                frames = await self.frames.receive_frames()
                if not frames:
                    raise _ConnectionLost("connection closed by the server")
                self._dispatch(frames)
        except (wire.WireError, _ConnectionLost, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.error = exc.__cause__ if exc.__cause__ is not None else exc
            self.fail_all()  # (answers this waiter too, unless the watchdog did)
        finally:
            self.caller_reading = None
            if not waiter[2]:
                self.waiters.pop(rid, None)  # cancelled: nobody answers it now
            if self.waiters:
                self._wake_reader()

    async def watchdog(self) -> None:
        deadlines = self.deadlines
        heard = self.received
        silent_periods = 0
        # Periods since the last silence of PROBE_SILENCE_SECONDS: the backed-off probe_after returns to
        # PROBE_SILENCE_SECONDS only after PROBE_SILENCE_SECONDS_MAX without one. (QA: reset at every
        # answer, it never held while a slow leader answered every 0.3-0.5 s: probes went on twice a second.)
        calm_periods = 0
        while not self.broken:
            await trio.sleep(WATCHDOG_SECONDS)
            if self.received != heard or not self.waiters:
                heard, silent_periods = self.received, 0
            else:
                silent_periods += 1
                if silent_periods * WATCHDOG_SECONDS >= self.probe_after and self.on_silence is not None:
                    silent_periods = 0  # (the next probe, if any, after as long again, or longer)
                    self.on_silence(self)
            if silent_periods * WATCHDOG_SECONDS >= PROBE_SILENCE_SECONDS:
                calm_periods = 0
            else:
                calm_periods += 1
                if calm_periods * WATCHDOG_SECONDS >= PROBE_SILENCE_SECONDS_MAX:
                    self.probe_after = PROBE_SILENCE_SECONDS
            # Period p holds deadlines in ((p - 1) * W, p * W]: all passed once p * W <= now.
            passed = math.floor(trio.current_time() / WATCHDOG_SECONDS)
            waiters = self.waiters
            while self.next_period <= passed:
                for rid in deadlines.pop(self.next_period, ()):
                    waiter = waiters.pop(rid, None)
                    if waiter is not None:
                        _wake(waiter, _TIMED_OUT)
                self.next_period += 1
            reading = self.caller_reading
            if reading is not None and reading[2]:
                # The caller reading the stream timed out: closing the stream ends its wait there (its
                # caller gives up on this connection anyway). fail_all first, as every closer: once the
                # descriptor is closed its number may be another socket's, and no direct write may go
                # there (QA: another task's request went to an unrelated socket of the process).
                self.fail_all()
                await trio.aclose_forcefully(self.stream)

    def fail_all(self) -> None:
        self.broken = True
        self._wake_reader()  # (so that it ends)
        # No direct writes from now on: the stream is about to be closed, and its descriptor number
        # may then belong to another socket.
        self.outbox.detach()
        self.outbox.close()
        waiters, self.waiters = self.waiters, {}
        for waiter in waiters.values():
            _wake(waiter, None)

    def _watch(self, rid: int, deadline: float) -> None:
        """Have the watchdog answer request ``rid`` with ``_TIMED_OUT`` once ``deadline`` passed (an
        infinite deadline waits for the reply or the connection's end)."""
        if deadline < math.inf:
            period = max(self.next_period, math.ceil(deadline / WATCHDOG_SECONDS))
            due = self.deadlines.get(period)
            if due is None:
                self.deadlines[period] = [rid]
            else:
                due.append(rid)

    def submit(self, make_request: _Build, deadline: float, callback: Callable[[object], None]) -> bool:
        """Send one request without waiting: ``callback(reply)`` is called with its reply, or with
        ``_TIMED_OUT`` or None as ``call`` would return or raise, from this connection's tasks.

        Returns False (and calls nothing) if the connection is closed. No task waits per request:
        frames submitted in one scheduler pass leave in one write, by the reader after the replies
        it hands out, else in a callback scheduled for the end of the pass.
        """
        if self.broken:
            return False
        rid = next(self.ids)
        request = make_request(rid)
        self.queued.append(request if type(request) is bytes else wire.encode_frame(request))
        self.waiters[rid] = [callback, None, False]
        self._watch(rid, deadline)
        if self.reader_idle and self.caller_reading is None:
            self._wake_reader()  # (nobody else reads: its reply needs the reader task)
        if not self.send_pending:
            self.send_pending = True
            if not self.dispatching:
                trio.lowlevel.current_trio_token().run_sync_soon(self._send_submitted)
        return True

    def _send_submitted(self) -> None:
        """Write the queued frames now. Also those of a calling task that is gathering (``call``): it
        then finds nothing left to write and parks. Leaving them to it would keep that task writing
        for the callbacks, one pass after another, while its own answer waits unread."""
        self.send_pending = False
        if self.queued and not self.broken:
            data = b"".join(self.queued)
            self.queued.clear()
            self.outbox.write(data)  # False: closed meanwhile; fail_all answers the waiters

    async def call(self, make_request: _Build, deadline: float) -> object:
        """Send one request (``make_request(id)`` builds the message or its frame) and wait for its
        reply until ``deadline``.

        Returns the reply, or ``_TIMED_OUT``; raises ``_ConnectionLost`` if the connection fails first.
        """
        if self.broken:
            raise _ConnectionLost("connection is closed")
        rid = next(self.ids)
        request = make_request(rid)  # a message, or its frame already (puts: see AsyncClient.put)
        frame = request if type(request) is bytes else wire.encode_frame(request)
        waiter: list[Any] = [None, None, False]  # see _wake
        self.waiters[rid] = waiter
        self._watch(rid, deadline)
        self.calls += 1
        if len(self.waiters) > 1:
            self.last_overlap = self.calls
        if self.calls - self.last_overlap > SOLO_CALLS and not self.gathering:
            # One request at a time lately: write at once, without yielding to the scheduler (such a
            # caller pays for every scheduler pass in latency). Not as soon as nothing else happens
            # to be in flight: with many callers, replies come in bunches, and the first caller woken
            # would send alone, splitting the server's next batch in two.
            sent = self.outbox.write(frame)
        else:
            # Others are in flight: whoever finds no gathering under way yields once, so that the
            # other tasks running in this scheduler pass add their frames, then writes them all at
            # once. The others only queue: no lock hand-offs, which would cost a pass each.
            self.queued.append(frame)
            sent = True
            if not self.gathering:
                self.gathering = True
                try:
                    # Yield after each write too, and write again what came meanwhile: under load
                    # this sends fewer, larger writes (and wakes the server fewer times).
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    while self.queued and sent:
                        data = b"".join(self.queued)
                        self.queued.clear()
                        sent = self.outbox.write(data)
                        await trio.lowlevel.cancel_shielded_checkpoint()
                finally:
                    self.gathering = False
        if not sent:  # the connection was closed meanwhile
            self.waiters.pop(rid, None)
            raise _ConnectionLost("connection is closed")
        if not waiter[2] and self.reader_idle and self.caller_reading is None:
            await self._read_own(rid, waiter)
        if not waiter[2]:
            # Park until _wake reschedules us (a trio.Event per request costs more). If we are
            # cancelled first, leave the table so that nobody reschedules us later.
            waiter[0] = trio.lowlevel.current_task()

            def abort(_raise_cancel: object) -> trio.lowlevel.Abort:
                self.waiters.pop(rid, None)
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if waiter[1] is None:
            raise _ConnectionLost("connection lost before the reply")
        return waiter[1]


# What a watch sends its silent node (Watch.__anext__): the answer, {"cancelled": false}, is a sign of life.
_SIGN_OF_LIFE = wire.encode_frame(wire.UnwatchRequest(id=2, watch=0))


class Watch:
    """An open watch (``AsyncClient.watch``): ``async for event in watch`` gives each ``WatchEvent`` in the
    order the node applied them, and raises ``WatchLost`` if the watch ends before the caller ends it.

    ``revision``: every change to the watched keys up to this revision has been given out (at the start,
    the node's revision when the watch began: the events are the changes after it; or, for a watch from
    revision ``rev``, ``rev - 1``). A delete's revision counts only once a later change shows up (a prefix
    delete's changes share one revision, and may come in several frames); the keys given out of the
    revision after ``revision`` are kept, and a ``WatchLost`` carries them (``given``) so that a watch
    resumed from it does not give them out twice. ``endpoint``: the node that serves it (HOST:PORT)."""

    def __init__(self, endpoint: str, reader: wire.FrameReader, wire_id: int, revision: int,
                 skip_below: int = 0, stream: trio.abc.Stream | None = None,
                 skip_given: frozenset[str] = frozenset()) -> None:
        self.endpoint = endpoint
        self.revision = revision
        # the deletes given out at revision + 1, which may go on (a resumed watch's start with those
        # the lost one gave out: they carry over if this one is lost too before that revision is complete)
        self._partial: set[str] = set(skip_given)
        # A watch resumed from a WatchLost: the deletes of revision + 1 that the lost watch gave out
        self._skip_given = skip_given
        self._stream = stream  # (to ask a silent node for a sign of life; None: never asked)
        # A watch from a revision above its node's (a node behind the one watched before): the node
        # starts live, and the changes below that revision, given out already, are dropped here.
        self._skip_below = skip_below
        self._reader = reader
        self._id = wire_id
        self._events: collections.deque[WatchEvent] = collections.deque()
        self._ended: str | None = None  # why the node ended the watch, raised once the events before it are out
        self._ended_code = ""  # the error code it ended it with

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        asked = False  # a sign of life was asked for since the last frame
        while not self._events:
            if self._ended is not None:
                raise self._lost(self._ended, code=self._ended_code)
            try:
                with trio.move_on_after(WATCH_SILENCE_SECONDS if self._stream is not None else math.inf) as silent:
                    frames = await self._reader.receive_frames()  # (FrameReader loses no bytes to a cancel)
                if silent.cancelled_caught:
                    assert self._stream is not None
                    if asked:
                        raise self._lost(f"{self.endpoint} did not answer for {2 * WATCH_SILENCE_SECONDS:g} s "
                                         "(paused, hung, or cut off)")
                    asked = True
                    with trio.move_on_after(WATCH_SILENCE_SECONDS):
                        await self._stream.send_all(_SIGN_OF_LIFE)
                    continue
                asked = False
            except (wire.WireError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise self._lost(f"the watch on {self.endpoint} ended: {exc}") from None
            if not frames:
                raise self._lost(f"{self.endpoint} closed the connection of the watch")
            self.take(frames)
        event = self._events.popleft()
        # A put is the only change of its revision; a prefix delete's "del"s share one, and may go on in
        # the next frame: that revision is complete only once a later one shows up. Until then the keys
        # given out of it are kept (QA: a watch resumed from the revision before gave them out twice).
        if event.kind == "put" or (self._events and self._events[0].mod_revision > event.mod_revision):
            self.revision = event.mod_revision
            self._partial.clear()
        elif event.mod_revision - 1 > self.revision:
            self.revision = event.mod_revision - 1
            self._partial = {event.key}
        else:
            self._partial.add(event.key)
        return event

    def _lost(self, message: str, code: str = "") -> WatchLost:
        return WatchLost(message, self.revision, code=code, given=frozenset(self._partial), endpoint=self.endpoint)

    def take(self, frames: builtins.list[bytes]) -> None:
        """Queue the events in ``frames``; an end (an error addressed to the watch, a bad frame) is raised as
        ``WatchLost`` once the events the node sent before it have been given out."""
        if self._ended is not None:
            return
        for reply in wire.decode_bodies(frames):
            if isinstance(reply, wire.WireError):
                self._ended = f"{self.endpoint} sent a bad frame: {reply}"
                return
            if type(reply) is wire.WatchEvents and reply.id == self._id:
                if self._skip_below or self._skip_given:
                    start, given = self._skip_below or self.revision + 1, self._skip_given
                    events = [event for event in reply.events
                              if event[4] > start or (event[4] == start and event[1] not in given)]
                    if any(event[4] > start for event in reply.events):
                        self._skip_below, self._skip_given = 0, frozenset()  # (in order: the rest are above)
                    self._events.extend(WatchEvent(*event) for event in events)
                else:
                    self._events.extend(WatchEvent(*event) for event in reply.events)
            elif type(reply) is wire.ErrorReply and reply.id in (self._id, None):
                self._ended = f"{self.endpoint} ended the watch: {reply.message}"
                self._ended_code = reply.code
                return


class AsyncClient:
    """A connection to the cluster. Build it with ``connect()``; see the module docstring."""

    def __init__(self, endpoints: list[str] | str, nursery: trio.Nursery, *, timeout: float = 5.0,
                 transport: Transport | None = None) -> None:
        self.endpoints = parse_endpoint_list(endpoints)
        self._open_stream: Callable[[str, int], Awaitable[trio.abc.Stream]] = (
            transport.connect if transport is not None else trio.open_tcp_stream)
        self._plain_tcp = transport is None
        self.timeout = check_timeout(timeout)
        self.attempt_timeout = max(0.5, min(2.0, timeout / 3))
        self._nursery = nursery
        self._trio_token = trio.lowlevel.current_trio_token()  # the run it belongs to (see _check_open)
        self._closed = False  # aclose() ran (the end of connect()'s block does): every call raises KVError
        self._conn: _Connection | None = None
        # Set while one task opens the connection; the others wait for it (see _connection).
        self._connecting: trio.Event | None = None
        self._connect_error: BaseException | None = None  # how the last attempt to connect failed
        self._preferred = 0  # index into endpoints of the node we believe leads
        self._probing = False  # a _probe_leader task runs
        self._node_ids: dict[tuple[str, int], int] = {}  # endpoint -> the node id it answered a probe with
        self._led_at: dict[tuple[str, int], tuple[int, int]] = {}  # endpoint -> the ballot it last said it led at
        self.leader_probes = 0  # probes made, and how many of them moved the requests to another node
        self.leader_probes_moved = 0
        self._cursor = 0  # where the rotation through endpoints stands (see _advance)
        self.client_id = new_client_id()  # (replaced when the cluster forgot it: _renew_client_id)
        self.client_id_renewals = 0
        # trio's clock itself (trio.current_time() reaches it through two more Python calls; a
        # submitted request reads it once)
        self._clock = trio.lowlevel.current_clock().current_time
        self._request_ids = itertools.count(1)
        # Request ids of writes in flight (a min-heap, with answered ids removed lazily): the smallest
        # is the ack_below we send, telling the state machine it may forget every result below it.
        self._unanswered: list[int] = []
        self._answered: set[int] = set()
        # Writes waiting for the window (see WRITE_WINDOW) wait on this event; _answered_write sets it.
        self._window_waiters = 0
        self._window_moved = trio.Event()
        # Submitted writes beyond the window, in order: (request_id, build, finish), sent as it moves.
        self._deferred_writes: collections.deque[tuple[int, _Build, _Finish]] = collections.deque()

    # --- public API -------------------------------------------------------------------------------

    async def put(self, key: str, value: str | bytes) -> int:
        """Store ``value`` under ``key``; return the revision of the write. A key or value over the
        store's limits raises ``kvstore.limits.TooLarge`` (a ValueError) before anything is sent."""
        _check_put(key, value)
        result = await self._write(lambda rid, cid, rq, ack: wire.encode_put_request_frame(
            rid, key, value, cid, rq, ack))
        rev: int = result["rev"]
        return rev

    async def get(self, key: str, *, consistency: str = "l") -> str | bytes | None:
        """The value of ``key``, or None when absent."""
        entry = await self.get_entry(key, consistency=consistency)
        return None if entry is None else entry.value

    async def get_entry(self, key: str, *, consistency: str = "l") -> Entry | None:
        check_key(key)
        lin = _linearizable(consistency)
        result = await self._read(lambda rid: wire.GetRequest(id=rid, key=key, linearizable=lin))
        if not result.get("found"):
            return None
        return Entry(key, result["value"], result["ver"], result["mrev"])

    async def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        check_key(key)
        result = await self._write(lambda rid, cid, rq, ack: wire.DeleteRequest(
            id=rid, key=key, prefix=False, client_id=cid, request_id=rq, ack_below=ack))
        deleted: int = result["deleted"]
        return deleted > 0

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every key that starts with ``prefix``; return how many were deleted."""
        check_key(prefix, "prefix")
        result = await self._write(lambda rid, cid, rq, ack: wire.DeleteRequest(
            id=rid, key=prefix, prefix=True, client_id=cid, request_id=rq, ack_below=ack))
        deleted: int = result["deleted"]
        return deleted

    async def cas(self, key: str, expected: str | bytes | None, new: str | bytes) -> bool:
        """Set ``key`` to ``new`` if its value is ``expected`` (None: only if absent). True if swapped.
        Text and bytes are different values: a key holding the str ``"me"`` does not match ``b"me"``."""
        check_key(key)
        check_value(expected, "expected value", optional=True)
        check_value(new, "new value")
        result = await self._write(lambda rid, cid, rq, ack: wire.CasRequest(
            id=rid, key=key, expected=expected, new=new, client_id=cid, request_id=rq, ack_below=ack))
        return bool(result["ok"])

    async def list(self, prefix: str = "", *, keys_only: bool = False, consistency: str = "l",
                   limit: int = 0) -> builtins.list[tuple[str, str | bytes | None]]:
        """``[(key, value), ...]`` in key order (``[(key, None), ...]`` with keys_only)."""
        check_key(prefix, "prefix")
        lin = _linearizable(consistency)
        result = await self._read(lambda rid: wire.ListRequest(
            id=rid, prefix=prefix, keys_only=keys_only, linearizable=lin, limit=limit))
        return [(item[0], item[1] if len(item) > 1 else None) for item in result["items"]]

    async def list_entries(self, prefix: str = "", *, consistency: str = "l", limit: int = 0) -> builtins.list[Entry]:
        """As ``list``, with each key's version and mod_revision: ``[Entry(key, value, version,
        mod_revision), ...]`` in key order (etcd's range). A node from before 2026-12-06 cannot say them:
        ``KVError``."""
        check_key(prefix, "prefix")
        lin = _linearizable(consistency)
        result = await self._read(lambda rid: wire.ListRequest(
            id=rid, prefix=prefix, keys_only=False, linearizable=lin, limit=limit, meta=True))
        return entries_of(result["items"])

    async def admin(self, op: str, node: int = 0, address: str = "") -> dict[str, Any]:
        """A membership or leadership request, sent to the leader (``wire.ADMIN_OPS``: member_list,
        member_add, member_promote, member_remove, move_leader). Returns the members as the leader
        sees them afterwards; raises ``RequestError`` with the reason when refused."""
        if op not in wire.ADMIN_OPS:
            raise ValueError(f"unknown admin operation {op!r}; expected one of {', '.join(wire.ADMIN_OPS)}")
        self._check_open()
        began = trio.current_time()
        # The list changes nothing: it goes as a read does, to another node when one does not answer (QA:
        # a paused member first in the endpoints held every membership request for its whole timeout).
        listed = await self._read(lambda rid: wire.AdminRequest(id=rid, op="member_list", node=0, address=""))
        if op == "member_list":
            return listed
        # A change has no request id: it must not go out twice, so one that got no answer is not sent again.
        # It goes to the node that answered the list: the leader (a follower that knows one sends the list
        # there).
        return await self._call(lambda rid: wire.AdminRequest(id=rid, op=op, node=node, address=address),
                                write=False, once=True, began=began)

    async def backup(self, session: int = 0, offset: int = 0) -> dict[str, Any]:
        """One step of ``kv snapshot save`` (``kvstore.backup.save_backup`` drives it): session 0 begins
        a backup on the leader (the answer names the session, its slot, revision, keys and state hash);
        then each call gets the next piece of that session's bytes from ``offset`` (``data``, ``done``,
        and with the last one ``length`` and ``sha256``). Raises ``RequestError`` when refused."""
        return await self._read(lambda rid: wire.BackupRequest(id=rid, session=session, offset=offset))

    async def member_list(self) -> dict[str, Any]:
        return await self.admin("member_list")

    async def member_add(self, node: int, address: str) -> dict[str, Any]:
        return await self.admin("member_add", node, address)

    async def member_promote(self, node: int) -> dict[str, Any]:
        return await self.admin("member_promote", node)

    async def member_remove(self, node: int) -> dict[str, Any]:
        return await self.admin("member_remove", node)

    async def move_leader(self, node: int) -> dict[str, Any]:
        return await self.admin("move_leader", node)

    async def status(self, endpoint: str | tuple[str, int], *, timeout: float | None = None) -> dict[str, Any]:
        """The status of one node (raises Unavailable if it does not answer within ``timeout``, the
        client's by default)."""
        self._check_open()
        if isinstance(endpoint, str):
            endpoint = parse_endpoint(endpoint)
        wait = self.timeout if timeout is None else timeout
        reply: object = None
        failure = None
        with trio.move_on_after(wait) as scope:
            try:
                stream = await self._open_stream(*endpoint)
            except OSError as exc:
                raise Unavailable(f"{format_endpoint(*endpoint)} is unreachable: {exc}") from None
            async with stream:
                conn = _Connection(endpoint, stream)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(conn.reader)
                    nursery.start_soon(conn.writer)  # what the socket does not take at once (no socket: all)
                    # Nothing may raise inside the nursery block (trio would wrap it in a group).
                    try:
                        reply = await conn.call(lambda rid: wire.StatusRequest(id=rid), math.inf)
                    except (_ConnectionLost, OSError) as exc:
                        failure = exc
                    nursery.cancel_scope.cancel()
        if failure is not None:
            raise Unavailable(f"{format_endpoint(*endpoint)} closed the connection: {failure}")
        if scope.cancelled_caught or reply is None:
            raise Unavailable(f"{format_endpoint(*endpoint)} did not answer within {wait:g}s")
        if isinstance(reply, wire.ErrorReply):
            raise RequestError(reply.message, reply.code)
        if not isinstance(reply, wire.OkReply):  # a frame with an id that is no reply: garbage
            raise Unavailable(f"{format_endpoint(*endpoint)} answered with a {type(reply).__name__}")
        return reply.result

    @asynccontextmanager
    async def watch(self, key: str, *, prefix: bool = False, rev: int | None = None,
                    resume: WatchLost | None = None) -> AsyncIterator[Watch]:
        """``async with kv.watch("config/", prefix=True) as events: async for event in events: ...``: the
        changes to ``key`` (to every key starting with it, with ``prefix``) from now on, as one node
        applies them (``kvstore.watches``; every node reports the same changes, a node behind later).

        With ``rev``, the changes from revision ``rev`` on (etcd's ``--rev``): the node first gives out
        the ones it keeps (its history, ``kv serve --watch-history``), then the new ones. To resume a
        watch that ended (``WatchLost``) without missing or repeating a change, watch again from its
        ``revision + 1``, or pass it as ``resume``: the same, without the deletes of that revision it gave
        out already (a prefix delete's share one revision, complete only once a later change came). A node
        that no longer keeps them all refuses (the next one is tried); if none keeps them: ``RequestError``
        with code ``compacted``, naming the oldest revision each keeps.

        The watch goes to the first node that takes it, starting from the one believed to lead, on a
        connection of its own, and ends with the block. ``Unavailable`` if no node takes it within the
        client's timeout; ``RequestError`` if it is refused (a bad key, the ACL); ``WatchLost`` from the
        iteration if it ends otherwise (its node stopped)."""
        self._check_open()
        check_key(key, "prefix" if prefix else "key")
        given: frozenset[str] = frozenset()
        if resume is not None:
            if rev is not None:
                raise ValueError("give rev or resume, not both")
            rev, given = resume.revision + 1, resume.given
        if rev is not None and (type(rev) is not int or not 1 <= rev < U64_LIMIT):
            raise ValueError(f"rev must be an int from 1 to 2**64 - 1, got {rev!r}")
        compacted: builtins.list[str] = []
        deadline = trio.current_time() + self.timeout
        count = len(self.endpoints)
        order = [self.endpoints[(self._preferred + i) % count] for i in range(count)]
        if resume is not None:
            # The node whose watch was lost last (QA: a paused node, first in the order, was asked first
            # again, and held the resumed watch for an attempt timeout)
            order.sort(key=lambda endpoint: format_endpoint(*endpoint) == resume.endpoint)
        problems: builtins.list[str] = []
        for endpoint in order:
            name = format_endpoint(*endpoint)
            stream: trio.abc.Stream | None = None
            frames: builtins.list[bytes] = []  # (QA: an attempt that timed out left it unset, or another node's)
            with trio.move_on_at(min(deadline, trio.current_time() + self.attempt_timeout)) as scope:
                try:
                    stream = await self._open_stream(*endpoint)
                    set_keepalive(stream)  # (a silent watch must still notice its node gone: WatchLost)
                    await stream.send_all(wire.encode_frame(wire.WatchRequest(id=1, key=key, prefix=prefix, rev=rev)))
                    reader = wire.FrameReader(stream)
                    frames = await reader.receive_frames()
                except (OSError, wire.WireError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    problems.append(f"{name}: {exc}")
                    frames = []
            if scope.cancelled_caught:
                problems.append(f"{name}: no answer within {self.attempt_timeout:g}s")
            first = wire.decode_bodies(frames[:1])[0] if frames else None
            if (type(first) is wire.OkReply and first.id == 1 and type(first.result.get("rev")) is int
                    and rev is not None and first.result.get("from") != rev):
                # A node of a version before watch histories: it ignored rev and watches from now on
                problems.append(f"{name}: keeps no history of changes (an older version)")
                first = None  # (its problem is said: not "answered with" below)
            elif type(first) is wire.OkReply and first.id == 1 and type(first.result.get("rev")) is int:
                assert stream is not None
                if rev is None:
                    watch = Watch(name, reader, 1, first.result["rev"], stream=stream)
                else:
                    watch = Watch(name, reader, 1, rev - 1, skip_below=rev if rev > first.result["rev"] + 1 else 0,
                                  stream=stream, skip_given=given)
                try:
                    watch.take(frames[1:])
                    yield watch
                finally:
                    await trio.aclose_forcefully(stream)  # (the node forgets the watch with its connection)
                return
            if stream is not None:
                await trio.aclose_forcefully(stream)
            if type(first) is wire.ErrorReply:
                if first.code in (wire.BAD_REQUEST, wire.PERMISSION_DENIED):
                    raise RequestError(first.message, first.code)
                problems.append(f"{name}: {first.message}")
                if first.code == wire.COMPACTED:
                    compacted.append(f"{name}: {first.message}")
            elif first is not None and not scope.cancelled_caught:
                problems.append(f"{name}: answered with {type(first).__name__}")
            if trio.current_time() >= deadline:
                break
        if compacted and len(compacted) == len(problems):
            raise RequestError(f"no node keeps the changes from revision {rev} on ({'; '.join(compacted)})",
                               wire.COMPACTED)
        within = f" within {self.timeout:g}s" if trio.current_time() >= deadline else ""
        raise Unavailable(f"no node took the watch{within} ({'; '.join(problems)})")

    async def cluster_status(self) -> builtins.list[dict[str, Any]]:
        """One entry per endpoint, each with ``"endpoint"`` and ``"reachable"``."""
        results: builtins.list[dict[str, Any]] = [{} for _ in self.endpoints]

        async def one(i: int, endpoint: tuple[str, int]) -> None:
            try:
                status = await self.status(endpoint)
                results[i] = {"endpoint": format_endpoint(*endpoint), "reachable": True, **status}
            except (KVError, OSError, _ConnectionLost) as exc:
                results[i] = {"endpoint": format_endpoint(*endpoint), "reachable": False, "error": str(exc)}

        async with trio.open_nursery() as nursery:
            for i, endpoint in enumerate(self.endpoints):
                nursery.start_soon(one, i, endpoint)
        return results

    async def aclose(self) -> None:
        """Close the connection; from then on every request raises ``KVError("client is closed")``, as
        the blocking ``Client`` does (``connect()``'s block closes the client when it ends)."""
        self._closed = True
        if self._conn is not None:
            self._conn.fail_all()
            await trio.aclose_forcefully(self._conn.stream)
            self._conn = None

    # --- machinery -------------------------------------------------------------------------------

    async def _write(self, make: Callable[[int, bytes, int, int], object]) -> dict[str, Any]:
        """The write that ``make(id, client_id, request_id, ack_below)`` builds. Every attempt of it carries
        the client id it was first sent with, but one the cluster refused as expired, and that no earlier
        attempt may have reached, goes on under a new one (``_renew_client_id``)."""
        request_id = next(self._request_ids)
        heapq.heappush(self._unanswered, request_id)
        try:
            if request_id - self._unanswered[0] >= WRITE_WINDOW:
                await self._window_open_for(request_id)
            client_id = self.client_id
            began = trio.current_time()
            for _ in range(RENEWALS_MAX):
                def build(rid: int, client_id: bytes = client_id) -> object:
                    return make(rid, client_id, request_id, self._unanswered[0])
                try:
                    return await self._call(build, write=True, began=began)
                except _Expired as expired:
                    client_id = self._renew_client_id(client_id, expired.horizon)
            raise Unavailable(_expired_again(RENEWALS_MAX), outcome_unknown=False)
        finally:
            self._answered_write(request_id)

    def _renew_client_id(self, expired: bytes, horizon: int) -> bytes:
        """A write under ``expired`` was refused: the cluster forgot that client, or (a client it never
        knew) its stamp is not above ``horizon``, the newest stamp of a client it forgot. Draw a new id
        stamped above it, unless another write did already; return the id to send the write under."""
        current = self.client_id
        stamp = client_id_stamp(current)
        if current == expired or (stamp is not None and stamp <= horizon):
            self.client_id = current = new_client_id(after=horizon)
            self.client_id_renewals += 1
        return current

    def _answered_write(self, request_id: int) -> None:
        """The write ``request_id`` has its outcome: move ack_below past every answered write."""
        self._answered.add(request_id)
        heap, answered = self._unanswered, self._answered
        if heap[0] != request_id:
            return  # an older write is still out: ack_below stays
        while heap and heap[0] in answered:
            answered.discard(heapq.heappop(heap))
        deferred = self._deferred_writes
        while deferred and deferred[0][0] - heap[0] < WRITE_WINDOW:
            _, build, finish = deferred.popleft()
            self._submit(build, finish, write=True)
        if self._window_waiters:
            self._window_moved.set()
            self._window_moved = trio.Event()

    async def _window_open_for(self, request_id: int) -> None:
        """Wait until ``request_id`` is less than WRITE_WINDOW above ack_below (the oldest write out)."""
        self._window_waiters += 1
        try:
            while request_id - self._unanswered[0] >= WRITE_WINDOW:
                await self._window_moved.wait()
        finally:
            self._window_waiters -= 1

    # --- submitted requests (no task waits for each) -----------------------------------------------

    def submit_put(self, key: str, value: str | bytes, done: Callable[[object], None]) -> None:
        """Send ``put`` without waiting for it; ``done(outcome)`` gets the revision (an int) or the
        exception that ``put`` would raise, called later from the client's own tasks.

        For a caller with many requests in flight, such as ``kv bench``: no task waits per request, so
        a request costs about half the CPU of ``await put()``. Same guarantees as ``put``: when the
        first attempt fails (no connection, not the leader, no answer in time) the request goes on as
        ``put`` does, in a task of the client, with the same request id and deadline. ``done`` must
        not raise; it may submit more requests. Requests still pending when the client is closed may
        never reach ``done``. A key or value over the store's limits raises ``TooLarge`` here, as ``put``.
        """
        client_id = self.client_id  # (the id it goes under: a new one only after "expired", see finish)
        renewals = 0
        request_id = next(self._request_ids)
        heapq.heappush(self._unanswered, request_id)

        def build(rid: int) -> bytes:
            return wire.encode_put_request_frame(rid, key, value, client_id, request_id, self._unanswered[0])

        def finish(outcome: object) -> None:
            nonlocal client_id, renewals
            if type(outcome) is _Expired:
                # Refused, and no earlier attempt may have gone through: again under a new id (as _write)
                if renewals + 1 < RENEWALS_MAX and not self._closed:
                    client_id = self._renew_client_id(client_id, outcome.horizon)
                    renewals += 1
                    self._submit(build, finish, write=True)
                    return
                outcome = Unavailable(_expired_again(RENEWALS_MAX), outcome_unknown=False)
            self._answered_write(request_id)
            done(outcome["rev"] if type(outcome) is dict else outcome)

        try:
            _check_put(key, value)
            if self._deferred_writes or request_id - self._unanswered[0] >= WRITE_WINDOW:
                # Too far ahead of the oldest write still out: sent, in order, once it is answered
                # (see _answered_write); its deadline counts from then.
                build(0)  # (refuses a frame too large here and now, as put does)
                self._deferred_writes.append((request_id, build, finish))
                return
            self._submit(build, finish, write=True)
        except BaseException:  # refused before it was sent (a frame too large): raised here, as put does
            self._answered_write(request_id)
            raise

    def submit_get(self, key: str, done: Callable[[object], None], *, consistency: str = "l") -> None:
        """``get`` without waiting, as ``submit_put``: ``done`` gets the value (None when absent) or
        the exception."""
        check_key(key)  # (as get: before anything is sent)
        lin = _linearizable(consistency)

        def finish(outcome: object) -> None:
            if type(outcome) is dict:
                outcome = outcome["value"] if outcome.get("found") else None
            done(outcome)

        self._submit(lambda rid: wire.GetRequest(id=rid, key=key, linearizable=lin), finish, write=False)

    def _check_open(self) -> None:
        if self._closed:
            raise KVError("client is closed")
        self._check_run()

    def _check_run(self) -> None:
        if trio.lowlevel.current_trio_token() is not self._trio_token:
            # Its connection, reader task and waiting requests belong to the run that opened it: a call
            # from another run would wake that run's tasks from this one (trio asserts, and the run fails).
            raise KVError("this client belongs to another trio run (connect() in each run that uses one)")

    def _submit(self, build: _Build, finish: _Finish, *, write: bool) -> None:
        """The first attempt of a submitted request on the current connection; anything but an OK
        reply hands the request to ``_call`` (in a task), which goes on from that reply."""
        self._check_open()
        began = self._clock()
        conn = self._conn

        def go_on(attempt: _Attempt | None) -> None:
            try:
                self._nursery.start_soon(self._resume, build, finish, write, began, attempt)
            except RuntimeError:  # the client is closed
                finish(Unavailable("the client was closed", outcome_unknown=write and attempt is not None))

        def on_reply(reply: object) -> None:
            if type(reply) is wire.OkReply:
                finish(reply.result)
            else:
                go_on((conn, reply))

        if conn is None or not conn.submit(build, began + min(self.timeout, self.attempt_timeout), on_reply):
            go_on(None)

    async def _resume(self, build: _Build, finish: _Finish, write: bool, began: float,
                      attempt: _Attempt | None) -> None:
        try:
            result = await self._call(build, write=write, began=began, attempt=attempt)
        except Exception as exc:  # what put or get would raise goes to the callback
            finish(exc)
            return
        finish(result)

    async def _read(self, make: _Build) -> dict[str, Any]:
        return await self._call(make, write=False)

    async def _call(self, build: _Build, *, write: bool, began: float | None = None,
                    attempt: _Attempt | None = None, once: bool = False) -> dict[str, Any]:
        """Send the request that ``build(id)`` makes, retrying until ``self.timeout`` after ``began``
        (default: now). ``attempt``: ``(connection, reply)`` of a first attempt made already (a
        submitted request), whose reply is handled before any new attempt. ``once``: a request that must
        not be carried out twice (an admin request): its attempt may take the whole timeout, and one that
        went out and got no answer is not sent again (``Unavailable``, outcome unknown)."""
        if attempt is None:
            self._check_run()  # (a submitted request was checked by _submit)
        first = trio.current_time() if began is None else began
        deadline = first + self.timeout
        started: float | None = first  # the clock reading for the next attempt, if it has one
        sent = attempt is not None
        # A write's outcome is unknown once an attempt of it may have been proposed: it got no answer,
        # or an error after it waited on the leader. Attempts the nodes turned away on arrival
        # (``ErrorReply.refused``: a follower's not_leader, a full disk) leave it known: not written.
        in_doubt = False
        pause = 0.02
        redirects = 0
        last_error = "no endpoint answered"
        refused_by_node = False  # the last attempt's node answered, refusing (a full disk, no leader)
        no_leader_seen = False  # a node answered that it knows no leader
        tls_refused: set[tuple[str, int]] = set()  # endpoints whose handshake failed (frames.handshake_refused)
        while True:
            if self._closed:
                if not sent:
                    raise KVError("client is closed")
                # QA: a write applied while its client was closed got a bare KVError, as if not written.
                raise Unavailable("client was closed during the call" + (
                    "; the write may or may not have been applied" if write and in_doubt else ""),
                    outcome_unknown=write and in_doubt)
            if tls_refused and tls_refused.issuperset(self.endpoints):
                # A certificate that one node refuses (or one we do not trust) does not mend in seconds:
                # once every node said so, give up now rather than at the deadline (as OneShotClient).
                raise Unavailable(wire.every_node_refused_tls(last_error, write=write, in_doubt=in_doubt),
                                  outcome_unknown=write and in_doubt)
            attempted = attempt is not None
            if attempt is not None:
                conn, reply = attempt
                attempt = None
                started = None  # the next attempt reads the clock
                if reply is None:
                    last_error = "connection lost before the reply"
                    self._give_up_on(conn)
            else:
                # (the first attempt reuses the clock reading above: one call less per request)
                now = started if started is not None else trio.current_time()
                started = None
                remaining = deadline - now
                if remaining <= 0:
                    head = ("no node could serve the request" if refused_by_node else "no answer from the cluster")
                    raise Unavailable(
                        f"{head} within {self.timeout:g}s "
                        f"({wire.gave_up_reason(last_error, no_leader_seen)})"
                        + ("; the write may or may not have been applied" if write and in_doubt else
                           "; the write was not applied" if write else ""),  # (nothing sent, or turned away)
                        outcome_unknown=write and in_doubt,
                    )
                reply = None
                conn = None
                endpoint = self.endpoints[self._preferred]
                # One attempt may not use the whole deadline: a node that accepts connections but never
                # answers (paused, partitioned away) must not keep us from the others. A retry reuses
                # the request id, so a write that the first attempt got through is still applied once.
                attempt_deadline = now + (remaining if once else min(remaining, self.attempt_timeout))
                try:
                    conn = None if once else self._conn
                    if conn is None or conn.broken:
                        # The connect has its own timeout (the attempt timeout) and moves on to the next
                        # endpoint when it fails; here only the call's deadline bounds the wait for it.
                        conn = None
                        with trio.move_on_at(deadline):
                            # A request that must not go out twice gets a connection of its own: on the
                            # shared one, another request's attempt timeout or a probe (_probe_leader)
                            # would give the connection up under it, and its outcome with it (QA).
                            conn = await (self._open_connection(private=True) if once else self._connection())
                        if conn is None:
                            last_error = "no connection before the deadline"
                    if conn is not None:
                        sent = attempted = True
                        if once:
                            try:
                                reply = await conn.call(build, attempt_deadline)
                            finally:
                                conn.fail_all()
                                self._nursery.start_soon(trio.aclose_forcefully, conn.stream)
                        else:
                            reply = await conn.call(build, attempt_deadline)
                except (_ConnectionLost, OSError) as exc:
                    last_error = f"connection failed: {exc}"
                    self._give_up_on(conn)
                    if conn is None:
                        if wire.handshake_refused(exc) or wire.handshake_refused(self._connect_error):
                            tls_refused.add(endpoint)  # (the connect failed: its handshake)
                    elif wire.handshake_refused(conn.error):
                        # TLS 1.3 finishes our side of the handshake first: the node's alert refusing our
                        # certificate comes with its first answer, and it read nothing of ours.
                        last_error = f"connection failed: {conn.error}"
                        attempted = False
                        tls_refused.add(conn.endpoint)
            if reply is _TIMED_OUT:
                assert conn is not None  # only a connection's watchdog answers _TIMED_OUT
                reply = None
                last_error = f"{format_endpoint(*conn.endpoint)} did not answer"
                self._give_up_on(conn)
            if reply is not None and not isinstance(reply, (wire.OkReply, wire.ErrorReply)):
                # A frame with an id that is no reply (a request type has one too): this node speaks
                # garbage. Drop the connection and go on as after a lost one.
                last_error = f"a node answered with a {type(reply).__name__}"
                self._give_up_on(conn)
                reply = None
            doubted = in_doubt  # (before this attempt: an earlier one may have been proposed)
            if attempted and not (type(reply) is wire.ErrorReply and reply.refused):
                in_doubt = True
            refused_by_node = reply is not None  # (an error reply: an OK one returns below)
            if reply is None and once and attempted:
                raise Unavailable(wire.sent_once_unanswered(last_error), outcome_unknown=True)
            if reply is None:
                if trio.current_time() < deadline:
                    await trio.sleep(min(pause, max(0.0, deadline - trio.current_time())))
                    pause = min(pause * 2, 0.5)
                continue
            if isinstance(reply, wire.OkReply):
                return reply.result
            code = reply.code
            if code == wire.NOT_LEADER:
                # (a node that says more than that, e.g. that it was removed from the members: its words)
                last_error = "no leader" if reply.message in ("", wire.NOT_LEADER_MESSAGE) else reply.message
                no_leader_seen = no_leader_seen or not reply.leader
                if reply.leader and redirects < 2:
                    # Follow the hint at once, but not forever: two nodes that still point at each
                    # other (a leader change under way) get the same pause as no hint at all.
                    redirects += 1
                    self._prefer(reply.leader)
                    continue
                if reply.leader:
                    self._prefer(reply.leader)
                else:
                    self._give_up_on(conn)
            elif code == wire.STALE:
                # The cluster forgot this write's first result: it may have been applied, and
                # retrying cannot tell any more.
                raise Unavailable(reply.message, outcome_unknown=True)
            elif code == wire.EXPIRED and write:
                # The cluster forgot this client: this attempt was not applied, nor will any other under
                # this client id be. If no earlier one may have been, the write goes on under a new id.
                if not doubted:
                    raise _Expired(reply.horizon)
                raise Unavailable(wire.EXPIRED_IN_DOUBT, outcome_unknown=True)
            elif code in (wire.TIMEOUT, wire.UNAVAILABLE, wire.SHUTTING_DOWN, wire.STORAGE_FULL, wire.DISK_FAILED):
                # Another node may serve it: a full or failed disk stops one node, not the cluster.
                last_error = reply.message
                self._give_up_on(conn)
            else:
                raise RequestError(reply.message, code)
            redirects = 0
            await trio.sleep(min(pause * (0.5 + random.random()), max(0.0, deadline - trio.current_time())))
            pause = min(pause * 2, 0.5)
            continue

    def _prefer(self, leader: str) -> None:
        try:
            endpoint = parse_endpoint(leader)
        except ValueError:
            self._drop_connection(advance=True)
            return
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        index = self.endpoints.index(endpoint)
        # Compare with the connection's own endpoint, not only with _preferred: a connection opened by
        # one task while another task followed a hint (changing _preferred) goes to the old node, and
        # keeping it would send every retry back to that follower until the deadline.
        if index != self._preferred or self._conn is None or self._conn.endpoint != endpoint:
            self._drop_connection(advance=False)
            self._preferred = index

    def _on_silence(self, conn: _Connection) -> None:
        """``conn`` had requests out and read nothing for ``PROBE_SILENCE_SECONDS`` (its watchdog calls)."""
        if conn is self._conn and not self._probing and not self._closed and len(self.endpoints) > 1:
            self._probing = True
            self.leader_probes += 1
            self._nursery.start_soon(self._probe_leader, conn)

    async def _probe_leader(self, conn: _Connection) -> None:
        """Ask every endpoint at once whom it follows (a ``status`` request each, on a connection of its
        own, with ``PROBE_ANSWER_SECONDS`` to answer), and move the requests out on ``conn`` to the leader
        they name if it is not ``conn``'s node and ``conn`` is still silent: ``conn`` is dropped, so they
        see a lost connection and go to that leader at once, with their request ids (a write that did get
        through is still applied once). What each answer names: the node itself, if it says it leads;
        else the leader it follows (``leader`` and ``leader_address``).

        Nodes are told apart by their ids, not by how they are spelled: each answer gives the id of the
        node that answered (remembered per endpoint), and ``conn``'s node is asked too. So a slow leader
        reached as ``db1:7001`` is not left for ``10.0.0.1:7001`` (its ``--peers`` address, which the
        followers name). While ``conn``'s id is unknown, a leader named elsewhere waits
        ``PROBE_OWN_GRACE_SECONDS`` for ``conn``'s node to answer; a node that does not answer at all
        (paused, cut off) is compared by address. Nothing named elsewhere: nothing moves, and if
        ``conn``'s node answered (alive: only slow) the next probe waits twice as long."""
        try:
            heard = conn.received
            ours = conn.endpoint
            asked = list(self.endpoints)
            answers: dict[tuple[str, int], dict[str, Any]] = {}
            finished: list[tuple[str, int]] = []
            news = [trio.Event()]  # set when an answer (or a failure to answer) comes in
            target: tuple[str, int] | None = None
            async with trio.open_nursery() as nursery:

                async def ask(endpoint: tuple[str, int]) -> None:
                    status = await self._probe_status(endpoint)
                    if status is not None:
                        answers[endpoint] = status
                        if type(status.get("id")) is int:
                            self._node_ids[endpoint] = status["id"]
                        ballot = _ballot_of(status)
                        if status.get("is_leader") is True and ballot is not None:
                            self._led_at[endpoint] = ballot
                        named = _named_leader(endpoint, status)
                        if named is not None and named[1] == ours and named[0] is not None and endpoint != ours:
                            # a follower names our node as we spell it: that is its id (until it answers itself)
                            self._node_ids.setdefault(ours, named[0])
                    finished.append(endpoint)
                    news[0].set()

                for endpoint in asked:
                    nursery.start_soon(ask, endpoint)
                # Until a leader elsewhere is found, or every endpoint answered; once the others did (or a
                # leader named elsewhere needs our node's id), our node gets PROBE_OWN_GRACE_SECONDS more.
                # (Not PROBE_ANSWER_SECONDS: a paused node never answers, and the next probe must not wait.)
                grace_ends = math.inf
                while True:
                    target, needs_ours = self._leader_named(ours, answers)
                    if target is not None or len(finished) == len(asked):
                        break
                    now = trio.current_time()
                    if now >= grace_ends:
                        break
                    others_done = all(e in finished for e in asked if e != ours)
                    if (needs_ours or others_done) and grace_ends == math.inf:
                        grace_ends = now + PROBE_OWN_GRACE_SECONDS
                    news[0] = trio.Event()
                    with trio.move_on_at(grace_ends):
                        await news[0].wait()
                if target is None:
                    target, _ = self._leader_named(ours, answers, ours_silent=ours not in answers)
                nursery.cancel_scope.cancel()
            if conn is not self._conn or conn.broken or conn.received != heard or not conn.waiters:
                return  # (it answered meanwhile, or was replaced: leave it)
            if target is not None:
                self.leader_probes_moved += 1
                self._prefer(format_endpoint(*target))
            elif ours in answers:
                conn.probe_after = min(conn.probe_after * 2, PROBE_SILENCE_SECONDS_MAX)  # alive, only slow
        finally:
            self._probing = False

    def _leader_named(self, ours: tuple[str, int], answers: dict[tuple[str, int], dict[str, Any]], *,
                      ours_silent: bool = False) -> tuple[tuple[str, int] | None, bool]:
        """From the probe's ``answers`` so far: the endpoint of a leader other than ``ours``'s node, or None;
        and whether that needs ``ours``'s answer first (its id unknown: see ``_probe_leader``).
        ``ours_silent``: ``ours`` has had its time and did not answer; compare by address."""
        ours_id = self._node_ids.get(ours)
        own = answers.get(ours)
        if own is not None and own.get("is_leader") is not True:
            named = _named_leader(ours, own)  # our node knows it does not lead: it may know who does
            if named is not None and named[0] != ours_id:
                return self._endpoint_of(*named), False
        # Our node, if it leads (it says so now, or it did at the last probe that heard it), is left only for
        # a leader of a higher ballot: the other claimant may be an old leader cut off from the rest, not
        # deposed yet. (A new leader's ballot is higher than every earlier leader's.)
        own_ballot = self._led_at.get(ours) if own is None or own.get("is_leader") is True else None
        for endpoint, status in answers.items():
            if endpoint == ours:
                continue
            named = _named_leader(endpoint, status)
            if named is None:
                continue
            node_id, where = named
            ballot = _ballot_of(status)
            if own_ballot is not None and ballot is not None and ballot <= own_ballot:
                continue
            if ours_id is not None:
                if node_id != ours_id:
                    return self._endpoint_of(node_id, where), False
            elif ours_silent:
                if where != ours:
                    return self._endpoint_of(node_id, where), False
            else:
                return None, True
        return None, False

    def _endpoint_of(self, node_id: int | None, where: tuple[str, int]) -> tuple[str, int]:
        """The endpoint to reach node ``node_id``: one of ours that answered with that id (as the user
        spelled it), else ``where`` (as the cluster's peers name it)."""
        if node_id is not None:
            for endpoint in self.endpoints:
                if self._node_ids.get(endpoint) == node_id:
                    return endpoint
        return where

    async def _probe_status(self, endpoint: tuple[str, int]) -> dict[str, Any] | None:
        """``status`` of ``endpoint`` for a probe, or None if it does not answer it within
        ``PROBE_ANSWER_SECONDS`` (unreachable, refused by the access rules, closed)."""
        with trio.move_on_after(PROBE_ANSWER_SECONDS):
            try:
                return await self.status(endpoint)
            except (KVError, ValueError):
                return None
        return None

    def _give_up_on(self, conn: _Connection | None) -> None:
        """The attempt through ``conn`` failed: close it and move on to the next endpoint.

        Only if ``conn`` is still the current connection: with many requests in flight, they all see
        the same failure, and the first one has already replaced the connection. Closing that new one
        (or rotating the endpoint once per request) would make the requests undo each other's repairs
        indefinitely. ``None``: the connect itself failed, and ``_connection`` moved on already.
        """
        if conn is not None and conn is self._conn:
            self._drop_connection(advance=True)
        elif conn is not None and conn.private and self.endpoints[self._preferred] == conn.endpoint:
            self._advance()  # (an admin request's own connection, closed after its call)

    def _drop_connection(self, *, advance: bool) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.fail_all()
            self._nursery.start_soon(trio.aclose_forcefully, conn.stream)
        if advance:
            self._advance()

    def _advance(self) -> None:
        """Move on from the endpoint that just failed (``endpoints.next_in_rotation``)."""
        self._cursor = self._preferred = next_in_rotation(self._cursor, self._preferred, len(self.endpoints))

    async def _connection(self) -> _Connection:
        """The open connection, opening one if there is none.

        One task connects; the others wait for its outcome and all wake together when it is known
        (a lock would let them through one scheduler pass at a time: the first requests of a burst
        would go out last). If that connect fails, each waiter fails too, so that its caller pauses
        before trying again, as the connecting task's caller does.
        """
        conn = self._conn
        if conn is not None and not conn.broken:
            return conn  # the common case (conn.call checkpoints)
        if self._connecting is not None:
            await self._connecting.wait()
            conn = self._conn
            if conn is not None and not conn.broken:
                return conn
            raise _ConnectionLost(f"connect failed: {self._connect_error}")
        connecting = self._connecting = trio.Event()
        try:
            return await self._connect()
        except BaseException as exc:
            self._connect_error = exc
            raise
        finally:
            self._connecting = None
            connecting.set()

    async def _connect(self) -> _Connection:
        """Open the shared connection, to the preferred endpoint (one task at a time: see ``_connection``)."""
        conn = await self._open_connection(private=False)
        conn.on_silence = self._on_silence
        self._conn = conn
        return conn

    async def _open_connection(self, *, private: bool) -> _Connection:
        """A connection to the preferred endpoint, its tasks started; a failed connect moves the rotation on
        and raises. ``private``: for one request (its caller closes it), never probed."""
        endpoint = self.endpoints[self._preferred]
        try:
            # (plain TCP: a reachable node connects in milliseconds; TLS bounds its TCP connect so itself, and
            # its handshake, which the node's event loop makes, gets the attempt's time)
            limit = min(self.attempt_timeout, CONNECT_SECONDS) if self._plain_tcp else self.attempt_timeout
            with trio.fail_after(limit):
                stream = await self._open_stream(*endpoint)
        except (OSError, trio.TooSlowError) as exc:
            if self.endpoints[self._preferred] == endpoint:
                self._advance()
            if isinstance(exc, trio.TooSlowError):
                raise _ConnectionLost(f"connecting to {format_endpoint(*endpoint)} timed out") from None
            raise
        conn = _Connection(endpoint, stream)
        conn.private = private
        self._nursery.start_soon(conn.reader)
        self._nursery.start_soon(conn.writer)
        self._nursery.start_soon(conn.watchdog)
        return conn


def _ballot_of(status: dict[str, Any]) -> tuple[int, int] | None:
    """The ballot a ``status`` answer reports (its promise: a leader's own ballot), if well formed."""
    ballot = status.get("ballot")
    if isinstance(ballot, list) and len(ballot) == 2 and all(type(x) is int for x in ballot):
        return ballot[0], ballot[1]
    return None


def _named_leader(endpoint: tuple[str, int], status: dict[str, Any]) -> tuple[int | None, tuple[str, int]] | None:
    """The leader a probe's ``status`` answer from ``endpoint`` names, as ``(node id, endpoint)``: the node
    itself if it says it leads (as we reach it), else the leader it follows at its ``leader_address``;
    None if it names none."""
    if status.get("is_leader") is True:
        node_id = status.get("id")
        return (node_id if type(node_id) is int else None), endpoint
    leader, address = status.get("leader"), status.get("leader_address")
    if type(leader) is int and isinstance(address, str):
        try:
            return leader, parse_endpoint(address)
        except ValueError:
            return None
    return None


def _tls_transport(cacert: str | None, cert: str | None, key: str | None) -> TlsTransport | None:
    """A client's mutual-TLS transport for the three PEM files, or None without them; ``TlsError``
    (a ValueError) for a missing or bad file, or for some of the three but not all."""
    if not (cacert or cert or key):
        return None  # (ssl is not even imported)
    from .tls import TlsFiles, TlsTransport

    files = TlsFiles.of(cacert, cert, key)
    return TlsTransport(files, server=False) if files is not None else None


def _linearizable(consistency: str) -> bool:
    if consistency not in ("l", "s"):
        raise ValueError(f"consistency must be 'l' (linearizable) or 's' (serializable, may be stale), "
                         f"not {consistency!r}")
    return consistency == "l"


@asynccontextmanager
async def connect(endpoints: list[str] | str, *, timeout: float = 5.0, transport: Transport | None = None,
                  cacert: str | None = None, cert: str | None = None,
                  key: str | None = None) -> AsyncIterator[AsyncClient]:
    """``async with connect(["127.0.0.1:7001", ...]) as kv:`` -> an ``AsyncClient``.

    ``endpoints``: a list of ``HOST:PORT`` or ``[IPV6]:PORT`` texts, or one comma-separated text; a
    malformed one raises ``kvstore.endpoints.EndpointError`` (a ValueError) before anything connects.
    ``cacert``, ``cert``, ``key``: PEM files (all three or none) for a cluster that serves mutual TLS
    (``kv serve --cacert --cert --key``; ``kvstore.tls``); a missing or bad file raises
    ``kvstore.tls.TlsError`` (a ValueError) before anything connects.
    ``transport`` (tests only) replaces TCP: an object with ``async connect(host, port) -> stream``.
    ``timeout``: seconds above 0 (a ValueError before anything connects). It runs under trio
    (``trio.run``); elsewhere (asyncio, plain threads) use the blocking ``Client``.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        # (QA: under asyncio, trio's nursery failed with "'RunContext' object has no attribute 'runner'")
        raise RuntimeError("kvstore.client.connect runs under trio (trio.run); from asyncio or plain threads "
                           "use the blocking kvstore.client.Client") from None
    if transport is None:
        transport = _tls_transport(cacert, cert, key)
    # Checked here, before the nursery opens: raised inside it, the EndpointError (or the timeout's
    # ValueError) would reach the caller wrapped in an ExceptionGroup, which ``except ValueError`` does
    # not catch.
    parse_endpoint_list(endpoints)
    check_timeout(timeout)
    # An exception from the caller's block is re-raised after the nursery has closed, so that it
    # reaches the caller as itself (Unavailable, ...) rather than wrapped in an ExceptionGroup.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        client = AsyncClient(endpoints, nursery, timeout=timeout, transport=transport)
        try:
            yield client
        except BaseException as exc:
            error = exc
        finally:
            await client.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


class Client:
    """The blocking client: ``AsyncClient``'s request methods, for plain scripts and threads.

    Each thread that calls it gets a connection of its own: a ``kvstore.oneshot.OneShotClient``, on a
    plain socket (or ``ssl`` for a TLS cluster), one request at a time, with ``AsyncClient``'s retries,
    redirects, deadlines, exactly-once writes and errors. So no event loop runs behind it, a call costs
    no hop to another thread, and calls from several threads run side by side. Nothing connects before
    the first call. A thread that ended leaves its connection to the next new thread (QA: a thread per
    request kept a connection per thread open until ``close()``, and ran out of file descriptors after a
    few hundred). Use it as a context manager, or call ``close()`` (which closes every thread's
    connection; a call after it raises ``KVError``).

    ``endpoints``: as for ``connect`` (``EndpointError`` here, in the constructor); ``cacert``, ``cert``,
    ``key``: PEM files for a TLS cluster, all three or none (``TlsError``, a ValueError, here).
    """

    def __init__(self, endpoints: list[str] | str, *, timeout: float = 5.0,
                 cacert: str | None = None, cert: str | None = None, key: str | None = None) -> None:
        from .oneshot import OneShotClient

        # Checks the endpoints and loads the TLS files now, in the caller's thread.
        self._first: OneShotClient | None = OneShotClient(endpoints, timeout=timeout, cacert=cacert, cert=cert,
                                                           key=key)
        self._lock = threading.Lock()
        self._all: builtins.list[tuple[threading.Thread, OneShotClient]] = []  # each with the thread it is for
        self._local = threading.local()
        self._closed = False

    def _client(self) -> OneShotClient:
        """This thread's ``OneShotClient``: the first thread to call takes the constructor's; a later new
        thread takes over the one of a thread that has ended, if any, else a new one."""
        client: OneShotClient | None = getattr(self._local, "client", None)
        if client is not None and not self._closed:
            return client
        me = threading.current_thread()
        with self._lock:
            if self._closed:
                raise KVError("client is closed")
            for i, (owner, spare) in enumerate(self._all):
                if not owner.is_alive():
                    client = spare  # (its thread ended: nothing else uses it)
                    self._all[i] = (me, spare)
                    break
            else:
                if self._first is not None:
                    client, self._first = self._first, None
                else:
                    client = self._all[0][1].sibling()
                self._all.append((me, client))
        self._local.client = client
        return client

    def put(self, key: str, value: str | bytes) -> int:
        return self._client().put(key, value)

    def get(self, key: str, *, consistency: str = "l") -> str | bytes | None:
        return self._client().get(key, consistency=consistency)

    def get_entry(self, key: str, *, consistency: str = "l") -> Entry | None:
        return self._client().get_entry(key, consistency=consistency)

    def delete(self, key: str) -> bool:
        return self._client().delete(key)

    def delete_prefix(self, prefix: str) -> int:
        return self._client().delete_prefix(prefix)

    def cas(self, key: str, expected: str | bytes | None, new: str | bytes) -> bool:
        return self._client().cas(key, expected, new)

    def list(self, prefix: str = "", *, keys_only: bool = False, consistency: str = "l",
             limit: int = 0) -> builtins.list[tuple[str, str | bytes | None]]:
        return self._client().list(prefix, keys_only=keys_only, consistency=consistency, limit=limit)

    def list_entries(self, prefix: str = "", *, consistency: str = "l", limit: int = 0) -> builtins.list[Entry]:
        return self._client().list_entries(prefix, consistency=consistency, limit=limit)

    def status(self, endpoint: str | tuple[str, int], *, timeout: float | None = None) -> dict[str, Any]:
        return self._client().status(endpoint, timeout=timeout)

    def admin(self, op: str, node: int = 0, address: str = "") -> dict[str, Any]:
        return self._client().admin(op, node, address)

    def member_list(self) -> dict[str, Any]:
        return self.admin("member_list")

    def member_add(self, node: int, address: str) -> dict[str, Any]:
        return self.admin("member_add", node, address)

    def member_promote(self, node: int) -> dict[str, Any]:
        return self.admin("member_promote", node)

    def member_remove(self, node: int) -> dict[str, Any]:
        return self.admin("member_remove", node)

    def move_leader(self, node: int) -> dict[str, Any]:
        return self.admin("move_leader", node)

    def backup(self, session: int = 0, offset: int = 0) -> dict[str, Any]:
        return self._client().backup(session, offset)

    def cluster_status(self) -> builtins.list[dict[str, Any]]:
        return self._client().cluster_status()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            clients, self._all = self._all, []
            self._first = None
        for _, client in clients:
            client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
