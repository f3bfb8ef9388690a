"""practical.Learner.final_acceptors, the one post-2.0 feature.

Checks the three behaviours: ``None`` before resolution; exactly the quorum of acceptors of the
winning proposal id at resolution (already set when ``on_resolution`` runs); afterwards every
Accepted carrying the final value adds its sender whatever its proposal id, while other values do
not, and ``on_resolution`` is still called once.
"""

from seed_compat_helpers import Recorder

from paxos import practical
from paxos.essential import ProposalID as PID


class SnoopingRecorder(Recorder):
    """Records what ``final_acceptors`` held when ``on_resolution`` was called."""

    def __init__(self, learner_ref):
        super().__init__()
        self.learner_ref = learner_ref
        self.seen_at_resolution = None

    def on_resolution(self, proposal_id, value):
        self.seen_at_resolution = set(self.learner_ref[0].final_acceptors)
        super().on_resolution(proposal_id, value)


def make_learner(quorum_size):
    ref = []
    learner = practical.Node(SnoopingRecorder(ref), "L", quorum_size)
    ref.append(learner)
    return learner


def test_none_until_resolution():
    learner = make_learner(3)
    assert learner.final_acceptors is None
    learner.recv_accepted("A", PID(1, "A"), "foo")
    learner.recv_accepted("B", PID(1, "A"), "foo")
    assert learner.final_acceptors is None


def test_quorum_of_winning_id_at_resolution():
    learner = make_learner(2)
    learner.recv_accepted("C", PID(1, "C"), "other")  # an acceptor of a losing id
    learner.recv_accepted("A", PID(2, "A"), "foo")
    learner.recv_accepted("B", PID(2, "A"), "foo")
    assert learner.final_acceptors == {"A", "B"}
    assert learner.messenger.seen_at_resolution == {"A", "B"}


def test_quorum_includes_acceptor_that_moved_on_before_resolution():
    """A accepted the winning id, then a newer one; it still counts among the quorum, as in accept_count."""
    learner = make_learner(3)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    learner.recv_accepted("B", PID(1, "A"), "foo")
    learner.recv_accepted("A", PID(2, "B"), "foo")
    learner.recv_accepted("C", PID(1, "A"), "foo")
    assert learner.final_proposal_id == PID(1, "A")
    assert learner.final_acceptors == {"A", "B", "C"}


def test_quorum_restarts_when_an_id_is_forgotten():
    """If no acceptor retains an id, its count restarts, and so does its acceptor set."""
    learner = make_learner(2)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    learner.recv_accepted("A", PID(2, "A"), "foo")  # PID(1, 'A') is dropped
    learner.recv_accepted("B", PID(1, "A"), "foo")  # counts from zero again: 1 of 2
    assert learner.final_value is None
    learner.recv_accepted("C", PID(1, "A"), "foo")
    assert learner.final_acceptors == {"B", "C"}


def test_after_resolution_matching_values_add_sender_whatever_the_id():
    learner = make_learner(2)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    learner.recv_accepted("B", PID(1, "A"), "foo")
    learner.recv_accepted("C", PID(0, "A"), "foo")  # lower id, same value
    learner.recv_accepted("D", PID(9, "D"), "foo")  # higher id, same value
    learner.recv_accepted("E", PID(9, "D"), "bar")  # different value: not added
    assert learner.final_acceptors == {"A", "B", "C", "D"}
    assert [m[0] for m in learner.messenger.take()] == ["resolution"]
