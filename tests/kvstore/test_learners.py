"""``kvstore.learners``: the apply queue and the lazy-learner policy, without a node.

How: a ``Learner`` for node 3 of a 3-node cluster (the standby of leader 1 is node 2) with a real
``StateMachine`` and ``Waiters``, fake connections that record their answers, and times passed in by
hand. Decided slots are handed out as the core would (``Actions.apply``: ``(slot, commands)``).
Checks:

* ``standby_of`` is the lowest id but the leader's;
* an eager learner applies what is handed out and answers the waiting writers; a backlog is applied
  ``CATCH_UP_COMMANDS`` at a time, in whole slots;
* the policy: only a follower that is not the standby, under sustained writes (a slot handed out
  within ``LAZY_IDLE_SECONDS``), with a small state, turns lazy; it turns eager after a local read, when
  slots stop coming, when the backlog passes two intervals, when it leads or is fenced; never with
  ``lazy_learners`` off or fewer than 3 members; turning lazy fails waiting writes with ``not_leader``;
* a lazy learner leaves the queue alone; adoption skips the slots the snapshot covers only while lazy
  and behind it; an install replaces the state and empties the queue;
* a backlog of more than one step postpones elections;
* a snapshot is due early once the node is quiet (``idle_snapshot_due``): only after the quiet time,
  with nothing queued, and past both floors (the commands option and an eighth of the interval).
"""
from __future__ import annotations

import pytest

from kvstore import commands, wire
from kvstore.events import Proposal
from kvstore.learners import (
    CATCH_UP_BYTES,
    CATCH_UP_COMMANDS,
    LAZY_IDLE_SECONDS,
    LAZY_SNAPSHOT_BYTES_MAX,
    LOCAL_READ_EAGER_SECONDS,
    Learner,
    standby_of,
)
from kvstore.statemachine import StateMachine
from kvstore.waiters import Waiters

from .test_waiters import FakeConn

CID = b"client-1"
MEMBERS = (1, 2, 3)
LEADER = 1
INTERVAL = 100  # snapshot_every_commands


def _learner(node_id: int = 3, members=MEMBERS, *, lazy_learners: bool = True, sm=None, **idle) -> Learner:
    counters: dict = {k: 0 for k in ("writes_answered", "write_latency_us", "catch_up_steps", "lazy_starts",
                                     "lazy_ends", "commands_not_applied", "snapshots_adopted", "writes_expired")}
    waiters = Waiters(5.0, lambda: "n1:7001", counters)
    return Learner(node_id, members, snapshot_every_commands=INTERVAL, lazy_learners=lazy_learners,
                   sm=sm or StateMachine(), applied_slot=0, waiters=waiters, send_replies=lambda: None,
                   counters=counters, clock=lambda: 0.0, **idle)


_next_request_id = iter(range(1, 10**9))


def _slot(slot: int, count: int = 1) -> tuple[int, tuple[bytes, ...]]:
    return slot, tuple(commands.encode_put(CID, next(_next_request_id), 0, f"k{slot}-{i}", "v") for i in range(count))


def _sustained(learner: Learner, now: float, first_slot: int = 1, slots: int = 1, count: int = 1) -> int:
    """Hand out ``slots`` slots at ``now`` and let the policy look; returns the next slot number."""
    learner.hand_out([_slot(first_slot + i, count) for i in range(slots)], now)
    learner.update(now, LEADER, is_leader=False, fenced=False)
    return first_slot + slots


def test_the_standby_is_the_lowest_id_but_the_leaders():
    assert standby_of((1, 2, 3), 1) == 2
    assert standby_of((1, 2, 3), 2) == 1
    assert standby_of((3, 5, 4), 3) == 4
    assert standby_of((1,), 1) is None


def test_an_eager_learner_applies_what_is_handed_out_and_answers_the_writer():
    learner = _learner()
    conn = FakeConn()
    command, decoded = commands.encode_write(wire.PutRequest(id=9, key="a", value="1", client_id=CID,
                                                             request_id=10**6, ack_below=0))
    learner.waiters.add_write(Proposal(command, decoded, (CID, 10**6), conn, 9), now=0.0)
    learner.hand_out([(1, (command,))], now=0.0)
    assert learner.applied_slot == 1 and learner.sm.get("a").value == "1"
    assert [(a.id, a.result["rev"]) for a in conn.answers] == [(9, 1)]
    assert learner.queued_commands == 0 and learner.applied_since_snapshot == 1


