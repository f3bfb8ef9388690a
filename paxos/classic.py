"""The classic engine: Multi-Paxos assembled from the seed's single-decree classes, one instance per slot.

Theory of operation
-------------------
``ClassicReplica`` is a drop-in for ``paxos.replica.Replica``: the same constructor, inputs and
properties, the same messages (``paxos.messages``), the same ``Actions`` and the same durable records
(``PromiseRecord``, ``AcceptRecord``, ``DecideRecord`` folded by ``DurableState``), so that the shell,
the storage and the wire do not know which engine runs. What differs is who decides: here every
per-slot decision is carried out by the essential-paxos 2.0 classes, unmodified, and leadership by
``paxos.functional.HeartbeatNode``. This module is the glue; it owns no Paxos rule of its own except
where this docstring says so. Like the core it does no I/O, reads no clock (time is the count of
``tick()`` calls) and takes its randomness only from the ``rng`` given to the constructor.

Who does what
~~~~~~~~~~~~~

* Per slot, the roles of ``paxos.practical`` (Paxos Made Simple, section 3: the command of slot i is
  chosen by the i-th instance of the consensus algorithm):

  - a ``practical.Acceptor`` on every node, created when the first Accept for the slot arrives and
    kept until compaction (it is the slot's durable state: ``promised_id``, ``accepted_id``,
    ``accepted_value``);
  - on the leader, a ``practical.Proposer`` and a ``practical.Learner``, created when the leader
    opens the slot and released when the slot is decided.

  Each object talks to a ``_SlotMessenger`` that knows its slot and turns every callback into one of
  the shared messages, collected in ``Actions`` (or handed back to this node, see "loopback").
* Node-wide, one ``_Elector``: a ``functional.HeartbeatNode`` whose clock is the tick count. Its
  proposer runs phase 1 for the whole log (its ``send_prepare`` becomes the one ``Prepare`` message),
  its acceptor holds the node's promise, which covers every slot (the *frontier*: the state of a slot
  no Accept has reached yet), and its heartbeat, liveness window and NACK rules elect the leader.

Proposal ids and ballots
~~~~~~~~~~~~~~~~~~~~~~~~
``ProposalID(number, uid)`` and ``Ballot(number, node_id)`` are the same pair: the uid is the node id
(an int >= 1), both order by number, then id. ``Ballot.ZERO`` (nothing promised or accepted) is
``None``, which the seed orders below every id. ``proposal_id_of`` and ``ballot_of`` convert at the
boundary: the seed's objects hold proposal ids, messages and records hold ballots.

Phase 1 once, carried into every slot
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A candidate's elector prepares a proposal id ``b``; the ``Prepare(b, first_slot)`` covers every slot
from ``first_slot`` (our decided slot + 1) on. An acceptor answering it feeds ``recv_prepare`` to its
elector and to every slot acceptor it has; each answers through the persistence protocol below, and
the node assembles their answers into one ``Promise``: the elector's answer grants it, each slot
acceptor's answer becomes an ``AcceptedEntry`` (slots decided here are reported as ``DecidedEntry``
instead, as in the core). A slot without an acceptor has accepted nothing: its answer is the
elector's. The elector counts the Promises (a Promise from an acceptor whose snapshot covers slots
from ``first_slot`` cannot report them, so it is not counted, and we fetch its snapshot). When the
elector has its quorum, every slot from ``first_slot`` on has its phase 1 done at ``b`` by that quorum.

So the leader never sends a per-slot Prepare. To open slot ``s`` it builds a ``practical.Proposer``,
prepares it *passively* (``active = False``: the proposal id becomes ``b``, nothing is sent, because
the election's Prepare was this instance's phase 1), and feeds it the quorum's Promises restricted to
``s``: ``recv_promise(sender, b, accepted id at s or None, value at s or None)``. At the quorum the
proposer becomes leader of the slot and applies P2c itself (section 2.2): if a promise reported a
value it proposes the one of the highest proposal id, else it takes ours (``set_proposal``: a batch of
commands, or the no-op ``()`` for a hole below the highest reported slot). For a slot above every
reported one each promise restricted to it is "nothing accepted", and stays true: an acceptor that
promised ``b`` accepts nothing below ``b`` afterwards. The leader keeps only the quorum's node ids to
carry into new slots; this is cocagne's multi-paxos-example's master lease trick (a new instance fed
the promises it would get) made exact. Slots known decided at election time are not re-proposed:
followers that lack them fetch them (catch-up).

Persistence: practical's protocol into ``Actions.persist``
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
A ``practical.Acceptor`` that promises or accepts something new only marks its reply pending
(``persistance_required``). After each message this node handles, ``_flush`` writes the state of
every such acceptor as records: one ``PromiseRecord`` for the node's promise (every acceptor holds the
same one), an ``AcceptRecord(slot, ballot, value)`` per new acceptance, appended to
``Actions.persist``; then it calls ``persisted()``, which releases the Promise or Accepted into
``Actions.send``. The ``Actions`` contract makes that safe: the shell makes ``persist`` durable
before it sends anything of the batch, so no Promise or Accepted leaves before the record that backs
it (the simulator checks this for every message). Inside the node the release is immediate, as the
core counts its own votes in memory: everything others can observe still comes after the fsync.

The node's promise covers every slot. So when it rises, whatever raised it (a Prepare, or an Accept,
Heartbeat or Decide from a leader at a higher ballot), every acceptor of the node, the elector's and
each slot's, is fed that ballot's ``recv_prepare``; replies nobody asked for (a leader's Accept is not
a Prepare) are not sent. Hence the invariant that ``_flush`` asserts: every acceptor promises exactly
``DurableState.promised``, the highest ballot of the node's PromiseRecords and AcceptRecords, which is
also what a restart gives back (``recover``).

practical's acceptor answers a repeated Accept of the proposal it holds with its Accepted again,
whatever it has promised since. If a later input of the same batch makes that acceptor accept a higher
ballot (a new leader's Accept, ours by loopback), the batch's records say the higher one, and a
compaction keeps only that: the repeated Accepted would go out backed by a record the log no longer
has. ``take_actions`` drops such an Accepted (``superseded_accepted``): a lost message, which Paxos
tolerates, and the new acceptance is what counts from then on.

Loopback
~~~~~~~~
The seed's messengers broadcast "to all acceptors" and "to all learners", this node included. A
message for this node goes into a local queue, handled like a peer's message right after the current
input (never re-entrantly from inside a seed method): our own Prepare, Promise, Accept, Accepted and
Nack take the same path as everyone else's, in the same ``Actions``.

Leadership: functional's heartbeats, driven by ticks
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
The elector's ``timestamp()`` is the tick count; ``hb_period`` is ``Options.heartbeat_ticks`` and
``liveness_window`` is ``Options.election_timeout_ticks``. ``schedule(delay, pulse)`` arms a timer
that ``tick()`` fires, so a leader pulses (one ``Heartbeat``) every ``heartbeat_ticks``. A
non-leader calls ``poll_liveness()`` when its poll timer expires (after half a window to a whole one,
drawn from ``rng``, so that nodes do not poll in step): the elector tries to lead only if no
heartbeat of the current leader arrived within the window and nobody else prepared within 1.5
windows, and, while trying, prepares again at every poll and at once on a prepare NACK. So a dead
leader is replaced after one to two windows, as in the core, but the first election of a new
cluster waits 1.5 windows at least (functional counts its start as a Prepare seen). ``postpone_election``
restarts the poll timer. Accept and Decide messages from a leader count as its heartbeats
(``recv_heartbeat``), which also tells a node of a new leader and demotes a leader that hears of a
higher one. A leader also loses its leadership on a quorum of NACKs for its ballot
(``recv_accept_nack``: every Nack a leader gets is for an Accept, Heartbeat or Decide of its ballot).

Four rules are this adapter's own, each for a case the seed does not cover; ``_Elector.step_down``
performs functional's own "leadership lost" transition for them:

* a leader whose node promises a higher ballot steps down (its own vote is gone, and its read rounds
  would count a promise it no longer holds);
* a leader that learns a slot it proposed was decided with another value, or a slot above the ones it
  opened was decided, steps down before it could announce a decided slot (a higher ballot won);
* a leader or candidate that installs a snapshot steps down, as in the core;
* with ``Options.check_quorum``, a leader that has had no answer at its ballot (a Promise that elected
  it, an Accepted, a HeartbeatAck) from a majority, itself included, for ``election_timeout_ticks``
  of its ticks steps down, as in the core (etcd's CheckQuorum). functional's leader never learns that
  it is cut off: it keeps pulsing into the void while the majority elects another, and its clients
  wait for their timeouts instead of going to the new leader. This serves liveness only: reads still
  need their confirmed round, and any number of proposers is safe.

Messages below our promise (an old leader's Accept, Heartbeat or Decide) are answered with a Nack and
are not heartbeats.

Learning, catch-up and snapshots
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
Acceptors send Accepted to the proposer of the ballot only: the leader is the distinguished learner
(section 2.3). Its slot's ``practical.Learner`` resolves at a quorum (its own acceptance comes by
loopback, durable in the same batch) and the leader tells the others with ``decided_slot`` on Accept,
Heartbeat and Decide, as the core does: a follower marks decided every slot up to it that its
acceptor accepted at that same ballot (one ballot proposes one value per slot), and asks for the
others with ``CatchupRequest``. Catch-up, the offer of a snapshot (``Actions.snapshot_to``) to a node
that asks for compacted slots or leads from behind our snapshot, and ``install_snapshot`` work as in
the core; they involve no instance.

Compaction (``compact``, ``install_snapshot``) releases every slot acceptor and decided value at or
below the snapshot slot; a slot's proposer and learner are released as soon as it is decided. So the
node holds one small acceptor per accepted slot above the snapshot, plus one proposer and one learner
per undecided slot of its own (at most ``Options.window`` opened for new commands); a slot acceptor
that holds nothing but the node's promise is not kept.

Reads
~~~~~
A read index needs a confirmed leadership round. functional's heartbeats expect no answer, so, as in
the core, a follower answers every Heartbeat whose ballot equals its promise with a ``HeartbeatAck``.
``read()`` asks the elector for a ``pulse()`` now (one round per batch of inputs; the pulse also
re-arms the heartbeat timer) and records the read index: our decided slot, or the highest slot the
election's quorum reported if above. The read is served when a majority (ourselves included, while
our promise is still our ballot) acked a round begun after the read arrived and the index is applied.

What it counts
~~~~~~~~~~~~~~
``status()["counters"]`` holds, besides the bad-input counters of the core, ``messages_sent`` (and
``sent_<Message>`` per type), ``persist_batches`` (``take_actions()`` results with records: one fsync
each), ``records_persisted``, ``slots_decided`` and ``commands_decided``. Messages or fsyncs per
decided command: sum ``messages_sent`` (or ``persist_batches``) over the nodes and divide by the
leader's ``commands_decided``.

Options
~~~~~~~
``heartbeat_ticks``, ``election_timeout_ticks``, ``window``, ``batch_count_max``, ``batch_bytes_max``,
``catchup_entries_max``, ``lazy_decide``, ``early_accepts`` and ``check_quorum`` mean what they mean in the
core.
``thrifty`` is accepted and ignored: every Accept goes to every node (the seed's ``send_accept`` is a
broadcast), and so does a retransmission (``resend_accept``).

What it must never do: let a Promise, Accepted or HeartbeatAck out without the record that makes it
true in the same ``Actions.persist`` (or an earlier one), change a seed class's behaviour, read a
clock, or touch a file or socket.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import functional, practical
from .actions import AcceptRecord, Actions, DecideRecord, DurableState, PromiseRecord, value_bytes
from .ballot import Ballot
from .essential import ProposalID, ProposalIDLike
from .membership import ScheduleEntry, refuse_change_command
from .messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    CatchupReply,
    CatchupRequest,
    Decide,
    DecidedEntry,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    Promise,
    Value,
)
from .replica import CANDIDATE, FOLLOWER, LEADER, ChangeRefused, Config, Options, Status

if TYPE_CHECKING:  # only for the annotation: the engine never touches the module-level generator
    import random

__all__ = ["ClassicReplica", "ballot_of", "proposal_id_of"]

ZERO = Ballot.ZERO


def _node_id(uid: Hashable) -> int:
    """A seed uid this engine gave out: a node id (the seed's classes type uids as any hashable)."""
    assert isinstance(uid, int), f"not a node id: {uid!r}"
    return uid


def _batch(value: object) -> Value:
    """A seed value this engine gave out: a batch of commands (the seed's classes hold any object)."""
    assert isinstance(value, tuple), f"not a batch: {value!r}"
    return value


def proposal_id_of(ballot: Ballot) -> ProposalID | None:
    """The seed's proposal id for ``ballot``; ``None`` (below every id) for ``Ballot.ZERO``."""
    if ballot == ZERO:
        return None
    return ProposalID(ballot.number, ballot.node_id)


def ballot_of(proposal_id: ProposalIDLike | None) -> Ballot:
    """The ballot of a seed proposal id; ``Ballot.ZERO`` for ``None``."""
    if proposal_id is None:
        return ZERO
    return Ballot(proposal_id[0], _node_id(proposal_id[1]))


class _SlotMessenger(practical.Messenger):
    """The messenger of one slot's acceptor, proposer or learner: every callback goes to the replica,
    tagged with the slot."""

    def __init__(self, replica: ClassicReplica, slot: int) -> None:
        self._replica = replica
        self._slot = slot

    def send_prepare(self, proposal_id: ProposalID | None) -> None:
        raise AssertionError("a slot's proposer prepares passively: the election's Prepare is its phase 1")

    def send_promise(self, proposer_uid: Hashable, proposal_id: ProposalIDLike | None,
                     previous_id: ProposalID | None, accepted_value: object) -> None:
        self._replica._slot_promise(self._slot, _node_id(proposer_uid), proposal_id, previous_id, accepted_value)

    def send_accept(self, proposal_id: ProposalID | None, proposal_value: object) -> None:
        self._replica._slot_accept(self._slot, proposal_id, _batch(proposal_value))

    def send_accepted(self, proposal_id: ProposalIDLike | None, accepted_value: object) -> None:
        assert proposal_id is not None, "an acceptance names its proposal"
        self._replica._slot_accepted(self._slot, proposal_id)

    def send_prepare_nack(self, to_uid: Hashable, proposal_id: ProposalIDLike | None,
                          promised_id: ProposalID | None) -> None:
        self._replica._send_nack(_node_id(to_uid), proposal_id, promised_id)

    def send_accept_nack(self, to_uid: Hashable, proposal_id: ProposalIDLike | None,
                         promised_id: ProposalID | None) -> None:
        self._replica._send_nack(_node_id(to_uid), proposal_id, promised_id)

    def on_leadership_acquired(self) -> None:
        """A slot's proposer reached the carried quorum: expected, nothing to do."""

    def on_resolution(self, proposal_id: ProposalID, value: object) -> None:
        self._replica._slot_resolved(self._slot, _batch(value))


class _ElectorMessenger(functional.HeartbeatMessenger):
    """The elector's messenger: phase 1 for the whole log, heartbeats, the pulse timer."""

    def __init__(self, replica: ClassicReplica) -> None:
        self._replica = replica

    def ticks(self) -> int:
        return self._replica._ticks

    def send_prepare(self, proposal_id: ProposalID | None) -> None:
        assert proposal_id is not None, "the elector prepares with a fresh proposal id"
        self._replica._elector_prepare(proposal_id)

    def send_promise(self, proposer_uid: Hashable, proposal_id: ProposalIDLike | None,
                     previous_id: ProposalID | None, accepted_value: object) -> None:
        self._replica._elector_promise(_node_id(proposer_uid), proposal_id)

    def send_accept(self, proposal_id: ProposalID | None, proposal_value: object) -> None:
        raise AssertionError("the elector proposes no value: slots have their own proposers")

    def send_accepted(self, proposal_id: ProposalIDLike | None, accepted_value: object) -> None:
        raise AssertionError("the elector accepts nothing: slots have their own acceptors")

    def send_prepare_nack(self, to_uid: Hashable, proposal_id: ProposalIDLike | None,
                          promised_id: ProposalID | None) -> None:
        self._replica._send_nack(_node_id(to_uid), proposal_id, promised_id)

    def send_accept_nack(self, to_uid: Hashable, proposal_id: ProposalIDLike | None,
                         promised_id: ProposalID | None) -> None:
        self._replica._send_nack(_node_id(to_uid), proposal_id, promised_id)

    def on_leadership_acquired(self) -> None:
        self._replica._count("elections_won")

    def on_resolution(self, proposal_id: ProposalID, value: object) -> None:
        raise AssertionError("the elector decides nothing")

    def send_heartbeat(self, leader_proposal_id: ProposalID | None) -> None:
        assert leader_proposal_id is not None, "only a leader pulses, with its proposal id"
        self._replica._elector_heartbeat(leader_proposal_id)

    def schedule(self, msec_delay: float, func_obj: Callable[[], None]) -> None:
        # functional passes hb_period, in the unit of timestamp(): here, ticks.
        self._replica._schedule(msec_delay, func_obj)

    def on_leadership_lost(self) -> None:
        self._replica._count("leadership_lost")

    def on_leadership_change(self, prev_leader_uid: Hashable | None, new_leader_uid: Hashable | None) -> None:
        self._replica._count("leader_changes")


class _Elector(functional.HeartbeatNode):
    """``functional.HeartbeatNode`` on the replica's logical clock (the documented way to inject one:
    override ``timestamp``), plus the one transition functional has no method for."""

    messenger: _ElectorMessenger

    def timestamp(self) -> float:
        return self.messenger.ticks()

    def step_down(self) -> None:
        """Stop leading on the adapter's word (see the module docstring, "three rules"): the same
        transition ``recv_accept_nack`` makes on a quorum of NACKs."""
        if not self.leader:
            return
        self.leader = False
        self.promises_rcvd = set()
        self.leader_uid = None
        self.leader_proposal_id = None
        self.messenger.on_leadership_lost()
        self.messenger.on_leadership_change(self.node_uid, None)


class ClassicStatus(Status):
    """``ClassicReplica.status()``: ``Replica.status()``'s keys, plus these."""

    engine: str
    instances: int  # seed objects alive: an acceptor per slot that holds something, and per open slot
    # a proposer and a learner


@dataclass(slots=True)
class _Instance:
    """A slot this leader opened and has not seen decided: its seed proposer and learner."""

    proposer: practical.Proposer
    learner: practical.Learner
    opened: int  # ClassicReplica._ticks when it was opened


class ClassicReplica:
    """One node of the classic engine. See the module docstring for the design; the interface and
    the contract of every public method are those of ``paxos.replica.Replica``."""

    engine = "classic"

    def __init__(self, node_id: int, config: Config, *, rng: random.Random,
                 state: DurableState | None = None, options: Options = Options()) -> None:
        """Build a node from its configuration and what its storage recovered (``Replica``'s contract:
        ``state`` is ``DurableState.replay(records, snapshot_slot)`` or ``None`` for a new node)."""
        assert node_id in config.node_ids, f"node {node_id} is not in {config.node_ids}"
        self.node_id = node_id
        self._config = config
        self.options = options
        self._rng = rng
        self._peers = tuple(n for n in config.node_ids if n != node_id)
        self._quorum_size = config.quorum_size
        state = state if state is not None else DurableState()

        self._actions = Actions()
        self._counters: dict[str, int] = {}
        self._ticks = 0  # the elector's clock: ticks since this object was built
        self._loopback: deque[Message] = deque()  # messages from this node to itself, handled after the input
        # id(acceptor) -> (slot or None, acceptor) fed this message (the elector is the node's acceptor)
        self._touched: dict[int, tuple[int | None, practical.Acceptor]] = {}
        self._answering: tuple[int, ProposalID | None] | None = None  # (to, proposal id) of the Prepare answered
        self._promise_granted = False
        # slot -> (accepted id, value) for that Promise
        self._promise_parts: dict[int, tuple[ProposalID | None, object]] = {}

        # The elector: leadership, phase 1 for the whole log, and the node's promise (the frontier).
        promised = proposal_id_of(state.promised)
        self._elector = _Elector(_ElectorMessenger(self), node_id, self._quorum_size,
                                 hb_period=options.heartbeat_ticks,
                                 liveness_window=options.election_timeout_ticks)
        self._elector.recover(promised, None, None)
        # Our next proposal id is above the promise we recovered (observe_proposal ignores our own
        # ids, and the promise may be our own ballot of before the restart).
        self._elector.next_proposal_number = state.promised.number + 1
        self._pulse_at: float | None = None  # the elector's scheduled pulse (tick), while leader
        self._pulse: Callable[[], None] | None = None
        self._poll_elapsed = 0
        self._poll_deadline = self._draw_poll_deadline()

        # Per-slot acceptors (durable state) and decided values, above the snapshot.
        self._snapshot_slot = state.snapshot_slot
        self._acceptors: dict[int, practical.Acceptor] = {}
        for slot, (ballot, value) in state.accepted.items():
            if slot > self._snapshot_slot:
                self._new_acceptor(slot).recover(promised, proposal_id_of(ballot), value)
        self._decided: dict[int, Value] = {s: v for s, v in state.decided.items() if s > self._snapshot_slot}
        self._decided_slot = state.snapshot_slot
        self._applied_slot = state.snapshot_slot

        # Candidate.
        self._candidate_ballot: Ballot | None = None
        self._first_slot = 0
        self._promises: dict[int, Promise] = {}

        # Leader.
        self._leading = False
        self._own_ballot: Ballot | None = None
        self._quorum: tuple[int, ...] = ()  # the node ids whose promises are carried into every new slot
        self._queue: deque[bytes] = deque()
        self._in_flight: dict[int, _Instance] = {}
        self._next_slot = 0
        self._election_top = 0  # the highest slot the election's quorum reported
        self._announced_decided_slot = 0
        self._heartbeat_seq = 0  # never reset, so acks from an older round never count for a newer one
        self._heartbeat_acks: dict[int, set[int]] = {}
        self._confirmed_seq = 0
        self._round_in_batch: int | None = None
        self._pending_reads: list[tuple[int, int, int]] = []  # (read_id, read index, seq needed)
        # Options.check_quorum: the tick (self._ticks) at which each peer last answered our ballot
        self._peer_heard: dict[int, int] = {}

        # Catch-up.
        self._catchup_cooldown = 0
        self._decided_hint = 0

        self._advance_decided()
        self._durable_decided_slot = self._decided_slot

    # ------------------------------------------------------------------ properties

    @property
    def leader_id(self) -> int | None:
        """The node we believe leads (ourselves when leading), or None while unknown."""
        if self._leading:
            return self.node_id
        uid = self._elector.leader_uid
        return _node_id(uid) if uid is not None and uid != self.node_id else None

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def _leader_ballot(self) -> Ballot:
        """Our own ballot, for what only a leader does."""
        assert self._own_ballot is not None, "only a leader has a ballot of its own"
        return self._own_ballot

    @property
    def ballot(self) -> Ballot:
        """The promised ballot (equal to our own ballot while we lead)."""
        return ballot_of(self._elector.promised_id)

    @property
    def decided_slot(self) -> int:
        return self._decided_slot

    @property
    def applied_slot(self) -> int:
        return self._applied_slot

    @property
    def snapshot_slot(self) -> int:
        return self._snapshot_slot

    # ------------------------------------------------------------------ inputs

    def propose(self, command: bytes) -> bool:
        """Queue ``command`` for a slot (``Replica.propose``): False when not leader; ``ValueError`` for a
        command that starts with ``paxos.membership.CHANGE_PREFIX``, as there."""
        assert isinstance(command, (bytes, bytearray)), "a command is opaque bytes"
        refuse_change_command(command)
        if not self._leading:
            self._count("propose_not_leader")
            return False
        self._queue.append(bytes(command))
        return True

    def read(self, read_id: int) -> bool:
        """Start a linearizable read (``Replica.read``): False when not leader. See "Reads" above."""
        if not self._leading:
            self._count("read_not_leader")
            return False
        index = max(self._decided_slot, self._election_top)
        seq = self._start_round()
        self._pending_reads.append((read_id, index, seq))
        self._serve_reads()
        self._pump()
        return True

    def tick(self) -> None:
        """One logical time unit: the elector's clock advances; a leader pulses when its timer is due
        (and retransmits), a non-leader polls liveness when its poll timer expires."""
        self._ticks += 1
        if self._catchup_cooldown > 0:
            self._catchup_cooldown -= 1
        if self._leading and self.options.check_quorum and not self._quorum_heard_recently():
            # Cut off from a majority for an election timeout (the fourth rule): hand back what waits
            # on us, so that the shell answers its clients "not leader" at once.
            self._count("stepped_down_no_quorum")
            self._elector.step_down()
            self._sync_role()
        if self._leading:
            if self._pulse_at is not None and self._ticks >= self._pulse_at:
                pulse, self._pulse, self._pulse_at = self._pulse, None, None
                assert pulse is not None, "_schedule sets both"
                pulse()  # HeartbeatNode.pulse: a Heartbeat, and the next pulse scheduled
                self._retransmit_accepts()
            if self.options.lazy_decide:
                self._announce_decided()
        else:
            self._poll_elapsed += 1
            if self._poll_elapsed >= self._poll_deadline:
                self._poll_elapsed = 0
                self._poll_deadline = self._draw_poll_deadline()
                self._elector.poll_liveness()
                self._sync_role()
        self._pump()

    def postpone_election(self) -> None:
        """Restart the poll timer (``Replica.postpone_election``); does nothing while leading."""
        if not self._leading:
            self._poll_elapsed = 0

    def receive(self, message: Message) -> None:
        """Handle one message addressed to this node. Bad or stale input is counted, never raised."""
        sender = getattr(message, "sender", None)  # the shell may hand us anything: count it, never raise
        if sender not in self._peers:
            self._count("unknown_sender")
            return
        self._dispatch(message)
        self._pump()

    def take_actions(self) -> Actions:
        """Drain everything the inputs since the last call produced (``Replica.take_actions``): the
        leader opens slots for queued commands here, and announces a decided slot no Accept carried."""
        if self._leading:
            self._fill_window()
            self._pump()
            if not self.options.lazy_decide:
                self._announce_decided()
        self._pump()
        assert not self._touched, "an acceptor's state was not flushed into persist"
        self._round_in_batch = None
        actions, self._actions = self._actions, Actions()
        actions.decided_slot = self._decided_slot
        if actions.send:
            self._drop_superseded_accepteds(actions)
        if self.options.early_accepts and actions.persist:
            self._split_early_accepts(actions)
        self._count_batch(actions)
        return actions

    def _drop_superseded_accepteds(self, actions: Actions) -> None:
        """Drop each Accepted of this batch whose slot acceptor holds a higher ballot by now (see
        "Persistence" in the module docstring)."""
        acceptors = self._acceptors
        kept = []
        for item in actions.send:
            m = item[1]
            if type(m) is Accepted:
                acceptor = acceptors.get(m.slot)
                if acceptor is not None and ballot_of(acceptor.accepted_id) != m.ballot:
                    self._count("superseded_accepted")
                    continue
            kept.append(item)
        if len(kept) != len(actions.send):
            actions.send = kept

    def note_durable(self, decided_slot: int) -> None:
        """The shell made a batch durable and reports its ``Actions.decided_slot``
        (``Replica.note_durable``; needed only with ``Options.early_accepts``)."""
        assert decided_slot <= self._decided_slot, f"durable mark {decided_slot} above decided {self._decided_slot}"
        if decided_slot > self._durable_decided_slot:
            self._durable_decided_slot = decided_slot

    def note_messages_lost(self, peer: int) -> None:
        """``Replica.note_messages_lost``: nothing to do, practical's ``resend_accept`` resends to every
        node on each heartbeat period regardless (no ``Options.patient_resends`` here)."""

    def compact(self, snapshot_slot: int) -> None:
        """The state machine took a snapshot through ``snapshot_slot``: release every instance at or
        below it (``Replica.compact``; precondition ``snapshot_slot <= applied_slot``)."""
        if snapshot_slot > self._applied_slot:  # (a check, not an assert: it must hold under python -O too)
            raise ValueError(f"cannot snapshot past the applied slot ({snapshot_slot} > {self._applied_slot})")
        if snapshot_slot <= self._snapshot_slot:
            return
        self._forget_through(snapshot_slot)

    def install_snapshot(self, snapshot_slot: int, configs: tuple[ScheduleEntry, ...] = ()) -> None:
        """The shell installed a peer's snapshot at ``snapshot_slot`` (``Replica.install_snapshot``;
        precondition ``snapshot_slot > applied_slot``). A leader or candidate steps down. ``configs``
        is ignored: this engine's members are fixed (see ``propose_change``)."""
        if snapshot_slot <= self._applied_slot:  # (a check, not an assert: it must hold under python -O too)
            raise ValueError(f"install_snapshot would roll the state machine back (slot {snapshot_slot}, applied "
                             f"{self._applied_slot})")
        if self._leading:
            self._count("stepped_down_snapshot")
            self._elector.step_down()
            self._sync_role()
        if self._candidate_ballot is not None:
            self._count("stepped_down_snapshot")
            self._abandon_candidacy()
        self._actions.apply = [(slot, batch) for slot, batch in self._actions.apply if slot > snapshot_slot]
        self._forget_through(snapshot_slot)
        self._decided_slot = max(self._decided_slot, snapshot_slot)
        self._applied_slot = snapshot_slot
        self._advance_decided()
        self._pump()

    def durable_state(self, *, packed: bool = False) -> DurableState:
        """What storage must hold now, to rewrite a compacted log (call after persisting actions).
        ``packed`` is ``Replica.durable_state``'s; this engine keeps no packed values."""
        accepted = {slot: (ballot_of(acc.accepted_id), _batch(acc.accepted_value))
                    for slot, acc in self._acceptors.items() if acc.accepted_id is not None}
        return DurableState(promised=self.ballot, accepted=accepted, decided=dict(self._decided),
                            snapshot_slot=self._snapshot_slot)

    def status(self) -> ClassicStatus:
        """Plain values for monitoring: ``Replica.status()``'s keys, plus ``engine`` and the counters
        described in the module docstring."""
        return {
            "node_id": self.node_id,
            "engine": self.engine,
            "role": self._role(),
            "leader_id": self.leader_id,
            "is_leader": self.is_leader,
            "ballot": [self.ballot.number, self.ballot.node_id],
            "decided_slot": self._decided_slot,
            "applied_slot": self._applied_slot,
            "snapshot_slot": self._snapshot_slot,
            "queued": len(self._queue),
            "in_flight": len(self._in_flight),
            "pending_reads": len(self._pending_reads),
            "instances": len(self._acceptors) + 2 * len(self._in_flight),
            "config": self.config.to_dict(),
            "config_effective_slot": 1,
            "voter": True,
            "role_in_config": "voter",
            "counters": dict(self._counters),
        }

    # ------------------------------------------------------------------ membership: fixed in this engine

    @property
    def config(self) -> Config:
        return self._config

    def config_for(self, slot: int) -> Config:
        return self.config

    def schedule_through(self, slot: int) -> tuple[ScheduleEntry, ...]:
        return ((1, 0, self.config),)

    @property
    def is_voter(self) -> bool:
        return True

    @property
    def change_in_progress(self) -> bool:
        return False

    def peer_decided(self, node_id: int) -> int | None:
        return None

    def peer_answered_within(self, node_id: int, ticks: int) -> bool:
        """``Replica.peer_answered_within``."""
        heard = self._peer_heard.get(node_id)
        return heard is not None and heard >= self._ticks - ticks

    def propose_change(self, config: Config) -> None:
        """Membership changes need the core's per-slot configurations (paxos.membership); one seed
        instance per slot has a fixed acceptor set, so this engine refuses them."""
        raise ChangeRefused("membership changes need --engine core; the classic engine's members are fixed")

    def transfer_leadership(self, target: int) -> bool:
        self._count("transfer_refused")
        return False

    # ------------------------------------------------------------------ dispatch and loopback

    def _dispatch(self, m: Message) -> None:
        match m:
            case Prepare():
                self._on_prepare(m)
            case Promise():
                self._on_promise(m)
            case Accept():
                self._on_accept(m)
            case Accepted():
                self._on_accepted(m)
            case Nack():
                self._on_nack(m)
            case Decide():
                self._on_decide(m)
            case Heartbeat():
                self._on_heartbeat(m)
            case HeartbeatAck():
                self._on_heartbeat_ack(m)
            case CatchupRequest():
                self._on_catchup_request(m)
            case CatchupReply():
                self._on_catchup_reply(m)
            case _:
                self._count("unknown_message")
        self._flush()

    def _pump(self) -> None:
        """Handle the messages this node sent itself, in order, until none is left."""
        while self._loopback:
            self._dispatch(self._loopback.popleft())

    def _send_to(self, to: int, message: Message) -> None:
        if to == self.node_id:
            self._loopback.append(message)
        else:
            self._actions.send.append((to, message))

    def _broadcast(self, message: Message) -> None:
        for peer in self._peers:
            self._actions.send.append((peer, message))

    # ------------------------------------------------------------------ acceptors and persistence

    def _new_acceptor(self, slot: int) -> practical.Acceptor:
        acceptor = practical.Acceptor()
        acceptor.messenger = _SlotMessenger(self, slot)
        self._acceptors[slot] = acceptor
        return acceptor

    def _acceptor(self, slot: int) -> practical.Acceptor:
        """The slot's acceptor; a new one starts from the node's promise and nothing accepted, as a
        restart would rebuild it from the records (a PromiseRecord covers every slot)."""
        acceptor = self._acceptors.get(slot)
        if acceptor is None:
            acceptor = self._new_acceptor(slot)
            acceptor.recover(self._elector.promised_id, None, None)
        return acceptor

    def _touch(self, slot: int | None, acceptor: practical.Acceptor) -> None:
        self._touched[id(acceptor)] = (slot, acceptor)

    def _flush(self) -> None:
        """practical's persistence protocol: the state of every acceptor that owes a reply goes into
        ``Actions.persist``; then ``persisted()`` releases the replies (see the module docstring)."""
        if not self._touched:
            return
        touched = sorted(self._touched.values(), key=lambda item: -1 if item[0] is None else item[0])
        self._touched = {}
        promised = self._elector.promised_id
        if any(acceptor.pending_promise is not None for _, acceptor in touched):
            self._actions.persist.append(PromiseRecord(ballot_of(promised)))
        for slot, acceptor in touched:
            assert acceptor.promised_id == promised, (
                f"safety: slot {slot} promises {acceptor.promised_id}, the node {promised}")
            if slot is not None and acceptor.pending_accepted is not None:
                self._actions.persist.append(
                    AcceptRecord(slot, ballot_of(acceptor.accepted_id), _batch(acceptor.accepted_value)))
        for slot, acceptor in touched:
            if acceptor.persistance_required:
                acceptor.persisted()
            if slot is not None and acceptor.accepted_id is None and slot in self._acceptors:
                del self._acceptors[slot]  # it holds nothing but the node's promise

    def _raise_promise(self, sender: int, proposal_id: ProposalID | None) -> None:
        """A leader's message at a ballot above our promise: for every slot it is that leader's
        Prepare. Every acceptor promises it (one PromiseRecord); the Promises are not sent."""
        before = self.ballot
        self._elector.recv_prepare(sender, proposal_id)
        self._touch(None, self._elector)
        for slot, acceptor in self._acceptors.items():
            acceptor.recv_prepare(sender, proposal_id)
            self._touch(slot, acceptor)
        self._flush()
        self._promise_raised(before)

    def _promise_raised(self, before: Ballot) -> None:
        promised = self.ballot
        if promised <= before:
            return
        if self._leading and self._leader_ballot < promised:
            self._count("stepped_down_promise")
            self._elector.step_down()
            self._sync_role()
        if self._candidate_ballot is not None and self._candidate_ballot < promised:
            self._abandon_candidacy()

    # ------------------------------------------------------------------ acceptor side

    def _far_behind(self, first_slot: int) -> bool:
        """As the core's (rule 39): a Promise would carry more decided values than a catch-up answer holds."""
        options = self.options
        if self._decided_slot - first_slot >= options.catchup_entries_max:
            return True
        size = 0
        for slot in range(max(first_slot, self._snapshot_slot + 1), self._decided_slot + 1):
            if slot in self._decided:
                size += value_bytes(self._decided[slot])
                if size >= options.catchup_bytes_max:
                    return True
        return False

    def _on_prepare(self, m: Prepare) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        proposal_id = proposal_id_of(m.ballot)
        before = self.ballot
        if m.sender != self.node_id and m.ballot > before and self._far_behind(m.first_slot):
            # As the core (rule 39): a candidate far behind gets the decided values it lacks, a chunk
            # at a time, not a promise whose Promise would carry all of them.
            self._count("prepare_far_behind")
            self._on_catchup_request(CatchupRequest(sender=m.sender, first_slot=m.first_slot))
            return
        if m.ballot == before and m.sender != self.node_id:
            self._count("duplicate")
        self._answering = (m.sender, proposal_id)
        self._promise_granted = False
        self._promise_parts = {}
        try:
            self._elector.recv_prepare(m.sender, proposal_id)  # NACKs a lower one through the messenger
            self._touch(None, self._elector)
            if self._elector.promised_id == proposal_id:
                for slot, acceptor in self._acceptors.items():
                    acceptor.recv_prepare(m.sender, proposal_id)
                    self._touch(slot, acceptor)
            self._flush()
            if self._promise_granted:
                self._send_to(m.sender, self._assemble_promise(m))
        finally:
            self._answering = None
            self._promise_parts = {}
        self._promise_raised(before)

    def _assemble_promise(self, m: Prepare) -> Promise:
        first = max(m.first_slot, self._snapshot_slot + 1)
        accepted = tuple(
            AcceptedEntry(slot=slot, ballot=ballot_of(accepted_id), value=_batch(value))
            for slot, (accepted_id, value) in sorted(self._promise_parts.items())
            if slot >= first and accepted_id is not None and slot not in self._decided
        )
        decided = tuple(DecidedEntry(slot=s, value=v) for s, v in sorted(self._decided.items()) if s >= first)
        return Promise(sender=self.node_id, ballot=m.ballot, first_slot=m.first_slot, accepted=accepted,
                       decided=decided, snapshot_slot=self._snapshot_slot)

    def _elector_promise(self, to: int, proposal_id: ProposalIDLike | None) -> None:
        if self._answering == (to, proposal_id):
            self._promise_granted = True

    def _slot_promise(self, slot: int, to: int, proposal_id: ProposalIDLike | None, accepted_id: ProposalID | None,
                      value: object) -> None:
        if self._answering == (to, proposal_id):
            self._promise_parts[slot] = (accepted_id, value)

    def _on_accept(self, m: Accept) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        own = m.sender == self.node_id
        current = own or self._hear_leader(m.sender, m.ballot)
        proposal_id = proposal_id_of(m.ballot)
        if m.slot <= self._snapshot_slot:
            # We compacted this slot, so it is decided, but we no longer know what we accepted there
            # and must not vote blindly. If the leader is behind our snapshot, offer it.
            if not current:
                self._send_nack(m.sender, proposal_id, self._elector.promised_id)
            else:
                self._count("below_log_start")
                if m.decided_slot < self._snapshot_slot:
                    self._offer_snapshot(m.sender)
        else:
            acceptor = self._acceptor(m.slot)
            if acceptor.accepted_id == proposal_id:
                assert acceptor.accepted_value == m.value, (
                    f"safety: ballot {m.ballot} proposed two values for slot {m.slot}")
                self._count("duplicate")
            acceptor.recv_accept_request(m.sender, proposal_id, m.value)  # NACK, Accepted, or pending
            self._touch(m.slot, acceptor)
            self._flush()
        if not own:
            self._learn_decided_slot(m.ballot, m.decided_slot, m.sender)

    def _slot_accepted(self, slot: int, proposal_id: ProposalIDLike) -> None:
        """A slot acceptor's Accepted goes to the proposer of that ballot (the distinguished learner)."""
        self._send_to(_node_id(proposal_id[1]), Accepted(sender=self.node_id, ballot=ballot_of(proposal_id), slot=slot))

    def _on_heartbeat(self, m: Heartbeat) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        if self._hear_leader(m.sender, m.ballot):
            # Our promise now equals the leader's ballot: that is what the ack certifies.
            self._send_to(m.sender, HeartbeatAck(sender=self.node_id, ballot=m.ballot, seq=m.seq))
        else:
            self._send_nack(m.sender, proposal_id_of(m.ballot), self._elector.promised_id)
        self._learn_decided_slot(m.ballot, m.decided_slot, m.sender)

    def _on_decide(self, m: Decide) -> None:
        if m.ballot.node_id != m.sender:
            self._count("malformed")
            return
        if not self._hear_leader(m.sender, m.ballot):
            self._send_nack(m.sender, proposal_id_of(m.ballot), self._elector.promised_id)
        # A decided slot stays decided, so learning from a stale leader's announcement is still safe.
        self._learn_decided_slot(m.ballot, m.decided_slot, m.sender)

    def _hear_leader(self, sender: int, ballot: Ballot) -> bool:
        """A leader's Accept, Heartbeat or Decide. Below our promise: False (the caller NACKs).
        Otherwise raise our promise to it if higher, and let the elector take it as a heartbeat."""
        if ballot < self.ballot:
            return False
        proposal_id = proposal_id_of(ballot)
        if ballot > self.ballot:
            self._raise_promise(sender, proposal_id)
        self._elector.recv_heartbeat(sender, proposal_id)
        self._sync_role()
        return True

    def _send_nack(self, to: int, proposal_id: ProposalIDLike | None, promised_id: ProposalIDLike | None) -> None:
        self._count("nack_sent")
        self._send_to(to, Nack(sender=self.node_id, ballot=ballot_of(proposal_id), promised=ballot_of(promised_id)))

    # ------------------------------------------------------------------ election

    def _draw_poll_deadline(self) -> int:
        """Ticks until the next ``poll_liveness``: from half a window to a whole one, at random, so
        that followers who lost the same leader do not all prepare at the same tick."""
        timeout = self.options.election_timeout_ticks
        low = max(1, timeout // 2)
        return low + self._rng.randrange(max(1, timeout - low))

    def _elector_prepare(self, proposal_id: ProposalID) -> None:
        """The elector prepares: one Prepare for every slot from our first undecided one on."""
        ballot = ballot_of(proposal_id)
        self._count("elections")
        self._candidate_ballot = ballot
        self._first_slot = self._decided_slot + 1
        self._promises = {}
        prepare = Prepare(sender=self.node_id, ballot=ballot, first_slot=self._first_slot)
        self._broadcast(prepare)
        self._loopback.append(prepare)  # our own acceptors answer it like everyone else's

    def _abandon_candidacy(self) -> None:
        self._candidate_ballot = None
        self._promises = {}

    def _on_promise(self, m: Promise) -> None:
        if self._leading or m.ballot != self._candidate_ballot or m.first_slot != self._first_slot:
            self._count("stale_promise")
            return
        if m.sender in self._promises:
            self._count("duplicate")
            return
        for entry in m.decided:
            self._mark_decided(entry.slot, entry.value)
        self._advance_decided()
        if m.snapshot_slot >= self._first_slot:
            # It compacted slots we have not decided, so it cannot report them: it does not count
            # toward the quorum, and we fetch its snapshot.
            self._count("election_behind")
            self._catchup_cooldown = 0
            self._request_catchup(m.sender)
            return
        self._promises[m.sender] = m
        self._elector.recv_promise(m.sender, proposal_id_of(m.ballot), None, None)
        self._sync_role()

    def _on_nack(self, m: Nack) -> None:
        promised = proposal_id_of(m.promised)
        self._elector.observe_proposal(m.sender, promised)
        if not m.promised > m.ballot:
            self._count("stale_nack")
            return
        proposal_id = proposal_id_of(m.ballot)
        if self._leading and m.ballot == self._own_ballot:
            self._count("nack_received")
            self._elector.recv_accept_nack(m.sender, proposal_id, promised)  # a quorum of them demotes
            self._sync_role()
        elif not self._leading and m.ballot == self._candidate_ballot:
            self._count("nack_received")
            self._elector.recv_prepare_nack(m.sender, proposal_id, promised)  # may prepare again at once
            self._sync_role()
        else:
            self._count("stale_nack")

    def _sync_role(self) -> None:
        """Follow the elector's ``leader`` flag: set up or tear down what a leader holds."""
        if self._leading and not self._elector.leader:
            self._lose_leadership()
        if not self._leading and self._elector.leader:
            self._become_leader()

    def _role(self) -> str:
        if self._leading:
            return LEADER
        if self._candidate_ballot is not None:
            return CANDIDATE
        return FOLLOWER

    # ------------------------------------------------------------------ leader

    def _become_leader(self) -> None:
        ballot = ballot_of(self._elector.proposal_id)
        assert ballot == self._candidate_ballot and len(self._promises) == self._quorum_size, (
            f"the elector leads at {ballot} without our quorum for {self._candidate_ballot}")
        promises, self._promises = self._promises, {}
        self._candidate_ballot = None
        self._leading = True
        self._own_ballot = ballot
        self._quorum = tuple(promises)
        # The promises that elected us are answers at our ballot: the check_quorum clock starts now.
        self._peer_heard = dict.fromkeys(promises, self._ticks)
        self._count("became_leader")
        reported: dict[int, dict[int, tuple[ProposalID | None, Value]]] = {}  # slot -> sender -> (accepted id, value)
        top = self._first_slot - 1
        for sender, promise in promises.items():
            for entry in promise.accepted:
                reported.setdefault(entry.slot, {})[sender] = (proposal_id_of(entry.ballot), entry.value)
                top = max(top, entry.slot)
            for decided_entry in promise.decided:
                top = max(top, decided_entry.slot)
        self._election_top = top
        self._in_flight = {}
        self._announced_decided_slot = 0
        self._heartbeat_acks = {seq: acks for seq, acks in self._heartbeat_acks.items() if seq > self._confirmed_seq}
        # Slots we compacted during the election are decided and gone: followers fetch them.
        self._next_slot = max(self._first_slot, self._snapshot_slot + 1)
        for slot in range(self._next_slot, top + 1):
            if slot not in self._decided:
                self._open_slot(slot, (), reported.get(slot, {}))
        self._next_slot = max(self._next_slot, top + 1)

    def _quorum_heard_recently(self) -> bool:
        """Options.check_quorum: did a majority answer our ballot within the last
        ``election_timeout_ticks`` ticks? We count ourselves, so a cluster of one always has."""
        since = self._ticks - self.options.election_timeout_ticks
        heard = 1 + sum(1 for peer, tick in self._peer_heard.items() if tick > since and peer != self.node_id)
        return heard >= self._quorum_size

    def _lose_leadership(self) -> None:
        self._leading = False
        self._actions.dropped_proposals.extend(self._queue)
        self._actions.rejected_reads.extend(read_id for read_id, _, _ in self._pending_reads)
        self._queue.clear()
        self._pending_reads = []
        self._in_flight = {}
        self._heartbeat_acks = {}
        self._peer_heard = {}
        self._quorum = ()
        self._own_ballot = None
        self._pulse, self._pulse_at = None, None
        self._poll_elapsed = 0

    def _open_slot(self, slot: int, value: Value, reports: dict[int, tuple[ProposalID | None, Value]]) -> None:
        """Phase 2 for ``slot`` with a seed proposer whose phase 1 is the election's (see "Phase 1
        once, carried into every slot"): it proposes the P2c value, else ``value``."""
        assert slot > self._snapshot_slot and slot >= self._next_slot, f"slot {slot} reused"
        ballot = self._leader_ballot
        proposal_id = proposal_id_of(ballot)
        messenger = _SlotMessenger(self, slot)
        proposer = practical.Proposer()
        proposer.messenger = messenger
        proposer.proposer_uid = self.node_id
        proposer.quorum_size = self._quorum_size
        proposer.next_proposal_number = ballot.number
        proposer.active = False
        proposer.prepare()  # passive: takes our ballot, sends nothing
        proposer.active = True
        assert proposer.proposal_id == proposal_id
        learner = practical.Learner()
        learner.messenger = messenger
        learner.quorum_size = self._quorum_size
        self._in_flight[slot] = _Instance(proposer, learner, self._ticks)
        self._next_slot = slot + 1
        for sender in self._quorum:
            accepted_id, accepted_value = reports.get(sender, (None, None))
            proposer.recv_promise(sender, proposal_id, accepted_id, accepted_value)  # P2c at the quorum
        assert proposer.leader, "the carried promises did not make a quorum"
        if proposer.proposed_value is None:
            proposer.set_proposal(value)  # sends Accept: the proposer leads this slot

    def _slot_accept(self, slot: int, proposal_id: ProposalID | None, value: Value) -> None:
        accept = Accept(sender=self.node_id, ballot=ballot_of(proposal_id), slot=slot, value=value,
                        decided_slot=self._decided_slot)
        self._broadcast(accept)
        self._loopback.append(accept)
        self._announced_decided_slot = max(self._announced_decided_slot, self._decided_slot)

    def _fill_window(self) -> None:
        """Open slots for queued commands, ``batch_count_max`` per slot, ``window`` undecided at most."""
        queue = self._queue
        count_max, bytes_max = self.options.batch_count_max, self.options.batch_bytes_max
        while self._leading and queue and len(self._in_flight) < self.options.window:
            batch = [queue.popleft()]
            size = len(batch[0])
            while queue and len(batch) < count_max and size + len(queue[0]) <= bytes_max:
                command = queue.popleft()
                size += len(command)
                batch.append(command)
            self._open_slot(self._next_slot, tuple(batch), {})

    def _on_accepted(self, m: Accepted) -> None:
        if not self._leading or m.ballot != self._own_ballot:
            self._count("stale_accepted")
            return
        self._peer_heard[m.sender] = self._ticks  # it answered our ballot (check_quorum), late or not
        instance = self._in_flight.get(m.slot)
        if instance is None:
            self._count("late_accepted")
            return
        # The Accepted names no value: one ballot proposes one value per slot, the one we proposed.
        instance.learner.recv_accepted(m.sender, proposal_id_of(m.ballot), instance.proposer.proposed_value)

    def _slot_resolved(self, slot: int, value: Value) -> None:
        self._mark_decided(slot, value)
        self._advance_decided()

    def _retransmit_accepts(self) -> None:
        """Resend the Accept of each slot open for a whole heartbeat period (messages get lost).

        ``resend_accept`` tests the value's truthiness (as in 2013), and the no-op ``()`` is falsy, so
        a no-op goes out through the same callback directly."""
        oldest = self._ticks - self.options.heartbeat_ticks
        for _slot, instance in sorted(self._in_flight.items()):
            if instance.opened > oldest:
                continue
            proposer = instance.proposer
            if proposer.proposed_value:
                proposer.resend_accept()
            elif proposer.leader and proposer.proposed_value is not None:
                proposer.messenger.send_accept(proposer.proposal_id, proposer.proposed_value)

    def _announce_decided(self) -> None:
        if self._leading and self._decided_slot > self._announced_decided_slot:
            self._broadcast(Decide(sender=self.node_id, ballot=self._leader_ballot, decided_slot=self._decided_slot))
            self._announced_decided_slot = self._decided_slot

    def _schedule(self, delay: float, func: Callable[[], None]) -> None:
        self._pulse_at = self._ticks + delay
        self._pulse = func

    def _elector_heartbeat(self, proposal_id: ProposalID) -> None:
        """The elector pulsed: one Heartbeat round; a majority of acks confirms our leadership."""
        ballot = ballot_of(proposal_id)
        self._heartbeat_seq += 1
        seq = self._heartbeat_seq
        self._round_in_batch = seq
        self._broadcast(Heartbeat(sender=self.node_id, ballot=ballot, decided_slot=self._decided_slot, seq=seq))
        self._announced_decided_slot = max(self._announced_decided_slot, self._decided_slot)
        # Keep only the rounds waiting reads began (this newer one serves them too once confirmed),
        # so that a leader cut off from its majority does not pile up one round per pulse.
        needed = {need for _, _, need in self._pending_reads}
        self._heartbeat_acks = {s: acks for s, acks in self._heartbeat_acks.items() if s in needed}
        self._heartbeat_acks[seq] = {self.node_id} if self.ballot == ballot else set()
        self._check_round(seq)

    def _start_round(self) -> int:
        """A heartbeat round begun after every read of this batch arrived (they share it)."""
        if self._round_in_batch is None:
            self._elector.pulse()
        assert self._round_in_batch is not None
        return self._round_in_batch

    def _on_heartbeat_ack(self, m: HeartbeatAck) -> None:
        if not self._leading or m.ballot != self._own_ballot:
            self._count("stale_heartbeat_ack")
            return
        self._peer_heard[m.sender] = self._ticks  # it answered our ballot (check_quorum)
        acks = self._heartbeat_acks.get(m.seq)
        if acks is None:
            return  # a round already confirmed (and pruned) or unknown
        acks.add(m.sender)
        self._check_round(m.seq)

    def _check_round(self, seq: int) -> None:
        if len(self._heartbeat_acks.get(seq, ())) < self._quorum_size:
            return
        # A majority still promised our ballot after the round began, so no higher ballot could have
        # decided anything before then (its promise majority would overlap this one).
        self._confirmed_seq = max(self._confirmed_seq, seq)
        for old in [s for s in self._heartbeat_acks if s <= self._confirmed_seq]:
            del self._heartbeat_acks[old]
        self._serve_reads()

    def _serve_reads(self) -> None:
        if not self._leading or not self._pending_reads:
            return
        waiting = []
        for read_id, index, seq in self._pending_reads:
            if seq <= self._confirmed_seq and index <= self._applied_slot:
                self._actions.reads.append((read_id, index))
            else:
                waiting.append((read_id, index, seq))
        self._pending_reads = waiting

    def _split_early_accepts(self, actions: Actions) -> None:
        """Options.early_accepts: this batch's Accepts go to ``send_early``, their decided_slot capped
        at the durable mark (as ``Replica._split_early_accepts``)."""
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
            self._announced_decided_slot = min(self._announced_decided_slot, durable)
            self._count("early_accepts_capped")

    # ------------------------------------------------------------------ learner

    def _learn_decided_slot(self, ballot: Ballot, decided_slot: int, sender: int) -> None:
        """The leader of ``ballot`` says every slot <= ``decided_slot`` is decided: the ones our
        acceptor accepted at that same ballot hold the decided value; the others we fetch."""
        if decided_slot > self._decided_hint:
            self._decided_hint = decided_slot
        if decided_slot <= self._decided_slot:
            return
        proposal_id = proposal_id_of(ballot)
        candidates: Iterable[int]
        if decided_slot - self._decided_slot <= len(self._acceptors):
            candidates = range(self._decided_slot + 1, decided_slot + 1)
        else:
            candidates = sorted(s for s in self._acceptors if self._decided_slot < s <= decided_slot)
        for slot in candidates:
            acceptor = self._acceptors.get(slot)
            if acceptor is not None and acceptor.accepted_id == proposal_id and slot not in self._decided:
                self._mark_decided(slot, _batch(acceptor.accepted_value))
        self._advance_decided()
        if self._decided_slot < decided_slot:
            self._request_catchup(sender)

    def _mark_decided(self, slot: int, value: Value) -> None:
        """``value`` is chosen at ``slot``: record it durably (the caller advances the prefix)."""
        if slot <= self._snapshot_slot:
            return
        old = self._decided.get(slot)
        if old is not None:
            assert old == value, f"safety: slot {slot} decided {old!r} and then {value!r}"
            return
        self._decided[slot] = value
        self._actions.persist.append(DecideRecord(slot, value))
        self._count("slots_decided")
        self._count("commands_decided", len(value))
        if self._leading:
            instance = self._in_flight.pop(slot, None)
            if (instance is not None and instance.proposer.proposed_value != value) or slot >= self._next_slot:
                # A higher ballot won a majority here: stop before we announce a decided slot that
                # would let followers take our losing proposal for the decided value.
                self._count("stepped_down_stale")
                self._elector.step_down()
                self._sync_role()

    def _advance_decided(self) -> None:
        while self._decided_slot + 1 in self._decided:
            self._decided_slot += 1
        for slot in range(self._applied_slot + 1, self._decided_slot + 1):
            self._actions.apply.append((slot, self._decided[slot]))
        self._applied_slot = max(self._applied_slot, self._decided_slot)
        self._serve_reads()

    # ------------------------------------------------------------------ catch-up and snapshots

    def _request_catchup(self, to: int) -> None:
        if self._catchup_cooldown > 0 or to == self.node_id:
            return
        self._catchup_cooldown = self.options.heartbeat_ticks
        self._send_to(to, CatchupRequest(sender=self.node_id, first_slot=self._decided_slot + 1))

    def _on_catchup_request(self, m: CatchupRequest) -> None:
        entries: list[DecidedEntry] = []
        slot = max(m.first_slot, self._snapshot_slot + 1)
        size, size_max = 0, self.options.catchup_bytes_max
        while slot in self._decided and len(entries) < self.options.catchup_entries_max and size < size_max:
            size += value_bytes(self._decided[slot])  # (bounded by bytes too, as the core)
            entries.append(DecidedEntry(slot=slot, value=self._decided[slot]))
            slot += 1
        needs_snapshot = self._snapshot_slot >= m.first_slot
        if needs_snapshot:
            self._offer_snapshot(m.sender)
        if entries or needs_snapshot:
            self._send_to(m.sender, CatchupReply(sender=self.node_id, entries=tuple(entries),
                                                 snapshot_slot=self._snapshot_slot))

    def _on_catchup_reply(self, m: CatchupReply) -> None:
        before = self._decided_slot
        for entry in m.entries:
            if entry.slot > self._snapshot_slot:
                self._mark_decided(entry.slot, entry.value)
        self._advance_decided()
        if m.snapshot_slot > self._decided_hint:
            self._decided_hint = m.snapshot_slot
        full = (len(m.entries) >= self.options.catchup_entries_max  # (likely more: ask again, as the core)
                or sum(value_bytes(e.value) for e in m.entries) >= self.options.catchup_bytes_max)
        if self._decided_slot > before and (self._decided_slot < self._decided_hint or full) and m.entries:
            self._catchup_cooldown = 0
            self._request_catchup(m.sender)

    def _offer_snapshot(self, to: int) -> None:
        if to not in self._actions.snapshot_to:
            self._actions.snapshot_to.append(to)

    def _forget_through(self, slot: int) -> None:
        """Release every instance and decided value at or below ``slot`` (a snapshot holds them)."""
        self._snapshot_slot = slot
        self._acceptors = {s: a for s, a in self._acceptors.items() if s > slot}
        self._decided = {s: v for s, v in self._decided.items() if s > slot}

    # ------------------------------------------------------------------ helpers

    def _count(self, name: str, amount: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + amount

    def _count_batch(self, actions: Actions) -> None:
        if actions.persist:
            self._count("persist_batches")
            self._count("records_persisted", len(actions.persist))
        for _, message in (*actions.send_early, *actions.send):
            self._count("messages_sent")
            self._count("sent_" + type(message).__name__)
