"""Tests of membership in the core: ``paxos.membership`` and what ``paxos.replica`` does with it.

Two kinds. Unit tests of the values (``Config``, the change commands, ``ConfigSchedule``), each
checking one rule with exact results. Scenario tests of replicas joined by ``Net``, a lossless FIFO
network in this file that a test can cut link by link (and a per-node storage, so that a node can
be restarted from what it persisted). They follow the style of test_replica_scenarios.py but drive
whole clusters, because a membership change is only visible over several slots and nodes: who counts
toward a quorum, from which slot on, who campaigns and who hands over. Each test is named after the
rule it checks (the numbered rules are those of the ``paxos.membership`` module docstring).
"""
from __future__ import annotations

import dataclasses
import json
import random

import pytest

from paxos.actions import DurableState
from paxos.ballot import Ballot
from paxos.membership import (
    CHANGE_PREFIX,
    Config,
    ConfigSchedule,
    decode_change,
    encode_change,
    is_change,
)
from paxos.messages import Accept, Accepted, AcceptedEntry, Campaign, Decide, HeartbeatAck, Prepare, Promise
from paxos.replica import ChangeRefused, Options, Replica

# ---------------------------------------------------------------- a small cluster


class Net:
    """Replicas on a lossless FIFO network. ``cut`` holds (src, dst) links whose messages are lost;
    ``down`` nodes receive nothing and are not ticked. Every batch is carried out at once in contract
    order (persist into the node's storage, send, apply)."""

    def __init__(self, voters=(1, 2, 3), learners=(), alpha=4, **options) -> None:
        self.base = Config(node_ids=tuple(voters), learners=tuple(learners), alpha=alpha)
        self.options = Options(**options)
        self.nodes: dict[int, Replica] = {}
        self.records: dict[int, list] = {}
        self.snapshot: dict[int, tuple] = {}  # node -> (slot, configs)
        self.applied: dict[int, list] = {}  # node -> [(slot, batch)] as the state machine saw them
        self.network: list = []
        self.cut: set = set()
        self.down: set = set()
        self.sent: list = []  # every (src, dst, message) handed to the network, for inspection
        self.lose = None  # optional predicate (src, dst, message) -> True for a message to lose
        self.reads: dict[int, int] = {}  # read id -> index, as answered
        for node_id in self.base.members:
            self.start(node_id)

    def start(self, node_id: int, state: DurableState | None = None, config: Config | None = None) -> Replica:
        self.down.discard(node_id)
        self.nodes[node_id] = Replica(node_id, config or self.base, rng=random.Random(node_id),
                                      state=state, options=self.options)
        self.records.setdefault(node_id, [])
        self.applied[node_id] = [] if state is None else [
            (s, b) for s, b in self.applied.get(node_id, []) if s <= state.snapshot_slot]
        self.drain(node_id)
        return self.nodes[node_id]

    def restart(self, node_id: int) -> Replica:
        """Crash ``node_id`` and rebuild it from its storage only (records and snapshot)."""
        slot, configs = self.snapshot.get(node_id, (0, ()))
        state = DurableState.replay(self.records[node_id], slot)
        state.configs = configs
        self.network = [m for m in self.network if m[1] != node_id]
        return self.start(node_id, state=state)

    def compact(self, node_id: int, slot: int) -> None:
        replica = self.nodes[node_id]
        replica.compact(slot)
        self.snapshot[node_id] = (slot, replica.schedule_through(slot))
        self.records[node_id] = replica.durable_state().records()

    def drain(self, node_id: int):
        actions = self.nodes[node_id].take_actions()
        self.records[node_id].extend(actions.persist)
        for to, message in actions.send:
            self.sent.append((node_id, to, message))
            self.network.append((node_id, to, message))
        self.applied[node_id].extend(actions.apply)
        self.reads.update(actions.reads)
        return actions

    def settle(self, limit: int = 100_000, until=None) -> None:
        """Deliver messages in order until none is left (or ``until()`` holds)."""
        for _ in range(limit):
            if not self.network or (until is not None and until()):
                return
            src, dst, message = self.network.pop(0)
            if dst in self.down or src in self.down or (src, dst) in self.cut or dst not in self.nodes:
                continue
            if self.lose is not None and self.lose(src, dst, message):
                continue
            self.nodes[dst].receive(message)
            self.drain(dst)
        raise AssertionError("the network did not settle")

    def tick(self, ids=None, times: int = 1) -> None:
        for _ in range(times):
            for node_id in ids or list(self.nodes):
                if node_id not in self.down:
                    self.nodes[node_id].tick()
                    self.drain(node_id)
            self.settle()

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            self.cut |= {(node_id, other), (other, node_id)}

    def heal(self) -> None:
        self.cut.clear()

    def elect(self, node_id: int) -> Replica:
        """Tick only ``node_id`` until it campaigns, then deliver everything: it must lead."""
        replica = self.nodes[node_id]
        for _ in range(3 * self.options.election_timeout_ticks):
            if replica.status()["role"] != "follower":
                break
            replica.tick()
            self.drain(node_id)
        self.settle()
        assert replica.is_leader, replica.status()
        return replica

    def put(self, leader: int, *commands: bytes) -> None:
        for command in commands:
            assert self.nodes[leader].propose(command)
        self.drain(leader)
        self.settle()

    def change(self, leader: int, make) -> Config:
        """Propose ``make(config)`` at ``leader`` and settle; the change is decided, not yet in effect."""
        replica = self.nodes[leader]
        new = make(replica.config)
        replica.propose_change(new)
        self.drain(leader)
        self.settle()
        return new

    def until(self, condition, ids=None, rounds: int = 200) -> None:
        for _ in range(rounds):
            if condition():
                return
            self.tick(ids)
        assert condition(), "condition not reached"

    def leaders(self) -> list[int]:
        return [i for i, r in self.nodes.items() if r.is_leader and i not in self.down]

    def values(self, node_id: int) -> list:
        """The commands the node's state machine applied, in order (no-ops and changes left out)."""
        return [c for _, batch in self.applied[node_id] for c in batch if not is_change(c)]


def counters(replica: Replica) -> dict:
    return replica.status()["counters"]


def grow(net: Net, leader: int, node_id: int) -> None:
    """Add ``node_id`` as a learner, start it with the bootstrap configuration (it catches up from
    slot 1 and learns every change from the log) and let the change take effect."""
    net.change(leader, lambda c: c.add_learner(node_id))
    net.start(node_id, config=net.base)
    net.until(lambda: not net.nodes[net.leaders()[0]].change_in_progress if net.leaders() else False)


