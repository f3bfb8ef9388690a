"""Scenario tests for ``paxos.replica``: scripted replicas, exact messages in, exact ``Actions`` out.

Each test drives one to five replicas by hand. It feeds them the exact messages a peer would send and
checks the exact ``Actions`` that come back (records to persist, messages to send, slots to apply,
reads to answer). There is no network and no randomness beyond the seeded election timeout, which a
helper ticks through. Each test is named after the property it checks; its docstring cites the rule of
Lamport's "Paxos Made Simple" (2001) that the property comes from.
"""
from __future__ import annotations

import random

import pytest

from paxos.actions import AcceptRecord, Actions, DecideRecord, DurableState, PromiseRecord
from paxos.ballot import Ballot
from paxos.messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    Campaign,
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
from paxos.replica import ROUNDS_UNCONFIRMED_MAX, Config, Options, Replica

A, B, C = (b"a",), (b"b",), (b"c",)


def make(node_id: int = 1, nodes: int = 3, state: DurableState | None = None, **options) -> Replica:
    return Replica(node_id, Config(node_ids=tuple(range(1, nodes + 1))), rng=random.Random(node_id),
                   state=state, options=Options(**options))


def run_election_timeout(replica: Replica) -> Actions:
    """Tick until the replica starts phase 1; return the actions of that tick."""
    limit = 2 * replica.options.election_timeout_ticks
    for _ in range(limit):
        replica.tick()
        if replica.status()["role"] != "follower":
            return replica.take_actions()
    raise AssertionError(f"no election within {limit} ticks")


def promise(sender: int, ballot: Ballot, first_slot: int = 1, accepted=(), decided=(), snapshot_slot=0) -> Promise:
    return Promise(sender=sender, ballot=ballot, first_slot=first_slot, accepted=tuple(accepted),
                   decided=tuple(decided), snapshot_slot=snapshot_slot)


def make_leader(nodes: int = 3, **options) -> Replica:
    """Node 1 elected leader at Ballot(1, 1) by empty promises from a majority; actions drained."""
    leader = make(1, nodes, **options)
    run_election_timeout(leader)
    for peer in range(2, Config(node_ids=tuple(range(1, nodes + 1))).quorum_size + 1):
        leader.receive(promise(peer, Ballot(1, 1)))
    assert leader.is_leader
    leader.take_actions()
    return leader


def sent(actions: Actions, kind) -> list:
    return [(to, m) for to, m in actions.send if isinstance(m, kind)]


# ---------------------------------------------------------------- phase 1


def test_election_timeout_persists_own_promise_and_sends_prepare_for_first_undecided_slot():
    """Section 2.2/3: a candidate picks a fresh ballot and sends one Prepare covering all slots."""
    replica = make(1)
    actions = run_election_timeout(replica)
    b = Ballot(1, 1)
    assert actions.persist == [PromiseRecord(b)]
    assert actions.send == [(2, Prepare(sender=1, ballot=b, first_slot=1)),
                            (3, Prepare(sender=1, ballot=b, first_slot=1))]
    assert replica.ballot == b and not replica.is_leader


def test_postponed_election_waits_until_the_shell_stops_postponing():
    """Elections serve liveness only (section 3): a node not ready to lead may hold its timer back,
    as a leader's message would, and then campaigns one full timeout after it stops."""
    replica = make(1)
    for _ in range(5 * replica.options.election_timeout_ticks):
        replica.postpone_election()
        replica.tick()
        assert replica.status()["role"] == "follower"
    assert replica.take_actions().send == []
    actions = run_election_timeout(replica)
    assert sent(actions, Prepare)


def test_postpone_election_leaves_a_leader_leading():
    leader = make_leader()
    leader.postpone_election()
    for _ in range(leader.options.heartbeat_ticks):
        leader.tick()
    assert leader.is_leader
    assert sent(leader.take_actions(), Heartbeat)


def test_candidate_ballot_is_above_every_ballot_seen():
    """Section 2.2: a proposer's number must exceed any it has seen, or its Prepare is refused."""
    replica = make(1)
    replica.receive(Prepare(sender=3, ballot=Ballot(7, 3), first_slot=1))
    replica.take_actions()
    actions = run_election_timeout(replica)
    assert actions.persist == [PromiseRecord(Ballot(8, 1))]


def test_promise_is_persisted_in_the_same_actions_that_send_it():
    """P1a: the promise must survive a crash, so the record precedes the reply (persist-send contract)."""
    replica = make(2)
    replica.receive(Prepare(sender=1, ballot=Ballot(1, 1), first_slot=1))
    actions = replica.take_actions()
    assert actions.persist == [PromiseRecord(Ballot(1, 1))]
    assert actions.send == [(1, promise(2, Ballot(1, 1)))]


def test_promise_reports_accepted_and_decided_slots_from_first_slot():
    """Section 2.2, phase 1b: the promise carries what was accepted, so P2c can be kept."""
    replica = make(2)
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0))
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=2, value=B, decided_slot=1))
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=3, value=C, decided_slot=1))
    replica.take_actions()
    replica.receive(Prepare(sender=3, ballot=Ballot(2, 3), first_slot=2))
    actions = replica.take_actions()
    assert actions.send == [(3, promise(3 - 1, Ballot(2, 3), first_slot=2,
                                        accepted=[AcceptedEntry(slot=2, ballot=Ballot(1, 1), value=B),
                                                  AcceptedEntry(slot=3, ballot=Ballot(1, 1), value=C)]))]


def test_lower_prepare_is_nacked_and_promise_never_decreases():
    """P1a: an acceptor never goes back on a promise; the Nack tells the proposer why."""
    replica = make(2)
    replica.receive(Prepare(sender=3, ballot=Ballot(5, 3), first_slot=1))
    replica.take_actions()
    replica.receive(Prepare(sender=1, ballot=Ballot(4, 1), first_slot=1))
    actions = replica.take_actions()
    assert actions.persist == []
    assert actions.send == [(1, Nack(sender=2, ballot=Ballot(4, 1), promised=Ballot(5, 3)))]
    assert replica.ballot == Ballot(5, 3)
    assert replica.status()["counters"]["nack_sent"] == 1


def test_duplicate_prepare_is_answered_again_without_a_new_record():
    """A lost Promise must be recoverable; re-promising the same ballot needs no new durable write."""
    replica = make(2)
    replica.receive(Prepare(sender=1, ballot=Ballot(1, 1), first_slot=1))
    replica.take_actions()
    replica.receive(Prepare(sender=1, ballot=Ballot(1, 1), first_slot=1))
    actions = replica.take_actions()
    assert actions.persist == []
    assert actions.send == [(1, promise(2, Ballot(1, 1)))]


def test_majority_of_promises_makes_leader_which_announces_itself():
    """Section 3: with a majority of promises, phase 1 is done for all slots; the leader says so."""
    replica = make(1)
    run_election_timeout(replica)
    replica.receive(promise(2, Ballot(1, 1)))
    assert replica.is_leader and replica.leader_id == 1
    actions = replica.take_actions()
    assert actions.persist == []
    assert actions.send == [(2, Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=0, seq=1)),
                            (3, Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=0, seq=1))]


