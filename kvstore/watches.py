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
"""
from __future__ import annotations

from typing import Any, Protocol

from . import wire
from .statemachine import unpack_entry


class Replier(Protocol):
    """Where a watch's events go: a ``kvstore.clients.ClientConn`` (or a stand-in for one)."""

    def reply(self, message: object) -> None: ...

    def event_frame(self, frame: bytes) -> None: ...


__all__ = ["Watches", "WATCHES_MAX", "WATCHES_PER_CONNECTION_MAX", "EVENTS_FRAME_BYTES"]

WATCHES_MAX = 1024
WATCHES_PER_CONNECTION_MAX = 64
EVENTS_FRAME_BYTES = 1 << 20


class _Watch:
    __slots__ = ("conn", "wire_id", "key", "prefix", "events", "size")

    def __init__(self, conn: Replier, wire_id: int, key: str, prefix: bool) -> None:
        self.conn = conn
        self.wire_id = wire_id
        self.key = key
        self.prefix = prefix
        self.events: list[list[Any]] = []  # gathered for the frame being built (deliver)
        self.size = 0


class Watches:
    """The watches of one node's client connections (see the module docstring)."""

    def __init__(self, counters: dict[str, int]) -> None:
        self._by_conn: dict[Replier, dict[int, _Watch]] = {}
        self._exact: dict[str, list[_Watch]] = {}  # key -> the watches of exactly that key
        self._prefixes: list[_Watch] = []
        self.count = 0
        self._counters = counters

    def __len__(self) -> int:
        return self.count

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
            self._prefixes.append(watch)
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
        if watch.prefix:
            self._prefixes.remove(watch)
        else:
            same = self._exact[watch.key]
            same.remove(watch)
            if not same:
                del self._exact[watch.key]
        self.count -= 1

    def end_all(self, message: str) -> None:
        """End every watch with ``unavailable`` and ``message`` (this node skipped changes)."""
        for conn, mine in list(self._by_conn.items()):
            for wire_id in mine:
                conn.reply(wire.ErrorReply(id=wire_id, code=wire.UNAVAILABLE, message=message, leader=None))
        ended = self.count
        self._by_conn.clear()
        self._exact.clear()
        self._prefixes.clear()
        self.count = 0
        self._counters["watches_ended"] += ended

    def deliver(self, changes: list[tuple[str, bytes | int]]) -> None:
        """Send what ``changes`` (``StateMachine.watch_out``, in the order applied) holds for each watch."""
        exact = self._exact
        prefixes = self._prefixes
        touched: list[_Watch] = []
        for key, change in changes:
            matched = exact.get(key)
            if prefixes:
                matched = [*matched, *(w for w in prefixes if key.startswith(w.key))] if matched else [
                    w for w in prefixes if key.startswith(w.key)]
            if not matched:
                continue
            if isinstance(change, int):
                event: list[Any] = ["del", key, None, 0, change]
                size = len(key) + 16
            else:
                value, version, mod_revision = unpack_entry(change)
                event = ["put", key, value, version, mod_revision]
                size = len(key) + len(value) + 24
            for watch in matched:
                if not watch.events:
                    touched.append(watch)
                elif watch.size + size > EVENTS_FRAME_BYTES:
                    self._send(watch)
                watch.events.append(event)
                watch.size += size
        for watch in touched:
            if watch.events:
                self._send(watch)

    def _send(self, watch: _Watch) -> None:
        watch.conn.event_frame(wire.encode_events_frame(watch.wire_id, watch.events))
        self._counters["watch_events"] += len(watch.events)
        watch.events = []
        watch.size = 0
