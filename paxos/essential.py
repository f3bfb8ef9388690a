"""Essential Paxos: the three roles of single-decree Paxos, nothing more.

Theory of operation
-------------------
This module is the smallest correct statement of Paxos (Lamport, "Paxos Made Simple", section 2)
and the Python 3 drop-in for ``essential.py`` of essential-paxos 2.0. It decides one value.

* A ``Proposer`` picks a proposal id ``ProposalID(number, uid)`` higher than any it used before and
  sends Prepare (phase 1a). When a quorum of acceptors has promised (phase 1b), it sends Accept! with
  the value of the highest-numbered proposal any of them had accepted, or its own value if none had
  (P2c, section 2.2).
* An ``Acceptor`` promises never to accept a proposal numbered below the highest Prepare it has
  answered, and accepts any Accept! that does not break that promise (P1a).
* A ``Learner`` counts Accepted messages per proposal id; a value is decided (chosen) once a quorum
  of acceptors has accepted the same proposal id.

The classes do no I/O. Every output is a call on ``self.messenger`` (see ``Messenger``): the
application delivers the messages and feeds replies back through the ``recv_*`` methods. Messages may
be lost, duplicated or reordered; the rules above keep the decision safe in spite of that. This module
has no NACKs, no leadership notion and no durability: ``paxos.practical`` adds those.

Ordering of proposal ids in Python 3
------------------------------------
The 2013 code relied on Python 2 comparing ``None`` below everything: an acceptor that never
promised has ``promised_id = None``, and "no previous acceptance" is passed as ``None``. Python 3
refuses ``pid > None``. So every comparison here goes through ``proposal_order`` (a sort key where
``None`` is lowest, and a ``None`` uid is lower than any real uid of the same number), and
``ProposalID`` itself implements ``<``, ``<=``, ``>``, ``>=`` with that key so that user code such as
``pid > None`` or ``None < pid`` keeps working. Equality stays plain tuple equality, so
``ProposalID(1, 'A') == (1, 'A')``.

Types: a uid is any hashable value (the seed's tests use strings, ``paxos.classic`` node ids), and the
uids of one system must be ordered among themselves. A proposed value is any object; ``None`` means
"no value". A proposal id given to a ``recv_*`` method may be a plain ``(number, uid)`` tuple
(``ProposalIDLike``).
"""

from collections.abc import Hashable
from typing import Any, NamedTuple, overload

__all__ = [
    "ProposalID",
    "proposal_order",
    "as_proposal_id",
    "ProposalIDLike",
    "Messenger",
    "Proposer",
    "Acceptor",
    "Learner",
]


def proposal_order(proposal_id: "ProposalIDLike | None") -> tuple[object, ...]:
    """Return a sort key for a proposal id that may be ``None``.

    ``None`` sorts below every proposal id; ids are ordered by number, then uid; a ``None`` uid (used
    by ``functional``/``external`` as "no known leader") sorts below every real uid of the same number.
    Two ``None`` values, or two ``None`` uids, are never compared with ``<`` (Python 3 would raise), and
    the key accepts plain ``(number, uid)`` tuples as well as ``ProposalID`` objects.
    """
    if proposal_id is None:
        return (0,)
    number, uid = proposal_id
    # The boolean decides between a None uid and a real one before Python would ever need to compare
    # None with a string; for two None uids the tuples are equal element by element (None == None).
    return (1, number, uid is not None, uid)


class ProposalID(NamedTuple("ProposalID", [("number", int), ("uid", Hashable | None)])):
    """A proposal id ``ProposalID(number, uid)``: totally ordered by number, then proposer uid.

    The uid breaks ties so that two proposers never issue the same id (Paxos Made Simple, 2.5).
    It is a tuple: it equals and hashes like ``(number, uid)``. Ordering comparisons also accept
    ``None`` on either side (``None`` is below every id) and plain tuples.
    """

    __slots__ = ()

    # ``other`` may be None (below every id) or a plain tuple; anything else is NotImplemented.
    def __lt__(self, other: object) -> bool:
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) < proposal_order(other)

    def __le__(self, other: object) -> bool:
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) <= proposal_order(other)

    def __gt__(self, other: object) -> bool:
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) > proposal_order(other)

    def __ge__(self, other: object) -> bool:
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) >= proposal_order(other)


# A proposal id as callers may pass it: a ProposalID or a plain (number, uid) tuple.
ProposalIDLike = tuple[int, Hashable | None]


