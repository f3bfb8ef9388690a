"""The Multi-Paxos replica: a pure state machine, inputs in, ``Actions`` out.

Theory of operation
-------------------
One ``Replica`` object is one node of the cluster. It plays the three roles of Paxos Made Simple
(Lamport 2001) at once: acceptor (it promises and accepts), learner (it learns which values are
chosen, "decided" here) and, when it leads, proposer. It runs the same protocol for an unbounded
sequence of *slots* (section 3, "Implementing a State Machine"), each slot deciding one *batch* of
opaque commands (a ``tuple`` of ``bytes``; the empty tuple is the no-op).

It owns no I/O. Inputs are plain method calls: ``receive(message)``, ``tick()``, ``propose(command)``,
``read(read_id)``, ``compact(slot)``, ``install_snapshot(slot)``, ``postpone_election()``,
``propose_change(config)``, ``transfer_leadership(target)``, ``note_durable(decided_slot)``. Their
effects accumulate in one ``paxos.actions.Actions`` value until the shell calls ``take_actions()``, so
a shell may feed many inputs and make them durable with one fsync (group commit). The shell must then
carry out the actions in the order the ``Actions`` docstring gives: persist, then send, then apply.

``propose()`` only queues a command: the leader opens its slot (and the Accept appears) in
``take_actions()``, which batches the queued commands into slots (``_fill_window``).

Off by default, and skippable on a first reading: ``Options.thrifty`` (a new Accept goes at once only
to the followers a majority needs, to the others on the next tick), ``Options.lazy_decide`` (a
decision no Accept carried is announced on the next tick instead of in this batch) and
``Options.early_accepts`` (a leader's Accepts come in ``Actions.send_early`` and may leave before the
batch's fsync, their ``decided_slot`` capped at the mark the shell reports with ``note_durable``).
They change when messages leave, never what is decided. With all three off, skip
``_send_deferred_accepts``, ``_split_early_accepts``, ``note_durable`` and every branch on
``self.options.thrifty``, ``lazy_decide`` or ``early_accepts``. The kvstore server turns all three on.

Rules (each cites the paper):

* One promised ballot covers every slot (section 3: the leader runs phase 1 "for infinitely many
  instances" with one message). An acceptor answers ``Prepare(b)`` with ``b`` above its promise by
  promising ``b`` (phase 1(b)) and reporting what it accepted and decided at slots ``>= first_slot``. It
  accepts ``Accept(b, slot)`` unless it promised a higher ballot (P1a). The promise never goes down.
* A candidate picks a ballot above every ballot it has seen (section 2.2: proposals have distinct,
  increasing numbers). With a majority of promises it becomes leader and, for every slot from
  ``first_slot`` to the highest slot any promise reported, re-proposes: the decided value if one was
  reported, else the value accepted at the highest ballot (P2c), else the no-op (section 3: "fill the
  gaps with no-op commands"). Only then does it propose new commands.
* A slot is decided when a majority accepted it at one ballot (section 2.3, learning a chosen value).
  The leader tells the others with ``decided_slot`` on Accept, Heartbeat and Decide messages; a
  follower marks decided each slot at or below it that it accepted *at that same ballot*, because one
  ballot proposes one value per slot, and asks for the rest with ``CatchupRequest``.
* A leader that heard no answer at its ballot from a majority for an election timeout steps down
  (``Options.check_quorum``, on by default). This serves liveness only (section 2.4, Progress: the
  distinguished proposer must be able to communicate with a majority of acceptors): its waiting reads
  and queued commands go back to the shell at once, so clients move on to the majority's leader.
  Safety never depends on who thinks it leads.
* The leader counts its own promise and acceptance in memory, without a message to itself. That is
  safe because every effect others can see (messages, applied commands) comes after ``persist`` in the
  same ``Actions``.
* Once a slot is applied, its value is kept until a snapshot covers it (for peers that lag, promises
  and the log's rewrite) as one ``bytes`` object (``marshal``, ``_pack``) instead of a tuple of
  commands. Memory, not Paxos: a tuple of small objects per slot, freed only at the next snapshot, ends
  up interleaved in the allocator's arenas with the state machine's entries, which live on, and the
  arenas cannot be returned; one large object per slot goes to the C heap and is given back when the
  snapshot frees it. Every reader of a kept value unpacks it (``_unpack``).
* Bad input (stale ballot, unknown sender, slot below our log start, duplicate) is normal: it is
  dropped or answered with a Nack and counted in ``status()["counters"]``. Broken invariants of our
  own are ``assert``s; the ones that guard safety start their message with ``"safety:"``.

What it must never do: read a clock, touch a file or socket, use module-level ``random`` (randomness
comes only from the ``rng`` given to the constructor), or let a promise or acceptance out before the
record that makes it durable is in the same ``Actions.persist``.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from .actions import (
    AcceptRecord,
    Actions,
    DecideRecord,
    DurableState,
    PromiseRecord,
    pack_value,
    unpack_value,
    value_bytes,
)
from .ballot import Ballot
from .membership import Config, ConfigSchedule, ScheduleEntry, encode_change, is_change, refuse_change_command
from .messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    Campaign,
    CatchupReply,
    CatchupRequest,
    Decide,
    DecidedEntry,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
    Value,
)

if TYPE_CHECKING:  # only for the annotation: the core never touches the module-level generator
    import random

# The newest unconfirmed heartbeat rounds a leader keeps besides those a waiting read began in
# (``_forget_old_rounds``): enough for acks that take a few heartbeat periods to come back.
ROUNDS_UNCONFIRMED_MAX = 4

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"

__all__ = ["Config", "Options", "Replica", "Status", "ChangeRefused", "FOLLOWER", "CANDIDATE", "LEADER"]


class ChangeRefused(Exception):
    """``Replica.propose_change`` cannot queue this change now (the message says why)."""


@dataclass(frozen=True)
class Options:
    """Tuning knobs, all counted in ticks or items (never seconds: the shell decides a tick's length)."""

    # A leader's heartbeat period, and the silence after which a follower campaigns (randomized between
    # one and two of these). Keep the heartbeat well below the election timeout (at least half of it;
    # a fifth to a tenth is usual): at or above it, followers campaign between heartbeats of a live
    # leader, and leaders change over and over with no fault at all (QA: 78 elections in 1,000 ticks
    # at 20 and 10). Not refused here, since tests of a lone leader turn heartbeats off that way;
    # kvstore.server.ServerOptions refuses less than twice.
    heartbeat_ticks: int = 2
    election_timeout_ticks: int = 10
    window: int = 32
    batch_count_max: int = 256
    catchup_entries_max: int = 256
    # ... and their values' bytes (an answer holds at least one entry, however large). With slots of 1 MiB
    # (batch_bytes_max) 256 entries made answers of 256 MB, rebuilt for every request, over the shell's
    # frame limit (soak QA: a follower back from a pause far behind took the cluster down).
    catchup_bytes_max: int = 4 << 20
    # A slot's commands add up to at most this many bytes (one command larger than it still gets a slot
    # of its own), so that one Accept stays a reasonable message for the shell to frame and fsync.
    batch_bytes_max: int = 1 << 20
    # When a decision is not carried by an Accept in the same batch, the leader announces it with a
    # Decide message: at once (False), or on its next tick unless an Accept carries it first (True).
    # A Decide only tells followers what they may apply; under load the next Accept carries
    # decided_slot anyway, and one request at a time it would cost every follower a wake-up (and the
    # leader a send per follower) per command. Lazy decides trade that for followers applying up to
    # one tick later when the leader goes quiet. Safety does not depend on it either way.
    lazy_decide: bool = False
    # Thrifty Accepts: a new Accept goes at once only to as many followers as a majority needs with
    # the leader (quorum size - 1), the ones whose Accepted last arrived while a slot was undecided;
    # the other followers get the slots opened since the previous tick on the leader's next tick, all
    # together. One request at a time, that spares a 3-node cluster one process wake-up and one fsync
    # per command. If a fast follower stops answering, the next tick's Accepts reach the others, whose
    # answers decide the slot and make them the fast ones. Safety does not depend on who is sent what
    # when; a follower that gets Accepts a tick later also applies a tick later.
    thrifty: bool = False
    # Early Accepts: a leader's phase-2a Accepts promise nothing on the sender's behalf, so the shell
    # may send them before the batch's own records are durable, and the followers write to their
    # disks while the leader writes to its own (a round trip then costs one fsync, not two). With this
    # set they come in ``Actions.send_early`` instead of ``send``. Their ``decided_slot`` is capped at
    # the decided slot the shell last reported durable (``note_durable``): a decision counts the
    # leader's own accept, which is durable only once its batch's fsync is done, so an Accept that
    # leaves before that fsync may not announce it (a follower could apply a value that a crash of
    # the leader un-chooses).
    early_accepts: bool = False
    # CheckQuorum (etcd's name): a leader that has not heard, for ``election_timeout_ticks`` of its
    # ticks, an answer at its ballot (Accepted, HeartbeatAck, Promise) from a majority of every
    # configuration that governs an undecided slot steps down. Cut off from its majority it can decide
    # nothing and confirm no read; stepping down hands its waiting reads and queued proposals back
    # (``rejected_reads``, ``dropped_proposals``) so that their clients go to the majority's leader at
    # once instead of waiting for their timeouts. Liveness only: Paxos is safe with any number of
    # leaders. A single-node cluster (a majority of one) never steps down.
    check_quorum: bool = True
    # PreVote (Raft's, section 9.6 of Ongaro's thesis): when its election timer fires, a voter first
    # asks the others whether they would take part (``PreVote``), without raising its promise, and
    # starts the election (phase 1, a higher ballot) only with a yes from a majority of every
    # configuration from its next slot. A node says yes when it has heard from no leader for an
    # election timeout (a leader says no) and the asker is not far behind what it knows decided. So a
    # node cut off from the others never raises its promise, and once the partition heals it follows
    # the leader instead of deposing it with a higher ballot (QA: a returning node deposed a healthy
    # leader, and writes waited up to 2 s). Liveness only. A leadership transfer (``Campaign``) skips
    # it. Off by default in the library (an embedding program must route the two new messages);
    # kvstore's nodes turn it on.
    pre_vote: bool = False
    # Patient resends: an undecided slot's Accept is resent every heartbeat period to each node that has
    # not accepted it, since a transport may lose messages. With this set, to a peer only an election
    # timeout after the last send to it, or once the shell says it lost messages to it
    # (``note_messages_lost``): on a transport that loses messages only with the link (TCP, whose links
    # the shell redials and whose queues report what they drop), that Accept is still queued, or being
    # written there, whether the peer answers meanwhile or not (a busy peer's answers wait behind it).
    # Large values made this matter: a slot open past a heartbeat period went again to both followers
    # every period, and each copy made them slower still. Liveness only. kvstore's nodes turn it on.
    patient_resends: bool = False

    def __post_init__(self) -> None:
        for name in ("heartbeat_ticks", "election_timeout_ticks", "window", "batch_count_max",
                     "catchup_entries_max", "catchup_bytes_max", "batch_bytes_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Options.{name} must be an int >= 1, got {value!r}")
        for name in ("lazy_decide", "thrifty", "early_accepts", "check_quorum", "pre_vote", "patient_resends"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Options.{name} must be a bool, got {getattr(self, name)!r}")


class Status(TypedDict):
    """``Replica.status()``: plain values for monitoring."""

    node_id: int
    role: str  # FOLLOWER, CANDIDATE or LEADER
    leader_id: int | None
    is_leader: bool
    ballot: list[int]  # [number, node_id] of the promised ballot
    decided_slot: int
    applied_slot: int
    snapshot_slot: int
    queued: int
    in_flight: int
    pending_reads: int
    config: dict[str, Any]  # Config.to_dict() of the newest configuration
    config_effective_slot: int
    voter: bool
    role_in_config: str  # "voter", "learner" or "none"
    counters: dict[str, int]  # bad input and other events, by name


@dataclass
class _Proposal:
    """A slot this leader opened at its ballot and has not seen decided yet."""

    value: Value
    acks: set[int] = field(default_factory=set)  # voters of the slot's config that accepted it at our ballot
    opened: int = 0  # Replica._ticks when it was opened
    voters: tuple[int, ...] = ()  # the slot's voters (membership rule 3: only their votes count)
    quorum: int = 1
    resent: dict[int, int] = field(default_factory=dict)  # peer -> Replica._ticks of the last resend to it



_pack = pack_value  # (see the module docstring)
_unpack = unpack_value


class Replica:
    """One Multi-Paxos node. See the module docstring for the rules it follows."""

    def __init__(self, node_id: int, config: Config, *, rng: random.Random,
                 state: DurableState | None = None, options: Options = Options()) -> None:
        """Build a replica from its configuration and what its storage recovered.

        ``state`` is ``DurableState.replay(records, snapshot_slot, configs)`` after a restart (``configs``:
        the schedule the snapshot carries, ``schedule_through(slot)`` when it was taken), or ``None`` for
        a new node. The shell must have restored the state machine from the snapshot at
        ``state.snapshot_slot``; the first ``take_actions()`` then applies the decided slots after it.
        ``config`` is the configuration to start from when ``state`` carries no ``configs``: the founders'
        (the changes in the log then lead from it to the newest, as on every other replica), or, for a
        node that joins a running cluster, the newest configuration its members gave it (what kvstore
        does): the changes older than it in the log are then ignored (counted ``config_change_ignored``),
        and the snapshot it installs brings the schedule of the slots before it.
        """
        self.node_id = node_id
        self.options = options
        self._rng = rng
        state = state if state is not None else DurableState()
        # Which configuration governs each slot (paxos.membership): from the snapshot, else the
        # bootstrap configuration the shell passed. A node outside it (joining, or removed) never
        # campaigns, and its votes count toward nothing.
        self._schedule = (ConfigSchedule(state.configs) if state.configs
                          else ConfigSchedule.initial(config))

        # Acceptor and learner state (durable: rebuilt from `state` after a crash).
        self._promised: Ballot = state.promised
        # Values of applied slots are kept packed (see the module docstring: _pack, _unpack).
        self._accepted: dict[int, tuple[Ballot, Value | bytes]] = dict(state.accepted)
        self._decided: dict[int, Value | bytes] = dict(state.decided)
        self._snapshot_slot = state.snapshot_slot
        self._decided_slot = state.snapshot_slot
        self._applied_slot = state.snapshot_slot
        self._ballot_seen_max = max([self._promised, *(b for b, _ in self._accepted.values())])
        self._peers: tuple[int, ...] = ()  # members of every configuration that governs an undecided slot
        self._known: frozenset[int] = frozenset()  # members of every configuration still scheduled
        # Counts _refresh_members calls: the shell follows membership only when this moved (a cheap test
        # per batch instead of comparing configurations)
        self.members_version = 0
        self._active: list[Config] = []  # the configurations that govern slots after decided_slot
        self._members_until = 0  # decided_slot + 1 at which _active must be recomputed
        self._preferred: list[int] = []  # thrifty Accepts: followers by how recently they helped
        self._role: str = FOLLOWER  # (set again below with the rest of the role state)
        self._refresh_members()

        self._actions = Actions()
        self._counters: dict[str, int] = {}
        self._ticks = 0  # ticks since this object was built

        # Role. Every node starts as a follower; a restarted leader must win a new election.
        self._role = FOLLOWER
        self._leader_id: int | None = None
        self._own_ballot: Ballot | None = None  # our ballot while candidate or leader

        # Election timer (follower and candidate).
        self._ticks_since_heard = 0
        self._election_deadline = self._draw_election_deadline()

        # Pre-vote state (Options.pre_vote): the ballot we asked about, and who said yes.
        self._pre_vote_ballot: Ballot | None = None
        self._pre_votes: set[int] = set()
        self._leader_heard_tick = 0  # self._ticks when a leader last spoke to us (_follow)
        # The promised ballot whose leader we gave up on (our election timer ran out under it): a Campaign
        # of that ballot that reaches us later was stuck in a link (QA: TCP delivered it seconds late,
        # after the others had elected a new leader, and we deposed that one).
        self._gave_up_on_ballot: Ballot | None = None

        # Candidate state.
        self._first_slot = 0
        self._promises: dict[int, Promise] = {}
        self._election_behind = False
        self._promised_by: set[int] = set()  # leader: who promised our ballot (rule 3 needs a majority per config)

        # Leader state.
        self._queue: deque[bytes] = deque()
        self._in_flight: dict[int, _Proposal] = {}
        self._next_slot = 0
        self._reproposed_slot = 0
        # (slot, value) re-proposals not opened yet (rule 2 holds them)
        self._pending_reproposals: deque[tuple[int, Value]] = deque()
        self._announced_decided_slot = 0
        # Thrifty Accepts (Options.thrifty): the (slot, value, followers not sent to yet) of slots held
        # back for the slower followers.
        self._deferred: list[tuple[int, Value, tuple[int, ...]]] = []
        self._change_queued = False  # a configuration change is queued or in a slot, not applied yet
        self._transfer: tuple[int, int] | None = None  # (target, deadline tick) while handing leadership over
        self._peer_decided: dict[int, int] = {}  # the decided slot each peer last reported
        self._lost_at: dict[int, int] = {}  # peer -> the tick the shell last lost messages to it (note_messages_lost)
        # Options.check_quorum: the tick (self._ticks) at which each peer last answered our ballot
        # (Promise, Accepted, HeartbeatAck); reset when we win an election.
        self._peer_heard: dict[int, int] = {}
        self._heartbeat_elapsed = 0
        self._heartbeat_seq = 0  # never reset, so acks from an older round never count for a newer one
        self._heartbeat_acks: dict[int, set[int]] = {}  # seq -> who acked that round
        self._confirmed_seq = 0
        self._round_in_batch: int | None = None
        self._pending_reads: list[tuple[int, int, int]] = []  # (read_id, read index, seq needed)

        # Catch-up.
        self._catchup_cooldown = 0
        self._decided_hint = 0  # highest decided_slot anyone told us about
        # (ballot, slot): every slot up to ``slot`` that we had accepted at ``ballot`` was looked at by
        # _learn_decided_slot already, so a later announcement of that ballot starts above it (a node
        # far behind would otherwise rescan its whole gap on every Accept, Heartbeat and Decide).
        self._learn_scanned: tuple[Ballot | None, int] = (None, 0)

        self._advance_decided()  # applies the decided slots recovered from storage
        # The decided slot as of the newest batch the shell reported durable (Options.early_accepts):
        # what was decided from storage rests on durable records already.
        self._durable_decided_slot = self._decided_slot

    # ------------------------------------------------------------------ properties

    @property
    def leader_id(self) -> int | None:
        """The node we believe leads (ourselves when leading), or None while unknown."""
        return self.node_id if self._role == LEADER else self._leader_id

    @property
    def is_leader(self) -> bool:
        return self._role == LEADER

    @property
    def ballot(self) -> Ballot:
        """The promised ballot (equal to our own ballot while we lead)."""
        return self._promised

    @property
    def decided_slot(self) -> int:
        """The highest slot such that it and every slot below it are decided."""
        return self._decided_slot

    @property
    def applied_slot(self) -> int:
        """The highest slot handed out in ``Actions.apply`` (or covered by the snapshot)."""
        return self._applied_slot

    @property
    def snapshot_slot(self) -> int:
        return self._snapshot_slot

    @property
    def config(self) -> Config:
        """The newest configuration: the one the cluster is moving to (or is in)."""
        return self._schedule.latest

    def config_for(self, slot: int) -> Config:
        """The configuration that governs ``slot`` as far as this node knows (see paxos.membership)."""
        return self._schedule.for_slot(slot)

    def schedule_through(self, slot: int) -> tuple[ScheduleEntry, ...]:
        """What a snapshot at ``slot`` must carry (``DurableState.configs``); ``slot <= applied_slot``."""
        return self._schedule.through(slot)

    @property
    def is_voter(self) -> bool:
        """Is this node a voter of the newest configuration? Only such a node campaigns."""
        return self._schedule.latest.is_voter(self.node_id)

    @property
    def change_in_progress(self) -> bool:
        """A change is queued, undecided, or decided but not yet governing the next slot."""
        return self._change_queued or self._schedule.latest_effective > self._decided_slot + 1

    def peer_decided(self, node_id: int) -> int | None:
        """Leader: the decided slot ``node_id`` last reported in a HeartbeatAck (None if never)."""
        return self._peer_decided.get(node_id)

    def peer_answered_within(self, node_id: int, ticks: int) -> bool:
        """Leader: whether ``node_id`` answered our ballot (Promise, Accepted, HeartbeatAck) in the last
        ``ticks`` ticks (a handover to a node that does not answer could only fail)."""
        heard = self._peer_heard.get(node_id)
        return heard is not None and heard >= self._ticks - ticks

    @property
    def _running_ballot(self) -> Ballot:
        """Our own ballot, for the messages only a candidate or leader sends."""
        assert self._own_ballot is not None, f"only a candidate or leader has a ballot of its own ({self._role})"
        return self._own_ballot

    # ------------------------------------------------------------------ inputs

    def propose(self, command: bytes) -> bool:
        """Queue ``command`` for a slot. Returns False when not leader (redirect to ``leader_id``).

        True does not mean decided: the command goes out in a batch at the next ``take_actions()``
        and is applied when decided. If this node stops leading before the command is put into a slot,
        it comes back in ``Actions.dropped_proposals``; once in a slot, it may still be decided later
        by another leader (so clients retry with the same request id and the state machine dedups).

        Raises ``TypeError`` for a command that is not ``bytes`` (or ``bytearray``), and ``ValueError``
        for one that starts with ``paxos.membership.CHANGE_PREFIX``: every replica would apply it as a
        change of members, without ``propose_change``'s checks, so a shell that hands client bytes to
        ``propose`` would let its clients change the members.
        """
        if not isinstance(command, (bytes, bytearray)):  # the caller's error, not a broken invariant of ours
            raise TypeError(f"a command is opaque bytes, not {type(command).__name__}: encode it first")
        refuse_change_command(command)
        if self._role != LEADER:
            self._count("propose_not_leader")
            return False
        self._queue.append(bytes(command))
        return True

    def read(self, read_id: int) -> bool:
        """Start a linearizable read (read index). Returns False when not leader.

        When a majority has confirmed our leadership in a heartbeat round begun after this call, and
        the state machine has applied up to the read index, ``(read_id, index)`` appears in
        ``Actions.reads``: answer the read from the state machine then. If we lose leadership first,
        ``read_id`` appears in ``Actions.rejected_reads``.
        """
        if self._role != LEADER:
            self._count("read_not_leader")
            return False
        # Every slot decided before now is at or below this index: slots decided under earlier
        # ballots were reported by our promise majority and re-proposed (up to _reproposed_slot), and
        # slots decided under our ballot were decided by us.
        index = max(self._decided_slot, self._reproposed_slot)
        seq = self._start_heartbeat_round()
        self._pending_reads.append((read_id, index, seq))
        self._serve_reads()
        return True

    def propose_change(self, config: Config) -> None:
        """Queue a change to ``config`` (made from ``self.config`` by ``add_learner``, ``promote`` or
        ``remove``). Raises ``ChangeRefused`` when not leader or while another change is in progress.

        The change is decided like any command; it governs from alpha slots after its own slot
        (paxos.membership). Watch ``config.epoch`` to see it applied: a change raced by another one
        based on the same epoch is ignored by every replica, so it may never apply.
        """
        if self._role != LEADER:
            raise ChangeRefused(f"node {self.node_id} is not the leader")
        if self._transfer is not None:
            raise ChangeRefused("leadership is being handed over; retry on the new leader")
        if self.change_in_progress:
            latest = self._schedule.latest
            where = (f"epoch {latest.epoch + 1} is proposed and not decided yet" if self._change_queued else
                     f"epoch {latest.epoch} governs from slot {self._schedule.latest_effective}, decided slot "
                     f"{self._decided_slot}")
            raise ChangeRefused(f"a membership change is in progress ({where}); wait for it and retry")
        latest = self._schedule.latest
        if config.epoch != latest.epoch + 1 or config.alpha != latest.alpha:
            raise ChangeRefused(f"the change must follow epoch {latest.epoch} (it names epoch {config.epoch})")
        self._change_queued = True
        self._queue.append(encode_change(latest.epoch, config))

    def transfer_leadership(self, target: int) -> bool:
        """Hand leadership to voter ``target``: stop opening slots, and once every open slot is decided
        and ``target`` reported (HeartbeatAck) that it decided them too, tell ``target`` to campaign
        (``Campaign``) and step down. Abandoned after an election timeout (the leader goes on).
        Returns False when not leader, or ``target`` is not another voter."""
        if (self._role != LEADER or target == self.node_id or target not in self._peers
                or not self._schedule.latest.is_voter(target)):
            self._count("transfer_refused")
            return False
        if self._transfer is None or self._transfer[0] != target:
            self._start_transfer(target)
        self._maybe_finish_transfer()
        return True

    def tick(self) -> None:
        """One logical time unit: heartbeats and retransmissions when leading (and, with
        ``Options.check_quorum``, stepping down after an election timeout without a majority's
        answer), else the election timer."""
        self._ticks += 1
        if self._catchup_cooldown > 0:
            self._catchup_cooldown -= 1
        if self._role == LEADER:
            if self._transfer is not None:
                self._maybe_finish_transfer()
                if self._role != LEADER:
                    return
            if self.options.check_quorum and not self._quorum_heard_recently():
                # Cut off from a majority for an election timeout: hand back what waits on us.
                self._count("stepped_down_no_quorum")
                self._step_down()
                return
            self._open_reproposals()
            self._send_deferred_accepts()
            self._heartbeat_elapsed += 1
            if self._heartbeat_elapsed >= self.options.heartbeat_ticks:
                self._start_heartbeat_round()
                self._retransmit_accepts()
            if self.options.lazy_decide:
                self._announce_decided()
            return
        self._ticks_since_heard += 1
        if self._ticks_since_heard >= self._election_deadline:
            if self.is_voter:
                own = self._own_ballot
                # The same ballot again only while the election still covers what it did: nothing
                # decided since it began (else a new one starts from there; QA, sim seed 200341 of the
                # membership mode: a candidate whose election began below a change that removed every
                # other voter asked nobody again and again, and never led its one-voter cluster), and
                # someone left to ask.
                if self._role == CANDIDATE and own is not None and not self._election_behind \
                        and self._ballot_seen_max <= own and self._first_slot == self._decided_slot + 1 \
                        and any(peer not in self._promises for peer in self._peers):
                    self._retry_prepare()
                elif self.options.pre_vote:
                    self._start_pre_vote()
                else:
                    self._start_election()
            else:
                # A learner, a joining node or a removed one: it never leads (membership rule 3 would
                # not count its own promise anyway). It listens for the leader's messages, and since
                # none came, asks a member for decided slots it may lack: a promotion it missed would
                # otherwise go unnoticed (the leader that decided it may have removed itself with it).
                self._count("not_voter_no_election")
                if self._peers:
                    self._catchup_cooldown = 0
                    self._request_catchup(self._rng.choice(self._peers))
                self._reset_election_timer()

    def postpone_election(self) -> None:
        """Restart the election timer, as a message from a leader would: the shell is not ready to lead
        (e.g. it has a backlog of decided commands to apply, and a node whose state is current should
        win instead). Does nothing while leading. Elections serve liveness only, so postponing one
        never affects safety; the shell must stop calling this once it is ready."""
        if self._role != LEADER:
            self._ticks_since_heard = 0

    def receive(self, message: Message) -> None:
        """Handle one message addressed to this node. Bad or stale input is counted, never raised: a
        message from a stranger, of no known class, or whose ballot is not a ``Ballot`` of two ints or an
        Accept's value not a tuple. (The other fields' types are the shell's to check, as
        ``kvstore.wire`` does when it decodes a frame.)"""
        sender = getattr(message, "sender", None)  # the shell may hand us anything: count it, never raise
        if sender not in self._known:
            self._count("unknown_sender")
            return
        shown = getattr(message, "ballot", Ballot)  # (Ballot itself: the message has no ballot)
        if shown is not Ballot and (type(shown) is not Ballot or type(shown.number) is not int
                                    or type(shown.node_id) is not int):
            self._count("malformed")
            return
        # Validate before learning from it: a malformed message shows no ballot in use.
        ballot = self._ballot_in_use(message)
        if ballot is not None and ballot > self._ballot_seen_max:
            self._ballot_seen_max = ballot
        match message:
            case Prepare():
                self._on_prepare(message)
            case Promise():
                self._on_promise(message)
            case Accept():
                self._on_accept(message)
            case Accepted():
                self._on_accepted(message)
            case Nack():
                self._on_nack(message)
            case Decide():
                self._on_decide(message)
            case Heartbeat():
                self._on_heartbeat(message)
            case HeartbeatAck():
                self._on_heartbeat_ack(message)
            case CatchupRequest():
                self._on_catchup_request(message)
            case CatchupReply():
                self._on_catchup_reply(message)
            case Campaign():
                self._on_campaign(message)
            case PreVote():
                self._on_pre_vote(message)
            case PreVoteReply():
                self._on_pre_vote_reply(message)
            case _:
                self._count("unknown_message")

    def _ballot_in_use(self, message: Message) -> Ballot | None:
        """The ballot a message shows to be in use (a candidate's next ballot must be above it), or
        None. Only a ballot's owner speaks for it (section 2.5: disjoint sets of numbers), so a
        proposer's message counts only when its ballot names its sender, and a reply only when its
        ballot names us (it echoes one of ours); the handlers drop the malformed ones, and a ballot
        they name must not raise the next one we pick."""
        match message:
            case Prepare() | Accept() | Heartbeat() | Decide() | Campaign():
                return message.ballot if message.ballot.node_id == message.sender else None
            case Promise() | Accepted() | HeartbeatAck() | Nack():
                return message.ballot if message.ballot.node_id == self.node_id else None
            case _:
                return None

    def take_actions(self) -> Actions:
        """Drain everything the inputs since the last call produced.

        The leader batches here: queued commands go into slots now (up to ``batch_count_max`` per slot,
        ``window`` undecided slots at most), and a Decide goes out if ``decided_slot`` advanced without
        an Accept carrying it (with ``Options.lazy_decide``, on the next tick instead). Carry the result
        out in the order of the ``Actions`` docstring.
        """
        if self._role == LEADER:
            self._fill_window()
            if not self.options.lazy_decide:
                self._announce_decided()
        self._round_in_batch = None
        actions, self._actions = self._actions, Actions()
        actions.decided_slot = self._decided_slot
        if self.options.early_accepts and actions.persist:
            self._split_early_accepts(actions)
        return actions

    def note_durable(self, decided_slot: int) -> None:
        """The shell made a batch's ``persist`` durable (and every batch before it): it reports that
        batch's ``Actions.decided_slot``. Early Accepts may announce decisions up to it
        (``Options.early_accepts``). Batches without records count too: call it for every batch."""
        assert decided_slot <= self._decided_slot, f"durable mark {decided_slot} above decided {self._decided_slot}"
        if decided_slot > self._durable_decided_slot:
            self._durable_decided_slot = decided_slot

    def _split_early_accepts(self, actions: Actions) -> None:
        """Options.early_accepts: move this batch's Accepts to ``send_early``, their decided_slot capped
        at the durable mark (one capped copy per Accept, so a broadcast is still one message)."""
        durable = self._durable_decided_slot
        capped: dict[int, Accept] = {}
        send, early = [], actions.send_early
        for to, message in actions.send:
            if type(message) is not Accept:
                send.append((to, message))
                continue
            if message.decided_slot > durable:
                copy = capped.get(id(message))
                if copy is None:
                    copy = capped[id(message)] = Accept(
                        sender=message.sender, ballot=message.ballot, slot=message.slot, value=message.value,
                        decided_slot=durable)
                message = copy
            early.append((to, message))
        actions.send = send
        if capped:
            # What the capped Accepts did not say, a Decide (or the next Accept or Heartbeat) must.
            self._announced_decided_slot = min(self._announced_decided_slot, durable)
            self._count("early_accepts_capped")

    def _announce_decided(self) -> None:
        """Leader: a Decide to everyone if ``decided_slot`` advanced since an Accept or Decide said so."""
        if self._role == LEADER and self._decided_slot > self._announced_decided_slot:
            self._send_deferred_accepts()
            self._broadcast(Decide(sender=self.node_id, ballot=self._running_ballot,
                                   decided_slot=self._decided_slot))
            self._announced_decided_slot = self._decided_slot

    def compact(self, snapshot_slot: int) -> None:
        """The state machine took a snapshot through ``snapshot_slot``: forget slots at or below it.

        Precondition (``ValueError`` if not): ``snapshot_slot <= applied_slot``. Afterwards the shell
        rewrites its log from ``durable_state()`` (after carrying out any pending ``take_actions()``).
        """
        if snapshot_slot > self._applied_slot:  # (a check, not an assert: it must hold under python -O too)
            raise ValueError(f"cannot snapshot past the applied slot ({snapshot_slot} > {self._applied_slot})")
        if snapshot_slot <= self._snapshot_slot:
            return
        self._forget_through(snapshot_slot)
        self._refresh_members()

    def install_snapshot(self, snapshot_slot: int, configs: tuple[ScheduleEntry, ...] = ()) -> None:
        """The shell replaced its state machine with a peer's snapshot at ``snapshot_slot``.

        Precondition (``ValueError`` if not): ``snapshot_slot > applied_slot`` (the shell checks before
        installing; a snapshot at or below what we applied would roll the state machine back). Slots at or below it are
        forgotten; decided slots after it are applied in the next ``take_actions()``. A leader or
        candidate steps down: it was far behind, and its open proposals cannot be checked against
        values it no longer has. ``configs`` is the snapshot's configuration schedule
        (``DurableState.configs``); empty keeps ours (a snapshot from before membership changes).
        """
        if snapshot_slot <= self._applied_slot:  # (a check, not an assert: it must hold under python -O too)
            raise ValueError(f"install_snapshot would roll the state machine back (slot {snapshot_slot}, applied "
                             f"{self._applied_slot})")
        if self._role != FOLLOWER:
            self._count("stepped_down_snapshot")
            self._step_down()
        # A shell may install a snapshot in the middle of a batch of inputs (the kvstore driver feeds
        # every queued event, then calls take_actions() once). Slots those inputs decided at or below
        # the snapshot are in the snapshot: handing them out in `apply` would replay old commands on
        # top of the newer state and move the applied slot backwards.
        self._actions.apply = [(slot, batch) for slot, batch in self._actions.apply if slot > snapshot_slot]
        if configs:
            self._schedule = ConfigSchedule(configs)
        self._forget_through(snapshot_slot)
        self._decided_slot = max(self._decided_slot, snapshot_slot)
        self._applied_slot = snapshot_slot
        self._refresh_members()
        self._advance_decided()

    def durable_state(self, *, packed: bool = False) -> DurableState:
        """What storage must hold now, to rewrite a compacted log (call after persisting actions). Its
        ``configs`` is empty: the schedule belongs with the snapshot (``schedule_through(slot)``), which
        the shell stores beside it and gives back at a restart (``DurableState.replay``).

        ``packed=True``: applied slots' values as kept (``paxos.actions.pack_value``), for a storage that
        writes them unpacking one at a time (``kvstore.storage`` does): unpacking them all here would
        allocate every command above the snapshot again at once."""
        if packed:
            return DurableState(promised=self._promised, accepted=dict(self._accepted),  # type: ignore[arg-type]
                                decided=dict(self._decided),  # type: ignore[arg-type]
                                snapshot_slot=self._snapshot_slot)
        return DurableState(promised=self._promised,
                            accepted={s: (b, _unpack(v)) for s, (b, v) in self._accepted.items()},
                            decided={s: _unpack(v) for s, v in self._decided.items()},
                            snapshot_slot=self._snapshot_slot)

    def status(self) -> Status:
        """Plain values for monitoring: role, ballot, slots, queue sizes and the bad-input counters."""
        return {
            "node_id": self.node_id,
            "role": self._role,
            "leader_id": self.leader_id,
            "is_leader": self.is_leader,
            "ballot": [self._promised.number, self._promised.node_id],
            "decided_slot": self._decided_slot,
            "applied_slot": self._applied_slot,
            "snapshot_slot": self._snapshot_slot,
            "queued": len(self._queue),
            "in_flight": len(self._in_flight),
            "pending_reads": len(self._pending_reads),
            "config": self._schedule.latest.to_dict(),
            "config_effective_slot": self._schedule.latest_effective,
            "voter": self.is_voter,
            "role_in_config": self._schedule.latest.role(self.node_id) or "none",
            "counters": dict(self._counters),
        }

    # ------------------------------------------------------------------ acceptor

    def _on_prepare(self, m: Prepare) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        if m.ballot < self._promised:
            self._nack(m.sender, m.ballot)
            return
        if m.ballot > self._promised and self._far_behind(m.first_slot):
            # The candidate is far behind what we know decided: a Promise would carry every decided
            # value from its first_slot on, however many (QA: 10,000 slots of 64 KiB values, a Promise
            # of 650 MB rebuilt for every retried Prepare, and both healthy nodes out of memory). We do
            # not promise (always safe: only a promise is a vote) and send the first of those values as
            # a catch-up answer instead; the candidate gives up this election (_on_catchup_reply), catches
            # up, and may campaign again from where it then stands. (A ballot we promised already is
            # answered as before: a leader asking a new member, whose Promise carries what it has.)
            self._count("prepare_far_behind")
            self._on_catchup_request(CatchupRequest(sender=m.sender, first_slot=m.first_slot))
            return
        if m.ballot == self._promised:
            # A duplicate Prepare: our promise is already durable (or in this batch's persist list),
            # so answer again in case the first Promise was lost.
            self._count("duplicate")
        else:
            # P1a: promise never to accept a ballot below m.ballot. Persist before the Promise leaves.
            self._raise_promise(m.ballot)
            self._leader_id = None
            self._reset_election_timer()  # give the candidate time to finish phase 1
        first = max(m.first_slot, self._snapshot_slot + 1)
        accepted = tuple(
            AcceptedEntry(slot=s, ballot=b, value=_unpack(v))
            for s, (b, v) in sorted(self._accepted.items())
            if s >= first and s not in self._decided
        )
        decided = tuple(DecidedEntry(slot=s, value=_unpack(v))
                        for s, v in sorted(self._decided.items()) if s >= first)
        self._send(m.sender, Promise(sender=self.node_id, ballot=m.ballot, first_slot=m.first_slot,
                                     accepted=accepted, decided=decided, snapshot_slot=self._snapshot_slot))

    def _far_behind(self, first_slot: int) -> bool:
        """A Promise to a candidate whose election begins at ``first_slot`` would carry more decided values
        than a catch-up answer holds (``catchup_entries_max`` of them, or ``catchup_bytes_max`` bytes)."""
        options = self.options
        if self._decided_slot - first_slot >= options.catchup_entries_max:
            return True
        size, size_max, decided = 0, options.catchup_bytes_max, self._decided
        for slot in range(max(first_slot, self._snapshot_slot + 1), self._decided_slot + 1):
            kept = decided.get(slot)
            if kept is not None:
                size += value_bytes(kept)
                if size >= size_max:
                    return True
        return False

    def _on_accept(self, m: Accept) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        if type(m.value) is not tuple:  # (the commands of a slot; kvstore.wire's decoder makes the tuple)
            self._count("malformed")
            return
        if m.ballot < self._promised:
            self._nack(m.sender, m.ballot)  # P1a: we promised a higher ballot
            return
        self._follow(m.ballot)
        if m.slot <= self._snapshot_slot:
            # We compacted this slot, so it is decided, but we no longer know what we accepted there
            # and must not vote blindly. If the leader is behind our snapshot, offer it.
            self._count("below_log_start")
            if m.decided_slot < self._snapshot_slot:
                self._offer_snapshot(m.sender)
        else:
            old = self._accepted.get(m.slot)
            if old is not None and old[0] == m.ballot and _unpack(old[1]) == m.value:
                self._count("duplicate")
            else:
                assert old is None or old[0] < m.ballot, (
                    f"safety: ballot {m.ballot} proposed two values for slot {m.slot}")
                self._accepted[m.slot] = (m.ballot, m.value)
                self._actions.persist.append(AcceptRecord(m.slot, m.ballot, m.value))
                scanned_ballot, scanned_through = self._learn_scanned
                if (scanned_ballot == m.ballot and m.slot <= scanned_through and m.slot > self._decided_slot
                        and m.slot not in self._decided):
                    # This ballot's leader announced the slot decided already, and _learn_decided_slot
                    # scanned past it before we had it: its one proposal for the slot is the chosen value.
                    self._mark_decided(m.slot, m.value)
                    self._advance_decided()
            self._send(m.sender, Accepted(sender=self.node_id, ballot=m.ballot, slot=m.slot))
        self._learn_decided_slot(m.ballot, m.decided_slot, m.sender)

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        if m.ballot < self._promised:
            self._nack(m.sender, m.ballot)
        else:
            self._follow(m.ballot)
            # Our promise now equals the leader's ballot: that is what the ack certifies.
            self._send(m.sender, HeartbeatAck(sender=self.node_id, ballot=m.ballot, seq=m.seq,
                                              decided_slot=self._decided_slot))
        # A decided slot stays decided, so learning from a stale leader's announcement is still safe.
        self._learn_decided_slot(m.ballot, m.decided_slot, m.sender)

    def _on_decide(self, m: Decide) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        if m.ballot < self._promised:
            self._nack(m.sender, m.ballot)
        else:
            self._follow(m.ballot)
        self._learn_decided_slot(m.ballot, m.decided_slot, m.sender)

    def _follow(self, ballot: Ballot) -> None:
        """A leader at ``ballot`` (>= our promise) spoke: adopt its ballot, reset the election timer."""
        if ballot > self._promised:
            self._raise_promise(ballot)
        self._leader_id = ballot.node_id
        self._leader_heard_tick = self._ticks
        self._gave_up_on_ballot = None  # (a leader speaks again: a handover of its ballot is not stale)
        self._reset_election_timer()

    def _raise_promise(self, ballot: Ballot) -> None:
        # The promised ballot never goes down (P1a is a promise about the future).
        assert ballot > self._promised, "safety: the promised ballot must only grow"
        if self._role != FOLLOWER:
            self._step_down()
        self._promised = ballot
        self._actions.persist.append(PromiseRecord(ballot))

    def _nack(self, to: int, ballot: Ballot) -> None:
        self._count("nack_sent")
        self._send(to, Nack(sender=self.node_id, ballot=ballot, promised=self._promised))

    # ------------------------------------------------------------------ learner

    def _learn_decided_slot(self, ballot: Ballot, decided_slot: int, sender: int) -> None:
        """The leader of ``ballot`` says every slot <= ``decided_slot`` is decided.

        A slot we accepted at ``ballot`` holds that ballot's one proposal for the slot, which is the
        decided value (the leader steps down rather than announce a slot where its proposal lost).
        Others we must fetch.
        """
        if decided_slot > self._decided_hint:
            self._decided_hint = decided_slot
        if decided_slot <= self._decided_slot:
            return
        first = self._decided_slot + 1
        scanned_ballot, scanned_through = self._learn_scanned
        if scanned_ballot == ballot:
            first = max(first, scanned_through + 1)
            self._learn_scanned = (ballot, max(scanned_through, decided_slot))
        else:
            self._learn_scanned = (ballot, decided_slot)
        candidates: Iterable[int]
        if decided_slot - first + 1 <= len(self._accepted):
            candidates = range(first, decided_slot + 1)  # the usual case: a short gap
        else:
            candidates = sorted(s for s in self._accepted if first <= s <= decided_slot)
        for slot in candidates:
            if slot not in self._accepted:
                continue
            accepted_ballot, value = self._accepted[slot]
            if accepted_ballot == ballot and slot not in self._decided:
                self._mark_decided(slot, _unpack(value))
        self._advance_decided()
        if self._decided_slot < decided_slot:
            self._request_catchup(sender)

    def _mark_decided(self, slot: int, value: Value) -> None:
        """``value`` is chosen at ``slot``: record it durably (the caller advances the prefix)."""
        if slot <= self._snapshot_slot:
            return
        old = self._decided.get(slot)
        if old is not None:
            assert _unpack(old) == value, f"safety: slot {slot} decided {old!r} and then {value!r}"
            return
        self._decided[slot] = value
        self._actions.persist.append(DecideRecord(slot, value))
        if self._role == LEADER:
            proposal = self._in_flight.pop(slot, None)
            if (proposal is not None and proposal.value != value) or slot >= self._next_slot:
                # Someone decided a slot against our proposal, or beyond what we opened: a higher
                # ballot won a majority, so we are stale. Stop before we announce a decided_slot that
                # would let followers take our losing proposal for the decided value.
                self._count("stepped_down_stale")
                self._step_down()

    def _advance_decided(self) -> None:
        """Extend the decided prefix and hand out every newly contiguous slot in ``apply``."""
        while self._decided_slot + 1 in self._decided:
            self._decided_slot += 1
        changed = False
        for slot in range(self._applied_slot + 1, self._decided_slot + 1):
            batch = _unpack(self._decided[slot])
            self._actions.apply.append((slot, batch))
            for command in batch:
                if is_change(command):
                    changed |= self._apply_change(slot, command)
            self._keep_packed(slot, batch)
        self._applied_slot = max(self._applied_slot, self._decided_slot)
        if changed or self._decided_slot + 1 >= self._members_until:
            self._refresh_members()
        self._serve_reads()

    def _keep_packed(self, slot: int, batch: Value) -> None:
        """Slot ``slot`` was handed out: keep its value packed from now on (module docstring), and the
        accepted value too when it is the same (nearly always: what this node accepted was chosen)."""
        packed = _pack(batch)
        self._decided[slot] = packed
        accepted = self._accepted.get(slot)
        if accepted is not None and (accepted[1] is batch or accepted[1] == batch):
            self._accepted[slot] = (accepted[0], packed)

    def _apply_change(self, slot: int, command: bytes) -> bool:
        """A decided configuration change at ``slot``, applied in slot order by every replica alike."""
        self._change_queued = False  # ours, or one that beat ours: either way the next may be proposed
        if not self._schedule.apply(slot, command):
            self._count("config_change_ignored")
            return False
        self._count("config_changes")
        if self._role == LEADER and not self._schedule.latest.is_voter(self.node_id):
            # We are being removed: hand over to the voter that answers fastest.
            target = next((p for p in self._preferred if self._schedule.latest.is_voter(p)), None)
            if target is not None:
                self._start_transfer(target)
        return True

    def _refresh_members(self) -> None:
        """Recompute who we talk to and whose majorities count, after the schedule or decided slot moved."""
        self.members_version += 1
        first = self._decided_slot + 1
        self._active = self._schedule.from_slot(first)
        members = {n for config in self._active for n in config.members}
        self._peers = tuple(sorted(members - {self.node_id}))
        self._known = frozenset(n for _e, _s, c in self._schedule.entries for n in c.members) - {self.node_id}
        later = [e for e, _s, _c in self._schedule.entries if e > first]
        self._members_until = min(later) if later else 1 << 62
        new = [p for p in self._peers if p not in self._preferred]
        self._preferred = [p for p in self._preferred if p in members] + new
        if self._role == LEADER and new:
            # Ask new members for their promise of our ballot now, so that promoting one later finds
            # it in the promise set instead of making us run phase 1 again (_on_late_promise).
            prepare = Prepare(sender=self.node_id, ballot=self._running_ballot, first_slot=self._first_slot)
            for peer in new:
                self._send(peer, prepare)

    def _request_catchup(self, to: int) -> None:
        if self._catchup_cooldown > 0:
            return
        self._catchup_cooldown = self.options.heartbeat_ticks
        self._send(to, CatchupRequest(sender=self.node_id, first_slot=self._decided_slot + 1))

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        entries: list[DecidedEntry] = []
        slot = max(m.first_slot, self._snapshot_slot + 1)
        size, size_max = 0, self.options.catchup_bytes_max
        while slot in self._decided and len(entries) < self.options.catchup_entries_max and size < size_max:
            value = _unpack(self._decided[slot])
            size += value_bytes(value)
            entries.append(DecidedEntry(slot=slot, value=value))
            slot += 1
        needs_snapshot = self._snapshot_slot >= m.first_slot
        if needs_snapshot:
            self._offer_snapshot(m.sender)
        if entries or needs_snapshot:
            self._send(m.sender, CatchupReply(sender=self.node_id, entries=tuple(entries),
                                              snapshot_slot=self._snapshot_slot))

    def _on_catchup_reply(self, m: CatchupReply) -> None:
        before = self._decided_slot
        for entry in m.entries:
            if entry.slot > self._snapshot_slot:
                self._mark_decided(entry.slot, entry.value)
        self._advance_decided()
        if m.snapshot_slot > self._decided_hint:
            self._decided_hint = m.snapshot_slot
        if self._role == CANDIDATE and self._decided_slot >= self._first_slot and not self._election_behind:
            # Slots of our election are decided elsewhere (an acceptor far ahead answered our Prepare
            # with this instead of a promise: _on_prepare): this election cannot be won by us. Catch up,
            # and start a new one from there at the next timeout (tick).
            self._election_behind = True
            self._count("election_behind")
        full = (len(m.entries) >= self.options.catchup_entries_max
                or sum(value_bytes(e.value) for e in m.entries) >= self.options.catchup_bytes_max)
        if self._decided_slot > before and (self._decided_slot < self._decided_hint or full) and m.entries:
            # The reply made progress and more is known (or, a full reply, likely) to be decided: ask
            # again right away.
            self._catchup_cooldown = 0
            self._request_catchup(m.sender)

    def _offer_snapshot(self, to: int) -> None:
        if to not in self._actions.snapshot_to:
            self._actions.snapshot_to.append(to)

    def _forget_through(self, slot: int) -> None:
        self._schedule.forget_through(slot)
        self._snapshot_slot = slot
        self._accepted = {s: v for s, v in self._accepted.items() if s > slot}
        self._decided = {s: v for s, v in self._decided.items() if s > slot}

    # ------------------------------------------------------------------ candidate

    def _draw_election_deadline(self) -> int:
        if self._schedule.latest.node_ids == (self.node_id,):
            # The only voter (a cluster of one, as after its restart): no leader to hear from and
            # nobody to compete with, so waiting an election timeout would only delay serving.
            return 1
        timeout = self.options.election_timeout_ticks
        return timeout + self._rng.randrange(timeout)

    def _reset_election_timer(self) -> None:
        self._ticks_since_heard = 0
        self._election_deadline = self._draw_election_deadline()

    def _start_pre_vote(self) -> None:
        """``Options.pre_vote``: ask the others whether they would take part in an election now, without
        raising our promise (nothing is persisted); ``_on_pre_vote_reply`` starts it on a majority's yes."""
        self._count("pre_votes")
        self._gave_up_on_ballot = self._promised
        if self._role != FOLLOWER:
            self._step_down()  # a candidate whose election failed asks again first
        self._leader_id = None
        self._pre_vote_ballot = max(self._ballot_seen_max, self._promised).next_for(self.node_id)
        self._pre_votes = {self.node_id}
        self._reset_election_timer()
        self._broadcast(PreVote(sender=self.node_id, ballot=self._pre_vote_ballot, decided_slot=self._decided_slot))
        self._maybe_start_election()

    def _on_pre_vote(self, m: PreVote) -> None:
        """Yes if we heard from no leader for an election timeout (a leader, or a follower that hears
        one, says no: the asker is cut off from it, not the cluster) and the asker is not far behind
        what we know decided (as for a Prepare: rule 39). An asker behind what we know decided, however
        little, also gets catch-up. No state changes: a pre-vote is a question, not a promise."""
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        behind = self._decided_slot - m.decided_slot > self.options.catchup_entries_max
        # (Not the election timer: a lazy learner postpones its own election, not its judgement of the
        # leader. Nor the ballot: one below our promise learns of it from the Nack its Prepare gets.)
        silent = self._ticks - self._leader_heard_tick >= self.options.election_timeout_ticks
        granted = self._role != LEADER and not behind and (self._leader_id is None or silent)
        self._count("pre_vote_granted" if granted else "pre_vote_refused")
        if self._decided_slot > m.decided_slot:
            # Behind at all, not only far: what it missed may be why it heard no leader. A node removed
            # while it was cut off learns so only from the change's slot (it does not campaign once it
            # knows); refused without it, it asked again for ever (QA: a flaky membership test).
            self._on_catchup_request(CatchupRequest(sender=m.sender, first_slot=m.decided_slot + 1))
        self._send(m.sender, PreVoteReply(sender=self.node_id, ballot=m.ballot, granted=granted))

    def _on_pre_vote_reply(self, m: PreVoteReply) -> None:
        if m.ballot != self._pre_vote_ballot or not m.granted:
            return
        self._pre_votes.add(m.sender)
        self._maybe_start_election()

    def _maybe_start_election(self) -> None:
        """Start the election we asked about once a majority of every configuration from our next slot
        said yes (ourselves included), unless a leader was heard from meanwhile."""
        if self._pre_vote_ballot is None or self._role != FOLLOWER:
            return
        if self._leader_id is not None:  # a leader spoke since we asked: follow it
            self._pre_vote_ballot = None
            return
        for config in self._schedule.from_slot(self._decided_slot + 1):
            if not config.is_quorum(self._pre_votes):
                return
        self._start_election()

    def _start_election(self) -> None:
        """Phase 1a for every undecided slot at once (Paxos Made Simple, section 3)."""
        self._count("elections")
        self._pre_vote_ballot = None
        if self._role != FOLLOWER:
            self._step_down()
        # A ballot above every ballot seen (section 2.2); the node id in it makes it ours alone.
        top = max(self._ballot_seen_max, self._promised)
        ballot = top.next_for(self.node_id)
        self._raise_promise(ballot)  # our own promise, durable before the Prepare leaves
        self._ballot_seen_max = ballot
        self._own_ballot = ballot
        self._role = CANDIDATE
        self._leader_id = None
        self._first_slot = self._decided_slot + 1
        self._promises = {}
        self._election_behind = False
        self._reset_election_timer()
        self._broadcast(Prepare(sender=self.node_id, ballot=ballot, first_slot=self._first_slot))
        self._maybe_become_leader()

    def _retry_prepare(self) -> None:
        """Our phase 1 timed out with no ballot above ours in sight: ask the voters that have not promised
        again, at the same ballot, rather than start over at a higher one. A Prepare or a Promise may have
        been lost (the acceptor answers a duplicate), or an acceptor is slow to make its promise durable,
        and a higher ballot would make it write one more. (QA, a gray failure: with a voter the majority
        needed taking 0.5 s and more per fsync, every election timed out before that voter's promise
        was durable, and elections at ever higher ballots followed one another for as long as its disk
        stayed slow.) A higher ballot, from a Nack or any message, still makes the next try a new
        election (``tick``); so does a promise that reports compacted slots (``_election_behind``)."""
        self._count("prepare_retries")
        self._reset_election_timer()
        assert self._own_ballot is not None  # (a candidate's)
        prepare = Prepare(sender=self.node_id, ballot=self._own_ballot, first_slot=self._first_slot)
        for peer in self._peers:
            if peer not in self._promises:
                self._send(peer, prepare)

    def _on_promise(self, m: Promise) -> None:
        if (self._role == LEADER and m.ballot == self._own_ballot and m.first_slot == self._first_slot
                and m.sender not in self._promised_by):
            self._on_late_promise(m)
            return
        if self._role != CANDIDATE or m.ballot != self._own_ballot or m.first_slot != self._first_slot:
            self._count("stale_promise")
            return
        if m.sender in self._promises:
            self._count("duplicate")
            return
        self._promises[m.sender] = m
        for entry in m.decided:
            self._mark_decided(entry.slot, entry.value)
        self._advance_decided()
        if m.snapshot_slot >= self._first_slot:
            # The acceptor compacted slots we have not decided: we cannot re-propose them, so we
            # fetch its snapshot and try again in a later election.
            self._election_behind = True
            self._count("election_behind")
            self._catchup_cooldown = 0
            self._request_catchup(m.sender)
        self._maybe_become_leader()

    def _on_late_promise(self, m: Promise) -> None:
        """A promise for our ballot that came after we won (a slow acceptor, or a learner we asked: see
        ``_refresh_members``). It joins the promise set that membership rule 3 checks for later slots
        when it reports nothing at or above ``_next_slot``: then the values of those slots are still
        free under the larger set, as under the one we won with. Otherwise it is left out, and a slot
        that needs it makes us run phase 1 again (``_open_gate``)."""
        self._peer_heard[m.sender] = self._ticks  # it answered our ballot either way (check_quorum)
        if m.snapshot_slot >= self._next_slot or any(e.slot >= self._next_slot for e in m.accepted) \
                or any(e.slot >= self._next_slot for e in m.decided):
            self._count("late_promise_ignored")
            return
        self._promised_by.add(m.sender)
        self._count("late_promise_counted")

    def _maybe_become_leader(self) -> None:
        if self._role != CANDIDATE or self._election_behind:
            return
        if not self.is_voter:
            # The promises taught us a change that removed us (or made us a learner): we never lead.
            self._count("not_voter_no_lead")
            self._step_down()
            return
        # A majority of every configuration that governs a slot from first_slot on (as far as we know
        # them; a leader meeting a later one without its majority runs phase 1 again: _open_gate).
        promised = {self.node_id, *self._promises}
        for config in self._schedule.from_slot(self._first_slot):
            if not config.is_quorum(promised):
                return
        self._become_leader()

    def _own_promise(self) -> Promise:
        first = self._first_slot
        return Promise(
            sender=self.node_id, ballot=self._running_ballot, first_slot=first,
            accepted=tuple(AcceptedEntry(slot=s, ballot=b, value=_unpack(v))
                           for s, (b, v) in sorted(self._accepted.items()) if s >= first),
            decided=tuple(DecidedEntry(slot=s, value=_unpack(v))
                          for s, v in sorted(self._decided.items()) if s >= first),
            snapshot_slot=self._snapshot_slot,
        )

    def _reproposals(self, promises: dict[int, Promise]) -> dict[int, Value]:
        """The value to re-propose at each slot from ``first_slot`` to the highest reported slot.

        ``promises`` maps node id to ``Promise`` for a majority (our own included). Per slot: a
        reported decided value as it is; else the value accepted at the highest ballot, which P2c
        (Paxos Made Simple, section 2.2) requires; else the no-op ``()`` to fill the hole (section 3).
        Overridable only so that a test can show what breaks when P2c is ignored.
        """
        decided: dict[int, Value] = {}
        best: dict[int, tuple[Ballot, Value]] = {}
        for promise in promises.values():
            for decided_entry in promise.decided:
                decided[decided_entry.slot] = decided_entry.value
            for entry in promise.accepted:
                if entry.slot not in best or entry.ballot > best[entry.slot][0]:
                    best[entry.slot] = (entry.ballot, entry.value)
        reported = [s for s in (*decided, *best) if s >= self._first_slot]
        if not reported:
            return {}
        values: dict[int, Value] = {}
        for slot in range(self._first_slot, max(reported) + 1):
            if slot in decided:
                values[slot] = decided[slot]
            elif slot in best:
                values[slot] = best[slot][1]
            else:
                values[slot] = ()
        return values

    # ------------------------------------------------------------------ leader

    def _become_leader(self) -> None:
        promises = dict(self._promises)
        promises[self.node_id] = self._own_promise()
        values = self._reproposals(promises)
        self._role = LEADER
        self._leader_id = self.node_id
        self._count("became_leader")
        self._in_flight = {}
        self._deferred = []
        self._transfer = None
        # Slots we compacted during the election are decided and gone from our log: followers fetch
        # them with CatchupRequest, and our ballot proposes nothing there.
        self._next_slot = max(self._first_slot, self._snapshot_slot + 1)
        self._reproposed_slot = max(values, default=self._first_slot - 1)
        self._pending_reproposals = deque((slot, values[slot]) for slot in sorted(values) if slot >= self._next_slot)
        self._announced_decided_slot = 0
        self._heartbeat_elapsed = 0
        self._heartbeat_acks = {}
        self._promised_by = set(promises)
        # The promises that elected us are answers at our ballot: the check_quorum clock starts now.
        self._peer_heard = {peer: self._ticks for peer in promises if peer != self.node_id}
        self._promises = {}
        self._open_reproposals()
        if self._role == LEADER:
            self._start_heartbeat_round()  # tell everyone who leads now, even with nothing to propose

    def _open_gate(self, slot: int) -> bool:
        """May this leader open ``slot`` now? Membership rules 2 and 3 (paxos.membership)."""
        if slot > self._decided_slot + self._schedule.latest.alpha:
            return False  # config(slot) depends on slots not decided yet: wait for them
        if self._schedule.for_slot(slot).is_quorum(self._promised_by):
            return True
        # A new configuration whose voters' majority never promised our ballot: phase 1 again.
        if self.is_voter:
            self._count("reelect_for_config")
            self._reelect()
        else:
            # We were removed and cannot run phase 1 (we never campaign): leading on, we would keep
            # the voters from electing one of theirs with our heartbeats for ever. Step down.
            self._count("stepped_down_not_voter")
            self._step_down()
        return False

    def _reelect(self) -> None:
        """Run phase 1 again at a higher ballot, keeping the queued commands for when we win."""
        queue, self._queue = self._queue, deque()
        change_queued = self._change_queued  # _step_down forgets it; the change is still in the queue
        self._start_election()
        self._queue = queue  # dropped in _step_down if we lose
        self._change_queued = change_queued

    def _open_reproposals(self) -> None:
        """Open the re-proposals the election found, in slot order, as far as the gate allows."""
        while self._role == LEADER and self._pending_reproposals:
            slot, value = self._pending_reproposals[0]
            if slot < self._next_slot:  # decided and compacted meanwhile
                self._pending_reproposals.popleft()
                continue
            if not self._open_gate(slot):
                return
            self._pending_reproposals.popleft()
            self._open_slot(slot, value)

    def _open_slot(self, slot: int, value: Value) -> None:
        """Phase 2a for ``slot``: accept it ourselves (durably), then ask everyone else."""
        assert slot > self._snapshot_slot and slot >= self._next_slot, f"slot {slot} reused"
        assert slot <= self._decided_slot + self._schedule.latest.alpha, f"safety: config of slot {slot} unknown"
        config = self._schedule.for_slot(slot)
        assert config.is_quorum(self._promised_by), f"safety: no promise majority of slot {slot}'s voters"
        ballot = self._running_ballot
        self._next_slot = slot + 1
        self._accepted[slot] = (ballot, value)
        self._actions.persist.append(AcceptRecord(slot, ballot, value))
        accept = Accept(sender=self.node_id, ballot=ballot, slot=slot, value=value, decided_slot=self._decided_slot)
        if self.options.thrifty:
            fast = self._fast_followers(config)
            for peer in fast:
                self._send(peer, accept)
            later = tuple(p for p in self._preferred if p not in fast)
            if later:
                self._deferred.append((slot, value, later))
                if len(self._deferred) >= self.options.window:
                    self._send_deferred_accepts()  # bounds what waits for a tick
        else:
            self._broadcast(accept)
        self._announced_decided_slot = max(self._announced_decided_slot, self._decided_slot)
        if slot in self._decided:
            # A re-proposed decided value: already chosen, sent only so followers accept it at our
            # ballot and can learn it from our decided_slot.
            assert _unpack(self._decided[slot]) == value, f"safety: re-proposal at {slot} differs from decided"
            return
        own = {self.node_id} if config.is_voter(self.node_id) else set()
        self._in_flight[slot] = _Proposal(value, own, self._ticks, config.node_ids, config.quorum_size)
        self._check_decided(slot)

    def _fast_followers(self, config: Config) -> list[int]:
        """Thrifty: the voters of ``config`` a majority needs besides us, fastest first."""
        need = config.quorum_size - (1 if config.is_voter(self.node_id) else 0)
        return [p for p in self._preferred if config.is_voter(p)][:need]

    def _check_decided(self, slot: int) -> None:
        proposal = self._in_flight.get(slot)
        if proposal is not None and len(proposal.acks) >= proposal.quorum:
            self._mark_decided(slot, proposal.value)
            self._advance_decided()

    def _fill_window(self) -> None:
        """Open slots for queued commands, ``batch_count_max`` per slot, ``window`` undecided at most."""
        if self._pending_reproposals:
            self._open_reproposals()
            if self._pending_reproposals:
                return  # re-proposals go first, in slot order
        if self._transfer is not None:
            self._maybe_finish_transfer()
            return  # handing over: open nothing new
        queue = self._queue
        count_max, bytes_max = self.options.batch_count_max, self.options.batch_bytes_max
        while self._role == LEADER and queue and len(self._in_flight) < self.options.window:
            if not self._open_gate(self._next_slot):
                return
            batch = [queue.popleft()]
            size = len(batch[0])
            while queue and len(batch) < count_max and size + len(queue[0]) <= bytes_max:
                command = queue.popleft()
                size += len(command)
                batch.append(command)
            self._open_slot(self._next_slot, tuple(batch))
        # A decided change governs from alpha slots after its own: with nothing else to propose, fill
        # the slots before that with no-ops now, so that it is in effect one round trip later.
        effective = self._schedule.latest_effective
        while (self._role == LEADER and not queue and self._next_slot < effective
               and len(self._in_flight) < self.options.window and self._open_gate(self._next_slot)):
            self._open_slot(self._next_slot, ())

    def _on_accepted(self, m: Accepted) -> None:
        if self._role != LEADER or m.ballot != self._own_ballot:
            self._count("stale_accepted")
            return
        self._peer_heard[m.sender] = self._ticks
        proposal = self._in_flight.get(m.slot)
        if proposal is None:
            # The slot is decided already (or was never ours): with thrifty Accepts, the slower
            # follower's vote comes after the decision, about once per slot; counted apart from the
            # acceptor's duplicates so that those stay visible.
            self._count("late_accepted")
            return
        if m.sender not in proposal.voters:
            self._count("accepted_not_voter")  # a learner's vote (or an old voter's): counts for nothing
            return
        proposal.acks.add(m.sender)
        if self.options.thrifty and m.sender not in self._fast_followers(self._schedule.for_slot(m.slot)):
            # It answered while the slot was undecided, ahead of a fast follower: it goes first now.
            # What was held back goes out first, so that every follower still gets slots in order.
            self._send_deferred_accepts()
            self._count("fast_follower_changed")
            self._preferred.remove(m.sender)
            self._preferred.insert(0, m.sender)
        # Decided: a majority accepted one proposal (Paxos Made Simple, section 2.3).
        self._check_decided(m.slot)

    def _send_deferred_accepts(self) -> None:
        """Thrifty: the Accepts held back for the slower followers, carrying today's decided_slot.

        Called on every tick, and before anything else that tells followers a decided_slot (Heartbeat,
        Decide), so that a slower follower never hears of a decision before the Accept it needs to
        learn it (it would ask for a catch-up instead).
        """
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, []
        ballot, decided_slot = self._running_ballot, self._decided_slot
        for slot, value, peers in deferred:
            # A follower handles these one by one: telling it of decisions beyond this slot before
            # it has the next Accepts would make it ask for a catch-up.
            accept = Accept(sender=self.node_id, ballot=ballot, slot=slot, value=value,
                            decided_slot=min(decided_slot, slot))
            for peer in peers:
                self._send(peer, accept)

    def _on_nack(self, m: Nack) -> None:
        if m.promised > self._ballot_seen_max:
            self._ballot_seen_max = m.promised
        if self._role == FOLLOWER or m.ballot != self._own_ballot or not m.promised > self._own_ballot:
            self._count("stale_nack")
            return
        # An acceptor promised a higher ballot, so our ballot can no longer win a majority for sure.
        self._count("stepped_down_nack")
        self._step_down()

    def _retransmit_accepts(self) -> None:
        """Resend each undecided proposal to the nodes that have not accepted it (messages get lost).

        Only proposals open for a whole heartbeat period: one opened since is most likely still on
        its way (or, with thrifty Accepts, was only now sent to the slower followers), and resending a
        slot of hundreds of commands costs every receiver a decode and a log write. With
        ``Options.patient_resends``, to a peer only an election timeout after the last send to it, or
        once the shell said it lost messages to it since that send (``note_messages_lost``).
        """
        oldest = self._ticks - self.options.heartbeat_ticks
        patient = self.options.patient_resends
        for slot, proposal in sorted(self._in_flight.items()):
            if proposal.opened > oldest:
                continue
            accept = None
            for peer in self._peers:
                if peer in proposal.acks:
                    continue
                last = proposal.resent.get(peer, proposal.opened)  # the last send to that peer
                if patient and last > self._lost_at.get(peer, -1) and (
                        self._ticks - last < self.options.election_timeout_ticks):
                    self._count("resend_held_back")
                    continue
                if accept is None:
                    accept = Accept(sender=self.node_id, ballot=self._running_ballot, slot=slot,
                                    value=proposal.value, decided_slot=self._decided_slot)
                self._send(peer, accept)
                proposal.resent[peer] = self._ticks

    def note_messages_lost(self, peer: int) -> None:
        """The shell lost messages to ``peer`` (its link reconnected, or dropped what it had no room for):
        with ``Options.patient_resends``, every Accept last sent to it before now goes again on the next
        resends (once open for a heartbeat period), whether it answers or not."""
        self._lost_at[peer] = self._ticks

    def _start_heartbeat_round(self) -> int:
        """Send Heartbeat(seq) to all; reads waiting for ``seq`` are confirmed by a majority of acks.

        Reads in one batch share one round: its messages leave only after ``take_actions()``, so the
        round begins after every read of the batch arrived.
        """
        if self._round_in_batch is not None:
            return self._round_in_batch
        self._heartbeat_seq += 1
        seq = self._heartbeat_seq
        self._round_in_batch = seq
        self._heartbeat_elapsed = 0
        self._send_deferred_accepts()
        self._broadcast(Heartbeat(sender=self.node_id, ballot=self._running_ballot,
                                  decided_slot=self._decided_slot, seq=seq))
        self._announced_decided_slot = max(self._announced_decided_slot, self._decided_slot)
        self._heartbeat_acks[seq] = {self.node_id}
        self._forget_old_rounds()
        self._check_round(seq)
        return seq

    def _forget_old_rounds(self) -> None:
        """Keep the rounds a waiting read began in, and the ``ROUNDS_UNCONFIRMED_MAX`` newest; forget the
        rest, so that a leader cut off from its majority does not keep one round per heartbeat.

        A forgotten round is never confirmed (its late acks are ignored), which is safe: a read waits for
        a confirmed round with a seq at or above its own, and every round it may count on began after it
        arrived. A read's own round is kept until it is confirmed or we step down; a later confirmed round
        serves it too. The newest rounds besides it are kept because an ack may take longer than a
        heartbeat period to come back (a read whose own round lost its acks needs one of them).
        """
        if len(self._heartbeat_acks) <= ROUNDS_UNCONFIRMED_MAX:
            return
        keep = {seq for _read_id, _index, seq in self._pending_reads}
        keep.update(sorted(self._heartbeat_acks)[-ROUNDS_UNCONFIRMED_MAX:])
        self._heartbeat_acks = {seq: acks for seq, acks in self._heartbeat_acks.items() if seq in keep}

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        if self._role != LEADER or m.ballot != self._own_ballot:
            self._count("stale_heartbeat_ack")
            return
        self._peer_heard[m.sender] = self._ticks
        if m.decided_slot > self._peer_decided.get(m.sender, -1):
            self._peer_decided[m.sender] = m.decided_slot
        acks = self._heartbeat_acks.get(m.seq)
        if acks is None:
            return  # a round already confirmed (and pruned) or unknown
        acks.add(m.sender)
        self._check_round(m.seq)

    def _check_round(self, seq: int) -> None:
        acks = self._heartbeat_acks.get(seq, ())
        # Membership rule 4: a majority of every configuration that governs a slot past decided_slot.
        for config in self._active:
            if not config.is_quorum(acks):
                return
        # A majority still promised our ballot after the round began, so no higher ballot could have
        # decided anything before then (its promise majority would overlap this one).
        self._confirmed_seq = max(self._confirmed_seq, seq)
        for old in [s for s in self._heartbeat_acks if s <= self._confirmed_seq]:
            del self._heartbeat_acks[old]
        self._serve_reads()

    def _serve_reads(self) -> None:
        if self._role != LEADER or not self._pending_reads:
            return
        waiting = []
        for read_id, index, seq in self._pending_reads:
            if seq <= self._confirmed_seq and index <= self._applied_slot:
                self._actions.reads.append((read_id, index))
            else:
                waiting.append((read_id, index, seq))
        self._pending_reads = waiting

    def _start_transfer(self, target: int) -> None:
        """Hand over to ``target`` within an election timeout. Only a decided slot it reports from now
        on counts as caught up: an older report would not show that it is still up."""
        self._transfer = (target, self._ticks + self.options.election_timeout_ticks)
        self._peer_decided.pop(target, None)
        self._count("transfer_started")

    def _maybe_finish_transfer(self) -> None:
        """Handing over: once every slot we opened is decided and the target reported (HeartbeatAck) that
        it decided them too, tell the target to campaign and step down."""
        assert self._transfer is not None, "called only while handing over"
        target, deadline = self._transfer
        if self._ticks > deadline or target not in self._peers:
            self._count("transfer_abandoned")
            self._transfer = None
            if not self.is_voter:
                # A removed leader does not lead on as a non-voter: the voters elect one of theirs.
                self._count("stepped_down_not_voter")
                self._step_down()
            return
        if self._in_flight or self._pending_reproposals:
            return
        if self._peer_decided.get(target, -1) < self._decided_slot:
            # Not caught up (or down): wait for its next HeartbeatAck. Handing over to a node that
            # does not answer would leave the cluster without a leader for an election timeout.
            return
        self._count("transfer_sent")
        self._send_deferred_accepts()
        self._send(target, Campaign(sender=self.node_id, ballot=self._running_ballot, decided_slot=self._decided_slot))
        self._step_down()  # our election timer restarts, so the target's Prepare arrives first

    def _on_campaign(self, m: Campaign) -> None:
        """The leader hands over to us: campaign now, without waiting for an election timeout."""
        if m.ballot < self._promised or m.ballot.node_id != m.sender or self._role != FOLLOWER:
            self._count("stale_campaign")
            return
        if self._gave_up_on_ballot is not None and m.ballot <= self._gave_up_on_ballot:
            # We stopped hearing this leader for an election timeout before its handover arrived: the
            # others may have elected a new leader meanwhile (at a round our ballot would outrank).
            self._count("stale_campaign")
            return
        if not self.is_voter:
            self._count("campaign_not_voter")
            return
        self._count("campaigned_on_transfer")
        self._start_election()

    def _quorum_heard_recently(self) -> bool:
        """Options.check_quorum: did a majority of every configuration that governs a slot past
        ``decided_slot`` (membership rule 4, as for a read's round) answer our ballot within the last
        ``election_timeout_ticks`` ticks? We count ourselves (a voter), so a cluster of one always has."""
        since = self._ticks - self.options.election_timeout_ticks
        heard = {self.node_id, *(peer for peer, tick in self._peer_heard.items() if tick > since)}
        return all(config.is_quorum(heard) for config in self._active)

    def _step_down(self) -> None:
        """Stop being candidate or leader; hand back what we can no longer serve."""
        if self._role == LEADER:
            self._actions.rejected_reads.extend(read_id for read_id, _, _ in self._pending_reads)
        # A candidate may hold a queue too (_reelect keeps it for the election it runs).
        self._actions.dropped_proposals.extend(self._queue)
        # A change of ours in a slot may still be decided by the next leader; the epoch it names makes
        # a second one based on the same epoch harmless (only the first applies), so allow the next.
        self._change_queued = False
        self._queue.clear()
        self._pending_reproposals = deque()
        self._transfer = None
        self._pending_reads = []
        self._deferred = []
        self._in_flight = {}
        self._promises = {}
        self._heartbeat_acks = {}
        self._peer_heard = {}
        self._role = FOLLOWER
        self._leader_id = None
        self._own_ballot = None
        self._reset_election_timer()

    # ------------------------------------------------------------------ helpers

    def _send(self, to: int, message: Message) -> None:
        self._actions.send.append((to, message))

    def _broadcast(self, message: Message) -> None:
        for peer in self._peers:
            self._actions.send.append((peer, message))

    def _count(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1
