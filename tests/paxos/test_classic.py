"""Scenario tests for ``paxos.classic.ClassicReplica``: the seed's per-slot classes behind the core's interface.

How: each test drives one to five ``ClassicReplica`` objects by hand, feeds them the exact messages a
peer would send, and checks the exact ``Actions`` that come back (records to persist, messages to
send, slots to apply, reads to answer), sometimes also the seed objects inside (a slot's
``practical.Proposer``, the ``functional.HeartbeatNode`` elector) where the design promises something
about them. No network, no clock: time is ``tick()``. A few longer stories wire three replicas
together with ``deliver_all``, which hands every message to its addressee until none is left.

Each test is named after the property it checks. Its docstring cites the rule it comes from: Lamport's
"Paxos Made Simple" (2001), section numbers, or the seed's documented semantics
(``/work/shared/spec/essential-paxos-api.md``: practical's persistence protocol, functional's heartbeats),
or the adapter's own rules in the ``paxos.classic`` module docstring.
"""
from __future__ import annotations

import random

import pytest

from paxos import functional, practical
from paxos.actions import AcceptRecord, Actions, DecideRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot
from paxos.classic import ClassicReplica, ballot_of, proposal_id_of
from paxos.essential import ProposalID
from paxos.messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    CatchupReply,
    CatchupRequest,
    Decide,
    DecidedEntry,
    Heartbeat,
    HeartbeatAck,
    Nack,
    Prepare,
    Promise,
)
from paxos.replica import Config, Options, Replica

A, B, C = (b"a",), (b"b",), (b"c",)
B11, B12, B21, B22, B23 = Ballot(1, 1), Ballot(1, 2), Ballot(2, 1), Ballot(2, 2), Ballot(2, 3)


def config(nodes: int = 3) -> Config:
    return Config(node_ids=tuple(range(1, nodes + 1)))


def make(node_id: int = 1, nodes: int = 3, state: DurableState | None = None, **options) -> ClassicReplica:
    return ClassicReplica(node_id, config(nodes), rng=random.Random(node_id), state=state,
                          options=Options(**options))


def elect(replica: ClassicReplica) -> Actions:
    """Tick until the replica prepares (functional: no heartbeat within the window, no foreign Prepare
    within 1.5 windows, at a poll); return the actions of that tick."""
    limit = 5 * replica.options.election_timeout_ticks
    for _ in range(limit):
        replica.tick()
        if replica.status()["role"] != "follower":
            return replica.take_actions()
    raise AssertionError(f"no election within {limit} ticks")


def promise(sender: int, ballot: Ballot, first_slot: int = 1, accepted=(), decided=(), snapshot_slot=0) -> Promise:
    return Promise(sender=sender, ballot=ballot, first_slot=first_slot, accepted=tuple(accepted),
                   decided=tuple(decided), snapshot_slot=snapshot_slot)


def make_leader(nodes: int = 3, **options) -> ClassicReplica:
    """Node 1 elected at Ballot(1, 1) by empty promises from a majority; actions drained."""
    leader = make(1, nodes, **options)
    elect(leader)
    for peer in range(2, config(nodes).quorum_size + 1):
        leader.receive(promise(peer, B11))
    assert leader.is_leader
    leader.take_actions()
    return leader


def sent(actions: Actions, kind) -> list:
    return [(to, m) for to, m in actions.send if isinstance(m, kind)]


def deliver_all(replicas: dict, pending: list, limit: int = 10_000, lost=lambda src, dst, m: False) -> None:
    """Take every replica's actions, hand each message to its addressee, repeat until quiet."""
    for _ in range(limit):
        for node_id, replica in replicas.items():
            actions = replica.take_actions()
            pending.extend((node_id, to, m) for to, m in (*actions.send_early, *actions.send))
        if not pending:
            return
        src, dst, message = pending.pop(0)
        if dst in replicas and not lost(src, dst, message):
            replicas[dst].receive(message)
    raise AssertionError("messages did not settle")


# ---------------------------------------------------------------- proposal ids and ballots


def test_proposal_ids_and_ballots_are_the_same_pair_in_the_same_order():
    """Paxos Made Simple 2.2: proposals are totally ordered numbers; the seed's ``ProposalID(number,
    uid)`` and our ``Ballot(number, node_id)`` order alike, and "nothing yet" is None / Ballot.ZERO."""
    ballots = [Ballot.ZERO, Ballot(1, 1), Ballot(1, 2), Ballot(1, 3), Ballot(2, 1), Ballot(7, 2)]
    ids = [proposal_id_of(b) for b in ballots]
    assert ids == [None, ProposalID(1, 1), ProposalID(1, 2), ProposalID(1, 3), ProposalID(2, 1), ProposalID(7, 2)]
    assert [ballot_of(i) for i in ids] == ballots
    for i, low in enumerate(ballots):
        for high in ballots[i + 1:]:
            assert proposal_id_of(high) > proposal_id_of(low)  # the seed's None-aware order


# ---------------------------------------------------------------- phase 1: the elector


def test_first_election_waits_for_functionals_prepare_guard_then_persists_own_promise_and_prepares():
    """functional: a node tries to lead only when no heartbeat came within ``liveness_window`` and no
    Prepare within 1.5 windows (counted from its start); the Prepare covers every slot from the first
    undecided one (section 3), and our own promise is in the same ``Actions`` (persist before send)."""
    replica = make(1)
    for _ in range(15):  # 1.5 * election_timeout_ticks
        replica.tick()
        assert replica.status()["role"] == "follower"
        assert not replica.take_actions()
    actions = elect(replica)
    assert actions.persist == [PromiseRecord(B11)]
    assert actions.send == [(2, Prepare(sender=1, ballot=B11, first_slot=1)),
                            (3, Prepare(sender=1, ballot=B11, first_slot=1))]
    assert replica.status()["role"] == "candidate" and replica.ballot == B11