def test_new_leader_reproposes_the_value_accepted_at_the_highest_ballot():
    """P2c (section 2.2): the new leader must propose the value of the highest-numbered acceptance."""
    replica = make(1)
    # Node 1 itself accepted A at slot 1 in ballot (1, 2); node 3 reports B accepted at (2, 3).
    replica.receive(Accept(sender=2, ballot=Ballot(1, 2), slot=1, value=A, decided_slot=0))
    replica.receive(Prepare(sender=3, ballot=Ballot(2, 3), first_slot=1))
    replica.take_actions()
    run_election_timeout(replica)
    b = Ballot(3, 1)
    replica.receive(promise(3, b, accepted=[AcceptedEntry(slot=1, ballot=Ballot(2, 3), value=B)]))
    assert replica.is_leader
    actions = replica.take_actions()
    assert actions.persist == [AcceptRecord(1, b, B)]
    assert sent(actions, Accept) == [(2, Accept(sender=1, ballot=b, slot=1, value=B, decided_slot=0)),
                                     (3, Accept(sender=1, ballot=b, slot=1, value=B, decided_slot=0))]


def test_new_leader_fills_holes_with_noop_and_keeps_reported_decided_values():
    """Section 3: gaps below the highest reported slot get a no-op; decided values stay as they are."""
    replica = make(1)
    run_election_timeout(replica)
    b = Ballot(1, 1)
    replica.receive(promise(2, b, accepted=[AcceptedEntry(slot=3, ballot=Ballot(0, 3), value=C)],
                            decided=[DecidedEntry(slot=1, value=A)]))
    actions = replica.take_actions()
    assert [(m.slot, m.value) for to, m in sent(actions, Accept) if to == 2] == [(1, A), (2, ()), (3, C)]
    # Slot 1 was reported decided: it is durable, applied, and not waiting for acceptances.
    assert DecideRecord(1, A) in actions.persist
    assert actions.apply == [(1, A)]
    assert replica.status()["in_flight"] == 2


def test_stale_promise_is_ignored():
    """A Promise for a ballot we are no longer running counts nothing (section 2.2: per-ballot phase 1)."""
    replica = make(1)
    run_election_timeout(replica)
    replica.receive(promise(2, Ballot(0, 1)))
    assert not replica.is_leader
    assert replica.status()["counters"]["stale_promise"] == 1


# ---------------------------------------------------------------- phase 2


def test_leader_batches_queued_commands_into_one_slot_and_accepts_itself_first():
    """Section 3: each slot is one Paxos instance; the leader's own acceptance is durable before Accept."""
    leader = make_leader()
    assert leader.propose(b"x") and leader.propose(b"y")
    actions = leader.take_actions()
    b = Ballot(1, 1)
    assert actions.persist == [AcceptRecord(1, b, (b"x", b"y"))]
    assert actions.send == [(2, Accept(sender=1, ballot=b, slot=1, value=(b"x", b"y"), decided_slot=0)),
                            (3, Accept(sender=1, ballot=b, slot=1, value=(b"x", b"y"), decided_slot=0))]
    assert actions.apply == []


def test_slot_is_decided_by_a_majority_of_accepted_and_then_applied():
    """Section 2.3: a value is chosen when a majority accepted it; then it is learned and applied."""
    leader = make_leader()
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=3, ballot=Ballot(1, 1), slot=1))
    actions = leader.take_actions()
    assert actions.persist == [DecideRecord(1, (b"x",))]
    assert actions.apply == [(1, (b"x",))]
    assert actions.send == [(2, Decide(sender=1, ballot=Ballot(1, 1), decided_slot=1)),
                            (3, Decide(sender=1, ballot=Ballot(1, 1), decided_slot=1))]
    assert leader.decided_slot == 1 and leader.applied_slot == 1


def test_lazy_decide_rides_on_the_next_accept_and_otherwise_goes_out_on_the_next_tick():
    """Options.lazy_decide: a decision not carried by an Accept waits for a tick instead of a Decide
    per batch; the next Accept carries it (and then no Decide is needed at all)."""
    b = Ballot(1, 1)
    leader = make_leader(lazy_decide=True, heartbeat_ticks=100)
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=3, ballot=b, slot=1))
    actions = leader.take_actions()
    assert actions.apply == [(1, (b"x",))]  # decided and applied here at once ...
    assert sent(actions, Decide) == []  # ... but not announced yet
    # The next command's Accept carries decided_slot=1, so the tick has nothing left to announce.
    leader.propose(b"y")
    actions = leader.take_actions()
    assert [m.decided_slot for _, m in sent(actions, Accept)] == [1, 1]
    leader.receive(Accepted(sender=2, ballot=b, slot=2))
    assert sent(leader.take_actions(), Decide) == []
    leader.tick()
    assert sent(leader.take_actions(), Decide) == [(2, Decide(sender=1, ballot=b, decided_slot=2)),
                                                   (3, Decide(sender=1, ballot=b, decided_slot=2))]
    leader.tick()
    assert sent(leader.take_actions(), Decide) == []  # announced once


def test_early_accepts_leave_before_persist_and_announce_only_durable_decisions():
    """Options.early_accepts: phase 2a promises nothing on the leader's behalf (section 2.2), so its
    Accepts may leave before the batch's records are durable (``Actions.send_early``). But a decision
    counts the leader's own acceptance (section 2.3), durable only after its batch's fsync: an early
    Accept announces decisions only up to the slot the shell reported durable with ``note_durable``,
    and what it held back goes out later (here a lazy Decide on the next tick)."""
    b = Ballot(1, 1)
    leader = make_leader(early_accepts=True, lazy_decide=True, heartbeat_ticks=100)
    leader.propose(b"x")
    first = leader.take_actions()
    assert first.persist == [AcceptRecord(1, b, (b"x",))] and first.send == []
    assert first.send_early == [(2, Accept(sender=1, ballot=b, slot=1, value=(b"x",), decided_slot=0)),
                                (3, Accept(sender=1, ballot=b, slot=1, value=(b"x",), decided_slot=0))]
    # The shell is still fsyncing the first batch when the Accepted arrives and a new command comes.
    leader.receive(Accepted(sender=3, ballot=b, slot=1))
    leader.propose(b"y")
    second = leader.take_actions()
    assert leader.decided_slot == 1 and second.decided_slot == 1
    assert [m.decided_slot for _, m in second.send_early] == [0, 0]  # capped: slot 1 is not durable yet
    assert second.send_early[0][1] is second.send_early[1][1]  # one capped copy for both followers
    leader.note_durable(first.decided_slot)
    leader.note_durable(second.decided_slot)  # both batches durable now
    leader.tick()
    assert sent(leader.take_actions(), Decide) == [(2, Decide(sender=1, ballot=b, decided_slot=1)),
                                                   (3, Decide(sender=1, ballot=b, decided_slot=1))]
    leader.propose(b"z")
    third = leader.take_actions()
    assert [m.decided_slot for _, m in third.send_early] == [1, 1]


def test_without_early_accepts_every_message_waits_for_persist():
    """The default keeps the plain contract: nothing in send_early, Accepts in send after persist."""
    leader = make_leader()
    leader.propose(b"x")
    actions = leader.take_actions()
    assert actions.send_early == [] and len(sent(actions, Accept)) == 2


