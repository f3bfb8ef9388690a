"""The trio node: one process of the replicated store.

Theory of operation
-------------------
A node owns four things: the Multi-Paxos core (``paxos.replica.Replica``), its durable storage
(``kvstore.storage.Storage``), the dictionary state machine (``kvstore.statemachine.StateMachine``)
and its network endpoints. All of them live in one nursery.

* **One driver task owns the core.** Peer readers, client handlers and the ticker never touch the
  ``Replica``; they post events on one memory channel. The driver takes one event, drains every other
  event already queued (this is where batching comes from), feeds them all to the core, then carries
  out the resulting ``Actions`` in contract order:

  1. append every ``persist`` record and fsync once (group commit: one fsync covers every record the
     batch produced). When nothing is staged ahead and fsyncs are fast, the driver does this itself;
     otherwise the batch goes to the committer task, which fsyncs in a worker thread for every batch
     staged meanwhile (see ``_stage``);
  2. send the messages (one frame per peer per batch, written straight to the socket);
  3. apply decided commands to the state machine and answer the clients waiting for them (through
     an apply queue: see "Lazy learners");
  4. answer linearizable reads whose read index has been applied and confirmed.

  Nothing that promises or accepts can leave the node before its fsync, because step 2 waits for step 1
  (phase-2a Accepts excepted, see ``_stage``).

* **Peer links are one-way.** Each node dials every other node and only *sends* on the connection it
  dialed (after a ``Hello`` naming itself and its cluster); it only *receives* on connections others
  dialed. A sender reconnects with capped exponential back-off; while a link is down, messages to that
  peer are dropped, which Paxos tolerates (the core retransmits through heartbeats and catch-up).

* **Clients** connect to any node and may pipeline many requests on one connection. A write on a
  follower is answered with ``not_leader`` and a hint; the client library retries on the leader.
  Writes carry ``(client_id, request_id)``; the state machine deduplicates, so a retry is safe.

* **Lazy learners.** In Paxos terms every node is an acceptor, but not every node must be an eager
  learner. While writes keep coming, a follower that is neither the leader nor the *standby* (the
  lowest id but the leader's, which every node works out alike) leaves decided commands queued instead
  of applying them. After each of its own snapshots, the leader sends the snapshot file to those
  followers; one that has decided past that slot restores it in a worker thread, writes it as its own
  snapshot, drops the queued slots it covers and compacts its log (``_adopt``). Restoring a key costs
  ~1.8 us, applying a put ~4.5 us, so this is done only while the state is at most twice the snapshot
  interval (a restore per interval then still saves a fifth or more); a larger state keeps applying.
  The follower turns eager, and applies its backlog ``CATCH_UP_COMMANDS`` at a time between batches,
  when it serves a serializable read (the read waits for every slot the node had decided when it
  arrived), when no decided slot reached it for ``LAZY_IDLE_SECONDS`` (a quiet cluster has no lazy
  learner), when it leads, or when its backlog passes two snapshot intervals. The standby is always
  eager, and a node with a backlog postpones its own election (``Replica.postpone_election``), so the
  standby wins when the leader fails; if the learner must lead, it catches up before answering (up to
  two snapshot intervals of commands). ``--eager-learners`` turns this off.

* **Bad input** from a socket is a ``WireError``: log one line, send an error reply where possible,
  close that connection only. Any other exception in a connection task is logged with its traceback and
  closes that connection only; the node keeps serving.
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import math
import os
import random
import signal
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import trio

from paxos import messages as pm
from paxos.actions import DecideRecord
from paxos.replica import Config, Options, Replica

from . import commands, failpoints, runtime, wire
from .netio import Outbox, socket_fd
from .statemachine import STALE_REQUEST, StateMachine
from .storage import Storage, StorageError, StorageFull

log = logging.getLogger("kvstore.server")

SNAPSHOT_CHUNK_BYTES = 1024 * 1024
# Peers are members that said Hello with our cluster id; their frames may carry whole batches of
# values (a slot holds up to batch_count_max commands of up to 1 MiB each), so their limit is higher
# than a client's.
PEER_FRAME_BYTES_MAX = 256 * 1024 * 1024
# Commands this node proposed and has not applied yet, kept decoded (see Node._propose)
OWN_COMMANDS_MAX = 100_000
# How often waiting requests are checked against the request timeout (see Node._expire_waiters)
EXPIRY_SCAN_SECONDS = 0.1
# Answers sent while applying a batch, every this many (see Node._finish)
REPLY_FLUSH_EVERY = 64
# Entries encoded per snapshot piece, in the trio thread between batches (see Node._start_snapshot):
# about 0.7 ms of CPU each with 100-byte values
SNAPSHOT_PIECE_ENTRIES = 2048
# Pieces go to the writing thread in parcels of about this much encoding time: under load the trio
# thread serves one parcel per driver batch, so one piece per request made a million keys take
# 500 batches (seconds) to write, and the log above the snapshot, held in memory, grew meanwhile.
SNAPSHOT_PARCEL_SECONDS = 0.003
# Commands applied at most per step while catching up an apply backlog (a lazy learner that turned
# eager, a new leader that was one): about 20 ms each, so ticks, heartbeats and Accepts go on between.
CATCH_UP_COMMANDS = 4096
# A lazy learner turns eager for this long after it served a serializable read (reads see its state)
LOCAL_READ_EAGER_SECONDS = 10.0
# ... and as soon as no decided slot has reached it for this long: a quiet cluster has no lazy learners.
LAZY_IDLE_SECONDS = 0.25

# The node's disk, as ``status`` reports it (see Node._stop_voting and docs/design.md, "Disk faults")
DISK_OK = "ok"
DISK_READ_ONLY = "read-only"  # a write failed with ENOSPC: nothing durable was lost, nothing new is
DISK_FAILED = "failed"  # an fsync (or a write) failed: the page cache can no longer be trusted
# ``kv serve --exit-on-disk-failure``: the exit status after a disk failure, for a process supervisor
EXIT_DISK_FAILED = 75  # EX_TEMPFAIL: restart me once the disk is fixed


def standby_of(members, leader: int) -> int | None:
    """The follower that applies every command at once while ``leader`` leads: the lowest other id.

    Every node computes the same answer from the membership and the leader it knows, without a message.
    """
    others = [m for m in members if m != leader]
    return min(others) if others else None


@dataclass
class ServerOptions:
    """Tunables of one node. Times are in seconds except where a name says ticks."""

    tick_seconds: float = 0.01
    heartbeat_ticks: int = 5
    election_timeout_ticks: int = 30
    batch_count_max: int = 512
    window: int = 64
    snapshot_every: int = 100_000  # applied write commands between snapshots (etcd's default too)
    fsync: bool = True
    frame_bytes_max: int = wire.FRAME_BYTES_MAX
    request_timeout: float = 5.0
    cluster_id: str = "kv"
    connect_timeout: float = 1.0
    backoff_max: float = 0.1  # well below the election timeout, so a restarted peer hears the leader in time
    idle_client_timeout: float = 600.0
    # Fsync in the driver itself, without a worker thread, while recent fsyncs took at most this long
    # (seconds) and nothing else is staged. Waking a worker thread and hearing back from it costs
    # ~0.5 ms on a small VM, more than a fast fsync; a slow disk is better left to the thread, where the
    # driver keeps feeding the core meanwhile. 0 disables inline fsyncs.
    inline_fsync_max: float = 0.0015
    # Announce a decision with a Decide on the next tick unless an Accept carries it first (see
    # paxos.replica.Options.lazy_decide): one request at a time, this saves every follower a wake-up
    # and a log write per command; a quiet leader's followers apply up to one tick later.
    lazy_decide: bool = True
    # Send a new Accept at once only to the followers a majority needs, the others on the next tick
    # (see paxos.replica.Options.thrifty): one request at a time, a 3-node cluster then wakes two
    # processes per put instead of three and fsyncs twice instead of three times.
    thrifty: bool = True
    # Zeros kept written ahead of the log's last record, so that an fsync overwrites file space
    # instead of growing the file (no journal commit; see kvstore.storage). 0 disables it.
    log_preallocate_bytes: int = 1 << 20
    # Lazy learners (see "Lazy learners" in the module docstring): under sustained writes, a follower
    # that is not the standby applies nothing and takes the leader's snapshots instead.
    lazy_learners: bool = True
    # After a disk failure (see Node._stop_voting) the node stays up, fenced: it answers status and
    # serializable reads and says why it cannot write. With this set it exits with EXIT_DISK_FAILED
    # instead, once it has answered its waiting clients, so that a supervisor restarts it.
    exit_on_disk_failure: bool = False


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``; ValueError with a clear message otherwise."""
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"endpoint {text!r} is not HOST:PORT")
    if not port_text.isdigit():
        raise ValueError(f"endpoint {text!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"endpoint {text!r}: port {port} is out of range 1..65535")
    return host.strip("[]"), port


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """Parse ``"1=127.0.0.1:7001,2=127.0.0.1:7002"`` into ``{1: ("127.0.0.1", 7001), ...}``."""
    peers: dict[int, tuple[str, int]] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        ident, sep, endpoint = item.partition("=")
        if not sep or not ident.strip().isdigit():
            raise ValueError(f"peer {item!r} is not ID=HOST:PORT")
        node_id = int(ident)
        if node_id < 1:
            raise ValueError(f"peer {item!r}: node ids start at 1")
        if node_id in peers:
            raise ValueError(f"peer id {node_id} appears twice")
        peers[node_id] = parse_endpoint(endpoint)
    if not peers:
        raise ValueError("no peers given")
    return peers


class TcpTransport:
    """How a node reaches the network: TCP here; tests substitute in-memory streams."""

    async def connect(self, host: str, port: int):
        return await trio.open_tcp_stream(host, port)

    async def open_listeners(self, host: str, port: int) -> list:
        return await trio.open_tcp_listeners(port, host=host)


# ---------------------------------------------------------------------------------------------------
# Events posted to the driver. Plain tuples keep the hot path cheap: (kind, ...).
EV_TICK = 0  # (EV_TICK, count)
EV_PAXOS = 1  # (EV_PAXOS, message)
EV_PROPOSE = 2  # (EV_PROPOSE, command_bytes, waiter_key, conn, request_id, decoded_command)
EV_READ = 3  # (EV_READ, conn, request)
EV_SNAPSHOT = 4  # (EV_SNAPSHOT, slot, data): a peer's snapshot arrived
EV_COMPACT = 5  # (EV_COMPACT, slot): our snapshot file through slot is written; compact core and log
EV_MANY = 6  # (EV_MANY, [event, ...]): what one reader read at once (messages, proposals, reads), in order
EV_ADOPT = 7  # (EV_ADOPT, slot, state_machine, started): the leader's snapshot, restored and written here
EV_WAKE = 8  # (EV_WAKE,): nothing for the core; the driver looks at its apply queue (a local read waits)
EV_INSTALL = 9  # (EV_INSTALL, slot, data, state_machine): a peer's snapshot, restored in a worker thread


FOLLOWER_TICKS_PER_WAKE = 5


class ClientConn:
    """One client connection. Replies collect in ``pending`` while the node works through a batch and
    leave together when the node calls ``flush`` (one write per connection per batch)."""

    __slots__ = ("outbox", "pending", "closed", "name", "_dirty", "last_heard", "scope")

    def __init__(self, name: str, dirty: list) -> None:
        self.outbox = Outbox()
        self.pending: list[bytes] = []
        self.closed = False
        self.name = name
        self._dirty = dirty  # the node's list of connections with pending replies
        self.last_heard = trio.current_time()  # when its last frames arrived (see Node._close_idle_clients)
        self.scope = trio.CancelScope()  # cancelled to close the connection

    def reply(self, message) -> None:
        if self.closed:
            return
        try:
            frame = wire.encode_frame(message)
        except wire.FrameTooLarge as exc:
            frame = wire.encode_frame(wire.ErrorReply(
                id=getattr(message, "id", None), code=wire.TOO_LARGE,
                message=f"the reply is too large for one frame ({exc}); narrow the request (prefix, limit)",
                leader=None))
        self.reply_frame(frame)

    def reply_frame(self, frame: bytes) -> None:
        """``reply`` with a frame encoded already (small, so never too large)."""
        if self.closed:
            return
        if not self.pending:
            self._dirty.append(self)
        self.pending.append(frame)

    def flush(self) -> None:
        pending = self.pending
        if pending:
            self.pending = []
            if not self.closed:
                self.outbox.write(pending[0] if len(pending) == 1 else b"".join(pending))


class Node:
    """One replica of the store. ``await node.run()`` serves until cancelled."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, tuple[str, int]],
        data_dir: str | os.PathLike,
        options: ServerOptions | None = None,
        *,
        listener_socket: socket.socket | None = None,
        transport: "TcpTransport | None" = None,
    ) -> None:
        if node_id not in peers:
            raise ValueError(f"node id {node_id} is not among the peers {sorted(peers)}")
        self.node_id = node_id
        self.peers = dict(peers)
        self.options = options or ServerOptions()
        self.data_dir = Path(data_dir)
        self._listener_socket = listener_socket
        self.transport = transport or TcpTransport()
        self.storage = Storage.open(
            self.data_dir, node_id=node_id, cluster_id=self.options.cluster_id, fsync=self.options.fsync,
            preallocate=self.options.log_preallocate_bytes,
        )
        found = self.storage.open_snapshot()
        if found is not None:
            _, file, length = found
            with file:
                self.sm = StateMachine.restore_stream(file, length)  # decoded from the file as it goes
            self.storage.release_snapshot()
        else:
            self.sm = StateMachine()
        o = self.options
        self.replica = Replica(
            node_id,
            Config(node_ids=tuple(sorted(peers))),
            rng=random.Random(),
            state=self.storage.recovered,
            options=Options(
                heartbeat_ticks=o.heartbeat_ticks,
                election_timeout_ticks=o.election_timeout_ticks,
                window=o.window,
                batch_count_max=o.batch_count_max,
                lazy_decide=o.lazy_decide,
                thrifty=o.thrifty,
            ),
        )
        self._events_send, self._events_recv = trio.open_memory_channel(math.inf)
        # Frames for each peer; at most 10,000 wait while a link is slow, the rest are dropped
        self._peer_out: dict[int, Outbox] = {p: Outbox(limit=10_000) for p in self.peers if p != node_id}
        self._peer_links = trio.CancelScope()  # the peer sender tasks (see _run_peer_links, _stop_voting)
        self._dirty_conns: list[ClientConn] = []  # client connections with replies to flush
        self._client_conns: set[ClientConn] = set()
        # (client_id, request_id) -> list of (conn, wire request id, deadline)
        self._waiting_writes: dict[tuple[bytes, int], list] = defaultdict(list)
        self._waiting_reads: dict[int, tuple[ClientConn, object]] = {}
        self._next_expiry_scan = 0.0  # when _expire_waiters looks at the waiting requests next
        self._read_ids = itertools.count(1)
        self._applied_since_snapshot = 0
        self._snapshot_inbox: dict[tuple[int, int], bytearray] = {}
        self._snapshot_sending: set[int] = set()
        # ok, read-only or failed; anything but ok fences the node (see _stop_voting)
        self.disk_state = DISK_OK
        self.disk_error: str | None = None  # why the disk is not ok: the file, the error, what to do
        self._fenced = False  # disk_state != ok, as a flag the hot paths test
        self.applied_slot = self.replica.snapshot_slot  # what the state machine has applied
        self._commit_send, self._commit_recv = trio.open_memory_channel(math.inf)
        self._staged = 0
        self._committed = 0
        self._fsync_ewma = 0.0  # seconds; see ServerOptions.inline_fsync_max
        self._own_commands: dict[bytes, commands.Command] = {}  # proposed here, not yet applied
        self._snapshotting = False  # a snapshot file is being written (see _start_snapshot)
        self._snapshot_ms = 0
        self._driver_idle = False  # the driver waits for events and none was posted since (see _post)
        self._quiet = False  # the driver's last batch was tiny: one request at a time
        # The highest decided slot whose decision rests only on durable accepts (ours included).
        self._durable_decided_slot = self.replica.decided_slot
        self._progress = trio.Event()
        # Decided slots handed out by the core and not yet applied, in order: (slot, batch) items. An
        # eager node applies them at once (CATCH_UP_COMMANDS at a time); a lazy learner lets them wait
        # for the leader's next snapshot (see _adopt).
        self._to_apply: collections.deque = collections.deque()
        self._to_apply_commands = 0
        self._lazy = False
        self._last_handout = 0.0  # when the core last handed out a decided slot (trio time)
        self._last_local_read = -math.inf  # when this node last served a serializable read
        self._deferred_reads: list[tuple[int, int]] = []  # (slot, read_id): confirmed, waiting for applies
        self._local_reads: list[tuple[int, ClientConn, object]] = []  # (slot, conn, request) waiting too
        self.counters: dict[str, int] = defaultdict(int)
        self.listen_port: int | None = None
        self.ready = trio.Event()

    @property
    def storage_full(self) -> bool:
        """The node refuses writes because a write to its disk failed with ENOSPC."""
        return self.disk_state == DISK_READ_ONLY

    # -----------------------------------------------------------------------------------------------
    # life cycle

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Closes storage on the way out."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                listeners = await self._open_listeners()
                sock = getattr(listeners[0], "socket", None)
                self.listen_port = sock.getsockname()[1] if sock is not None else self.peers[self.node_id][1]
                nursery.start_soon(self._driver)
                nursery.start_soon(self._committer)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self._run_peer_links)
                nursery.start_soon(self._serve_listeners, listeners)
                self.ready.set()
                task_status.started(self.listen_port)
                log.info("node %d serving on port %d, data dir %s", self.node_id, self.listen_port, self.data_dir)
        finally:
            self.storage.close()

    async def _open_listeners(self) -> list:
        if self._listener_socket is not None:
            sock = trio.socket.from_stdlib_socket(self._listener_socket)
            return [trio.SocketListener(sock)]
        return await self.transport.open_listeners(*self.peers[self.node_id])

    async def _serve_listeners(self, listeners) -> None:
        await trio.serve_listeners(self._handle_connection, listeners)

    async def _ticker(self) -> None:
        o = self.options
        period = o.tick_seconds
        next_at = trio.current_time()
        sweep_at = next_at
        step = 1
        # Ticks a follower takes at once (see below). They land together, so just after a heartbeat
        # reset its election counter it may already count `step`: with heartbeats every H ticks the
        # counter stays under H + 2 * step, which must stay below the election timeout T.
        follower_step = max(1, min(FOLLOWER_TICKS_PER_WAKE, (o.election_timeout_ticks - o.heartbeat_ticks) // 3))
        while True:
            next_at += period * step
            now = trio.current_time()
            if next_at < now:  # we fell behind (e.g. a long fsync): don't burst ticks
                next_at = now
            await trio.sleep_until(next_at)
            replica = self.replica
            self.counters["tick_wakeups"] += 1
            if self._driver_idle and self._quiet and self._committed == self._staged and not self._fenced:
                # Nothing else to do: tick here, saving the driver a wake-up (as readers do, see _post).
                self.counters["inline_ticks"] += step
                self._tick(step)
                self._after_events(step)
            else:
                self._post_event((EV_TICK, step))  # one event: a batch of them would not look quiet
            if next_at >= sweep_at:
                sweep_at = next_at + 1.0
                self._close_idle_clients()
            # A follower that hears from a leader needs its ticks only for the election timer (and
            # catch-up pacing), so it takes them a few at a time: waking a process costs ~0.4 ms of
            # CPU on a small VM, and ticking every 10 ms kept an idle follower at 4 % of a core. A
            # leader (heartbeats, lazy decides, retransmits, request timeouts) and a node without a
            # leader (elections) tick every period.
            step = follower_step if not replica.is_leader and replica.leader_id is not None else 1

    def _close_idle_clients(self) -> None:
        """Close client connections that sent nothing for ``idle_client_timeout`` seconds (checked once
        a second, so a connection may stay up to a second longer)."""
        limit = trio.current_time() - self.options.idle_client_timeout
        for conn in self._client_conns:
            if conn.last_heard < limit:
                conn.scope.cancel()

    # -----------------------------------------------------------------------------------------------
    # the driver: the only task that touches the Replica

    async def _driver(self) -> None:
        recv = self._events_recv
        replica = self.replica
        # The first take_actions re-applies decided slots recovered from the log: all of them, before
        # anything else (not CATCH_UP_COMMANDS at a time), so that the first snapshot after a restart
        # covers them all and a restart's memory peak stays that of the state (see memory_bench).
        self._stage(replica.take_actions())
        self._apply_queued(math.inf)
        self._flush_replies()
        while True:
            try:
                first = recv.receive_nowait()
                await trio.lowlevel.checkpoint()  # let the readers and the committer run meanwhile
            except trio.WouldBlock:
                if self._to_apply and not self._lazy:
                    self._catch_up()  # a backlog to apply, nothing else to do: a step of it
                    await trio.lowlevel.checkpoint()
                    continue
                self._driver_idle = True  # readers may feed the core themselves until something is posted
                first = await recv.receive()
                self._driver_idle = False
            batch = [first]
            # EV_MANY items count as the events they hold, so the limit and the quiet test see events.
            count = len(first[1]) if first[0] == EV_MANY else 1
            while count < 10_000:
                try:
                    event = recv.receive_nowait()
                except trio.WouldBlock:
                    break
                batch.append(event)
                count += len(event[1]) if event[0] == EV_MANY else 1
            ticks = 0
            counters = self.counters
            counters["driver_loops"] += 1
            counters["events"] += count
            self._quiet = count <= 2
            if self._fenced:
                self._refuse_while_fenced(batch)
                self._flush_replies()
                continue
            feed = self._feed
            for event in batch:
                kind = event[0]
                if kind == EV_TICK:
                    ticks += event[1]
                    self._tick(event[1])
                elif kind == EV_SNAPSHOT:
                    self._receive_snapshot(event[1], event[2])
                elif kind == EV_INSTALL:
                    await self._install_snapshot(event[1], event[2], event[3])
                elif kind == EV_COMPACT:
                    await self._finish_snapshot(event[1])
                elif kind == EV_ADOPT:
                    await self._adopt(event[1], event[2], event[3])
                elif kind == EV_MANY:
                    for one in event[1]:
                        feed(one)
                else:
                    feed(event)
            self._after_events(ticks)

    def _tick(self, count: int) -> None:
        replica = self.replica
        if self._to_apply_commands > CATCH_UP_COMMANDS:
            # A node with a backlog to apply does not campaign yet: if the leader is gone, the standby
            # (or another node whose state is current) should win, and answer clients at once.
            replica.postpone_election()
        for _ in range(count):
            replica.tick()

    def _feed(self, event) -> None:
        """Give one message, proposal or read to the core (no waiting: see ``_post``)."""
        kind = event[0]
        if kind == EV_PAXOS:
            self.replica.receive(event[1])
        elif kind == EV_PROPOSE:
            self._propose(event)
        elif kind == EV_READ:
            self._start_read(event[1], event[2])

    def _after_events(self, ticks: int) -> None:
        """What follows every batch of events: take the core's actions and carry them out (or stage them)."""
        if ticks:
            self._expire_waiters()
        self._stage(self.replica.take_actions())
        self._update_learner()
        if self._to_apply and not self._lazy:
            self._catch_up()
        self._flush_replies()
        # Snapshot after snapshot_every commands, but not more often than once per eighth of the number
        # of keys: a snapshot costs time in proportion to the state, so this keeps its cost per
        # command constant however large the store grows (and while it grows by inserts alone,
        # the interval grows by an eighth at most, so the log above the snapshot stays bounded too).
        # The core keeps every decided value above the snapshot in memory, so the interval is also
        # what a node holds beyond its state: an eighth of a million keys' writes is about 40 MB.
        if (not self._snapshotting and not self._fenced
                and self._applied_since_snapshot >= max(self.options.snapshot_every, len(self.sm) // 8)):
            self._start_snapshot()

    def _post_event(self, event) -> None:
        self._driver_idle = False  # the driver has something to do (it may not have woken up yet)
        self._events_send.send_nowait(event)

    def _post(self, events: list) -> None:
        """A reader hands over what it read: to the driver, or, when the node is quiet, to the core at once.

        Quiet means the driver is waiting with nothing queued, its last batch was tiny and nothing is
        staged: one request at a time. Then running the events here saves a wake-up of the driver task
        (tens of microseconds on every hop of a write). Under load the driver batches everything that
        arrived meanwhile into one slot, so readers queue. Only synchronous events come here (messages,
        proposals, reads), and the core is still touched by one task at a time: trio runs one task at a
        time and nothing here waits.
        """
        if not events:
            return
        if (self._driver_idle and self._quiet and len(events) <= 2 and self._committed == self._staged
                and not self._fenced):
            self.counters["inline_events"] += len(events)
            for event in events:
                self._feed(event)
            self._after_events(0)
            return
        # One channel item for the lot: a send and a receive per request cost about a microsecond.
        self._post_event(events[0] if len(events) == 1 else (EV_MANY, events))

    def _stage(self, actions) -> None:
        """Hand one batch of actions to the committer, after writing (not yet fsyncing) its records.

        The driver does not wait for the disk: it goes on feeding the core while the committer fsyncs,
        so one fsync covers the records of every batch staged meanwhile (group commit across batches).
        """
        if not actions:
            return
        end = None
        early = False
        if actions.persist and self.options.fsync:
            # Phase-2a requests (Accept) promise nothing on our behalf, so they may leave before our
            # own record is even written, let alone fsynced: followers then write to their disks
            # while we write to ours, and a round trip costs one fsync instead of two. Our own accept
            # counts towards a decision only when Accepted replies are handled, in a later batch,
            # after this batch's fsync (the committer finishes batches in order). Everything else
            # waits for the fsync. (If our disk turns out to be full, the Accepts that left are
            # harmless: proposals that a majority of the others may still choose.)
            #
            # An Accept also carries the leader's decided_slot. A decision counts our own accept,
            # which is durable only once the committer's fsync got there, so an Accept that leaves
            # early may only announce what was decided as of the last finished fsync; otherwise a
            # follower could apply a value that a crash of ours un-chooses.
            durable = self._durable_decided_slot
            capped: dict[int, pm.Accept] = {}  # one copy per broadcast Accept, so it is encoded once
            accepts = []
            for to, m in actions.send:
                if type(m) is pm.Accept:
                    if m.decided_slot > durable:
                        m = capped.get(id(m)) or capped.setdefault(
                            id(m), dataclasses.replace(m, decided_slot=durable))
                    accepts.append((to, m))
            if accepts:
                self._send_now(accepts)
                early = True
        if actions.persist:
            try:
                self.storage.append(actions.persist)
                flushed = self.storage.flush()
            except StorageError as exc:
                self._stop_voting(exc)
                return  # nothing else of this batch may leave the node
            # Decide records only speed up recovery (a lost one is learned again from the peers), so a
            # batch that persists nothing else need not wait for an fsync; a later fsync covers them.
            if any(type(r) is not DecideRecord for r in actions.persist):
                end = flushed
            self.counters["records"] += len(actions.persist)
        decided_slot = self.replica.decided_slot
        if self._committed == self._staged and (
                end is None or not self.options.fsync or self._fsync_ewma <= self.options.inline_fsync_max):
            # Nothing is staged ahead of this batch (so the order of batches is kept) and either no
            # fsync is needed or the disk is fast: carry it out here. Every hop to another task or
            # thread is a wake-up, and one request at a time pays for each of them in latency.
            if end is not None and self.options.fsync:
                try:
                    self._note_fsync(self._fsync(end))
                except StorageError as exc:
                    self._stop_voting(exc)
                    return  # the batch may or may not be on disk: none of it may leave the node
            if decided_slot > self._durable_decided_slot:
                self._durable_decided_slot = decided_slot
            self.counters["inline_batches"] += 1
            self._carry_out(actions, early)
            return
        self._staged += 1
        self._commit_send.send_nowait((actions, end, early, decided_slot))

    def _fsync(self, end: int) -> float:
        """Make the log durable through ``end``; return the seconds it took. Runs in the driver or in
        the committer's worker thread, so it touches nothing but the storage (see ``_note_fsync``)."""
        started = time.perf_counter()
        self.storage.fsync_through(end)
        return time.perf_counter() - started

    def _note_fsync(self, elapsed: float) -> None:
        # an exponentially weighted mean of recent fsyncs decides where the next one runs
        self._fsync_ewma += (elapsed - self._fsync_ewma) * 0.2
        self.counters["fsyncs"] += 1
        self.counters["fsync_us"] += int(elapsed * 1e6)

    async def _committer(self) -> None:
        """Carry out staged batches in order: one fsync for all of them, then send, apply, answer."""
        recv = self._commit_recv
        while True:
            items = [await recv.receive()]
            while True:
                try:
                    items.append(recv.receive_nowait())
                except trio.WouldBlock:
                    break
            end = max((item[1] for item in items if item[1] is not None), default=None)
            if end is not None and self.options.fsync and not self._fenced:
                try:
                    self._note_fsync(await trio.to_thread.run_sync(self._fsync, end))
                except StorageError as exc:
                    self._stop_voting(exc)
            if not self._fenced:
                for actions, _, early, decided_slot in items:
                    if decided_slot > self._durable_decided_slot:
                        self._durable_decided_slot = decided_slot
                    self._carry_out(actions, early)
            # else: these batches (and any staged after them) may not all be on disk; none of their
            # messages, applies or answers may leave. Their waiting clients were told (_stop_voting).
            self._flush_replies()
            self._committed += len(items)
            progress, self._progress = self._progress, trio.Event()
            progress.set()

    async def _wait_committed(self) -> None:
        """Wait until the committer has carried out every staged batch (before snapshots)."""
        while self._committed < self._staged:
            await self._progress.wait()

    def _refuse_while_fenced(self, batch) -> None:
        """A fenced node (its disk is read-only or failed): the core is frozen (its memory may be ahead
        of the disk, so it must not speak), writes and linearizable reads are refused, ticks and peer
        messages are dropped; serializable reads and status still work (see _client_request)."""
        for event in [one for item in batch for one in (item[1] if item[0] == EV_MANY else (item,))]:
            if event[0] == EV_PROPOSE:
                event[3].reply(self._disk_reply(event[4]))
            elif event[0] == EV_READ:
                event[1].reply(self._disk_reply(event[2].id))

    def _disk_reply(self, request_id, *, write_sent: bool = False) -> wire.ErrorReply:
        """The answer to a request this node cannot serve because of its disk."""
        if self.disk_state == DISK_READ_ONLY:
            return wire.ErrorReply(id=request_id, code=wire.STORAGE_FULL, leader=None,
                                   message="this node's disk is full; it refuses writes until restarted "
                                           "with free space")
        outcome = "; this write's outcome is unknown (another node may still decide it)" if write_sent else ""
        return wire.ErrorReply(id=request_id, code=wire.DISK_FAILED, leader=None,
                               message=f"this node's disk failed and it stopped voting{outcome}: "
                                       f"{self.disk_error}")

    def _stop_voting(self, exc: Exception) -> None:
        """The disk refused a write or an fsync: fence this node at once, on whatever path found out.

        After a failed fsync the page cache cannot be trusted: a retried fsync may "succeed" without
        the data (PostgreSQL, 2018), so the core's memory may now be ahead of what the disk holds and
        nothing it says may leave the node: no Promise, Accepted, HeartbeatAck or Decide, no answer to
        a write or a linearizable read. So the core is never fed again (the driver, the readers and
        the ticker test ``_fenced``), batches staged and not carried out are dropped, nothing more is
        sent to peers, and waiting clients are told. A leader thereby steps down: its followers stop
        hearing from it and elect another within an election timeout. The node keeps answering status
        and serializable reads (its state machine holds only what was decided before: applies follow
        successful fsyncs) and says why. ENOSPC on a write (``StorageFull``) fences too, as read-only:
        nothing was lost, but nothing new is durable. Either way a restart recovers from what the disk
        really holds. Idempotent: the first failure is the one reported.
        """
        if self._fenced:
            return
        full = isinstance(exc, StorageFull)
        self.disk_state = DISK_READ_ONLY if full else DISK_FAILED
        self.disk_error = str(exc)
        self._fenced = True
        self._lazy = False  # apply what was decided before: serializable reads wait for it
        if full:
            log.error("node %d: disk full: refusing writes until restarted with free space: %s", self.node_id, exc)
        else:
            log.critical("node %d: DISK FAILED: %s. From now on no Paxos message leaves this node and no write "
                         "is answered; status and serializable reads still work", self.node_id, exc)
        self.counters["disk_failures"] += 1
        for waiters in self._waiting_writes.values():
            for conn, request_id, _ in waiters:
                conn.reply(self._disk_reply(request_id, write_sent=True))
        self._waiting_writes.clear()
        self._own_commands.clear()
        for conn, request, _ in self._waiting_reads.values():
            conn.reply(self._disk_reply(request.id))
        self._waiting_reads.clear()
        self._deferred_reads = []
        if not full:
            # Frames already queued were produced before the failure, after their own fsyncs, so they
            # could go; but nothing new may, and closing the links makes the silence plain to peers.
            for outbox in self._peer_out.values():
                outbox.fd = None  # no more direct writes (see Outbox.write)
                outbox.close()
            self._peer_links.cancel()
        self._flush_replies()
        if self.options.exit_on_disk_failure:
            log.critical("node %d: exiting with status %d (--exit-on-disk-failure)", self.node_id, EXIT_DISK_FAILED)
            logging.shutdown()
            os._exit(EXIT_DISK_FAILED)

    def _propose(self, event) -> None:
        _, command, key, conn, request_id, decoded = event
        if not self.replica.propose(command):
            conn.reply(self._not_leader(request_id))
            return
        # Remember what the command decodes to, so applying it here skips decoding it again. A
        # command that is never decided here (we lost leadership) stays until the cache is full.
        own = self._own_commands
        if len(own) >= OWN_COMMANDS_MAX:
            own.clear()
        own[command] = decoded
        deadline = trio.current_time() + self.options.request_timeout
        self._waiting_writes[key].append((conn, request_id, deadline))

    def _start_read(self, conn: ClientConn, request) -> None:
        read_id = next(self._read_ids)
        if not self.replica.read(read_id):
            conn.reply(self._not_leader(request.id))
            return
        self._waiting_reads[read_id] = (conn, request, trio.current_time() + self.options.request_timeout)

    def _expire_waiters(self) -> None:
        """Fail requests that waited past the request timeout (the outcome of a write is unknown).

        Looks at the waiting requests every ``EXPIRY_SCAN_SECONDS`` (so a request fails up to that much
        after its deadline): only those still unanswered are kept, a few thousand at most under load,
        where a queue of every write's deadline held the last request timeout's worth of writes (5 s:
        300,000 entries, ~50 MB, at 60,000 puts/s).
        """
        now = trio.current_time()
        if now < self._next_expiry_scan:
            return
        self._next_expiry_scan = now + EXPIRY_SCAN_SECONDS
        waiting = self._waiting_writes
        overdue = [key for key, waiters in waiting.items() if any(w[2] < now for w in waiters)]
        for key in overdue:
            waiters = waiting.pop(key)
            keep = []
            for waiter in waiters:
                if waiter[2] >= now:
                    keep.append(waiter)
                    continue
                conn, request_id, _ = waiter
                self.counters["writes_expired"] += 1
                conn.reply(wire.ErrorReply(id=request_id, code=wire.TIMEOUT, leader=None,
                                           message="write not decided in time; outcome unknown"))
            if keep:
                waiting[key] = keep
        expired_reads = [k for k, (_, _, deadline) in self._waiting_reads.items() if deadline < now]
        for read_id in expired_reads:
            conn, request, _ = self._waiting_reads.pop(read_id)
            conn.reply(wire.ErrorReply(id=request.id, code=wire.TIMEOUT,
                                       message="read not confirmed in time", leader=None))

    def _carry_out(self, actions, early_sent: bool) -> None:
        """Steps 2-6 of the contract for one batch whose records are durable."""
        # 2. send (the Accepts already left if early_sent). A Decide only tells followers what to
        # apply, so it waits until our clients have their answers: each send is a system call, and
        # one request at a time waits for every one made before its reply.
        sends = actions.send
        if early_sent:
            sends = [item for item in sends if type(item[1]) is not pm.Accept]
        decides = [item for item in sends if type(item[1]) is pm.Decide]
        if decides:
            sends = [item for item in sends if type(item[1]) is not pm.Decide]
        self._send_now(sends)
        self._finish(actions)
        if decides:
            self._flush_replies()
            self._send_now(decides)

    def _finish(self, actions) -> None:
        """Steps 3-6 of the contract: apply, answer reads, fail what was dropped, offer snapshots."""
        # 3. apply decided commands (in order, after any backlog), answer the waiting writers
        if actions.apply:
            self._last_handout = trio.current_time()
            self._to_apply.extend(actions.apply)
            self._to_apply_commands += sum(len(batch) for _, batch in actions.apply)
            if not self._lazy:
                self._apply_queued(CATCH_UP_COMMANDS)
        # 4. reads whose index is applied and whose leadership round is confirmed (the core counts a
        # slot as applied once handed out; a read whose slot is still in the apply queue waits for it)
        for read_id, slot in actions.reads:
            if slot > self.applied_slot:
                self._deferred_reads.append((slot, read_id))
                continue
            entry = self._waiting_reads.pop(read_id, None)
            if entry is not None:
                conn, request, _ = entry
                conn.reply(self._answer_read(request))
        for read_id in actions.rejected_reads:
            entry = self._waiting_reads.pop(read_id, None)
            if entry is not None:
                conn, request, _ = entry
                conn.reply(self._not_leader(request.id))
        for command in actions.dropped_proposals:
            self._own_commands.pop(command, None)
            try:
                cmd = commands.decode_command(command)
            except commands.CommandError:
                continue
            for conn, request_id, _ in self._waiting_writes.pop((cmd.client_id, cmd.request_id), []):
                conn.reply(self._not_leader(request_id))
        if actions.snapshot_to:
            self._send_snapshot_soon(actions.snapshot_to)

    def _apply_queued(self, limit: int) -> None:
        """Apply queued decided slots, whole slots of about ``limit`` commands at most, answering the
        writers that wait for them and then the reads that waited for these applies."""
        queue = self._to_apply
        sm_apply = self.sm.apply
        waiting = self._waiting_writes
        own = self._own_commands
        answered = replies = applied = 0
        latency_s = 0.0  # for the counters: the time since each answered write arrived
        started = trio.current_time() + self.options.request_timeout  # (a deadline is arrival + timeout)
        while queue and applied < limit:
            slot, batch = queue.popleft()
            self.applied_slot = slot
            applied += len(batch)
            for command in batch:
                key, result = sm_apply(command, own.pop(command, None) if own else None)
                if key is not None and key in waiting:
                    for conn, request_id, deadline in waiting.pop(key):
                        latency_s += started - deadline
                        replies += 1
                        self._reply_result(conn, request_id, result)
                    answered += 1
                    if answered % REPLY_FLUSH_EVERY == 0:
                        # Let the first answers of a big batch go while we apply the rest: the
                        # client (on the other core) starts on them, and its next requests come
                        # back in smaller groups, which keeps more of the pipeline busy at once.
                        self._flush_replies()
        self._to_apply_commands -= applied
        self._applied_since_snapshot += applied
        if replies:
            self.counters["writes_answered"] += replies
            self.counters["write_latency_us"] += int(latency_s * 1e6)
        if self._deferred_reads or self._local_reads:
            self._answer_caught_up_reads()

    def _answer_caught_up_reads(self) -> None:
        """Answer the reads that waited for applies up to their slot."""
        applied = self.applied_slot
        if self._deferred_reads:
            later = []
            for slot, read_id in self._deferred_reads:
                if slot > applied:
                    later.append((slot, read_id))
                    continue
                entry = self._waiting_reads.pop(read_id, None)
                if entry is not None:
                    conn, request, _ = entry
                    conn.reply(self._answer_read(request))
            self._deferred_reads = later
        if self._local_reads:
            later = []
            for item in self._local_reads:
                if item[0] > applied:
                    later.append(item)
                else:
                    item[1].reply(self._answer_read(item[2]))
            self._local_reads = later

    def _catch_up(self) -> None:
        """One step of applying a backlog (CATCH_UP_COMMANDS), then send the answers."""
        self._apply_queued(CATCH_UP_COMMANDS)
        self.counters["catch_up_steps"] += 1
        self._flush_replies()

    # -----------------------------------------------------------------------------------------------
    # lazy learners

    def _should_be_lazy(self, now: float) -> bool:
        """Whether this node may leave decided commands unapplied for now (see the module docstring)."""
        o = self.options
        replica = self.replica
        leader = replica.leader_id
        if (not o.lazy_learners or self._fenced or len(self.peers) < 3 or leader is None or replica.is_leader
                or self.node_id == standby_of(self.peers, leader)):
            return False
        if now - self._last_local_read < LOCAL_READ_EAGER_SECONDS or now - self._last_handout > LAZY_IDLE_SECONDS:
            return False
        # If the leader's snapshots stop coming, the backlog is applied after two intervals' worth.
        interval = max(o.snapshot_every, len(self.sm) // 8)
        return self._small_enough_for_learners() and self._to_apply_commands <= 2 * interval

    def _small_enough_for_learners(self) -> bool:
        """Restoring a key costs ~1.8 us, applying a put ~4.5 us: a state more than twice the snapshot
        interval is cheaper to keep applying than to adopt (the leader and the learners use this rule)."""
        return len(self.sm) <= 2 * self.options.snapshot_every

    def _update_learner(self) -> None:
        lazy = self._should_be_lazy(trio.current_time())
        if lazy == self._lazy:
            return
        self._lazy = lazy
        if not lazy:
            self.counters["lazy_ends"] += 1
            return
        self.counters["lazy_starts"] += 1
        # A follower answers no writes: those still waiting here (we led until lately) would wait for
        # applies that may now be skipped. Their clients retry on the leader with the same request
        # id, where the outcome is remembered.
        for waiters in self._waiting_writes.values():
            for conn, request_id, _ in waiters:
                conn.reply(self._not_leader(request_id))
        self._waiting_writes.clear()
        self._own_commands.clear()
        for _, read_id in self._deferred_reads:
            entry = self._waiting_reads.pop(read_id, None)
            if entry is not None:
                entry[0].reply(self._not_leader(entry[1].id))
        self._deferred_reads = []

    def _send_now(self, sends) -> None:
        """2. Send messages to peers: one frame per peer per batch (split if huge)."""
        if not sends or self._fenced:
            return
        per_peer: dict[int, list] = defaultdict(list)
        for to, message in sends:
            per_peer[to].append(message)
        encoded: dict[tuple, list[bytes]] = {}  # a broadcast batch is encoded once for every peer
        for to, msgs in per_peer.items():
            outbox = self._peer_out.get(to)
            if outbox is None:
                continue
            same = tuple(map(id, msgs))
            frames = encoded.get(same)
            if frames is None:
                frames = encoded[same] = self._encode_peer_frames(to, msgs)
            for frame in frames:
                if not outbox.write(frame):
                    self.counters["peer_queue_full_drops"] += 1

    def _encode_peer_frames(self, to: int, msgs: list) -> list[bytes]:
        try:
            return [wire.encode_frame(wire.PaxosBatch(messages=tuple(msgs)), PEER_FRAME_BYTES_MAX)]
        except wire.FrameTooLarge:
            pass
        frames = []
        for m in msgs:
            try:
                frames.append(wire.encode_frame(wire.PaxosBatch(messages=(m,)), PEER_FRAME_BYTES_MAX))
            except wire.FrameTooLarge:
                self.counters["oversize_messages_dropped"] += 1
                log.error("dropped a %s to node %d larger than %d bytes", type(m).__name__, to,
                          PEER_FRAME_BYTES_MAX)
        return frames

    def _reply_result(self, conn: ClientConn, request_id: int, result: dict) -> None:
        failpoints.hit("before_reply")  # a test can crash the node after apply, before the client hears
        error = result.get("error")
        if error == STALE_REQUEST:
            # A retry whose first result the state machine no longer remembers (see docs/protocol.md):
            # the first attempt may or may not have been applied, so this is not the client's mistake.
            conn.reply(wire.ErrorReply(
                id=request_id, code=wire.STALE, leader=None,
                message="the cluster no longer remembers this write's outcome (more than 4,096 newer writes "
                        "of this client were answered meanwhile); it may or may not have been applied"))
        elif error is not None:
            conn.reply(wire.ErrorReply(id=request_id, code=wire.BAD_REQUEST, message=str(error), leader=None))
        else:
            conn.reply_frame(wire.encode_write_result_frame(request_id, result))

    def _not_leader(self, request_id) -> wire.ErrorReply:
        leader = self.replica.leader_id
        hint = None
        if leader is not None and leader != self.node_id and leader in self.peers:
            host, port = self.peers[leader]
            hint = f"{host}:{port}"
        return wire.ErrorReply(id=request_id, code=wire.NOT_LEADER,
                               message="this node is not the leader", leader=hint)

    # -----------------------------------------------------------------------------------------------
    # snapshots

    def _start_snapshot(self) -> None:
        """Begin a snapshot of the state machine at its applied slot, without stopping the node.

        ``StateMachine.freeze`` gives a copy-on-write view of the state at this slot, so applies and
        answers go on while the snapshot is written. A worker thread writes the file
        (``Storage.write_snapshot_file``) and fsyncs it; it asks this thread for each next parcel of
        pieces of ``SNAPSHOT_PIECE_ENTRIES`` entries, about ``SNAPSHOT_PARCEL_SECONDS`` of encoding
        (``trio.from_thread``), so the encoding runs between the driver's batches instead of holding
        the GIL against them. Then ``_finish_snapshot`` compacts the core and the log.
        """
        self._applied_since_snapshot = 0
        slot = self.applied_slot
        if slot <= self.replica.snapshot_slot:
            return
        self._snapshotting = True
        self._nursery.start_soon(self._write_snapshot_file, slot, self.sm.freeze())

    async def _write_snapshot_file(self, slot: int, frozen) -> None:
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

        def pieces():  # in the worker thread: each parcel is encoded in the trio thread
            while (piece := trio.from_thread.run_sync(parcel)) is not None:
                yield piece

        try:
            with frozen:
                await trio.to_thread.run_sync(self.storage.write_snapshot_file, slot, pieces())
        except StorageError as exc:
            self._snapshotting = False
            self._stop_voting(exc)
            return
        self._snapshot_ms = int((time.perf_counter() - started) * 1000)
        self._post_event((EV_COMPACT, slot))

    async def _finish_snapshot(self, slot: int) -> None:
        """In the driver: the snapshot file through ``slot`` is durable; compact the core and the log."""
        try:
            await self._wait_committed()  # every staged record is in the log before it is rewritten
            self.replica.compact(slot)
            await trio.to_thread.run_sync(self.storage.compact_log, slot, self.replica.durable_state())
        except StorageError as exc:
            # (A snapshot written without its log rewrite still recovers with the old log.)
            self._stop_voting(exc)
            return
        finally:
            self._snapshotting = False
            self._flush_replies()
        self.counters["snapshots"] += 1
        self.counters["snapshot_ms"] = self._snapshot_ms
        # The frozen key order, the journal and the pieces were freed: give that memory back.
        trim_started = time.perf_counter()
        runtime.release_free_memory()
        trim_us = int((time.perf_counter() - trim_started) * 1e6)
        self.counters["memory_trim_us_max"] = max(self.counters["memory_trim_us_max"], trim_us)
        log.info("snapshot at slot %d (%d keys, %d ms)", slot, len(self.sm), self._snapshot_ms)
        if (self.options.lazy_learners and self.replica.is_leader and len(self.peers) >= 3
                and self._small_enough_for_learners()):
            # Followers other than the standby may be lazy learners: they take this instead of
            # applying (one that is not lazy drops it: the slot is applied there already). Past
            # that size no follower is lazy (see _should_be_lazy), so nothing is sent.
            standby = standby_of(self.peers, self.node_id)
            self._send_snapshot_soon([p for p in self.peers if p not in (self.node_id, standby)])

    def _receive_snapshot(self, slot: int, data: bytes) -> None:
        """In the driver: a peer's snapshot through ``slot`` arrived. Restore it in a worker thread
        (a million keys take seconds of CPU, which must not stall ticks, heartbeats and Accepts), then
        install it (``EV_INSTALL``) or, on a lazy learner that decided past it, adopt it (``EV_ADOPT``).
        While one is restored or written, others are dropped: the core asks again."""
        if self._snapshotting:
            return
        if slot <= self.replica.applied_slot:
            if self._lazy and slot > self.applied_slot and slot > self.replica.snapshot_slot:
                self._snapshotting = True  # no snapshot of our own meanwhile (see _adopt)
                self._nursery.start_soon(self._restore_for_adoption, slot, data)
            return
        self._snapshotting = True
        self._nursery.start_soon(self._restore_for_install, slot, data)

    async def _restore_for_install(self, slot: int, data: bytes) -> None:
        try:
            sm = await trio.to_thread.run_sync(StateMachine.restore, data)
        except Exception as exc:  # a peer sent a bad snapshot: drop it, the core will ask again
            self._snapshotting = False
            log.warning("rejected snapshot at slot %d: %s", slot, exc)
            return
        self._post_event((EV_INSTALL, slot, data, sm))

    async def _install_snapshot(self, slot: int, data: bytes, sm: StateMachine) -> None:
        """In the driver: the peer's snapshot through ``slot``, restored in ``sm``, becomes ours (unless
        the core decided past it meanwhile; then it is dropped)."""
        self._snapshotting = False
        if slot <= self.replica.applied_slot:
            return
        await self._wait_committed()  # every staged record is in the log before it is rewritten
        if self._fenced:
            return
        self.replica.install_snapshot(slot)
        state = self.replica.durable_state()
        try:
            await trio.to_thread.run_sync(self.storage.write_snapshot, slot, data, state)
        except StorageError as exc:
            self._stop_voting(exc)
            return
        self.sm = sm
        self.applied_slot = slot
        self._to_apply.clear()  # every slot handed out so far is at or below the snapshot
        self._to_apply_commands = 0
        self._answer_caught_up_reads()
        self._applied_since_snapshot = 0
        self.counters["snapshots_installed"] += 1
        log.info("installed snapshot at slot %d from a peer (%d keys)", slot, len(sm))

    async def _restore_for_adoption(self, slot: int, data: bytes) -> None:
        """A lazy learner got the leader's snapshot at ``slot``, a slot it has decided but not applied:
        restore it and write it as our own snapshot (in worker threads), then let the driver adopt it."""
        started = time.perf_counter()
        try:
            sm = await trio.to_thread.run_sync(StateMachine.restore, data)
            await trio.to_thread.run_sync(self.storage.write_snapshot_file, slot, data)
        except StorageError as exc:
            self._snapshotting = False
            self._stop_voting(exc)
            return
        except Exception as exc:  # a bad snapshot (or one older than ours): keep applying instead
            self._snapshotting = False
            log.warning("did not adopt the snapshot at slot %d: %s", slot, exc)
            return
        self._post_event((EV_ADOPT, slot, sm, started))

    async def _adopt(self, slot: int, sm: StateMachine, started: float) -> None:
        """In the driver: the leader's snapshot through ``slot`` is restored in ``sm`` and durable as our
        snapshot file. It is the state after ``slot`` (every replica applies the same commands), so
        the queued slots up to it need no applying: take it if we are still behind it. Either way
        our core and log are compacted through it (``_finish_snapshot``); a node that turned eager
        meanwhile goes on applying its queue."""
        if self._lazy and slot > self.applied_slot:  # (a lazy learner has no writers waiting)
            queue = self._to_apply
            skipped = 0
            while queue and queue[0][0] <= slot:
                skipped += len(queue.popleft()[1])
            self._to_apply_commands -= skipped
            self.counters["commands_not_applied"] += skipped  # the snapshot stood in for them
            self.sm = sm
            self.applied_slot = slot
            self._applied_since_snapshot = 0
            self.counters["snapshots_adopted"] += 1
            self._answer_caught_up_reads()
        self._snapshot_ms = int((time.perf_counter() - started) * 1000)
        await self._finish_snapshot(slot)

    def _send_snapshot_soon(self, peer_ids) -> None:
        """Send our newest snapshot to each of ``peer_ids``: the file is read and framed once for all."""
        peer_ids = [p for p in peer_ids if p not in self._snapshot_sending and p in self._peer_out]
        if not peer_ids or self._fenced:
            return
        snapshot = self.storage.read_snapshot()
        if snapshot is None:
            return
        slot, data = snapshot
        total = len(data)
        frames = [wire.encode_frame(wire.SnapshotChunk(sender=self.node_id, slot=slot, offset=offset, total=total,
                                                       data=bytes(data[offset:offset + SNAPSHOT_CHUNK_BYTES])))
                  for offset in range(0, max(total, 1), SNAPSHOT_CHUNK_BYTES)]
        del data
        for peer_id in peer_ids:
            self._snapshot_sending.add(peer_id)
            outbox = self._peer_out[peer_id]
            try:
                for frame in frames:
                    if not outbox.write(frame):
                        self.counters["snapshot_send_dropped"] += 1  # the receiver drops the rest; the core asks again
                        break
            finally:
                self._snapshot_sending.discard(peer_id)

    def _receive_snapshot_chunk(self, chunk) -> None:
        key = (chunk.sender, chunk.slot)
        if chunk.offset == 0:
            # a new transfer from this sender replaces any unfinished one
            for old in [k for k in self._snapshot_inbox if k[0] == chunk.sender]:
                del self._snapshot_inbox[old]
            self._snapshot_inbox[key] = bytearray()
        buf = self._snapshot_inbox.get(key)
        if buf is None or len(buf) != chunk.offset:
            return  # out of order or missing start: drop; the core will ask again
        buf += chunk.data
        if len(buf) >= chunk.total:
            del self._snapshot_inbox[key]
            self._post_event((EV_SNAPSHOT, chunk.slot, bytes(buf)))

    # -----------------------------------------------------------------------------------------------
    # peers

    async def _run_peer_links(self) -> None:
        """One sender task per peer, all in ``_peer_links`` (cancelled when the node stops voting)."""
        with self._peer_links:
            async with trio.open_nursery() as nursery:
                for peer_id in self._peer_out:
                    nursery.start_soon(self._peer_sender, peer_id)

    async def _peer_sender(self, peer_id: int) -> None:
        """Dial ``peer_id`` and keep its link open, reconnecting with capped back-off.

        While the link is up, ``Outbox.write`` sends straight to its socket; this task sends only what
        the socket could not take at once. While it is down, messages to the peer are dropped (Paxos
        tolerates loss: the core retransmits through heartbeats and catch-up).
        """
        host, port = self.peers[peer_id]
        outbox = self._peer_out[peer_id]
        backoff = 0.02
        hello = wire.encode_frame(wire.Hello(node_id=self.node_id, cluster_id=self.options.cluster_id))
        while True:
            outbox.drop_backlog()
            try:
                with trio.fail_after(self.options.connect_timeout):
                    stream = await self.transport.connect(host, port)
            except (OSError, trio.TooSlowError):
                outbox.drop_backlog()
                await trio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, self.options.backoff_max)
                continue
            backoff = 0.02
            try:
                async with stream:
                    _set_nodelay(stream)
                    # What was queued for an earlier connection may end in half a frame: drop it, so
                    # this connection starts with whole frames.
                    outbox.drop_backlog()
                    await stream.send_all(hello)
                    outbox.fd = socket_fd(stream)
                    try:
                        await outbox.run(stream)
                    finally:
                        outbox.fd = None  # before the stream closes its descriptor
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                log.info("link to node %d lost: %s", peer_id, exc)
                await trio.sleep(backoff)

    async def _handle_connection(self, stream) -> None:
        """Serve one accepted connection: a peer link (first frame Hello) or a client."""
        name = _peer_name(stream)
        conn: ClientConn | None = None
        try:
            _set_nodelay(stream)
            reader = wire.FrameReader(stream, self.options.frame_bytes_max)
            with trio.move_on_after(self.options.idle_client_timeout) as idle:
                frames = await reader.receive_frames()
            if idle.cancelled_caught or not frames:
                return
            try:
                first = wire.decode_body(frames[0])
            except wire.WireError as exc:
                # Answer a bad first frame like any later one: addressed to its request id if it has one.
                self.counters["protocol_errors"] += 1
                log.warning("closing connection from %s: bad frame: %s", name, exc)
                with trio.move_on_after(1):
                    await stream.send_all(wire.encode_frame(wire.ErrorReply(
                        id=wire.request_id_of(frames[0]), code=wire.PROTOCOL, message=str(exc), leader=None)))
                return
            if isinstance(first, wire.Hello):
                await self._serve_peer(first, reader, frames[1:], name)
                return
            conn = ClientConn(name, self._dirty_conns)
            conn.outbox.fd = socket_fd(stream)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._client_writer, stream, conn)
                # Errors are handled inside the nursery block: trio would wrap anything raised here
                # in an ExceptionGroup, which the handlers below would not recognise.
                try:
                    self._client_conns.add(conn)
                    with conn.scope:
                        await self._serve_client(conn, reader, frames, name)
                    if conn.scope.cancelled_caught:
                        log.debug("closed client %s: idle for %gs", name, self.options.idle_client_timeout)
                except wire.WireError as exc:
                    self.counters["protocol_errors"] += 1
                    log.warning("closing connection from %s: bad frame: %s", name, exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    log.debug("connection from %s closed: %s", name, exc)
                finally:
                    self._client_conns.discard(conn)
                    # let the writer send what is queued, then stop it
                    self._flush_replies()
                    conn.outbox.close()
        except wire.WireError as exc:
            self.counters["protocol_errors"] += 1
            log.warning("closing connection from %s: bad frame: %s", name, exc)
            with trio.move_on_after(1):
                try:
                    await stream.send_all(wire.encode_frame(
                        wire.ErrorReply(id=None, code=wire.PROTOCOL, message=str(exc), leader=None)))
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            log.debug("connection from %s closed: %s", name, exc)
        except Exception:  # one connection's bug must never take the node down
            self.counters["connection_crashes"] += 1
            log.exception("connection from %s failed", name)
        finally:
            if conn is not None:
                conn.closed = True
                conn.outbox.fd = None  # before the stream closes its descriptor
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _serve_peer(self, hello, reader, frames, name: str) -> None:
        if hello.cluster_id != self.options.cluster_id:
            raise wire.WireError(f"peer is in cluster {hello.cluster_id!r}, we are {self.options.cluster_id!r}")
        if hello.node_id not in self.peers or hello.node_id == self.node_id:
            raise wire.WireError(f"peer says it is node {hello.node_id}, which is not a member")
        peer = hello.node_id
        reader.frame_bytes_max = PEER_FRAME_BYTES_MAX
        while True:
            events: list = []
            for message in wire.decode_bodies(frames):
                if isinstance(message, wire.WireError):
                    raise message
                if isinstance(message, wire.PaxosBatch):
                    for m in message.messages:
                        if m.sender != peer:
                            raise wire.WireError(f"message from node {peer} claims sender {m.sender}")
                        events.append((EV_PAXOS, m))
                elif isinstance(message, wire.SnapshotChunk):
                    if message.sender != peer:
                        raise wire.WireError(f"snapshot from node {peer} claims sender {message.sender}")
                    self._receive_snapshot_chunk(message)
                else:
                    raise wire.WireError(f"unexpected {type(message).__name__} on a peer link")
            self._post(events)
            frames = await reader.receive_frames()
            if not frames:
                return

    async def _client_writer(self, stream, conn: ClientConn) -> None:
        try:
            await conn.outbox.run(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            conn.closed = True  # the client went away; the reader sees the end of the stream
        finally:
            conn.outbox.fd = None

    def _flush_replies(self) -> None:
        """Send the replies collected since the last flush: one write per client connection."""
        dirty = self._dirty_conns
        if dirty:
            for conn in dirty:
                conn.flush()
            dirty.clear()

    async def _serve_client(self, conn: ClientConn, reader, frames, name: str) -> None:
        while True:
            events: list = []
            for i, request in enumerate(wire.decode_bodies(frames)):
                if isinstance(request, wire.WireError):
                    self.counters["protocol_errors"] += 1
                    log.warning("closing client %s: bad frame: %s", name, request)
                    conn.reply(wire.ErrorReply(id=wire.request_id_of(frames[i]), code=wire.PROTOCOL,
                                               message=str(request), leader=None))
                    self._post(events)
                    return
                self._client_request(conn, request, events)
            self._post(events)
            self._flush_replies()  # answers given here (not_leader, stale reads, status)
            # No timeout scope per receive (a trio deadline each time, with many requests a second):
            # the ticker closes connections idle for too long (_close_idle_clients).
            frames = await reader.receive_frames()
            if not frames:
                return
            conn.last_heard = trio.current_time()

    def _client_request(self, conn: ClientConn, request, events: list) -> None:
        if isinstance(request, wire.WRITE_REQUEST_TYPES):
            try:
                command, decoded = self._encode_write(request)
            except ValueError as exc:
                conn.reply(wire.ErrorReply(id=request.id, code=wire.BAD_REQUEST, message=str(exc), leader=None))
                return
            if self._fenced:
                conn.reply(self._disk_reply(request.id))
                return
            if not self.replica.is_leader:
                conn.reply(self._not_leader(request.id))
                return
            key = (request.client_id, request.request_id)
            events.append((EV_PROPOSE, command, key, conn, request.id, decoded))
        elif isinstance(request, (wire.GetRequest, wire.ListRequest)):
            if request.linearizable:
                if self._fenced:
                    conn.reply(self._disk_reply(request.id))
                    return
                if not self.replica.is_leader:
                    conn.reply(self._not_leader(request.id))
                    return
                events.append((EV_READ, conn, request))
            elif self._lazy or self._to_apply:
                # This node has decided commands it has not applied: the read waits for them (and a
                # lazy learner turns eager for a while, see _should_be_lazy).
                self._last_local_read = trio.current_time()
                self._local_reads.append((self.replica.applied_slot, conn, request))
                events.append((EV_WAKE,))
            else:
                conn.reply(self._answer_read(request))
        elif isinstance(request, wire.StatusRequest):
            conn.reply(wire.OkReply(id=request.id, result=self.status()))
        else:
            conn.reply(wire.ErrorReply(id=getattr(request, "id", None), code=wire.BAD_REQUEST,
                                       message=f"{type(request).__name__} is not a client request", leader=None))

    @staticmethod
    def _encode_write(request) -> tuple[bytes, commands.Command]:
        """The command bytes for a write request, and the command they decode to."""
        if isinstance(request, wire.PutRequest):
            data = commands.encode_put(request.client_id, request.request_id, request.ack_below,
                                       request.key, request.value)
            return data, commands.Command("put", request.client_id, request.request_id, request.ack_below,
                                          request.key, request.value)
        if isinstance(request, wire.DeleteRequest):
            data = commands.encode_delete(request.client_id, request.request_id, request.ack_below,
                                          request.key, request.prefix)
            return data, commands.Command("delete", request.client_id, request.request_id, request.ack_below,
                                          request.key, prefix=request.prefix)
        data = commands.encode_cas(request.client_id, request.request_id, request.ack_below,
                                   request.key, request.expected, request.new)
        return data, commands.Command("cas", request.client_id, request.request_id, request.ack_below,
                                      request.key, request.new, request.expected)

    def _answer_read(self, request):
        sm = self.sm
        if isinstance(request, wire.GetRequest):
            entry = sm.get(request.key)
            if entry is None:
                result = {"found": False, "rev": sm.revision}
            else:
                result = {"found": True, "value": entry.value, "ver": entry.version,
                          "mrev": entry.mod_revision, "rev": sm.revision}
            return wire.OkReply(id=request.id, result=result)
        entries = sm.range(request.prefix)
        if request.limit:
            entries = entries[: request.limit]
        if request.keys_only:
            items = [[e.key] for e in entries]
        else:
            items = [[e.key, e.value] for e in entries]
        return wire.OkReply(id=request.id, result={"items": items, "rev": sm.revision})

    def status(self) -> dict:
        core = self.replica.status()
        host, port = self.peers[self.node_id]
        # A fenced node's core is frozen with whatever it believed: it leads nothing and knows no leader.
        leader = None if self._fenced else self.replica.leader_id
        ballot = core.get("ballot")
        return {
            "id": self.node_id,
            "address": f"{host}:{self.listen_port or port}",
            "leader": leader,
            "is_leader": self.replica.is_leader and not self._fenced,
            "ballot": list(ballot) if ballot is not None else None,
            "decided_slot": self.replica.decided_slot,
            "applied_slot": self.applied_slot,
            "learner": "lazy" if self._lazy else "eager",
            "apply_backlog": self._to_apply_commands,
            "snapshot_slot": self.replica.snapshot_slot,
            "log_bytes": self.storage.log_bytes,
            "revision": self.sm.revision,
            "keys": len(self.sm),
            "state_hash": self.sm.state_hash(),
            "storage_full": self.storage_full,
            "disk": self.disk_state,  # ok, read-only or failed
            "disk_error": self.disk_error,  # why not ok: the file, the error, what to do
            "snapshotting": self._snapshotting,
            "cluster_id": self.options.cluster_id,
            "counters": dict(self.counters),
            "core_counters": core["counters"],  # the Paxos core's: duplicates, stale messages, elections
        }


def _set_nodelay(stream) -> None:
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def _peer_name(stream) -> str:
    sock = getattr(stream, "socket", None)
    try:
        host, port = sock.getpeername()[:2]
        return f"{host}:{port}"
    except Exception:
        return "?"


async def serve_until_signal(node: Node) -> None:
    """Run ``node`` until SIGINT or SIGTERM, then shut down cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)

            async def wait_for_signal() -> None:
                async for signum in signals:
                    log.info("node %d: %s received, shutting down", node.node_id, signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)


def run_node(node_id: int, peers: dict[int, tuple[str, int]], data_dir: str, options: ServerOptions) -> None:
    """Blocking entry point of ``kv serve``: run one node until SIGINT/SIGTERM."""
    node = Node(node_id, peers, data_dir, options)
    runtime.tune_gc()  # after the restore, so that the state it loaded is never scanned
    trio.run(serve_until_signal, node)
