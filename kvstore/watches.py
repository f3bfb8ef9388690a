"""Watches: clients told of every change to a key or to the keys under a prefix (``kv watch``).

Theory of operation
-------------------
A client sends ``watch`` (``wire.WatchRequest``: a key, or a prefix) on a connection to any node. The
node answers ``ok`` with ``{"watching": true, "rev": R}``, R its state machine's revision then, and from
then on sends the connection a ``WatchEvents`` frame (``"t": "ev"``, the watch request's id) for each
batch of commands it applies that changed a watched key: ``[kind, key, value, version, mod_revision]``
per change, kind "put" (also a cas that swapped) or "del" (one per key a prefix delete removed), in the
order the node applied them. Every node applies the same commands in the same order, so every node
reports the same changes with the same revisions; a node behind the others reports them later. The watch
ends when the client sends ``unwatch`` or closes the connection, or when the node ends it with an
``err`` addressed to it: a node that installs a peer's snapshot (it was too far behind to catch up from
the log) skipped the changes the snapshot covers, so it ends its watches rather than leave a gap.

How it is wired:

* while a node has watches, its state machine records what each write changed
  (``StateMachine.watch_out``: the key and its packed entry, or the revision of its delete), and the
  learner hands that to ``deliver`` after each step of applying (``kvstore.learners``). Without watches
  a write pays one attribute test;
* a node with watches applies at once (``Learner.should_be_lazy``): a lazy learner would report changes
  only at its next catch-up, or never (a snapshot adopted in their place);
* the events go as answers do (``ClientConn.reply_frame``, one write per connection per batch). A client
  that does not read them is closed as one that does not read its answers (docs/operations.md, "Answers
  a client has not read yet");
* a connection with a watch is not closed as idle, nor evicted for a newcomer (``kvstore.clients``);
* bounded: ``WATCHES_PER_CONNECTION_MAX`` per connection (more is ``bad_request``), ``WATCHES_MAX`` per
  node (more is ``unavailable``), and each frame holds about ``EVENTS_FRAME_BYTES`` of events at most
  (a prefix delete of many keys makes several frames).

History (``watch`` with ``rev``, etcd's ``--rev``)
  A node keeps the changes it applied lately (``History``: one ring of keys and changes, as the state
  machine records them, holding the packed entries it made, not copies), at most
  ``--watch-history`` changes and ``WATCH_HISTORY_BYTES_MAX`` bytes of commands. A watch from revision
  ``rev`` is answered ``ok`` with ``"from": rev``, then sent the kept changes from ``rev`` on that match it
  (``Watches.replay``), then the live ones, so nothing falls between: a replay of up to
  ``REPLAY_CHANGES_PER_STEP`` changes goes in the step that adds the watch, a longer one a step at a
  time in a task while that watch's live changes are held back, then sent after it. The
  history is *complete from* a revision: every change at or above it is kept. A watch from below that is
  refused with ``compacted``, naming the revision; one from above the node's revision (a node behind the
  one the client watched before) starts live, and the client drops the events below ``rev``. The history
  starts empty at the node's revision when the node starts (the changes of the log replayed at start are
  kept) and again when its state is replaced (a snapshot installed or adopted: the changes it covers
  were never applied here). The oldest revision kept is ``watch_history_from`` in ``status``.
"""
from __future__ import annotations

import collections
from bisect import bisect_right, insort
from collections.abc import Callable
from typing import Any, Protocol

import cbor2
import trio

from . import wire
from .frames import _HEADER
from .statemachine import entry_mod_revision, unpack_entry


class Replier(Protocol):
    """Where a watch's events go: a ``kvstore.clients.ClientConn`` (or a stand-in for one)."""

    def reply(self, message: object) -> None: ...

    def event_frame(self, frame: bytes, body: bytes = b"") -> None: ...


__all__ = ["Watches", "History", "WATCHES_MAX", "WATCHES_PER_CONNECTION_MAX", "EVENTS_FRAME_BYTES",
           "WATCH_HISTORY_CHANGES", "WATCH_HISTORY_CHANGES_MAX", "WATCH_HISTORY_BYTES_MAX", "pairs"]