def test_a_foreign_prepare_postpones_our_own_candidacy():
    """functional ``observed_recent_prepare``: a Prepare from another node within 1.5 windows holds
    our own attempt back, so competing candidates do not duel."""
    replica = make(1)
    replica.receive(Prepare(sender=2, ballot=B12, first_slot=1))
    replica.take_actions()
    for _ in range(15):
        replica.tick()
        replica.receive(Prepare(sender=2, ballot=B12, first_slot=1))  # it keeps trying
        assert replica.status()["role"] == "follower"
        replica.take_actions()
    elect(replica)  # once it stops, we try, above its ballot
    assert replica.ballot == B21


def test_postponed_election_waits_until_the_shell_stops_postponing():
    """``postpone_election`` restarts the poll timer: no poll, no candidacy (liveness only)."""
    replica = make(1)
    for _ in range(100):
        replica.postpone_election()
        replica.tick()
        assert replica.status()["role"] == "follower"
    elect(replica)


def test_promise_is_persisted_in_the_same_actions_that_send_it():
    """practical's persistence protocol: a new promise is pending until ``persisted()``, which this
    adapter calls once the PromiseRecord is in ``Actions.persist``, so the Promise leaves after it."""
    follower = make(2)
    follower.receive(Prepare(sender=1, ballot=B11, first_slot=1))
    actions = follower.take_actions()
    assert actions.persist == [PromiseRecord(B11)]
    assert actions.send == [(1, promise(2, B11))]


def test_promise_assembles_each_slot_acceptors_answer_and_the_decided_slots():
    """Section 3: one Prepare for all slots from ``first_slot``; each slot's ``practical.Acceptor``
    answers it and its accepted (id, value) becomes an ``AcceptedEntry``; slots decided here are
    reported as decided instead; slots below ``first_slot`` are left out."""
    state = DurableState(promised=B12, accepted={1: (B11, A), 2: (B12, B), 3: (B11, C)}, decided={1: A, 3: C})
    follower = make(3, state=state)
    follower.take_actions()
    follower.receive(Prepare(sender=1, ballot=B21, first_slot=2))
    actions = follower.take_actions()
    assert actions.persist == [PromiseRecord(B21)]
    assert actions.send == [(1, promise(3, B21, first_slot=2,
                                        accepted=[AcceptedEntry(slot=2, ballot=B12, value=B)],
                                        decided=[DecidedEntry(slot=3, value=C)]))]
    # Every slot's acceptor now promises the new ballot: the node's promise covers all slots.
    assert {s: a.promised_id for s, a in follower._acceptors.items()} == {s: ProposalID(2, 1) for s in (1, 2, 3)}


def test_lower_prepare_is_nacked_and_the_promise_never_decreases():
    """P1a: an acceptor that promised ``b`` rejects a lower ballot, with a NACK (practical) carrying its
    promise; nothing is persisted."""
    follower = make(2)
    follower.receive(Prepare(sender=3, ballot=B23, first_slot=1))
    follower.take_actions()
    follower.receive(Prepare(sender=1, ballot=B11, first_slot=1))
    actions = follower.take_actions()
    assert actions.persist == []
    assert actions.send == [(1, Nack(sender=2, ballot=B11, promised=B23))]
    assert follower.ballot == B23


def test_duplicate_prepare_is_answered_again_without_a_new_record():
    """practical: a Prepare for the id already promised is answered at once: its promise is durable."""
    follower = make(2)
    follower.receive(Prepare(sender=1, ballot=B11, first_slot=1))
    first = follower.take_actions()
    follower.receive(Prepare(sender=1, ballot=B11, first_slot=1))
    again = follower.take_actions()
    assert again.persist == [] and again.send == first.send


def test_majority_of_promises_makes_the_elector_leader_which_pulses_at_once():
    """functional: at a quorum of promises the node leads and pulses a heartbeat right away (its
    ``send_heartbeat`` is our Heartbeat, numbered for read rounds); it then pulses every
    ``heartbeat_ticks``."""
    leader = make(1)
    elect(leader)
    leader.receive(promise(2, B11))
    assert leader.is_leader and leader.leader_id == 1
    actions = leader.take_actions()
    assert actions.persist == []
    assert actions.send == [(2, Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=1)),
                            (3, Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=1))]
    leader.tick()
    assert not leader.take_actions()
    leader.tick()
    assert sent(leader.take_actions(), Heartbeat) == [
        (2, Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=2)),
        (3, Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=2))]


def test_stale_and_duplicate_promises_are_ignored():
    """A promise for another ballot, or a second one from the same acceptor, counts for nothing."""
    leader = make(1, nodes=5)
    elect(leader)
    leader.receive(promise(2, B12))
    leader.receive(promise(2, B11))
    leader.receive(promise(2, B11))
    assert not leader.is_leader
    assert leader.status()["counters"]["stale_promise"] == 1
    assert leader.status()["counters"]["duplicate"] == 1
    leader.receive(promise(3, B11))
    assert leader.is_leader


