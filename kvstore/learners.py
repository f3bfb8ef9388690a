"""The apply queue and the lazy-learner policy: when this node applies what the core decided.

Theory of operation
-------------------
The core hands out decided slots in order (``Actions.apply``; the core then counts them as its
``applied_slot``, though nothing is applied yet). They join the **apply queue**, ``Learner.queue`` of
``(slot, commands, count)`` items (the commands packed, ``paxos.actions.pack_value``, when queued while
lazy: one bytes object per slot), and the ``Learner`` applies them to the state machine it owns (``sm``), in
order, and answers the writes waiting for them (``kvstore.waiters``). ``Learner.applied_slot`` is what
the state machine has really applied: the state that reads see. An *eager* learner applies at once,
``CATCH_UP_COMMANDS`` at a time so that a long backlog leaves room for ticks, heartbeats and Accepts
between steps (the node's driver calls ``catch_up`` when it has nothing else to do).

**Lazy learners.** In Paxos terms every node is an acceptor, but not every node must be an eager
learner. While writes keep coming, a follower that is neither the leader nor the *standby*
(``standby_of``: the lowest voter id but the leader's, which every node works out alike) is *lazy*: it
leaves the queue unapplied. After each of its own snapshots the leader sends the file to those
followers; a lazy one that decided past it *adopts* it (``adopt``: the snapshot stands in for the queued
slots it covers; ``kvstore.snapshots`` restores and writes it). Restoring a key costs ~1.8 us, applying
a put ~4.5 us, so this holds only while the state is at most twice the snapshot interval, and its last
snapshot at most ``LAZY_SNAPSHOT_BYTES_MAX`` (``small_enough_for_learners``, a rule the leader and the
learners share): with large values a state of a few hundred keys is hundreds of MiB, sent whole to each
lazy learner after every snapshot, on the links that carry the heartbeats. A lazy learner turns eager
(``should_be_lazy``), and catches up, when it serves a serializable read (for
``LOCAL_READ_EAGER_SECONDS``), when no decided slot reached it for ``LAZY_IDLE_SECONDS`` (a quiet
cluster has no lazy learner), when it leads or knows no leader, when its node is fenced, or when the
queue passes two snapshot intervals (the leader's snapshots stopped coming). A node with more than one
step of queue postpones its own election (``should_postpone_election``), so that the standby, whose
state is current, wins when the leader fails.

Rules: the ``Learner`` owns the state machine, the queue and the policy's clocks. It never touches the
``Replica``, the storage or the network; the caller passes what it needs of the core (the leader it
knows, whether it leads, the time). It applies slots in order and each exactly once (a slot leaves the
queue before its commands are applied); the state machine is replaced only by ``install`` (a peer's
snapshot: every queued slot is at or below it) or ``adopt`` (only while lazy and behind the snapshot).
"""
from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterable, Sequence

from paxos.actions import pack_value, unpack_value
from paxos.messages import Value

from .metrics import SLOT_COMMANDS_BOUNDS, Buckets
from .statemachine import StateMachine
from .waiters import Waiters, reply_result, result_op
from .watches import History, Watches

__all__ = ["Learner", "standby_of", "CATCH_UP_COMMANDS", "CATCH_UP_BYTES", "LAZY_SNAPSHOT_BYTES_MAX",
           "LOCAL_READ_EAGER_SECONDS", "LAZY_IDLE_SECONDS", "REPLY_SEND_EVERY", "IDLE_SNAPSHOT_SECONDS",
           "IDLE_SNAPSHOT_COMMANDS"]

# Commands applied at most per step while catching up an apply backlog (a lazy learner that turned
# eager, a new leader that was one): about 20 ms each, so ticks, heartbeats and Accepts go on between.
CATCH_UP_COMMANDS = 4096
# ... and about this many bytes of commands: with 1 MiB values 4,096 commands were 4 GiB, one step of
# 0.6 s in which the node read no heartbeat (leader changes under steady large writes, bench/big_values.py)
CATCH_UP_BYTES = 4 << 20
# No lazy learners while the last snapshot is larger than this (see small_enough_for_learners)
LAZY_SNAPSHOT_BYTES_MAX = 64 << 20
# A lazy learner turns eager for this long after it served a serializable read (reads see its state)
LOCAL_READ_EAGER_SECONDS = 10.0
# ... and as soon as no decided slot has reached it for this long: a quiet cluster has no lazy learners.
LAZY_IDLE_SECONDS = 0.25
# Answers sent while applying a batch, every this many (see Learner.apply_queued)
REPLY_SEND_EVERY = 64
# A snapshot when quiet (see Learner.idle_snapshot_due): no decided slot for this long ...
IDLE_SNAPSHOT_SECONDS = 5.0
# ... and at least this many commands applied since the last one (and an eighth of the interval)
IDLE_SNAPSHOT_COMMANDS = 10_000