# ---------------------------------------------------------------- Config: a value with rules


def test_config_refuses_malformed_member_tables():
    with pytest.raises(ValueError, match="at least one voter"):
        Config(node_ids=())
    with pytest.raises(ValueError, match="both a voter and a learner"):
        Config(node_ids=(1, 2), learners=(2,))
    with pytest.raises(ValueError, match="duplicate"):
        Config(node_ids=(1,), learners=(3, 3))
    with pytest.raises(ValueError, match="ints >= 1"):
        Config(node_ids=(1,), learners=(0,))
    with pytest.raises(ValueError, match="alpha"):
        Config(node_ids=(1,), alpha=0)
    with pytest.raises(ValueError, match="epoch"):
        Config(node_ids=(1,), epoch=-1)
    with pytest.raises(ValueError, match="not a member"):
        Config(node_ids=(1,), addresses={2: "h:1"})
    with pytest.raises(ValueError, match="not a member"):
        Config(node_ids=(1,), incarnations={5: "ab"})


def test_add_learner_refuses_an_existing_member_and_records_address_and_incarnation():
    config = Config(node_ids=(1, 2, 3), learners=(4,))
    for existing in (2, 4):
        with pytest.raises(ValueError, match=f"node {existing} is already a member"):
            config.add_learner(existing)
    new = config.add_learner(5, "h:5", "00ff")
    assert (new.node_ids, new.learners, new.epoch) == ((1, 2, 3), (4, 5), 1)
    assert new.addresses == {5: "h:5"} and new.incarnations == {5: "00ff"}
    assert new.role(5) == "learner" and not new.is_voter(5) and new.members == (1, 2, 3, 4, 5)


def test_a_removed_id_is_retired_and_never_given_to_a_new_member():
    """``remove`` records the id in ``retired``; ``add_learner`` refuses it afterwards, naming a free
    id; the field survives ``to_dict``/``from_dict`` (a snapshot, a change command), and a configuration
    with no removal encodes exactly as before the field existed (older logs and snapshots decode)."""
    config = Config(node_ids=(1, 2, 3), learners=(4,))
    assert "retired" not in config.to_dict()
    after = config.remove(4).remove(2)
    assert after.retired == (2, 4) and after.members == (1, 3)
    for gone in (2, 4):
        with pytest.raises(ValueError, match=f"node {gone} was a member and was removed; ids are never reused"
                                             r": give the new member a new id \(above 4\)"):
            after.add_learner(gone)
    assert after.add_learner(5).retired == (2, 4)
    assert Config.from_dict(after.to_dict()) == after and after.to_dict()["retired"] == [2, 4]
    assert Config.from_dict(config.to_dict()).retired == ()


def test_a_retired_id_cannot_be_a_member_and_must_be_an_id():
    with pytest.raises(ValueError, match="node 2 was removed before"):
        Config(node_ids=(1, 2), retired=(2,))
    with pytest.raises(ValueError, match="node ids must be ints"):
        Config(node_ids=(1,), retired=("x",))
    with pytest.raises(ValueError):
        Config.from_dict({"voters": [1], "epoch": 0, "retired": 7})


def test_promote_refuses_a_voter_and_a_node_that_is_not_a_learner():
    config = Config(node_ids=(1, 2, 3), learners=(4,))
    with pytest.raises(ValueError, match="already a voter"):
        config.promote(2)
    with pytest.raises(ValueError, match="not a member; add it as a learner first"):
        config.promote(9)
    new = config.promote(4)
    assert (new.node_ids, new.learners, new.epoch, new.quorum_size) == ((1, 2, 3, 4), (), 1, 3)


def test_remove_refuses_a_stranger_and_the_last_voter_and_forgets_the_members_tables():
    config = Config(node_ids=(1, 2), learners=(3,), addresses={1: "h:1", 3: "h:3"},
                    incarnations={1: "a", 2: "b", 3: "c"})
    with pytest.raises(ValueError, match="not a member"):
        config.remove(7)
    with pytest.raises(ValueError, match="last voter"):
        Config(node_ids=(1,), learners=(3,)).remove(1)
    assert Config(node_ids=(1,), learners=(3,)).remove(3).members == (1,)  # a learner may go
    new = config.remove(1).remove(3)
    assert (new.node_ids, new.learners, new.epoch) == ((2,), (), 2)
    assert new.addresses == {} and new.incarnations == {2: "b"}


def test_a_quorum_is_a_majority_of_the_voters_and_learners_and_strangers_count_for_nothing():
    """Rule 3: only the voters of a slot's configuration count (Paxos Made Simple, 2.2)."""
    config = Config(node_ids=(1, 2, 3, 4), learners=(5, 6))
    assert config.quorum_size == 3
    assert not config.is_quorum({1, 2, 5, 6, 7})
    assert not config.is_quorum([1, 1, 2, 2])  # duplicates count once
    assert config.is_quorum({1, 2, 4})


def test_config_round_trips_through_plain_values_and_refuses_garbage():
    config = Config(node_ids=(3, 1), learners=(7,), epoch=4, alpha=8, addresses={1: "a:1", 7: "b:2"},
                    incarnations={3: "x", 7: "y"})
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    for garbage in ({}, {"voters": 3, "epoch": 1}, {"voters": [1], "epoch": "1"}, {"voters": [1], "epoch": 0,
                                                                                     "addresses": 5}):
        with pytest.raises(ValueError):
            Config.from_dict(garbage)


# ---------------------------------------------------------------- change commands


def test_a_change_command_round_trips_and_names_its_base_epoch():
    new = Config(node_ids=(1, 2, 3), learners=(4,), epoch=3, incarnations={4: "00aa"})
    command = encode_change(2, new)
    assert command.startswith(CHANGE_PREFIX) and is_change(command)
    assert decode_change(command) == (2, new)
    assert not is_change(b"put k v") and not is_change(b"\x00other")


@pytest.mark.parametrize("command", [
    b"put k v",
    CHANGE_PREFIX + b"not json",
    CHANGE_PREFIX + b'{"config": {"voters": [1], "epoch": 1}}',
    CHANGE_PREFIX + b'{"base": "0", "config": {"voters": [1], "epoch": 1}}',
    CHANGE_PREFIX + b'{"base": true, "config": {"voters": [1], "epoch": 1}}',
    CHANGE_PREFIX + b'{"base": 0, "config": {"voters": [], "epoch": 1}}',
    CHANGE_PREFIX + b'{"base": 0, "config": [1, 2]}',
], ids=["plain", "json", "no-base", "base-str", "base-bool", "no-voter", "config-list"])
def test_decode_change_refuses_malformed_commands_with_value_error(command):
    with pytest.raises(ValueError):
        decode_change(command)