def test_thrifty_accepts_go_to_one_follower_at_once_and_to_the_other_on_the_next_tick():
    """Options.thrifty: a majority needs the leader and one follower, so only one follower gets a new
    Accept at once; the other gets the tick's slots together, each telling it of decisions no further
    than that slot (it learns them in order, without asking for a catch-up)."""
    b = Ballot(1, 1)
    leader = make_leader(thrifty=True, lazy_decide=True, heartbeat_ticks=100)
    leader.propose(b"x")
    actions = leader.take_actions()
    assert actions.send == [(2, Accept(sender=1, ballot=b, slot=1, value=(b"x",), decided_slot=0))]
    leader.receive(Accepted(sender=2, ballot=b, slot=1))
    leader.propose(b"y")
    actions = leader.take_actions()
    assert actions.apply == [(1, (b"x",))]
    assert actions.send == [(2, Accept(sender=1, ballot=b, slot=2, value=(b"y",), decided_slot=1))]
    leader.receive(Accepted(sender=2, ballot=b, slot=2))
    assert leader.take_actions().apply == [(2, (b"y",))]
    leader.tick()
    assert leader.take_actions().send == [
        (3, Accept(sender=1, ballot=b, slot=1, value=(b"x",), decided_slot=1)),
        (3, Accept(sender=1, ballot=b, slot=2, value=(b"y",), decided_slot=2)),
        (2, Decide(sender=1, ballot=b, decided_slot=2)),
        (3, Decide(sender=1, ballot=b, decided_slot=2)),
    ]
    leader.tick()
    assert leader.take_actions().send == []  # sent once


def test_thrifty_leader_turns_to_the_other_follower_when_the_fast_one_is_silent():
    """If the fast follower does not answer, the next tick's Accept reaches the other; its answer
    decides the slot (section 2.3: any majority) and makes it the one that hears first from now on."""
    b = Ballot(1, 1)
    leader = make_leader(thrifty=True, lazy_decide=True, heartbeat_ticks=100)
    leader.propose(b"x")
    assert [to for to, _ in leader.take_actions().send] == [2]
    leader.tick()  # node 2 is silent
    assert [(to, m.slot) for to, m in sent(leader.take_actions(), Accept)] == [(3, 1)]
    leader.receive(Accepted(sender=3, ballot=b, slot=1))
    assert leader.take_actions().apply == [(1, (b"x",))]
    assert leader.status()["counters"]["fast_follower_changed"] == 1
    leader.propose(b"y")
    assert [(to, m.slot) for to, m in leader.take_actions().send] == [(3, 2)]
    leader.tick()
    assert [(to, m.slot) for to, m in sent(leader.take_actions(), Accept)] == [(2, 2)]


def test_thrifty_held_back_accepts_leave_before_a_heartbeat_and_when_the_window_fills():
    """A Heartbeat tells a decided_slot, so the held-back Accepts go first; and no more than
    ``window`` slots wait for a tick."""
    b = Ballot(1, 1)
    leader = make_leader(thrifty=True, lazy_decide=True, heartbeat_ticks=100, window=3, batch_count_max=1)
    leader.propose(b"x")
    leader.take_actions()
    assert leader.read(7)
    actions = leader.take_actions()
    assert [(to, type(m).__name__) for to, m in actions.send] == [(3, "Accept"), (2, "Heartbeat"), (3, "Heartbeat")]
    for command in (b"1", b"2", b"3"):
        leader.propose(command)
    actions = leader.take_actions()  # slots 2-4 open; 1 is still undecided, so the window allows 2
    assert [(to, m.slot) for to, m in sent(actions, Accept)] == [(2, 2), (2, 3)]
    leader.receive(Accepted(sender=2, ballot=b, slot=1))
    actions = leader.take_actions()
    assert [(to, m.slot) for to, m in sent(actions, Accept)] == [(2, 4), (3, 2), (3, 3), (3, 4)]


def test_thrifty_must_be_a_bool():
    with pytest.raises(ValueError, match="thrifty"):
        Options(thrifty=1)


def test_lazy_decide_must_be_a_bool():
    with pytest.raises(ValueError, match="lazy_decide"):
        Options(lazy_decide=1)


def test_window_limits_slots_in_flight_and_the_rest_batch_later():
    """Pipelining is bounded: at most `window` undecided slots; the queue rides in the next slot."""
    leader = make_leader(window=2, batch_count_max=1)
    for i in range(4):
        leader.propose(bytes([i]))
    actions = leader.take_actions()
    assert [r.slot for r in actions.persist] == [1, 2]
    assert leader.status()["queued"] == 2
    leader.receive(Accepted(sender=2, ballot=Ballot(1, 1), slot=1))
    actions = leader.take_actions()
    assert [(m.slot, m.value, m.decided_slot) for to, m in sent(actions, Accept) if to == 2] == [(3, (b"\x02",), 1)]


def test_accept_is_persisted_before_accepted_is_sent():
    """Phase 2b: the acceptance is durable in the same Actions whose send carries Accepted."""
    replica = make(2)
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0))
    actions = replica.take_actions()
    assert actions.persist == [PromiseRecord(Ballot(1, 1)), AcceptRecord(1, Ballot(1, 1), A)]
    assert actions.send == [(1, Accepted(sender=2, ballot=Ballot(1, 1), slot=1))]
    assert replica.leader_id == 1


def test_duplicate_accept_is_acknowledged_again_without_a_second_record():
    """A lost Accepted is recovered by retransmission; the acceptor's state does not change twice."""
    replica = make(2)
    accept = Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0)
    replica.receive(accept)
    replica.take_actions()
    replica.receive(accept)
    actions = replica.take_actions()
    assert actions.persist == []
    assert actions.send == [(1, Accepted(sender=2, ballot=Ballot(1, 1), slot=1))]
    assert replica.status()["counters"]["duplicate"] == 1


def test_accept_below_promise_is_nacked():
    """P1a: an acceptor accepts a proposal only if it has not promised a higher number."""
    replica = make(2)
    replica.receive(Prepare(sender=3, ballot=Ballot(2, 3), first_slot=1))
    replica.take_actions()
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0))
    actions = replica.take_actions()
    assert actions.persist == []
    assert actions.send == [(1, Nack(sender=2, ballot=Ballot(1, 1), promised=Ballot(2, 3)))]


def test_leader_retransmits_undecided_accepts_on_heartbeat_only_to_missing_acceptors():
    """Messages may be lost (section 2.1's model); the leader resends phase 2a until a majority."""
    leader = make_leader(nodes=5, heartbeat_ticks=1)
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=2, ballot=Ballot(1, 1), slot=1))
    leader.take_actions()
    leader.tick()
    actions = leader.take_actions()
    assert sorted(to for to, m in sent(actions, Accept)) == [3, 4, 5]
    assert sorted(to for to, m in sent(actions, Heartbeat)) == [2, 3, 4, 5]


def test_leader_retransmits_only_accepts_open_for_a_whole_heartbeat_period():
    """A slot opened just before a heartbeat is most likely still on its way: resending it (hundreds
    of commands) would cost every receiver a decode and a log write for nothing."""
    leader = make_leader(nodes=3, heartbeat_ticks=3)
    leader.tick()
    leader.tick()
    leader.take_actions()
    leader.propose(b"x")
    leader.take_actions()
    leader.tick()  # the heartbeat tick, one tick after the slot opened
    actions = leader.take_actions()
    assert sent(actions, Accept) == [] and len(sent(actions, Heartbeat)) == 2
    for _ in range(3):  # the next heartbeat: open for a whole period now, and still undecided
        leader.tick()
    assert sorted(to for to, m in sent(leader.take_actions(), Accept)) == [2, 3]