WATCHES_MAX = 1024
WATCHES_PER_CONNECTION_MAX = 64
EVENTS_FRAME_BYTES = 1 << 20
WATCH_HISTORY_CHANGES = 50_000
"""Changes a node keeps for watches from an earlier revision, by default (``kv serve --watch-history``)."""
WATCH_HISTORY_CHANGES_MAX = 10_000_000
"""... and at most (its ring, allocated when the node starts, is 16 bytes per change: 160 MB at this)."""
WATCH_HISTORY_BYTES_MAX = 32 << 20
"""... and bytes of the commands that made them at most (a replay must fit a client's backlog, 64 MiB)."""
REPLAY_CHANGES_PER_STEP = 5_000
"""Kept changes a replay matches and sends in one step of the node's loop (a replay of the whole default
history in one step held the loop 180-270 ms here, most of an election timeout; QA saw 420 ms)."""

_CHANGE_BYTES = 128  # what keeping a change costs beside its command's bytes, about (its slots, a step's share)

Change = tuple[str, "bytes | int"]
Changes = list["str | bytes | int"]  # StateMachine.watch_out: key, change, key, change, ... (flat)


def pairs(changes: Changes) -> Any:
    """The ``(key, change)`` pairs of a flat list of changes."""
    it = iter(changes)
    return zip(it, it, strict=True)  # (key, its packed entry after a put or cas, or the revision of its delete)


def _revision_of(change: bytes | int) -> int:
    return change if isinstance(change, int) else entry_mod_revision(change)


def _event(key: str, change: bytes | int) -> list[Any]:
    """A change as a watch event: ``[kind, key, value, version, mod_revision]``."""
    if isinstance(change, int):
        return ["del", key, None, 0, change]
    value, version, mod_revision = unpack_entry(change)
    return ["put", key, value, version, mod_revision]


class History:
    """The changes a node applied lately, for watches from an earlier revision (see the module docstring).

    The changes live in one ring of ``2 * changes_max`` slots, allocated once (key, change, key, change,
    ...: as ``StateMachine.watch_out`` records them), and each step of applying is a small tuple in a
    deque: ``(first revision, last revision, where in the ring, how many slots, bytes)``, the revisions
    the step executed (the changes of some, a delete of nothing or a cas that did not swap, are none)
    and the bytes of its commands. A step costs a slice copy and an append; the per-change work is done
    by a replay. (Keeping each step's own list instead cost a node with a million keys 3-13 MiB of RSS
    more than the lists themselves, from the heap's fragments.)
    """

    def __init__(self, changes_max: int = WATCH_HISTORY_CHANGES, bytes_max: int = WATCH_HISTORY_BYTES_MAX,
                 revision: int = 0) -> None:
        self.changes_max = changes_max
        self.bytes_max = bytes_max
        self._ring: list[str | bytes | int | None] = [None] * (2 * changes_max)
        self._head = 0  # the next slot to write
        self._steps: collections.deque[tuple[int, int, int, int, int]] = collections.deque()
        self.changes = 0
        self.bytes = 0
        self.complete_from = revision + 1  # every change at or above this revision is kept

    @property
    def enabled(self) -> bool:
        return self.changes_max > 0

    def reset(self, revision: int) -> None:
        """The state was replaced (a snapshot at ``revision``): keep changes from the next revision on."""
        for _, _, at, slots, _ in self._steps:
            self._clear(at, slots)  # (lets go of what the old state's changes held; QA: reallocating a
            # ring of 10,000,000 changes took a lazy learner's loop 0.1-1.4 s at every snapshot it adopted)
        self._steps.clear()
        self._head = 0
        self.changes = self.bytes = 0
        self.complete_from = revision + 1

    def add(self, first: int, last: int, changes: Changes, nbytes: int) -> None:
        """One step of applying executed revisions ``first`` to ``last``, and made ``changes`` (flat)."""
        if first > last:
            return  # (nothing executed: no revision is missing)
        if not self.enabled:
            self.complete_from = last + 1
            return
        if not changes:
            return  # (revisions without a change: nothing to keep, and none is missing)
        slots = len(changes)
        count = slots // 2
        # What keeping each costs beside its command's bytes; and with more changes than revisions (a
        # prefix delete: its command is small, but the keys it removed are kept here: QA), their keys
        nbytes += _CHANGE_BYTES * count
        if count > last - first + 1:
            nbytes += sum(len(key) for key, change in pairs(changes) if type(change) is int)
        steps = self._steps
        while steps and (self.changes + count > self.changes_max or self.bytes + nbytes > self.bytes_max):
            _, dropped_last, dropped_at, dropped_slots, dropped_bytes = steps.popleft()
            self._clear(dropped_at, dropped_slots)  # (QA: left until the ring came round, 1 MiB values
            # over a few keys held 500 MiB where the history counted 31)
            self.changes -= dropped_slots // 2
            self.bytes -= dropped_bytes
            self.complete_from = dropped_last + 1
        if count > self.changes_max or nbytes > self.bytes_max:
            self.complete_from = last + 1  # (this step alone is over the bounds: nothing is kept)
            return
        ring = self._ring
        at = self._head
        room = len(ring) - at
        if slots <= room:
            ring[at:at + slots] = changes
        else:
            ring[at:] = changes[:room]
            ring[:slots - room] = changes[room:]
        self._head = (at + slots) % len(ring)
        steps.append((first, last, at, slots, nbytes))
        self.changes += count
        self.bytes += nbytes

    def _clear(self, at: int, slots: int) -> None:
        """Let go of what ``slots`` slots from ``at`` hold (a step dropped)."""
        ring = self._ring
        end = at + slots
        if end <= len(ring):
            ring[at:end] = [None] * slots
        else:
            ring[at:] = [None] * (len(ring) - at)
            ring[:end - len(ring)] = [None] * (end - len(ring))

    def _slots(self, at: int, slots: int) -> Changes:
        ring = self._ring
        if at + slots <= len(ring):
            return ring[at:at + slots]  # type: ignore[return-value]
        return ring[at:] + ring[:at + slots - len(ring)]  # type: ignore[return-value]

    def since(self, revision: int) -> list[Change] | None:
        """The kept changes at or above ``revision``, in the order applied; None if some are no longer kept."""
        if revision < self.complete_from:
            return None
        picked: list[list[Change]] = []
        for first, last, at, slots, _ in reversed(self._steps):
            if last < revision:
                break
            changes = self._slots(at, slots)
            if first >= revision:
                picked.append(list(pairs(changes)))
            else:
                picked.append([c for c in pairs(changes) if _revision_of(c[1]) >= revision])
        picked.reverse()
        return [change for changes in picked for change in changes]