@overload
def as_proposal_id(proposal_id: None) -> None: ...
@overload
def as_proposal_id(proposal_id: ProposalIDLike) -> ProposalID: ...
@overload
def as_proposal_id(proposal_id: ProposalIDLike | None) -> ProposalID | None: ...
def as_proposal_id(proposal_id: ProposalIDLike | None) -> ProposalID | None:
    """Return ``proposal_id`` as a ``ProposalID`` (``None`` stays ``None``)."""
    if proposal_id is None or isinstance(proposal_id, ProposalID):
        return proposal_id
    return ProposalID(*proposal_id)


def _greater(a: ProposalIDLike | None, b: ProposalIDLike | None) -> bool:
    """``a > b`` for proposal ids where either may be ``None``."""
    return proposal_order(a) > proposal_order(b)


def _greater_or_equal(a: ProposalIDLike | None, b: ProposalIDLike | None) -> bool:
    """``a >= b`` for proposal ids where either may be ``None``."""
    return proposal_order(a) >= proposal_order(b)


class Messenger:
    """The callback interface through which the roles talk to the outside world.

    Subclass it (or pass any object with these methods). Every method only hands a message to the
    application, which must deliver it (or lose it: Paxos tolerates loss). None of the calls may call
    back into the Paxos object synchronously in a way that expects its state to be final; deliver
    later if in doubt.
    """

    def send_prepare(self, proposal_id: ProposalID | None) -> None:
        """Broadcast a Prepare message (phase 1a) carrying ``proposal_id`` to all acceptors."""

    def send_promise(self, proposer_uid: Hashable, proposal_id: ProposalIDLike | None,
                     previous_id: ProposalID | None, accepted_value: object) -> None:
        """Send a Promise (phase 1b) to proposer ``proposer_uid``.

        ``previous_id``/``accepted_value`` are the acceptor's last accepted proposal, or ``None``.
        """

    def send_accept(self, proposal_id: ProposalID | None, proposal_value: object) -> None:
        """Broadcast an Accept! message (phase 2a) to all acceptors."""

    def send_accepted(self, proposal_id: ProposalIDLike | None, accepted_value: object) -> None:
        """Broadcast an Accepted message (phase 2b) to all learners."""

    def on_resolution(self, proposal_id: ProposalID, value: object) -> None:
        """Called once by a learner when ``value`` was decided by ``proposal_id``."""


class Proposer:
    """The proposer role: drives one proposal id at a time through phase 1 and phase 2.

    The user sets ``messenger``, ``proposer_uid`` and ``quorum_size`` (there is no ``__init__``;
    ``practical.Node`` provides one). A quorum is any set of ``quorum_size`` acceptors, normally a
    majority.
    """

    # The user sets it before any call; None until then, as in essential-paxos 2.0 (a type cannot say
    # "set before use", hence the ignore).
    messenger: Messenger = None  # type: ignore[assignment]
    proposer_uid: Hashable | None = None
    quorum_size: int | None = None

    proposed_value: object = None
    proposal_id: ProposalID | None = None
    last_accepted_id: ProposalID | None = None
    next_proposal_number = 1
    promises_rcvd: set[Hashable] | None = None

    def set_proposal(self, value: object) -> None:
        """Set the value to propose, unless one is already set (the first value wins). Sends nothing."""
        if self.proposed_value is None:
            self.proposed_value = value

    def prepare(self) -> None:
        """Start phase 1 with a fresh, higher proposal id: forget old promises, send Prepare.

        Successive calls use numbers 1, 2, 3, ...; a proposal id is never reused, so promises
        collected for an older id cannot be counted for the new one.
        """
        self.promises_rcvd = set()
        self.proposal_id = ProposalID(self.next_proposal_number, self.proposer_uid)
        self.next_proposal_number += 1
        self.messenger.send_prepare(self.proposal_id)

    def _record_promise(self, from_uid: Hashable, prev_accepted_id: ProposalIDLike | None,
                        prev_accepted_value: object) -> None:
        """Count a valid promise and adopt the value of the highest accepted proposal reported.

        This is P2c (Paxos Made Simple, 2.2): if any acceptor of the quorum already accepted a value,
        we must propose the value of the highest-numbered such proposal, because it may be decided.
        """
        assert self.promises_rcvd is not None, "a promise is recorded only after prepare()"
        self.promises_rcvd.add(from_uid)
        if _greater(prev_accepted_id, self.last_accepted_id):
            self.last_accepted_id = as_proposal_id(prev_accepted_id)
            if prev_accepted_value is not None:
                self.proposed_value = prev_accepted_value

    def recv_promise(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                     prev_accepted_id: ProposalIDLike | None, prev_accepted_value: object) -> None:
        """Handle a Promise from acceptor ``from_uid``.

        Promises for another proposal id, and repeated promises from one acceptor, are ignored. When
        exactly ``quorum_size`` distinct acceptors have promised (so this happens once per id) and a
        value is known, Accept! is sent.
        """
        if proposal_id != self.proposal_id or self.promises_rcvd is None:
            return
        if from_uid in self.promises_rcvd:
            return
        self._record_promise(from_uid, prev_accepted_id, prev_accepted_value)
        if len(self.promises_rcvd) == self.quorum_size:
            if self.proposed_value is not None:
                self.messenger.send_accept(self.proposal_id, self.proposed_value)