def test_malformed_stale_and_skipping_changes_are_ignored_by_every_replica():
    """Every replica sees the same decided commands and ignores the same ones (rule 1): a change that
    does not parse, names another base epoch, skips an epoch or changes alpha leaves the schedule as
    it was everywhere, counted as config_change_ignored; the state machine still gets the batch."""
    net = Net(alpha=2)
    leader = net.elect(1)
    config = leader.config
    bad = [CHANGE_PREFIX + b"{broken",
           encode_change(5, config.remove(3)),                                  # another base epoch
           encode_change(0, dataclasses.replace(config.remove(3), epoch=2)),     # skips epoch 1
           encode_change(0, dataclasses.replace(config.remove(3), alpha=3))]     # another alpha
    # (propose() refuses such bytes: queued as a leader of a buggy shell or an older version could)
    leader._queue.extend(bad)
    net.drain(1)
    net.settle()
    net.tick(times=3)
    for node_id, replica in net.nodes.items():
        assert replica.config == config and replica.status()["config_effective_slot"] == 1
        assert counters(replica)["config_change_ignored"] == len(bad), node_id
        assert [c for _, batch in net.applied[node_id] for c in batch] == bad
    net.change(1, lambda c: c.remove(3))  # a good one still applies, at epoch 1
    assert all(r.config.epoch == 1 and r.config.node_ids == (1, 2) for r in net.nodes.values())


# ---------------------------------------------------------------- the schedule


def test_a_change_governs_from_alpha_slots_after_its_own_slot():
    base = Config(node_ids=(1, 2, 3), alpha=4)
    schedule = ConfigSchedule.initial(base)
    one = base.remove(3)
    assert schedule.apply(6, encode_change(0, one))
    assert [schedule.for_slot(s) for s in (1, 9, 10, 50)] == [base, base, one, one]
    assert schedule.latest == one and schedule.latest_effective == 10
    assert not schedule.apply(7, encode_change(0, base.remove(2)))  # raced: its base is gone
    assert schedule.from_slot(8) == [base, one] and schedule.from_slot(10) == [one]
    assert schedule.members_from(8) == {1, 2, 3} and schedule.members_from(10) == {1, 2}


def test_through_keeps_what_a_snapshot_needs_and_forget_through_drops_what_nobody_needs():
    base = Config(node_ids=(1, 2, 3), alpha=4)
    one, two = base.remove(3), base.remove(3).remove(2)
    schedule = ConfigSchedule([(1, 0, base), (10, 6, one), (15, 11, two)])
    # A snapshot at 8: the change at 6 is in it (it governs from 10), the one at 11 is not.
    assert schedule.through(8) == ((1, 0, base), (10, 6, one))
    # At 9 the base governs no slot after the snapshot any more: only the change at 6 is kept.
    assert schedule.through(9) == ((10, 6, one),)
    assert schedule.through(12) == ((10, 6, one), (15, 11, two))
    assert ConfigSchedule.from_list(json.loads(json.dumps(schedule.to_list()))).entries == schedule.entries
    schedule.forget_through(9)
    assert schedule.entries == ((10, 6, one), (15, 11, two))
    assert schedule.for_slot(10) == one and schedule.for_slot(20) == two
    schedule.forget_through(30)
    assert schedule.entries == ((15, 11, two),)
    with pytest.raises(ValueError):
        ConfigSchedule([])
    with pytest.raises(ValueError):
        ConfigSchedule.from_list([[1, 0, {"voters": "x"}]])


# ---------------------------------------------------------------- learners


def test_a_learner_receives_the_log_and_applies_it_but_its_accepted_never_counts():
    """Learners promise and accept like anyone (so they hold the log) but count toward no quorum:
    with both voting followers cut off, the leader and the learner accepting a slot decide nothing."""
    net = Net(voters=(1, 2, 3), learners=(4,))
    net.elect(1)
    net.put(1, b"a", b"b")
    assert net.values(4) == [b"a", b"b"] == net.values(2)
    net.isolate(2)
    net.isolate(3)
    net.put(1, b"c")
    net.tick(times=5)  # retransmissions: the learner accepts again, nothing more
    leader = net.nodes[1]
    assert b"c" not in net.values(1) and b"c" not in net.values(4)
    assert leader.decided_slot == 1
    assert any(isinstance(m, Accepted) and m.sender == 4 and m.slot == 2 for _, _, m in net.sent)
    assert counters(leader)["accepted_not_voter"] >= 1
    net.heal()
    net.tick(times=3)
    assert net.values(1) == net.values(2) == net.values(4) == [b"a", b"b", b"c"]


def test_a_learner_never_campaigns_and_ignores_a_campaign_message():
    net = Net(voters=(1, 2, 3), learners=(4,))
    learner = net.nodes[4]
    for _ in range(10 * net.options.election_timeout_ticks):
        learner.tick()
        assert learner.status()["role"] == "follower"
    actions = net.drain(4)
    assert not [m for _, m in actions.send if isinstance(m, Prepare)]
    assert counters(learner)["not_voter_no_election"] >= 1
    learner.receive(Campaign(sender=1, ballot=Ballot(0, 1), decided_slot=0))
    assert learner.status()["role"] == "follower" and counters(learner)["campaign_not_voter"] == 1
    assert not net.drain(4).send


def test_the_leader_sees_a_learners_lag_in_heartbeat_acks():
    """HeartbeatAck carries the acceptor's decided slot: ``peer_decided`` tells an operator (and kv
    member promote) how far behind a learner is."""
    net = Net(voters=(1, 2, 3), learners=(4,))
    leader = net.elect(1)
    assert leader.peer_decided(4) is not None
    net.cut |= {(1, 4)}
    net.put(1, b"a", b"b", b"c")
    net.tick([1], times=leader.options.heartbeat_ticks)
    assert leader.peer_decided(2) == leader.decided_slot
    lag_before = leader.peer_decided(4)
    assert lag_before < leader.decided_slot
    net.heal()  # it catches up, and its next acks say so
    net.until(lambda: leader.peer_decided(4) == leader.decided_slot)
    assert net.values(4) == [b"a", b"b", b"c"]


# ---------------------------------------------------------------- promotion and the promise gate