def test_patient_resends_hold_an_accept_back_from_every_peer_until_an_election_timeout():
    """``Options.patient_resends`` (the server's: TCP loses messages only with a link): a slot still
    undecided after a heartbeat period goes again to a peer only an election timeout after the last send
    to it. A peer that answers (here its heartbeat acks) has the Accept queued or is writing it; so has a
    silent one whose link holds (a busy or paused node: its heartbeats wait in the same queue, behind the
    Accepts), and a link that dropped it makes the shell say so (the test below). Without the option,
    every missing acceptor gets it every period (the test above)."""
    leader = make_leader(nodes=5, heartbeat_ticks=2, election_timeout_ticks=6, patient_resends=True)
    leader.propose(b"x")
    assert sorted(to for to, m in sent(leader.take_actions(), Accept)) == [2, 3, 4, 5]
    leader.receive(Accepted(sender=2, ballot=Ballot(1, 1), slot=1))  # 2 accepted: 1 and 2 of 3 needed
    resent: list[list[int]] = []
    for _ in range(8):
        leader.tick()
        actions = leader.take_actions()
        for seq in {m.seq for _, m in sent(actions, Heartbeat)}:
            for peer in (2, 3):  # 2 and 3 answer; 4 and 5 are silent
                leader.receive(HeartbeatAck(sender=peer, ballot=Ballot(1, 1), seq=seq, decided_slot=0))
        resent.append(sorted(to for to, m in sent(actions, Accept)))
    assert leader.is_leader
    # Ticks 2, 4, 6 and 8 are heartbeat ticks. 3, 4 and 5 got the Accept when the slot opened (tick 0),
    # 3 answers and 4 and 5 do not: each gets it again at tick 6, an election timeout on, not at 8.
    assert resent == [[], [], [], [], [], [3, 4, 5], [], []], resent
    assert leader.status()["counters"]["resend_held_back"] == 9


def test_a_peer_the_shell_lost_messages_to_gets_the_next_resends_however_patient():
    """``note_messages_lost``: the shell's link to a peer reconnected (or dropped what it had no room for),
    so an Accept it was sent may be gone although the peer answers. The next resend round sends it every
    undecided Accept it has not accepted; the rounds after are patient again."""
    leader = make_leader(nodes=3, heartbeat_ticks=2, election_timeout_ticks=20, patient_resends=True)

    def heartbeat_round() -> list[tuple[int, int]]:
        resent = []
        for _ in range(2):
            leader.tick()
            actions = leader.take_actions()
            for seq in {m.seq for _, m in sent(actions, Heartbeat)}:
                for peer in (2, 3):
                    leader.receive(HeartbeatAck(sender=peer, ballot=Ballot(1, 1), seq=seq, decided_slot=0))
            resent += sorted((to, m.slot) for to, m in sent(actions, Accept))
        return resent

    assert heartbeat_round() == []  # (now both were heard from)
    leader.propose(b"x")
    leader.take_actions()
    assert heartbeat_round() == []  # both answer: held back
    leader.note_messages_lost(3)
    assert heartbeat_round() == [(3, 1)]  # (to, slot)
    assert heartbeat_round() == []
    # A slot opened just before a loss, too young for the next resends, goes at the ones after.
    leader.tick()  # (half a heartbeat period)
    leader.take_actions()
    leader.propose(b"y")
    leader.take_actions()
    leader.note_messages_lost(3)
    assert heartbeat_round() == [(3, 1)]  # slot 2 opened a tick before: too young yet
    assert heartbeat_round() == [(3, 2)]
    assert heartbeat_round() == []


def test_nack_with_higher_promise_demotes_leader_and_drops_queued_commands():
    """Section 2.2: a proposer that learns of a higher number should abandon its proposal."""
    leader = make_leader()
    leader.propose(b"q")
    assert leader.read(11)
    leader.receive(Nack(sender=2, ballot=Ballot(1, 1), promised=Ballot(4, 3)))
    actions = leader.take_actions()
    assert not leader.is_leader and leader.leader_id is None
    assert actions.dropped_proposals == [b"q"]
    assert actions.rejected_reads == [11]
    assert not leader.propose(b"r") and not leader.read(12)
    # The next election uses a ballot above the one the Nack revealed.
    actions = run_election_timeout(leader)
    assert actions.persist == [PromiseRecord(Ballot(5, 1))]


def test_nack_for_an_old_ballot_does_not_demote():
    """Only a refusal of our current ballot says anything about it."""
    leader = make_leader()
    leader.receive(Nack(sender=2, ballot=Ballot(0, 1), promised=Ballot(0, 2)))
    assert leader.is_leader


def test_higher_accept_demotes_leader_and_it_follows():
    """P1a from the leader's own acceptor side: a higher ballot supersedes ours."""
    leader = make_leader()
    leader.propose(b"q")
    leader.receive(Accept(sender=3, ballot=Ballot(2, 3), slot=1, value=A, decided_slot=0))
    actions = leader.take_actions()
    assert not leader.is_leader and leader.leader_id == 3
    assert actions.dropped_proposals == [b"q"]
    assert actions.send == [(3, Accepted(sender=1, ballot=Ballot(2, 3), slot=1))]


def test_leader_that_learns_its_proposal_lost_steps_down():
    """Section 2.2: a chosen value never changes, so a leader whose proposal lost must be stale."""
    leader = make_leader()
    leader.propose(b"mine")
    leader.take_actions()
    leader.receive(CatchupReply(sender=2, entries=(DecidedEntry(slot=1, value=A),), snapshot_slot=0))
    actions = leader.take_actions()
    assert not leader.is_leader
    assert actions.apply == [(1, A)]
    assert not [m for _, m in actions.send if isinstance(m, (Decide, Heartbeat, Accept))]


# ---------------------------------------------------------------- learning


def test_follower_learns_decided_slot_for_values_accepted_at_the_same_ballot():
    """Section 2.3: the leader informs learners; one ballot proposes one value per slot."""
    replica = make(2)
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0))
    replica.take_actions()
    replica.receive(Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=1, seq=3))
    actions = replica.take_actions()
    assert actions.persist == [DecideRecord(1, A)]
    assert actions.apply == [(1, A)]
    assert actions.send == [(1, HeartbeatAck(sender=2, ballot=Ballot(1, 1), seq=3))]


def test_a_value_accepted_after_its_slot_was_announced_decided_is_learned_at_once():
    """The leader announced slot 2 decided (the follower scanned past it, holding only slot 3); the
    Accept for slot 2 comes late (a resend): its one proposal at that ballot is the chosen value."""
    replica = make(2)
    b = Ballot(1, 1)
    replica.receive(Accept(sender=1, ballot=b, slot=1, value=A, decided_slot=0))
    replica.receive(Accept(sender=1, ballot=b, slot=3, value=A, decided_slot=2))  # slot 2 missed
    replica.take_actions()
    assert replica.status()["decided_slot"] == 1
    replica.receive(Accept(sender=1, ballot=b, slot=2, value=B, decided_slot=1))  # late, and a stale mark
    actions = replica.take_actions()
    assert DecideRecord(2, B) in actions.persist and actions.apply == [(2, B)]
    assert replica.status()["decided_slot"] == 2


