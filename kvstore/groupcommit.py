"""Group commit: one fsync for the records of many batches, in the driver or in a worker thread.

Theory of operation
-------------------
("Commit" here is the storage term of art, *made durable*; it never means decided.) For each batch of
the core's actions the node's driver calls ``GroupCommit.stage``, which appends the batch's ``persist``
records to the log and writes them (``Storage.append`` then ``flush``: no fsync yet). Then one of two
things happens:

* **inline**: nothing is staged ahead of this batch and either it needs no fsync or recent fsyncs were
  fast (an average, ``fsync_seconds_ewma``, of at most ``inline_fsync_seconds_max``). ``stage`` fsyncs
  here and returns True: the batch is durable, and the caller carries it out at once. Every hop to
  another task or thread is a wake-up, and one request at a time pays for each in latency (waking a
  worker thread and hearing back costs ~0.5 ms on a small VM, more than a fast fsync);
* **staged**: ``stage`` queues the batch and returns False. The committer task (``run``) takes every
  batch staged meanwhile, fsyncs once for all of them in a worker thread, then has the node carry each
  out in order (``Node._carry_out``). The driver keeps feeding the core while the disk syncs.

A batch whose records are all ``DecideRecord``s needs no fsync of its own (a lost decision is learned
again from the peers; a later fsync covers them), nor even a write of its own: its records wait in
memory and go to the log with the next batch's, in the same write (``deferred_records``). One request
at a time that saves a leader a log write per put (the decide of slot n leaves with the accept of
n + 1). They are written anyway once they waited a whole tick of the node (``note_tick``), when
``DEFERRED_RECORDS_MAX`` of them wait, before the log is rewritten (``wait_carried_out``) and when the
node stops.
Batches are carried out in the order they were staged, inline ones included (an inline batch needs an
empty queue). ``durable_decided_slot`` is the
highest decided slot whose decision rests only on durable records: the core's decided slot as of the
last batch carried out (the node caps early Accepts with it). ``promises_pending`` counts the staged
batches, not carried out yet, that raise the node's promise: while it is 0 the node's promises are
durable, so a heartbeat ack may leave ahead of the fsyncs (``Node._send_acks_early``), and while it is
not the node does not campaign (``Node._tick``).

Rules: this module touches the storage (append, flush, fsync) and nothing else of the node's state
but what the committer hands back: it never calls the ``Replica``, never sends, never answers a
client. A storage error is not handled here: ``stage`` raises it to the driver, and the committer
reports it to ``Node._stop_voting``, then carries out none of its batches. ``_fsync`` is the only
code that runs in a worker thread, and it touches the storage alone (``Storage.fsync_through`` may run
there while the driver appends).
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import trio

from paxos.actions import Actions, DecideRecord, PromiseRecord, Record

from .metrics import FSYNC_SECONDS_BOUNDS, Buckets
from .storage import StorageError

if TYPE_CHECKING:
    from .server import Node

__all__ = ["GroupCommit", "DEFERRED_RECORDS_MAX"]

# Decide records that may wait in memory for the next batch's write (see the module docstring)
DEFERRED_RECORDS_MAX = 1024


def _raises_promise(actions: Actions) -> bool:
    return any(type(r) is PromiseRecord for r in actions.persist)


class GroupCommit:
    """The log's group commit for one node (see the module docstring).

    ``node`` is the ``kvstore.server.Node``; the committer task uses its ``_carry_out``,
    ``_stop_voting``, ``_send_replies`` and ``_fenced``.
    """

    def __init__(self, node: Node, durable_decided_slot: int) -> None:
        self.node = node
        self.storage = node.storage
        self.counters = node.counters
        self.fsync = node.options.fsync
        self.inline_fsync_seconds_max = node.options.inline_fsync_seconds_max
        self._send, self._recv = trio.open_memory_channel(math.inf)
        self.pending_batches = 0  # staged with the committer and not carried out yet
        self.fsync_seconds_ewma = 0.0  # recent fsyncs, averaged; decides where the next one runs
        self.fsync_seconds = Buckets(FSYNC_SECONDS_BOUNDS)  # every fsync's duration (kv_fsync_duration_seconds)
        self.durable_decided_slot = durable_decided_slot
        self._progress = trio.Event()  # set (and replaced) each time the committer finishes a round
        # Decide records of batches that persisted nothing else, not written yet (see the module docstring)
        self.deferred_records: list[Record] = []
        self._wrote_since_tick = False  # a batch's records were written since the node's last tick
        self.promises_pending = 0  # staged batches, not carried out yet, that raise the promise

    def stage(self, actions: Actions) -> bool:
        """Write the batch's records to the log; True if it is durable now and the caller must carry
        it out (inline), False if the committer will. Once it is durable, ``durable_decided_slot``
        becomes its ``Actions.decided_slot`` (the core's decided slot as of this batch). Raises StorageError (nothing of
        the batch may leave the node: it may or may not be on disk)."""
        end = None
        persist = actions.persist
        if persist:
            self.counters["records"] += len(persist)
            deferred = self.deferred_records
            # Decide records only speed up recovery (a lost one is learned again from the peers), so a
            # batch that persists nothing else need not wait for an fsync (a later fsync covers them),
            # nor for a write: they go with the next batch's records.
            if all(type(r) is DecideRecord for r in persist):
                deferred.extend(persist)
                if len(deferred) >= DEFERRED_RECORDS_MAX:
                    self.write_deferred()
            else:
                storage = self.storage
                if deferred:
                    self.deferred_records = []
                    deferred.extend(persist)
                    persist = deferred
                storage.append(persist)
                end = storage.flush()
                self._wrote_since_tick = True
        if not self.pending_batches and (end is None or not self.fsync or (
                0 < self.inline_fsync_seconds_max and self.fsync_seconds_ewma <= self.inline_fsync_seconds_max)):
            # Nothing is staged ahead of this batch (so the order of batches is kept) and either no
            # fsync is needed or the disk is fast: carry it out here.
            if end is not None and self.fsync:
                self._note_fsync(self._fsync(end))
            if actions.decided_slot > self.durable_decided_slot:
                self.durable_decided_slot = actions.decided_slot
            self.counters["inline_batches"] += 1
            return True
        self.pending_batches += 1
        if _raises_promise(actions):
            self.promises_pending += 1
        self._send.send_nowait((actions, end))
        return False

    def promises_durable(self, actions: Actions) -> bool:
        """Whether every promise this node made, this batch's included, is durable (no batch staged
        and not carried out raises it, nor does this one)."""
        return not self.promises_pending and not _raises_promise(actions)

    def _fsync(self, end: int) -> float:
        """Make the log durable through ``end``; return the seconds it took. Runs in the driver or in
        the committer's worker thread, so it touches nothing but the storage (see ``_note_fsync``)."""
        started = time.perf_counter()
        self.storage.fsync_through(end)
        return time.perf_counter() - started

    def _note_fsync(self, elapsed: float) -> None:
        # an exponentially weighted mean of recent fsyncs decides where the next one runs
        self.fsync_seconds_ewma += (elapsed - self.fsync_seconds_ewma) * 0.2
        self.fsync_seconds.observe(elapsed)
        self.counters["fsyncs"] += 1
        self.counters["fsync_us"] += int(elapsed * 1e6)

    async def run(self) -> None:
        """The committer task: carry out staged batches in order, one fsync for all of them, then send,
        apply, answer (``Node._carry_out``)."""
        node = self.node
        recv = self._recv
        while True:
            items = [await recv.receive()]
            while True:
                try:
                    items.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            end = max((item[1] for item in items if item[1] is not None), default=None)
            if end is not None and self.fsync and not node._fenced:
                try:
                    self._note_fsync(await trio.to_thread.run_sync(self._fsync, end))
                except StorageError as exc:
                    node._stop_voting(exc)
            if not node._fenced:
                for actions, _ in items:
                    if actions.decided_slot > self.durable_decided_slot:
                        self.durable_decided_slot = actions.decided_slot
                    node._carry_out(actions)
            # else: these batches (and any staged after them) may not all be on disk; none of their
            # messages, applies or answers may leave. Their waiting clients were told (_stop_voting).
            node._send_replies()
            self.pending_batches -= len(items)
            self.promises_pending -= sum(1 for actions, _ in items if _raises_promise(actions))
            progress, self._progress = self._progress, trio.Event()
            progress.set()

    def note_tick(self) -> None:
        """The node ticked: write the decide records that waited a whole tick for a batch to go with
        (the node is idle), so that they reach the log soon anyway. Raises StorageError."""
        if self.deferred_records and not self._wrote_since_tick:
            self.write_deferred()
        self._wrote_since_tick = False

    def write_deferred(self) -> None:
        """Write the decide records that wait for a batch (no fsync: they need none). Raises StorageError."""
        if self.deferred_records:
            records, self.deferred_records = self.deferred_records, []
            self.storage.append(records)
            self.storage.flush()

    async def wait_carried_out(self) -> None:
        """Wait until the committer has carried out every staged batch, and hand the storage every
        deferred record (before the log is rewritten: its rewrite writes them first)."""
        while self.pending_batches:
            await self._progress.wait()
        if self.deferred_records:
            records, self.deferred_records = self.deferred_records, []
            self.storage.append(records)