def test_a_promoted_learner_counts_from_alpha_slots_after_the_promotion():
    """Rule 1: the promotion decided at slot s governs from s + alpha. Before that a majority of the
    three old voters decides; from then on three of the four must accept."""
    alpha = 3
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=alpha)
    leader = net.elect(1)
    net.change(1, lambda c: c.promote(4))
    s = next(slot for slot, batch in net.applied[1] if any(is_change(c) for c in batch))
    effective = s + alpha
    assert leader.status()["config_effective_slot"] == effective
    assert leader.config_for(effective - 1).node_ids == (1, 2, 3)
    assert leader.config_for(effective).node_ids == (1, 2, 3, 4)
    net.until(lambda: not leader.change_in_progress)
    assert leader.decided_slot == effective - 1  # the no-ops that brought the change into effect
    net.put(1, b"w")  # slot `effective` (the leader prepares again for it first: next test)
    assert leader.is_leader and net.values(1) == [b"w"] and leader.decided_slot == effective
    # From slot `effective` on, nodes 1 and 2 are no longer a majority...
    net.isolate(3)
    net.isolate(4)
    net.put(1, b"x")
    net.tick([1, 2], times=3)
    assert leader.decided_slot == effective and b"x" not in net.values(1)
    # ...but 1, 2 and the new voter 4 are three of four.
    net.heal()
    net.isolate(3)
    net.tick([1, 2, 4], times=3)
    assert net.values(1) == [b"w", b"x"] and leader.decided_slot == effective + 1


def test_a_leader_without_the_new_voters_promise_runs_phase_1_again_before_opening_its_slots():
    """Rule 3: the leader opens a slot only with promises from a majority of that slot's voters. It
    won with {1, 2} of {1, 2, 3}; {1, 2} is not a majority of {1, 2, 3, 4}, so at the first slot the
    promotion governs it prepares again at a higher ballot, and node 4's promise counts."""
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=2)
    net.cut |= {(3, 1), (4, 1)}  # the promises of node 3 and of learner 4 never arrive
    leader = net.elect(1)
    first = leader.ballot
    net.heal()
    net.change(1, lambda c: c.promote(4))
    net.until(lambda: not leader.change_in_progress)
    assert leader.ballot == first and "reelect_for_config" not in counters(leader)
    net.put(1, b"after")  # the first slot {1, 2, 3, 4} governs
    assert counters(leader)["reelect_for_config"] == 1 and leader.is_leader and leader.ballot > first
    promised = {src for src, dst, m in net.sent
                if dst == 1 and type(m).__name__ == "Promise" and m.ballot == leader.ballot}
    assert 4 in promised
    assert all(net.values(i) == [b"after"] for i in (1, 2, 3, 4))


def test_a_promise_that_arrives_after_the_election_counts_so_a_promotion_needs_no_new_phase_1():
    """The leader won with {1, 2}; learner 4's promise came late. It reports nothing at or above the
    leader's next slot, so it joins the promise set, and the first slot {1, 2, 3, 4} governs opens at
    the same ballot ({1, 2, 4} is a majority of it)."""
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=2)
    net.cut |= {(3, 1)}  # node 3's promise never arrives; node 4's does, after the election
    leader = net.elect(1)
    first = leader.ballot
    net.heal()
    net.change(1, lambda c: c.promote(4))
    net.until(lambda: not leader.change_in_progress)
    net.put(1, b"after")
    assert "reelect_for_config" not in counters(leader) and leader.ballot == first
    assert counters(leader)["late_promise_counted"] >= 1
    assert all(net.values(i) == [b"after"] for i in (1, 2, 3, 4))


def test_a_leader_asks_a_new_member_for_its_promise_and_a_late_promise_reporting_open_slots_is_left_out():
    """When a learner joins, the leader sends it a Prepare of its own ballot (a promise it can count at
    the promotion). A late promise that reports an accepted value at or above the leader's next slot is
    not counted: values there would no longer be free."""
    net = Net(voters=(1, 2, 3), alpha=2)
    leader = net.elect(1)
    net.change(1, lambda c: c.add_learner(4))
    prepares = [m for src, dst, m in net.sent if src == 1 and dst == 4 and isinstance(m, Prepare)]
    assert prepares and prepares[-1].ballot == leader.ballot
    ahead = Promise(sender=3, ballot=leader.ballot, first_slot=leader._first_slot, decided=(), snapshot_slot=0,
                    accepted=(AcceptedEntry(slot=leader._next_slot + 5, ballot=Ballot(0, 3), value=(b"v",)),))
    leader._promised_by.discard(3)
    leader.receive(ahead)
    assert 3 not in leader._promised_by and counters(leader)["late_promise_ignored"] == 1


def test_a_slot_below_s_plus_alpha_keeps_the_old_voters_so_a_new_leader_needs_their_majority():
    """Why alpha (rules 1-3): a change decided at slot s governs from s + alpha because the leader that
    decided it may already have opened slots s+1.. under the old voters. Here node 3 is replaced by
    node 4 ({1, 2, 3} -> {1, 2, 4}) at slot 1, and slot 2 holds x, accepted at ballot (1, 1) by 1 and
    3: chosen by the old voters. Node 2, which knows the change, campaigns while 1 is down. Had the
    change taken effect at once, the promises of 2 and 4 would be a majority of {1, 2, 4} for slot 2,
    missing x; with alpha they are not a majority of {1, 2, 3}, so node 2 waits for node 3, whose
    promise reports x, and re-proposes it."""
    base = Config(node_ids=(1, 2, 3), learners=(4,), alpha=4)
    new = dataclasses.replace(base.promote(4).remove(3), epoch=1)
    change = (encode_change(0, new),)
    b1 = Ballot(1, 1)
    state = DurableState(promised=b1, accepted={1: (b1, change)}, decided={1: change})
    two = Replica(2, base, rng=random.Random(2), state=state)
    assert two.take_actions().apply == [(1, change)]
    assert two.config == new and two.config_for(2).node_ids == (1, 2, 3) and two.config_for(5).node_ids == (1, 2, 4)
    for _ in range(3 * two.options.election_timeout_ticks):
        two.tick()
        if two.status()["role"] == "candidate":
            break
    ballot = two.ballot
    assert {to for to, m in two.take_actions().send if isinstance(m, Prepare)} == {1, 3, 4}
    two.receive(Promise(sender=4, ballot=ballot, first_slot=2, accepted=(), decided=(), snapshot_slot=0))
    assert not two.is_leader
    x = (b"x",)
    two.receive(Promise(sender=3, ballot=ballot, first_slot=2, snapshot_slot=0, decided=(),
                        accepted=(AcceptedEntry(slot=2, ballot=b1, value=x),)))
    assert two.is_leader
    accepts = {m.slot: m.value for _, m in two.take_actions().send if isinstance(m, Accept)}
    assert accepts[2] == x