def test_a_follower_far_behind_looks_at_each_accepted_slot_once_not_on_every_message():
    """QA (a member joining a busy cluster): the follower rescanned every slot it had accepted above its
    decided prefix on every Accept, Heartbeat and Decide, work growing with the gap, so its event loop
    stalled for seconds and it never caught up while writes went on. Now each announcement of a ballot
    looks only at the slots above what the last one covered."""

    class Counting(dict):
        looked = 0

        def __contains__(self, key):
            Counting.looked += 1
            return super().__contains__(key)

        def __iter__(self):
            for key in super().__iter__():
                Counting.looked += 1
                yield key

    replica = make(2)
    replica._accepted = Counting(replica._accepted)
    b = Ballot(1, 1)
    n = 3000
    for slot in range(1001, 1001 + n):  # slots 1-1000 missed: the node is far behind and catching up
        replica.receive(Accept(sender=1, ballot=b, slot=slot, value=A, decided_slot=slot - 1))
        replica.take_actions()
    assert replica.status()["decided_slot"] == 0
    assert Counting.looked < 10 * n, Counting.looked  # was about n * n / 2


def test_follower_does_not_decide_a_value_accepted_at_another_ballot_and_asks_for_it():
    """A value accepted at an older ballot may have lost; the learner must fetch the chosen one."""
    replica = make(2)
    replica.receive(Accept(sender=3, ballot=Ballot(1, 3), slot=1, value=A, decided_slot=0))
    replica.take_actions()
    replica.receive(Decide(sender=1, ballot=Ballot(2, 1), decided_slot=1))
    actions = replica.take_actions()
    assert actions.apply == []
    assert actions.send == [(1, CatchupRequest(sender=2, first_slot=1))]
    # Rate limited: asking again before a heartbeat period has passed sends nothing.
    replica.receive(Decide(sender=1, ballot=Ballot(2, 1), decided_slot=1))
    assert replica.take_actions().send == []


def test_catchup_request_is_answered_with_consecutive_decided_entries():
    """Any learner may relay chosen values (section 2.3: 'distinguished learners' relay to others)."""
    leader = make_leader(catchup_entries_max=2)
    for value in (A, B, C):
        leader.propose(value[0])
        leader.take_actions()
    for slot in (1, 2, 3):
        leader.receive(Accepted(sender=2, ballot=Ballot(1, 1), slot=slot))
    leader.take_actions()
    leader.receive(CatchupRequest(sender=3, first_slot=1))
    actions = leader.take_actions()
    assert actions.send == [(3, CatchupReply(sender=1, entries=(DecidedEntry(slot=1, value=A),
                                                                 DecidedEntry(slot=2, value=B)),
                                             snapshot_slot=0))]
    assert actions.snapshot_to == []


def test_catchup_reply_is_persisted_applied_and_followed_by_another_request_when_still_behind():
    """Learned values are durable before use; a lagging learner keeps asking until it has caught up."""
    replica = make(3)
    replica.receive(Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=3, seq=1))
    first = replica.take_actions()
    assert (1, CatchupRequest(sender=3, first_slot=1)) in first.send
    replica.receive(CatchupReply(sender=1, entries=(DecidedEntry(slot=1, value=A),
                                                   DecidedEntry(slot=2, value=B)), snapshot_slot=0))
    actions = replica.take_actions()
    assert actions.persist == [DecideRecord(1, A), DecideRecord(2, B)]
    assert actions.apply == [(1, A), (2, B)]
    assert actions.send == [(1, CatchupRequest(sender=3, first_slot=3))]


def test_compacted_node_answers_catchup_with_snapshot_to():
    """Slots below a snapshot are gone from the log; the requester must install the snapshot."""
    leader = make_leader()
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=2, ballot=Ballot(1, 1), slot=1))
    leader.take_actions()
    leader.compact(1)
    assert leader.snapshot_slot == 1
    assert leader.durable_state() == DurableState(promised=Ballot(1, 1), accepted={}, decided={}, snapshot_slot=1)
    leader.receive(CatchupRequest(sender=3, first_slot=1))
    actions = leader.take_actions()
    assert actions.snapshot_to == [3]
    assert actions.send == [(3, CatchupReply(sender=1, entries=(), snapshot_slot=1))]


def test_install_snapshot_forgets_covered_slots_and_applies_decided_slots_after_it():
    """After installing a snapshot, the applied prefix jumps to it and decided slots after it follow."""
    replica = make(3)
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0))
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=4, value=C, decided_slot=0))
    replica.receive(Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=4, seq=1))
    actions = replica.take_actions()
    assert actions.apply == [(1, A)]
    replica.install_snapshot(3)
    actions = replica.take_actions()
    assert actions.apply == [(4, C)]
    assert (replica.snapshot_slot, replica.decided_slot, replica.applied_slot) == (3, 4, 4)
    assert replica.durable_state().accepted == {4: (Ballot(1, 1), C)}


def test_snapshot_installed_mid_batch_does_not_hand_out_slots_it_covers():
    """Section 3 (replicas execute the same commands in the same order): a shell that installs a
    snapshot between two inputs of one batch, before take_actions() (the kvstore driver does), must
    not get slots at or below the snapshot in `apply`: they are in the snapshot already, and applying
    them again would replay old commands on the newer state. Found by tests/sim seed 137, 5 nodes,
    compact_often mode (the batch a paused node handles at once)."""
    replica = make(3)
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=1, value=A, decided_slot=0))
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=2, value=B, decided_slot=0))
    replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=6, value=C, decided_slot=0))
    replica.take_actions()
    replica.receive(Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=2, seq=1))  # decides 1, 2
    replica.install_snapshot(5)  # same batch: no take_actions() in between
    replica.receive(Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=6, seq=2))  # decides 6
    actions = replica.take_actions()
    assert actions.apply == [(6, C)]
    assert (replica.snapshot_slot, replica.decided_slot, replica.applied_slot) == (5, 6, 6)


def test_candidate_behind_a_promisers_snapshot_fetches_it_and_does_not_lead():
    """P2c cannot be checked for slots an acceptor compacted; the candidate catches up first."""
    replica = make(1)
    run_election_timeout(replica)
    replica.receive(promise(2, Ballot(1, 1), snapshot_slot=5))
    actions = replica.take_actions()
    assert not replica.is_leader
    assert actions.send == [(2, CatchupRequest(sender=1, first_slot=1))]
    replica.receive(promise(3, Ballot(1, 1)))
    assert not replica.is_leader


def test_recovered_replica_applies_its_decided_log_and_does_not_lead():
    """Durable state survives a crash (section 2.5: acceptors remember via stable storage)."""
    records = [PromiseRecord(Ballot(2, 1)), AcceptRecord(1, Ballot(2, 1), A), DecideRecord(1, A),
               AcceptRecord(2, Ballot(2, 1), B)]
    replica = make(1, state=DurableState.replay(records))
    assert not replica.is_leader and replica.ballot == Ballot(2, 1)
    actions = replica.take_actions()
    assert actions.apply == [(1, A)]
    actions = run_election_timeout(replica)
    # Its next ballot is above the one it used before the crash.
    assert actions.persist == [PromiseRecord(Ballot(3, 1))]
    assert actions.send[0] == (2, Prepare(sender=1, ballot=Ballot(3, 1), first_slot=2))


# ---------------------------------------------------------------- reads