def test_promise_from_an_acceptor_behind_our_snapshot_gap_is_not_counted_and_its_snapshot_is_fetched():
    """A promiser whose snapshot covers slots from our ``first_slot`` cannot report them (section 3's
    P2c needs their accepted values): it does not count toward the quorum; we ask it for catch-up."""
    leader = make(1)
    elect(leader)
    leader.receive(promise(2, B11, snapshot_slot=5))
    assert not leader.is_leader
    actions = leader.take_actions()
    assert actions.send == [(2, CatchupRequest(sender=1, first_slot=1))]
    assert leader.status()["counters"]["election_behind"] == 1
    leader.receive(promise(3, B11))
    assert leader.is_leader


def test_candidate_reprepares_at_once_when_nacked_while_acquiring():
    """functional ``recv_prepare_nack``: while acquiring leadership, a NACK makes the node prepare
    again at once, above the promise the NACK reported."""
    candidate = make(1)
    elect(candidate)
    candidate.receive(Nack(sender=2, ballot=B11, promised=Ballot(4, 3)))
    actions = candidate.take_actions()
    assert actions.persist == [PromiseRecord(Ballot(5, 1))]
    assert sent(actions, Prepare) == [(2, Prepare(sender=1, ballot=Ballot(5, 1), first_slot=1)),
                                      (3, Prepare(sender=1, ballot=Ballot(5, 1), first_slot=1))]


# ---------------------------------------------------------------- phase 1 carried into every slot


def test_new_leader_slot_proposers_apply_p2c_to_the_carried_promises():
    """P2c (section 2.2), per slot by ``practical.Proposer``: at slot 1 the value accepted at the
    highest ballot is re-proposed; slot 2, a hole below the highest reported slot, gets the no-op
    (section 3); slot 3, reported decided, is not re-proposed (followers fetch it)."""
    leader = make(1, nodes=5)
    elect(leader)
    leader.receive(promise(2, B11, accepted=[AcceptedEntry(slot=1, ballot=Ballot(0, 2), value=A)]))
    leader.receive(promise(3, B11, accepted=[AcceptedEntry(slot=1, ballot=Ballot(0, 3), value=B),
                                             AcceptedEntry(slot=4, ballot=Ballot(0, 3), value=C)],
                           decided=[DecidedEntry(slot=3, value=C)]))
    assert leader.is_leader
    actions = leader.take_actions()
    assert actions.persist == [DecideRecord(3, C), AcceptRecord(1, B11, B), AcceptRecord(2, B11, ()),
                               AcceptRecord(4, B11, C)]
    accepts = [(m.slot, m.value) for to, m in sent(actions, Accept) if to == 2]
    assert accepts == [(1, B), (2, ()), (4, C)]
    assert sorted(leader._in_flight) == [1, 2, 4]


def test_a_new_slot_skips_phase_one_its_proposer_prepares_passively_and_leads_on_the_carried_quorum():
    """Section 3 ("phase 1 for infinitely many instances"): a slot opened after the election sends no
    Prepare. Its ``practical.Proposer`` took our ballot with a passive ``prepare()`` and became the
    slot's leader from the election quorum's promises, each "nothing accepted" at this slot."""
    leader = make_leader()
    leader.propose(b"x")
    actions = leader.take_actions()
    assert actions.persist == [AcceptRecord(1, B11, (b"x",))]
    assert actions.send == [(2, Accept(sender=1, ballot=B11, slot=1, value=(b"x",), decided_slot=0)),
                            (3, Accept(sender=1, ballot=B11, slot=1, value=(b"x",), decided_slot=0))]
    proposer = leader._in_flight[1].proposer
    assert isinstance(proposer, practical.Proposer)
    assert proposer.leader and proposer.proposal_id == ProposalID(1, 1)
    assert proposer.promises_rcvd == {1, 2}  # the election's quorum, carried in
    assert proposer.last_accepted_id is None


def test_slot_is_decided_by_its_learner_at_a_majority_then_applied_and_its_instance_released():
    """Section 2.3: a value is chosen when a majority accepted it; the leader's ``practical.Learner``
    counts its own acceptance (loopback) and the Accepted messages, then the proposer and learner are
    released."""
    leader = make_leader()
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=2, ballot=B11, slot=1))
    actions = leader.take_actions()
    assert actions.persist == [DecideRecord(1, (b"x",))]
    assert actions.apply == [(1, (b"x",))]
    assert actions.send == [(2, Decide(sender=1, ballot=B11, decided_slot=1)),
                            (3, Decide(sender=1, ballot=B11, decided_slot=1))]
    assert leader.decided_slot == 1 and leader.status()["in_flight"] == 0
    leader.receive(Accepted(sender=3, ballot=B11, slot=1))
    assert leader.status()["counters"]["late_accepted"] == 1


def test_leader_batches_queued_commands_and_respects_the_window():
    """Batching and pipelining as in the core: ``batch_count_max`` commands per slot, at most
    ``window`` undecided slots; the rest wait for a decision."""
    leader = make_leader(window=2, batch_count_max=2)
    for i in range(7):
        leader.propose(b"c%d" % i)
    actions = leader.take_actions()
    assert [(m.slot, m.value) for to, m in sent(actions, Accept) if to == 2] == [
        (1, (b"c0", b"c1")), (2, (b"c2", b"c3"))]
    assert leader.status()["queued"] == 3
    leader.receive(Accepted(sender=2, ballot=B11, slot=1))
    actions = leader.take_actions()
    assert [(m.slot, m.value, m.decided_slot) for to, m in sent(actions, Accept) if to == 2] == [
        (3, (b"c4", b"c5"), 1)]


# ---------------------------------------------------------------- phase 2: acceptors


