"""Practical Paxos: the essential roles plus what a deployment needs.

Theory of operation
-------------------
Python 3 drop-in for ``practical.py`` of essential-paxos 2.0, plus one later feature
(``Learner.final_acceptors``). On top of ``paxos.essential`` it adds:

* NACKs. An acceptor that refuses a Prepare or an Accept! says so (``send_prepare_nack``,
  ``send_accept_nack``) with the id it promised, so a proposer learns at once that it must pick a
  higher number instead of waiting for a timeout (Paxos Made Simple, end of 2.2, "abandon" optimisation).
* A leadership flag. A proposer that collected a quorum of promises is ``leader``: it may send Accept!
  for new values directly (``set_proposal``), skipping phase 1. Leadership is a belief, not a lock:
  another proposer may already have a higher id.
* Passive mode. With ``active = False`` a role updates its state exactly as usual but sends nothing
  (``on_*`` callbacks still fire). Useful for a node catching up or being observed.
* A persistence protocol for acceptors. An acceptor may not let a Promise or an Accepted leave before
  the state that backs it is on stable storage, or a crash could make it forget a promise. So a new
  promise or acceptance only changes state and marks a reply as pending; ``persistance_required``
  (spelled as in the 2013 API) becomes True; the application saves ``promised_id``,
  ``accepted_id``, ``accepted_value`` and then calls ``persisted()``, which sends the pending replies.
  While a reply is pending, further new prepares (or accepts) are dropped, so that one save always
  covers exactly the state the reply announces. Duplicates of the current promise or acceptance are
  answered at once once that state is durable; while its reply is still pending they are dropped too
  (``persisted()`` sends the reply they ask for). essential-paxos 2.0 answered them at once even then,
  letting a Promise or Accepted leave before the state behind it was saved. After a restart,
  ``recover()`` reloads it.
* ``Node``: one object playing proposer, acceptor and learner, with a constructor.

Everything is still driven through the messenger; no I/O happens here.
"""

from collections.abc import Hashable

from paxos import essential
from paxos.essential import ProposalID, ProposalIDLike, proposal_order

__all__ = ["ProposalID", "Messenger", "Proposer", "Acceptor", "Learner", "Node"]


class Messenger(essential.Messenger):
    """The essential callbacks plus NACKs and the leadership notification."""

    def send_prepare_nack(self, to_uid: Hashable, proposal_id: ProposalIDLike | None,
                          promised_id: ProposalID | None) -> None:
        """Tell proposer ``to_uid`` that its Prepare ``proposal_id`` lost to ``promised_id``."""

    def send_accept_nack(self, to_uid: Hashable, proposal_id: ProposalIDLike | None,
                         promised_id: ProposalID | None) -> None:
        """Tell proposer ``to_uid`` that its Accept! ``proposal_id`` lost to ``promised_id``."""

    def on_leadership_acquired(self) -> None:
        """This proposer collected a quorum of promises (it is not guaranteed to be the only leader)."""


