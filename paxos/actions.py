"""What the core asks its shell to do, and the durable records it asks it to keep.

The contract, as etcd-io/raft's ``Ready``: after feeding inputs to a ``Replica``, call
``take_actions()`` and carry out the result **in this order**:

0. ``send_early`` (only with ``Options.early_accepts``): phase-2a Accepts that may leave before step 1
   is done, because they promise nothing on the sender's behalf.
1. ``persist``: append every record to stable storage and make it durable (fsync). One fsync may cover
   all records of the batch (group commit). Then report ``decided_slot`` with ``Replica.note_durable``
   (needed only with ``Options.early_accepts``).
2. ``send``: hand each ``(to_node_id, message)`` to the network. Messages may promise or accept things
   that are only true once step 1 is done, which is why they wait for it.
3. ``apply``: apply each ``(slot, batch)`` to the state machine, in the order given (slot order, no gaps).
4. ``reads``: each ``(read_id, slot)`` may now be answered from the state machine: it has applied at
   least ``slot`` and leadership was confirmed by a majority after the read arrived.
5. ``rejected_reads`` / ``dropped_proposals``: this node stopped being leader before it could serve
   them; tell the client to retry elsewhere (a dropped proposal was never put into a slot).
6. ``snapshot_to``: node ids that asked for slots this node has compacted; send them the latest
   snapshot (the shell owns snapshots; the core only knows their slot).

Records are folded into a ``DurableState`` by ``DurableState.apply_record``; recovery builds a
``Replica`` from the state folded from every durable record (see ``DurableState.replay``).
"""
from __future__ import annotations

import marshal
from collections.abc import Iterable
from dataclasses import dataclass, field

from .ballot import Ballot
from .membership import ScheduleEntry
from .messages import Accept, Message, Value


@dataclass(frozen=True, slots=True)
class PromiseRecord:
    """The acceptor promised ``ballot`` (covers every slot)."""

    ballot: Ballot


@dataclass(frozen=True, slots=True)
class AcceptRecord:
    """The acceptor accepted ``value`` at ``slot`` in ``ballot`` (implies a promise of ``ballot``)."""

    slot: int
    ballot: Ballot
    value: Value


@dataclass(frozen=True, slots=True)
class DecideRecord:
    """``value`` is chosen at ``slot``."""

    slot: int
    value: Value


Record = PromiseRecord | AcceptRecord | DecideRecord


def pack_value(value: Value) -> bytes:
    """A value as one ``bytes`` object (``marshal``), the form ``paxos.replica`` keeps applied slots'
    values in until a snapshot covers them; ``unpack_value`` gives the tuple back."""
    return marshal.dumps(value)


def value_bytes(kept: Value | bytes) -> int:
    """The size of a slot's value as kept: a packed value's length, else the sum of its commands' lengths
    (what catch-up answers are bounded by: ``Options.catchup_bytes_max``)."""
    if type(kept) is bytes:
        return len(kept)
    return sum(len(c) for c in kept if isinstance(c, (bytes, str)))


def unpack_value(kept: Value | bytes) -> Value:
    """The tuple of commands of a value, packed (``pack_value``) or not (returned as it is). Raises
    ``TypeError`` for bytes that are not a packed value."""
    if type(kept) is bytes:
        try:
            value = marshal.loads(kept)
        except (EOFError, ValueError, TypeError) as exc:
            raise TypeError(f"not a packed value: {kept[:16]!r}...") from exc
        if type(value) is not tuple:
            raise TypeError(f"not a packed value: {kept[:16]!r}...")
        return value
    return kept  # type: ignore[return-value]  # (not bytes: a tuple)


