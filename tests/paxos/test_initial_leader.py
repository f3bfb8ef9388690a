"""An initial leader (``leader_uid``) of ``functional.HeartbeatNode`` and ``external.ExternalNode`` is safe.

The node named ``leader_uid`` starts leading at proposal id ``(1, leader_uid)`` without phase 1, which is
sound only if no proposal below that id can be accepted. In essential-paxos 2.0 a node whose uid sorts
below the leader's prepared at ``(1, its uid)``, a lower id: with the leader cut off it got ``v1``
chosen, and the leader, back and still leading (nothing told it otherwise), got ``v2`` accepted at
``(1, leader_uid)`` by every acceptor, so two values were chosen (QA, session 29). The other nodes now
start their proposals at number 2. Scenario: nodes A, B, C with ``leader_uid="B"``, quorum 2; B is cut
off while A takes over with ``v1``; then B proposes ``v2``.
"""
from __future__ import annotations

from collections import deque

import pytest

from paxos import external, functional
from paxos.practical import ProposalID


class _Net:
    def __init__(self) -> None:
        self.queue: deque = deque()
        self.resolutions: dict[str, set] = {}


def _messenger_class(base):
    class Messenger(base):
        def __init__(self, net: _Net, uid: str) -> None:
            self.net, self.uid = net, uid

        def _all(self, method, *args):
            for to in "ABC":
                self.net.queue.append((to, method, (self.uid, *args)))

        def send_prepare(self, pid):
            self._all("recv_prepare", pid)

        def send_promise(self, to, pid, prev, value):
            self.net.queue.append((to, "recv_promise", (self.uid, pid, prev, value)))

        def send_accept(self, pid, value):
            self._all("recv_accept_request", pid, value)

        def send_accepted(self, pid, value):
            self._all("recv_accepted", pid, value)

        def send_prepare_nack(self, to, pid, promised):
            self.net.queue.append((to, "recv_prepare_nack", (self.uid, pid, promised)))

        def send_accept_nack(self, to, pid, promised):
            self.net.queue.append((to, "recv_accept_nack", (self.uid, pid, promised)))

        def send_heartbeat(self, pid):
            pass  # (lost: B is cut off)

        def schedule(self, delay, func):
            pass

        def on_resolution(self, pid, value):
            self.net.resolutions.setdefault(self.uid, set()).add(value)

    return Messenger


class _ClockNode(functional.HeartbeatNode):
    now = 0.0

    def timestamp(self):
        return _ClockNode.now


def _run(net: _Net, nodes: dict, cut_off: tuple[str, ...] = ()) -> None:
    for _ in range(1000):
        if not net.queue:
            return
        to, method, args = net.queue.popleft()
        if to in cut_off or args[0] in cut_off:
            continue
        node = nodes[to]
        getattr(node, method)(*args)
        if node.persistance_required:
            node.persisted()
    raise AssertionError("messages did not settle")


@pytest.mark.parametrize("kind", ["functional", "external"])
def test_a_node_below_the_initial_leader_cannot_get_a_second_value_chosen(kind):
    net = _Net()
    if kind == "functional":
        messenger = _messenger_class(functional.HeartbeatMessenger)
        _ClockNode.now = 0.0
        nodes = {u: _ClockNode(messenger(net, u), u, 2, leader_uid="B", hb_period=1, liveness_window=5) for u in "ABC"}
    else:
        messenger = _messenger_class(external.ExternalMessenger)
        nodes = {u: external.ExternalNode(messenger(net, u), u, 2, leader_uid="B") for u in "ABC"}
    assert nodes["B"].leader and nodes["B"].proposal_id == ProposalID(1, "B")

    # B is cut off; A takes over (its liveness window ran out, or the application chose it) with v1
    nodes["A"].set_proposal("v1")
    if kind == "functional":
        _ClockNode.now = 10.0
        nodes["A"].poll_liveness()
    else:
        nodes["A"].prepare()
    _run(net, nodes, cut_off=("B",))
    assert nodes["A"].leader
    assert net.resolutions == {"A": {"v1"}, "C": {"v1"}}  # v1 is chosen

    # B is back, still leading as far as it knows, and proposes v2 at (1, "B") without phase 1
    assert nodes["B"].leader
    nodes["B"].set_proposal("v2")
    _run(net, nodes)
    chosen = set().union(*net.resolutions.values())
    assert chosen == {"v1"}, net.resolutions


def test_the_initial_leader_and_the_others_start_as_before_apart_from_the_proposal_number():
    follower = functional.HeartbeatNode(functional.HeartbeatMessenger(), "A", 2, leader_uid="B")
    assert not follower.leader and follower.proposal_id is None and follower.leader_uid == "B"
    assert follower.next_proposal_number == 2
    alone = functional.HeartbeatNode(functional.HeartbeatMessenger(), "A", 2)
    assert alone.next_proposal_number == 1  # no initial leader: as essential-paxos 2.0