class _Watch:
    __slots__ = ("conn", "wire_id", "key", "prefix", "held", "ended")

    def __init__(self, conn: Replier, wire_id: int, key: str, prefix: bool) -> None:
        self.conn = conn
        self.wire_id = wire_id
        self.key = key
        self.prefix = prefix
        # While a replay goes on in steps (Watches.replay): the frames of live changes, sent after it
        self.held: list[tuple[bytes, bytes]] | None = None
        self.ended = False  # cancelled, dropped or ended by the node: a replay under way stops


class Watches:
    """The watches of one node's client connections (see the module docstring)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._by_conn: dict[Replier, dict[int, _Watch]] = {}
        self._exact: dict[str, list[_Watch]] = {}  # key -> the watches of exactly that key
        # prefix -> its watches; the distinct prefixes in sorted order, and for each the watched prefixes
        # that are prefixes of it (itself included), shortest first. A change is matched with one bisect
        # (the greatest watched prefix <= its key: the longest watched prefix of the key is a prefix of
        # it) and a bisect over that one's chain: O(log n) per change, whatever the prefixes' lengths
        # (one lookup per distinct length was 6.9 s for 20,000 changes of 1 KiB keys under 1,024 lengths).
        self._by_prefix: dict[str, list[_Watch]] = {}
        self._sorted: list[str] = []
        self._chain: dict[str, list[str]] = {}
        self.count = 0
        self._counters = counters

    def __len__(self) -> int:
        return self.count

    @property
    def connections(self) -> int:
        """Connections with at least one watch."""
        return len(self._by_conn)

    def watching(self, conn: Replier) -> bool:
        return conn in self._by_conn

    def add(self, conn: Replier, wire_id: int, key: str, prefix: bool) -> wire.ErrorReply | None:
        """Start a watch; the refusal to answer instead, if it is refused."""
        mine = self._by_conn.get(conn)
        if mine is not None and wire_id in mine:
            return wire.ErrorReply(id=wire_id, code=wire.BAD_REQUEST, leader=None,
                                   message=f"this connection has a watch with id {wire_id} already")
        if mine is not None and len(mine) >= WATCHES_PER_CONNECTION_MAX:
            return wire.ErrorReply(id=wire_id, code=wire.BAD_REQUEST, leader=None,
                                   message=f"a connection may hold at most {WATCHES_PER_CONNECTION_MAX} watches")
        if self.count >= WATCHES_MAX:
            self._counters["watches_refused"] += 1
            return wire.ErrorReply(id=wire_id, code=wire.UNAVAILABLE, leader=None,
                                   message=f"this node holds {WATCHES_MAX} watches, its most: try another node")
        watch = _Watch(conn, wire_id, key, prefix)
        self._by_conn.setdefault(conn, {})[wire_id] = watch
        if prefix:
            same = self._by_prefix.get(key)
            if same is None:
                same = self._by_prefix[key] = []
                insort(self._sorted, key)
                self._chain[key] = sorted((p for p in self._sorted if key.startswith(p)), key=len)
                for other in self._sorted:
                    if other != key and other.startswith(key):
                        insort(self._chain[other], key, key=len)
            same.append(watch)
        else:
            self._exact.setdefault(key, []).append(watch)
        self.count += 1
        self._counters["watches_started"] += 1
        return None

    def cancel(self, conn: Replier, wire_id: int) -> bool:
        """End the watch ``wire_id`` of ``conn``; whether there was one."""
        mine = self._by_conn.get(conn)
        watch = mine.pop(wire_id, None) if mine is not None else None
        if watch is None:
            return False
        if not mine:
            del self._by_conn[conn]
        self._forget(watch)
        return True

    def drop(self, conn: Replier) -> None:
        """The connection closed: forget its watches."""
        for watch in self._by_conn.pop(conn, {}).values():
            self._forget(watch)

    def _forget(self, watch: _Watch) -> None:
        watch.ended = True
        watch.held = None
        if watch.prefix:
            same = self._by_prefix[watch.key]
            same.remove(watch)
            if not same:
                key = watch.key
                del self._by_prefix[key]
                del self._chain[key]
                self._sorted.remove(key)
                for other in self._sorted:
                    if other.startswith(key):
                        self._chain[other].remove(key)
        else:
            same = self._exact[watch.key]
            same.remove(watch)
            if not same:
                del self._exact[watch.key]
        self.count -= 1

    def end_refused(self, refusal: Callable[[Replier, wire.WatchRequest], str | None]) -> int:
        """New access rules (SIGHUP, ``kvstore.tls.reload``): end each watch they refuse now with
        ``permission_denied`` (docs/security.md: the rules apply at once, to open connections too)."""
        ended = 0
        for conn, mine in list(self._by_conn.items()):
            for wire_id, watch in list(mine.items()):
                message = refusal(conn, wire.WatchRequest(id=wire_id, key=watch.key, prefix=watch.prefix))
                if message is not None:
                    self.cancel(conn, wire_id)
                    conn.event_frame(wire.encode_frame(wire.ErrorReply(
                        id=wire_id, code=wire.PERMISSION_DENIED, message=message, leader=None)))
                    ended += 1
        return ended

    def end_all(self, message: str) -> None:
        """End every watch with ``unavailable`` and ``message`` (this node skipped changes)."""
        for conn, mine in list(self._by_conn.items()):
            for wire_id in mine:
                # (not conn.reply: the watch request had its answer, its ok; a second one would count
                # as the answer of another request still waiting: ClientConn.answered)
                conn.event_frame(wire.encode_frame(wire.ErrorReply(id=wire_id, code=wire.UNAVAILABLE,
                                                                   message=message, leader=None)))
        ended = self.count
        for mine in self._by_conn.values():
            for watch in mine.values():
                watch.ended = True
                watch.held = None
        self._by_conn.clear()
        self._exact.clear()
        self._by_prefix.clear()
        self._sorted.clear()
        self._chain.clear()
        self.count = 0
        self._counters["watches_ended"] += ended

    def replay(self, conn: Replier, wire_id: int, changes: list[Change],
               spawn: Callable[..., object] | None = None) -> None:
        """Send watch ``wire_id`` of ``conn`` (just added, its ``ok`` sent) the changes of ``changes``
        (``History.since``) that match it, before any live change. Up to ``REPLAY_CHANGES_PER_STEP`` of
        them go now; the rest in a task that ``spawn`` starts (``nursery.start_soon``), as many per step
        of the node's loop, while the live changes for this watch are held back and sent after them
        (without ``spawn``: all now)."""
        watch = self._by_conn[conn][wire_id]
        if spawn is None or len(changes) <= REPLAY_CHANGES_PER_STEP:
            self._replay_step(watch, changes)
            return
        self._replay_step(watch, changes[:REPLAY_CHANGES_PER_STEP])
        watch.held = []
        self._counters["watch_replays_in_steps"] += 1
        spawn(self._replay_rest, watch, changes)

    async def _replay_rest(self, watch: _Watch, changes: list[Change]) -> None:
        step = REPLAY_CHANGES_PER_STEP
        for start in range(step, len(changes), step):
            await trio.sleep(0)  # (the node's loop runs between the steps: its peers, clients, ticks)
            if watch.ended:
                return
            self._replay_step(watch, changes[start:start + step])
        held, watch.held = watch.held or [], None
        for head, body in held:  # the live changes that came meanwhile, in order
            watch.conn.event_frame(head, body)

    def _replay_step(self, watch: _Watch, changes: list[Change]) -> None:
        key = watch.key
        if watch.prefix:
            events = [_event(k, change) for k, change in changes if k.startswith(key)]
        else:
            events = [_event(k, change) for k, change in changes if k == key]
        for body in (_encode_split(events) if events else ()):
            watch.conn.event_frame(_head(watch.wire_id, len(body)), body)
        self._counters["watch_events"] += len(events)
        self._counters["watch_events_replayed"] += len(events)

    def deliver(self, changes: Changes) -> None:
        """Send what ``changes`` (``StateMachine.watch_out``, flat, in the order applied) holds for each watch.
        Watches of the same key or prefix are told of the same changes: the changes are matched per key
        and per prefix watched (not per watch), encoded once per key or prefix, and each watch's frame is
        its own small head and that shared body (1,024 watches of one prefix and a prefix delete of
        20,000 keys were 2.1 s and 410 MiB of copies; one 1 MiB put to 256 watches 258 MiB)."""
        exact = self._exact
        by_prefix = self._by_prefix
        ordered = self._sorted
        chains = self._chain
        events: list[list[Any]] = []
        indexes_of: dict[tuple[bool, str], list[int]] = {}  # (prefix?, key) -> indexes in events, in order
        for key, change in pairs(changes):
            subs: list[tuple[bool, str]] = []
            if key in exact:
                subs.append((False, key))
            if ordered:
                i = bisect_right(ordered, key) - 1
                if i >= 0:
                    chain = chains[ordered[i]]
                    lo, hi = 0, len(chain)  # the chain's prefixes of key are its first ones (nested)
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if key.startswith(chain[mid]):
                            lo = mid + 1
                        else:
                            hi = mid
                    subs.extend((True, p) for p in chain[:lo])
            if not subs:
                continue
            events.append(_event(key, change))
            index = len(events) - 1
            for sub in subs:
                indexes_of.setdefault(sub, []).append(index)
        encoded: dict[tuple[int, ...], list[bytes]] = {}
        counters = self._counters
        for (prefix, key), indexes in indexes_of.items():
            same = tuple(indexes)
            bodies = encoded.get(same)
            if bodies is None:
                bodies = encoded[same] = _encode_split([events[i] for i in indexes])
            watchers = by_prefix[key] if prefix else exact[key]
            for watch in watchers:
                held = watch.held
                for body in bodies:
                    if held is None:
                        watch.conn.event_frame(_head(watch.wire_id, len(body)), body)
                    else:  # (a replay in steps goes on: these come after it)
                        held.append((_head(watch.wire_id, len(body)), body))
            counters["watch_events"] += len(indexes) * len(watchers)


def _encode_split(events: list[list[Any]]) -> list[bytes]:
    """The CBOR arrays of ``events``, in pieces of about ``EVENTS_FRAME_BYTES`` (encoded bytes)."""
    out: list[bytes] = []
    piece: list[list[Any]] = []
    size = 0
    for event in events:
        one = len(event[1]) + (len(event[2]) + 24 if event[0] == "put" else 16)  # (as before: about the bytes)
        if piece and size + one > EVENTS_FRAME_BYTES:
            out.append(cbor2.dumps(piece))
            piece, size = [], 0
        piece.append(event)
        size += one
    if piece:
        out.append(cbor2.dumps(piece))
    return out


_HEAD = cbor2.dumps("t") + cbor2.dumps("ev") + cbor2.dumps("id")
_EV = cbor2.dumps("ev")


def _head(wire_id: int, array_bytes: int) -> bytes:
    """The bytes before the events array in the frame of ``{"t": "ev", "id": wire_id, "ev": <array>}``:
    the frame is this head and the (shared) array, sent as two pieces, never joined per watch."""
    ident = cbor2.dumps(wire_id)
    size = 1 + len(_HEAD) + len(ident) + len(_EV) + array_bytes
    return b"".join((_HEADER.pack(size), b"\xa3", _HEAD, ident, _EV))
