"""A deterministic simulator for the Multi-Paxos core (``paxos.replica``).

Theory of operation
-------------------
One ``random.Random(seed)`` drives everything, so a seed is a complete recipe for a run and a failure
replays exactly (``pytest tests/sim --seed N``). The loop is plain Python, single-threaded, without
trio (trio's scheduler is not deterministic).

The world is N replicas, N in-memory storages (a list of durable records plus a snapshot) and a bag of
in-flight messages. Each step the RNG picks one event:

* deliver a random in-flight message (picking at random reorders the network),
* drop one, duplicate one,
* tick one node (one logical time unit),
* crash a node: throw the ``Replica`` and its state machine away; a restart rebuilds both from ONLY
  what its storage holds (``DurableState.replay`` of the stored records, and the stored snapshot),
* partition the nodes in two groups, or heal,
* submit a client command (unique bytes) to a node, start a read at a node,
* compact a node (take a snapshot of its state machine up to some applied slot),
* with ``disk_faults=True``: arm a running node's disk to fail its next write ("disk_fail", below),
* with ``early_accepts=True``: complete the fsync in flight at a node ("fsync_done"), or make a node's
  disk slow for a while ("fsync_stall"; both below),
* with ``membership=True``: change the configuration, start an added node, lose a node's disk
  ("member", "join", "wipe"; below, after the liveness phase).

The shell contract is simulated literally: an ``Actions`` batch's records are stored before its
messages enter the network, then applied commands go to the node's state machine (a list of the
batches applied, slot by slot), then reads are answered, and each node in ``snapshot_to`` gets the
sender's stored snapshot as a message (which can be reordered or lost like any other). After every
input the node's core is asked for its batch (``take_actions()``), and without ``early_accepts`` the
batch is carried out at once, its records stored as if its fsync took no time.

``early_accepts=True`` models the kvstore server's committer (``kvstore/groupcommit.py``): the core
runs with ``Options(early_accepts=True)`` (the other options still vary by seed), and fsyncs take
time while the node goes on. Each node has a FIFO of *staged* batches whose fsync is in flight:

* a batch's ``send_early`` messages (a leader's Accepts, ``decided_slot`` capped by the core at the
  mark the shell reported durable) enter the network at once; anything else in ``send_early`` is a
  safety violation (only phase 2a promises nothing);
* a batch with records is staged; so is one without records while others are staged (batches are
  carried out in order); one without records and nothing ahead of it is carried out at once;
* meanwhile the node keeps receiving messages, ticking and taking new batches, which queue behind;
* an "fsync_done" event (weight ``FSYNC_DONE_WEIGHT``) picks a node with staged batches and a disk
  that is not slow, and completes its fsync in flight, which covers the oldest batches (all of them
  half the time, else the oldest few: group commit): their records are stored, then each is carried
  out in order: ``note_durable(batch.decided_slot)``, then ``send``, apply, reads, ``snapshot_to``;
  then any batch without records now at the head;
* an "fsync_stall" event (weight ``FSYNC_STALL_WEIGHT``) makes a node's disk slow (half the time the
  leader's): no fsync of its completes for ``FSYNC_STALL_STEPS`` steps while it keeps working. Only
  then can a leader decide a slot (a follower's Accepted counted with its own accept still staged)
  and send an Accept while the decision is not durable: the case the cap exists for;
* a crash drops every staged batch (none of their records stored; their early Accepts have left);
* a compaction, a snapshot install (also mid-batch) and a paused node (a long snapshot write) first
  wait for the node's staged batches to be carried out, as the server's ``wait_carried_out``: the
  fsync in flight completes at once (or fails, with ``disk_faults``);
* the liveness rounds complete fsyncs at random moments among the deliveries, every one by the end
  of the round, and slow disks no longer hold them back.
``postpone_elections=True`` models the kvstore server's lazy learners: during the fault phase a node
now and then postpones its elections for a while (``Replica.postpone_election`` before each tick, as
a server catching up a backlog does); postponing serves liveness only, so every safety check holds,
and once the faults stop the postponements run out and the liveness phase must succeed.
``send_before_persist=True`` breaks the contract on purpose: messages leave at once and the records are only
stored at the node's next tick, so a crash in between loses promises and acceptances that others
already saw.

``disk_faults=True`` models a disk that reports an error (EIO, ENOSPC on fsync: issue 15). After a
failed fsync the page cache cannot be trusted, so the node must stop voting at once, as the kvstore
server's ``_stop_voting`` does. The "disk_fail" event (weight ``DISK_FAIL_WEIGHT``, about four times
per run) arms one running node's disk; its next write fails:

* a batch with a non-empty ``persist`` list: a random prefix of its records (possibly none, possibly
  all) reaches storage, and none of its messages, applies or read answers happen;
* in ``early_accepts`` mode, the fsync in flight (at the node's next "fsync_done", or when a
  compaction or snapshot install waits for it): as in the server's committer, every staged batch's
  records were written before that fsync, so a random prefix of all of them reaches storage, none of
  the staged batches is carried out (their early Accepts have left already), and the batches queued
  behind the oldest are dropped with it;
* a snapshot write (compaction, or a peer's snapshot installed): storage keeps the old snapshot and
  log, the new snapshot with the old log, or both new (each file is renamed into place after its
  fsync, as ``kvstore.storage`` does, and recovery accepts all three).

The node is then fenced: it is fed no message, tick, command or read and nothing more leaves it (its
core may be ahead of its disk), until a restart event rebuilds it from what its storage holds, as
after a crash. ``stats["disk_failures"]`` counts the failures, ``stats["fenced_restarts"]`` the
restarts of fenced nodes; the liveness phases heal every disk and restart every fenced node first.
``swallow_disk_errors=True`` is the broken variant, the server's bug that issue 15 reports: a failed
batch's records are lost and its messages dropped, but the node goes on from its memory (its core is
now ahead of its disk), and its later batches persist and send normally; its applies still happen
(the state machine lives in memory), so that only the durability checks below can notice. (With
``early_accepts``, the swallowed batch is the oldest staged one; the others stay staged.)

After every step the simulator checks safety:

* a slot never has two different decided values, anywhere, at any time (a global map of every value
  seen decided: in a ``DecideRecord`` or in ``apply``) -- Paxos Made Simple, section 2.1, "only a
  single value is chosen";
* every node applies slots in order without gaps, and each applied batch is the globally decided one,
  so the applied sequences are prefixes of each other (section 3, the state machine replicas agree);
* every decided command was submitted (section 2.1, "only a value that has been proposed may be
  chosen");
* a served read's index covers every slot applied anywhere before the read began (linearizable reads);
* a message that promises or accepts on its sender's behalf leaves only with the record that makes it
  true stored there (``_send``, the one way onto the network): Promise and HeartbeatAck at ballot
  ``b`` need a stored promise of at least ``b`` (the highest ballot of the PromiseRecords and
  AcceptRecords, as ``DurableState.replay`` computes it), Accepted of ``(slot, b)`` an AcceptRecord
  of that slot at ``b``, or a snapshot through the slot (a snapshot installed in the middle of a
  batch replaces what was accepted there by the decided value);
* a decided value is durable on a majority when it is first seen decided (``_check_durable_majority``):
  in a ``DecideRecord`` of a batch being carried out or failing its disk, in ``apply``, or, in
  ``early_accepts`` mode, the moment a node's core learns it from an Accept's ``decided_slot`` (the
  ``DecideRecord``s of the batch taken right after that Accept, checked before any fsync).

The last two checks catch a node that lets others count, or counts itself, an acceptance or promise it
does not hold durably, at the moment it happens, rather than by the luck of a later crash that forgets
it. The message check holds because the core puts the record in the same batch's ``persist`` as the
message, or relied on one stored before (a duplicate Accept or Prepare, a restart rebuilt from storage).
It cannot see the leader's own acceptance, which is counted without a message; the durable-majority
check covers that.

The durable-majority check, exactly: when a DecideRecord for ``(slot, value)`` first appears in a
node's batch as it is carried out (before its own records are stored; a batch that fails its disk
included) or in the batch a node takes right after an Accept (``early_accepts``), or ``(slot, value)``
is first applied anywhere, at least a majority of the nodes' storages hold an ``AcceptRecord(slot, b,
value)`` for some ballot ``b``, or a ``DecideRecord(slot, value)``, or a snapshot through ``slot`` with
``value`` at ``slot``. Why it holds for correct Paxos in every mode: a slot is decided only when a
majority accepted it at one ballot (section 2.3). A follower's acceptance counts only once its Accepted
arrives, which left after the batch that stored its AcceptRecord. The leader counts its own acceptance
without a message: it opens a slot in one batch and can count a follower's Accepted only in a later
one, so the DecideRecord comes in a later batch than its AcceptRecord. Without ``early_accepts`` the
opening batch is stored before the next input. With it, the leader may decide in memory while the
opening batch is still staged, but its batches are carried out in order, so the batch holding the
DecideRecord is carried out after the opening batch's records are stored; and the ``decided_slot`` it
announces early is capped at the mark reported by ``note_durable`` after a batch was carried out, when
every decision up to it rested on stored records. Every other way to learn of a decision
(``decided_slot`` on Heartbeat and Decide, which leave after their batch's fsync; the decided entries
of a Promise or a CatchupReply; a snapshot) passes on one made earlier, where it was first seen.
Stored records are never lost (a crash loses only what was never stored; compaction and snapshot
installs keep every accepted slot above the snapshot, and the snapshot holds the decided values up to
it).

Three broken variants show the checks have teeth. ``send_before_persist`` trips them on every seed
(1-300 tried, 3 and 5 nodes); ``swallow_disk_errors`` whenever a node answers from a swallowed promise
or acceptance (the message check) or a decision counts a swallowed acceptance that completes a
majority (the durable-majority check). ``uncapped_early_accepts=True`` (implies ``early_accepts``) is
a shell that reports the core's decided slot durable (``note_durable``) before each ``take_actions()``,
before any fsync, so that early Accepts announce decisions the leader's own staged accept still has to
make durable: the durable-majority check catches a follower that learns such a decision when fewer
than a majority hold it (in seeds 1-400, 30 runs on 3 nodes and 7 on 5). Without that check the bug
must wait for a crash of the leader in that window and a new leader that chooses differently: of
those 800 runs, only 3 nodes seed 274 ends with two values decided for one slot.

Then the liveness phase: all nodes up (crashed and fenced ones restarted), network healed, disks
healthy and fast, no faults. A leader must emerge, and commands submitted to it must be decided and
applied everywhere, and every staged batch carried out, within a bound of ticks.

``membership=True`` changes the configuration under the same faults (``paxos.membership``; alpha is 2,
3 or 5 by seed, below the window, so the gate of rule 2 is what bounds the open slots). The bootstrap
configuration records each node's incarnation (the identity of its data directory, which lives in
the shell). Three more events, and deliveries 2.5 times as often (a change needs slots decided in a
row to take effect):

* "member" (weight ``MEMBER_WEIGHT``): the leader proposes a change with ``Replica.propose_change``
  (nothing while ``change_in_progress``), then clients write one to three commands, each in a slot of
  its own, so that slots are open behind the change. The kinds (``_plan_change``): add a learner (a
  new node id, with a fresh incarnation), promote a learner, remove a voter (the leader itself
  included) or a learner, replace a voter by a learner in ONE change (two voter sets that differ in two
  nodes: the alpha rule needs no joint quorum), and for a wiped node: remove its old id, or add its
  machine back under a new id. The weights pull the voter count back towards the cluster's size (it
  walks between 1 and ``nodes + 2``), and no change leaves fewer healthy voters than a majority.
* "join": a node that was added starts, as ``kv serve --join`` does, from a member's fresh snapshot
  (the member compacts at its applied slot; the snapshot carries the schedule) and then follows the
  log. When it is a wiped machine coming back under a new id, its old id is retired for good.
* "wipe" (weight ``WIPE_WEIGHT``): a node loses its disk (half the time one whose Accepted of an
  undecided slot is on its way to the leader). It comes back on a restart event, empty, under its old
  id, with a new incarnation. Only when every configuration that may govern a slot (the decided ones
  above the decided log that another healthy node's disk holds, a node every healthy voter takes
  messages from: a slot decided only on the wiped disk must be decided again, by a quorum of its
  configuration; and the changes proposed that may still be decided) keeps a healthy majority without it.

The shells' identity check is modelled in the network (``_link_allowed``): a message passes between
two nodes only if neither records another incarnation for the other in any configuration that
governs a slot after its applied slot (the newest one alone is not enough: a slot still governed by
an older configuration must not count a wiped voter either). So a wiped node under its old id is cut
off. Messages to a node's old incarnation in flight when it is wiped are dropped too. Snapshots
(compactions, installs, snapshot messages) carry ``Replica.schedule_through(slot)``, and a restart
rebuilds the core with it (``DurableState.configs``).

Checks added in this mode, after every step: every running node's configuration schedule equals the
one the decided log defines (``_check_schedules``: ``schedule_through(applied_slot)`` against an
oracle ``ConfigSchedule`` fed the decided slots in order; a broken replica class may bring its own
``schedule_class``, which then is the oracle); a value first seen decided is held durably by a
majority of the voters of ``config(slot)`` (a voter whose disk was lost counts with the holders, as
it can never vote again, unless the broken shell lets it), and ``config(slot)`` must be fixed by then
(every slot up to ``slot - alpha`` decided: rule 2); a leader that is no voter of its newest
configuration hands over or steps down within two election timeouts of its own ticks. A batch that
holds both a slot's AcceptRecord and its DecideRecord (a sole voter decides in the batch that opens
the slot) is seen decided once stored. The liveness phase holds to account the members of the newest
decided configuration that run under their recorded incarnation (a removed node, a wiped one under
its old id and a learner never started are left out), lets a client retry a command a disruption
dropped, and then changes the configuration once more (a promotion or removal, the leader's own
included): the change must take effect on every member and a command after it be decided everywhere.

Two broken variants for membership: ``replica_class`` with changes that take effect at once
(tests/sim/test_simulation.py's ``ImmediateChangeReplica``), and ``skip_incarnation_check=True``
(implies ``membership``): the shells do not compare incarnations, so a wiped node votes under its old
id with none of its promises and acceptances.

Every failure raises with the seed, a replay command and the last lines of the event trace, each line
prefixed with the step and simulated tick.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from collections import deque
from dataclasses import dataclass, field

from paxos.actions import AcceptRecord, Actions, DecideRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot
from paxos.membership import ConfigSchedule, encode_change, is_change
from paxos.messages import Accept, Accepted, HeartbeatAck, Promise
from paxos.replica import ChangeRefused, Config, Options, Replica

TRACE_LINES = 60

FAULT_EVENTS = (  # (event, weight)
    ("deliver", 40),
    ("tick", 22),
    ("submit", 12),
    ("read", 3),
    ("drop", 4),
    ("duplicate", 3),
    ("crash", 1),
    ("restart", 3),
    ("partition", 1),
    ("heal", 2),
    ("compact", 2),
)

# compact_often=True: the same mix with compaction ten times as frequent, and in the liveness phase
# every node keeps compacting too (see Simulation.run_liveness_compacting).
COMPACT_OFTEN_WEIGHT = 20

# disk_faults=True adds this event: arm one node's disk to fail its next write. About four per
# 400-step run (the other weights add up to 93), as often as crashes.
DISK_FAIL_WEIGHT = 1

# early_accepts=True adds these events (see the module docstring). "fsync_done": the fsync in flight
# at one node (among those with staged batches and a disk that is not slow) completes. At 20 against
# the 93 above, a node usually takes a few more inputs while a batch is staged.
FSYNC_DONE_WEIGHT = 20
# "fsync_stall": one node's disk becomes slow, none of its fsyncs completing for a number of steps
# drawn from FSYNC_STALL_STEPS; about seven per 400-step run.
FSYNC_STALL_WEIGHT = 2
FSYNC_STALL_STEPS = (10, 60)

# membership=True adds these events (see the module docstring). "member": the leader proposes a
# configuration change, about 19 times in a 400-step run (most find no leader or a change in
# progress); "join": a node that was added as a learner starts from a member's fresh snapshot;
# "wipe": a node loses its disk, about 2.5 times a run, of which about one is allowed.
MEMBER_WEIGHT = 8
JOIN_WEIGHT = 3
WIPE_WEIGHT = 1
# ...and delivers messages this much more often (40 otherwise): a change governs alpha slots after its
# own, so a run must decide a few slots in a row (no-ops included) for changes to take effect, and
# the leader's retransmissions otherwise fill the network faster than 5 nodes drain it. The other
# faults keep their weights, so they come about a third less often per step.
MEMBERSHIP_DELIVER_WEIGHT = 100
# alpha (Config.alpha) by seed: seed % 3 picks it. All are below Options.window (8), so the membership
# gate, not the window, is what bounds the open slots.
MEMBERSHIP_ALPHAS = (2, 3, 5)


class SafetyViolation(AssertionError):
    """Two decided values for one slot, diverging applied logs, an invented command, a stale read."""


class LivenessFailure(AssertionError):
    """With every node up and no faults, the cluster failed to decide within the bound."""


@dataclass
class Storage:
    """A node's durable storage: what survives a crash.

    Change it only through ``append`` and ``rewrite``: they keep the indexes that the durability
    checks read (``holds``, ``promised``, ``accepted_at``).
    """

    records: list = field(default_factory=list)
    snapshot_slot: int = 0
    snapshot: tuple = ()  # the state machine at snapshot_slot: the batches of slots 1..snapshot_slot
    snapshot_configs: tuple = ()  # the snapshot's configuration schedule (Replica.schedule_through)
    held: dict = field(default_factory=dict)  # slot -> the values an AcceptRecord or DecideRecord holds
    accepted_at: dict = field(default_factory=dict)  # slot -> the ballots of its AcceptRecords
    promised: Ballot = Ballot.ZERO  # the durable promise, as DurableState.replay computes it

    def append(self, records) -> None:
        """Records reached the disk (an fsync covered them)."""
        self.records.extend(records)
        for record in records:
            if isinstance(record, (PromiseRecord, AcceptRecord)) and record.ballot > self.promised:
                self.promised = record.ballot
            if isinstance(record, AcceptRecord):
                self.accepted_at.setdefault(record.slot, set()).add(record.ballot)
            if isinstance(record, (AcceptRecord, DecideRecord)):
                self.held.setdefault(record.slot, set()).add(record.value)

    def rewrite(self, records, snapshot_slot: int | None = None, snapshot: tuple | None = None,
                configs: tuple = ()) -> None:
        """Replace the log (compaction, snapshot install), and the snapshot (with the configuration
        schedule it carries) when one is given."""
        if snapshot_slot is not None:
            self.snapshot_slot, self.snapshot, self.snapshot_configs = snapshot_slot, snapshot, configs
        self.records, self.held, self.accepted_at, self.promised = [], {}, {}, Ballot.ZERO
        self.append(records)

    def holds(self, slot: int, value: tuple) -> bool:
        """Does this storage hold ``value`` at ``slot`` durably: a snapshot through ``slot`` with that
        value there, or an AcceptRecord (at any ballot) or a DecideRecord of ``slot`` with ``value``?"""
        if slot <= self.snapshot_slot:
            return self.snapshot[slot - 1] == value
        return value in self.held.get(slot, ())


@dataclass(frozen=True)
class SnapshotMessage:
    """The shell's snapshot transfer (``Actions.snapshot_to``), carried by the simulated network."""

    slot: int
    batches: tuple
    configs: tuple = ()  # the configuration schedule the snapshot carries


