"""ProposalID and the Python 3 ordering rules of paxos.essential.

Checks that ``ProposalID`` is a namedtuple equal to a plain tuple, that ``None`` orders below every
id from either side of the operator (as Python 2 did and the 2013 code relied on), that a ``None``
uid orders below every real uid of the same number, and, with hypothesis, that ``proposal_order``
agrees with a naive reference ordering on random ids.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxos import essential, external, functional, practical
from paxos.essential import ProposalID, proposal_order


def test_proposal_id_is_a_named_tuple_equal_to_plain_tuple():
    pid = ProposalID(3, "A")
    assert pid.number == 3 and pid.uid == "A"
    assert pid == (3, "A")
    assert hash(pid) == hash((3, "A"))
    assert isinstance(pid, tuple)
    assert {pid: 1}[(3, "A")] == 1


def test_every_module_reexports_the_same_proposal_id():
    assert practical.ProposalID is essential.ProposalID
    assert functional.ProposalID is essential.ProposalID
    assert external.ProposalID is essential.ProposalID


def test_none_orders_below_every_proposal_id_from_both_sides():
    pid = ProposalID(0, "A")
    assert pid > None
    assert pid >= None
    assert not pid < None
    assert not pid <= None
    assert None < pid
    assert None <= pid
    assert not None > pid
    assert not None >= pid


def test_none_uid_orders_below_real_uid_of_same_number():
    assert ProposalID(1, None) < ProposalID(1, "B")
    assert ProposalID(1, "B") > ProposalID(1, None)
    assert ProposalID(2, None) > ProposalID(1, "Z")
    # Two None uids are equal: no None-with-None comparison may be attempted.
    assert ProposalID(1, None) <= ProposalID(1, None)
    assert not ProposalID(1, None) < ProposalID(1, None)


def test_number_first_then_uid():
    assert ProposalID(1, "B") > ProposalID(1, "A")
    assert ProposalID(2, "A") > ProposalID(1, "B")
    assert ProposalID(2, "A") > (1, "Z")
    assert (3, "A") > ProposalID(2, "Z")


def test_comparison_with_unrelated_type_raises():
    with pytest.raises(TypeError):
        _ = ProposalID(1, "A") < 5


def test_proposal_order_sorts_a_mixture_with_none():
    ids = [ProposalID(2, "A"), None, ProposalID(1, None), ProposalID(1, "B"), None]
    assert sorted(ids, key=proposal_order) == [
        None, None, ProposalID(1, None), ProposalID(1, "B"), ProposalID(2, "A"),
    ]


def test_as_proposal_id_builds_proposal_ids():
    assert essential.as_proposal_id(None) is None
    converted = essential.as_proposal_id((4, "C"))
    assert type(converted) is ProposalID and converted == (4, "C")


maybe_pid = st.one_of(
    st.none(),
    st.builds(ProposalID, st.integers(0, 5), st.one_of(st.none(), st.sampled_from("ABC"))),
)


def naive_key(pid):
    """Reference ordering written differently: None lowest; None uid before any letter."""
    if pid is None:
        return (-1, "")
    return (pid.number, "" if pid.uid is None else "~" + pid.uid)


@given(maybe_pid, maybe_pid)
def test_proposal_order_matches_naive_reference(a, b):
    assert (proposal_order(a) < proposal_order(b)) == (naive_key(a) < naive_key(b))
    assert (proposal_order(a) == proposal_order(b)) == (naive_key(a) == naive_key(b))
    if a is not None and b is not None:
        assert (a < b) == (naive_key(a) < naive_key(b))
        assert (a >= b) == (naive_key(a) >= naive_key(b))
