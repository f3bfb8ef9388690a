"""External-leader Paxos: a practical node whose leadership attempts are decided by the caller.

Theory of operation
-------------------
Python 3 drop-in for ``external.py`` of essential-paxos 2.0. Some systems already have a failure
detector (a lease service, a cluster manager, an operator). ``ExternalNode`` leaves the decision
*when* to try for leadership to that detector: the application calls ``prepare()``. The node
only keeps track of who leads:

* On winning a quorum of promises it proclaims itself (``send_leadership_proclamation(proposal_id)``,
  sent even in passive mode, because it carries no Paxos state) and reports the change.
* A proclamation with a higher proposal id than the known leader's names the new leader. Our own
  ``leader`` flag is not cleared here (as in 2013); the next ``prepare()`` clears it.
* A quorum of accept NACKs for our current id means a higher id was promised: we step down and no
  leader is known (``leader_uid`` and ``leader_proposal_id`` become ``None``).
"""

from collections.abc import Hashable

from paxos import practical
from paxos.essential import ProposalID, ProposalIDLike, as_proposal_id, proposal_order

__all__ = ["ProposalID", "ExternalMessenger", "ExternalNode"]


class ExternalMessenger(practical.Messenger):
    """The practical callbacks plus leadership proclamations and change notifications."""

    def send_leadership_proclamation(self, proposal_id: ProposalID | None) -> None:
        """Broadcast "I am leader with ``proposal_id``".

        (The 2013 stub omitted the argument although the node always passed it; this is the form the
        node calls.)
        """

    def on_leadership_lost(self) -> None:
        """This node was leader and no longer is."""

    def on_leadership_change(self, prev_leader_uid: Hashable | None, new_leader_uid: Hashable | None) -> None:
        """The known leader changed; either uid may be ``None``."""


class ExternalNode(practical.Node):
    """A ``practical.Node`` that tracks the leader; the application decides when to ``prepare()``."""

    messenger: ExternalMessenger

    def __init__(self, messenger: ExternalMessenger, my_uid: Hashable, quorum_size: int,
                 leader_uid: Hashable | None = None) -> None:
        """Build a node; ``leader_uid`` names an initial leader known to everyone (or ``None``); the
        others then start their proposals at number 2 (the leader skips phase 1 at number 1).

        If this node is that leader it starts as leader with proposal id ``(1, my_uid)``, without
        sending a proclamation (everyone already knows).
        """
        super().__init__(messenger, my_uid, quorum_size)

        self.leader_uid = leader_uid
        self.leader_proposal_id: ProposalID | None = ProposalID(1, leader_uid)
        self._nacks: set[Hashable] = set()

        if self.node_uid == leader_uid:
            self.leader = True
            self.proposal_id = ProposalID(1, self.node_uid)
            self.next_proposal_number = 2
        elif leader_uid is not None:
            # The initial leader skips phase 1 at (1, leader_uid): sound only if no lower proposal can ever
            # be accepted. A node with a lower uid preparing at number 1 would use one, and with it both
            # its value and the initial leader's could be chosen (QA, session 29; essential-paxos 2.0 had
            # this flaw). So the others' proposals start at number 2.
            self.next_proposal_number = 2

    def prepare(self, increment_proposal_number: bool = True) -> None:
        """Forget accept NACKs of the old id, then prepare as ``practical.Proposer.prepare``."""
        self._nacks.clear()
        return super().prepare(increment_proposal_number)

    def recv_leadership_proclamation(self, from_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """Learn of a new leader if ``proposal_id`` beats the known leader's id; else ignore it."""
        if proposal_order(proposal_id) > proposal_order(self.leader_proposal_id):
            old_leader_uid = self.leader_uid

            self.leader_uid = from_uid
            self.leader_proposal_id = as_proposal_id(proposal_id)

            self.observe_proposal(from_uid, proposal_id)

            if old_leader_uid == self.node_uid:
                self.messenger.on_leadership_lost()

            self.messenger.on_leadership_change(old_leader_uid, from_uid)

    def recv_promise(self, acceptor_uid: Hashable, proposal_id: ProposalIDLike | None,
                     prev_proposal_id: ProposalIDLike | None, prev_proposal_value: object) -> None:
        """As ``practical.Proposer``; on becoming leader, proclaim it and report the change.

        Callback order: ``on_leadership_acquired``, ``send_accept`` (value known and active),
        ``send_leadership_proclamation``, ``on_leadership_change(old, self)``.
        """
        was_leader = self.leader

        super().recv_promise(acceptor_uid, proposal_id, prev_proposal_id, prev_proposal_value)

        if not was_leader and self.leader:
            old_leader_uid = self.leader_uid

            self.leader_uid = self.node_uid
            self.leader_proposal_id = self.proposal_id

            self.messenger.send_leadership_proclamation(self.proposal_id)
            self.messenger.on_leadership_change(old_leader_uid, self.node_uid)

    def recv_accept_nack(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                         promised_id: ProposalIDLike | None) -> None:
        """Count accept NACKs for our id; a quorum of them means we lost leadership."""
        if proposal_id == self.proposal_id:
            self._nacks.add(from_uid)

        if self.leader and len(self._nacks) >= self.quorum_size:
            self.leader = False
            self.promises_rcvd = set()
            self.leader_uid = None
            self.leader_proposal_id = None
            self.messenger.on_leadership_lost()
            self.messenger.on_leadership_change(self.node_uid, None)
            self.observe_proposal(from_uid, promised_id)