# ---------------------------------------------------------------- removals


def test_a_removed_follower_stops_counting_and_hearing_from_alpha_slots_after_its_removal():
    net = Net(voters=(1, 2, 3), alpha=2)
    leader = net.elect(1)
    net.change(1, lambda c: c.remove(3))
    net.until(lambda: not leader.change_in_progress)
    effective = leader.status()["config_effective_slot"]
    assert leader.config_for(effective).node_ids == (1, 2)
    net.sent.clear()
    net.put(1, b"x")
    assert not [m for _, dst, m in net.sent if dst == 3]  # no Accept, Heartbeat or Decide for it
    assert net.values(1) == [b"x"] == net.values(2)
    # Its vote for a slot it is not a voter of counts for nothing: with 2 silent, nothing is decided.
    net.isolate(2)
    net.put(1, b"y")
    net.nodes[1].receive(Accepted(sender=3, ballot=leader.ballot, slot=leader.decided_slot + 1))
    net.drain(1)
    assert b"y" not in net.values(1) and counters(leader)["accepted_not_voter"] >= 1
    # And it never campaigns again (once it knows), however long it hears nothing.
    removed = net.nodes[3]
    net.until(lambda: removed.config.node_ids == (1, 2), ids=[1, 3])
    net.isolate(3)
    for _ in range(10 * net.options.election_timeout_ticks):
        removed.tick()
        assert removed.status()["role"] == "follower"
    assert counters(removed)["not_voter_no_election"] >= 1


def test_a_removed_leader_hands_over_with_campaign_and_never_campaigns_again():
    """A leader that applies its own removal stops opening slots and, once every slot it opened is
    decided and the target has caught up, sends Campaign to a voter of the new configuration and steps
    down; the target wins at once. Then the old leader never campaigns (it is no voter)."""
    net = Net(voters=(1, 2, 3), alpha=3)
    old = net.elect(1)
    net.put(1, b"a")
    net.change(1, lambda c: c.remove(1))
    net.until(lambda: len(net.leaders()) == 1 and net.leaders()[0] != 1)
    new_leader = net.leaders()[0]
    assert counters(old)["transfer_sent"] == 1
    campaigns = [(src, dst) for src, dst, m in net.sent if isinstance(m, Campaign)]
    assert campaigns == [(1, new_leader)]
    assert counters(net.nodes[new_leader])["campaigned_on_transfer"] == 1
    net.put(new_leader, b"b")
    assert net.values(new_leader) == [b"a", b"b"]
    for _ in range(10 * net.options.election_timeout_ticks):
        net.tick([1])
        assert old.status()["role"] == "follower"
    assert counters(old).get("elections") == 1  # the one that made it leader


def test_a_removed_leader_whose_handover_is_abandoned_steps_down_so_the_voters_can_elect():
    """Regression (found while writing this file): a removed leader whose handover could not finish
    within an election timeout (a slot it opened stayed undecided behind a partition) went on leading
    as a non-voter for ever. It could not open the first slot of the new configuration {2, 3} (it won
    with promises from 1 and 2, one voter of it, and a non-voter never prepares again), and its
    heartbeats kept 2 and 3 from electing: no write could ever succeed. Now it steps down. (Without
    Options.check_quorum, which would step the cut-off leader down first: this is the handover's own
    deadline.)"""
    net = Net(voters=(1, 2, 3), alpha=4, check_quorum=False)
    net.cut |= {(3, 1)}
    leader = net.elect(1)
    net.heal()
    leader.propose_change(leader.config.remove(1))
    net.drain(1)
    leader.propose(b"y")  # its own slot, behind the change
    net.drain(1)
    y_accepts = [m for m in net.network if isinstance(m[2], Accept) and m[2].value == (b"y",)]
    net.network = [m for m in net.network if m not in y_accepts]
    net.cut |= {(1, 3), (3, 1)}
    net.settle()  # the change is decided by 1 and 2; y never reaches anyone
    assert leader.config.node_ids == (2, 3) and counters(leader)["transfer_started"] == 1
    net.isolate(1)
    net.tick([1], times=2 * net.options.election_timeout_ticks)
    assert counters(leader)["transfer_abandoned"] == 1
    assert not leader.is_leader and counters(leader).get("stepped_down_not_voter") == 1
    net.heal()
    net.until(lambda: net.leaders() and net.leaders()[0] in (2, 3))
    net.put(net.leaders()[0], b"z")
    assert net.values(2)[-1:] == [b"z"]


def test_a_node_that_learns_its_removal_while_campaigning_does_not_lead():
    """Regression (found by the simulator's membership mode while it was being written): a node that campaigns
    with an old schedule, still a voter in it, learns from the promises' decided entries that it was
    removed. It must not lead: a removed leader would lead the voters as a non-voter (and, if its
    promises are not a majority of the new voters, block them for ever)."""
    net = Net(voters=(1, 2, 3), alpha=2)
    net.elect(1)
    net.isolate(3)
    net.change(1, lambda c: c.remove(3))
    net.until(lambda: not net.nodes[1].change_in_progress, ids=[1, 2])
    net.heal()
    net.down.add(1)  # the leader is gone; node 3 does not know it was removed
    three = net.nodes[3]
    assert three.is_voter
    for _ in range(3 * net.options.election_timeout_ticks):
        three.tick()
        net.drain(3)
        if three.status()["role"] == "candidate":
            break
    net.settle()  # node 2 promises and reports the decided change
    assert three.config.node_ids == (1, 2) and not three.is_leader
    assert counters(three).get("not_voter_no_lead") == 1


# ---------------------------------------------------------------- leadership transfer


def test_transfer_leadership_pauses_proposals_then_the_target_campaigns_and_leads():
    net = Net(voters=(1, 2, 3))
    leader = net.elect(1)
    net.put(1, b"a")
    assert leader.transfer_leadership(3)
    assert leader.propose(b"queued")  # accepted into the queue, but no slot is opened for it
    actions = net.drain(1)
    assert not [m for _, m in actions.send if isinstance(m, Accept)]
    with pytest.raises(ChangeRefused, match="handed over"):
        leader.propose_change(leader.config.remove(2))
    net.settle()
    net.until(lambda: net.nodes[3].is_leader)
    assert not leader.is_leader and counters(net.nodes[3])["campaigned_on_transfer"] == 1
    assert [(s, d) for s, d, m in net.sent if isinstance(m, Campaign)] == [(1, 3)]
    net.put(3, b"b")
    assert net.values(1) == net.values(3) == [b"a", b"b"]  # "queued" was dropped, for the client to retry


