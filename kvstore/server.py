"""The trio node: one process of the replicated store.

Theory of operation
-------------------
A ``Node`` owns the Multi-Paxos core (``paxos.replica.Replica``), its durable storage
(``kvstore.storage.Storage``) and the driver that feeds the one to the other; everything else it
delegates, one job per module, all in one nursery:

=========================  ===================================================================
``kvstore.groupcommit``     writing and fsyncing the log: one fsync for many batches (the committer)
``kvstore.waiters``         the clients waiting for an answer, their deadlines, the replies
``kvstore.learners``        the state machine, the apply queue and the lazy-learner policy
``kvstore.snapshots``       our snapshots, sending them, taking a peer's (install, adoption)
``kvstore.peers``           the links to the other members (senders, the incoming reader)
``kvstore.clients``         client connections, the request loop, sending replies, idle sweep
``kvstore.events``          the typed inputs of the driver
``kvstore.commands``        turning a write request into command bytes
``kvstore.tls``             mutual TLS on the one port (the transport), who a certificate names, SIGHUP
``kvstore.acl``             access rules per client certificate (checked by ``kvstore.clients``)
=========================  ===================================================================

* **One driver task feeds the core.** Peer readers, client readers, the ticker and snapshot tasks
  post events (``kvstore.events``) on one memory channel. The driver takes one event, drains every
  other event already queued (this is where batching comes from), feeds them all to the core (``match``
  on the type), then carries out the resulting ``Actions`` in contract order:

  1. persist: append every ``persist`` record and fsync once (``GroupCommit.stage``: in the driver
     when nothing is staged ahead and fsyncs are fast, otherwise by the committer task in a worker
     thread, for every batch staged meanwhile);
  2. send the messages (``PeerLinks.send_now``: one frame per peer per batch, straight to the socket);
  3. apply decided commands and answer the writers waiting for them (``Learner.hand_out``, through the
     apply queue);
  4. answer linearizable reads whose read index has been applied and confirmed (``Waiters``).

  Nothing that promises or accepts leaves the node before its fsync, because step 2 waits for step 1:
  ``_carry_out`` runs only for a batch that is durable (phase-2a Accepts excepted, see ``_stage``).

* **When others feed the core.** A reader task (``_post``) or the ticker feeds the core itself,
  without waking the driver, when the node is *quiet*: the driver is parked waiting for its channel
  with nothing queued (``_driver_idle``, cleared by every post), its last batch had at most two events,
  nothing is staged with the committer, and the node is not fenced. That is one request at a time,
  where each task wake-up saved is latency saved. It is safe because trio runs one task at a time and
  this path never waits: it feeds, takes the actions and stages them (an inline fsync, or a hand-over
  to the committer) in one synchronous call, so no other task sees the core half-fed, the events it
  feeds are younger than any the driver has taken (none is queued), and the driver holds nothing about
  the core across its wait. Readers otherwise only *read* the core's leadership to route a request, and
  ``status`` reads its counters. Snapshot steps that change the core (compact, install) run in the
  driver (``Snapshots.finish``, ``install``, ``adopt``).

* **Lazy learners**: under sustained writes a follower other than the standby leaves decided commands
  unapplied and adopts the leader's snapshots instead; the policy and its rules are in the docstring of
  ``kvstore.learners``.

* **Disk faults fence the node** (``_stop_voting``; docs/design.md, "Disk faults"): any storage error,
  on any path, stops the core from ever being fed again, drops staged batches, closes the peer links
  and answers waiting clients; status and serializable reads go on.
"""
from __future__ import annotations

import logging
import math
import os
import random
import signal
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import trio

from paxos import messages as pm
from paxos.actions import Actions
from paxos.ballot import Ballot
from paxos.classic import ClassicReplica
from paxos.membership import ConfigSchedule, ScheduleEntry
from paxos.replica import Config, Options, Replica

from . import acl, commands, descriptors, frames, httpserve, identity, limits, metrics, runtime, tls, wire
from .clients import ClientConn, ClientLinks
from .endpoints import format_endpoint
from .events import (
    CompactionWritten,
    Proposal,
    Read,
    SnapshotAdoptable,
    SnapshotReceived,
    SnapshotRestored,
    SnapshotStep,
    SnapshotWritten,
    Tick,
    Wake,
)
from .groupcommit import GroupCommit
from .learners import Learner
from .members import CoreCall, JoinError, Members, fetch_cluster_id, fetch_join_config
from .peers import PeerLinks
from .snapshots import Snapshots
from .statemachine import StateMachine
from .storage import Storage, StorageError, StorageFull, recorded_config
from .waiters import Waiters
from .watches import WATCH_HISTORY_CHANGES, WATCH_HISTORY_CHANGES_MAX, History, Watches

__all__ = ["Node", "ServerOptions", "TcpTransport", "ClientConn", "run_node", "serve_until_signal",
           "DISK_OK", "DISK_READ_ONLY", "DISK_FAILED", "EXIT_DISK_FAILED"]

log = logging.getLogger("kvstore.server")

# The node's disk, as ``status`` reports it (see Node._stop_voting and docs/design.md, "Disk faults")
DISK_OK = "ok"
DISK_READ_ONLY = "read-only"  # a write failed with ENOSPC: nothing durable was lost, nothing new is
DISK_FAILED = "failed"  # an fsync (or a write) failed: the page cache can no longer be trusted
# ``kv serve --exit-on-disk-failure``: the exit status after a disk failure, for a process supervisor
EXIT_DISK_FAILED = 75  # EX_TEMPFAIL: restart me once the disk is fixed

# Ticks a follower that hears from a leader takes at once (see Node._ticker)
FOLLOWER_TICKS_PER_WAKE = 5
WATCH_LEADERLESS_SECONDS = 5.0  # a node's watches end after this long without a leader (_after_events)
# Events the driver takes into one batch at most
BATCH_EVENTS_MAX = 10_000
# ... and bytes of the frames they came in: with 1 MiB values a follower that fell behind for a moment
# took 50-100 MiB of Accepts into one batch and encoded, wrote and fsynced them in one step of 0.3-0.9 s,
# long enough to cost a leader (bench/big_values.py). A post of at least SIZED_POST_BYTES says its size.
BATCH_BYTES_MAX = 8 << 20
SIZED_POST_BYTES = 64 << 10
CLOCK_REFRESH_MS = 1_000
"""The leader proposes its clock before a write of a client new to it when the cluster's is older than this
(kvstore.statemachine, client expiry: new clients' stamps are checked against it)."""
# How far above every ballot number a node knows a peer's message may go (see Node._leaps_ballots)
BALLOT_LEAP_MAX = 1 << 32
# A tick that comes this much late says the node's event loop ran nothing else meanwhile (Node._ticker):
# counted (kv_event_loop_stalls_total), and logged at most once per LOOP_STALL_LOG_SECONDS
LOOP_STALL_SECONDS = 0.1
LOOP_STALL_LOG_SECONDS = 10.0
# How often the ticker sweeps idle client connections (see ClientLinks.close_idle)
IDLE_SWEEP_SECONDS = 1.0
# A snapshot is also due once the log above the last one holds this many bytes and SNAPSHOT_LOG_FACTOR
# times that snapshot's size (Node._log_outgrew_snapshot): large values fill memory long before 100,000
# commands. (At 64 MiB and twice, QA measured a snapshot a second with 64 KiB values, and under CPU
# contention leaders changing after them.)
SNAPSHOT_LOG_BYTES_MIN = 128 * 1024 * 1024
SNAPSHOT_LOG_FACTOR = 4

# The Paxos engines a node can run (ServerOptions.engine); the first is the default.
ENGINES = ("core", "classic")

# The names of options before their units were part of them: ServerOptions still takes and gives them.
_C = TypeVar("_C")

_OLD_OPTION_NAMES = {
    "request_timeout": "request_timeout_seconds",
    "idle_client_timeout": "idle_client_timeout_seconds",
    "inline_fsync_max": "inline_fsync_seconds_max",
}


def _old_name_of(new: str) -> property:
    """A property under an old option name that reads and writes the option ``new``."""

    def get(self: object) -> Any:
        return getattr(self, new)

    def set_(self: object, value: Any) -> None:
        setattr(self, new, value)

    return property(get, set_, doc=f"The old name of ``{new}``.")