class Proposer(essential.Proposer):
    """A proposer with a leadership flag, passive mode and NACK handling."""

    messenger: Messenger  # practical's callbacks (set by the user, or by Node)
    leader = False
    active = True

    def set_proposal(self, value: object) -> None:
        """Set the value to propose if none is set; a leader sends Accept! for it at once.

        A leader already holds a quorum of promises for ``proposal_id``, so phase 1 is done and the
        value can go straight to phase 2.
        """
        if self.proposed_value is None:
            self.proposed_value = value
            if self.leader and self.active:
                self.messenger.send_accept(self.proposal_id, value)

    def prepare(self, increment_proposal_number: bool = True) -> None:
        """Send Prepare; by default for a new, higher proposal id.

        With ``increment_proposal_number=True`` leadership is dropped and promises are forgotten,
        as in ``essential``. With ``False`` the current id is re-sent (to retransmit after loss) and
        the promises already collected are kept. Nothing is sent in passive mode.
        """
        if increment_proposal_number:
            self.leader = False
            self.promises_rcvd = set()
            # Always a ProposalID (the 2013 code built a plain tuple here), so that receivers can
            # read ``.number`` and compare it with None.
            self.proposal_id = ProposalID(self.next_proposal_number, self.proposer_uid)
            self.next_proposal_number += 1

        if self.active:
            self.messenger.send_prepare(self.proposal_id)

    def observe_proposal(self, from_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """Note a proposal id used by another node so that our next one is higher.

        Our own ids are ignored (we already account for them).
        """
        if from_uid == self.proposer_uid or proposal_id is None:
            return
        ours = ProposalID(self.next_proposal_number, self.proposer_uid)
        if proposal_order(proposal_id) >= proposal_order(ours):
            self.next_proposal_number = proposal_id[0] + 1

    def recv_prepare_nack(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                          promised_id: ProposalIDLike | None) -> None:
        """An acceptor refused our Prepare: remember its promise so the next ``prepare()`` beats it.

        Does not give up leadership and does not re-prepare; the caller decides when to retry.
        """
        self.observe_proposal(from_uid, promised_id)

    def recv_accept_nack(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                         promised_id: ProposalIDLike | None) -> None:
        """An acceptor refused our Accept!. A hook for subclasses; nothing happens here."""

    def resend_accept(self) -> None:
        """Retransmit Accept! if we are an active leader with a value (for lost messages)."""
        if self.leader and self.proposed_value and self.active:
            self.messenger.send_accept(self.proposal_id, self.proposed_value)

    def recv_promise(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                     prev_accepted_id: ProposalIDLike | None, prev_accepted_value: object) -> None:
        """Handle a Promise; at exactly ``quorum_size`` promises become leader.

        Any promise, even for a foreign id, is observed so our next id is higher. Promises arriving
        while we are already leader, for another id, or repeated from one acceptor are ignored. On
        becoming leader ``on_leadership_acquired`` is called (even when passive), then Accept! is sent
        if a value is known and we are active.
        """
        self.observe_proposal(from_uid, proposal_id)

        if self.leader or self.promises_rcvd is None:
            return
        if proposal_id != self.proposal_id or from_uid in self.promises_rcvd:
            return

        self._record_promise(from_uid, prev_accepted_id, prev_accepted_value)

        if len(self.promises_rcvd) == self.quorum_size:
            self.leader = True
            self.messenger.on_leadership_acquired()
            if self.proposed_value is not None and self.active:
                self.messenger.send_accept(self.proposal_id, self.proposed_value)


class Acceptor(essential.Acceptor):
    """An acceptor that sends NACKs and withholds replies until its state is persisted."""

    messenger: Messenger  # practical's callbacks (set by the user, or by Node)
    pending_promise: Hashable | None = None  # uid of the proposer owed a Promise once state is durable
    pending_accepted: Hashable | None = None  # uid whose Accept! is owed an Accepted once state is durable
    active = True

    @property
    def persistance_required(self) -> bool:
        """True while a reply waits for ``promised_id``/``accepted_id``/``accepted_value`` to be saved.

        (The misspelling is the 2013 API's and is kept for compatibility.)
        """
        return self.pending_promise is not None or self.pending_accepted is not None

    def recover(self, promised_id: ProposalIDLike | None, accepted_id: ProposalIDLike | None,
                accepted_value: object) -> None:
        """Restore the durable state after a restart. Sends nothing."""
        self.promised_id = essential.as_proposal_id(promised_id)
        self.accepted_id = essential.as_proposal_id(accepted_id)
        self.accepted_value = accepted_value

    def recv_prepare(self, from_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """Handle a Prepare.

        * The id we promised already (a retransmission): reply at once if that promise is durable;
          while a save is pending (a Promise or an Accepted not sent yet) drop it: the state the
          Promise would report is not on disk yet, and ``persisted()`` sends the pending reply.
        * A higher id, with no promise pending: promise it and mark the reply pending until
          ``persisted()``. With a promise pending the Prepare is dropped silently.
        * A lower id: send a prepare NACK carrying our promise.
        """
        if proposal_id == self.promised_id:
            if self.active and not self.persistance_required:
                self.messenger.send_promise(from_uid, proposal_id, self.accepted_id, self.accepted_value)

        elif proposal_order(proposal_id) > proposal_order(self.promised_id):
            if self.pending_promise is None:
                self.promised_id = essential.as_proposal_id(proposal_id)
                if self.active:
                    self.pending_promise = from_uid

        else:
            if self.active:
                self.messenger.send_prepare_nack(from_uid, proposal_id, self.promised_id)

    def recv_accept_request(self, from_uid: Hashable, proposal_id: ProposalIDLike | None, value: object) -> None:
        """Handle an Accept!.

        * The proposal and value we accepted already: send Accepted again at once, once that acceptance
          is durable; while a save is pending, drop it (``persisted()`` sends the Accepted).
        * At or above our promise, with no acceptance pending: accept it and mark the Accepted pending
          until ``persisted()``. With one pending the request is dropped silently.
        * Below our promise: send an accept NACK; state unchanged.
        """
        if proposal_id == self.accepted_id and value == self.accepted_value:
            if self.active and not self.persistance_required:
                self.messenger.send_accepted(proposal_id, value)

        elif proposal_order(proposal_id) >= proposal_order(self.promised_id):
            if self.pending_accepted is None:
                accepted_id = essential.as_proposal_id(proposal_id)
                self.promised_id = accepted_id
                self.accepted_id = accepted_id
                self.accepted_value = value
                if self.active:
                    self.pending_accepted = from_uid

        else:
            if self.active:
                self.messenger.send_accept_nack(from_uid, proposal_id, self.promised_id)

    def persisted(self) -> None:
        """Call after saving ``promised_id``, ``accepted_id`` and ``accepted_value`` to stable storage.

        Sends the pending Promise (with the current, now durable, values), then the pending Accepted,
        and clears both. This is the acceptor's persist-then-send rule.
        """
        # ``is not None``, not truthiness: a uid may be any hashable, 0 and "" included (essential-paxos
        # 2.0 tested truthiness, and a proposer with uid 0 never got its Promise).
        if self.active:
            if self.pending_promise is not None:
                self.messenger.send_promise(
                    self.pending_promise, self.promised_id, self.accepted_id, self.accepted_value
                )
            if self.pending_accepted is not None:
                self.messenger.send_accepted(self.accepted_id, self.accepted_value)
        self.pending_promise = None
        self.pending_accepted = None


class Learner(essential.Learner):
    """The essential learner, plus ``final_acceptors``.

    ``final_acceptors`` is ``None`` until resolution. At resolution it is the set of the
    ``quorum_size`` acceptors that accepted the winning proposal id. Afterwards every Accepted whose
    value equals ``final_value`` adds its sender, whatever its proposal id: once a value is decided,
    an acceptor that accepted that value is known to hold it (useful to pick up-to-date peers).
    ``on_resolution`` is still called only once.
    """

    messenger: Messenger  # practical's callbacks (set by the user, or by Node)
    final_acceptors: set[Hashable] | None = None
    _accepted_by: dict[ProposalIDLike, set[Hashable]] | None = None  # proposal id -> uids counted for it,
    # mirrors the entries of ``proposals``

    def recv_accepted(self, from_uid: Hashable, proposal_id: ProposalIDLike | None, accepted_value: object) -> None:
        """As ``essential.Learner.recv_accepted``; after resolution, track acceptors of the value."""
        if self.final_value is not None:
            if accepted_value == self.final_value:
                assert self.final_acceptors is not None, "set at resolution, with final_value"
                self.final_acceptors.add(from_uid)
            return

        # The base class counts a message only if it is newer than the sender's last one. Record the
        # sender for that proposal id first, so that the set is complete when resolution happens
        # inside the base class call. The set grows exactly when ``accept_count`` does.
        last_pid = self.acceptors.get(from_uid) if self.acceptors is not None else None
        counted = proposal_id is not None and proposal_order(proposal_id) > proposal_order(last_pid)
        if counted and proposal_id is not None:
            if self._accepted_by is None:
                self._accepted_by = dict()
            self._accepted_by.setdefault(proposal_id, set()).add(from_uid)

        super().recv_accepted(from_uid, proposal_id, accepted_value)

        # The base class drops a proposal's entry when no acceptor retains it any more (its counts
        # restart from zero if it comes back); drop our set with it to stay in step.
        # (Without a resolution, proposals and our sets are still there.)
        if counted and self.proposals is not None and self._accepted_by is not None and last_pid is not None:
            if last_pid not in self.proposals:
                self._accepted_by.pop(last_pid, None)

    def _resolve(self, proposal_id: ProposalID, accepted_value: object) -> None:
        # Set the attribute before ``on_resolution`` runs so that the callback can read it.
        assert self._accepted_by is not None, "resolution follows a counted Accepted"
        self.final_acceptors = set(self._accepted_by[proposal_id])
        self._accepted_by = None
        super()._resolve(proposal_id, accepted_value)


class Node(Proposer, Acceptor, Learner):
    """One participant playing all three roles with one uid and quorum size."""

    messenger: Messenger  # always set: the constructor takes it
    quorum_size: int  # the same

    def __init__(self, messenger: Messenger, node_uid: Hashable, quorum_size: int) -> None:
        """Build a node; ``messenger`` receives every output, ``quorum_size`` counts acceptors."""
        self.messenger = messenger
        self.node_uid = node_uid
        self.quorum_size = quorum_size

    # The seed's API: a node's proposer uid is its node uid, read-only, where essential.Proposer has a
    # settable attribute (no type says "read-only in this subclass").
    @property
    def proposer_uid(self) -> Hashable:  # type: ignore[override]
        """The proposer uid is the node uid (read-only)."""
        return self.node_uid

    def change_quorum_size(self, quorum_size: int) -> None:
        """Set a new quorum size (for membership changes decided elsewhere)."""
        self.quorum_size = quorum_size

    def recv_prepare(self, from_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """Observe the id (so our own next id is higher), then act as acceptor."""
        self.observe_proposal(from_uid, proposal_id)
        return Acceptor.recv_prepare(self, from_uid, proposal_id)