def test_a_backlog_is_applied_catch_up_commands_at_a_time_in_whole_slots():
    learner = _learner()
    learner.lazy = True  # let a backlog build up
    per_slot = 1000
    slots = CATCH_UP_COMMANDS // per_slot + 3
    learner.hand_out([_slot(s, per_slot) for s in range(1, slots + 1)], now=0.0)
    assert learner.applied_slot == 0 and learner.queued_commands == slots * per_slot
    learner.lazy = False
    learner.catch_up()
    # whole slots, until at least CATCH_UP_COMMANDS were applied
    first_step = -(-CATCH_UP_COMMANDS // per_slot)
    assert learner.applied_slot == first_step and len(learner.sm) == first_step * per_slot
    while learner.behind:
        learner.catch_up()
    assert learner.applied_slot == slots and len(learner.sm) == slots * per_slot
    assert learner.counters["catch_up_steps"] == 2


def test_a_backlog_of_large_values_is_applied_catch_up_bytes_at_a_time():
    """Large values: a step of 4,096 commands of 1 MiB was 4 GiB applied (hashed, copied) at once, 0.6 s
    in which the node read no heartbeat (leader changes under steady 1 MiB puts, bench/big_values.py).
    A step stops once it applied ``CATCH_UP_BYTES`` of commands, in whole slots, one slot at least."""
    learner = _learner()
    learner.lazy = True
    big = "x" * (CATCH_UP_BYTES // 4)
    backlog = [(s, (commands.encode_put(CID, next(_next_request_id), 0, f"k{s}", big),)) for s in range(1, 13)]
    learner.hand_out(backlog, now=0.0)
    learner.lazy = False
    learner.catch_up()
    assert learner.applied_slot == 4  # four commands of a quarter of CATCH_UP_BYTES each (and a bit)
    steps = 1
    while learner.behind:
        learner.catch_up()
        steps += 1
    assert steps == 3 and learner.applied_slot == 12 and len(learner.sm) == 12
    huge = [(13, tuple(commands.encode_put(CID, next(_next_request_id), 0, f"k13-{i}", big) for i in range(6)))]
    learner.lazy = True
    learner.hand_out(huge, now=0.0)
    learner.lazy = False
    learner.catch_up()  # one slot larger than a step is still applied whole
    assert learner.applied_slot == 13 and not learner.behind and len(learner.sm) == 18


def test_a_lazy_learner_queues_each_slot_packed_and_applies_it_as_an_eager_one_would():
    """While lazy, a slot waits as one packed bytes object (resources QA: a lazy learner's queue of small
    objects kept its RSS at 113 MiB after load, 43 MiB after a restart on the same data); applied later
    it gives the state an eager learner has."""
    slots = [_slot(s, 50) for s in range(1, 21)]
    eager = _learner()
    eager.hand_out(slots, now=0.0)
    lazy = _learner()
    lazy.lazy = True
    lazy.hand_out(slots, now=0.0)
    assert all(type(batch) is bytes and count == 50 for _, batch, count in lazy.queue)
    assert lazy.queued_commands == 1000 and lazy.applied_slot == 0
    lazy.lazy = False
    while lazy.behind:
        lazy.catch_up()
    assert lazy.applied_slot == eager.applied_slot == 20 and lazy.queued_commands == 0
    assert lazy.sm.state_hash() == eager.sm.state_hash() and len(lazy.sm) == 1000


def test_a_follower_that_is_not_the_standby_turns_lazy_under_sustained_writes_and_leaves_the_queue():
    learner = _learner(node_id=3)
    _sustained(learner, now=1.0)
    assert learner.lazy and learner.counters["lazy_starts"] == 1
    applied = len(learner.sm)
    _sustained(learner, now=1.1, first_slot=2, slots=5)
    assert len(learner.sm) == applied and learner.queued_commands == 5 and not learner.behind


@pytest.mark.parametrize("node_id, is_leader", [(2, False), (1, True)], ids=["standby", "leader"])
def test_the_standby_and_the_leader_are_never_lazy(node_id, is_leader):
    learner = _learner(node_id=node_id)
    learner.hand_out([_slot(1)], now=1.0)
    learner.update(1.0, LEADER, is_leader=is_leader, fenced=False)
    assert not learner.lazy


@pytest.mark.parametrize("case", ["eager learners", "two members", "no leader known", "fenced"])
def test_no_lazy_learner_without_the_option_a_third_member_a_leader_or_a_healthy_disk(case):
    # (With two members the one follower is the standby as well, so that case holds twice over.)
    learner = _learner(lazy_learners=case != "eager learners", members=(1, 3) if case == "two members" else MEMBERS)
    learner.hand_out([_slot(1)], now=1.0)
    learner.update(1.0, None if case == "no leader known" else LEADER, is_leader=False, fenced=case == "fenced")
    assert not learner.lazy


def test_a_lazy_learner_turns_eager_when_no_slot_reaches_it_for_a_while():
    learner = _learner()
    _sustained(learner, now=1.0, first_slot=_sustained(learner, now=1.0))  # the second slot waits
    assert learner.lazy and learner.queue
    learner.update(1.0 + LAZY_IDLE_SECONDS / 2, LEADER, is_leader=False, fenced=False)
    assert learner.lazy
    learner.update(1.0 + LAZY_IDLE_SECONDS * 1.01, LEADER, is_leader=False, fenced=False)
    assert not learner.lazy and learner.behind and learner.counters["lazy_ends"] == 1


def test_a_local_read_keeps_it_eager_for_a_while():
    learner = _learner()
    learner.note_local_read(1.0)
    _sustained(learner, now=1.0 + LOCAL_READ_EAGER_SECONDS / 2)
    assert not learner.lazy
    _sustained(learner, now=1.0 + LOCAL_READ_EAGER_SECONDS * 1.01, first_slot=2)
    assert learner.lazy


def test_a_lazy_learner_turns_eager_when_its_backlog_passes_two_intervals():
    learner = _learner()
    next_slot = _sustained(learner, now=1.0)
    next_slot = _sustained(learner, now=1.0, first_slot=next_slot, slots=2, count=INTERVAL - 1)
    assert learner.lazy and learner.queued_commands <= 2 * INTERVAL
    _sustained(learner, now=1.0, first_slot=next_slot, slots=1, count=3)
    assert learner.queued_commands > 2 * INTERVAL and not learner.lazy


def test_a_state_larger_than_two_intervals_is_never_lazy():
    sm = StateMachine()
    for i in range(2 * INTERVAL + 1):
        sm.apply(commands.encode_put(CID, i + 1, i, f"key{i}", "v"))
    learner = _learner(sm=sm)
    assert not learner.small_enough_for_learners()
    _sustained(learner, now=1.0)
    assert not learner.lazy


def test_a_snapshot_larger_than_the_lazy_bound_means_no_lazy_learners():
    """Large values: 200 keys of 1 MiB are well under two intervals of keys, but each snapshot was 200
    MiB, sent whole to every lazy learner, queued ahead of the heartbeats: check-quorum step-downs
    (bench/big_values.py). Past ``LAZY_SNAPSHOT_BYTES_MAX`` every follower applies instead."""
    size = {"bytes": LAZY_SNAPSHOT_BYTES_MAX}
    learner = _learner(snapshot_bytes=lambda: size["bytes"])
    assert learner.small_enough_for_learners()
    next_slot = _sustained(learner, now=1.0)
    assert learner.lazy
    size["bytes"] += 1
    assert not learner.small_enough_for_learners()
    _sustained(learner, now=1.1, first_slot=next_slot)
    assert not learner.lazy


def test_turning_lazy_fails_the_writes_still_waiting_with_not_leader():
    learner = _learner()
    conn = FakeConn()
    command, decoded = commands.encode_write(wire.PutRequest(id=9, key="a", value="1", client_id=CID,
                                                             request_id=10**7, ack_below=0))
    learner.waiters.add_write(Proposal(command, decoded, (CID, 10**7), conn, 9), now=0.0)
    _sustained(learner, now=1.0)
    assert learner.lazy
    assert [(a.id, a.code, a.leader) for a in conn.answers] == [(9, wire.NOT_LEADER, "n1:7001")]
    assert learner.waiters.writes == {}


def test_adoption_skips_the_slots_the_snapshot_covers_only_while_lazy_and_behind():
    learner = _learner()
    _sustained(learner, now=1.0, slots=1)  # slot 1 is applied: the learner turns lazy after it
    _sustained(learner, now=1.0, first_slot=2, slots=4, count=3)  # slots 2-5 queued
    assert learner.lazy
    queued = learner.queued_commands
    snapshot = StateMachine()
    snapshot.apply(commands.encode_put(CID, 10**8, 0, "from-the-leader", "x"))
    assert learner.adopt(3, snapshot)
    assert learner.sm is snapshot and learner.applied_slot == 3
    assert [slot for slot, _, _ in learner.queue] == [4, 5]
    assert learner.queued_commands == 6 and learner.counters["commands_not_applied"] == queued - 6
    assert not learner.adopt(2, StateMachine()), "a snapshot behind the applied slot was taken"
    learner.lazy = False
    assert not learner.adopt(5, StateMachine()), "an eager learner took a snapshot"
    assert learner.sm is snapshot


def test_an_install_replaces_the_state_and_empties_the_queue():
    learner = _learner()
    learner.lazy = True
    learner.hand_out([_slot(1), _slot(2)], now=0.0)
    conn = FakeConn()
    learner.waiters.add_local_read(2, conn, wire.GetRequest(id=4, key="x", linearizable=False))
    installed = StateMachine()
    learner.install(7, installed)
    assert learner.sm is installed and learner.applied_slot == 7
    assert not learner.queue and learner.queued_commands == 0
    assert [a.id for a in conn.answers] == [4]


def test_a_backlog_of_more_than_one_step_postpones_elections():
    learner = _learner()
    learner.lazy = True
    learner.hand_out([_slot(1, CATCH_UP_COMMANDS)], now=0.0)
    assert not learner.should_postpone_election()
    learner.hand_out([_slot(2, 1)], now=0.0)
    assert learner.should_postpone_election()


def test_a_quiet_node_is_due_a_snapshot_once_enough_was_applied_since_the_last():
    learner = _learner(node_id=2, idle_snapshot_seconds=5.0, idle_snapshot_commands=30)  # the standby: eager
    learner.hand_out([_slot(1, 20)], now=100.0)
    assert learner.applied_since_snapshot == 20
    assert not learner.idle_snapshot_due(200.0)  # quiet for long, but only 20 of 30 commands
    learner.hand_out([_slot(2, 10)], now=101.0)
    assert not learner.idle_snapshot_due(101.0)  # 30 commands, but a slot came just now
    assert not learner.idle_snapshot_due(110.9)
    assert learner.idle_snapshot_due(111.0)  # 10 s without a decided slot: node 2 is the second by id
    assert not learner.snapshot_due()  # the interval (100) is not reached: this is the quiet rule alone


def test_quiet_snapshots_are_staggered_by_member_id_so_that_a_majority_never_writes_one_at_once():
    """QA: four voters snapshotting 400,000 keys within 0.9 s of each other when a load stopped all
    stalled 0.2-0.4 s (election timeout 0.3 s), and three elections followed."""
    due_at = {}
    for node_id in (1, 2, 3):
        learner = _learner(node_id=node_id, idle_snapshot_seconds=5.0, idle_snapshot_commands=1)
        learner.hand_out([_slot(1, 20)], now=0.0)  # (past an eighth of the interval)
        due_at[node_id] = next(t / 10 for t in range(0, 1000) if learner.idle_snapshot_due(t / 10))
    assert due_at == {1: 5.0, 2: 10.0, 3: 15.0}


def test_the_quiet_snapshot_needs_an_eighth_of_the_interval_and_an_empty_queue():
    sm = StateMachine()
    for i in range(2000):  # an interval of 2000 // 8 = 250 commands, so a floor of 250 // 8 = 31
        sm.apply(commands.encode_put(b"loader", i + 1, 0, f"pre-{i}", "v"))
    learner = _learner(node_id=2, sm=sm, idle_snapshot_seconds=1.0, idle_snapshot_commands=1)
    assert learner.snapshot_interval() == 250
    learner.hand_out([_slot(1, 30)], now=0.0)
    assert not learner.idle_snapshot_due(10.0)
    learner.hand_out([_slot(2, 1)], now=0.0)
    assert learner.idle_snapshot_due(10.0)
    learner.lazy = True  # (as if) slots wait in the queue: they come first
    learner.hand_out([_slot(3, 1)], now=0.0)
    assert learner.queue and not learner.idle_snapshot_due(10.0)


def test_no_quiet_snapshot_when_turned_off():
    learner = _learner(node_id=2, idle_snapshot_seconds=0.0, idle_snapshot_commands=1)
    learner.hand_out([_slot(1, 50)], now=0.0)
    assert not learner.idle_snapshot_due(1e9)


def test_two_clients_sharing_a_client_id_each_get_their_own_commands_answer():
    """QA (a process forked after its client was made): a put and a cas under one ``(client_id,
    request_id)``, both waiting on the leader. The put's apply answered both, so the cas's client was
    told of a write it never made, and its own command was then refused with nobody waiting. Now each
    waiter is answered by the apply of its own kind of command: the put's result, then the cas's
    refusal (``StateMachine.apply``), and the lock the cas asked for was not taken."""
    learner = _learner()
    put_conn, cas_conn = FakeConn(), FakeConn()
    put, put_decoded = commands.encode_write(wire.PutRequest(id=1, key="a", value="1", client_id=CID,
                                                             request_id=7, ack_below=0))
    cas, cas_decoded = commands.encode_write(wire.CasRequest(id=2, key="lock", expected=None, new="me",
                                                             client_id=CID, request_id=7, ack_below=0))
    learner.waiters.add_write(Proposal(put, put_decoded, (CID, 7), put_conn, 1), now=0.0)
    learner.waiters.add_write(Proposal(cas, cas_decoded, (CID, 7), cas_conn, 2), now=0.0)
    learner.hand_out([(1, (put,))], now=0.0)
    assert [(a.id, a.result) for a in put_conn.answers] == [(1, {"rev": 1})]
    assert cas_conn.answers == [], "the cas was answered with the put's result"
    learner.hand_out([(2, (cas,))], now=0.0)
    [refusal] = cas_conn.answers
    assert refusal.id == 2 and refusal.code == wire.BAD_REQUEST and "share one client id" in refusal.message
    assert learner.sm.get("lock") is None and learner.sm.revision == 1