class Acceptor:
    """The acceptor role: the memory of the protocol.

    ``promised_id`` is the highest Prepare answered, ``accepted_id``/``accepted_value`` the last
    proposal accepted. In a real system these three must survive crashes (see ``practical.Acceptor``).
    """

    messenger: Messenger = None  # type: ignore[assignment]  # set by the user before use, as Proposer's
    promised_id: ProposalID | None = None
    accepted_id: ProposalID | None = None
    accepted_value: object = None

    def recv_prepare(self, from_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """Handle a Prepare: promise (P1a) if the id is at least the promised one, else ignore it.

        A repeated Prepare for the promised id is answered again, because the first Promise may
        have been lost.
        """
        if proposal_id == self.promised_id:
            self.messenger.send_promise(from_uid, proposal_id, self.accepted_id, self.accepted_value)
        elif _greater(proposal_id, self.promised_id):
            self.promised_id = as_proposal_id(proposal_id)
            self.messenger.send_promise(from_uid, proposal_id, self.accepted_id, self.accepted_value)

    def recv_accept_request(self, from_uid: Hashable, proposal_id: ProposalIDLike | None, value: object) -> None:
        """Handle Accept!: accept unless it breaks a promise to a higher id (then ignore it)."""
        if _greater_or_equal(proposal_id, self.promised_id):
            accepted_id = as_proposal_id(proposal_id)
            self.promised_id = accepted_id
            self.accepted_id = accepted_id
            self.accepted_value = value
            self.messenger.send_accepted(accepted_id, value)


class Learner:
    """The learner role: detects that a quorum accepted one proposal id, hence one value.

    ``proposals`` maps a proposal id to ``[accept_count, retain_count, value]``: accept_count counts
    the acceptors that ever accepted it (resolution happens when it reaches ``quorum_size``),
    retain_count those whose latest acceptance it still is (the entry is dropped at 0, which bounds
    memory). ``acceptors`` maps an acceptor uid to the last proposal id it reported. Both are freed
    at resolution. The user sets ``quorum_size`` and ``messenger``.
    """

    messenger: Messenger  # set by the user before use (the class has no default, as in essential-paxos 2.0)
    quorum_size: int | None = None

    # proposal id -> [accept_count, retain_count, value]: a list of mixed types, as in 2013
    proposals: dict[ProposalID, list[Any]] | None = None
    acceptors: dict[Hashable, ProposalID] | None = None
    final_value: object = None
    final_proposal_id: ProposalID | None = None

    @property
    def complete(self) -> bool:
        """True once a value has been decided."""
        return self.final_proposal_id is not None

    def recv_accepted(self, from_uid: Hashable, proposal_id: ProposalIDLike | None, accepted_value: object) -> None:
        """Handle an Accepted message; call ``messenger.on_resolution`` once when a quorum agrees.

        After resolution every message is ignored. Messages older than, or equal to, the last one
        seen from the same acceptor are ignored (duplicates and reordering). Two different values
        for one proposal id are a protocol violation and fail an assertion.
        """
        if self.final_value is not None:
            return

        if self.proposals is None or self.acceptors is None:  # both are set and freed together
            self.proposals = dict()
            self.acceptors = dict()

        last_pid = self.acceptors.get(from_uid)
        if proposal_id is None or not _greater(proposal_id, last_pid):  # (None is never greater)
            return  # duplicate or out-of-date message

        pid = as_proposal_id(proposal_id)
        self.acceptors[from_uid] = pid

        if last_pid is not None:
            previous = self.proposals[last_pid]
            previous[1] -= 1
            if previous[1] == 0:
                del self.proposals[last_pid]

        if pid not in self.proposals:
            self.proposals[pid] = [0, 0, accepted_value]

        entry = self.proposals[pid]
        # One proposal id carries one value (a proposer sends a single Accept! value per id).
        assert accepted_value == entry[2], "Value mismatch for single proposal!"

        entry[0] += 1
        entry[1] += 1

        if entry[0] == self.quorum_size:
            self._resolve(pid, accepted_value)

    def _resolve(self, proposal_id: ProposalID, accepted_value: object) -> None:
        """Record the decision, free the bookkeeping and tell the application (once)."""
        self.final_value = accepted_value
        self.final_proposal_id = proposal_id
        self.proposals = None
        self.acceptors = None
        self.messenger.on_resolution(proposal_id, accepted_value)