@dataclass
class StagedBatch:
    """One ``Actions`` batch taken from a node's core, with the core's applied slot at that moment
    (the state machine must hold exactly that many slots once the batch is carried out)."""

    actions: Actions
    applied_slot: int


@dataclass
class Node:
    node_id: int
    storage: Storage = field(default_factory=Storage)
    replica: Replica | None = None
    applied: list | None = None  # the state machine: batches of slots 1..applied_slot
    unsynced: list = field(default_factory=list)  # only in send_before_persist mode
    last_role: tuple | None = None  # for the trace: log role and ballot changes
    paused: int = 0  # compacting liveness phase: rounds left in a pause (a long snapshot, a busy host)
    inbox: list = field(default_factory=list)  # ticks and messages that arrived during the pause
    postponing: int = 0  # postpone_elections mode: ticks left during which it postpones its election
    disk_armed: bool = False  # disk_faults mode: the next write (a batch's persist, a snapshot) fails
    fenced: bool = False  # its disk failed: it takes no input and says nothing until restarted
    # early_accepts mode: batches whose fsync is in flight, oldest first; carried out in this order
    staged: deque = field(default_factory=deque)
    stalled_until: int = 0  # early_accepts mode: its fsync in flight cannot complete before this step
    # membership mode (see the module docstring)
    incarnation: str = ""  # its data directory's identity; a wiped disk comes back with a new one
    pending: bool = False  # added as a learner, not started yet ("join" starts it)
    retired: bool = False  # stopped for good: its wiped machine came back under a new id
    wiped: bool = False  # its disk was lost: it runs under its old id with a new incarnation
    rejoin_of: int | None = None  # the wiped node whose machine this new id is
    checked_schedule: tuple | None = None  # (replica, applied slot, snapshot slot) last checked
    incarnations_seen: tuple | None = None  # ((replica, applied slot), {id: incarnation}) cache
    nonvoter_leader_ticks: int = 0  # its ticks as a leader that is no voter of its newest configuration