def test_transfer_leadership_refuses_itself_a_learner_a_stranger_and_a_follower_caller():
    net = Net(voters=(1, 2, 3), learners=(4,))
    leader = net.elect(1)
    for target in (1, 4, 9):
        assert not leader.transfer_leadership(target)
    assert not net.nodes[2].transfer_leadership(3)
    assert counters(leader)["transfer_refused"] == 3 and leader.is_leader


def test_a_transfer_to_a_target_that_does_not_answer_is_abandoned_and_the_leader_goes_on():
    """The target must catch up before it is told to campaign (kv move-leader: "the target catches up,
    then campaigns; proposals pause for at most an election timeout"). A target that is down never
    reports its decided slot, so after an election timeout the leader abandons the transfer and opens
    slots again; it does not step down and leave the cluster without a leader."""
    net = Net(voters=(1, 2, 3))
    leader = net.elect(1)
    net.down.add(3)
    assert leader.transfer_leadership(3)
    leader.propose(b"waits")
    net.drain(1)
    net.until(lambda: counters(leader).get("transfer_abandoned") == 1, ids=[1, 2])
    assert leader.is_leader and "transfer_sent" not in counters(leader)
    net.tick([1, 2], times=2)
    assert net.values(2) == [b"waits"]


# ---------------------------------------------------------------- one change at a time


def test_propose_change_is_refused_off_leader_while_a_change_is_in_progress_and_for_a_wrong_epoch():
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=3)
    leader = net.elect(1)
    with pytest.raises(ChangeRefused, match="not the leader"):
        net.nodes[2].propose_change(net.nodes[2].config.remove(3))
    with pytest.raises(ChangeRefused, match="must follow epoch 0"):
        leader.propose_change(dataclasses.replace(leader.config.remove(3), epoch=5))
    assert not leader.change_in_progress
    leader.propose_change(leader.config.promote(4))
    assert leader.change_in_progress  # queued
    # (QA: it named the epoch in force, not the one proposed)
    with pytest.raises(ChangeRefused, match=r"in progress \(epoch 1 is proposed and not decided yet\)"):
        leader.propose_change(leader.config.remove(3))
    net.drain(1)
    net.settle(until=lambda: leader.config.epoch == 1)
    assert leader.change_in_progress  # decided, not yet governing
    with pytest.raises(ChangeRefused, match=r"in progress \(epoch 1 governs from slot \d+, decided slot \d+\)"):
        leader.propose_change(leader.config.remove(3))
    net.until(lambda: not leader.change_in_progress)
    assert leader.decided_slot + 1 == leader.status()["config_effective_slot"]
    leader.propose_change(leader.config.remove(3))  # now it is accepted


def test_a_change_stays_in_progress_while_the_leader_prepares_again_for_a_new_configuration():
    """Regression (found while writing this file): running phase 1 again for a new configuration
    (rule 3) went through the step-down code, which forgot that a change was queued; a second change
    on the same epoch was then accepted, to be ignored by every replica once decided. Now the queued
    change keeps change_in_progress true across the re-election, and only the first change applies."""
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=2)
    net.cut |= {(3, 1), (4, 1)}  # neither node 3 nor learner 4 promises before the promotion
    leader = net.elect(1)  # promises from 1 and 2 only
    net.heal()
    net.change(1, lambda c: c.promote(4))
    net.until(lambda: not leader.change_in_progress)
    net.cut |= {(2, 1), (3, 1), (4, 1)}  # the re-election cannot finish yet
    leader.propose_change(leader.config.remove(2))
    net.drain(1)  # the first slot of {1, 2, 3, 4}: phase 1 again
    assert counters(leader)["reelect_for_config"] == 1 and leader.status()["role"] == "candidate"
    assert leader.change_in_progress
    net.heal()
    net.tick([1], times=2 * net.options.election_timeout_ticks)
    net.until(lambda: leader.is_leader and not leader.change_in_progress)
    assert leader.config.node_ids == (1, 3, 4) and "config_change_ignored" not in counters(leader)


def test_two_changes_raced_on_the_same_epoch_apply_once_at_every_replica():
    """A change names the epoch it changes: node 1 put change A (remove 3) in a slot and fell silent
    before learning it decided; node 2, elected with A still undecided to it, accepts change B (promote
    4) on the same epoch 0. Both are decided, A first; B, based on an epoch that is gone, is ignored by
    every replica alike."""
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=2)
    one = net.elect(1)
    a = one.config.remove(3)
    one.propose_change(a)
    net.drain(1)
    net.cut |= {(2, 1), (3, 1), (4, 1)}  # their Accepted never reach node 1
    net.settle()
    assert one.config.epoch == 0
    net.down.add(1)
    two = net.nodes[2]
    for _ in range(3 * net.options.election_timeout_ticks):
        two.tick()
        net.drain(2)
        if two.status()["role"] == "candidate":
            break
    net.settle(until=lambda: two.is_leader)
    assert two.is_leader and two.config.epoch == 0 and not two.change_in_progress
    b = two.config.promote(4)
    two.propose_change(b)  # accepted: A is not decided at node 2 yet
    net.drain(2)
    net.heal()
    net.down.discard(1)
    net.tick(times=4)
    assert net.nodes[3].config == a  # removed: it learned A, and hears nothing after it
    for node_id in (1, 2, 4):
        replica = net.nodes[node_id]
        assert replica.config == a, node_id
        assert counters(replica)["config_change_ignored"] == 1 and counters(replica)["config_changes"] == 1
    changes = [decode_change(c)[1] for _, batch in net.applied[2] for c in batch if is_change(c)]
    assert changes == [a, b]


# ---------------------------------------------------------------- a walk


