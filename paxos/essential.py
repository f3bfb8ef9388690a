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
"""

import collections

__all__ = [
    "ProposalID",
    "proposal_order",
    "as_proposal_id",
    "Messenger",
    "Proposer",
    "Acceptor",
    "Learner",
]


def proposal_order(proposal_id):
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


class ProposalID(collections.namedtuple("ProposalID", ["number", "uid"])):
    """A proposal id ``ProposalID(number, uid)``: totally ordered by number, then proposer uid.

    The uid breaks ties so that two proposers never issue the same id (Paxos Made Simple, 2.5).
    It is a tuple: it equals and hashes like ``(number, uid)``. Ordering comparisons also accept
    ``None`` on either side (``None`` is below every id) and plain tuples.
    """

    __slots__ = ()

    def __lt__(self, other):
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) < proposal_order(other)

    def __le__(self, other):
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) <= proposal_order(other)

    def __gt__(self, other):
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) > proposal_order(other)

    def __ge__(self, other):
        if other is not None and not isinstance(other, tuple):
            return NotImplemented
        return proposal_order(self) >= proposal_order(other)


def as_proposal_id(proposal_id):
    """Return ``proposal_id`` as a ``ProposalID`` (``None`` stays ``None``)."""
    if proposal_id is None or isinstance(proposal_id, ProposalID):
        return proposal_id
    return ProposalID(*proposal_id)


def _greater(a, b):
    """``a > b`` for proposal ids where either may be ``None``."""
    return proposal_order(a) > proposal_order(b)


def _greater_or_equal(a, b):
    """``a >= b`` for proposal ids where either may be ``None``."""
    return proposal_order(a) >= proposal_order(b)


class Messenger(object):
    """The callback interface through which the roles talk to the outside world.

    Subclass it (or pass any object with these methods). Every method only hands a message to the
    application, which must deliver it (or lose it: Paxos tolerates loss). None of the calls may call
    back into the Paxos object synchronously in a way that expects its state to be final; deliver
    later if in doubt.
    """

    def send_prepare(self, proposal_id):
        """Broadcast a Prepare message (phase 1a) carrying ``proposal_id`` to all acceptors."""

    def send_promise(self, proposer_uid, proposal_id, previous_id, accepted_value):
        """Send a Promise (phase 1b) to proposer ``proposer_uid``.

        ``previous_id``/``accepted_value`` are the acceptor's last accepted proposal, or ``None``.
        """

    def send_accept(self, proposal_id, proposal_value):
        """Broadcast an Accept! message (phase 2a) to all acceptors."""

    def send_accepted(self, proposal_id, accepted_value):
        """Broadcast an Accepted message (phase 2b) to all learners."""

    def on_resolution(self, proposal_id, value):
        """Called once by a learner when ``value`` was decided by ``proposal_id``."""


class Proposer(object):
    """The proposer role: drives one proposal id at a time through phase 1 and phase 2.

    The user sets ``messenger``, ``proposer_uid`` and ``quorum_size`` (there is no ``__init__``;
    ``practical.Node`` provides one). A quorum is any set of ``quorum_size`` acceptors, normally a
    majority.
    """

    messenger = None
    proposer_uid = None
    quorum_size = None

    proposed_value = None
    proposal_id = None
    last_accepted_id = None
    next_proposal_number = 1
    promises_rcvd = None

    def set_proposal(self, value):
        """Set the value to propose, unless one is already set (the first value wins). Sends nothing."""
        if self.proposed_value is None:
            self.proposed_value = value

    def prepare(self):
        """Start phase 1 with a fresh, higher proposal id: forget old promises, send Prepare.

        Successive calls use numbers 1, 2, 3, ...; a proposal id is never reused, so promises
        collected for an older id cannot be counted for the new one.
        """
        self.promises_rcvd = set()
        self.proposal_id = ProposalID(self.next_proposal_number, self.proposer_uid)
        self.next_proposal_number += 1
        self.messenger.send_prepare(self.proposal_id)

    def _record_promise(self, from_uid, prev_accepted_id, prev_accepted_value):
        """Count a valid promise and adopt the value of the highest accepted proposal reported.

        This is P2c (Paxos Made Simple, 2.2): if any acceptor of the quorum already accepted a value,
        we must propose the value of the highest-numbered such proposal, because it may be decided.
        """
        self.promises_rcvd.add(from_uid)
        if _greater(prev_accepted_id, self.last_accepted_id):
            self.last_accepted_id = as_proposal_id(prev_accepted_id)
            if prev_accepted_value is not None:
                self.proposed_value = prev_accepted_value

    def recv_promise(self, from_uid, proposal_id, prev_accepted_id, prev_accepted_value):
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


class Acceptor(object):
    """The acceptor role: the memory of the protocol.

    ``promised_id`` is the highest Prepare answered, ``accepted_id``/``accepted_value`` the last
    proposal accepted. In a real system these three must survive crashes (see ``practical.Acceptor``).
    """

    messenger = None
    promised_id = None
    accepted_id = None
    accepted_value = None

    def recv_prepare(self, from_uid, proposal_id):
        """Handle a Prepare: promise (P1a) if the id is at least the promised one, else ignore it.

        A repeated Prepare for the promised id is answered again, because the first Promise may
        have been lost.
        """
        if proposal_id == self.promised_id:
            self.messenger.send_promise(from_uid, proposal_id, self.accepted_id, self.accepted_value)
        elif _greater(proposal_id, self.promised_id):
            self.promised_id = as_proposal_id(proposal_id)
            self.messenger.send_promise(from_uid, proposal_id, self.accepted_id, self.accepted_value)

    def recv_accept_request(self, from_uid, proposal_id, value):
        """Handle Accept!: accept unless it breaks a promise to a higher id (then ignore it)."""
        if _greater_or_equal(proposal_id, self.promised_id):
            proposal_id = as_proposal_id(proposal_id)
            self.promised_id = proposal_id
            self.accepted_id = proposal_id
            self.accepted_value = value
            self.messenger.send_accepted(proposal_id, value)


class Learner(object):
    """The learner role: detects that a quorum accepted one proposal id, hence one value.

    ``proposals`` maps a proposal id to ``[accept_count, retain_count, value]``: accept_count counts
    the acceptors that ever accepted it (resolution happens when it reaches ``quorum_size``),
    retain_count those whose latest acceptance it still is (the entry is dropped at 0, which bounds
    memory). ``acceptors`` maps an acceptor uid to the last proposal id it reported. Both are freed
    at resolution. The user sets ``quorum_size`` and ``messenger``.
    """

    quorum_size = None

    proposals = None
    acceptors = None
    final_value = None
    final_proposal_id = None

    @property
    def complete(self):
        """True once a value has been decided."""
        return self.final_proposal_id is not None

    def recv_accepted(self, from_uid, proposal_id, accepted_value):
        """Handle an Accepted message; call ``messenger.on_resolution`` once when a quorum agrees.

        After resolution every message is ignored. Messages older than, or equal to, the last one
        seen from the same acceptor are ignored (duplicates and reordering). Two different values
        for one proposal id are a protocol violation and fail an assertion.
        """
        if self.final_value is not None:
            return

        if self.proposals is None:
            self.proposals = dict()
            self.acceptors = dict()

        last_pid = self.acceptors.get(from_uid)
        if not _greater(proposal_id, last_pid):
            return  # duplicate or out-of-date message

        proposal_id = as_proposal_id(proposal_id)
        self.acceptors[from_uid] = proposal_id

        if last_pid is not None:
            previous = self.proposals[last_pid]
            previous[1] -= 1
            if previous[1] == 0:
                del self.proposals[last_pid]

        if proposal_id not in self.proposals:
            self.proposals[proposal_id] = [0, 0, accepted_value]

        entry = self.proposals[proposal_id]
        # One proposal id carries one value (a proposer sends a single Accept! value per id).
        assert accepted_value == entry[2], "Value mismatch for single proposal!"

        entry[0] += 1
        entry[1] += 1

        if entry[0] == self.quorum_size:
            self._resolve(proposal_id, accepted_value)

    def _resolve(self, proposal_id, accepted_value):
        """Record the decision, free the bookkeeping and tell the application (once)."""
        self.final_value = accepted_value
        self.final_proposal_id = proposal_id
        self.proposals = None
        self.acceptors = None
        self.messenger.on_resolution(proposal_id, accepted_value)
