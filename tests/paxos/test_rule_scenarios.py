"""Scenario tests for rules of the rule table in docs/paxos.md that no other scenario test pinned down.

Each test drives one replica by hand, as tests/paxos/test_replica_scenarios.py does: it feeds the
exact messages a peer would send and checks the exact ``Actions`` (or role and counters) that come
back. Each test is named after its rule and cites the section of Lamport's "Paxos Made Simple" (2001)
that the rule serves; the rule table cites these tests in its "checked by" column.
"""
from __future__ import annotations

import random

import pytest

from paxos.actions import PromiseRecord
from paxos.ballot import Ballot
from paxos.messages import Accept, AcceptedEntry, Decide, Heartbeat, Prepare, Promise
from paxos.replica import Config, Options, Replica

A, B = (b"a",), (b"b",)


def make(node_id: int = 1, seed: int | None = None, **options) -> Replica:
    rng = random.Random(node_id if seed is None else seed)
    return Replica(node_id, Config(node_ids=(1, 2, 3)), rng=rng, options=Options(**options))


def elect(replica: Replica, *promises: Promise) -> None:
    """Tick ``replica`` into candidacy, feed it ``promises``; it must lead afterwards."""
    for _ in range(2 * replica.options.election_timeout_ticks):
        replica.tick()
        if replica.status()["role"] == "candidate":
            break
    replica.take_actions()
    for promise in promises:
        replica.receive(promise)
    assert replica.is_leader


def empty_promise(sender: int, ballot: Ballot, **fields) -> Promise:
    values = dict(first_slot=1, accepted=(), decided=(), snapshot_slot=0)
    values.update(fields)
    return Promise(sender=sender, ballot=ballot, **values)


@pytest.mark.parametrize("message", [
    Prepare(sender=2, ballot=Ballot(5, 3), first_slot=1),
    Accept(sender=2, ballot=Ballot(5, 3), slot=1, value=A, decided_slot=0),
    Heartbeat(sender=2, ballot=Ballot(5, 3), decided_slot=0, seq=1),
    Decide(sender=2, ballot=Ballot(5, 3), decided_slot=1),
], ids=lambda m: type(m).__name__)
def test_a_ballot_is_spoken_for_only_by_its_node(message):
    """Section 2.5: proposers draw numbers from disjoint sets, so a ballot is one node's alone; the
    rule "one value per (ballot, slot)" (section 2.2) holds only if nobody else can send under it.
    Node 2 sending under node 3's ballot is dropped and counted: no promise, no record, no reply."""
    replica = make(1)
    replica.receive(message)
    assert not replica.take_actions()
    assert replica.ballot == Ballot.ZERO
    assert replica.status()["counters"] == {"malformed": 1}


@pytest.mark.parametrize("message", [
    Prepare(sender=3, ballot=Ballot(2, 3), first_slot=1),
    Accept(sender=3, ballot=Ballot(2, 3), slot=1, value=A, decided_slot=0),
    Heartbeat(sender=3, ballot=Ballot(2, 3), decided_slot=0, seq=1),
    Decide(sender=3, ballot=Ballot(2, 3), decided_slot=0),
], ids=lambda m: type(m).__name__)
def test_a_leader_steps_down_on_any_message_with_a_higher_ballot(message):
    """Section 2.2: a proposer should abandon its proposal once a higher number is in use; section
    2.4: progress needs one distinguished proposer. Whatever message brings a higher ballot, the
    leader raises its promise to it (persisted) and is a follower from then on."""
    leader = make(1)
    elect(leader, empty_promise(2, Ballot(1, 1)))
    leader.take_actions()
    leader.propose(b"queued")
    leader.receive(message)
    actions = leader.take_actions()
    assert not leader.is_leader and leader.status()["role"] == "follower"
    assert leader.ballot == Ballot(2, 3)
    assert PromiseRecord(Ballot(2, 3)) in actions.persist
    assert actions.dropped_proposals == [b"queued"]
    assert not leader.propose(b"later")


def test_new_commands_go_above_the_reproposed_slots():
    """Section 3: the new leader first settles every slot a promise reported (here slots 1 to 3:
    a no-op, a no-op, and B accepted at slot 3), and only then proposes new commands, from slot 4."""
    leader = make(1)
    b = Ballot(1, 1)
    elect(leader, empty_promise(2, b, accepted=(AcceptedEntry(slot=3, ballot=Ballot(0, 2), value=B),)))
    leader.propose(b"new")
    actions = leader.take_actions()
    assert [(r.slot, r.value) for r in actions.persist] == [(1, ()), (2, ()), (3, B), (4, (b"new",))]
    assert all(r.ballot == b for r in actions.persist)


def test_election_timeouts_are_drawn_per_node_between_one_and_two_timeouts():
    """Section 2.4: a leader is elected with randomness or timeouts. Each node's timer fires after
    ``election_timeout_ticks`` plus a random part below it, drawn from the rng it was given, so two
    nodes rarely run at once; the same rng gives the same timeout (determinism)."""
    timeout = Options().election_timeout_ticks

    def ticks_until_candidate(seed: int) -> int:
        replica = make(1, seed=seed)
        for tick in range(1, 3 * timeout):
            replica.tick()
            if replica.status()["role"] == "candidate":
                return tick
        raise AssertionError("no election")

    drawn = [ticks_until_candidate(seed) for seed in range(40)]
    assert all(timeout <= ticks < 2 * timeout for ticks in drawn)
    assert len(set(drawn)) > 3
    assert drawn == [ticks_until_candidate(seed) for seed in range(40)]