def test_read_index_is_served_after_a_majority_acks_a_round_begun_after_the_read():
    """Linearizable reads: the leader confirms it still holds a majority's promise (read index)."""
    leader = make_leader()
    leader.propose(b"x")
    leader.take_actions()
    leader.receive(Accepted(sender=2, ballot=Ballot(1, 1), slot=1))
    leader.take_actions()
    # An ack of the election's round (seq 1) arrives after the read: it must not confirm it.
    assert leader.read(7) and leader.read(8)
    actions = leader.take_actions()
    heartbeats = sent(actions, Heartbeat)
    assert heartbeats == [(2, Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=1, seq=2)),
                          (3, Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=1, seq=2))]
    leader.receive(HeartbeatAck(sender=2, ballot=Ballot(1, 1), seq=1))
    assert leader.take_actions().reads == []
    leader.receive(HeartbeatAck(sender=3, ballot=Ballot(1, 1), seq=2))
    assert leader.take_actions().reads == [(7, 1), (8, 1)]


def test_acceptor_with_higher_promise_nacks_heartbeat_instead_of_acking():
    """An ack certifies the acceptor's promise equals the leader's ballot; otherwise it refuses."""
    replica = make(2)
    replica.receive(Prepare(sender=3, ballot=Ballot(2, 3), first_slot=1))
    replica.take_actions()
    replica.receive(Heartbeat(sender=1, ballot=Ballot(1, 1), decided_slot=0, seq=4))
    actions = replica.take_actions()
    assert actions.send == [(1, Nack(sender=2, ballot=Ballot(1, 1), promised=Ballot(2, 3)))]


def test_pending_read_is_rejected_when_leader_is_demoted_by_a_heartbeat_nack():
    """A leader that cannot confirm its ballot must not answer: the read goes back to the client."""
    leader = make_leader()
    leader.read(9)
    leader.take_actions()
    leader.receive(Nack(sender=3, ballot=Ballot(1, 1), promised=Ballot(2, 2)))
    actions = leader.take_actions()
    assert actions.reads == [] and actions.rejected_reads == [9]


def test_read_waits_until_the_read_index_is_applied():
    """The read index covers every slot decided before the read; the answer must reflect them."""
    leader = make(1)
    run_election_timeout(leader)
    leader.receive(promise(2, Ballot(1, 1), accepted=[AcceptedEntry(slot=1, ballot=Ballot(0, 2), value=A)]))
    leader.take_actions()
    leader.read(5)
    leader.receive(HeartbeatAck(sender=2, ballot=Ballot(1, 1), seq=2))
    assert leader.take_actions().reads == []  # confirmed, but slot 1 is not decided yet
    leader.receive(Accepted(sender=3, ballot=Ballot(1, 1), slot=1))
    actions = leader.take_actions()
    assert actions.apply == [(1, A)] and actions.reads == [(5, 1)]


def test_a_leader_cut_off_from_its_majority_keeps_a_bounded_number_of_heartbeat_rounds():
    """Memory stays bounded during a long partition: a leader that hears no HeartbeatAck keeps the
    ``ROUNDS_UNCONFIRMED_MAX`` newest rounds and the round a waiting read began in, not one round per
    heartbeat. A read is still served only by a confirmed round begun after it arrived: a late ack of a
    forgotten older round confirms nothing, an ack of a newer round serves it. (With
    ``Options.check_quorum``, the default, such a leader steps down after an election timeout; the
    bound matters without it.)"""
    leader = make_leader(check_quorum=False)
    for _ in range(1000):
        leader.tick()
        leader.take_actions()
    assert len(leader._heartbeat_acks) == ROUNDS_UNCONFIRMED_MAX
    before_read = leader._heartbeat_seq
    assert leader.read(1)
    leader.take_actions()
    read_seq = leader._heartbeat_seq
    for _ in range(1000):
        leader.tick()
        leader.take_actions()
    assert len(leader._heartbeat_acks) == ROUNDS_UNCONFIRMED_MAX + 1  # the newest and the read's
    assert read_seq in leader._heartbeat_acks and before_read not in leader._heartbeat_acks
    leader.receive(HeartbeatAck(sender=2, ballot=Ballot(1, 1), seq=before_read))  # forgotten, began before
    assert leader.take_actions().reads == []
    leader.receive(HeartbeatAck(sender=3, ballot=Ballot(1, 1), seq=leader._heartbeat_seq))
    assert leader.take_actions().reads == [(1, 0)]
    assert leader._heartbeat_acks == {}


def test_reads_waiting_while_cut_off_keep_their_rounds_and_a_later_confirmed_round_serves_them():
    """Reads queue up while the leader is cut off: the rounds they began in stay (each may be confirmed
    first), and one majority ack of the newest round serves them all, since it began after each.
    (Without ``Options.check_quorum``, which would step the leader down after an election timeout.)"""
    leader = make_leader(check_quorum=False)
    for read_id in range(1, 11):
        leader.read(read_id)
        leader.take_actions()
        for _ in range(leader.options.heartbeat_ticks):
            leader.tick()
        leader.take_actions()
    # The ten reads' rounds (2, 4, .., 20) and the newest others (19, 21).
    assert sorted(leader._heartbeat_acks) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 20, 21]
    first_read_seq = min(seq for _read_id, _index, seq in leader._pending_reads)
    leader.receive(HeartbeatAck(sender=2, ballot=Ballot(1, 1), seq=first_read_seq))
    assert leader.take_actions().reads == [(1, 0)]  # that round began after read 1 only
    leader.receive(HeartbeatAck(sender=2, ballot=Ballot(1, 1), seq=leader._heartbeat_seq))
    assert leader.take_actions().reads == [(read_id, 0) for read_id in range(2, 11)]


# ---------------------------------------------------------------- cluster sizes and bad input


def test_one_node_cluster_elects_itself_and_decides_alone():
    """A majority of one is one: the node's own durable promise and acceptance suffice."""
    replica = make(1, nodes=1)
    actions = run_election_timeout(replica)
    assert replica.is_leader and actions.send == []
    replica.propose(b"solo")
    actions = replica.take_actions()
    assert actions.persist == [AcceptRecord(1, Ballot(1, 1), (b"solo",)), DecideRecord(1, (b"solo",))]
    assert actions.apply == [(1, (b"solo",))]
    replica.read(1)
    assert replica.take_actions().reads == [(1, 1)]


def test_five_node_cluster_needs_three_promises_and_three_acceptances():
    """Majorities of five are three (section 2.1), counting the leader itself."""
    replica = make(1, nodes=5)
    run_election_timeout(replica)
    replica.receive(promise(2, Ballot(1, 1)))
    assert not replica.is_leader
    replica.receive(promise(4, Ballot(1, 1)))
    assert replica.is_leader
    replica.propose(b"x")
    replica.take_actions()
    replica.receive(Accepted(sender=5, ballot=Ballot(1, 1), slot=1))
    assert replica.take_actions().apply == []
    replica.receive(Accepted(sender=5, ballot=Ballot(1, 1), slot=1))  # a duplicate counts once
    assert replica.take_actions().apply == []
    replica.receive(Accepted(sender=3, ballot=Ballot(1, 1), slot=1))
    assert replica.take_actions().apply == [(1, (b"x",))]


