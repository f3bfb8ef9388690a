"""Snapshots: writing our own, sending them to peers, and taking a peer's (install or adoption).

Theory of operation
-------------------
Four flows, each split between the driver (which alone touches the ``Replica``) and tasks or worker
threads that do the slow part without holding up ticks, heartbeats and Accepts:

* **our own** (``start`` -> ``_write_file`` -> ``finish``): every snapshot interval of applied
  commands the driver freezes the state machine at its applied slot (``StateMachine.freeze``, a
  copy-on-write view, so applies and answers go on) and starts a task. A worker thread writes the file
  (``Storage.write_snapshot_file``) and fsyncs it; it asks the trio thread for each next parcel of
  pieces of ``SNAPSHOT_PIECE_ENTRIES`` entries, about ``SNAPSHOT_PARCEL_SECONDS`` of encoding
  (``trio.from_thread``), so the encoding runs between the driver's batches instead of holding the GIL
  against them. Then (``SnapshotWritten``) the driver compacts the core and, after every staged batch
  is in the log (``GroupCommit.wait_carried_out``), begins the log's compaction
  (``Storage.begin_compaction``): a worker thread writes what the log keeps above the snapshot to a new
  file while the driver goes on, and then (``CompactionWritten`` -> ``complete``) the driver adds the
  records appended meanwhile and puts the file in place. A leader then pushes the file to its lazy
  learners;
* **sending** (``send_soon``): the core asks for a snapshot for a peer that is behind our log start
  (``Actions.snapshot_to``), or the leader pushes one to its learners: the file is read and framed
  once (``SNAPSHOT_CHUNK_BYTES`` per ``SnapshotChunk``) for every peer it goes to;
* **receiving** (``receive_chunk``, in a peer's reader task): chunks are put together in order per
  sender; a chunk out of order drops the transfer (the core asks again). A whole file becomes
  ``SnapshotReceived`` for the driver;
* **taking it** (``receive`` in the driver): a worker thread restores it (a million keys take seconds
  of CPU). If the core is behind its slot, the driver installs it (``SnapshotRestored`` ->
  ``install``: the core, the log and the state machine jump to it). If the core has decided past it
  and this node is a lazy learner that has not applied it yet, the snapshot is also written as our own
  file and the driver *adopts* it (``SnapshotAdoptable`` -> ``adopt``: it stands in for the queued
  slots it covers, see ``kvstore.learners``), then compacts as after our own.

``busy`` is true from the start of any of these that writes a file until the driver is done with it;
meanwhile no snapshot of our own starts and other peers' snapshots are dropped (the core asks again).

Rules: the tasks and worker threads here never touch the ``Replica`` or the state machine in use;
they post an event and the driver, in ``finish``, ``complete``, ``install`` and ``adopt``, calls the core. A storage
error on any path fences the node (``Node._stop_voting``), but one: our own snapshot (or its log
rewrite) that could not create its file for want of a file descriptor (``OutOfDescriptors``: nothing on
disk changed) is postponed to the next snapshot interval. A bad snapshot from a peer is dropped with a
log line, never raised.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import trio

from . import runtime, wire
from .events import CompactionWritten, SnapshotAdoptable, SnapshotReceived, SnapshotRestored, SnapshotWritten
from .learners import standby_of
from .peers import PEER_BACKLOG_BYTES_MAX
from .statemachine import StateMachine
from .storage import OutOfDescriptors, StorageError

if TYPE_CHECKING:
    from .server import Node
    from .statemachine import FrozenState

__all__ = ["Snapshots", "SNAPSHOT_CHUNK_BYTES", "SNAPSHOT_PIECE_ENTRIES", "SNAPSHOT_PARCEL_SECONDS"]

log = logging.getLogger("kvstore.server")

SNAPSHOT_CHUNK_BYTES = 1024 * 1024
# A peer gets our snapshot again at most this often (it asks on every message until it has one)
RESEND_SECONDS = 10.0
# Entries encoded per snapshot piece, in the trio thread between batches (see Snapshots.start):
# about 0.7 ms of CPU each with 100-byte values
SNAPSHOT_PIECE_ENTRIES = 2048
# Pieces go to the writing thread in parcels of about this much encoding time: under load the trio
# thread serves one parcel per driver batch, so one piece per request made a million keys take
# 500 batches (seconds) to write, and the log above the snapshot, held in memory, grew meanwhile.
SNAPSHOT_PARCEL_SECONDS = 0.003


class Snapshots:
    """The snapshots of node ``node`` (a ``kvstore.server.Node``); see the module docstring."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.busy = False  # a snapshot file is being written or taken (see the module docstring)
        self.write_ms = 0  # how long the last snapshot took to write (or to restore and write)
        self._inbox: dict[tuple[int, int], bytearray] = {}  # (sender, slot) -> the chunks so far
        self._sending: set[int] = set()  # peers a send task is working for (see send_soon)
        self._resend_after: dict[int, tuple[int, float]] = {}  # peer -> (slot sent, when it may get it again)

    # -----------------------------------------------------------------------------------------------
    # our own

    def start(self) -> None:
        """In the driver: begin a snapshot of the state machine at its applied slot."""
        node = self.node
        learner = node.learner
        learner.applied_since_snapshot = 0
        slot = learner.applied_slot
        if slot <= node.replica.snapshot_slot:
            return
        self.busy = True
        node.nursery.start_soon(self._write_file, slot, learner.sm.freeze())

    async def _write_file(self, slot: int, frozen: FrozenState) -> None:
        started = time.perf_counter()
        chunks = frozen.chunks(SNAPSHOT_PIECE_ENTRIES)

        def parcel() -> bytes | None:  # in the trio thread: pieces for about SNAPSHOT_PARCEL_SECONDS
            until = time.perf_counter() + SNAPSHOT_PARCEL_SECONDS
            parts = []
            while (piece := next(chunks, None)) is not None:
                parts.append(piece)
                if time.perf_counter() >= until:
                    break
            return b"".join(parts) if parts else None

        def pieces() -> Iterator[bytes]:  # in the worker thread: each parcel is encoded in the trio thread
            while (piece := trio.from_thread.run_sync(parcel)) is not None:
                yield piece

        try:
            with frozen:
                await trio.to_thread.run_sync(self.node.storage.write_snapshot_file, slot, pieces())
        except OutOfDescriptors as exc:
            self.busy = False
            self._postponed(slot, exc)
            return
        except StorageError as exc:
            self.busy = False
            self.node._stop_voting(exc)
            return
        self.write_ms = int((time.perf_counter() - started) * 1000)
        self.node._post_event(SnapshotWritten(slot))

    async def finish(self, slot: int) -> None:
        """In the driver: the snapshot file through ``slot`` is durable; compact the core, and start the
        log's compaction: a worker thread writes the new log's bulk (``Storage.write_compaction``) while
        the driver goes on, then ``complete`` puts it in place. The driver used to wait for the whole
        rewrite (``compact_log``), 0.1-1.5 s with large values, without a heartbeat sent or answered."""
        node = self.node
        try:
            await node.commit.wait_carried_out()  # every staged record is in the log before it is rewritten
            node.replica.compact(slot)
            node.storage.begin_compaction(slot, node.replica.durable_state(packed=True))
        except StorageError as exc:
            self.busy = False
            node._stop_voting(exc)
            return
        node.nursery.start_soon(self._write_compaction, slot)

    async def _write_compaction(self, slot: int) -> None:
        node = self.node
        try:
            await trio.to_thread.run_sync(node.storage.write_compaction)
        except OutOfDescriptors as exc:
            node.storage.abandon_compaction()
            self.busy = False
            self._postponed(slot, exc)
            return
        except StorageError as exc:
            node.storage.abandon_compaction()
            self.busy = False
            node._stop_voting(exc)
            return
        node._post_event(CompactionWritten(slot))

    async def complete(self, slot: int) -> None:
        """In the driver: the new log's bulk is written; add what was appended since (a short write and
        fsync) and put it in place (``Storage.finish_compaction``; ``compact_log`` if it cannot); the
        older snapshot and log are deleted in a worker thread (``_delete_superseded``)."""
        node = self.node
        counters = node.counters
        storage = node.storage
        finished = False
        try:
            await node.commit.wait_carried_out()  # every staged record is in the log before it is rewritten
            if node._fenced:
                storage.abandon_compaction()
                return
            finished = storage.finish_compaction()
            if not finished:
                await trio.to_thread.run_sync(storage.compact_log, slot, node.replica.durable_state(packed=True))
        except OutOfDescriptors as exc:
            # The snapshot file is in place and the log not yet rewritten: recovery uses the two
            # together, and appends go on to the old log until the next snapshot rewrites it.
            finished = False
            self._postponed(slot, exc)
            return
        except StorageError as exc:
            # (A snapshot written without its log rewrite still recovers with the old log.)
            finished = False
            node._stop_voting(exc)
            return
        finally:
            if finished:
                node.nursery.start_soon(self._delete_superseded)  # (busy until it is done)
            else:
                self.busy = False
            node._send_replies()
        counters["snapshots"] += 1
        counters["snapshot_ms"] = self.write_ms
        # The frozen key order, the journal and the pieces were freed: give that memory back, in a
        # worker thread (55-70 ms with a 200 MiB state, which the driver would spend not ticking).
        node.nursery.start_soon(self._release_free_memory)
        log.info("snapshot at slot %d (%d keys, %d ms)", slot, len(node.learner.sm), self.write_ms)
        if (node.options.lazy_learners and node.replica.is_leader and len(node.learner.members) >= 3
                and node.learner.small_enough_for_learners()):
            # Followers other than the standby may be lazy learners: they take this instead of
            # applying (one that is not lazy drops it: the slot is applied there already). Past
            # that size no follower is lazy (see Learner.should_be_lazy), so nothing is sent.
            standby = standby_of(node.learner.members, node.node_id)
            self.send_soon([p for p in node.peers if p not in (node.node_id, standby)])

    async def _delete_superseded(self) -> None:
        node = self.node
        try:
            await trio.to_thread.run_sync(node.storage.delete_superseded)
        except StorageError as exc:
            node._stop_voting(exc)  # (a failed fsync of the directory: the disk)
        finally:
            self.busy = False

    async def _release_free_memory(self) -> None:
        def trim() -> int:
            started = time.perf_counter()
            runtime.release_free_memory()  # (glibc's malloc_trim: safe beside the loop's allocations)
            return int((time.perf_counter() - started) * 1e6)

        trim_us = await trio.to_thread.run_sync(trim)
        counters = self.node.counters
        counters["memory_trim_us_max"] = max(counters["memory_trim_us_max"], trim_us)

    def _postponed(self, slot: int, exc: OutOfDescriptors) -> None:
        """A snapshot (or its log rewrite) found no file descriptor: not a disk failure (nothing on disk
        changed), so the node goes on voting and the next snapshot interval tries again."""
        self.node.counters["snapshots_postponed_no_descriptors"] += 1
        log.error("node %d: snapshot at slot %d postponed: %s; the node goes on with its log and tries again "
                  "after the next %d commands (see docs/operations.md, Connections and open files)",
                  self.node.node_id, slot, exc, self.node.options.snapshot_every)

    # -----------------------------------------------------------------------------------------------
    # sending and receiving

    def send_soon(self, peer_ids: Iterable[int]) -> None:
        """Send our newest snapshot to each of ``peer_ids``, in a task of its own: the file is read and
        framed once for all, in a worker thread (a million keys are ~130 MB: reading and framing them in
        the driver stalled every write for as long). A peer gets the *same* snapshot again only
        ``RESEND_SECONDS`` after the last send of it ended: a lagging node asks on every message it gets
        until the snapshot arrives. A newer snapshot goes at once (lazy learners take each one)."""
        node = self.node
        links = node.peer_links
        now = trio.current_time()
        slot = node.storage.snapshot_slot
        # (Not to a peer whose link still holds a queue of a peer's worth: an earlier snapshot, not read
        # yet; a snapshot's chunks pass the bytes bound, so a slow reader would pile them up. QA.)
        peer_ids = [p for p in peer_ids if p not in self._sending and p in links.outboxes
                    and links.outboxes[p].backlog_bytes < PEER_BACKLOG_BYTES_MAX
                    and not (self._resend_after.get(p, (-1, 0.0))[0] == slot
                             and now < self._resend_after[p][1])]
        if not peer_ids or node._fenced:
            return
        self._sending.update(peer_ids)
        node.nursery.start_soon(self._send, peer_ids, slot)

    async def _send(self, peer_ids: list[int], slot: int) -> None:
        node = self.node
        try:
            try:
                frames = await trio.to_thread.run_sync(self._read_and_frame)
            except (OSError, StorageError) as exc:  # a compaction replaced the file meanwhile, or the disk
                log.info("snapshot not sent to %s: %s", peer_ids, exc)
                return
            if frames is None or node._fenced:
                return
            links = node.peer_links
            for peer_id in peer_ids:
                if peer_id in links.outboxes and not links.write_frames(peer_id, frames):
                    node.counters["snapshot_send_dropped"] += 1  # the receiver drops the rest; the core asks again
            node.counters["snapshots_sent"] += len(peer_ids)
        finally:
            self._sending.difference_update(peer_ids)
            resend_after = trio.current_time() + RESEND_SECONDS
            for peer_id in peer_ids:
                if peer_id in node.peers:  # (not one removed meanwhile: forget_peer)
                    self._resend_after[peer_id] = (slot, resend_after)

    def link_renewed(self, peer: int) -> None:
        """Our link to ``peer`` was made anew: what the last one held is gone, a snapshot on its way
        included, so the peer may have our snapshot again at once rather than ``RESEND_SECONDS`` after
        that send (QA: a learner killed while its first snapshot arrived, then restarted, waited 6-9 s
        on an idle cluster before it caught up)."""
        self._resend_after.pop(peer, None)

    def _read_and_frame(self) -> list[bytes] | None:
        """In a worker thread: the newest snapshot's frames (it touches only the snapshot file)."""
        node = self.node
        snapshot = node.storage.read_snapshot()
        if snapshot is None:
            return None
        slot, data = snapshot
        total = len(data)
        return [wire.encode_frame(wire.SnapshotChunk(sender=node.node_id, slot=slot, offset=offset, total=total,
                                                     data=bytes(data[offset:offset + SNAPSHOT_CHUNK_BYTES])))
                for offset in range(0, max(total, 1), SNAPSHOT_CHUNK_BYTES)]

    def receive_chunk(self, chunk: wire.SnapshotChunk) -> None:
        """In a peer's reader task: one chunk of a snapshot; the last one posts ``SnapshotReceived``."""
        key = (chunk.sender, chunk.slot)
        inbox = self._inbox
        if chunk.offset == 0:
            # a new transfer from this sender replaces any unfinished one
            for old in [k for k in inbox if k[0] == chunk.sender]:
                del inbox[old]
            inbox[key] = bytearray()
        buf = inbox.get(key)
        if buf is None or len(buf) != chunk.offset:
            return  # out of order or missing start: drop; the core will ask again
        buf += chunk.data
        if len(buf) >= chunk.total:
            del inbox[key]
            self.node._post_event(SnapshotReceived(chunk.slot, bytes(buf)))

    def forget_peer(self, peer: int) -> None:
        """``peer`` is no longer a member of any configuration still scheduled (``Members.sync``)."""
        self._resend_after.pop(peer, None)
        self.drop_partial(peer)

    def drop_partial(self, sender: int) -> None:
        """In a peer's reader task, as its link ends: a transfer from ``sender`` that is not complete can
        never be (its chunks come on that link, and a resend starts at offset 0), so its chunks go now.
        Resources QA: the chunks of a sender killed or removed mid-transfer were held until the same
        sender began another transfer, up to a whole snapshot (~130 MB for a million keys) for good."""
        for key in [k for k in self._inbox if k[0] == sender]:
            dropped = len(self._inbox.pop(key))
            self.node.counters["snapshot_transfers_cut"] += 1
            log.info("node %d: dropped %d bytes of node %d's snapshot at slot %d: its link closed before the "
                     "last chunk (it is sent again when asked)", self.node.node_id, dropped, sender, key[1])

    # -----------------------------------------------------------------------------------------------
    # taking a peer's

    def receive(self, slot: int, data: bytes) -> None:
        """In the driver: a peer's snapshot through ``slot`` arrived. Restore it in a worker thread, then
        install it or, on a lazy learner that decided past it, adopt it. While one is restored or
        written, others are dropped: the core asks again."""
        if self.busy:
            return
        node = self.node
        replica = node.replica
        if slot <= replica.applied_slot:  # (the core's: handed out to the learner, maybe not applied)
            learner = node.learner
            if learner.lazy and slot > learner.applied_slot and slot > replica.snapshot_slot:
                self.busy = True  # no snapshot of our own meanwhile (see adopt)
                node.nursery.start_soon(self._restore_for_adoption, slot, data)
            return
        self.busy = True
        node.nursery.start_soon(self._restore_for_install, slot, data)

    async def _restore_for_install(self, slot: int, data: bytes) -> None:
        try:
            sm = await trio.to_thread.run_sync(StateMachine.restore, data)
        except Exception as exc:  # a peer sent a bad snapshot: drop it, the core will ask again
            self.busy = False
            log.warning("rejected snapshot at slot %d: %s", slot, exc)
            return
        self.node._post_event(SnapshotRestored(slot, data, sm))

    async def install(self, slot: int, data: bytes, sm: StateMachine) -> None:
        """In the driver: the peer's snapshot through ``slot``, restored in ``sm``, becomes ours (unless
        the core decided past it meanwhile; then it is dropped)."""
        node = self.node
        replica = node.replica
        self.busy = False
        if slot <= replica.applied_slot:
            return
        await node.commit.wait_carried_out()  # every staged record is in the log before it is rewritten
        if node._fenced:
            return
        # The snapshot carries the membership changes decided through it: the core's schedule follows.
        replica.install_snapshot(slot, node.schedule_for(sm, slot) if sm.changes else ())
        state = replica.durable_state(packed=True)
        try:
            await trio.to_thread.run_sync(node.storage.write_snapshot, slot, data, state)
        except StorageError as exc:
            node._stop_voting(exc)
            return
        node.learner.install(slot, sm)
        node.counters["snapshots_installed"] += 1
        log.info("installed snapshot at slot %d from a peer (%d keys)", slot, len(sm))

    async def _restore_for_adoption(self, slot: int, data: bytes) -> None:
        """A lazy learner got the leader's snapshot at ``slot``, a slot it has decided but not applied:
        restore it and write it as our own snapshot (in worker threads), then let the driver adopt it."""
        started = time.perf_counter()
        try:
            sm = await trio.to_thread.run_sync(StateMachine.restore, data)
            await trio.to_thread.run_sync(self.node.storage.write_snapshot_file, slot, data)
        except StorageError as exc:
            self.busy = False
            self.node._stop_voting(exc)
            return
        except Exception as exc:  # a bad snapshot (or one older than ours): keep applying instead
            self.busy = False
            log.warning("did not adopt the snapshot at slot %d: %s", slot, exc)
            return
        self.node._post_event(SnapshotAdoptable(slot, sm, started))

    async def adopt(self, slot: int, sm: StateMachine, started: float) -> None:
        """In the driver: the leader's snapshot through ``slot`` is restored in ``sm`` and durable as our
        snapshot file. The learner takes it if it is still lazy and behind it (``Learner.adopt``);
        either way our core and log are compacted through it (``finish``); a node that turned eager
        meanwhile goes on applying its queue."""
        self.node.learner.adopt(slot, sm)
        self.write_ms = int((time.perf_counter() - started) * 1000)
        await self.finish(slot)