def test_accept_is_persisted_before_accepted_is_sent_to_the_proposer_only():
    """practical: an acceptance is pending until persisted; the Accepted goes to the ballot's proposer,
    the distinguished learner (section 2.3)."""
    follower = make(2)
    follower.receive(Accept(sender=1, ballot=B11, slot=1, value=A, decided_slot=0))
    actions = follower.take_actions()
    assert actions.persist == [PromiseRecord(B11), AcceptRecord(1, B11, A)]
    assert actions.send == [(1, Accepted(sender=2, ballot=B11, slot=1))]
    assert follower.leader_id == 1


def test_duplicate_accept_is_acknowledged_again_without_a_second_record():
    """practical: the proposal already accepted is answered at once; its record is durable."""
    follower = make(2)
    accept = Accept(sender=1, ballot=B11, slot=1, value=A, decided_slot=0)
    follower.receive(accept)
    follower.take_actions()
    follower.receive(accept)
    actions = follower.take_actions()
    assert actions.persist == [] and actions.send == [(1, Accepted(sender=2, ballot=B11, slot=1))]


def test_accept_below_the_promise_is_nacked_by_the_slot_acceptor_and_nothing_is_kept():
    """P1a with practical's accept NACK; an acceptor that holds nothing but the node's promise is not
    kept (memory per slot stays bounded)."""
    follower = make(2)
    follower.receive(Prepare(sender=3, ballot=B23, first_slot=1))
    follower.take_actions()
    follower.receive(Accept(sender=1, ballot=B11, slot=9, value=A, decided_slot=0))
    actions = follower.take_actions()
    assert actions.persist == [] and actions.send == [(1, Nack(sender=2, ballot=B11, promised=B23))]
    assert 9 not in follower._acceptors


def test_a_higher_accept_raises_the_promise_of_every_slot():
    """The node's promise covers all slots (section 3): an Accept at a higher ballot is, for every
    other slot, that leader's Prepare, so an Accept for another slot at the old ballot is refused."""
    follower = make(2)
    follower.receive(Accept(sender=1, ballot=B11, slot=1, value=A, decided_slot=0))
    follower.take_actions()
    follower.receive(Accept(sender=3, ballot=B23, slot=2, value=B, decided_slot=0))
    actions = follower.take_actions()
    assert actions.persist == [PromiseRecord(B23), AcceptRecord(2, B23, B)]
    assert actions.send == [(3, Accepted(sender=2, ballot=B23, slot=2))]  # no Promise sent
    follower.receive(Accept(sender=1, ballot=B11, slot=3, value=C, decided_slot=0))
    assert follower.take_actions().send == [(1, Nack(sender=2, ballot=B11, promised=B23))]
    assert follower.durable_state().promised == B23


def test_one_ballot_proposing_two_values_for_a_slot_fails_a_safety_assertion():
    """Section 2.2: a proposal is a (number, value) pair; one ballot never carries two values."""
    follower = make(2)
    follower.receive(Accept(sender=1, ballot=B11, slot=1, value=A, decided_slot=0))
    with pytest.raises(AssertionError, match="safety"):
        follower.receive(Accept(sender=1, ballot=B11, slot=1, value=B, decided_slot=0))


# ---------------------------------------------------------------- leadership changes


def test_heartbeat_from_a_higher_leader_demotes_the_leader_and_drops_its_queue():
    """functional ``recv_heartbeat``: a heartbeat with a higher proposal id names a new leader; a node
    that led loses leadership. Commands not yet in a slot come back in ``dropped_proposals``."""
    leader = make_leader()
    leader.propose(b"late")
    leader.receive(Heartbeat(sender=2, ballot=B22, decided_slot=0, seq=1))
    assert not leader.is_leader and leader.leader_id == 2
    actions = leader.take_actions()
    assert actions.dropped_proposals == [b"late"]
    assert actions.persist == [PromiseRecord(B22)]
    assert actions.send == [(2, HeartbeatAck(sender=1, ballot=B22, seq=1))]


def test_one_nack_does_not_demote_but_a_quorum_of_nacks_does():
    """functional ``recv_accept_nack``: leadership is lost on NACKs from a quorum for our id (one NACK
    may come from a node that merely heard a competing Prepare)."""
    leader = make_leader(nodes=5)
    leader.propose(b"x")
    leader.take_actions()
    for sender in (2, 3):
        leader.receive(Nack(sender=sender, ballot=B11, promised=B22))
        assert leader.is_leader
    leader.read(7)
    leader.receive(Nack(sender=4, ballot=B11, promised=B22))
    assert not leader.is_leader
    actions = leader.take_actions()
    assert actions.rejected_reads == [7]
    elect(leader)
    assert leader.ballot == Ballot(3, 1)  # above the promise the NACKs reported


def test_leader_whose_node_promises_a_higher_ballot_steps_down():
    """Adapter rule: once its acceptors promised a higher ballot its own vote is gone, so it stops
    leading (a read round must not count a promise it no longer holds)."""
    leader = make_leader()
    leader.receive(Prepare(sender=2, ballot=B22, first_slot=1))
    assert not leader.is_leader
    assert leader.status()["counters"]["stepped_down_promise"] == 1
    assert leader.take_actions().send == [(2, promise(1, B22))]