def test_a_cluster_walks_from_1_to_2_to_3_to_5_voters_and_back_to_3_losing_nothing():
    """Grow one voter to five, a learner at a time (each starts from the bootstrap configuration and
    learns every change from the log), then remove two voters, the leader among them. Writes at every
    stage; every remaining member applies the same commands, the removed ones stop where they left."""
    net = Net(voters=(1,), alpha=3)
    net.elect(1)
    written = []

    def write(tag: bytes) -> None:
        leader = net.leaders()[0]
        net.put(leader, tag)
        written.append(tag)

    write(b"one")
    for node_id in (2, 3, 4, 5):
        grow(net, net.leaders()[0], node_id)
        write(b"learner-%d" % node_id)
        net.change(net.leaders()[0], lambda c, n=node_id: c.promote(n))
        net.until(lambda: net.leaders() and not net.nodes[net.leaders()[0]].change_in_progress)
        write(b"voter-%d" % node_id)
        assert net.nodes[net.leaders()[0]].config.node_ids == tuple(range(1, node_id + 1))
    assert net.nodes[1].config.quorum_size == 3
    for gone in (1, 2):  # node 1 leads: it hands over
        net.change(net.leaders()[0], lambda c, g=gone: c.remove(g))
        net.until(lambda: len(net.leaders()) == 1 and not net.nodes[net.leaders()[0]].change_in_progress)
        write(b"without-%d" % gone)
    leader = net.nodes[net.leaders()[0]]
    assert net.leaders()[0] in (3, 4, 5) and leader.config.node_ids in ((3, 4, 5), (4, 5, 3), (5, 3, 4))
    assert sorted(leader.config.node_ids) == [3, 4, 5] and leader.config.epoch == 10
    for node_id in (3, 4, 5):
        assert net.values(node_id) == written, node_id
    assert net.values(1) == written[:net.values(1).__len__()] and b"without-2" not in net.values(1)


# ---------------------------------------------------------------- snapshots carry the schedule


def test_a_snapshot_carries_the_schedule_and_a_restart_from_it_knows_a_change_not_in_effect_yet():
    """DurableState.configs: a node that compacted past a change that does not govern yet must learn
    it from its snapshot (Replica.schedule_through), since the slot that held it is gone from its
    log. Node 3 is removed at slot s = 2; with alpha 6 it governs from slot 8; node 2 compacts at s."""
    net = Net(voters=(1, 2, 3), alpha=6)
    leader = net.elect(1)
    net.put(1, b"a")
    s = leader.decided_slot + 1
    net.lose = lambda src, dst, m: isinstance(m, Accepted) and m.slot > s  # only the change is decided
    net.change(1, lambda c: c.remove(3))
    two = net.nodes[2]
    assert leader.decided_slot == two.decided_slot == s and two.change_in_progress
    net.compact(2, s)
    slot, configs = net.snapshot[2]
    assert [(e, src) for e, src, _c in configs] == [(1, 0), (s + 6, s)]
    restarted = net.restart(2)
    assert restarted.config.node_ids == (1, 2) and restarted.status()["config_effective_slot"] == s + 6
    assert restarted.config_for(s + 5).node_ids == (1, 2, 3) and restarted.change_in_progress
    # Without the snapshot's schedule the same storage gives the bootstrap configuration for ever.
    state = DurableState.replay(net.records[2], slot)
    blind = Replica(2, net.base, rng=random.Random(2), state=state)
    assert blind.config.node_ids == (1, 2, 3) and blind.config_for(s + 6).node_ids == (1, 2, 3)


def test_install_snapshot_takes_the_senders_schedule_and_empty_configs_keep_ours():
    """A node cut off while it was removed installs the leader's snapshot: the schedule in it tells it
    that it is no voter any more. A snapshot without a schedule (from before membership) keeps ours."""
    net = Net(voters=(1, 2, 3), alpha=3)
    leader = net.elect(1)
    net.put(1, b"a")
    net.isolate(2)
    net.change(1, lambda c: c.remove(2))
    net.until(lambda: not leader.change_in_progress, ids=[1, 3])
    net.put(1, b"b")
    net.compact(1, leader.decided_slot)
    slot, configs = net.snapshot[1]
    two = net.nodes[2]
    assert two.config.node_ids == (1, 2, 3) and two.is_voter and two.applied_slot < slot
    two.install_snapshot(slot, configs)
    assert two.config.node_ids == (1, 3) and not two.is_voter and two.applied_slot == slot
    other = Replica(2, net.base, rng=random.Random(2))
    other.install_snapshot(slot)
    assert other.config == net.base and other.is_voter


# ---------------------------------------------------------------- reads


def test_a_read_needs_a_majority_of_every_configuration_that_governs_an_undecided_slot():
    """Rule 4: while a change is decided but slots before it governs are still open, a leader that
    could decide something newer might count either configuration, so a read's round needs a majority
    of each. Node 3 is replaced by node 4 ({1, 2, 3} -> {1, 2, 4}): acks of {1, 3} are a majority of
    the old voters only, acks of {1, 4} of the new ones only; {1, 3, 4} of both."""
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=4)
    leader = net.elect(1)
    s = leader.decided_slot + 1
    undecided = lambda src, dst, m: isinstance(m, Accepted) and m.slot > s  # noqa: E731
    net.lose = undecided
    net.change(1, lambda c: dataclasses.replace(c.promote(4).remove(3), epoch=1))
    assert leader.config.node_ids == (1, 2, 4) and leader.change_in_progress
    assert leader.read(7)
    for acking in ((3,), (4,)):
        net.lose = lambda src, dst, m, a=acking: undecided(src, dst, m) or (
            isinstance(m, HeartbeatAck) and src not in a)
        net.drain(1)
        net.settle()
        net.tick([1], times=2 * leader.options.heartbeat_ticks)
        assert leader.status()["pending_reads"] == 1 and 7 not in net.reads, acking
    net.lose = lambda src, dst, m: undecided(src, dst, m) or (isinstance(m, HeartbeatAck) and src == 2)
    net.tick([1], times=leader.options.heartbeat_ticks)
    assert net.reads[7] == s


def test_a_leader_opens_at_most_alpha_slots_past_the_decided_prefix():
    """Rule 2, and what alpha costs: config(i) is known only once every slot up to i - alpha is decided,
    so with alpha 3 a leader whose followers are silent opens three slots, however large its window."""
    net = Net(voters=(1, 2, 3), alpha=3, batch_count_max=1, window=32)
    leader = net.elect(1)
    net.lose = lambda src, dst, m: isinstance(m, Accepted)
    net.sent.clear()
    net.put(1, *[b"c%d" % i for i in range(8)])
    assert sorted({m.slot for _, _, m in net.sent if isinstance(m, Accept)}) == [1, 2, 3]
    assert leader.status()["queued"] == 5
    net.lose = None
    net.tick(times=3)
    assert net.values(2) == [b"c%d" % i for i in range(8)]


