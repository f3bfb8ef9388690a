"""paxos.essential: the three roles of single-decree Paxos (Paxos Made Simple, section 2).

Each role is driven by hand with exact messages and the recorded messenger calls are compared with
the expected ones. The last test wires three acceptors, two competing proposers and a learner through
a queue and checks that one value is decided.
"""

import pytest
from seed_compat_helpers import Recorder

from paxos import essential
from paxos.essential import ProposalID as PID


def make_proposer(uid="A", quorum_size=2):
    proposer = essential.Proposer()
    proposer.messenger = Recorder()
    proposer.proposer_uid = uid
    proposer.quorum_size = quorum_size
    return proposer


def make_acceptor():
    acceptor = essential.Acceptor()
    acceptor.messenger = Recorder()
    return acceptor


def make_learner(quorum_size=2):
    learner = essential.Learner()
    learner.messenger = Recorder()
    learner.quorum_size = quorum_size
    return learner


# Proposer -----------------------------------------------------------------------------------------


def test_set_proposal_first_value_wins_and_sends_nothing():
    p = make_proposer()
    p.set_proposal("foo")
    p.set_proposal("bar")
    assert p.proposed_value == "foo"
    assert p.messenger.take() == []


def test_prepare_uses_increasing_proposal_ids():
    p = make_proposer()
    p.prepare()
    p.prepare()
    assert p.messenger.take() == [("prepare", PID(1, "A")), ("prepare", PID(2, "A"))]
    assert type(p.proposal_id) is PID


def test_accept_sent_once_at_quorum_with_own_value():
    p = make_proposer(quorum_size=2)
    p.set_proposal("foo")
    p.prepare()
    p.messenger.take()
    p.recv_promise("B", PID(1, "A"), None, None)
    assert p.messenger.take() == []
    p.recv_promise("C", PID(1, "A"), None, None)
    assert p.messenger.take() == [("accept", PID(1, "A"), "foo")]
    # A third promise exceeds the quorum: no second Accept!
    p.recv_promise("D", PID(1, "A"), None, None)
    assert p.messenger.take() == []


def test_promises_for_other_ids_and_duplicates_are_ignored():
    p = make_proposer(quorum_size=2)
    p.set_proposal("foo")
    p.prepare()
    p.messenger.take()
    p.recv_promise("B", PID(5, "Z"), None, None)
    p.recv_promise("C", PID(1, "A"), None, None)
    p.recv_promise("C", PID(1, "A"), None, None)
    assert len(p.promises_rcvd) == 1
    assert p.messenger.take() == []


def test_no_accept_without_a_value():
    p = make_proposer(quorum_size=2)
    p.prepare()
    p.messenger.take()
    p.recv_promise("B", PID(1, "A"), None, None)
    p.recv_promise("C", PID(1, "A"), None, None)
    assert p.messenger.take() == []


@pytest.mark.parametrize("order", [("B", "C"), ("C", "B")])
def test_value_of_highest_accepted_proposal_is_adopted_in_any_order(order):
    """P2c: the proposer must propose the value of the highest-numbered accepted proposal."""
    reports = {"B": (PID(1, "X"), "low"), "C": (PID(3, "Y"), "high")}
    p = make_proposer(quorum_size=3)
    p.set_proposal("mine")
    p.prepare()
    p.messenger.take()
    for uid in order:
        p.recv_promise(uid, PID(1, "A"), *reports[uid])
    p.recv_promise("D", PID(1, "A"), None, None)
    assert p.last_accepted_id == PID(3, "Y")
    assert p.messenger.take() == [("accept", PID(1, "A"), "high")]


# Acceptor -----------------------------------------------------------------------------------------


def test_acceptor_promises_higher_and_resends_duplicate_and_ignores_lower():
    a = make_acceptor()
    a.recv_prepare("A", PID(2, "A"))
    a.recv_prepare("A", PID(2, "A"))
    a.recv_prepare("B", PID(1, "B"))
    assert a.messenger.take() == [
        ("promise", "A", PID(2, "A"), None, None),
        ("promise", "A", PID(2, "A"), None, None),
    ]
    assert a.promised_id == PID(2, "A")


def test_acceptor_accepts_at_or_above_promise_only():
    a = make_acceptor()
    a.recv_prepare("A", PID(2, "A"))
    a.messenger.take()
    a.recv_accept_request("B", PID(1, "B"), "low")
    assert a.messenger.take() == []
    assert a.accepted_id is None
    a.recv_accept_request("A", PID(2, "A"), "foo")
    assert a.messenger.take() == [("accepted", PID(2, "A"), "foo")]
    a.recv_accept_request("C", PID(3, "C"), "bar")
    assert a.messenger.take() == [("accepted", PID(3, "C"), "bar")]
    assert (a.promised_id, a.accepted_id, a.accepted_value) == (PID(3, "C"), PID(3, "C"), "bar")