def test_leader_that_learns_its_proposal_lost_steps_down_before_announcing_it():
    """Adapter rule (section 2.3 with P2): a slot decided with another value than ours means a higher
    ballot won; announcing our decided slot could make followers learn our losing value."""
    leader = make_leader()
    leader.propose(b"ours")
    leader.take_actions()
    leader.receive(CatchupReply(sender=2, entries=(DecidedEntry(slot=1, value=(b"theirs",)),), snapshot_slot=0))
    assert not leader.is_leader
    actions = leader.take_actions()
    assert actions.apply == [(1, (b"theirs",))]
    assert not sent(actions, Decide) and not sent(actions, Heartbeat)
    assert leader.status()["counters"]["stepped_down_stale"] == 1


def test_heartbeat_below_our_promise_is_nacked_and_does_not_count_as_the_leaders_heartbeat():
    """P1a: a node that promised a higher ballot NACKs an old leader instead of acking it."""
    follower = make(2)
    follower.receive(Prepare(sender=3, ballot=B23, first_slot=1))
    follower.take_actions()
    follower.receive(Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=4))
    assert follower.take_actions().send == [(1, Nack(sender=2, ballot=B11, promised=B23))]
    assert follower.leader_id is None


# ---------------------------------------------------------------- learning, catch-up, snapshots


def test_follower_learns_decided_slots_it_accepted_at_the_announcing_ballot():
    """Section 2.3 (distinguished learner): the leader's ``decided_slot`` decides at a follower every
    slot its acceptor accepted at that same ballot."""
    follower = make(2)
    follower.receive(Accept(sender=1, ballot=B11, slot=1, value=A, decided_slot=0))
    follower.receive(Accept(sender=1, ballot=B11, slot=2, value=B, decided_slot=0))
    follower.take_actions()
    follower.receive(Decide(sender=1, ballot=B11, decided_slot=2))
    actions = follower.take_actions()
    assert actions.persist == [DecideRecord(1, A), DecideRecord(2, B)]
    assert actions.apply == [(1, A), (2, B)]
    assert actions.send == []


def test_follower_does_not_decide_a_value_accepted_at_another_ballot_and_asks_for_it():
    """One ballot proposes one value per slot; a value accepted at another ballot may differ."""
    follower = make(2)
    follower.receive(Accept(sender=1, ballot=B11, slot=1, value=A, decided_slot=0))
    follower.take_actions()
    follower.receive(Heartbeat(sender=3, ballot=B23, decided_slot=1, seq=1))
    actions = follower.take_actions()
    assert actions.apply == []
    assert actions.send == [(3, HeartbeatAck(sender=2, ballot=B23, seq=1)),
                            (3, CatchupRequest(sender=2, first_slot=1))]
    follower.receive(CatchupReply(sender=3, entries=(DecidedEntry(slot=1, value=B),), snapshot_slot=0))
    assert follower.take_actions().apply == [(1, B)]


def test_catchup_request_is_answered_with_consecutive_decided_entries_or_a_snapshot_offer():
    """Catch-up as in the core; a requester below our snapshot is named in ``snapshot_to``."""
    state = DurableState(promised=B11, decided={3: A, 4: B, 6: C}, snapshot_slot=2)
    node = make(3, state=state, catchup_entries_max=8)
    node.take_actions()
    node.receive(CatchupRequest(sender=1, first_slot=3))
    assert node.take_actions().send == [(1, CatchupReply(
        sender=3, entries=(DecidedEntry(slot=3, value=A), DecidedEntry(slot=4, value=B)), snapshot_slot=2))]
    node.receive(CatchupRequest(sender=2, first_slot=1))
    actions = node.take_actions()
    assert actions.snapshot_to == [2]


def test_compaction_releases_every_instance_at_or_below_the_snapshot():
    """Memory per slot is bounded: a slot's proposer and learner go when it is decided, its acceptor
    and decided value at compaction; a long run holds only what is above the snapshot."""
    leader = make_leader()
    follower = make(2)
    for i in range(1, 201):
        leader.propose(b"c%d" % i)
        for to, m in leader.take_actions().send:
            if to == 2:
                follower.receive(m)
        for _to, m in follower.take_actions().send:
            leader.receive(m)
        if i % 50 == 0:
            leader.take_actions()
            leader.compact(leader.applied_slot)
            follower.take_actions()
            follower.compact(follower.applied_slot)
            assert leader.status()["instances"] <= 1 and follower.status()["instances"] <= 1
        assert leader.status()["instances"] <= 52 and follower.status()["instances"] <= 52
    assert leader.decided_slot == 200 and follower.decided_slot >= 199
    state = leader.durable_state()
    assert state.snapshot_slot == 200 and state.accepted == {} and state.decided == {}


def test_install_snapshot_forgets_covered_slots_and_a_leader_steps_down():
    """As the core: the shell installed a peer's snapshot; slots at or below it are forgotten and the
    decided ones after it are applied. A leader steps down (functional's leadership lost)."""
    leader = make_leader()
    leader.receive(CatchupReply(sender=2, entries=(DecidedEntry(slot=11, value=A),), snapshot_slot=10))
    leader.take_actions()
    leader.install_snapshot(10)
    assert not leader.is_leader and leader._elector.leader is False
    actions = leader.take_actions()
    assert actions.apply == [(11, A)]
    assert leader.applied_slot == 11 and leader.snapshot_slot == 10


def test_accept_below_our_log_start_offers_our_snapshot_to_a_leader_behind_it():
    """A compacted slot is decided, but we no longer know what we accepted there: no blind vote."""
    node = make(2, state=DurableState(promised=B11, snapshot_slot=5))
    node.take_actions()
    node.receive(Accept(sender=1, ballot=B11, slot=3, value=A, decided_slot=2))
    actions = node.take_actions()
    assert actions.send == [] and actions.snapshot_to == [1]
    assert node.status()["counters"]["below_log_start"] == 1