def test_a_promoted_learner_that_missed_its_promotion_asks_for_it_when_no_leader_speaks():
    """Regression (simulator, membership mode, 3 nodes seed 184): node 1, the only voter, replaced
    itself by learner 4 ({1} -> {4}) while 4 was cut off. Its handover could not finish (4 did not
    answer), so it stepped down, being no voter. Node 4 still thought itself a learner, so nobody
    campaigned and nobody told it: the cluster was stuck for good. A node that is no voter now asks a
    member for the decided slots it lacks whenever no leader spoke for an election timeout. (Without
    Options.check_quorum, which would step node 1 down for want of 4's answers before its handover
    deadline: the story of the regression is the handover's.)"""
    net = Net(voters=(1,), learners=(4,), alpha=2, check_quorum=False)
    one = net.elect(1)
    net.put(1, b"a")
    net.isolate(4)
    net.change(1, lambda c: dataclasses.replace(c.promote(4).remove(1), epoch=1))
    net.until(lambda: not one.is_leader, ids=[1])
    assert counters(one)["transfer_abandoned"] == 1 and one.config.node_ids == (4,)
    four = net.nodes[4]
    assert four.config.node_ids == (1,) and not four.is_voter
    net.heal()
    net.until(lambda: four.is_leader)
    net.put(4, b"b")
    assert net.values(4) == [b"a", b"b"]


def test_members_version_moves_when_the_members_may_have_changed_and_not_per_slot():
    """The shell follows membership only when ``members_version`` moved (kvstore.server skips its
    comparison of configurations otherwise): it must move with a change, and stay put for plain slots."""
    net = Net(voters=(1, 2, 3), alpha=2)
    leader = net.elect(1)
    before = leader.members_version
    net.put(1, b"a", b"b")
    assert leader.members_version == before
    net.change(1, lambda c: c.remove(3))
    net.until(lambda: leader.config_for(leader.status()["config_effective_slot"]).node_ids == (1, 2)
              and not leader.change_in_progress)
    assert leader.members_version > before


@pytest.mark.parametrize("engine", ["core", "classic"])
def test_a_command_with_the_change_prefix_is_refused_by_propose(engine):
    """QA (a developer embedding the core): ``propose(encode_change(...))`` was taken, and every replica
    applied it as a change of members, without ``propose_change``'s checks; a shell handing client bytes to
    ``propose`` would let clients change the members. Both engines refuse it, and queue nothing."""
    from paxos.classic import ClassicReplica
    from paxos.membership import encode_change

    net = Net(voters=(1, 2, 3))
    leader = net.elect(1)
    if engine == "classic":
        leader = ClassicReplica(1, net.base, rng=random.Random(1), options=Options())
    raw = encode_change(0, net.base.remove(3))
    with pytest.raises(ValueError, match="may not start with paxos.membership.CHANGE_PREFIX"):
        leader.propose(raw)
    assert not leader.take_actions().persist or engine == "classic"
    if engine == "core":
        assert leader.propose(b"an ordinary command") and not leader.change_in_progress
        net.drain(1)
        net.settle(until=lambda: leader.decided_slot >= 1)
        assert leader.config.node_ids == (1, 2, 3)


def test_a_restart_from_the_documented_recipe_keeps_the_members_a_compacted_change_made():
    """``DurableState.replay(records, snapshot_slot, configs)`` is the recipe ``Replica``'s docstring
    gives: with the schedule the snapshot carried, a node restarted after its snapshot passed a change
    knows the newest members (QA, embedding the core: the recipe named no ``configs``, and a restarted
    removed node campaigned again under the bootstrap configuration)."""
    net = Net(voters=(1, 2, 3), learners=(4,), alpha=3)
    net.elect(1)
    net.change(1, lambda c: c.promote(4))
    net.until(lambda: not net.nodes[1].change_in_progress)
    net.change(1, lambda c: c.remove(1))
    node = net.nodes[2]
    net.settle(until=lambda: node.config.node_ids == (2, 3, 4) and node.applied_slot >= node.decided_slot)
    slot = node.applied_slot
    configs = node.schedule_through(slot)
    node.compact(slot)
    records = list(node.durable_state().records())
    restarted = Replica(2, net.base, rng=random.Random(2),
                        state=DurableState.replay(records, slot, configs), options=node.options)
    assert restarted.config.node_ids == (2, 3, 4) and restarted.config.epoch == node.config.epoch
    forgetful = Replica(2, net.base, rng=random.Random(2), state=DurableState.replay(records, slot),
                        options=node.options)
    assert forgetful.config.node_ids == (1, 2, 3)  # what the recipe without configs gave


@pytest.mark.parametrize("engine", ["core", "classic"])
def test_compact_and_install_snapshot_refuse_a_slot_that_breaks_their_precondition(engine):
    """Checked, not asserted: an embedder running ``python -O`` (asserts off) would otherwise snapshot past
    what was applied, or roll the state machine back, without a word (QA, embedding the core)."""
    from paxos.classic import ClassicReplica

    net = Net(voters=(1, 2, 3))
    leader = net.elect(1)
    if engine == "classic":
        leader = ClassicReplica(1, net.base, rng=random.Random(1), options=Options())
    applied = leader.applied_slot
    with pytest.raises(ValueError, match="cannot snapshot past the applied slot"):
        leader.compact(applied + 1)
    with pytest.raises(ValueError, match="would roll the state machine back"):
        leader.install_snapshot(applied)
    assert leader.applied_slot == applied


def test_a_candidate_whose_election_began_below_a_change_that_left_it_alone_starts_over_and_leads():
    """Sim seed 200341 (membership mode, 1,200 steps; found by a soak): node 3's election began at slot
    1, then it learned slots 1-7 decided, among them changes that removed the other two voters. Its
    retries at the same ballot (rule 38) asked nobody (no peer left) for promises for the old
    configuration, for ever. An election whose slots were decided meanwhile, or with nobody left to
    ask, starts over from the decided slot: alone, it leads at once."""
    base = Config(node_ids=(1, 2, 3), alpha=4)
    replica = Replica(3, base, rng=random.Random(3), options=Options())
    for slot in range(1, 8):
        value = {1: (encode_change(0, base.remove(1)),), 2: (encode_change(1, base.remove(1).remove(2)),)}.get(
            slot, (b"x%d" % slot,))
        replica.receive(Accept(sender=1, ballot=Ballot(1, 1), slot=slot, value=value, decided_slot=0))
    replica.take_actions()
    for _ in range(4 * replica.options.election_timeout_ticks):
        replica.tick()
        if replica.status()["role"] == "candidate":
            break
    assert replica.status()["role"] == "candidate" and replica.decided_slot == 0
    replica.receive(Decide(sender=1, ballot=Ballot(1, 1), decided_slot=7))
    replica.take_actions()
    assert replica.decided_slot == 7 and replica.config.node_ids == (3,)
    for _ in range(4 * replica.options.election_timeout_ticks):
        replica.tick()
        replica.take_actions()
        if replica.is_leader:
            break
    assert replica.is_leader, replica.status()["counters"]