class Simulation:
    """One seeded run. ``run()`` does the fault phase, then the liveness phase; raises on failure."""

    def __init__(self, seed: int, *, nodes: int = 3, steps: int = 300, replica_class=Replica,
                 send_before_persist: bool = False, options: Options | None = None,
                 liveness_commands: int = 10, early_accepts: bool = False,
                 compact_often: bool = False, postpone_elections: bool = False,
                 disk_faults: bool = False, swallow_disk_errors: bool = False,
                 uncapped_early_accepts: bool = False, membership: bool = False,
                 skip_incarnation_check: bool = False) -> None:
        if send_before_persist and (disk_faults or swallow_disk_errors):
            raise ValueError("send_before_persist has no disk to fail: it is not combined with disk faults")
        if send_before_persist and (membership or skip_incarnation_check):
            raise ValueError("send_before_persist is not combined with membership changes")
        if send_before_persist and (early_accepts or uncapped_early_accepts):
            raise ValueError("send_before_persist stores records on ticks, not by fsyncs: it is not "
                             "combined with early_accepts")
        self.seed = seed
        self.nodes_count = nodes
        self.steps = steps
        self.replica_class = replica_class
        self.send_before_persist = send_before_persist
        # Odd seeds run with lazy decides (the server's setting), even seeds announce every decision
        # at once; seeds 2 and 3 mod 4 send thrifty Accepts (the server's setting too), 0 and 1 mod 4
        # broadcast them. So every mix of the ways a follower hears of slots and decisions is covered
        # without a separate mode. Seeds 3 and 4 mod 5 hold resends back for an election timeout
        # (patient_resends, the server's setting): lost Accepts then come again only after an election
        # timeout, and the runs must stay live all the same.
        self.options = options or Options(heartbeat_ticks=1, election_timeout_ticks=4, window=8,
                                          batch_count_max=4, catchup_entries_max=8,
                                          lazy_decide=seed % 2 == 1, thrifty=seed % 4 >= 2,
                                          pre_vote=seed % 3 != 0, patient_resends=seed % 5 >= 3)
        self.liveness_commands = liveness_commands
        # early_accepts: the core puts a leader's Accepts in Actions.send_early, and batches wait on
        # pipelined fsyncs (see the module docstring). The broken variant implies the mode.
        self.uncapped_early_accepts = uncapped_early_accepts
        self.early_accepts = early_accepts or uncapped_early_accepts or self.options.early_accepts
        if self.early_accepts and not self.options.early_accepts:
            self.options = dataclasses.replace(self.options, early_accepts=True)
        self.compact_often = compact_often
        self.postpone_elections = postpone_elections
        self.swallow_disk_errors = swallow_disk_errors
        self.disk_faults = disk_faults or swallow_disk_errors  # the broken variant needs failing disks
        self.events = list(FAULT_EVENTS)
        if self.compact_often:
            self.events[[name for name, _ in self.events].index("compact")] = ("compact", COMPACT_OFTEN_WEIGHT)
        if self.disk_faults:
            self.events.append(("disk_fail", DISK_FAIL_WEIGHT))
        if self.early_accepts:
            self.events.extend([("fsync_done", FSYNC_DONE_WEIGHT), ("fsync_stall", FSYNC_STALL_WEIGHT)])
        # membership: configuration changes, joins and wiped disks (see the module docstring). The
        # broken variant skip_incarnation_check implies it.
        self.skip_incarnation_check = skip_incarnation_check
        self.membership = membership or skip_incarnation_check
        if self.membership:
            self.events[[name for name, _ in self.events].index("deliver")] = ("deliver", MEMBERSHIP_DELIVER_WEIGHT)
            self.events.extend([("member", MEMBER_WEIGHT), ("join", JOIN_WEIGHT), ("wipe", WIPE_WEIGHT)])
        self.dropped: list[bytes] = []  # dropped_proposals seen (the liveness phase resubmits them)
        self.faults_on = True
        self.rng = random.Random(seed)
        self.config = Config(node_ids=tuple(range(1, nodes + 1)))  # the bootstrap configuration
        self.nodes = {i: Node(i) for i in self.config.node_ids}
        if self.membership:
            for node in self.nodes.values():
                node.incarnation = self._new_incarnation()
            self.config = Config(node_ids=self.config.node_ids, alpha=MEMBERSHIP_ALPHAS[seed % 3],
                                 incarnations={i: n.incarnation for i, n in self.nodes.items()})
        # The configuration schedule as the decided log defines it (membership rule 1), fed in slot
        # order from ``decided``: the judge of every node's schedule and of the voters a decision
        # needs. A broken replica class may bring its own schedule rules (``schedule_class``): the
        # checks then hold it to its own definition of which voters govern a slot.
        self.schedule_class = getattr(replica_class, "schedule_class", ConfigSchedule)
        self.oracle = self.schedule_class.initial(self.config)
        self.oracle_through = 0  # the decided prefix fed to the oracle
        self.oracle_cache: dict[int, tuple] = {}  # slot -> oracle.through(slot), once slot is decided
        self.proposed: list = []  # membership: (base epoch, Config) of every change proposed
        self.next_id = nodes + 1  # membership: the next node id to add
        self.network: list = []  # (src, dst, message)
        self.group: dict[int, int] | None = None  # partition: node -> side; None when healed
        self.decided: dict[int, tuple] = {}  # slot -> the one value ever decided there
        self.submitted: set[bytes] = set()
        self.command_count = 0
        self.read_count = 0
        self.pending_reads: dict[int, int] = {}  # read_id -> highest slot applied anywhere at issue
        self.applied_max = 0
        self.step_no = 0
        self.now = 0  # simulated ticks (each node tick counts one)
        self.trace: deque[str] = deque(maxlen=TRACE_LINES)
        self.stats = {name: 0 for name, _ in FAULT_EVENTS}
        self.stats.update(reads_served=0, dropped_by_partition=0, snapshots_installed=0, crash_during_fsync=0,
                          pauses=0, snapshots_installed_mid_batch=0, postponed=0, disk_fail=0,
                          disk_failures=0, disk_failures_in_snapshots=0, disk_failed_leaders=0,
                          disk_failures_prefix_empty=0, disk_failures_prefix_partial=0,
                          disk_failures_prefix_whole=0, disk_failures_after_early_accepts=0,
                          disk_errors_swallowed=0, fenced_restarts=0,
                          # early_accepts mode (the fsync pipeline)
                          fsync_done=0, fsync_stall=0, fsyncs_grouped=0, staged_max=0, staged_behind=0,
                          early_accepts_sent=0, early_accepts_behind=0, learned_from_early_accepts=0,
                          waited_for_staged=0, staged_behind_failed_fsync=0,
                          # membership mode
                          member=0, join=0, wipe=0, changes_proposed=0, changes_refused=0,
                          change_add=0, change_promote=0, change_promote_rejoined=0, change_remove_voter=0,
                          change_remove_leader=0, change_remove_learner=0, change_replace=0,
                          change_remove_wiped=0, change_rejoin=0,
                          joined=0, rejoined=0, wipes=0, dropped_by_incarnation=0,
                          liveness_changes=0, snapshots_installed_with_changes=0)
        for node in self.nodes.values():
            self._start(node)

    # ---------------------------------------------------------------- driver

    def run(self) -> Simulation:
        self.run_faults()
        if self.compact_often:
            self.run_liveness_compacting()
        else:
            self.run_liveness()
        return self

    def run_faults(self) -> None:
        names = [name for name, _ in self.events]
        weights = [weight for _, weight in self.events]
        for step_no in range(1, self.steps + 1):
            self.step_no = step_no
            event = self.rng.choices(names, weights)[0]
            self.stats[event] += 1
            self._guard(getattr(self, "_event_" + event))
            if self.membership:
                self._check_schedules()
            if self.step_no % 50 == 0:
                self._check_prefixes()
        self._check_prefixes()

    def run_liveness(self) -> None:
        """Heal, restart everyone, stop faults; a leader must emerge and decide what it is given."""
        self._stop_faults()
        bound = 30 * self.options.election_timeout_ticks
        leader = None
        for _ in range(bound):
            self._guard(self._round)
            leader = self._stable_leader()
            if leader is not None:
                break
        if leader is None:
            self._fail(LivenessFailure, f"no stable leader within {bound} rounds after healing")
        commands = []
        for _ in range(self.liveness_commands):
            command = self._new_command()
            if not leader.replica.propose(command):
                self._fail(LivenessFailure, f"stable leader {leader.node_id} refused a proposal")
            self.submitted.add(command)
            commands.append(command)
        self._guard(lambda: self._drain(leader))
        self._await_everywhere(commands, bound)
        if self.membership:
            self._liveness_change(bound)

    def _await_everywhere(self, commands: list, bound: int) -> None:
        """Rounds until ``commands`` are decided and every member applied every decided slot.

        In membership mode a client retries, at the stable leader, a command that was dropped or not
        decided within ``4 * election_timeout`` rounds: a removed node that has not learned of its
        removal yet may campaign once and unseat the leader (its Prepare is answered as long as the
        receiver's schedule still holds a configuration naming it), which drops the queued commands."""
        retry_rounds = 4 * self.options.election_timeout_ticks
        proposed_at = {command: 0 for command in commands}
        for rounds in range(bound):
            decided_commands = {c for batch in self.decided.values() for c in batch}
            leader = self._stable_leader() if self.membership else None
            if leader is not None:
                for command in commands:
                    if command not in decided_commands and (
                            command in self.dropped or rounds - proposed_at[command] > retry_rounds):
                        if leader.replica.propose(command):
                            self._log(f"retry {command!r} at {leader.node_id}")
                            proposed_at[command] = rounds
                            while command in self.dropped:
                                self.dropped.remove(command)
                self._guard(functools.partial(self._drain, leader))
            top = max(self.decided, default=0)
            if set(commands) <= decided_commands and all(
                    n.replica.applied_slot >= top for n in self._members()) and not any(
                    n.staged for n in self._up()):
                self._check_prefixes()
                self.trace.append(f"liveness: decided everywhere after {rounds} rounds")
                return
            self._guard(self._round)
        missing = [c for c in commands if c not in {x for b in self.decided.values() for x in b}]
        self._fail(LivenessFailure, f"within {bound} rounds, not decided: {missing!r}; applied "
                   f"{ {n.node_id: n.replica.applied_slot for n in self._members()} }")

    def run_liveness_compacting(self) -> None:
        """Heal and stop faults, but keep compacting: every node, often, each at its own slots.

        Commands go one or two per round to whichever node leads stably; a command the core drops
        (leader stepped down before it got a slot), or that is not decided within
        ``4 * election_timeout`` rounds, is resubmitted, as a client retries. The cluster
        must decide every command and all nodes must apply everything decided; it fails if
        ``30 * election_timeout`` rounds pass without a new liveness command decided.
        """
        self._stop_faults()
        stall_bound = 30 * self.options.election_timeout_ticks
        pending = deque(self._new_command() for _ in range(self.liveness_commands))
        commands = set(pending)
        self.submitted |= commands
        self.dropped = []
        done_count, last_progress = 0, 0
        submitted_at: dict[bytes, int] = {}
        retry_rounds = 4 * self.options.election_timeout_ticks
        for rounds in range(1_000_000):  # bounded by the stall check below
            for node in self._up():
                if self.rng.random() < 0.3:
                    self._guard(lambda node=node: self._compact(node))
            for node in self._up():
                if not node.paused and self.rng.random() < 0.02:
                    node.paused = self.rng.randint(1, 3 * self.options.election_timeout_ticks)
                    self._guard(lambda node=node: self._wait_carried_out(node))  # a snapshot write waits for it
                    self._log(f"pause {node.node_id} for {node.paused} rounds")
                    self.stats["pauses"] += 1
            leader = self._stable_leader()
            if leader is not None and not leader.paused:
                for _ in range(self.rng.randint(1, 2)):
                    if pending and leader.replica.propose(pending[0]):
                        self._log(f"submit {pending[0]!r} to {leader.node_id}")
                        submitted_at[pending.popleft()] = rounds
                self._guard(functools.partial(self._drain, leader))
            self._guard(self._slow_round)
            # A client stops retrying once its command is decided (dropped proposals from the fault
            # phase included): retrying decided commands would keep the leader busy for ever, and
            # then some follower is always a tick behind.
            all_decided = {c for batch in self.decided.values() for c in batch}
            decided_commands = all_decided & commands
            if any(c in all_decided for c in pending):
                pending = deque(c for c in pending if c not in all_decided)
            # (A dropped configuration change is not retried: as a plain command it would skip the
            # leader's one-change-at-a-time rule.)
            pending.extend(c for c in self.dropped
                           if c not in all_decided and c not in pending and not is_change(c))
            self.dropped = []
            for command, at in list(submitted_at.items()):
                if command in all_decided:
                    del submitted_at[command]
                elif rounds - at > retry_rounds and command not in pending:
                    # In a slot that a later leader filled with a no-op: the client retries.
                    del submitted_at[command]
                    pending.append(command)
            if len(decided_commands) > done_count:
                done_count, last_progress = len(decided_commands), rounds
            top = max(self.decided, default=0)
            if done_count == len(commands) and all(
                    n.replica.applied_slot >= top for n in self._members()) and not any(
                    n.staged for n in self._up()):
                self._check_prefixes()
                self.trace.append(f"liveness: decided everywhere after {rounds} rounds")
                return
            if rounds - last_progress > stall_bound:
                break
        roles = {n.node_id: (n.replica.status()["role"], n.replica.leader_id, n.replica.decided_slot,
                             n.replica.snapshot_slot) for n in self._up()}
        self._fail(LivenessFailure, f"compacting liveness phase: {stall_bound} rounds without progress; "
                   f"{done_count}/{len(commands)} commands decided, {len(pending)} not yet submitted; "
                   f"nodes (role, leader, decided, snapshot): {roles}")

    def _stop_faults(self) -> None:
        """The liveness phases begin here: no more faults, the network healed, every disk healthy,
        and every crashed or fenced node restarted from its storage."""
        self.faults_on = False
        self.group = None
        for node in self.nodes.values():
            node.disk_armed = False
            if (node.replica is None or node.fenced) and not node.pending and not node.retired:
                self._guard(lambda node=node: self._restart(node))
        if self.membership:
            for node in list(self.nodes.values()):
                if node.pending:
                    self._guard(lambda node=node: self._join(node))  # a member's learner that never started

    def _slow_round(self) -> None:
        """Compacting liveness round: like ``_round`` without loss, but a message may wait a round or
        more (30%); half the messages reach their node in one batch per node (one ``take_actions()``
        for all, as the kvstore driver batches its queued events); and a paused node queues its ticks
        and messages and handles them as one batch when the pause ends, as the kvstore driver does
        after a long snapshot write."""
        for node in self._up():
            if node.paused:
                node.inbox.append(None)  # a tick
                node.paused -= 1
                if node.paused == 0:
                    self._log(f"resume {node.node_id}: {len(node.inbox)} queued ticks and messages")
                    inbox, node.inbox = node.inbox, []
                    self._deliver_batch(node, inbox)
            else:
                self._tick(node)
        for _ in range(100_000):
            if self.early_accepts:  # fsyncs complete as messages flow
                for node in self.nodes.values():
                    if node.staged and not node.paused and self.rng.random() < 0.7:
                        self._fsync_done(node, self._group_size(node))
            ready = [item for item in self.network if self.rng.random() >= 0.3]
            if not ready:
                staged = [node for node in self.nodes.values() if node.staged]
                if not staged:
                    return
                for node in staged:  # every fsync in flight finishes within the round
                    self._fsync_done(node)
                continue
            ready_ids = {id(item) for item in ready}
            self.network = [item for item in self.network if id(item) not in ready_ids]
            self.rng.shuffle(ready)
            batches: dict[int, list] = {}
            for item in ready:
                node = self.nodes[item[1]]
                if node.paused:
                    node.inbox.append(item)
                elif self.rng.random() < 0.5:
                    batches.setdefault(node.node_id, []).append(item)  # the driver's batch
                else:
                    self._deliver(item)
            for node_id, items in batches.items():
                self._deliver_batch(self.nodes[node_id], items)
        raise AssertionError("network and fsyncs did not settle within 100000 passes")

    def _round(self) -> None:
        """Liveness round: tick every node once, then deliver every message (random order, no loss);
        in early_accepts mode, fsyncs in flight complete at random moments among the deliveries, and
        every one has completed when the round ends."""
        for node in self._up():
            self._tick(node)
        for _ in range(100_000):
            staged = [node for node in self.nodes.values() if node.staged] if self.early_accepts else ()
            if not self.network and not staged:
                return
            if staged and (not self.network or self.rng.random() < 0.25):
                node = self.rng.choice(staged)
                self._fsync_done(node, self._group_size(node))
                continue
            self._deliver(self.network.pop(self.rng.randrange(len(self.network))))
        raise AssertionError("network and fsyncs did not drain within 100000 steps")

    def _stable_leader(self) -> Node | None:
        members = self._members()
        leaders = [n for n in members if n.replica.is_leader]
        if len(leaders) != 1:
            return None
        leader = leaders[0]
        # Stable: every member follows it and none holds a higher promise. A node still campaigning
        # (the classic engine has no pre-vote) will depose it and lose what it has in flight.
        ballot = leader.replica.ballot
        if all(n.replica.leader_id == leader.node_id and n.replica.ballot == ballot for n in members):
            return leader
        return None

    def _members(self) -> list[Node]:
        """The running nodes the liveness phases hold to account: every node, or in membership mode
        the members of the newest decided configuration that run under the incarnation it records
        (not a removed node, a wiped node under its old id, or a learner not started yet)."""
        if not self.membership:
            return self._up()
        self._advance_oracle()
        config = self.oracle.latest
        return [n for n in self._up()
                if n.node_id in config.members and config.incarnations.get(n.node_id) == n.incarnation]

    # ---------------------------------------------------------------- fault-phase events

    def _up(self) -> list[Node]:
        """Nodes that run: neither crashed nor fenced by a failed disk."""
        return [n for n in self.nodes.values() if n.replica is not None and not n.fenced]

    def _down(self) -> list[Node]:
        """Nodes a restart event may bring back (not a learner never started, not a retired one)."""
        return [n for n in self.nodes.values()
                if (n.replica is None or n.fenced) and not n.pending and not n.retired]

    def _event_deliver(self) -> None:
        if self.network:
            self._deliver(self._pop_random_message())

    def _event_drop(self) -> None:
        if self.network:
            src, dst, message = self._pop_random_message()
            self._log(f"drop {src}->{dst} {type(message).__name__}")

    def _event_duplicate(self) -> None:
        if self.network:
            item = self.rng.choice(self.network)
            self.network.append(item)
            self._log(f"duplicate {item[0]}->{item[1]} {type(item[2]).__name__}")

    def _event_tick(self) -> None:
        up = self._up()
        if up:
            self._tick(self.rng.choice(up))

    def _event_submit(self) -> None:
        up = self._up()
        if not up:
            return
        leaders = [n for n in up if n.replica.is_leader]
        node = self.rng.choice(leaders) if leaders and self.rng.random() < 0.8 else self.rng.choice(up)
        command = self._new_command()
        if node.replica.propose(command):
            self.submitted.add(command)
            self._log(f"submit {command!r} to {node.node_id}")
            self._drain(node)

    def _event_read(self) -> None:
        leaders = [n for n in self._up() if n.replica.is_leader]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        self.read_count += 1
        if node.replica.read(self.read_count):
            self.pending_reads[self.read_count] = self.applied_max
            self._log(f"read {self.read_count} at {node.node_id} (applied anywhere: {self.applied_max})")
            self._drain(node)

    def _event_crash(self) -> None:
        up = self._up()
        if not up:
            return
        node = self.rng.choice(up)
        if node.staged:
            # The fsync in flight never completes: no record of these batches was stored, and none of
            # their messages (but the early Accepts, which left already), applies or answers happen.
            self.stats["crash_during_fsync"] += 1
            early = sum(len(batch.actions.send_early) for batch in node.staged)
            self._log(f"CRASH {node.node_id} during an fsync: {len(node.staged)} staged batches lost "
                      f"({early} early Accepts had left)")
        else:
            self._log(f"CRASH {node.node_id} (lost {len(node.unsynced)} unsynced records)")
        node.replica = None
        node.applied = None
        node.unsynced = []
        node.staged.clear()

    def _event_restart(self) -> None:
        down = self._down()
        if down:
            self._restart(self.rng.choice(down))

    def _event_partition(self) -> None:
        ids = list(self.config.node_ids) if not self.membership else [
            i for i, n in self.nodes.items() if not n.pending and not n.retired]
        side = set(self.rng.sample(ids, self.rng.randrange(1, len(ids)))) if len(ids) > 1 else set()
        self.group = {i: int(i in side) for i in ids}
        self._log(f"partition {sorted(side)} | {sorted(set(ids) - side)}")

    def _event_heal(self) -> None:
        if self.group is not None:
            self.group = None
            self._log("heal")

    def _event_disk_fail(self) -> None:
        candidates = [n for n in self._up() if not n.disk_armed]
        if candidates:
            # Half the time a leader's disk: its batches carry the most records, and its failure is
            # the one that must not stall the cluster (issue 15).
            leaders = [n for n in candidates if n.replica.is_leader]
            node = self.rng.choice(leaders if leaders and self.rng.random() < 0.5 else candidates)
            node.disk_armed = True
            self._log(f"disk of {node.node_id} will fail its next write")

    def _event_fsync_done(self) -> None:
        staged = [n for n in self._up() if n.staged and n.stalled_until <= self.step_no]
        if staged:
            node = self.rng.choice(staged)
            self._fsync_done(node, self._group_size(node))

    def _event_fsync_stall(self) -> None:
        up = self._up()
        if up:
            leaders = [n for n in up if n.replica.is_leader]
            node = self.rng.choice(leaders if leaders and self.rng.random() < 0.5 else up)
            node.stalled_until = self.step_no + self.rng.randint(*FSYNC_STALL_STEPS)
            self._log(f"disk of {node.node_id} is slow: no fsync completes before step {node.stalled_until}")

    def _event_compact(self) -> None:
        candidates = [n for n in self._up() if n.replica.applied_slot > n.replica.snapshot_slot]
        if candidates:
            self._compact(self.rng.choice(candidates))

    def _compact(self, node: Node, newest: bool = False) -> None:
        """Snapshot ``node``'s state machine at a random applied slot (``newest``: at its applied
        slot), then compact core and log. The snapshot carries the configuration schedule."""
        replica = node.replica
        if replica is None or node.fenced or replica.applied_slot <= replica.snapshot_slot:
            return
        self._wait_carried_out(node)  # the log is rewritten below: every staged record must be in it
        if node.replica is None or node.fenced:
            return  # a staged batch failed its disk
        slot = replica.applied_slot if newest else self.rng.randint(replica.snapshot_slot + 1, replica.applied_slot)
        replica.compact(slot)
        self._log(f"compact {node.node_id} through slot {slot}")
        # Rewriting the log from durable_state() also makes any unsynced record durable.
        self._write_snapshot(node, slot, tuple(node.applied[:slot]), replica.schedule_through(slot))

    def _write_snapshot(self, node: Node, slot: int, snapshot: tuple, configs: tuple) -> None:
        """Store a snapshot and the log rewritten from the core's durable state (compaction, or a
        peer's snapshot installed), as kvstore.storage does: the snapshot file by rename, then the new
        log by rename, each after its fsync. An armed disk fails this write (disk_faults mode, not in
        the swallowing variant, which only mishandles batches): the node is fenced, and its storage
        holds whatever the renames that happened left, each a state recovery accepts: the old snapshot
        and log, the new snapshot with the old log (replay drops the slots it covers), or both new."""
        records = node.replica.durable_state().records()
        if node.disk_armed and self.faults_on and not self.swallow_disk_errors:
            outcome = self.rng.randrange(3)
            if outcome >= 1:
                node.storage.snapshot_slot, node.storage.snapshot, node.storage.snapshot_configs = (
                    slot, snapshot, configs)
            if outcome == 2:
                node.storage.rewrite(records)
            self._fence(node, f"writing its snapshot at {slot}: "
                        + ("nothing renamed", "new snapshot, old log", "new snapshot and log")[outcome])
            self.stats["disk_failures_in_snapshots"] += 1
            return
        node.storage.rewrite(records, slot, snapshot, configs)
        node.unsynced = []

    def _fence(self, node: Node, why: str) -> None:
        """The node's disk failed: from now on it is fed nothing and says nothing (its core may be
        ahead of its disk) until a restart rebuilds it from what its storage really holds."""
        node.disk_armed = False
        node.fenced = True
        node.staged.clear()
        self.stats["disk_failures"] += 1
        if node.replica.is_leader:
            self.stats["disk_failed_leaders"] += 1
        self._log(f"DISK FAILED on {node.node_id} ({why}): fenced until restarted")

    # ---------------------------------------------------------------- membership (membership=True)

    def _new_incarnation(self) -> str:
        return f"{self.rng.getrandbits(64):016x}"

    def _advance_oracle(self) -> None:
        """Feed the decided log's new contiguous slots to the oracle schedule, in slot order."""
        while self.oracle_through + 1 in self.decided:
            self.oracle_through += 1
            for command in self.decided[self.oracle_through]:
                if is_change(command):
                    self.oracle.apply(self.oracle_through, command)

    def _config_of(self, slot: int) -> Config | None:
        """The configuration that governs ``slot`` by the decided log; None while slots it depends on
        (those up to ``slot - alpha``) are not all decided."""
        self._advance_oracle()
        if slot - self.config.alpha > self.oracle_through:
            return None
        return self.oracle.for_slot(slot)

    def _check_schedules(self) -> None:
        """Membership rule 1, after every step: every running node's configuration schedule is the one
        its decided prefix defines (``Replica.schedule_through(applied_slot)`` against the oracle's):
        after restarts from storage, compactions, snapshot installs, joins and wipes alike."""
        self._advance_oracle()
        for node in self._up():
            replica = node.replica
            slot = replica.applied_slot
            if slot > self.oracle_through:
                continue  # it applied slots whose batch is still staged behind an fsync (early_accepts)
            key = (replica, slot, replica.snapshot_slot)
            if node.checked_schedule == key:
                continue  # checked already: the schedule moves only with the applied or snapshot slot
            node.checked_schedule = key
            have = replica.schedule_through(slot)
            want = self.oracle_cache.get(slot)
            if want is None:
                want = self.oracle_cache[slot] = self.oracle.through(slot)  # fixed once slot is decided
            if have != want:
                self._fail(SafetyViolation, f"node {node.node_id} at applied slot {slot} has the configuration "
                           f"schedule {_show_schedule(have)}, but the decided log defines {_show_schedule(want)}")

    def _link_allowed(self, src: int, dst: int) -> bool:
        """The shells' identity check: a message passes between ``src`` and ``dst`` only if neither
        records another incarnation for the other, in any configuration that governs a slot after its
        applied slot (a node that lost its disk must not vote under its old id, also for slots still
        governed by an older configuration). ``skip_incarnation_check`` is the broken variant."""
        if not self.membership or self.skip_incarnation_check:
            return True
        a, b = self.nodes[src], self.nodes[dst]
        for holder, other in ((a, b), (b, a)):
            if holder.replica is None:
                continue  # checked when the message left (or arrived)
            recorded = self._recorded_incarnations(holder).get(other.node_id)
            if recorded is not None and recorded != other.incarnation:
                self.stats["dropped_by_incarnation"] += 1
                return False
        return True

    def _recorded_incarnations(self, node: Node) -> dict:
        """Node id -> incarnation, from every configuration that governs a slot after ``node``'s
        applied slot (the schedule changes only when that slot moves: cached on it)."""
        replica = node.replica
        key = (replica, replica.applied_slot)
        if node.incarnations_seen is None or node.incarnations_seen[0] != key:
            table = {member: incarnation for _e, _s, config in replica.schedule_through(replica.applied_slot)
                     for member, incarnation in config.incarnations.items()}
            node.incarnations_seen = (key, table)
        return node.incarnations_seen[1]

    def _cannot_vote(self, node_id: int, config: Config) -> bool:
        """Can ``node_id`` never again vote in ``config`` (its recorded incarnation is gone)?"""
        node = self.nodes.get(node_id)
        return (not self.skip_incarnation_check and node is not None
                and (node.retired or config.incarnations.get(node_id) != node.incarnation))

    def _healthy(self, node_id: int) -> bool:
        """Will this member run under the incarnation the configurations record (once restarted)?"""
        node = self.nodes.get(node_id)
        return node is not None and not node.pending and not node.retired and not node.wiped

    def _live_enough(self, config: Config, losing: int | None = None) -> bool:
        """Do healthy voters (without ``losing``) make a majority of ``config``? The workload keeps this
        true of every configuration that may govern a slot, so that the liveness phase can succeed."""
        healthy = [v for v in config.node_ids if v != losing and self._healthy(v)]
        return len(healthy) >= config.quorum_size

    def _plan_change(self, leader: Node, kinds=None):
        """Pick a change of ``leader``'s newest configuration: ``(kind, new config, target)`` or None.

        The kinds: add a learner (a new node), promote a learner, remove a voter (``remove_leader``
        when it is the leader itself) or a learner, replace a voter by a learner in ONE change (two
        voters differ: the alpha rule needs no joint quorum), and for a wiped node: remove its old id
        (``remove_wiped``), or add its machine back as a learner under a new id (``rejoin``, then
        ``promote_rejoined``). The weights pull the voter count back towards the cluster's size, so a
        run walks up and down (1 to ``nodes + 2`` voters). Every choice keeps a healthy majority of
        voters in the new configuration (``_live_enough``)."""
        config = leader.replica.config
        voters, learners = config.node_ids, config.learners
        target_voters = self.nodes_count
        grow = 3 if len(voters) < target_voters else 1
        shrink = 3 if len(voters) > target_voters else 1
        options: dict[str, list] = {}

        def offer(kind, build, target, weight):
            options.setdefault(kind, [weight, []])[1].append((build, target))

        rejoined = {n.rejoin_of for n in self.nodes.values() if n.rejoin_of is not None}
        for member in config.members:
            if self.nodes[member].wiped and (member in learners or len(voters) > 1):
                offer("remove_wiped", lambda m=member: config.remove(m), member, 3)
        for node in self.nodes.values():
            if node.wiped and not node.retired and node.node_id not in rejoined:
                offer("rejoin", None, node.node_id, 3)  # its machine comes back under a new id
        if len(config.members) < self.nodes_count + 3:
            offer("add", None, None, grow)
        for learner in learners:
            if self._healthy(learner) and len(voters) < self.nodes_count + 2:
                if self.nodes[learner].rejoin_of is not None:
                    offer("promote_rejoined", lambda m=learner: config.promote(m), learner, 4)
                else:
                    offer("promote", lambda m=learner: config.promote(m), learner, 2 * grow)
            offer("remove_learner", lambda m=learner: config.remove(m), learner, 1)
        if len(voters) > 1:
            for voter in voters:
                kind = "remove_leader" if voter == leader.node_id else "remove_voter"
                offer(kind, lambda m=voter: config.remove(m), voter, shrink)
        for learner in learners:
            if self._healthy(learner):
                for voter in voters:
                    # One change, two voters: the learner in, the voter out (no joint quorum needed).
                    offer("replace", lambda m=learner, v=voter: dataclasses.replace(
                        config.promote(m).remove(v), epoch=config.epoch + 1), (learner, voter), 2)
        if kinds is not None:
            options = {k: v for k, v in options.items() if k in kinds}
        for kind in list(options):
            weight, choices = options[kind]
            if kind not in ("add", "rejoin"):
                choices = [(build, target) for build, target in choices if self._live_enough(build())]
            if choices:
                options[kind] = [weight, choices]
            else:
                del options[kind]
        if not options:
            return None
        names = sorted(options)
        kind = self.rng.choices(names, [options[k][0] for k in names])[0]
        build, target = self.rng.choice(options[kind][1])
        if kind in ("add", "rejoin"):
            new_id, incarnation = self.next_id, self._new_incarnation()
            return kind, config.add_learner(new_id, f"sim:{new_id}", incarnation), (new_id, incarnation, target)
        return kind, build(), target

    def _event_member(self) -> None:
        """The leader proposes a configuration change (as ``kv member ...`` would), and clients go on
        writing: one to three commands follow, each in a slot of its own, so that slots are open
        behind the change when it is decided (where a change that took effect too early would find
        slots opened under the old configuration)."""
        leaders = [n for n in self._up() if n.replica.is_leader]
        if not leaders:
            return
        node = self.rng.choice(leaders)
        if self._propose_change(node) is None:
            return
        for _ in range(self.rng.randint(1, 3)):
            command = self._new_command()
            if node.replica is None or node.fenced or not node.replica.propose(command):
                break
            self.submitted.add(command)
            self._log(f"submit {command!r} to {node.node_id}")
            self._drain(node)

    def _propose_change(self, node: Node, kinds=None) -> Config | None:
        replica = node.replica
        if replica.change_in_progress:
            return None
        plan = self._plan_change(node, kinds)
        if plan is None:
            return None
        kind, new, target = plan
        base = replica.config.epoch
        try:
            replica.propose_change(new)
        except ChangeRefused as refused:
            self.stats["changes_refused"] += 1
            self._log(f"change refused at {node.node_id}: {refused}")
            return None
        self.submitted.add(encode_change(base, new))
        self.proposed.append((base, new))
        self.stats["changes_proposed"] += 1
        self.stats["change_" + kind] += 1
        if kind in ("add", "rejoin"):
            new_id, incarnation, wiped = target
            self.next_id += 1
            self.nodes[new_id] = Node(new_id, incarnation=incarnation, pending=True, rejoin_of=wiped)
            target = new_id if wiped is None else f"{new_id} (the machine of wiped node {wiped})"
        self._log(f"change {kind} {target} proposed at {node.node_id}: epoch {base} -> voters "
                  f"{list(new.node_ids)} learners {list(new.learners)}")
        self._drain(node)
        return new

    def _event_join(self) -> None:
        waiting = [n for n in self.nodes.values() if n.pending]
        if waiting:
            self._join(self.rng.choice(waiting))

    def _join(self, node: Node) -> None:
        """Start an added learner, as ``kv serve --join`` does: it fetches a member's configuration
        and a fresh snapshot (which the member takes now), then follows the log. Only once a running
        member has applied its addition. A rejoining machine's old id is retired for good."""
        holders = [m for m in self._up() if node.node_id in m.replica.config.members]
        if not holders:
            return
        leaders = [m for m in holders if m.replica.is_leader]
        member = self.rng.choice(leaders or holders)
        if member.replica.applied_slot > member.replica.snapshot_slot:
            self._compact(member, newest=True)
        if member.replica is None or member.fenced:
            return  # its disk failed writing the snapshot
        storage = member.storage
        node.storage = Storage()
        node.storage.rewrite([], storage.snapshot_slot, storage.snapshot, storage.snapshot_configs)
        node.pending = False
        self.stats["joined"] += 1
        if node.rejoin_of is not None:
            old = self.nodes[node.rejoin_of]
            old.retired = True
            old.replica = old.applied = None
            old.staged.clear()
            self.stats["rejoined"] += 1
        self._log(f"join {node.node_id} from {member.node_id}'s snapshot at {storage.snapshot_slot}"
                  + (f" (the machine of wiped node {node.rejoin_of}, retired)" if node.rejoin_of else ""))
        self._start(node)

    def _event_wipe(self) -> None:
        """A node loses its disk. It comes back (on a restart event) empty, under its old id, with a
        new incarnation, which every peer's configurations refuse (``_link_allowed``). Only when every
        configuration that may govern a slot keeps a healthy majority without it."""
        self._advance_oracle()
        configs = [c for base, c in self.proposed if base >= self.oracle.latest.epoch]
        configs += [n.replica.config for n in self._up()]

        def may_govern(losing: Node) -> list[Config]:
            # A slot decided only on ``losing``'s disk (and in memories) is decided again after the wipe
            # by a quorum of the configuration that governs it: that configuration still counts. (Seed
            # 269479121438992: a 2-voter configuration's leader, alone to know slots 16-18 decided,
            # lost its disk; the other voter had accepted them; no quorum of that configuration remained.)
            # And a disk that holds slots decided teaches them only to nodes that take its messages, those
            # whose configurations name it. (Seed 190911943069618: a learner added by the newest change
            # alone held slots 6-12 decided once the leader's disk was lost; the other voters knew the log
            # through 5, not that change, and dropped its messages: a quorum of slot 6's configuration was
            # needed, and gone.) So only a holder that every healthy voter of the newest configuration
            # knows counts: a member of the configuration of the slot after the voter's decided log.
            others = [other for other in self.nodes.values()
                      if other is not losing and self._healthy(other.node_id)]
            through = {other.node_id: self._durably_decided_through(other) for other in others}
            voters = [v for v in self.oracle.latest.node_ids if v in through]

            def known_to_voters(holder: int) -> bool:
                oracle, top = self.oracle, self.oracle_through
                return all(v == holder or holder in oracle.for_slot(min(through[v], top) + 1).members for v in voters)

            known = max((t for holder, t in through.items() if known_to_voters(holder)), default=0)
            return list(self.oracle.from_slot(min(known, self.oracle_through) + 1)) + configs

        candidates = [n for n in self.nodes.values()
                      if self._healthy(n.node_id) and n.node_id in self.oracle.latest.members
                      and all(self._live_enough(c, losing=n.node_id) for c in may_govern(n))]
        if not candidates:
            return
        # Half the time a node whose vote for an undecided slot is on its way to the leader: the leader
        # may yet count an acceptance that the disk no longer holds.
        voting = {src for src, dst, message in self.network
                  if isinstance(message, Accepted) and self._counts_vote(dst, message)}
        sharp = [n for n in candidates if n.node_id in voting]
        node = self.rng.choice(sharp if sharp and self.rng.random() < 0.5 else candidates)
        node.storage = Storage()
        node.incarnation = self._new_incarnation()
        node.wiped = True
        node.replica = node.applied = None
        node.unsynced = []
        node.staged.clear()
        node.fenced = node.disk_armed = False
        self.stats["wipes"] += 1
        self._log(f"WIPE {node.node_id}: its disk is lost; it comes back empty as incarnation {node.incarnation}")

    @staticmethod
    def _durably_decided_through(node: Node) -> int:
        """The slot through which ``node``'s disk holds the decided log: its snapshot, then the slots
        after it that have a DecideRecord there, contiguous. (A peer learns those from its promise
        without a quorum of the configuration that governed them.)"""
        storage = node.storage
        decided = {record.slot for record in storage.records if isinstance(record, DecideRecord)}
        slot = storage.snapshot_slot
        while slot + 1 in decided:
            slot += 1
        return slot

    def _counts_vote(self, node_id: int, message: Accepted) -> bool:
        """Would ``message`` be a vote the leader ``node_id`` still needs (its ballot, a slot above its
        decided prefix)?"""
        replica = self.nodes[node_id].replica
        return (replica is not None and replica.is_leader and message.ballot == replica.ballot
                and message.slot > replica.decided_slot)

    def _liveness_change(self, bound: int) -> None:
        """Membership liveness: with no faults, a change proposed at the stable leader (a promotion or
        a removal, the leader's own included) takes effect on every member, and a command proposed
        after it is decided and applied everywhere."""
        for _ in range(bound):
            leader = self._stable_leader()
            if leader is not None and not leader.replica.change_in_progress:
                break
            self._guard(self._round)
        else:
            self._fail(LivenessFailure, f"no stable leader without a change in progress within {bound} rounds")
        base = leader.replica.config.epoch
        new = self._propose_change(leader, kinds=("promote", "promote_rejoined", "remove_voter", "remove_leader",
                                                  "remove_learner", "replace", "remove_wiped"))
        if new is None:
            return
        self.stats["liveness_changes"] += 1
        proposed_at = 0
        for rounds in range(bound):
            leader = self._stable_leader()
            configs = [n.replica.config for n in self._members()]
            if leader is not None and not leader.replica.change_in_progress:
                if all(c == leader.replica.config for c in configs) and leader.replica.config.epoch > base:
                    break
                if (leader.replica.config.epoch == base
                        and rounds - proposed_at > 4 * self.options.election_timeout_ticks):
                    # The change was dropped with the leader that queued it: the operator retries.
                    self._log(f"retry the change to epoch {new.epoch} at {leader.node_id}")
                    try:
                        leader.replica.propose_change(new)
                    except ChangeRefused as refused:
                        self._log(f"change refused at {leader.node_id}: {refused}")
                    proposed_at = rounds
                    self._guard(functools.partial(self._drain, leader))
            self._guard(self._round)
        else:
            self._fail(LivenessFailure, f"the change to epoch {new.epoch} (voters {list(new.node_ids)}) did not "
                       f"take effect within {bound} rounds")
        command = self._new_command()
        self.submitted.add(command)
        if not leader.replica.propose(command):
            self._fail(LivenessFailure, f"stable leader {leader.node_id} refused a proposal after the change")
        self._guard(lambda: self._drain(leader))
        self._await_everywhere([command], bound)

    # ---------------------------------------------------------------- node plumbing

    def _start(self, node: Node) -> None:
        state = DurableState.replay(node.storage.records, node.storage.snapshot_slot)
        state.configs = node.storage.snapshot_configs
        node.fenced = False
        node.unsynced = []
        node.staged.clear()
        node.applied = list(node.storage.snapshot)
        node.replica = self.replica_class(node.node_id, self.config, rng=random.Random(self.rng.getrandbits(64)),
                                          state=state, options=self.options)
        self._drain(node)

    def _restart(self, node: Node) -> None:
        if node.fenced:
            self.stats["fenced_restarts"] += 1
        self._log(f"restart {node.node_id}{' (fenced)' if node.fenced else ''} from "
                  f"{len(node.storage.records)} records, snapshot at {node.storage.snapshot_slot}")
        self._start(node)

    def _tick(self, node: Node) -> None:
        self.now += 1
        if node.unsynced and self.rng.random() < 0.25:
            # The broken shell syncs lazily, on a timer (every fourth tick on average), long after its
            # messages already left.
            node.storage.append(node.unsynced)
            node.unsynced = []
        if self.postpone_elections:
            if self.faults_on and not node.postponing and self.rng.random() < 0.05:
                node.postponing = self.rng.randrange(1, 3 * self.options.election_timeout_ticks)
                self.stats["postponed"] += 1
            if node.postponing:
                node.postponing -= 1
                node.replica.postpone_election()
        node.replica.tick()
        self._drain(node)
        if self.membership:
            self._check_leader_is_voter(node)

    def _check_leader_is_voter(self, node: Node) -> None:
        """A leader that is no voter of its newest configuration (it applied its own removal) must hand
        over or step down within an election timeout of its own ticks (its transfer's deadline): led
        on, it would keep the voters from electing one of theirs with its heartbeats."""
        replica = node.replica
        if replica is None or node.fenced or not replica.is_leader or replica.is_voter:
            node.nonvoter_leader_ticks = 0
            return
        node.nonvoter_leader_ticks += 1
        if node.nonvoter_leader_ticks > 2 * self.options.election_timeout_ticks:
            self._fail(LivenessFailure, f"node {node.node_id} has led for {node.nonvoter_leader_ticks} of its ticks "
                       f"as no voter of its newest configuration (voters {list(replica.config.node_ids)}): a "
                       f"removed leader must hand over or step down within an election timeout")

    def _deliver_batch(self, node: Node, items: list) -> None:
        """Feed a paused node its queued ticks (``None``) and messages as ONE batch, then carry out one
        ``Actions``, as the kvstore driver does: it feeds every queued event to the core and calls
        ``take_actions()`` once at the end. A snapshot in the batch is installed where it comes, after
        the batches already carried out but before this batch's actions (the driver waits for its
        committer, not for the core's pending actions)."""
        for item in items:
            if node.replica is None or node.fenced:
                return
            if item is None:
                self.now += 1
                self._guard(node.replica.tick)
                continue
            src, dst, message = item
            if not self._link_allowed(src, dst):
                continue
            if isinstance(message, SnapshotMessage):
                if message.slot > node.replica.applied_slot:
                    self._wait_carried_out(node)
                    if node.replica is None or node.fenced:
                        return  # a staged batch failed its disk
                    self._log(f"install snapshot at {message.slot} from {src} on {dst} (mid-batch)")
                    self.stats["snapshots_installed"] += 1
                    self.stats["snapshots_installed_with_changes"] += _has_changes(message.configs)
                    self.stats["snapshots_installed_mid_batch"] += 1
                    self._guard(lambda message=message: node.replica.install_snapshot(message.slot,
                                                                                      message.configs))
                    node.applied = list(message.batches)
                    self._write_snapshot(node, message.slot, message.batches, message.configs)
                continue
            self._guard(lambda message=message: node.replica.receive(message))
        if not node.fenced:
            self._drain(node)

    def _pop_random_message(self):
        index = self.rng.randrange(len(self.network))
        self.network[index], self.network[-1] = self.network[-1], self.network[index]
        return self.network.pop()

    def _deliver(self, item) -> None:
        src, dst, message = item
        node = self.nodes[dst]
        if node.replica is None or node.fenced:
            return
        if self.group is not None and self.group.get(src, 0) != self.group.get(dst, 0):
            self.stats["dropped_by_partition"] += 1
            return
        if not self._link_allowed(src, dst):
            return
        if isinstance(message, SnapshotMessage):
            if message.slot > node.replica.applied_slot:
                self._log(f"install snapshot at {message.slot} from {src} on {dst}")
                self.stats["snapshots_installed"] += 1
                self.stats["snapshots_installed_with_changes"] += _has_changes(message.configs)
                self._drain(node)  # carry out pending actions before the log is rewritten
                self._wait_carried_out(node)
                if node.replica is None or node.fenced:
                    return  # that batch failed its disk
                node.applied = list(message.batches)
                node.replica.install_snapshot(message.slot, message.configs)
                self._write_snapshot(node, message.slot, message.batches, message.configs)
                if not node.fenced:
                    self._drain(node)
            return
        node.replica.receive(message)
        self._drain(node, from_accept=type(message) is Accept)

    def _drain(self, node: Node, from_accept: bool = False) -> None:
        """Take one Actions batch from the node's core and carry it out in contract order: persist,
        send, apply, reads, snapshots. In early_accepts mode the batch's early Accepts leave now and
        the rest waits for its fsync (``_stage``); ``from_accept``: the core's input was one Accept
        (whose ``decided_slot`` may have taught it decisions: checked now, see ``_stage``)."""
        assert not node.fenced, f"node {node.node_id} is fenced: the core must be fed nothing"
        if self.uncapped_early_accepts:
            # BROKEN on purpose: the shell reports the core's decided slot durable before the fsync
            # that makes the leader's own accepts durable, so early Accepts announce it uncapped.
            node.replica.note_durable(node.replica.decided_slot)
        actions = node.replica.take_actions()
        batch = StagedBatch(actions, node.replica.applied_slot)
        role = (node.replica.status()["role"], node.replica.ballot)
        if role != node.last_role:
            node.last_role = role
            self._log(f"node {node.node_id} is {role[0]} at {role[1]}")
        if self.early_accepts:
            self._stage(node, batch, from_accept)
            return
        if actions.send_early:
            self._fail(AssertionError, f"node {node.node_id}: send_early without Options.early_accepts")
        decisions, own = self._split_decisions(actions.persist)
        for record in decisions:
            self._observe_decided(node, record.slot, record.value)
        if node.disk_armed and actions.persist and self.faults_on:
            if self.swallow_disk_errors:
                for record in own:
                    self._observe_decided(node, record.slot, record.value)
                # BROKEN on purpose, as kvstore.server was (issue 15): the fsync error is caught and
                # dropped with the batch's records and messages, and the node goes on from its memory.
                node.disk_armed = False
                self.stats["disk_errors_swallowed"] += 1
                self._log(f"DISK FAILED on {node.node_id}, error swallowed: {len(actions.persist)} records "
                          f"and {len(actions.send)} messages lost, the node goes on")
                actions.persist, actions.send = [], []
            else:
                # The fsync failed: what reached the disk is unknown; modelled as any prefix of the
                # batch (the records were written in order). None of the batch may leave the node.
                stored = self.rng.randint(0, len(actions.persist))
                node.storage.append(actions.persist[:stored])
                self._observe_stored_own_decisions(node, actions.persist[:stored])
                kind = ("empty" if stored == 0 else "whole" if stored == len(actions.persist) else "partial")
                self.stats["disk_failures_prefix_" + kind] += 1
                self._fence(node, f"fsync of a batch: {stored} of {len(actions.persist)} records stored, "
                            f"{len(actions.send)} messages and {len(actions.apply)} applies withheld")
                return
        if self.send_before_persist:
            node.unsynced.extend(actions.persist)
        else:
            node.storage.append(actions.persist)
        for record in own:
            self._observe_decided(node, record.slot, record.value)
        self._carry_out(node, batch)

    # ---------------------------------------------------------------- the fsync pipeline (early_accepts)

    def _stage(self, node: Node, batch: StagedBatch, from_accept: bool) -> None:
        """early_accepts mode, as the kvstore server's driver and committer: the batch's early Accepts
        leave at once; a batch with records is staged behind the node's fsync in flight, as is one
        without records while others are staged (batches are carried out in order); a batch without
        records and with nothing staged ahead is carried out at once (it needs no fsync).

        A decision the core learned from an Accept's ``decided_slot`` is seen decided NOW, before any
        fsync (the node already knows it; a later fsync of the leader's would otherwise hide an
        announcement made too early): the durable-majority check runs on it here."""
        actions = batch.actions
        for to, message in actions.send_early:
            if type(message) is not Accept:
                self._fail(SafetyViolation, f"node {node.node_id} put {type(message).__name__} in send_early: "
                           f"only an Accept (phase 2a) promises nothing and may leave before the fsync")
            self.stats["early_accepts_sent"] += 1
            if message.decided_slot < actions.decided_slot:
                self.stats["early_accepts_behind"] += 1
            self._send(node, to, message)
        if from_accept:
            for record in self._split_decisions(actions.persist)[0]:
                if isinstance(record, DecideRecord):
                    self.stats["learned_from_early_accepts"] += 1
                    self._observe_decided(node, record.slot, record.value, how="learned from an Accept's "
                                          "decided_slot the decision")
        if actions.persist or node.staged:
            if not actions.persist:
                self.stats["staged_behind"] += 1
            node.staged.append(batch)
            self.stats["staged_max"] = max(self.stats["staged_max"], len(node.staged))
        else:
            self._carry_out(node, batch)

    def _group_size(self, node: Node) -> int:
        """How many of the node's staged batches the next fsync covers: all of them half the time
        (every batch staged while the previous fsync ran), else the oldest few."""
        if self.rng.random() < 0.5:
            return len(node.staged)
        return self.rng.randint(1, len(node.staged))

    def _fsync_done(self, node: Node, count: int | None = None) -> None:
        """The fsync in flight at ``node`` completes: its oldest ``count`` staged batches (all when
        None) are stored and then carried out in order, each reporting its ``decided_slot`` with
        ``note_durable``; then any batch without records now at the head (it needed no fsync). With
        the disk armed, the fsync fails instead (``_fsync_failed``)."""
        if not node.staged:
            return
        if node.disk_armed and self.faults_on:
            self._fsync_failed(node)
            return
        self.stats["fsync_done"] += 1
        count = len(node.staged) if count is None else count
        if count > 1:
            self.stats["fsyncs_grouped"] += 1
        done = [node.staged.popleft() for _ in range(count)]
        self._log(f"fsync done on {node.node_id}: {count} of {count + len(node.staged)} staged batches")
        for batch in done:
            # Seen decided before its own records count: they are stored with the batches before it.
            decisions, own = self._split_decisions(batch.actions.persist)
            for record in decisions:
                self._observe_decided(node, record.slot, record.value)
            node.storage.append(batch.actions.persist)
            for record in own:
                self._observe_decided(node, record.slot, record.value)
        for batch in done:
            self._carry_out(node, batch)
        while node.staged and not node.staged[0].actions.persist:
            self._carry_out(node, node.staged.popleft())

    def _fsync_failed(self, node: Node) -> None:
        """The armed disk fails the fsync in flight. As the server's committer: every staged batch's
        records were written before the fsync, so what reached the disk is any prefix of them all (in
        order); none of the staged batches is carried out, and the node is fenced. The oldest batch's
        decisions are seen decided (the core made them, and every batch before it was carried out).
        ``swallow_disk_errors``: only the oldest batch is lost, its records and messages dropped; its
        applies happen and the node goes on."""
        oldest = node.staged[0]
        decisions, own = self._split_decisions(oldest.actions.persist)
        for record in decisions + (own if self.swallow_disk_errors else []):
            self._observe_decided(node, record.slot, record.value)
        if self.swallow_disk_errors:
            node.disk_armed = False
            node.staged.popleft()
            self.stats["disk_errors_swallowed"] += 1
            self._log(f"DISK FAILED on {node.node_id}, error swallowed: {len(oldest.actions.persist)} records "
                      f"and {len(oldest.actions.send)} messages lost, the node goes on")
            oldest.actions.persist, oldest.actions.send = [], []
            self._carry_out(node, oldest)
            while node.staged and not node.staged[0].actions.persist:
                self._carry_out(node, node.staged.popleft())
            return
        records = [record for batch in node.staged for record in batch.actions.persist]
        stored = self.rng.randint(0, len(records))
        node.storage.append(records[:stored])
        self._observe_stored_own_decisions(node, records[:stored])
        kind = "empty" if stored == 0 else "whole" if stored == len(records) else "partial"
        self.stats["disk_failures_prefix_" + kind] += 1
        if any(batch.actions.send_early for batch in node.staged):
            self.stats["disk_failures_after_early_accepts"] += 1
        self.stats["staged_behind_failed_fsync"] += len(node.staged) - 1
        self._fence(node, f"fsync of {len(node.staged)} staged batches: {stored} of {len(records)} records "
                    f"stored, none carried out")

    def _observe_stored_own_decisions(self, node: Node, stored: list) -> None:
        """A failed fsync's stored part may hold a sole voter's acceptance of a slot and its decision of it
        (``_split_decisions``): both are durable, and the node, once restarted, takes the slot as decided,
        so the slot was chosen. Seen decided now, in slot order (soak QA: seeds 9300004300 and 9300014028
        of membership + disk faults + early accepts, at 1,484 and 1,283 steps, failed on a later slot
        decided above this one, which the checker had never seen)."""
        _, own = self._split_decisions(stored)
        for record in sorted(own, key=lambda r: r.slot):
            self._observe_decided(node, record.slot, record.value, how="stored by a failed fsync")

    def _split_decisions(self, persist: list) -> tuple[list, list]:
        """A batch's DecideRecords: those seen decided before the batch's records are stored, and (in
        membership mode) those of slots whose AcceptRecord with the same value is in the same batch,
        seen decided once the batch is stored. A sole voter decides a slot with its own acceptance
        in the batch that opens it (one fsync makes both durable, and nothing of the batch is seen
        before it); if that fsync fails, the slot was never chosen. (A follower that accepts a slot
        and learns it decided from the same Accept has its decision seen a little later.)"""
        decisions = [record for record in persist if isinstance(record, DecideRecord)]
        if not self.membership or not decisions:
            return decisions, []
        accepted = {(record.slot, record.value) for record in persist if isinstance(record, AcceptRecord)}
        return ([r for r in decisions if (r.slot, r.value) not in accepted],
                [r for r in decisions if (r.slot, r.value) in accepted])

    def _wait_carried_out(self, node: Node) -> None:
        """Before a compaction or snapshot install rewrites the log, every staged batch is carried out
        (the server's ``GroupCommit.wait_carried_out``): the fsync in flight completes (or fails)."""
        if node.staged:
            self.stats["waited_for_staged"] += 1
            self._fsync_done(node)

    def _carry_out(self, node: Node, batch: StagedBatch) -> None:
        """Steps 2-6 of the contract for a batch whose records are stored: report its decided slot
        durable, send, apply, answer reads, fail what was dropped, send snapshots."""
        actions = batch.actions
        node.replica.note_durable(actions.decided_slot)
        for to, message in actions.send:
            self._send(node, to, message)
        for slot, value in actions.apply:
            if slot != len(node.applied) + 1:
                self._fail(SafetyViolation, f"node {node.node_id} applied slot {slot} after {len(node.applied)}")
            self._observe_decided(node, slot, value)
            node.applied.append(value)
            self.applied_max = max(self.applied_max, slot)
        if batch.applied_slot != len(node.applied):
            self._fail(SafetyViolation, f"node {node.node_id}: core applied_slot {batch.applied_slot} "
                       f"but the state machine holds {len(node.applied)} slots")
        for read_id, index in actions.reads:
            needed = self.pending_reads.pop(read_id)
            self.stats["reads_served"] += 1
            if index < needed or len(node.applied) < index:
                self._fail(SafetyViolation, f"read {read_id} served at index {index} by node {node.node_id}, "
                           f"but slot {needed} was applied before it began (node applied {len(node.applied)})")
        for read_id in actions.rejected_reads:
            self.pending_reads.pop(read_id)
        self.dropped.extend(actions.dropped_proposals)
        for to in actions.snapshot_to:
            if node.storage.snapshot_slot > 0:
                self._send(node, to, SnapshotMessage(node.storage.snapshot_slot, node.storage.snapshot,
                                                     node.storage.snapshot_configs))

    def _send(self, node: Node, to: int, message) -> None:
        """A message leaves ``node``: the one way onto the network. A message that promises or
        accepts on the sender's behalf leaves only with the record that makes it true durable there
        (the Actions contract, persist before send; checked so that no shell path can skip it)."""
        assert to != node.node_id and to in self.nodes, f"bad destination {to}"
        storage = node.storage
        if isinstance(message, (Promise, HeartbeatAck)) and storage.promised < message.ballot:
            self._fail(SafetyViolation, f"node {node.node_id} sent {type(message).__name__} at {message.ballot} "
                       f"to {to}, not durable at its sender: its stored promise is {storage.promised}")
        # An Accepted needs the AcceptRecord of its vote stored, or one of a higher ballot for the slot: a
        # duplicate Accept re-acknowledges a vote stored in an earlier batch, and if a higher ballot's
        # Accept in the same batch supersedes it and a log rewrite there (a snapshot installed
        # mid-batch, a compaction) keeps only the newer vote, the storage still holds all it needs.
        # The newer vote came after a promise that reported the older one, so the old Accepted is a
        # late message about a vote that was durable when cast (seed 216053734376979).
        if (isinstance(message, Accepted) and message.slot > storage.snapshot_slot
                and not any(ballot >= message.ballot for ballot in storage.accepted_at.get(message.slot, ()))):
            self._fail(SafetyViolation, f"node {node.node_id} sent Accepted of slot {message.slot} at "
                       f"{message.ballot} to {to}, not durable at its sender: no AcceptRecord of it (or of a "
                       "higher ballot) is stored")
        if not self._link_allowed(node.node_id, to):
            return
        self.network.append((node.node_id, to, message))

    def _observe_decided(self, node: Node, slot: int, value: tuple, how: str = "decided") -> None:
        old = self.decided.get(slot)
        if old is None:
            for command in value:
                if command not in self.submitted:
                    self._fail(SafetyViolation, f"node {node.node_id} decided {command!r}, never submitted")
            self._check_durable_majority(node, slot, value, how)
            self.decided[slot] = value
        elif old != value:
            self._fail(SafetyViolation, f"slot {slot}: node {node.node_id} decided {value!r}, "
                       f"but {old!r} was decided before")

    def _check_durable_majority(self, node: Node, slot: int, value: tuple, how: str = "decided") -> None:
        """The value first seen decided at ``slot`` is durable on a majority (see the module docstring).
        In membership mode: on a majority of the voters of the configuration that governs ``slot``,
        which the decided log must already fix (membership rule 2: no slot is opened, so none is
        decided, before every slot up to ``slot - alpha`` is decided)."""
        holders = [n.node_id for n in self.nodes.values() if n.storage.holds(slot, value)]
        if self.membership:
            config = self._config_of(slot)
            if config is None:
                self._fail(SafetyViolation, f"slot {slot}: node {node.node_id} {how} {value!r} while slots up to "
                           f"{slot - self.config.alpha} are not all decided (decided prefix: {self.oracle_through}): "
                           f"its configuration was not known yet")
            voters = [h for h in holders if config.is_voter(h)]
            # A voter whose disk was lost can never be in a quorum again (its incarnation is refused),
            # so it cannot help a later leader miss the value either: it counts with the holders.
            # Not when the broken shell lets it vote (skip_incarnation_check).
            gone = [v for v in config.node_ids if v not in voters and self._cannot_vote(v, config)]
            if len(voters) + len(gone) < config.quorum_size:
                self._fail(SafetyViolation, f"slot {slot}: node {node.node_id} {how} {value!r}, but only nodes "
                           f"{holders} hold it durably, of them the voters {voters} of the slot's configuration "
                           f"(epoch {config.epoch}, voters {list(config.node_ids)}"
                           + (f", of which {gone} can never vote again" if gone else "")
                           + f"), fewer than a majority ({config.quorum_size}): a later leader's phase 1 can miss it")
            return
        if len(holders) < self.config.quorum_size:
            self._fail(SafetyViolation, f"slot {slot}: node {node.node_id} {how} {value!r}, but only nodes "
                       f"{holders} hold it durably, fewer than a majority ({self.config.quorum_size}): "
                       f"a crash of the others can un-choose it")

    def _check_prefixes(self) -> None:
        """Every live state machine is the decided log's prefix, so any two are prefixes of each other."""
        for node in self._up():
            for slot, batch in enumerate(node.applied, start=1):
                if self.decided.get(slot) != batch:
                    self._fail(SafetyViolation, f"node {node.node_id} applied {batch!r} at slot {slot}, "
                               f"decided is {self.decided.get(slot)!r}")

    def _new_command(self) -> bytes:
        self.command_count += 1
        return b"cmd-%d" % self.command_count

    # ---------------------------------------------------------------- reporting

    def _guard(self, action) -> None:
        """Run one event; turn the core's own safety assertions into a seeded report."""
        try:
            action()
        except (SafetyViolation, LivenessFailure):
            raise
        except AssertionError as error:
            kind = SafetyViolation if str(error).startswith("safety:") else AssertionError
            self._fail(kind, f"assertion in the core: {error}", cause=error)

    def _log(self, text: str) -> None:
        self.trace.append(f"[step {self.step_no} tick {self.now}] {text}")

    def _fail(self, kind, text: str, cause: BaseException | None = None):
        flags = ("send_before_persist", "early_accepts", "compact_often", "postpone_elections",
                 "disk_faults", "swallow_disk_errors", "uncapped_early_accepts", "membership",
                 "skip_incarnation_check")
        shown = [flag for flag in flags if getattr(self, flag)]
        if self.skip_incarnation_check:
            shown.remove("membership")  # implied
        if self.swallow_disk_errors:
            shown.remove("disk_faults")  # implied
        if self.uncapped_early_accepts:
            shown.remove("early_accepts")  # implied
        mode = "".join(f" ({flag})" for flag in shown)
        if self.replica_class is not Replica:
            mode += f" (replica_class {self.replica_class.__name__})"
        # (the seed alone replays the suite's default mode and steps; a soak's run needs its mode and steps
        # too: failing_seeds.txt takes them, soak QA)
        seeds_line = f"{self.nodes_count} {self.seed} {'+'.join(shown) or 'none'} steps={self.steps}"
        message = (f"seed {self.seed}, {self.nodes_count} nodes{mode}, step {self.step_no}, tick {self.now}: "
                   f"{text}\nreplay: pytest tests/sim --seed {self.seed} (the default mode and steps); this run, "
                   f"with its mode and steps: add `{seeds_line}` to tests/sim/failing_seeds.txt"
                   + (" (and its replica_class and options)" if self.replica_class is not Replica else "")
                   + "\nlast events:\n  " + "\n  ".join(self.trace))
        raise kind(message) from cause


def _show_schedule(entries) -> str:
    return "[" + ", ".join(f"from {e} (slot {s}): epoch {c.epoch} voters {list(c.node_ids)} learners "
                           f"{list(c.learners)}" for e, s, c in entries) + "]"


def _has_changes(configs) -> int:
    """1 if a snapshot's schedule holds a configuration made by a change (epoch above 0)."""
    return int(any(config.epoch > 0 for _e, _s, config in configs))