# ---------------------------------------------------------------- restart


def test_recovered_node_rebuilds_its_acceptors_and_prepares_above_its_old_ballot():
    """practical ``recover``: a restarted node's acceptors hold what its records say; its next
    proposal id is above its recovered promise, even when that promise was its own ballot."""
    state = DurableState(promised=Ballot(5, 1), accepted={1: (Ballot(5, 1), A), 2: (Ballot(4, 2), B)},
                         decided={1: A})
    replica = make(1, state=state)
    first = replica.take_actions()
    assert first.apply == [(1, A)] and not first.persist
    assert replica._acceptors[2].accepted_id == ProposalID(4, 2)
    assert replica._acceptors[2].promised_id == ProposalID(5, 1)
    actions = elect(replica)
    assert actions.persist == [PromiseRecord(Ballot(6, 1))]
    assert sent(actions, Prepare)[0] == (2, Prepare(sender=1, ballot=Ballot(6, 1), first_slot=2))
    assert replica.durable_state() == DurableState(promised=Ballot(6, 1), accepted=state.accepted,
                                                   decided={1: A})


# ---------------------------------------------------------------- reads


def test_read_is_served_after_a_majority_acks_a_round_begun_after_the_read():
    """Read index: functional's heartbeats expect no answer, so followers ack them; the read waits for
    a majority of acks of a pulse begun after it arrived (2.1, quorum intersection)."""
    leader = make_leader()
    assert leader.read(1)
    actions = leader.take_actions()
    assert actions.reads == []
    assert sent(actions, Heartbeat) == [(2, Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=2)),
                                        (3, Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=2))]
    leader.receive(HeartbeatAck(sender=2, ballot=B11, seq=1))  # an older round does not count
    assert leader.take_actions().reads == []
    leader.receive(HeartbeatAck(sender=3, ballot=B11, seq=2))
    assert leader.take_actions().reads == [(1, 0)]


def test_reads_of_one_batch_share_one_round():
    leader = make_leader()
    leader.read(1)
    leader.read(2)
    assert len(sent(leader.take_actions(), Heartbeat)) == 2  # one round, to two followers


def test_read_index_covers_the_slots_the_election_reported_and_waits_for_them_to_be_applied():
    """Slots decided under earlier ballots were reported by the promise quorum and re-proposed: the
    read index is the highest of them, and the read waits until it is applied."""
    leader = make(1)
    elect(leader)
    leader.receive(promise(2, B11, accepted=[AcceptedEntry(slot=2, ballot=Ballot(0, 2), value=A)]))
    leader.take_actions()
    leader.read(9)
    leader.receive(HeartbeatAck(sender=2, ballot=B11, seq=2))
    assert leader.take_actions().reads == []
    leader.receive(Accepted(sender=2, ballot=B11, slot=1))
    leader.receive(Accepted(sender=2, ballot=B11, slot=2))
    assert leader.take_actions().reads == [(9, 2)]


def test_follower_acks_a_heartbeat_at_its_promise_and_raises_its_promise_to_a_higher_one():
    follower = make(2)
    follower.receive(Heartbeat(sender=1, ballot=B11, decided_slot=0, seq=3))
    actions = follower.take_actions()
    assert actions.persist == [PromiseRecord(B11)]
    assert actions.send == [(1, HeartbeatAck(sender=2, ballot=B11, seq=3))]


# ---------------------------------------------------------------- retransmission and options


def test_leader_retransmits_an_undecided_slot_once_it_is_open_a_whole_heartbeat_period():
    """practical ``resend_accept`` (a broadcast) for slots open ``heartbeat_ticks`` or more."""
    leader = make_leader()
    leader.propose(b"x")
    leader.take_actions()
    leader.tick()
    assert not sent(leader.take_actions(), Accept)
    leader.tick()
    assert [(to, m.slot) for to, m in sent(leader.take_actions(), Accept)] == [(2, 1), (3, 1)]


def test_a_no_op_slot_is_retransmitted_too():
    """``resend_accept`` tests the value's truthiness (2013) and the no-op ``()`` is falsy: the adapter
    resends it through the same messenger callback, or a lost no-op would stall the log."""
    leader = make(1)
    elect(leader)
    leader.receive(promise(2, B11, accepted=[AcceptedEntry(slot=2, ballot=Ballot(0, 2), value=A)]))
    leader.take_actions()
    leader.tick()
    leader.tick()
    assert [(m.slot, m.value) for to, m in sent(leader.take_actions(), Accept) if to == 3] == [(1, ()), (2, A)]


def test_lazy_decide_announces_on_the_next_tick():
    leader = make_leader(lazy_decide=True)
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=2, ballot=B11, slot=1))
    assert not sent(leader.take_actions(), Decide)
    leader.tick()
    assert sent(leader.take_actions(), Decide) == [(2, Decide(sender=1, ballot=B11, decided_slot=1)),
                                                   (3, Decide(sender=1, ballot=B11, decided_slot=1))]


def test_early_accepts_leave_before_persist_and_announce_only_durable_decisions():
    """As ``Options.early_accepts`` in the core: Accepts in ``send_early``, their ``decided_slot``
    capped at the durable mark the shell reported."""
    leader = make_leader(early_accepts=True)
    leader.propose(b"x")
    first = leader.take_actions()
    assert [m.slot for to, m in first.send_early] == [1, 1] and not sent(first, Accept)
    leader.receive(Accepted(sender=2, ballot=B11, slot=1))
    leader.propose(b"y")
    second = leader.take_actions()
    assert {m.decided_slot for to, m in second.send_early} == {0}
    assert second.decided_slot == 1
    leader.note_durable(second.decided_slot)
    leader.propose(b"z")
    assert {m.decided_slot for to, m in leader.take_actions().send_early} == {1}