def _accepting_old_names(cls: type[_C]) -> type[_C]:
    """Let ``cls`` (ServerOptions) take and give its options under their ``_OLD_OPTION_NAMES`` too."""
    init = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for old, new in _OLD_OPTION_NAMES.items():
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"ServerOptions: {old} is the old name of {new}; give one of them")
                kwargs[new] = kwargs.pop(old)
        init(self, *args, **kwargs)

    __init__.__doc__ = init.__doc__
    # Wraps the __init__ the dataclass generated; mypy allows no assignment to a method.
    cls.__init__ = __init__  # type: ignore[method-assign]
    for old, new in _OLD_OPTION_NAMES.items():
        setattr(cls, old, _old_name_of(new))
    return cls


# The smallest frame_bytes_max a node may have: a put of the largest key and value, with room to spare
FRAME_BYTES_LEAST = limits.KEY_BYTES_MAX + limits.VALUE_BYTES_MAX + 4096


@_accepting_old_names
@dataclass
class ServerOptions:
    """Tunables of one node. Durations carry their unit in their name (``_seconds``, ``_ticks``); the
    constructor also takes ``request_timeout``, ``idle_client_timeout`` and ``inline_fsync_max``, the
    names of three of them before that rule (tests and scripts pass them)."""

    tick_seconds: float = 0.01
    heartbeat_ticks: int = 5
    election_timeout_ticks: int = 30
    batch_count_max: int = 512
    window: int = 64
    snapshot_every: int = 100_000  # applied write commands between snapshots (etcd's default too)
    fsync: bool = True
    frame_bytes_max: int = wire.FRAME_BYTES_MAX
    # Bytes that frames still arriving may hold together, over all client connections (see
    # wire.FrameBudget): a frame over 64 KiB takes its size from it until it is complete; one that
    # finds too little left closes its connection with an ``unavailable`` error. At least one frame.
    arriving_frames_bytes_max: int = 64 << 20
    # Client connections the node takes at once; one more is answered ``unavailable`` and closed. 0: the
    # default, 4096 or fewer if the limit on open files is low (kvstore.descriptors keeps descriptors
    # for the node's own files, so that connections never make a snapshot fail).
    client_connections_max: int = 0
    request_timeout_seconds: float = 5.0
    cluster_id: str = "kv"
    connect_timeout_seconds: float = 1.0
    # well below the election timeout, so a restarted peer hears the leader in time
    backoff_seconds_max: float = 0.1
    idle_client_timeout_seconds: float = 600.0
    # Fsync in the driver itself, without a worker thread, while recent fsyncs took at most this long
    # and nothing else is staged. Waking a worker thread and hearing back from it costs ~0.5 ms on a
    # small VM, more than a fast fsync; a slow disk is better left to the thread, where the driver keeps
    # feeding the core meanwhile. 0 disables inline fsyncs.
    inline_fsync_seconds_max: float = 0.0015
    # Announce a decision with a Decide on the next tick unless an Accept carries it first (see
    # paxos.replica.Options.lazy_decide): one request at a time, this saves every follower a wake-up
    # and a log write per command; a quiet leader's followers apply up to one tick later.
    lazy_decide: bool = True
    # Send a new Accept at once only to the followers a majority needs, the others on the next tick
    # (see paxos.replica.Options.thrifty): one request at a time, a 3-node cluster then wakes two
    # processes per put instead of three and fsyncs twice instead of three times.
    thrifty: bool = True
    # A leader that hears no answer from a majority for an election timeout steps down (see
    # paxos.replica.Options.check_quorum): its clients then go to the majority's leader at once.
    check_quorum: bool = True
    # A voter whose election timer fires asks the others first and starts an election only with a
    # majority's yes (see paxos.replica.Options.pre_vote): a node back from a partition follows the
    # leader instead of deposing it. (The core engine's; the classic engine's elector is the seed's.)
    pre_vote: bool = True
    # Zeros kept written ahead of the log's last record, so that an fsync overwrites file space
    # instead of growing the file (no journal commit; see kvstore.storage). 0 disables it.
    log_preallocate_bytes: int = 1 << 20
    # Lazy learners (see kvstore.learners): under sustained writes, a follower that is not the standby
    # applies nothing and takes the leader's snapshots instead.
    lazy_learners: bool = True
    # Snapshot early once the node is quiet (see kvstore.learners.Learner.idle_snapshot_due): after this
    # long without a decided slot, if at least idle_snapshot_commands (and an eighth of the snapshot
    # interval) were applied since the last snapshot. 0 seconds: only every snapshot interval.
    idle_snapshot_seconds: float = 5.0
    idle_snapshot_commands: int = 10_000
    # Changes kept for watches from an earlier revision (kv watch --rev; kvstore.watches.History), and
    # WATCH_HISTORY_BYTES_MAX bytes of their commands at most. 0: none kept (a watch from a revision
    # below the node's next one is refused with compacted).
    watch_history: int = WATCH_HISTORY_CHANGES
    # After a disk failure (see Node._stop_voting) the node stays up, fenced: it answers status and
    # serializable reads and says why it cannot write. With this set it exits with EXIT_DISK_FAILED
    # instead, once it has answered its waiting clients, so that a supervisor restarts it.
    exit_on_disk_failure: bool = False
    # Which Paxos engine runs the log: "core" (paxos.replica.Replica, Multi-Paxos, the default and
    # faster) or "classic" (paxos.classic.ClassicReplica: one essential-paxos instance per slot, for
    # comparison). Nodes of different engines refuse each other's peer links (see kvstore.peers).
    engine: str = "core"
    # Serve Prometheus metrics at http://HOST:PORT/metrics (kvstore.metrics); None: no metrics server.
    metrics_addr: str | None = None
    # Mutual TLS for peers and clients on the one port (kvstore.tls): the cluster's CA file, this node's
    # certificate and key, all three or none. acl: the access rules per client certificate (kvstore.acl;
    # needs TLS). SIGHUP reads all of them again.
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    acl: str | None = None

    def __post_init__(self) -> None:
        for name in ("tick_seconds", "request_timeout_seconds", "connect_timeout_seconds", "backoff_seconds_max",
                     "idle_client_timeout_seconds", "inline_fsync_seconds_max", "idle_snapshot_seconds"):
            value = getattr(self, name)
            positive = name not in ("inline_fsync_seconds_max", "idle_snapshot_seconds")  # (0 turns those off)
            if type(value) not in (int, float) or not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ValueError(f"{name} must be a number of seconds {'above' if positive else 'at least'} 0, "
                                 f"got {value!r}")
        for name, least in (("heartbeat_ticks", 1), ("election_timeout_ticks", 1), ("batch_count_max", 1),
                            ("window", 1), ("snapshot_every", 1), ("idle_snapshot_commands", 0), ("watch_history", 0),
                            ("log_preallocate_bytes", 0), ("frame_bytes_max", FRAME_BYTES_LEAST)):
            value = getattr(self, name)
            if type(value) is not int or value < least:
                raise ValueError(f"{name} must be an int of at least {least}, got {value!r}")
        if self.watch_history > WATCH_HISTORY_CHANGES_MAX:
            # (its ring is allocated at start: two slots per change)
            raise ValueError(f"watch_history must be at most {WATCH_HISTORY_CHANGES_MAX:,}, got {self.watch_history:,}")
        if self.election_timeout_ticks < 2 * self.heartbeat_ticks:
            # A follower would call an election between two heartbeats of a leader that is alive: the
            # cluster would change leaders over and over, and serve little in between.
            raise ValueError(f"election_timeout_ticks ({self.election_timeout_ticks}) must be at least twice "
                             f"heartbeat_ticks ({self.heartbeat_ticks}); 5 to 10 times is usual")
        if type(self.cluster_id) is not str or not self.cluster_id:
            raise ValueError(f"cluster_id must be a non-empty str, got {self.cluster_id!r}")
        if self.metrics_addr is not None:
            httpserve.parse_listen_address(self.metrics_addr)  # EndpointError (a ValueError) if not HOST:PORT
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}: expected one of {', '.join(ENGINES)}")
        if bool(self.cacert) + bool(self.cert) + bool(self.key) not in (0, 3):
            raise ValueError("TLS needs all three of cacert, cert and key")
        if self.acl and not self.cert:
            raise ValueError("access rules (acl) name client certificates: they need TLS (cacert, cert, key)")
        if self.client_connections_max < 0:
            raise ValueError(f"client_connections_max must be at least 0 (0: the default), "
                             f"got {self.client_connections_max}")
        if self.arriving_frames_bytes_max < frames.HEADER_BYTES + self.frame_bytes_max:
            raise ValueError(f"arriving_frames_bytes_max ({self.arriving_frames_bytes_max}) must hold at least one "
                             f"frame of the largest size ({frames.HEADER_BYTES + self.frame_bytes_max} bytes)")


