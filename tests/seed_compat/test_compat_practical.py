"""paxos.practical: NACKs, leadership, passive mode and the acceptor persistence protocol.

The persistence tests follow the usage contract: after each ``recv_prepare``/``recv_accept_request``
the application checks ``persistance_required``, saves the three acceptor fields and calls
``persisted()``. Here a "disk" dict stands for stable storage, and a restart is a new ``Node`` with
``recover()`` from that dict.
"""

import pytest
from seed_compat_helpers import Recorder

from paxos import practical
from paxos.essential import ProposalID as PID


def node(uid="A", quorum_size=2):
    return practical.Node(Recorder(), uid, quorum_size)


def save_if_required(n, disk):
    """The application's side of the protocol: persist, then let the node send."""
    if n.persistance_required:
        disk.update(promised_id=n.promised_id, accepted_id=n.accepted_id, accepted_value=n.accepted_value)
        n.persisted()


# Node ---------------------------------------------------------------------------------------------


def test_node_constructor_and_read_only_proposer_uid():
    n = node("A", 2)
    assert (n.node_uid, n.proposer_uid, n.quorum_size) == ("A", "A", 2)
    with pytest.raises(AttributeError):
        n.proposer_uid = "B"
    n.change_quorum_size(3)
    assert n.quorum_size == 3


def test_node_recv_prepare_observes_foreign_id():
    n = node("A")
    n.recv_prepare("B", PID(4, "B"))
    n.persisted()
    n.messenger.take()
    n.prepare()
    assert n.messenger.take() == [("prepare", PID(5, "A"))]


# Proposer -----------------------------------------------------------------------------------------


def test_prepare_builds_proposal_id_objects():
    n = node()
    n.prepare()
    assert type(n.proposal_id) is PID


def test_prepare_without_increment_resends_and_keeps_promises():
    n = node(quorum_size=3)
    n.prepare()
    n.recv_promise("B", PID(1, "A"), None, None)
    n.prepare(increment_proposal_number=False)
    assert n.messenger.take() == [("prepare", PID(1, "A")), ("prepare", PID(1, "A"))]
    assert n.promises_rcvd == {"B"}


def test_leadership_acquisition_callback_order():
    n = node(quorum_size=2)
    n.set_proposal("foo")
    n.prepare()
    n.messenger.take()
    n.recv_promise("B", PID(1, "A"), None, None)
    n.recv_promise("C", PID(1, "A"), None, None)
    assert n.leader
    assert n.messenger.take() == [("leadership_acquired",), ("accept", PID(1, "A"), "foo")]
    # Promises arriving while leader are ignored.
    n.recv_promise("D", PID(1, "A"), PID(0, "Z"), "other")
    assert n.proposed_value == "foo" and n.messenger.take() == []


def test_leader_sends_accept_when_value_set_later_and_resends():
    n = node(quorum_size=1)
    n.prepare()
    n.recv_promise("B", PID(1, "A"), None, None)
    n.messenger.take()
    n.set_proposal("foo")
    n.resend_accept()
    assert n.messenger.take() == [("accept", PID(1, "A"), "foo"), ("accept", PID(1, "A"), "foo")]
    n.prepare()  # a new round drops leadership
    assert not n.leader


def test_passive_proposer_changes_state_and_calls_back_but_sends_nothing():
    n = node(quorum_size=1)
    n.active = False
    n.set_proposal("foo")
    n.prepare()
    n.recv_promise("B", PID(1, "A"), None, None)
    n.resend_accept()
    assert n.leader
    assert n.messenger.take() == [("leadership_acquired",)]


def test_prepare_nack_and_foreign_promise_raise_next_number():
    n = node()
    n.prepare()
    n.recv_prepare_nack("B", PID(1, "A"), PID(5, "B"))
    assert not n.leader
    n.prepare()
    n.recv_promise("C", PID(8, "C"), None, None)
    n.prepare()
    assert [m[1] for m in n.messenger.take()] == [PID(1, "A"), PID(6, "A"), PID(9, "A")]


def test_observe_proposal_ignores_own_and_lower_ids():
    n = node()
    n.observe_proposal("A", PID(7, "A"))
    n.observe_proposal("B", PID(0, "B"))
    assert n.next_proposal_number == 1
    n.observe_proposal("B", PID(1, "B"))
    assert n.next_proposal_number == 2


def test_accept_nack_is_only_a_hook():
    n = node(quorum_size=1)
    n.prepare()
    n.recv_promise("B", PID(1, "A"), None, None)
    n.recv_accept_nack("B", PID(1, "A"), PID(3, "B"))
    assert n.leader


# Acceptor: NACKs and passive mode --------------------------------------------------------------


def test_acceptor_nacks_lower_prepare_and_accept():
    n = node("X")
    n.recv_prepare("B", PID(5, "B"))
    n.persisted()
    n.messenger.take()
    n.recv_prepare("A", PID(1, "A"))
    n.recv_accept_request("A", PID(2, "A"), "foo")
    assert n.messenger.take() == [
        ("prepare_nack", "A", PID(1, "A"), PID(5, "B")),
        ("accept_nack", "A", PID(2, "A"), PID(5, "B")),
    ]
    assert n.accepted_id is None


def test_passive_acceptor_updates_state_silently():
    n = node("X")
    n.active = False
    n.recv_prepare("B", PID(5, "B"))
    n.recv_prepare("B", PID(5, "B"))
    n.recv_prepare("A", PID(1, "A"))
    n.recv_accept_request("B", PID(5, "B"), "foo")
    assert not n.persistance_required
    assert (n.promised_id, n.accepted_id, n.accepted_value) == (PID(5, "B"), PID(5, "B"), "foo")
    assert n.messenger.take() == []