def standby_of(members: Iterable[int], leader: int) -> int | None:
    """The follower that applies every command at once while ``leader`` leads: the lowest other id.

    Every node computes the same answer from the membership and the leader it knows, without a message.
    """
    others = [m for m in members if m != leader]
    return min(others) if others else None


class Learner:
    """What this node applied and what waits to be applied; eager or lazy (see the module docstring).

    ``members`` are the voters of the cluster's configuration (``Members.sync`` keeps them current);
    ``snapshot_every_commands``, ``lazy_learners`` and the ``idle_snapshot_*`` pair come from
    ``ServerOptions``; ``send_replies`` sends the answers collected so far (the node's); ``clock`` gives
    the time for the latency counters (``trio.current_time`` in the node).
    """

    def __init__(self, node_id: int, members: Iterable[int], *, snapshot_every_commands: int, lazy_learners: bool,
                 sm: StateMachine, applied_slot: int, waiters: Waiters, send_replies: Callable[[], None],
                 counters: dict[str, int], clock: Callable[[], float],
                 idle_snapshot_seconds: float = IDLE_SNAPSHOT_SECONDS,
                 idle_snapshot_commands: int = IDLE_SNAPSHOT_COMMANDS,
                 snapshot_bytes: Callable[[], int] = lambda: 0, watches: Watches | None = None,
                 history: History | None = None) -> None:
        self.node_id = node_id
        self.snapshot_bytes = snapshot_bytes  # the size of this node's newest snapshot (its storage's)
        self.idle_snapshot_seconds = idle_snapshot_seconds
        self.idle_snapshot_commands = idle_snapshot_commands
        self.members = tuple(members)
        self.snapshot_every_commands = snapshot_every_commands
        self.lazy_learners = lazy_learners
        self.sm = sm
        self.applied_slot = applied_slot  # the slot the state machine has applied through
        self.waiters = waiters
        self.watches = watches if watches is not None else Watches(counters)  # kv watch (kvstore.watches)
        # the changes kept for watches from an earlier revision (kv watch --rev)
        self.history = history if history is not None else History(0, revision=sm.revision)
        self.send_replies = send_replies
        self.counters = counters
        self.clock = clock
        # (slot, commands, how many) handed out, not applied; the commands packed (pack_value) if queued
        # while lazy
        self.queue: collections.deque[tuple[int, Value | bytes, int]] = collections.deque()
        self.queued_commands = 0
        self.lazy = False
        self.applied_since_snapshot = 0  # commands applied since our last snapshot (see snapshot_due)
        self.last_handout = 0.0  # when the core last handed out a decided slot (trio time)
        self.last_local_read = -math.inf  # when this node last served a serializable read
        self.slot_commands = Buckets(SLOT_COMMANDS_BOUNDS)  # commands per slot handed out (kv_batch_commands)

    # -----------------------------------------------------------------------------------------------
    # applying

    def hand_out(self, decided: Sequence[tuple[int, Value]], now: float) -> None:
        """The core handed out these ``(slot, commands)`` (``Actions.apply``): queue them, and apply a
        step of the queue at once unless lazy."""
        self.last_handout = now
        observe = self.slot_commands.observe
        count = 0
        for _, commands in decided:
            count += len(commands)
            observe(len(commands))
        if self.lazy:
            # A lazy learner may hold two snapshot intervals of slots: each as one packed bytes object
            # (``pack_value``), not a tuple of small ones. Resources QA: after load a lazy learner's RSS
            # stayed at 113 MiB against 43 MiB after a restart on the same data, the small objects of
            # its queue interleaved in the allocator's pools with what lived on.
            self.queue.extend((slot, pack_value(commands), len(commands)) for slot, commands in decided)
        else:
            self.queue.extend((slot, commands, len(commands)) for slot, commands in decided)
        self.queued_commands += count
        if not self.lazy:
            self.apply_queued(CATCH_UP_COMMANDS)

    def apply_queued(self, limit: float, limit_bytes: float = CATCH_UP_BYTES) -> None:
        """Apply queued slots, whole slots of about ``limit`` commands and ``limit_bytes`` bytes of them
        at most (one slot at least), answering the writers that wait for them and then the reads that
        waited for these applies."""
        queue = self.queue
        sm = self.sm
        sm_apply = sm.apply
        # While this node has watches or keeps a history, the state machine records what each write
        # changes (kvstore.watches).
        history = self.history
        changes = sm.watch_out = [] if self.watches.count or history.changes_max else None
        revision_before = sm.revision
        waiters = self.waiters
        waiting = waiters.writes
        own = waiters.own_commands
        requests = waiters.requests
        answered = replies = applied = applied_bytes = 0
        latency_s = 0.0  # for the counters: the time since each answered write arrived
        # (a deadline is arrival + timeout, so this minus a deadline is the time since arrival)
        started = self.clock() + waiters.timeout_seconds
        while queue and applied < limit and applied_bytes < limit_bytes:
            slot, queued, count = queue.popleft()
            batch = unpack_value(queued)  # (packed if queued while lazy; a tuple comes back as it is)
            self.applied_slot = slot
            self.sm.slot = slot  # a membership change among these commands is recorded with its slot
            applied += count
            for command in batch:
                applied_bytes += len(command)
                decoded = own.pop(command, None) if own else None
                key, result = sm_apply(command, decoded)
                if key is not None and key in waiting:
                    applied_op = decoded.op if decoded is not None else result_op(result)
                    for entry in waiting.pop(key):
                        conn, wire_id, deadline, op = entry
                        if op != applied_op and applied_op is not None:
                            # Another kind of command under this write's identity: a client id two
                            # clients share. This one waits for its own command's apply (an error).
                            waiting[key].append(entry)
                            continue
                        latency_s += started - deadline
                        replies += 1
                        requests[op, reply_result(conn, wire_id, result)] += 1
                    answered += 1
                    if answered % REPLY_SEND_EVERY == 0:
                        # Let the first answers of a big batch go while we apply the rest: the
                        # client (on the other core) starts on them, and its next requests come
                        # back in smaller groups, which keeps more of the pipeline busy at once.
                        self.send_replies()
        self.queued_commands -= applied
        self.applied_since_snapshot += applied
        if changes is not None:
            sm.watch_out = None
            history.add(revision_before + 1, sm.revision, changes, applied_bytes)
            if changes and self.watches.count:
                self.watches.deliver(changes)
        else:
            history.add(revision_before + 1, sm.revision, [], 0)  # (none kept: complete from the next one)
        if replies:
            self.counters["writes_answered"] += replies
            self.counters["write_latency_us"] += int(latency_s * 1e6)
        if waiters.deferred_reads or waiters.local_reads:
            waiters.answer_caught_up(self.applied_slot, self.sm)

    def catch_up(self) -> None:
        """One step of applying a backlog (``CATCH_UP_COMMANDS``, ``CATCH_UP_BYTES``), then send the answers."""
        self.apply_queued(CATCH_UP_COMMANDS)
        self.counters["catch_up_steps"] += 1
        self.send_replies()

    @property
    def behind(self) -> bool:
        """There are queued slots, and this node applies them now (it is eager)."""
        return bool(self.queue) and not self.lazy

    def should_postpone_election(self) -> bool:
        """More than one step of queue: if the leader is gone, the standby (or another node whose state
        is current) should win and answer clients at once, so this node does not campaign yet."""
        return self.queued_commands > CATCH_UP_COMMANDS

    # -----------------------------------------------------------------------------------------------
    # the lazy-learner policy

    def snapshot_interval(self) -> int:
        """Commands between our snapshots: ``snapshot_every_commands``, or an eighth of the keys if more
        (a snapshot costs time in proportion to the state; see ``Node._after_events``)."""
        return max(self.snapshot_every_commands, len(self.sm) // 8)

    def snapshot_due(self) -> bool:
        return self.applied_since_snapshot >= self.snapshot_interval()

    def idle_snapshot_due(self, now: float) -> bool:
        """A snapshot now that the node is quiet, before the interval is reached: nothing decided for
        ``idle_snapshot_seconds`` (0: never), nothing queued, and at least ``idle_snapshot_commands``
        and an eighth of the interval applied since the last one (Redis's save points work alike).

        The core keeps every decided value above the snapshot in memory, and a restart replays them:
        after a burst of writes a quiet node would hold them until writes come again. A snapshot when
        quiet gives that memory back and shortens the next restart, and costs CPU only when there is
        CPU to spare; the floor keeps a trickle of writes from costing a snapshot of every key each
        time the node pauses (with a million keys, at most one per 125,000 / 8 commands).

        Staggered: the member with the k-th lowest id waits k more such periods (5, 10, 15 s ... by
        default), so that a majority never writes its snapshot at once when a load stops (QA: on a busy
        2-core host four voters snapshotting 400,000 keys within 0.9 s of each other all stalled 0.2-0.4 s,
        against a 0.3 s election timeout, and three elections followed)."""
        # (called after every batch: under load the first test already fails)
        quiet = now - self.last_handout
        if quiet < self.idle_snapshot_seconds or self.idle_snapshot_seconds <= 0 or self.queue:
            return False
        if self.applied_since_snapshot < max(self.idle_snapshot_commands, self.snapshot_interval() // 8):
            return False
        members = self.members
        rank = sorted(members).index(self.node_id) if self.node_id in members else len(members)
        return quiet >= self.idle_snapshot_seconds * (1 + rank)

    def small_enough_for_learners(self) -> bool:
        """Restoring a key costs ~1.8 us, applying a put ~4.5 us: a state more than twice the snapshot
        interval is cheaper to keep applying than to adopt (the leader and the learners use this rule).
        A snapshot larger than ``LAZY_SNAPSHOT_BYTES_MAX`` too: the leader sends each to every lazy
        learner at once, queued on the link ahead of the heartbeats (1 MiB values, 200 keys: 200 MiB to
        each follower after every snapshot, and check-quorum step-downs: bench/big_values.py)."""
        return (len(self.sm) <= 2 * self.snapshot_every_commands
                and self.snapshot_bytes() <= LAZY_SNAPSHOT_BYTES_MAX)

    def should_be_lazy(self, now: float, leader_id: int | None, is_leader: bool, fenced: bool) -> bool:
        """Whether this node may leave decided commands unapplied for now (see the module docstring)."""
        if (not self.lazy_learners or fenced or len(self.members) < 3 or leader_id is None or is_leader
                or self.node_id == standby_of(self.members, leader_id) or self.watches.count):
            return False  # (a node with watches reports changes as they are decided: kvstore.watches)
        if now - self.last_local_read < LOCAL_READ_EAGER_SECONDS or now - self.last_handout > LAZY_IDLE_SECONDS:
            return False
        # If the leader's snapshots stop coming, the backlog is applied after two intervals' worth.
        return self.small_enough_for_learners() and self.queued_commands <= 2 * self.snapshot_interval()

    def update(self, now: float, leader_id: int | None, is_leader: bool, fenced: bool) -> None:
        """Turn lazy or eager as ``should_be_lazy`` says. A node turning lazy is a follower, which answers
        no writes: those still waiting here would wait for applies that may now be skipped, so they
        (and the reads deferred for applies) get ``not_leader`` (``Waiters.fail_for_follower``)."""
        lazy = self.should_be_lazy(now, leader_id, is_leader, fenced)
        if lazy == self.lazy:
            return
        self.lazy = lazy
        if not lazy:
            self.counters["lazy_ends"] += 1
            return
        self.counters["lazy_starts"] += 1
        self.waiters.fail_for_follower()

    def note_local_read(self, now: float) -> None:
        """This node serves a serializable read: it stays eager for ``LOCAL_READ_EAGER_SECONDS``."""
        self.last_local_read = now

    # -----------------------------------------------------------------------------------------------
    # snapshots standing in for applies

    def install(self, slot: int, sm: StateMachine) -> None:
        """A peer's snapshot through ``slot``, restored in ``sm``, replaces our state (the core jumped to
        it: every slot handed out so far is at or below it)."""
        if self.watches.count:
            self.watches.end_all(f"node {self.node_id} was too far behind and installed a snapshot at revision "
                                 f"{sm.revision}: the changes from revision {self.sm.revision + 1} to "
                                 f"{sm.revision} are not reported; read the keys again and watch again")
        self.sm = sm
        self.history.reset(sm.revision)  # (the changes the snapshot covers were never applied here)
        self.applied_slot = slot
        self.queue.clear()
        self.queued_commands = 0
        self.waiters.answer_caught_up(slot, sm)
        self.applied_since_snapshot = 0

    def adopt(self, slot: int, sm: StateMachine) -> bool:
        """The leader's snapshot through ``slot``, restored in ``sm``, is the state after ``slot`` (every
        replica applies the same commands): while lazy and behind it, take it and drop the queued slots
        it covers. Returns whether it was taken (a node that turned eager meanwhile, or applied past it,
        goes on with its own state). A lazy learner has no writers waiting."""
        if not (self.lazy and slot > self.applied_slot) or self.watches.count:
            return False  # (a node with watches reports every change: it applies them, kvstore.watches)
        queue = self.queue
        skipped = 0
        while queue and queue[0][0] <= slot:
            skipped += queue.popleft()[2]
        self.queued_commands -= skipped
        self.counters["commands_not_applied"] += skipped  # the snapshot stood in for them
        self.sm = sm
        self.history.reset(sm.revision)  # (the changes the snapshot covers were never applied here)
        self.applied_slot = slot
        self.applied_since_snapshot = 0
        self.counters["snapshots_adopted"] += 1
        self.waiters.answer_caught_up(slot, sm)
        return True