class _SizedPost:
    """A reader's post of at least ``SIZED_POST_BYTES`` of frames, for the driver's ``BATCH_BYTES_MAX``."""

    __slots__ = ("events", "nbytes")

    def __init__(self, events: list[object], nbytes: int) -> None:
        self.events = events
        self.nbytes = nbytes


def gather_batch(first: object, receive_nowait: Callable[[], object]) -> tuple[list[object], int, int]:
    """The driver's next batch: ``first`` and what else is queued, up to ``BATCH_EVENTS_MAX`` events
    and ``BATCH_BYTES_MAX`` bytes of the frames they came in (one post at least); returns the batch
    (each post unwrapped), its events and its bytes. A list (what one reader read at once) counts as
    the events it holds, so the limit and the quiet test see events."""
    nbytes = 0
    if type(first) is _SizedPost:
        nbytes, first = first.nbytes, first.events
    batch = [first]
    count = len(first) if type(first) is list else 1
    while count < BATCH_EVENTS_MAX and nbytes < BATCH_BYTES_MAX:
        try:
            event = receive_nowait()
        except trio.WouldBlock:
            break
        if type(event) is _SizedPost:
            nbytes += event.nbytes
            event = event.events
        batch.append(event)
        count += len(event) if type(event) is list else 1
    return batch, count, nbytes


class ListenError(OSError):
    """The node cannot listen on its address (e.g. the port is taken): ``kv serve`` prints it as one line."""


class Transport(Protocol):
    """How a node reaches the network (``TcpTransport``, ``kvstore.tls.TlsTransport``, tests' in-memory one)."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream: ...

    async def open_listeners(self, host: str, port: int) -> list[trio.abc.Listener[trio.abc.Stream]]: ...


class TcpTransport:
    """How a node reaches the network: TCP here; tests substitute in-memory streams."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await trio.open_tcp_stream(host, port)

    async def open_listeners(self, host: str, port: int) -> list[trio.abc.Listener[trio.abc.Stream]]:
        return list(await trio.open_tcp_listeners(port, host=host))