# Acceptor: persistence protocol -----------------------------------------------------------------


def test_promise_waits_for_persisted():
    n = node("X")
    n.recv_prepare("A", PID(1, "A"))
    assert n.promised_id == PID(1, "A")
    assert n.persistance_required
    assert n.messenger.take() == []
    n.persisted()
    assert not n.persistance_required
    assert n.messenger.take() == [("promise", "A", PID(1, "A"), None, None)]


def test_higher_prepares_dropped_while_promise_pending():
    n = node("X")
    n.recv_prepare("A", PID(1, "A"))
    n.recv_prepare("B", PID(2, "B"))
    assert n.promised_id == PID(1, "A")
    n.persisted()
    assert n.messenger.take() == [("promise", "A", PID(1, "A"), None, None)]


def test_accepted_waits_for_persisted_and_later_accepts_dropped():
    n = node("X")
    n.recv_accept_request("A", PID(5, "A"), "foo")
    n.recv_accept_request("A", PID(6, "A"), "bar")
    assert n.messenger.take() == []
    assert (n.accepted_id, n.accepted_value) == (PID(5, "A"), "foo")
    n.persisted()
    assert n.messenger.take() == [("accepted", PID(5, "A"), "foo")]


def test_persisted_sends_promise_then_accepted_with_current_values():
    n = node("X")
    n.recv_prepare("A", PID(1, "A"))
    n.recv_accept_request("A", PID(1, "A"), "foo")
    n.persisted()
    assert n.messenger.take() == [
        ("promise", "A", PID(1, "A"), PID(1, "A"), "foo"),
        ("accepted", PID(1, "A"), "foo"),
    ]


def test_duplicates_of_durable_state_are_answered_at_once():
    n = node("X")
    disk = {}
    n.recv_prepare("A", PID(1, "A"))
    save_if_required(n, disk)
    n.recv_prepare("A", PID(1, "A"))
    assert not n.persistance_required
    n.recv_accept_request("A", PID(1, "A"), "foo")
    save_if_required(n, disk)
    n.recv_accept_request("A", PID(1, "A"), "foo")
    assert not n.persistance_required
    assert n.messenger.take() == [
        ("promise", "A", PID(1, "A"), None, None),
        ("promise", "A", PID(1, "A"), None, None),
        ("accepted", PID(1, "A"), "foo"),
        ("accepted", PID(1, "A"), "foo"),
    ]


def test_duplicates_of_state_not_yet_saved_wait_for_persisted():
    """Persist before send holds for retransmissions too: a duplicate Prepare or Accept! that arrives
    before ``persisted()`` gets no reply of its own (essential-paxos 2.0 sent one at once, announcing a
    promise or an acceptance a crash could still lose); ``persisted()`` sends the pending replies."""
    n = node("X")
    disk = {}
    n.recv_prepare("A", PID(1, "A"))
    n.recv_prepare("A", PID(1, "A"))  # retransmitted before the save
    assert n.messenger.take() == [] and n.persistance_required
    save_if_required(n, disk)
    assert disk["promised_id"] == PID(1, "A")
    assert n.messenger.take() == [("promise", "A", PID(1, "A"), None, None)]
    n.recv_accept_request("A", PID(1, "A"), "foo")
    n.recv_accept_request("A", PID(1, "A"), "foo")
    n.recv_prepare("A", PID(1, "A"))  # (the promise is durable, but the acceptance it would report is not)
    assert n.messenger.take() == []
    save_if_required(n, disk)
    assert disk["accepted_value"] == "foo"
    assert n.messenger.take() == [("accepted", PID(1, "A"), "foo")]


def test_recover_restores_state_after_restart():
    disk = {}
    first = node("X")
    first.recv_prepare("A", PID(3, "A"))
    save_if_required(first, disk)
    first.recv_accept_request("A", PID(3, "A"), "foo")
    save_if_required(first, disk)

    restarted = node("X")
    restarted.recover(disk["promised_id"], disk["accepted_id"], disk["accepted_value"])
    assert restarted.messenger.take() == []
    # The promise survived: a lower prepare is refused, a duplicate accept answered at once.
    restarted.recv_prepare("B", PID(2, "B"))
    restarted.recv_accept_request("A", PID(3, "A"), "foo")
    restarted.recv_prepare("C", PID(4, "C"))
    save_if_required(restarted, disk)
    assert restarted.messenger.take() == [
        ("prepare_nack", "B", PID(2, "B"), PID(3, "A")),
        ("accepted", PID(3, "A"), "foo"),
        ("promise", "C", PID(4, "C"), PID(3, "A"), "foo"),
    ]
    assert disk["promised_id"] == PID(4, "C")


@pytest.mark.parametrize("uid", [0, "", False, ()], ids=["0", "empty str", "False", "empty tuple"])
def test_a_falsy_uid_gets_its_promise_and_accepted_after_persisted(uid):
    """A uid is any hashable: one that is falsy still gets the replies ``persisted()`` owes it. QA (a
    library embedder): with uid 0, ``persisted()`` sent nothing and cleared the pending flags."""
    rec = Recorder()
    acceptor = practical.Acceptor()
    acceptor.messenger = rec
    acceptor.recv_prepare(uid, PID(1, uid))
    assert acceptor.persistance_required
    acceptor.persisted()
    assert rec.take() == [("promise", uid, PID(1, uid), None, None)]
    acceptor.recv_accept_request(uid, PID(1, uid), "v")
    acceptor.persisted()
    assert rec.take() == [("accepted", PID(1, uid), "v")]