# ---------------------------------------------------------------- cluster sizes, bad input, status


def test_one_node_cluster_elects_itself_and_decides_alone():
    solo = make(1, nodes=1)
    elect(solo)
    assert solo.is_leader
    solo.propose(b"x")
    actions = solo.take_actions()
    assert actions.apply == [(1, (b"x",))] and actions.send == []
    assert actions.persist == [AcceptRecord(1, B11, (b"x",)), DecideRecord(1, (b"x",))]


def test_five_node_cluster_needs_three_promises_and_three_acceptances():
    leader = make(1, nodes=5)
    elect(leader)
    leader.receive(promise(2, B11))
    assert not leader.is_leader
    leader.receive(promise(3, B11))
    assert leader.is_leader
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=2, ballot=B11, slot=1))
    assert leader.decided_slot == 0
    leader.receive(Accepted(sender=5, ballot=B11, slot=1))
    assert leader.decided_slot == 1


@pytest.mark.parametrize("message", [
    Prepare(sender=9, ballot=Ballot(1, 9), first_slot=1),
    Prepare(sender=1, ballot=B11, first_slot=1),  # from ourselves, over the network
    Accept(sender=2, ballot=B11, slot=1, value=A, decided_slot=0),  # ballot of another node
    Heartbeat(sender=3, ballot=B22, decided_slot=0, seq=1),
    "not a message",
])
def test_messages_from_unknown_or_mismatched_senders_are_counted_and_dropped(message):
    replica = make(1)
    replica.receive(message)
    actions = replica.take_actions()
    assert actions.persist == [] and actions.send == []
    counters = replica.status()["counters"]
    assert counters.get("unknown_sender", 0) + counters.get("malformed", 0) == 1


def test_status_has_the_cores_keys_and_roles_plus_the_engine_and_its_counters():
    """The shell and the simulator read ``status()`` of either engine alike."""
    core = Replica(1, config(), rng=random.Random(1)).status()
    classic = make_leader().status()
    assert set(core) <= set(classic) and classic["engine"] == "classic"
    assert classic["role"] == "leader" and make(2).status()["role"] == "follower"
    for name in ("messages_sent", "persist_batches", "records_persisted", "sent_Prepare", "sent_Heartbeat"):
        assert classic["counters"][name] > 0


def test_same_interface_as_the_core():
    public = {name for name in dir(Replica) if not name.startswith("_")}
    assert public <= {name for name in dir(ClassicReplica) if not name.startswith("_")}


def test_the_elector_is_functionals_heartbeat_node_on_the_tick_clock():
    replica = make(1)
    assert isinstance(replica._elector, functional.HeartbeatNode)
    assert replica._elector.timestamp() == 0
    replica.tick()
    replica.tick()
    assert replica._elector.timestamp() == 2
    assert replica._elector.hb_period == 2 and replica._elector.liveness_window == 10


# ---------------------------------------------------------------- stories across three nodes


def test_three_nodes_elect_decide_survive_the_leaders_crash_and_keep_every_decided_value():
    """A longer story: elect, write, crash the leader (keep only its durable records), the others
    elect a new leader above it, which keeps every decided value (P2c), and the old node rejoins."""
    storage = {n: [] for n in (1, 2, 3)}
    replicas = {n: make(n) for n in (1, 2, 3)}

    def run(rounds: int) -> None:
        for _ in range(rounds):
            for replica in replicas.values():
                replica.tick()
            step()

    def step() -> None:
        pending = []
        for _ in range(10_000):
            for node_id, replica in replicas.items():
                actions = replica.take_actions()
                storage[node_id].extend(actions.persist)
                pending.extend((node_id, to, m) for to, m in actions.send)
            if not pending:
                return
            src, dst, message = pending.pop(0)
            if dst in replicas:
                replicas[dst].receive(message)

    run(60)
    leaders = [n for n, r in replicas.items() if r.is_leader]
    assert len(leaders) == 1
    first = leaders[0]
    for i in range(5):
        assert replicas[first].propose(b"w%d" % i)
        step()
    assert all(r.decided_slot >= 1 for r in replicas.values())
    decided_before = dict(replicas[first]._decided)
    del replicas[first]  # crash
    run(80)
    second = [n for n, r in replicas.items() if r.is_leader]
    assert len(second) == 1 and second[0] != first
    replicas[second[0]].propose(b"after")
    step()
    replicas[first] = ClassicReplica(first, config(), rng=random.Random(99),
                                     state=DurableState.replay(storage[first]))
    run(20)
    logs = {n: [r._decided.get(s) for s in range(1, r.decided_slot + 1)] for n, r in replicas.items()}
    assert all(s in replicas[second[0]]._decided and replicas[second[0]]._decided[s] == v
               for s, v in decided_before.items())
    assert len({tuple(log) for log in logs.values()}) == 1, logs
    assert (b"after",) in logs[first]