@pytest.mark.parametrize("message", [
    Accept(sender=9, ballot=Ballot(1, 9), slot=1, value=A, decided_slot=0),
    Accept(sender=2, ballot=Ballot(1, 3), slot=1, value=A, decided_slot=0),
    # built by hand with the wrong types (kvstore.wire never decodes these; an embedding program may):
    # counted, never raised (QA: a Prepare whose ballot was None raised AttributeError, and an Accept
    # whose value was a str was persisted and applied as it was)
    Prepare(sender=2, ballot=None, first_slot=1),  # type: ignore[arg-type]
    Prepare(sender=2, ballot=(5, 2), first_slot=1),  # type: ignore[arg-type]
    Heartbeat(sender=2, ballot="b", decided_slot=0, seq=1),  # type: ignore[arg-type]
    Accept(sender=2, ballot=Ballot(1, 2), slot=1, value="notatuple", decided_slot=0),  # type: ignore[arg-type]
    # a Ballot of other things than ints (library QA: raised TypeError from the comparison)
    Prepare(sender=2, ballot=Ballot("x", 2), first_slot=1),  # type: ignore[arg-type]
    Accept(sender=2, ballot=Ballot(1.5, 2), slot=1, value=A, decided_slot=0),  # type: ignore[arg-type]
    Heartbeat(sender=2, ballot=Ballot(1, "2"), decided_slot=0, seq=1),  # type: ignore[arg-type]
], ids=lambda m: f"{type(m).__name__}-{type(m.ballot).__name__}-{type(getattr(m, 'value', None)).__name__}-"
                 f"{type(getattr(m.ballot, 'number', None)).__name__}")
def test_messages_from_unknown_or_mismatched_senders_are_counted_and_dropped(message):
    """Bad input is normal: it changes nothing and sends nothing."""
    replica = make(1)
    replica.receive(message)
    assert not replica.take_actions()
    assert sum(replica.status()["counters"].values()) == 1


@pytest.mark.parametrize("message", [
    Prepare(sender=2, ballot=Ballot(7, 3), first_slot=1),
    Accept(sender=2, ballot=Ballot(7, 3), slot=1, value=A, decided_slot=0),
    Heartbeat(sender=2, ballot=Ballot(7, 3), decided_slot=0, seq=1),
    Decide(sender=2, ballot=Ballot(7, 3), decided_slot=0),
    Campaign(sender=2, ballot=Ballot(7, 3), decided_slot=0),
    Promise(sender=2, ballot=Ballot(7, 3), first_slot=1, accepted=(), decided=(), snapshot_slot=0),
    Accepted(sender=2, ballot=Ballot(7, 3), slot=1),
    HeartbeatAck(sender=2, ballot=Ballot(7, 3), seq=1),
    Nack(sender=2, ballot=Ballot(7, 3), promised=Ballot(2, 2)),
], ids=lambda m: type(m).__name__)
def test_a_malformed_ballot_does_not_raise_the_next_ballot_a_candidate_picks(message):
    """Section 2.5: a ballot is its owner's alone, so a message whose ballot names another node than
    the one that may speak for it (its sender, or us for a reply) is dropped before anything is learned
    from it: the next election uses the ballot it would have used without that message. A Nack's
    ``promised`` is the acceptor's own promise and does count (it names the ballot the acceptor saw)."""
    replica = make(1)
    replica.receive(message)
    replica.take_actions()
    actions = run_election_timeout(replica)
    expected = Ballot(3, 1) if isinstance(message, Nack) else Ballot(1, 1)
    assert actions.persist == [PromiseRecord(expected)]


@pytest.mark.parametrize("command", ["x", 7, None, [b"x"]], ids=["str", "int", "None", "list"])
def test_propose_refuses_a_command_that_is_not_bytes_with_type_error(command):
    """The caller's error, reported as such (library QA: an ``AssertionError``, and under ``python -O``
    a ``TypeError`` from deep inside ``paxos.membership``)."""
    with pytest.raises(TypeError, match="a command is opaque bytes, not"):
        make_leader().propose(command)


def test_status_reports_plain_values():
    leader = make_leader()
    status = leader.status()
    assert status["node_id"] == 1 and status["is_leader"] and status["leader_id"] == 1
    assert status["ballot"] == [1, 1]
    assert (status["decided_slot"], status["applied_slot"], status["snapshot_slot"]) == (0, 0, 0)


def test_invalid_configuration_and_options_are_refused():
    with pytest.raises(ValueError):
        Config(node_ids=(1, 1))
    with pytest.raises(ValueError):
        Config(node_ids=(0, 1))
    with pytest.raises(ValueError):
        Options(window=0)


def test_candidate_that_compacted_during_its_election_does_not_reopen_compacted_slots():
    """Regression (sim seed 3/44): decided slots learned from a promise and then compacted are not
    re-proposed; the new leader's first slot comes after its snapshot (section 3: one value per slot)."""
    replica = make(1)
    run_election_timeout(replica)
    replica.receive(promise(2, Ballot(1, 1), decided=[DecidedEntry(slot=1, value=A), DecidedEntry(slot=2, value=B)],
                            accepted=[AcceptedEntry(slot=3, ballot=Ballot(0, 2), value=C)]))
    assert replica.is_leader
    replica.take_actions()
    replica.compact(2)  # fine: both slots are applied
    replica.propose(b"new")
    actions = replica.take_actions()
    assert [r.slot for r in actions.persist] == [4]

    # The same story with the compaction before the majority arrives.
    replica = make(1, nodes=5)
    run_election_timeout(replica)
    replica.receive(promise(2, Ballot(1, 1), decided=[DecidedEntry(slot=1, value=A), DecidedEntry(slot=2, value=B)]))
    replica.take_actions()
    replica.compact(2)
    replica.receive(promise(3, Ballot(1, 1)))
    assert replica.is_leader
    actions = replica.take_actions()
    assert not sent(actions, Accept)  # nothing left to re-propose above the snapshot
    replica.propose(b"new")
    assert [r.slot for r in replica.take_actions().persist] == [3]


def test_batches_are_bounded_in_bytes_as_well_as_count():
    """A leader packs queued commands into slots of at most batch_bytes_max bytes (one big command
    still gets a slot of its own), so no Accept grows without bound."""
    import random as _random

    from paxos.replica import Config, Options, Replica

    r = Replica(1, Config(node_ids=(1,)), rng=_random.Random(1),
                options=Options(batch_bytes_max=10, batch_count_max=100, window=100))
    for _ in range(100):
        r.tick()
        if r.is_leader:
            break
    assert r.is_leader
    r.take_actions()
    for command in [b"aaaa", b"bbbb", b"cccc", b"x" * 25, b"dd"]:
        assert r.propose(command)
    applied = [batch for _, batch in r.take_actions().apply if batch]
    assert applied == [(b"aaaa", b"bbbb"), (b"cccc",), (b"x" * 25,), (b"dd",)]


def test_an_accepted_for_a_decided_slot_is_counted_as_late_not_duplicate():
    """A leader that hears a vote for a slot it has decided counts it as late_accepted (with thrifty
    Accepts the slower follower's votes all arrive so); ``duplicate`` stays for repeated messages."""
    leader = make_leader()
    leader.propose(b"x")
    actions = leader.take_actions()
    accept = next(m for _, m in actions.send if isinstance(m, Accept))
    leader.receive(Accepted(sender=2, ballot=accept.ballot, slot=accept.slot))
    leader.take_actions()
    assert leader.decided_slot == accept.slot
    leader.receive(Accepted(sender=3, ballot=accept.ballot, slot=accept.slot))
    counters = leader.status()["counters"]
    assert counters.get("late_accepted") == 1
    assert counters.get("duplicate", 0) == 0


