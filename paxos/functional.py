"""Functional Paxos: a practical node with heartbeat-based leader election.

Theory of operation
-------------------
Python 3 drop-in for ``functional.py`` of essential-paxos 2.0. Paxos is safe with any number of
proposers but makes progress only when one proposer leads for long enough (Paxos Made Simple, 2.4).
``HeartbeatNode`` elects that leader with heartbeats:

* The leader calls ``pulse()`` every ``hb_period``: it broadcasts ``send_heartbeat(proposal_id)`` and
  schedules the next pulse through ``messenger.schedule``.
* Every node records when it last heard a heartbeat of the current leader. The leader is identified by
  ``leader_proposal_id``; a heartbeat with a higher id announces a new leader, one with a lower id is
  stale and ignored.
* The application calls ``poll_liveness()`` periodically. If no heartbeat came within
  ``liveness_window`` and nobody else sent a Prepare within ``1.5 * liveness_window`` (to let a
  competing candidate finish), the node tries to acquire leadership: ``prepare()``. While acquiring,
  a prepare NACK makes it prepare again at once with a higher number.
* A quorum of promises makes the node leader: it starts pulsing and reports the change. A quorum of
  accept NACKs for its current id means someone else has a higher id: it steps down.

Time comes from ``self.timestamp()``, by default ``time.time`` (seconds). This is one of the two
documented exceptions to the rule that ``paxos`` reads no clock (see docs/design.md); override
``timestamp`` in a subclass to inject a clock, as tests do. ``hb_period`` and ``liveness_window`` are
class attributes that a subclass may set; the constructor overrides them only when given truthy values.
"""

import time
from collections.abc import Callable, Hashable

from paxos import practical
from paxos.essential import ProposalID, ProposalIDLike, as_proposal_id, proposal_order

__all__ = ["ProposalID", "HeartbeatMessenger", "HeartbeatNode"]


class HeartbeatMessenger(practical.Messenger):
    """The practical callbacks plus heartbeats, timers and leadership-change notifications."""

    def send_heartbeat(self, leader_proposal_id: ProposalID | None) -> None:
        """Broadcast a heartbeat for ``leader_proposal_id`` (sent by the leader only)."""

    def schedule(self, msec_delay: float, func_obj: Callable[[], None]) -> None:
        """Call ``func_obj()`` after the delay.

        ``pulse()`` passes ``hb_period`` unchanged, so the delay is in the same unit as
        ``timestamp()`` (seconds by default) despite the parameter's name, kept from the 2013 API.
        """

    def on_leadership_lost(self) -> None:
        """This node was leader and no longer is."""

    def on_leadership_change(self, prev_leader_uid: Hashable | None, new_leader_uid: Hashable | None) -> None:
        """The known leader changed; either uid may be ``None`` (no known leader)."""