def _steady_state_costs(engine) -> tuple[int, int, dict]:
    """Elect node 1 of three, then decide ten commands one at a time; return the messages and the
    persist batches (fsyncs) the three nodes' ``Actions`` held for those ten, and node 1's counters."""
    replicas = {n: engine(n, config(), rng=random.Random(n), options=Options()) for n in (1, 2, 3)}
    deliver_all(replicas, [(1, to, m) for to, m in elect(replicas[1]).send])
    assert replicas[1].is_leader
    counted = {"messages": 0, "fsyncs": 0}

    def take(replica, take_actions=None):
        actions = take_actions()
        counted["messages"] += len(actions.send) + len(actions.send_early)
        counted["fsyncs"] += bool(actions.persist)
        return actions

    for replica in replicas.values():
        replica.take_actions = (lambda replica=replica, original=replica.take_actions: take(replica, original))
    before = dict(replicas[1].status()["counters"])
    for i in range(10):
        replicas[1].propose(b"c%d" % i)
        deliver_all(replicas, [])
    assert all(r.decided_slot == 10 for r in replicas.values())
    after = replicas[1].status()["counters"]
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in (*after, "sent_Prepare")}
    return counted["messages"], counted["fsyncs"], delta


def test_one_request_at_a_time_costs_what_the_core_costs_and_the_counters_say_so():
    """With phase 1 carried into every slot, a command costs no Prepare: per command on three nodes,
    an Accept and an Accepted per follower and a Decide to each (six messages), and one fsync for the
    leader's accept, its decision, and each follower's accept and decision (six), as in the core.
    The status counters report the leader's share of it."""
    messages, fsyncs, counters = _steady_state_costs(ClassicReplica)
    assert (messages, fsyncs) == _steady_state_costs(Replica)[:2] == (60, 60)
    assert counters["commands_decided"] == 10 and counters["slots_decided"] == 10
    assert counters["persist_batches"] == 20  # the leader's: accept and decide per command
    assert counters["messages_sent"] == 40 and counters["sent_Accept"] == counters["sent_Decide"] == 20
    assert counters["sent_Prepare"] == counters["elections"] == 0


def test_a_leader_cut_off_from_its_majority_keeps_only_the_read_rounds_still_needed():
    """Memory stays bounded while a leader pulses without answers: an unconfirmed round is kept only
    while a waiting read began in it, besides the newest (which serves that read too, once confirmed).
    Without CheckQuorum, which would unseat it after an election timeout (tests/paxos/test_check_quorum.py)."""
    leader = make_leader(check_quorum=False)
    for _ in range(100):
        leader.tick()
        leader.take_actions()
    assert len(leader._heartbeat_acks) == 1
    leader.read(1)
    for _ in range(100):
        leader.tick()
        leader.take_actions()
    assert len(leader._heartbeat_acks) == 2  # the read's round and the newest
    leader.receive(HeartbeatAck(sender=2, ballot=B11, seq=leader._heartbeat_seq))
    assert leader.take_actions().reads == [(1, 0)]
    assert leader._heartbeat_acks == {}


def test_an_acceptor_far_ahead_answers_a_prepare_with_catch_up_not_a_promise_as_the_core_does():
    """Rule 39 in the classic engine: the Promise of a candidate far behind would carry every decided
    value above its first_slot (QA: 650 MB per retried Prepare with 64 KiB values)."""
    acceptor = make(3, catchup_entries_max=2)
    acceptor.receive(CatchupReply(sender=1, entries=tuple(DecidedEntry(slot=s, value=(b"v%d" % s,))
                                                          for s in range(1, 5)), snapshot_slot=0))
    acceptor.take_actions()
    assert acceptor.decided_slot == 4
    acceptor.receive(Prepare(sender=2, ballot=Ballot(5, 2), first_slot=1))
    actions = acceptor.take_actions()
    assert not [m for _, m in actions.send if isinstance(m, Promise)]
    assert not any(isinstance(r, PromiseRecord) for r in actions.persist)
    assert [(to, [e.slot for e in m.entries]) for to, m in actions.send if isinstance(m, CatchupReply)] == [(2, [1, 2])]
    acceptor.receive(Prepare(sender=2, ballot=Ballot(6, 2), first_slot=3))  # within reach: promised
    assert [m for _, m in acceptor.take_actions().send if isinstance(m, Promise)]


def test_catch_up_answers_are_bounded_by_bytes_too_as_the_core_does():
    """Soak QA: 256 entries of 1 MiB slots made catch-up answers of 256 MB. An answer stops once its values
    reach ``catchup_bytes_max`` (one entry at least), and a Promise that would carry that much is not
    given (rule 39, by bytes)."""
    acceptor = make(3, catchup_bytes_max=2500)
    acceptor.receive(CatchupReply(sender=1, entries=tuple(DecidedEntry(slot=s, value=(b"v" * 1000,))
                                                          for s in range(1, 7)), snapshot_slot=0))
    acceptor.take_actions()
    acceptor.receive(CatchupRequest(sender=2, first_slot=1))
    assert [[e.slot for e in m.entries] for _, m in acceptor.take_actions().send
            if isinstance(m, CatchupReply)] == [[1, 2, 3]]
    acceptor.receive(Prepare(sender=2, ballot=Ballot(5, 2), first_slot=4))  # 3,000 bytes above: catch-up
    actions = acceptor.take_actions()
    assert not [m for _, m in actions.send if isinstance(m, Promise)]
    assert [[e.slot for e in m.entries] for _, m in actions.send if isinstance(m, CatchupReply)] == [[4, 5, 6]]
    acceptor.receive(Prepare(sender=2, ballot=Ballot(6, 2), first_slot=5))  # 2,000 bytes: promised
    assert [m for _, m in acceptor.take_actions().send if isinstance(m, Promise)]