def test_a_sole_voter_campaigns_at_its_first_tick_and_others_wait_an_election_timeout():
    """A cluster of one (a restarted single node too) has no leader to hear from and no rival: it
    campaigns at once instead of after ``election_timeout_ticks`` (0.3-0.6 s of a restart with the
    server's defaults). In a cluster of three, a node still waits at least an election timeout."""
    options = Options(election_timeout_ticks=10)
    alone = Replica(1, Config(node_ids=(1,)), rng=random.Random(1), options=options)
    alone.tick()
    alone.take_actions()
    assert alone.is_leader
    for node_id in (1, 2, 3):
        member = Replica(node_id, Config(node_ids=(1, 2, 3)), rng=random.Random(node_id), options=options)
        for _ in range(9):
            member.tick()
        assert member.status()["counters"].get("elections", 0) == 0
    learner_pair = Replica(2, Config(node_ids=(1,), learners=(2,)), rng=random.Random(2), options=options)
    learner_pair.tick()
    assert not learner_pair.is_leader and learner_pair.status()["counters"].get("elections", 0) == 0


def test_an_acceptor_far_ahead_answers_a_prepare_with_catch_up_not_a_promise():
    """QA (a node stopped for a minute under 64 KiB writes, then campaigning): every acceptor built a
    Promise of every decided value above the candidate's first_slot, 650 MB, again for each retried
    Prepare, until both healthy nodes ran out of memory. An acceptor that knows more than
    ``catchup_entries_max`` slots decided above it now promises nothing and sends the first of them."""
    acceptor = make(3, catchup_entries_max=2)
    for slot in range(1, 6):  # the leader's Accepts announce slots 1-4 decided
        acceptor.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=slot, value=A, decided_slot=slot - 1))
    acceptor.take_actions()
    assert acceptor.decided_slot == 4
    acceptor.receive(Prepare(sender=2, ballot=Ballot(2, 2), first_slot=1))
    actions = acceptor.take_actions()
    assert not any(isinstance(record, PromiseRecord) for record in actions.persist)
    assert sent(actions, Promise) == []
    assert sent(actions, CatchupReply) == [(2, CatchupReply(sender=3, entries=(
        DecidedEntry(slot=1, value=A), DecidedEntry(slot=2, value=A)), snapshot_slot=0))]
    assert acceptor.status()["counters"]["prepare_far_behind"] == 1
    # a candidate within reach still gets its promise, with what it lacks
    acceptor.receive(Prepare(sender=2, ballot=Ballot(3, 2), first_slot=3))
    [(_, answer)] = sent(acceptor.take_actions(), Promise)
    assert [e.slot for e in answer.decided] == [3, 4]


def test_catch_up_answers_are_bounded_by_bytes_too():
    """Soak QA: with slots of 1 MiB (batch_bytes_max), 256 entries made catch-up answers of 256 MB, rebuilt
    for every request and over the shell's frame limit: a follower back from a pause far behind took the
    cluster down. An answer now stops once its values reach ``catchup_bytes_max`` (one entry at least, however
    large); the asker takes such an answer as full and asks again at once; and a candidate whose Promise
    would carry that much gets catch-up instead (rule 39, by bytes)."""
    big = (b"v" * 1000,)
    acceptor = make(3, catchup_bytes_max=2500)
    for slot in range(1, 8):  # slots 1-6 decided
        acceptor.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=slot, value=big, decided_slot=slot - 1))
    acceptor.take_actions()
    acceptor.receive(CatchupRequest(sender=2, first_slot=1))
    [(_, answer)] = sent(acceptor.take_actions(), CatchupReply)
    assert [e.slot for e in answer.entries] == [1, 2, 3]  # 3,000 bytes: past 2,500 with the third
    one = make(3, catchup_bytes_max=10)
    for slot in range(1, 3):
        one.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=slot, value=big, decided_slot=slot - 1))
    one.take_actions()
    one.receive(CatchupRequest(sender=2, first_slot=1))
    assert [[e.slot for e in m.entries] for _, m in sent(one.take_actions(), CatchupReply)] == [[1]]
    # the asker takes an answer that reached the bytes as full: it asks again at once
    asker = make(2, catchup_bytes_max=2500)
    asker.receive(answer)
    assert sent(asker.take_actions(), CatchupRequest) == [(3, CatchupRequest(sender=2, first_slot=4))]
    # rule 39 by bytes: 2 slots (2,000 bytes) above first_slot get a promise, 3 (3,000 bytes) catch-up
    acceptor.receive(Prepare(sender=2, ballot=Ballot(2, 2), first_slot=5))
    assert [(m.first_slot, [e.slot for e in m.decided]) for _, m in sent(acceptor.take_actions(), Promise)] == [
        (5, [5, 6])]
    acceptor.receive(Prepare(sender=2, ballot=Ballot(3, 2), first_slot=4))
    actions = acceptor.take_actions()
    assert sent(actions, Promise) == [] and [e.slot for _, m in sent(actions, CatchupReply) for e in m.entries] == [
        4, 5, 6]


def test_a_candidate_answered_with_catch_up_gives_up_its_election_and_catches_up_first():
    candidate = make(2, catchup_entries_max=2)
    run_election_timeout(candidate)
    entries = (DecidedEntry(slot=1, value=A), DecidedEntry(slot=2, value=B))
    candidate.receive(CatchupReply(sender=3, entries=entries, snapshot_slot=0))
    actions = candidate.take_actions()
    assert candidate.status()["counters"]["election_behind"] == 1
    assert sent(actions, CatchupRequest) == [(3, CatchupRequest(sender=2, first_slot=3))]  # a full answer: more
    candidate.receive(promise(1, candidate.ballot))  # a majority now would not make it lead
    assert not candidate.is_leader
    actions = run_election_timeout_again(candidate)
    assert [m.first_slot for _, m in sent(actions, Prepare)] == [3, 3]


def run_election_timeout_again(replica: Replica) -> Actions:
    """Tick a candidate until it starts a new election (a new ballot); return the actions of that tick."""
    before = replica.ballot
    for _ in range(2 * replica.options.election_timeout_ticks):
        replica.tick()
        if replica.ballot != before:
            return replica.take_actions()
    raise AssertionError("no new election")


def test_a_handover_that_reaches_its_target_after_it_gave_up_on_that_leader_is_stale():
    """QA (network namespaces): the target of a handover was cut off right after it; the others elected a
    leader at the next round, and when the link came back the Campaign, stuck in TCP, made the target
    campaign at that round with a higher node id and depose it. A target whose election timer ran out
    under the handing-over leader's ballot (it asked for a pre-vote) ignores a Campaign of that ballot;
    one that hears the leader again takes it."""
    b = Ballot(3, 2)
    target = make(3, pre_vote=True)
    target.receive(Heartbeat(sender=2, ballot=b, decided_slot=0, seq=1))
    target.take_actions()
    for _ in range(3 * target.options.election_timeout_ticks):  # cut off: its timer runs out
        target.tick()
        if target.status()["counters"].get("pre_votes"):
            break
    target.take_actions()
    target.receive(Campaign(sender=2, ballot=b, decided_slot=0))
    actions = target.take_actions()
    assert not any(isinstance(m, Prepare) for _, m in actions.send), actions.send
    assert target.status()["counters"]["stale_campaign"] == 1
    target.receive(Heartbeat(sender=2, ballot=b, decided_slot=0, seq=2))  # the leader is heard again
    target.take_actions()
    target.receive(Campaign(sender=2, ballot=b, decided_slot=0))
    assert any(isinstance(m, Prepare) for _, m in target.take_actions().send)
    assert target.status()["counters"]["campaigned_on_transfer"] == 1