@dataclass(slots=True)
class DurableState:
    """Everything a replica needs after a crash, as recovered from storage.

    ``accepted`` and ``decided`` hold only slots above ``snapshot_slot``; the snapshot covers the rest.
    From ``Replica.durable_state(packed=True)`` the values of applied slots are packed (``pack_value``):
    ``unpack_value`` reads both forms, and ``kvstore.storage`` writes both.
    """

    promised: Ballot = Ballot.ZERO
    accepted: dict[int, tuple[Ballot, Value]] = field(default_factory=dict)  # slot -> (ballot, value)
    decided: dict[int, Value] = field(default_factory=dict)  # slot -> value
    snapshot_slot: int = 0
    # The configuration schedule the snapshot carries (``ConfigSchedule.through(snapshot_slot)``:
    # ``(effective_slot, source_slot, Config)`` entries); empty means the constructor's configuration.
    configs: tuple[ScheduleEntry, ...] = ()

    def apply_record(self, record: Record) -> None:
        match record:
            case PromiseRecord(ballot=ballot):
                if ballot > self.promised:
                    self.promised = ballot
            case AcceptRecord(slot=slot, ballot=ballot, value=value):
                if ballot > self.promised:
                    self.promised = ballot
                if slot > self.snapshot_slot:
                    old = self.accepted.get(slot)
                    if old is None or ballot >= old[0]:
                        self.accepted[slot] = (ballot, value)
            case DecideRecord(slot=slot, value=value):
                if slot > self.snapshot_slot:
                    accepted = self.accepted.get(slot)
                    if accepted is not None and accepted[1] == value:
                        # A log holds the value twice (accepted, then decided): keep one object for
                        # both, as the replica did before the restart, not two equal copies.
                        value = accepted[1]
                    self.decided[slot] = value
            case _:
                raise TypeError(f"not a durable record: {record!r}")

    def compact(self, snapshot_slot: int) -> None:
        """Forget slots at or below ``snapshot_slot`` (a snapshot now covers them)."""
        if snapshot_slot <= self.snapshot_slot:
            return
        self.snapshot_slot = snapshot_slot
        self.accepted = {s: v for s, v in self.accepted.items() if s > snapshot_slot}
        self.decided = {s: v for s, v in self.decided.items() if s > snapshot_slot}

    def records(self) -> list[Record]:
        """The records that rebuild this state (used to rewrite a log after compaction)."""
        out: list[Record] = [PromiseRecord(self.promised)]
        out.extend(AcceptRecord(s, b, v) for s, (b, v) in sorted(self.accepted.items()))
        out.extend(DecideRecord(s, v) for s, v in sorted(self.decided.items()))
        return out

    @classmethod
    def replay(cls, records: Iterable[Record], snapshot_slot: int = 0,
               configs: tuple[ScheduleEntry, ...] = ()) -> DurableState:
        """What a restarted node gives ``Replica(state=...)``: its log's ``records`` above its snapshot
        at ``snapshot_slot``, and ``configs``, the schedule that snapshot carries
        (``Replica.schedule_through(slot)`` when it was taken; ``()`` without membership changes). A node
        restarted without the schedule of a snapshot that passed a change of members would go back to
        its bootstrap configuration (a removed node would campaign again)."""
        state = cls(snapshot_slot=snapshot_slot, configs=tuple(configs))
        for record in records:
            state.apply_record(record)
        return state


@dataclass(slots=True)
class Actions:
    """One batch of work for the shell; see the module docstring for the order to carry it out in."""

    persist: list[Record] = field(default_factory=list)
    send: list[tuple[int, Message]] = field(default_factory=list)  # (to node id, message)
    apply: list[tuple[int, Value]] = field(default_factory=list)  # (slot, batch)
    reads: list[tuple[int, int]] = field(default_factory=list)  # (read_id, slot)
    rejected_reads: list[int] = field(default_factory=list)  # read ids
    dropped_proposals: list[bytes] = field(default_factory=list)  # commands
    snapshot_to: list[int] = field(default_factory=list)  # node ids
    # With Options.early_accepts: phase-2a Accepts the shell may send BEFORE ``persist`` is durable
    # (they promise nothing); their decided_slot is capped at the last durable mark (``note_durable``).
    send_early: list[tuple[int, Accept]] = field(default_factory=list)
    # The core's decided slot when this batch was taken: once ``persist`` is durable, the shell reports
    # it with ``Replica.note_durable`` (only Options.early_accepts needs that).
    decided_slot: int = 0

    def __bool__(self) -> bool:
        return bool(
            self.persist or self.send or self.apply or self.reads or self.rejected_reads
            or self.dropped_proposals or self.snapshot_to or self.send_early
        )
