"""paxos.external.ExternalNode: leadership tracked from proclamations, prepares decided by the caller.

Checked: no proclamation for an initial leader; the callback order on winning (proclamation even in
passive mode); proclamations with higher ids change the leader (and report a loss when we led,
keeping the 2013 quirk that ``leader`` stays set until the next prepare); lower or equal ones are
ignored; a quorum of accept NACKs makes the node step down.
"""

from seed_compat_helpers import Recorder

from paxos import external
from paxos.essential import ProposalID as PID


def make(uid="A", quorum_size=2, leader_uid=None):
    return external.ExternalNode(Recorder(), uid, quorum_size, leader_uid)


def win(n, value=None):
    if value is not None:
        n.set_proposal(value)
    n.prepare()
    n.recv_promise("B", n.proposal_id, None, None)
    n.recv_promise("C", n.proposal_id, None, None)


def test_initial_leader_sends_no_proclamation():
    n = make("A", leader_uid="A")
    assert n.leader and n.proposal_id == PID(1, "A") and n.next_proposal_number == 2
    assert n.messenger.take() == []
    follower = make("B", leader_uid="A")
    assert follower.leader_proposal_id == PID(1, "A") and not follower.leader


def test_acquisition_callback_order():
    n = make("A")
    win(n, "foo")
    assert n.messenger.take() == [
        ("prepare", PID(1, "A")),
        ("leadership_acquired",),
        ("accept", PID(1, "A"), "foo"),
        ("proclamation", PID(1, "A")),
        ("leadership_change", None, "A"),
    ]
    assert (n.leader_uid, n.leader_proposal_id) == ("A", PID(1, "A"))


def test_proclamation_is_sent_even_when_passive():
    n = make("A")
    n.active = False
    win(n, "foo")
    assert n.messenger.take() == [
        ("leadership_acquired",),
        ("proclamation", PID(1, "A")),
        ("leadership_change", None, "A"),
    ]


def test_higher_proclamation_changes_leader_and_reports_loss():
    n = make("A")
    win(n)
    n.messenger.take()
    n.recv_leadership_proclamation("B", PID(5, "B"))
    assert (n.leader_uid, n.leader_proposal_id) == ("B", PID(5, "B"))
    assert n.messenger.take() == [("leadership_lost",), ("leadership_change", "A", "B")]
    assert n.leader  # the 2013 quirk: cleared by the next prepare(), not here
    n.prepare()
    assert not n.leader and n.proposal_id == PID(6, "A")


def test_lower_or_equal_proclamations_are_ignored():
    n = make("C", leader_uid="A")
    n.recv_leadership_proclamation("B", PID(1, "A"))
    n.recv_leadership_proclamation("B", PID(0, "B"))
    assert n.leader_uid == "A"
    assert n.messenger.take() == []
    # With no known leader (id (1, None)), a proclamation at number 1 wins.
    m = make("C")
    m.recv_leadership_proclamation("B", PID(1, "B"))
    assert m.messenger.take() == [("leadership_change", None, "B")]


def test_quorum_of_accept_nacks_loses_leadership():
    n = make("A")
    win(n, "foo")
    n.messenger.take()
    n.recv_accept_nack("B", PID(1, "A"), PID(4, "C"))
    assert n.leader
    n.recv_accept_nack("C", PID(1, "A"), PID(4, "C"))
    assert not n.leader
    assert n.leader_uid is None and n.leader_proposal_id is None
    assert n.messenger.take() == [("leadership_lost",), ("leadership_change", "A", None)]
    n.prepare()
    assert n.proposal_id == PID(5, "A")


def test_prepare_nack_only_observes():
    n = make("A")
    n.prepare()
    n.recv_prepare_nack("C", PID(1, "A"), PID(2, "C"))
    assert n.messenger.take() == [("prepare", PID(1, "A"))]
    n.prepare()
    assert n.proposal_id == PID(3, "A")