def test_promise_reports_previous_acceptance():
    a = make_acceptor()
    a.recv_accept_request("A", PID(1, "A"), "foo")
    a.messenger.take()
    a.recv_prepare("B", PID(2, "B"))
    assert a.messenger.take() == [("promise", "B", PID(2, "B"), PID(1, "A"), "foo")]


# Learner ------------------------------------------------------------------------------------------


def test_learner_resolves_at_quorum_once():
    learner = make_learner(quorum_size=2)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    assert not learner.complete
    learner.recv_accepted("B", PID(1, "A"), "foo")
    assert learner.complete
    assert (learner.final_value, learner.final_proposal_id) == ("foo", PID(1, "A"))
    assert learner.proposals is None and learner.acceptors is None
    learner.recv_accepted("C", PID(1, "A"), "foo")
    learner.recv_accepted("C", PID(9, "C"), "other")
    assert learner.messenger.take() == [("resolution", PID(1, "A"), "foo")]


def test_learner_ignores_duplicates_and_older_messages():
    learner = make_learner(quorum_size=2)
    learner.recv_accepted("A", PID(2, "A"), "foo")
    learner.recv_accepted("A", PID(2, "A"), "foo")
    learner.recv_accepted("A", PID(1, "A"), "old")
    assert not learner.complete
    assert learner.proposals == {PID(2, "A"): [1, 1, "foo"]}


def test_learner_drops_proposals_no_acceptor_retains():
    learner = make_learner(quorum_size=3)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    learner.recv_accepted("A", PID(2, "B"), "bar")
    assert PID(1, "A") not in learner.proposals
    assert learner.proposals[PID(2, "B")] == [1, 1, "bar"]
    assert learner.acceptors == {"A": PID(2, "B")}


def test_learner_counts_acceptors_that_moved_on():
    """accept_count counts every acceptor that accepted the id, even one that has moved on."""
    learner = make_learner(quorum_size=3)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    learner.recv_accepted("B", PID(1, "A"), "foo")
    learner.recv_accepted("A", PID(2, "B"), "bar")
    assert learner.proposals[PID(1, "A")] == [2, 1, "foo"]
    learner.recv_accepted("C", PID(1, "A"), "foo")
    assert learner.final_value == "foo"


def test_learner_asserts_one_value_per_proposal_id():
    learner = make_learner(quorum_size=3)
    learner.recv_accepted("A", PID(1, "A"), "foo")
    with pytest.raises(AssertionError, match="Value mismatch"):
        learner.recv_accepted("B", PID(1, "A"), "bar")


# A small cluster ----------------------------------------------------------------------------------


def test_two_dueling_proposers_decide_one_value():
    """Interleave two proposers over three acceptors; the learner must see a single decision."""
    acceptors = {uid: make_acceptor() for uid in "XYZ"}
    learner = make_learner(quorum_size=2)
    proposers = {"A": make_proposer("A"), "B": make_proposer("B")}
    proposers["A"].set_proposal("from A")
    proposers["B"].set_proposal("from B")

    def deliver(sender_uid, message):
        """Route one recorded call to its receivers; return the receivers' new messages."""
        kind = message[0]
        out = []
        if kind == "prepare":
            for uid, acc in acceptors.items():
                acc.recv_prepare(sender_uid, message[1])
                out += [(uid, m) for m in acc.messenger.take()]
        elif kind == "promise":
            prop = proposers[message[1]]
            prop.recv_promise(sender_uid, *message[2:])
            out += [(message[1], m) for m in prop.messenger.take()]
        elif kind == "accept":
            for uid, acc in acceptors.items():
                acc.recv_accept_request(sender_uid, *message[1:])
                out += [(uid, m) for m in acc.messenger.take()]
        elif kind == "accepted":
            learner.recv_accepted(sender_uid, *message[1:])
        return out

    proposers["A"].prepare()
    proposers["B"].prepare()
    proposers["B"].prepare()  # B overtakes with (2, 'B')
    queue = [(uid, m) for uid, p in proposers.items() for m in p.messenger.take()]
    # Bounded: each message produces a bounded number of replies and no new prepares.
    for _ in range(1000):
        if not queue:
            break
        sender, message = queue.pop(0)
        queue += deliver(sender, message)
    assert not queue
    resolutions = learner.messenger.take()
    assert len(resolutions) == 1
    assert learner.final_value in ("from A", "from B")
    # Every acceptor that accepted anything at the final id holds the decided value.
    for acc in acceptors.values():
        if acc.accepted_id == learner.final_proposal_id:
            assert acc.accepted_value == learner.final_value