class Node:
    """One replica of the store. ``await node.run()`` serves until cancelled."""

    # The leader applies its own proposals from the Command built here (tests check it decodes alike).
    _encode_write = staticmethod(commands.encode_write)

    def __init__(
        self,
        node_id: int,
        peers: dict[int, tuple[str, int]],
        data_dir: str | os.PathLike[str],
        options: ServerOptions | None = None,
        *,
        listener_socket: socket.socket | None = None,
        transport: Transport | None = None,
        join: list[str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.join = list(join) if join else None  # kv serve --join: members to ask (kvstore.members)
        self.peers = dict(peers)
        self.options = o = options or ServerOptions()
        self.data_dir = Path(data_dir)
        self._listener_socket = listener_socket
        # With TLS options the node's one port speaks only mutual TLS (kvstore.tls); TlsError if a file is bad.
        self.transport = transport or tls.transport_for(o, node_id) or TcpTransport()
        rules = acl.load(o.acl) if o.acl else None  # AclError if the file is bad (before the storage opens)
        self.counters: dict[str, int] = defaultdict(int)
        if node_id not in self.peers and not self.join and recorded_config(self.data_dir, node_id) is None:
            # (checked again below, with the directory's record: this one leaves a new directory untouched)
            raise ValueError(f"node id {node_id} is not among the peers {sorted(self.peers)}")
        opened_at = time.perf_counter()
        self.storage = Storage.open(
            self.data_dir, node_id=node_id, cluster_id=o.cluster_id, fsync=o.fsync,
            preallocate=o.log_preallocate_bytes,
        )
        try:
            # The configuration this directory started from (kvstore.members): recorded at founding or
            # joining, so that a later --peers list (the bootstrap list only) never changes it.
            recorded = self.storage.bootstrap_config
            if recorded is not None:
                self.bootstrap_config = Config.from_dict(recorded)
                for member, address in self.bootstrap_config.addresses.items():
                    self.peers.setdefault(member, _endpoint(address))
            else:
                self.bootstrap_config = Config(
                    node_ids=tuple(sorted(self.peers)),
                    addresses={member: format_endpoint(*address) for member, address in self.peers.items()})
            if node_id not in self.peers and not self.join:
                raise ValueError(f"node id {node_id} is not among the peers {sorted(self.peers)}")
            found = self.storage.open_snapshot()
            if found is not None:
                snapshot_slot, file, length = found
                restored_at = time.perf_counter()
                with file:
                    # decoded from the file as it goes; its checksum was verified when the storage opened
                    sm = StateMachine.restore_stream(file, length, checked_file=True)
                self.storage.release_snapshot()
                log.info("node %d: data dir opened in %.2f s; snapshot of slot %d restored in %.2f s (%d keys)",
                         node_id, restored_at - opened_at, snapshot_slot, time.perf_counter() - restored_at, len(sm))
                if sm.changes:
                    self.storage.recovered.configs = self.schedule_for(sm, snapshot_slot)
            else:
                sm = StateMachine()
            self._engine_class = ClassicReplica if o.engine == "classic" else Replica
            self._core_options = Options(
                heartbeat_ticks=o.heartbeat_ticks,
                election_timeout_ticks=o.election_timeout_ticks,
                window=o.window,
                batch_count_max=o.batch_count_max,
                lazy_decide=o.lazy_decide,
                thrifty=o.thrifty,
                check_quorum=o.check_quorum,
                pre_vote=o.pre_vote,
                patient_resends=True,  # (TCP loses messages only with a link, and peers redial)
                early_accepts=o.fsync,  # without fsyncs nothing waits, so nothing is sent early
            )
            recovered = self.storage.recovered
            self.replica = self._engine_class(
                node_id,
                self.bootstrap_config,
                rng=random.Random(),
                state=recovered,
                options=self._core_options,
            )
            # The highest ballot number this node knows of (its promise, which is at least every ballot it
            # accepted, then what peers showed): a peer message whose ballot leaps beyond it by more than
            # BALLOT_LEAP_MAX is dropped (_leaps_ballots).
            self._ballot_high = recovered.promised.number
            self._events_send, self._events_recv = trio.open_memory_channel(math.inf)
            # ok, read-only or failed; anything but ok fences the node (see _stop_voting)
            self.disk_state = DISK_OK
            self.disk_error: str | None = None  # why the disk is not ok: the file, the error, what to do
            self._fenced = False  # disk_state != ok, as a flag the hot paths test
            self._driver_idle = False  # the driver waits for events and none was posted since (see _post)
            self._quiet = False  # the driver's last batch was tiny: one request at a time
            self._stall_logged_at = -math.inf  # (event loop stalls: _note_loop_stall)
            self._stall_ms_unlogged = 0
            self._led = False  # the core led after the last batch (see _after_events)
            self._leaderless_since: float | None = None  # while this node has watches and knows no leader
            self._leader_logged: tuple[int, object] | None = None  # the (leader, ballot) last logged
            self._clock_proposed_ms = 0  # when we last proposed a clock command (see _propose)
            self._feed_time: float | None = None  # see _now
            # the core and its members_version as of the last Members.sync from _after_events
            self._members_replica: object = None
            self._members_version: int | None = None
            # Room for large frames while they arrive, over all client connections (wire.FrameBudget)
            self.frame_budget = wire.FrameBudget(o.arriving_frames_bytes_max)
            # The client connections it takes (ServerOptions.client_connections_max; 0: what the limit on open
            # files allows, see kvstore.descriptors); TooFewDescriptors (a ValueError) if it cannot take them.
            files = descriptors.open_files_limit()
            self.client_connections_max = descriptors.connections_max(o.client_connections_max, files)
            self.client_connections_headroom = descriptors.over_limit_headroom(self.client_connections_max, files)
            self.clients = ClientLinks(self)
            self.clients.acl = rules  # kv serve --acl (kvstore.acl); SIGHUP replaces it (kvstore.tls.reload)
            self._send_replies = self.clients.send_replies
            self.waiters = Waiters(o.request_timeout_seconds, self._leader_hint, self.counters)
            self.watches = Watches(self.counters)  # kv watch (kvstore.watches)
            # ... and the changes kept for watches from an earlier revision (kv watch --rev)
            self.history = History(o.watch_history, revision=sm.revision)
            self.learner = Learner(
                node_id, self.replica.config.node_ids, snapshot_every_commands=o.snapshot_every,
                lazy_learners=o.lazy_learners, sm=sm, applied_slot=self.replica.snapshot_slot, waiters=self.waiters,
                send_replies=self._send_replies, counters=self.counters, clock=trio.current_time,
                idle_snapshot_seconds=o.idle_snapshot_seconds, idle_snapshot_commands=o.idle_snapshot_commands,
                snapshot_bytes=lambda: self.storage.snapshot_bytes, watches=self.watches, history=self.history)
            self.members = Members(self)
            self.peer_links = PeerLinks(self)
            self.snapshots = Snapshots(self)
            # The highest decided slot whose decision rests only on durable accepts (ours included).
            self.commit = GroupCommit(self, durable_decided_slot=self.replica.decided_slot)
            self.listen_port: int | None = None
            self.metrics_port: int | None = None  # where /metrics is served (ServerOptions.metrics_addr)
            self._ran = False  # run() was called (a Node runs once)
            self.ready = trio.Event()
        except BaseException:
            # Nothing of the node runs yet: give the directory back (its lock, the log's descriptor), so that
            # a caller that corrects what was wrong can open it again in this process.
            self.storage.close()
            raise

    # What tests and tools read of the parts (the state in use, as the node sees it)

    @property
    def sm(self) -> StateMachine:
        """The state machine (replaced when a snapshot is installed or adopted)."""
        return self.learner.sm

    @property
    def applied_slot(self) -> int:
        """The slot the state machine has applied through (the core's ``applied_slot`` is what it handed out)."""
        return self.learner.applied_slot

    @property
    def _snapshotting(self) -> bool:
        return self.snapshots.busy

    # A test hook: tests/kvstore/test_node_disk.py counts the calls of ``node._encode_peer_frames`` (every
    # Paxos frame to a peer is made there) by replacing it on the node; it is PeerLinks.encode_frames.
    @property
    def _encode_peer_frames(self) -> Callable[..., list[bytes]]:
        return self.peer_links.encode_frames

    @_encode_peer_frames.setter
    def _encode_peer_frames(self, encode: Callable[..., list[bytes]]) -> None:
        self.peer_links.encode_frames = encode  # type: ignore[method-assign]  # the test hook, on this instance

    @property
    def storage_full(self) -> bool:
        """The node refuses writes because a write to its disk failed with ENOSPC."""
        return self.disk_state == DISK_READ_ONLY

    # -----------------------------------------------------------------------------------------------
    # life cycle

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Closes storage on the way out, so a ``Node`` runs once: to serve the
        directory again, build a new one. A port that cannot be listened on raises ``ListenError`` itself
        (before any task starts, so not inside an ExceptionGroup)."""
        if self._ran:
            raise RuntimeError(f"node {self.node_id} ran already (its storage is closed): build a new Node on "
                               f"{self.data_dir} to serve it again")
        self._ran = True
        try:
            try:
                listeners = await self._open_listeners()
            except OSError as exc:
                address = self.peers.get(self.node_id)
                where = format_endpoint(*address) if address else "its address"
                raise ListenError(f"node {self.node_id} cannot listen on {where}: {exc.strerror or exc}") from exc
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                sock = getattr(listeners[0], "socket", None)
                self.listen_port = sock.getsockname()[1] if sock is not None else self.peers[self.node_id][1]
                # Clients and peers are served from here on (status answers the founding of others),
                # but this node votes only once it knows the members' incarnations (kvstore.identity).
                nursery.start_soon(trio.serve_listeners, self.clients.handle_connection, listeners)
                if self.options.metrics_addr is not None:
                    try:
                        self.metrics_port = await nursery.start(metrics.serve_metrics, self, self.options.metrics_addr)
                    except OSError as exc:
                        raise ListenError(f"node {self.node_id} cannot serve metrics on {self.options.metrics_addr}: "
                                          f"{exc.strerror or exc}") from exc
                    log.info("node %d serving metrics at http://%s/metrics", self.node_id, self._metrics_address())
                task_status.started(self.listen_port)
                log.info("node %d serving on port %d, data dir %s", self.node_id, self.listen_port, self.data_dir)
                if self.storage.members is None:
                    if self.join:
                        await self._join(self.join)
                    else:
                        await self._found()
                elif self.storage.bootstrap_config is None:
                    # A directory founded before configurations were recorded: record the one it runs.
                    self.storage.record_members(self.storage.members, config=self.bootstrap_config.to_dict())
                self.members.sync()
                nursery.start_soon(self._driver)
                nursery.start_soon(self.commit.run)
                nursery.start_soon(self._ticker)
                nursery.start_soon(self.peer_links.run)
                self.ready.set()
        finally:
            if not self._fenced:
                try:
                    self.commit.write_deferred()  # (decide records need no fsync: close makes none)
                except StorageError:
                    pass
            self.storage.close()

    async def _found(self) -> None:
        """This directory is new: agree with the other members on the cluster's founding, or refuse
        (``identity.IdentityError``) if the cluster started without this incarnation."""
        incarnation = self.storage.incarnation
        reasons: dict[int, str] = {}  # why a member did not answer (in the log of whom we wait for)

        async def status_of(peer: int) -> dict[str, Any] | None:
            from .client import KVError, connect  # the client library, to ask a peer as any client would

            endpoint = format_endpoint(*self.peers[peer])
            try:
                with trio.move_on_after(2):
                    async with connect([endpoint], timeout=1, transport=self.transport) as kv:
                        try:
                            status = await kv.status(endpoint)
                            reasons.pop(peer, None)
                            return status
                        except (KVError, OSError) as exc:
                            reasons[peer] = str(exc)
                            return None
            except (KVError, OSError) as exc:
                reasons[peer] = str(exc)
                return None
            return None

        def waiting(peers: list[int]) -> None:  # (QA: its clients heard only "no leader")
            self.waiters.not_leader_message = (
                f"node {self.node_id} is waiting for node(s) {', '.join(map(str, peers))} to answer before founding "
                "the cluster: a new cluster starts when every member in --peers is up")

        try:
            founding = await identity.wait_founding(self.node_id, incarnation, self.peers, status_of,
                                                    reasons=reasons, cluster_id=self.options.cluster_id,
                                                    waiting=waiting)
        except identity.IdentityError as exc:
            log.critical("node %d: %s", self.node_id, exc)
            raise
        finally:
            self.waiters.not_leader_message = frames.NOT_LEADER_MESSAGE
        members = founding.members
        assert members is not None  # wait_founding returns only a founding with its members
        self.storage.record_members(members, config=self.bootstrap_config.to_dict())
        log.info("node %d (incarnation %s): %s; members %s", self.node_id, incarnation, founding.how,
                 ", ".join(f"{k}={v}" for k, v in sorted(members.items())))

    async def _join(self, endpoints: list[str]) -> None:
        """kv serve --join: an empty directory for a member added with ``kv member add``. Take the newest
        configuration from a member and start from it (``kvstore.members``); snapshots and the log
        follow as for any node that lags."""
        try:
            config = await fetch_join_config(self.node_id, self.storage.incarnation, endpoints,
                                             self.options.cluster_id, self.transport)
        except JoinError as exc:
            log.critical("node %d: %s", self.node_id, exc)
            raise
        self.bootstrap_config = config
        self.replica = self._engine_class(self.node_id, config, rng=random.Random(),
                                          state=self.storage.recovered, options=self._core_options)
        members = {**config.incarnations, self.node_id: self.storage.incarnation}
        self.storage.record_members(members, config=config.to_dict())
        log.info("node %d (incarnation %s) joined the cluster as a %s at configuration epoch %d",
                 self.node_id, self.storage.incarnation, config.role(self.node_id), config.epoch)

    def schedule_for(self, sm: StateMachine, slot: int) -> tuple[ScheduleEntry, ...]:
        """The core's configuration schedule for a snapshot at ``slot`` of ``sm``: our bootstrap
        configuration and the changes the snapshot carries (``DurableState.configs``)."""
        schedule = ConfigSchedule.initial(self.bootstrap_config)
        for source, command in sm.changes:
            schedule.apply(source, command)
        return schedule.through(slot)

    async def _open_listeners(self) -> list[trio.abc.Listener[trio.abc.Stream]]:
        if self._listener_socket is not None:
            sock = trio.socket.from_stdlib_socket(self._listener_socket)
            wrap = getattr(self.transport, "wrap_listener", None)  # TLS: no plaintext listener, ever
            return [wrap(trio.SocketListener(sock)) if wrap else trio.SocketListener(sock)]
        return await self.transport.open_listeners(*self.peers[self.node_id])

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
            late = trio.current_time() - next_at
            if late >= LOOP_STALL_SECONDS:
                self._note_loop_stall(late)
            replica = self.replica
            ticks = step
            if late >= period and replica.is_leader:
                # A leader woken late takes the ticks it missed, up to a heartbeat period's worth: its
                # heartbeats keep their pace in time while long steps hold its loop (QA: pipelined range
                # reads took one step of 0.1-0.2 s each, so one tick a step made a heartbeat every
                # second, and the followers, ticking on time, elected another leader). Not more: a
                # burst would count the silence of followers whose answers wait behind those steps.
                ticks = min(step + int(late / period), max(step, o.heartbeat_ticks))
            self.counters["tick_wakeups"] += 1
            if self._driver_idle and self._quiet and not self.commit.pending_batches and not self._fenced:
                # Nothing else to do: tick here, saving the driver a wake-up (as readers do, see _post).
                self.counters["inline_ticks"] += ticks
                self._tick(ticks)
                self._after_events(ticks)
            else:
                self._post_event(Tick(ticks))  # one event: a batch of them would not look quiet
            if next_at >= sweep_at:
                sweep_at = next_at + IDLE_SWEEP_SECONDS
                self.clients.close_idle(trio.current_time())
            # A follower that hears from a leader needs its ticks only for the election timer (and
            # catch-up pacing), so it takes them a few at a time: waking a process costs ~0.4 ms of
            # CPU on a small VM, and ticking every 10 ms kept an idle follower at 4 % of a core. A
            # leader (heartbeats, lazy decides, retransmits, request timeouts) and a node without a
            # leader (elections) tick every period.
            step = follower_step if not replica.is_leader and replica.leader_id is not None else 1

    def _note_loop_stall(self, seconds: float) -> None:
        """The ticker woke ``seconds`` late: for that long the node's event loop ran nothing but one step
        of some task, or the process got no CPU (a write or fsync in the loop on a slow disk, a large
        value encoded or applied, swap, an overloaded machine, a paused process). Every node's election
        timer and heartbeats ride on this loop: a stall near the election timeout costs a leader (QA,
        bench/big_values.py: stalls of 0.15-0.8 s came before each leader change). Counted
        (``kv_event_loop_stalls_total``, ``loop_stall_ms_max``) and logged now and then, with the worst
        since the last line: the operator's clue to why leaders changed."""
        counters = self.counters
        counters["loop_stalls"] += 1
        ms = round(seconds * 1000)
        if ms > counters["loop_stall_ms_max"]:
            counters["loop_stall_ms_max"] = ms
        self._stall_ms_unlogged = max(self._stall_ms_unlogged, ms)
        now = trio.current_time()
        if now >= self._stall_logged_at + LOOP_STALL_LOG_SECONDS:
            election_ms = round(self.options.election_timeout_ticks * self.options.tick_seconds * 1000)
            log.warning("node %d: its event loop stalled for %d ms (%d stalls of %d ms or more so far); leaders "
                        "change when stalls near the election timeout (%d ms): look for a slow disk, swap or an "
                        "overloaded machine", self.node_id, self._stall_ms_unlogged, counters["loop_stalls"],
                        round(LOOP_STALL_SECONDS * 1000), election_ms)
            self._stall_logged_at = now
            self._stall_ms_unlogged = 0

    # -----------------------------------------------------------------------------------------------
    # the driver: the task that feeds the Replica (others may only while it is parked: see _post)

    async def _driver(self) -> None:
        recv = self._events_recv
        learner = self.learner
        # The first take_actions re-applies decided slots recovered from the log: all of them, before
        # anything else (not CATCH_UP_COMMANDS at a time), so that the first snapshot after a restart
        # covers them all and a restart's memory peak stays that of the state (see memory_bench).
        self._stage(self.replica.take_actions())
        learner.apply_queued(math.inf, math.inf)
        # The core keeps what it needs of the recovered log (packed once applied), and restoring the
        # snapshot and replaying the log left freed pieces (decoded records, commands) across the
        # heap: drop storage's copy and hand the pieces back, or RSS after a restart stays above RSS
        # before it.
        self.storage.release_recovered()
        runtime.release_free_memory()
        self._send_replies()
        while True:
            try:
                first = recv.receive_nowait()
                await trio.lowlevel.checkpoint()  # let the readers and the committer run meanwhile
            except trio.WouldBlock:
                if learner.behind:
                    learner.catch_up()  # a backlog to apply, nothing else to do: a step of it
                    await trio.lowlevel.checkpoint()
                    continue
                self._driver_idle = True  # readers may feed the core themselves until something is posted
                first = await recv.receive()
                self._driver_idle = False
            batch, count, nbytes = gather_batch(first, recv.receive_nowait)
            counters = self.counters
            counters["driver_loops"] += 1
            self.clients.range_budget.renew()  # (range answers built per step: kvstore.clients.RangeBudget)
            if nbytes >= BATCH_BYTES_MAX:
                counters["batches_cut_by_bytes"] += 1  # (large values: the rest waits for the next batch)
            counters["events"] += count
            self._quiet = count <= 2
            if self._fenced:
                self._refuse_while_fenced(batch)
                self._send_replies()
                continue
            ticks = 0
            feed = self._feed
            self._feed_time = None
            for event in batch:
                match event:
                    case list():
                        for one in event:
                            feed(one)
                    case Tick(count=n):
                        ticks += n
                        self._tick(n)
                    case SnapshotStep():
                        await self._snapshot_step(event)
                        self._feed_time = None  # the step may have waited
                    case _:
                        feed(event)
            self._after_events(ticks)

    async def _snapshot_step(self, event: SnapshotStep) -> None:
        snapshots = self.snapshots
        match event:
            case SnapshotReceived(slot=slot, data=data):
                snapshots.receive(slot, data)
            case SnapshotRestored(slot=slot, data=data, sm=sm):
                await snapshots.install(slot, data, sm)
            case SnapshotWritten(slot=slot):
                await snapshots.finish(slot)
            case SnapshotAdoptable(slot=slot, sm=sm, started=started):
                await snapshots.adopt(slot, sm, started)
            case CompactionWritten(slot=slot):
                await snapshots.complete(slot)

    def _tick(self, count: int) -> None:
        replica = self.replica
        if self.learner.should_postpone_election() or self.commit.promises_pending:
            # A node with a backlog to apply does not campaign yet: if the leader is gone, the standby
            # (or another node whose state is current) should win, and answer clients at once. Nor
            # does one whose latest promise is not durable yet: nothing it sends can leave before it
            # is (a campaign's Prepare neither), and the candidate it promised needs that promise
            # (QA, a slow disk: a voter that promised a candidate timed out while its promise was
            # being fsynced, and campaigned against it, again and again).
            replica.postpone_election()
        for _ in range(count):
            replica.tick()

    def _feed(self, event: object) -> None:
        """Give one proposal, peer message or read to the core (no waiting: see ``_post``)."""
        match event:
            case Proposal():
                self._propose(event)
            case Read():
                self._start_read(event)
            case Wake():
                pass  # nothing for the core: _after_events looks at the apply queue
            case CoreCall():
                event.run()  # an admin request's step (kvstore.members)
            case _:  # a Paxos message (kvstore.peers posts nothing else)
                if not self._leaps_ballots(event):
                    self.replica.receive(cast(pm.Message, event))

    def _leaps_ballots(self, message: object) -> bool:
        """True (and counted, and logged now and then) if ``message`` shows a ballot number more than
        ``BALLOT_LEAP_MAX`` above every ballot this node knows of; else False, the number now known.

        Ballots grow by one per election, so no honest peer leaps that far (2**32 elections: a century
        of back-to-back elections). A forged or garbled message could: one Prepare at 2**64 - 1 made
        the core campaign at 2**64, which no message can carry, and the promise on disk kept the cluster
        leaderless across restarts. Dropping a message is always safe (the core treats it as lost).
        """
        ballot = getattr(message, "ballot", None)
        number = ballot.number if type(ballot) is Ballot else 0
        promised = getattr(message, "promised", None)  # a Nack's: the acceptor's promise
        if type(promised) is Ballot and promised.number > number:
            number = promised.number
        high = self._ballot_high
        if number <= high:
            return False
        if number - high > BALLOT_LEAP_MAX:
            self.counters["ballot_leaps_refused"] += 1
            if self.counters["ballot_leaps_refused"] in (1, 10, 100, 1000):
                log.warning("node %d: dropped a %s from node %s whose ballot number %d leaps more than %d above "
                            "the highest known here (%d): a forged or garbled message",
                            self.node_id, type(message).__name__, getattr(message, "sender", "?"), number,
                            BALLOT_LEAP_MAX, high)
            return True
        self._ballot_high = number
        return False

    def _now(self) -> float:
        """When the events being fed were taken, for the deadlines of requests: the clock is read once per
        batch, when the first request needs it (a reading costs ~0.4 us; one per write was measurable)."""
        now = self._feed_time
        if now is None:
            now = self._feed_time = trio.current_time()
        return now

    def _propose(self, proposal: Proposal) -> None:
        sm = self.learner.sm
        if sm.expiry_on and not sm.knows(proposal.request_key[0]):
            # A client new to us: the state machine checks its stamp against the cluster's clock, so give
            # it ours first if the last one is more than CLOCK_REFRESH_MS old (kvstore.statemachine)
            now_ms = time.time_ns() // 1_000_000
            if now_ms - max(sm.log_time, self._clock_proposed_ms) > CLOCK_REFRESH_MS:
                self._clock_proposed_ms = now_ms
                self.replica.propose(commands.encode_clock(now_ms))
        if not self.replica.propose(proposal.command):
            proposal.conn.reply(self.waiters.not_leader(proposal.wire_id, refused=True))
            return
        self.waiters.add_write(proposal, self._now())

    def _start_read(self, read: Read) -> None:
        waiters = self.waiters
        read_id = waiters.new_read_id()
        if not self.replica.read(read_id):
            read.conn.reply(waiters.not_leader(read.request.id, refused=True))
            return
        waiters.add_read(read_id, read.conn, read.request, self._now())

    def _after_events(self, ticks: int) -> None:
        """What follows every batch of events: take the core's actions and carry them out (or stage them)."""
        if ticks:
            self.waiters.expire(trio.current_time())
            if not self._fenced:
                try:
                    self.commit.note_tick()  # decide records that waited a tick for a batch: written now
                except StorageError as exc:
                    self._stop_voting(exc)
        # Early Accepts may announce what was decided as of the newest batch carried out (durable).
        self.replica.note_durable(self.commit.durable_decided_slot)
        self._stage(self.replica.take_actions())
        replica = self.replica
        # Follow a change of members (kvstore.members); the core counts its member refreshes, so most
        # batches skip the comparison of configurations (the classic engine has no such count).
        version = getattr(replica, "members_version", None)
        if version is None or version != self._members_version or replica is not self._members_replica:
            self.members.sync()
            self._members_version, self._members_replica = version, replica
        leads = replica.is_leader
        if self._led and not leads:
            # We stopped leading (a higher ballot, or no answer from a majority: check_quorum). Writes
            # in our slots may or may not be decided by the next leader; their clients retry there at
            # once with the same request id (the outcome is remembered) instead of waiting here for
            # the request timeout, which a cut-off node would reach.
            self.counters["writes_failed_on_step_down"] += self.waiters.fail_writes_not_leader()
            log.info("node %d: stopped leading at ballot %s", self.node_id, _ballot_text(replica.ballot))
        self._led = leads
        if leads and ticks and not self._fenced and not self.learner.sm.expiry_on:
            self.members.switch_features_on(trio.current_time())
        leader = replica.leader_id
        if leader is not None and (self._leader_logged is None or self._leader_logged[0] != leader
                                   or self._leader_logged[1] != replica.ballot):
            self._log_leader_change(leader)
        learner = self.learner
        now = trio.current_time()
        # A node that knows no leader for a while may be cut off from the others, who go on deciding
        # changes it never hears of: its watches end rather than stay silent (etcd's require-leader).
        if leader is not None or not self.watches.count:
            self._leaderless_since = None
        elif self._leaderless_since is None:
            self._leaderless_since = now
        elif now - self._leaderless_since > (limit := max(
                WATCH_LEADERLESS_SECONDS, 10 * self.options.election_timeout_ticks * self.options.tick_seconds)):
            self._leaderless_since = None
            self.watches.end_all(f"node {self.node_id} has known no leader for {limit:g} s: it "
                                 "may be cut off from the other members, which may be applying changes it does not "
                                 "see; watch on another node")
        learner.update(now, replica.leader_id, leads, self._fenced)
        if learner.queue and not learner.lazy:
            learner.catch_up()
        self._send_replies()
        # Snapshot after snapshot_every commands, but not more often than once per eighth of the number
        # of keys: a snapshot costs time in proportion to the state, so this keeps its cost per
        # command constant however large the store grows (and while it grows by inserts alone,
        # the interval grows by an eighth at most, so the log above the snapshot stays bounded too).
        # The core keeps every decided value above the snapshot in memory, so the interval is also
        # what a node holds beyond its state: an eighth of a million keys' writes is about 40 MB.
        # A quiet node snapshots sooner, once, to give back the memory the log above the snapshot holds.
        if not self.snapshots.busy and not self._fenced:
            if learner.snapshot_due() or self._log_outgrew_snapshot():
                self.snapshots.start()
            elif learner.idle_snapshot_due(now):
                self.counters["snapshots_when_idle"] += 1
                self.snapshots.start()

    def _log_outgrew_snapshot(self) -> bool:
        """A snapshot by bytes as well as by commands: the log has grown since the last snapshot's
        compaction by ``SNAPSHOT_LOG_BYTES_MIN`` and ``SNAPSHOT_LOG_FACTOR`` times that snapshot's size
        (so a snapshot's cost, in proportion to the state, stays a fraction of the writes it follows).
        QA: with 64 KiB values the 100,000 commands between snapshots were 6.4 GB of log and of memory.
        Grown by, not grown to: a node whose applies lag its log (a lazy learner, one catching up) keeps
        the slots above its applied one at a compaction, and with 1 MiB values those alone were past
        the bound, so every slot it applied began a snapshot of all its state again (0.5-1.6 s each,
        back to back: bench/big_values.py)."""
        storage = self.storage
        grown = storage.log_bytes - storage.log_bytes_kept
        return (grown >= max(SNAPSHOT_LOG_BYTES_MIN, SNAPSHOT_LOG_FACTOR * storage.snapshot_bytes)
                and self.learner.applied_since_snapshot > 0)

    def _log_leader_change(self, leader: int) -> None:
        """One line when the leader this node knows, or its ballot, changes (QA, gray failures: a hundred
        elections left no trace in any node's log; then a leader that stepped down and won again left
        none). Elections in a row without a leader known log nothing until one wins."""
        previous = self._leader_logged
        self._leader_logged = (leader, self.replica.ballot)
        ballot = _ballot_text(self.replica.ballot)
        if leader == self.node_id:
            log.info("node %d: leading at ballot %s%s", self.node_id, ballot,
                     "" if previous is None else f" (the leader was node {previous[0]} at {_ballot_text(previous[1])})")
        else:
            log.info("node %d: node %d leads at ballot %s", self.node_id, leader, ballot)

    def _post_event(self, event: object) -> None:
        self._driver_idle = False  # the driver has something to do (it may not have woken up yet)
        self._events_send.send_nowait(event)

    def _post(self, events: list[object], *, from_peer: bool = False, nbytes: int = 0) -> None:
        """A reader hands over what it read: to the driver, or, when the node is quiet, to the core at once.

        Quiet means the driver is waiting with nothing queued, its last batch was tiny and nothing is
        staged: one request at a time. Then running the events here saves a wake-up of the driver task
        (tens of microseconds on every hop of a write). Under load the driver batches everything that
        arrived meanwhile into one slot, so readers queue. Only synchronous events come here (messages,
        proposals, reads), and the core is still fed by one task at a time: trio runs one task at a
        time, nothing here waits, and the driver, parked in ``receive`` with nothing queued, holds
        nothing about the core across that wait (see the module docstring).

        A client's post of more than two requests goes to the driver (a client that pipelines is load).
        A peer's post (``from_peer``) of any size may run here: one request at a time, the slower
        follower's answers to a tick's Accepts (and, on that follower, the tick's Accepts) come in
        one frame, and handing it to the driver cost a wake-up per tick and made the next request
        look like load.

        ``nbytes``: the bytes of the frames the events came in; a post of at least ``SIZED_POST_BYTES``
        carries it to the driver, which takes ``BATCH_BYTES_MAX`` of them into a batch at most.
        """
        if not events:
            return
        if (self._driver_idle and self._quiet and (from_peer or len(events) <= 2) and not self.commit.pending_batches
                and not self._fenced):
            self.counters["inline_events"] += len(events)
            self._feed_time = None
            for event in events:
                self._feed(event)
            self._after_events(0)
            return
        # One channel item for the lot: a send and a receive per request cost about a microsecond.
        if nbytes >= SIZED_POST_BYTES:
            self._post_event(_SizedPost(events, nbytes))
        else:
            self._post_event(events[0] if len(events) == 1 else events)

    # -----------------------------------------------------------------------------------------------
    # the contract: persist, then send, then apply

    def _stage(self, actions: Actions) -> None:
        """Carry out one batch of actions: write its records, then (once they are durable, here or in
        the committer: ``GroupCommit.stage``) send, apply and answer (``_carry_out``).

        The driver does not wait for the disk: it goes on feeding the core while the committer fsyncs,
        so one fsync covers the records of every batch staged meanwhile (group commit across batches).
        """
        if not actions:
            return
        if actions.send_early:
            # Options.early_accepts: phase-2a Accepts promise nothing on our behalf, so they leave
            # before our own records are even written: followers write to their disks while we
            # write to ours, and a round trip costs one fsync instead of two. The core capped their
            # decided_slot at the mark reported durable (Replica.note_durable, see _after_events).
            self.peer_links.send_now(actions.send_early)
        if actions.send and (actions.persist or self.commit.pending_batches):
            self._send_acks_early(actions)
        try:
            durable_now = self.commit.stage(actions)
        except StorageError as exc:
            # Not written, or written and maybe not on disk: nothing else of this batch may leave the node.
            self._stop_voting(exc)
            return
        if durable_now:
            self._carry_out(actions)

    def _send_acks_early(self, actions: Actions) -> None:
        """Send the batch's heartbeat acks now rather than after the fsync it (or a batch before it) waits
        for, if every promise of ours is durable: an ack says only that we still promise the leader's
        ballot. QA (a gray failure): with a follower's disk slow (fsyncs of 0.5 s and more) and the
        other follower down, its acks left behind its fsyncs, the leader found no majority answering
        within an election timeout and stepped down, and elections followed one another for as long as
        the disk stayed slow: no write in 25 s, where the slow disk could have taken some."""
        send = actions.send
        if not any(type(item[1]) is pm.HeartbeatAck for item in send) or not self.commit.promises_durable(actions):
            return
        self.peer_links.send_now([item for item in send if type(item[1]) is pm.HeartbeatAck])
        actions.send = [item for item in send if type(item[1]) is not pm.HeartbeatAck]
        self.counters["heartbeat_acks_early"] += 1

    def _carry_out(self, actions: Actions) -> None:
        """Steps 2-4 of the contract for one batch whose records are durable (inline, or the committer)."""
        # 2. send (early Accepts left already: they are in send_early). A Decide only tells followers what to
        # apply, so it waits until our clients have their answers: each send is a system call, and
        # one request at a time waits for every one made before its reply.
        sends = actions.send
        decides = [item for item in sends if type(item[1]) is pm.Decide]
        if decides:
            sends = [item for item in sends if type(item[1]) is not pm.Decide]
        self.peer_links.send_now(sends)
        self._finish(actions)
        if decides:
            self._send_replies()
            self.peer_links.send_now(decides)

    def _finish(self, actions: Actions) -> None:
        """Steps 3-4 of the contract: apply, answer reads, fail what was dropped, offer snapshots."""
        learner = self.learner
        # 3. apply decided commands (in order, after any backlog), answer the waiting writers
        if actions.apply:
            learner.hand_out(actions.apply, trio.current_time())
        # 4. reads whose index is applied and whose leadership round is confirmed (the core counts a
        # slot as applied once handed out; a read whose slot is still in the apply queue waits for it)
        if actions.reads:
            self.waiters.answer_confirmed(actions.reads, learner.applied_slot, learner.sm)
        if actions.rejected_reads:
            self.waiters.reject(actions.rejected_reads)
        if actions.dropped_proposals:
            self.waiters.fail_dropped_proposals(actions.dropped_proposals)
        if actions.snapshot_to:
            self.snapshots.send_soon(actions.snapshot_to)

    # -----------------------------------------------------------------------------------------------
    # the fence: a disk that failed silences the node

    def _refuse_while_fenced(self, batch: list[object]) -> None:
        """A fenced node (its disk is read-only or failed): the core is frozen (its memory may be ahead
        of the disk, so it must not speak), writes and linearizable reads are refused, ticks and peer
        messages are dropped; serializable reads and status still work (see ClientLinks._route)."""
        for item in batch:
            for event in item if type(item) is list else (item,):
                match event:
                    case Proposal():
                        event.conn.reply(self._disk_reply(event.wire_id))
                    case Read():
                        event.conn.reply(self._disk_reply(event.request.id, read=True))

    def _disk_reply(self, wire_id: int, *, write_sent: bool = False, read: bool = False) -> wire.ErrorReply:
        """The answer to a request this node cannot serve because of its disk: ``write_sent``, a write
        that was proposed before the disk failed (its outcome is unknown), else a request turned away
        on arrival (``refused``: a write so refused was not written by this attempt); ``read``, a
        linearizable read (the node still serves serializable ones)."""
        outcome = "; this write's outcome is unknown (another node may still decide it)" if write_sent else ""
        if self.disk_state == DISK_READ_ONLY:
            serves = ("it serves only serializable reads (kv get --consistency s)" if read else "it refuses writes")
            return wire.ErrorReply(id=wire_id, code=wire.STORAGE_FULL, leader=None, refused=not write_sent,
                                   message=f"this node's disk is full; {serves} until restarted "
                                           f"with free space{outcome}")
        serves = "; it serves only serializable reads (kv get --consistency s)" if read else ""
        return wire.ErrorReply(id=wire_id, code=wire.DISK_FAILED, leader=None, refused=not write_sent,
                               message=f"this node's disk failed and it stopped voting{outcome}{serves}: "
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
        self.learner.lazy = False  # apply what was decided before: serializable reads wait for it
        if full:
            log.error("node %d: disk full: refusing writes until restarted with free space: %s", self.node_id, exc)
        else:
            log.critical("node %d: DISK FAILED: %s. From now on no Paxos message leaves this node and no write "
                         "is answered; status and serializable reads still work", self.node_id, exc)
        self.counters["disk_failures"] += 1
        self.waiters.fail_for_disk(self._disk_reply)
        # Its state machine applies nothing decided from now on: its watches end (kvstore.watches)
        self.watches.end_all(f"node {self.node_id}'s disk {'is full' if full else 'failed'}: it reports no more "
                             "changes; watch on another node")
        # Frames already queued were produced before the failure, after their own fsyncs, so they
        # could go; but nothing new may, and (unless the disk is only full) closing the links makes the
        # silence plain to peers.
        self.peer_links.stop(close_links=not full)
        self._send_replies()
        if self.options.exit_on_disk_failure:
            log.critical("node %d: exiting with status %d (--exit-on-disk-failure)", self.node_id, EXIT_DISK_FAILED)
            logging.shutdown()
            os._exit(EXIT_DISK_FAILED)

    # -----------------------------------------------------------------------------------------------
    # what the node tells clients about itself

    def _leader_hint(self) -> str | None:
        """The leader's HOST:PORT for a ``not_leader`` answer, if this node knows another leader. None on a
        node that is no longer a member: nobody tells it of leaders any more, so the one it knew may be
        long gone, and a client sent there would come back here (and never try the other members)."""
        leader = self.replica.leader_id
        if (leader is not None and leader != self.node_id and leader in self.peers
                and self.replica.config.role(self.node_id) is not None):
            return format_endpoint(*self.peers[leader])
        return None

    def _metrics_address(self) -> str | None:
        """Where /metrics is served (--metrics-addr; HOST:0 picks the port), None without."""
        if self.metrics_port is None or not self.options.metrics_addr:
            return None
        return format_endpoint(httpserve.parse_listen_address(self.options.metrics_addr)[0], self.metrics_port)

    def status(self) -> dict[str, Any]:
        core = self.replica.status()
        host, port = self.peers[self.node_id]
        learner = self.learner
        # A fenced node's core is frozen with whatever it believed: it leads nothing and knows no leader.
        # Nor does a removed one: nobody tells it of leaders any more (see _leader_hint).
        removed = self.replica.config.role(self.node_id) is None
        leader = None if self._fenced or removed else self.replica.leader_id
        ballot = core.get("ballot")
        address = format_endpoint(host, self.listen_port or port)
        return {
            "id": self.node_id,
            "address": address,
            "leader": leader,
            # where that leader serves (a client's probe of a silent connection asks this: AsyncClient)
            "leader_address": (address if leader == self.node_id else
                               self._leader_hint() if leader is not None else None),
            "is_leader": self.replica.is_leader and not self._fenced,
            "ballot": list(ballot) if ballot is not None else None,
            "decided_slot": self.replica.decided_slot,
            "applied_slot": learner.applied_slot,
            "learner": "lazy" if learner.lazy else "eager",
            "apply_backlog": learner.queued_commands,
            "snapshot_slot": self.replica.snapshot_slot,
            "log_bytes": self.storage.log_bytes,
            "revision": learner.sm.revision,
            "keys": len(learner.sm),
            "state_hash": learner.sm.state_hash(),
            "storage_full": self.storage_full,
            "disk": self.disk_state,  # ok, read-only or failed
            # recent fsyncs of the log, averaged (the group commit's weighted mean): a slow disk shows here
            # before anything fails (gray-failure QA: kv status said disk ok and nothing else)
            "fsync_ms": round(self.commit.fsync_seconds_ewma * 1000, 2),
            "disk_error": self.disk_error,  # why not ok: the file, the error, what to do
            "snapshotting": self.snapshots.busy,
            "cluster_id": self.options.cluster_id,
            "metrics_address": self._metrics_address(),
            "engine": self.options.engine,  # core or classic (ServerOptions.engine)
            "incarnation": self.storage.incarnation,  # this data directory's (kvstore.identity)
            # the newest configuration (paxos.membership) and this node's role in it
            "config": core.get("config"),
            "role": core.get("role_in_config", "voter"),
            "change_in_progress": self.replica.change_in_progress,
            # every member's incarnation once the cluster is founded; None while this node founds it
            "members": ({str(k): v for k, v in self.storage.members.items()}
                        if self.storage.members is not None else None),
            "client_connections": self.clients.open_connections,
            "client_connections_max": self.client_connections_max,
            "watches": len(self.watches),  # kv watch (kvstore.watches)
            # the oldest revision a watch may start from here (kv watch --rev): every change from it is kept
            "watch_history_from": self.history.complete_from,
            # client expiry (kvstore.statemachine, "Exactly-once"): on once every member has it; the stamp a
            # client id unknown to the cluster must exceed for its writes to be applied
            "client_expiry": learner.sm.expiry_on,
            "client_expiry_horizon": learner.sm.horizon,
            "counters": dict(self.counters),
            "core_counters": core["counters"],  # the Paxos core's: duplicates, stale messages, elections
        }


def _ballot_text(ballot: object) -> str:
    """A ballot for the log: ``(number, node id)``."""
    return f"({getattr(ballot, 'number', '?')}, {getattr(ballot, 'node_id', '?')})"


async def serve_until_signal(node: Node) -> None:
    """Run ``node`` until SIGINT or SIGTERM, then shut down cleanly. SIGHUP reads the certificate files
    and the access rules again (``kvstore.tls.reload``)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)

            async def wait_for_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        tls.reload(node)
                        continue
                    log.info("node %d: %s received, shutting down", node.node_id, signal.Signals(signum).name)
                    # A leader hands over first, so that the others do not wait an election timeout
                    # (a second signal meanwhile stops at once)
                    with trio.CancelScope() as handing_over:
                        async def second_signal() -> None:
                            async for again in signals:
                                if again != signal.SIGHUP:
                                    handing_over.cancel()
                                    return

                        async with trio.open_nursery() as waiting:
                            waiting.start_soon(second_signal)
                            new_leader = await node.members.hand_over_before_stop()
                            waiting.cancel_scope.cancel()
                        if new_leader is not None:
                            log.info("node %d: handed leadership to node %d before stopping", node.node_id,
                                     new_leader)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(wait_for_signal)


def _endpoint(text: str) -> tuple[str, int]:
    from .endpoints import parse_endpoint

    return parse_endpoint(text)


def run_node(node_id: int, peers: dict[int, tuple[str, int]], data_dir: str, options: ServerOptions,
             join: list[str] | None = None, *, adopt_cluster_id: bool = False) -> None:
    """Blocking entry point of ``kv serve``: run one node until SIGINT/SIGTERM. With ``join`` (members'
    HOST:PORTs) a node that is not in ``peers`` takes its address from the cluster's configuration;
    with ``adopt_cluster_id`` (no ``--cluster-id`` given) also the cluster's id: the one its directory
    recorded, or for a new directory the one the members say (``members.fetch_cluster_id``)."""
    descriptors.raise_soft_limit()  # a server's share of open files (client connections, its own files)
    if join and node_id not in peers:
        import dataclasses
        import functools
        import json

        try:
            meta = json.loads((Path(data_dir) / "meta.json").read_text())
        except (OSError, ValueError):
            meta = None
        if adopt_cluster_id:
            if isinstance(meta, dict) and isinstance(meta.get("cluster_id"), str) and meta.get("node_id") == node_id:
                found = meta["cluster_id"]
            else:
                found = trio.run(functools.partial(fetch_cluster_id, join, tls.transport_for(options, node_id)))
            if found != options.cluster_id:
                log.info("node %d: joining cluster %r (the id its members gave; kv serve --cluster-id names one)",
                         node_id, found)
                options = dataclasses.replace(options, cluster_id=found)
        recorded = meta.get("config") if isinstance(meta, dict) else None
        if isinstance(meta, dict) and (meta.get("node_id"), meta.get("cluster_id")) != (node_id, options.cluster_id):
            # Another node's directory (or another cluster's): its recorded configuration is not ours
            from .storage import foreign_data_dir  # (StorageError: this module's; a local import would shadow it)
            raise StorageError(foreign_data_dir(data_dir, meta.get("node_id"), meta.get("cluster_id"), node_id,
                                                options.cluster_id))
        config = (Config.from_dict(recorded) if isinstance(recorded, dict)
                  else trio.run(functools.partial(fetch_join_config, node_id, None, join, options.cluster_id,
                                                  tls.transport_for(options, node_id))))
        peers = {**{m: _endpoint(a) for m, a in config.addresses.items()}, **peers}
        if node_id not in peers:
            raise JoinError(f"the cluster's configuration has no address for node {node_id}; add it with "
                            f"kv member add {node_id} HOST:PORT")
    node = Node(node_id, peers, data_dir, options, join=join)
    runtime.tune_gc()  # after the restore, so that the state it loaded is never scanned
    try:
        trio.run(serve_until_signal, node)
    except BaseExceptionGroup as group:
        # The nurseries wrap a refusal to start (identity.IdentityError, a StorageError, a taken port): the
        # caller (kv serve) prints such an error as one line, so hand it over unwrapped.
        expected = group.subgroup((identity.IdentityError, StorageError, JoinError, ListenError))
        if expected is not None and expected.exceptions:
            leaf = expected.exceptions[0]
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
        raise