class HeartbeatNode(practical.Node):
    """A ``practical.Node`` that elects a leader with heartbeats and a liveness window."""

    messenger: HeartbeatMessenger
    hb_period: float = 1
    liveness_window: float = 5

    # Looked up on the instance and called as ``self.timestamp()``; being a plain function stored on
    # the class it would become a bound method, so wrap it: ``time.time`` takes no arguments.
    timestamp = staticmethod(time.time)

    def __init__(self, messenger: HeartbeatMessenger, my_uid: Hashable, quorum_size: int,
                 leader_uid: Hashable | None = None, hb_period: float | None = None,
                 liveness_window: float | None = None) -> None:
        """Build a node; ``leader_uid`` names an initial leader known to everyone (or ``None``); the
        others then start their proposals at number 2 (the leader skips phase 1 at number 1).

        If this node is that leader it starts as leader with proposal id ``(1, my_uid)``; the caller
        must call ``pulse()`` to start heartbeats. ``hb_period`` and ``liveness_window`` override the
        class values when given.
        """
        super().__init__(messenger, my_uid, quorum_size)

        self.leader_uid = leader_uid
        self.leader_proposal_id: ProposalID | None = ProposalID(1, leader_uid)
        # ``timestamp`` may be overridden to read the messenger's clock, so the messenger is set first.
        self._tlast_hb = self.timestamp()
        self._tlast_prep = self._tlast_hb
        self._acquiring = False
        self._nacks: set[Hashable] = set()

        if hb_period:
            self.hb_period = hb_period
        if liveness_window:
            self.liveness_window = liveness_window

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

    def leader_is_alive(self) -> bool:
        """True if a heartbeat of the current leader arrived within ``liveness_window``."""
        return self.timestamp() - self._tlast_hb <= self.liveness_window

    def observed_recent_prepare(self) -> bool:
        """True if another node sent a Prepare within ``1.5 * liveness_window``."""
        return self.timestamp() - self._tlast_prep <= self.liveness_window * 1.5

    def poll_liveness(self) -> None:
        """Call periodically: if the leader seems dead and nobody else is trying, try to lead.

        While already acquiring, each poll prepares again with a higher number.
        """
        if not self.leader_is_alive() and not self.observed_recent_prepare():
            if self._acquiring:
                self.prepare()
            else:
                self.acquire_leadership()

    def recv_heartbeat(self, from_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """Handle a heartbeat: learn of a new leader (higher id) and refresh the leader's liveness."""
        if proposal_order(proposal_id) > proposal_order(self.leader_proposal_id):
            # A new leader: stop our own attempt, step down if we led.
            self._acquiring = False
            old_leader_uid = self.leader_uid

            self.leader_uid = from_uid
            self.leader_proposal_id = as_proposal_id(proposal_id)

            if self.leader and from_uid != self.node_uid:
                self.leader = False
                self.messenger.on_leadership_lost()
                self.observe_proposal(from_uid, proposal_id)

            self.messenger.on_leadership_change(old_leader_uid, from_uid)

        if self.leader_proposal_id == proposal_id:
            self._tlast_hb = self.timestamp()

    def pulse(self) -> None:
        """While leader: heartbeat ourselves and everyone, and schedule the next pulse."""
        if self.leader:
            self.recv_heartbeat(self.node_uid, self.proposal_id)
            self.messenger.send_heartbeat(self.proposal_id)
            self.messenger.schedule(self.hb_period, self.pulse)

    def acquire_leadership(self) -> None:
        """Start trying to lead (``prepare()``) unless the current leader is alive."""
        if self.leader_is_alive():
            self._acquiring = False
        else:
            self._acquiring = True
            self.prepare()

    def recv_prepare(self, node_uid: Hashable, proposal_id: ProposalIDLike | None) -> None:
        """As ``practical.Node``; a foreign Prepare also postpones our own attempts."""
        super().recv_prepare(node_uid, proposal_id)
        if node_uid != self.node_uid:
            self._tlast_prep = self.timestamp()

    def recv_promise(self, acceptor_uid: Hashable, proposal_id: ProposalIDLike | None,
                     prev_proposal_id: ProposalIDLike | None, prev_proposal_value: object) -> None:
        """As ``practical.Proposer``; on becoming leader, start pulsing and report the change.

        Callback order: ``on_leadership_acquired``, ``send_accept`` (value known and active),
        ``send_heartbeat``, ``schedule``, ``on_leadership_change(old, self)``.
        """
        was_leader = self.leader

        super().recv_promise(acceptor_uid, proposal_id, prev_proposal_id, prev_proposal_value)

        if not was_leader and self.leader:
            old_leader_uid = self.leader_uid

            self.leader_uid = self.node_uid
            self.leader_proposal_id = self.proposal_id
            self._acquiring = False

            self.pulse()
            self.messenger.on_leadership_change(old_leader_uid, self.node_uid)

    def recv_prepare_nack(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                          promised_id: ProposalIDLike | None) -> None:
        """As ``practical.Proposer``; while acquiring, prepare again at once above ``promised_id``."""
        super().recv_prepare_nack(from_uid, proposal_id, promised_id)
        if self._acquiring:
            self.prepare()

    def recv_accept_nack(self, from_uid: Hashable, proposal_id: ProposalIDLike | None,
                         promised_id: ProposalIDLike | None) -> None:
        """Count accept NACKs for our id; a quorum of them means we lost leadership.

        A quorum of acceptors promised a higher id, so our Accept! can never be chosen.
        """
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
