"""A leader cut off from its majority steps down (``Options.check_quorum``, etcd's CheckQuorum).

What is checked and how: replicas on a small in-memory network (every batch carried out at once, in
contract order; ``cut`` links lose their messages) are ticked round by round. A leader that has had
no answer at its ballot (Promise, Accepted, HeartbeatAck) from a majority of the governing
configuration for ``election_timeout_ticks`` of its ticks must stop leading, count
``stepped_down_no_quorum``, and hand back its waiting read (``Actions.rejected_reads``) and its
queued command (``Actions.dropped_proposals``) in the actions of that tick, so that the shell answers
their clients "not leader" at once. A leader whose majority answers must never step down, however
long it runs (quiet, or with commands; with a minority cut off; with thrifty Accepts and lazy
decides); a cluster of one never does. With membership, only the voters of the configurations that
govern undecided slots count: a learner's answers keep nobody leading, a promoted learner's do.
The classic engine (``paxos.classic``, the seed's classes) has the same rule and runs the same tests,
membership excepted (its members are fixed).

Paxos Made Simple, section 2.4 (Progress): liveness needs one distinguished proposer that can talk to
a majority of acceptors. Stepping down is never a safety question (any number of proposers is safe),
so these tests check liveness behaviour only; the simulator (tests/sim) checks that safety and
liveness still hold under faults with the option on.
"""
from __future__ import annotations

import random

import pytest

from paxos.classic import ClassicReplica
from paxos.membership import Config
from paxos.replica import Options, Replica

TIMEOUT = 10  # election_timeout_ticks
HEARTBEAT = 2  # heartbeat_ticks
ENGINES = {"core": Replica, "classic": ClassicReplica}
engines = pytest.mark.parametrize("engine", list(ENGINES))


class Net:
    """Replicas on a lossless FIFO network; ``cut`` holds (src, dst) links whose messages are lost.
    Records, per node, the read ids answered and rejected and the commands dropped."""

    def __init__(self, voters=(1, 2, 3), learners=(), engine="core", **options) -> None:
        options = {"heartbeat_ticks": HEARTBEAT, "election_timeout_ticks": TIMEOUT, **options}
        self.options = Options(**options)
        config = Config(node_ids=tuple(voters), learners=tuple(learners), alpha=2)
        replica = ENGINES[engine]
        self.nodes = {n: replica(n, config, rng=random.Random(n), options=self.options) for n in config.members}
        self.network: list = []
        self.cut: set = set()
        self.reads: dict[int, list] = {n: [] for n in self.nodes}
        self.rejected: dict[int, list] = {n: [] for n in self.nodes}
        self.dropped: dict[int, list] = {n: [] for n in self.nodes}
        self.applied: dict[int, list] = {n: [] for n in self.nodes}

    def drain(self, node_id: int) -> None:
        actions = self.nodes[node_id].take_actions()
        self.network.extend((node_id, to, m) for to, m in (*actions.send_early, *actions.send))
        self.reads[node_id].extend(actions.reads)
        self.rejected[node_id].extend(actions.rejected_reads)
        self.dropped[node_id].extend(actions.dropped_proposals)
        self.applied[node_id].extend(c for _slot, batch in actions.apply for c in batch)

    def settle(self) -> None:
        for _ in range(100_000):
            if not self.network:
                return
            src, dst, message = self.network.pop(0)
            if (src, dst) in self.cut:
                continue
            self.nodes[dst].receive(message)
            self.drain(dst)
        raise AssertionError("the network did not settle")

    def tick(self, times: int = 1) -> None:
        """``times`` rounds: every node ticks once, then every message is delivered (or lost)."""
        for _ in range(times):
            for node_id in self.nodes:
                self.nodes[node_id].tick()
                self.drain(node_id)
            self.settle()

    def elect(self, node_id: int) -> Replica:
        replica = self.nodes[node_id]
        for _ in range(3 * TIMEOUT):
            if replica.status()["role"] != "follower":
                break
            replica.tick()
            self.drain(node_id)
        self.settle()
        assert replica.is_leader, replica.status()
        return replica

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut |= {(node_id, other), (other, node_id)}

    def put(self, leader: int, *commands: bytes) -> None:
        for command in commands:
            assert self.nodes[leader].propose(command)
        self.drain(leader)
        self.settle()


def no_quorum_count(replica: Replica) -> int:
    return replica.status()["counters"].get("stepped_down_no_quorum", 0)


@engines
@pytest.mark.parametrize("nodes", [3, 5])
def test_a_leader_cut_off_from_all_others_steps_down_after_an_election_timeout(nodes, engine):
    """Section 2.4: a leader that cannot reach a majority can decide nothing and confirm no read. After
    ``election_timeout_ticks`` without a majority's answer it steps down, and in that same tick hands
    back the read it could not confirm and the command it could not put in a slot."""
    net = Net(voters=tuple(range(1, nodes + 1)), engine=engine, window=1)  # window 1: a second command stays queued
    leader = net.elect(1)
    net.put(1, b"a")
    assert all(net.applied[n] == [b"a"] for n in net.nodes)
    net.tick(3 * TIMEOUT)  # a quiet leader whose followers answer its heartbeats
    assert leader.is_leader and no_quorum_count(leader) == 0

    net.isolate(1)
    assert leader.propose(b"in-a-slot")
    net.drain(1)  # its slot fills the window ...
    assert leader.propose(b"queued") and leader.read(7)
    net.drain(1)  # ... so this one stays queued
    assert leader.status()["in_flight"] == 1 and leader.status()["queued"] == 1
    # The last answers came in the round before the cut: still leader for election_timeout - 1 ticks ...
    for _ in range(TIMEOUT - 1):
        net.tick()
        assert leader.is_leader
    assert net.rejected[1] == [] and net.dropped[1] == []
    # ... and no longer a few ticks later.
    for _ in range(3):
        net.tick()
    assert not leader.is_leader and leader.leader_id is None
    assert no_quorum_count(leader) == 1
    assert net.rejected[1] == [7], "the waiting read must be handed back to the shell"
    assert net.dropped[1] == [b"queued"], "the queued command must be handed back to the shell"
    assert net.reads[1] == []
    assert leader.propose(b"later") is False and leader.read(8) is False


@engines
@pytest.mark.parametrize("nodes", [3, 5])
def test_the_stepped_down_leader_keeps_a_random_election_timer_and_the_majority_elects_another(nodes, engine):
    """Stepping down restarts the election timer with its random part (section 2.4: timeouts with
    randomness), like any follower: the isolated node campaigns and fails, and the majority side elects
    its own leader, which decides new commands. Healing leaves one leader, and the log agrees."""
    net = Net(voters=tuple(range(1, nodes + 1)), engine=engine)
    old = net.elect(1)
    net.put(1, b"a")
    net.isolate(1)
    net.tick(TIMEOUT + 2)
    assert not old.is_leader and no_quorum_count(old) == 1
    for _ in range(6 * TIMEOUT):
        net.tick()
        if any(r.is_leader for n, r in net.nodes.items() if n != 1):
            break
    (new,) = [n for n, r in net.nodes.items() if r.is_leader]
    assert new != 1
    net.put(new, b"b")
    assert not old.is_leader and old.status()["counters"].get("elections", 0) >= 1  # it campaigned, alone
    net.cut.clear()
    for _ in range(20 * TIMEOUT):
        net.tick()
        leaders = [n for n, r in net.nodes.items() if r.is_leader]
        if len(leaders) == 1 and all(r.leader_id == leaders[0] for r in net.nodes.values()) \
                and all(net.applied[n][:2] == [b"a", b"b"] for n in net.nodes):
            break
    else:
        raise AssertionError("no single leader with everyone caught up after healing")


@engines
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("thrifty,lazy_decide", [(False, False), (True, True)])
def test_a_leader_whose_majority_answers_never_steps_down(nodes, thrifty, lazy_decide, engine):
    """The converse: with heartbeats (and Accepts) answered by a majority, the leader stays for many
    election timeouts, quiet or busy, even with a minority of its followers cut off."""
    net = Net(voters=tuple(range(1, nodes + 1)), engine=engine, thrifty=thrifty, lazy_decide=lazy_decide)
    leader = net.elect(1)
    minority = list(range(nodes // 2 + 2, nodes + 1))  # 3 -> [3], 5 -> [4, 5]
    for node_id in minority:
        net.isolate(node_id)
    for round_number in range(50 * TIMEOUT):
        if round_number % 7 == 0:
            net.put(1, b"c%d" % round_number)
        if round_number % 11 == 0:
            assert leader.read(round_number)
            net.drain(1)
        net.tick()
        assert leader.is_leader, f"stepped down in round {round_number}: {leader.status()['counters']}"
    assert no_quorum_count(leader) == 0
    assert net.rejected[1] == [] and len(net.reads[1]) == len(range(0, 50 * TIMEOUT, 11))
    assert len(net.applied[1]) == len(range(0, 50 * TIMEOUT, 7))


@engines
def test_a_cluster_of_one_never_steps_down(engine):
    """A majority of one is the leader itself: it never lacks a quorum, however long nobody speaks."""
    net = Net(voters=(1,), engine=engine)
    leader = net.elect(1)
    for round_number in range(100 * TIMEOUT):
        if round_number % 13 == 0:
            net.put(1, b"solo%d" % round_number)
        net.tick()
        assert leader.is_leader
    assert no_quorum_count(leader) == 0 and len(net.applied[1]) == len(range(0, 100 * TIMEOUT, 13))


@engines
def test_check_quorum_off_keeps_the_cut_off_leader_leading(engine):
    """The option is a switch (to compare with and without): off, a cut-off leader leads on and its
    read and queued command wait, as before the option existed."""
    net = Net(window=1, engine=engine, check_quorum=False)
    leader = net.elect(1)
    net.isolate(1)
    assert leader.propose(b"in-a-slot")
    net.drain(1)
    assert leader.propose(b"queued") and leader.read(7)
    net.drain(1)
    net.tick(10 * TIMEOUT)
    assert leader.is_leader and no_quorum_count(leader) == 0
    assert net.rejected[1] == [] and net.dropped[1] == []


def test_check_quorum_must_be_a_bool():
    with pytest.raises(ValueError, match="check_quorum"):
        Options(check_quorum=1)


def test_a_learners_answers_count_for_nothing():
    """Membership: the quorum is a majority of the voters. A leader that still hears its learner
    (which acks every heartbeat) but neither other voter steps down all the same."""
    net = Net(voters=(1, 2, 3), learners=(4,))
    leader = net.elect(1)
    net.put(1, b"a")
    net.tick(2 * TIMEOUT)
    assert leader.peer_decided(4) is not None  # the learner answers heartbeats
    for voter in (2, 3):
        net.cut |= {(1, voter), (voter, 1)}
    net.tick(TIMEOUT + 2)
    assert not leader.is_leader and no_quorum_count(leader) == 1


def test_after_a_promotion_the_new_voters_answers_count_and_the_new_majority_is_needed():
    """Membership: once a promotion governs, the quorum is that of the new configuration. With four
    voters {1, 2, 3, 4} a leader that hears 2 and 4 (three of four with itself) leads on; one that hears
    only 4 (two of four) steps down, although two of the old three voters would have been a majority of
    the old configuration. Learner 4 counts once it is a voter."""
    net = Net(voters=(1, 2, 3), learners=(4,))
    leader = net.elect(1)
    leader.propose_change(leader.config.promote(4))
    net.drain(1)
    net.settle()
    for _ in range(10 * TIMEOUT):
        if leader.config_for(leader.decided_slot + 1).node_ids == (1, 2, 3, 4) and not leader.change_in_progress:
            break
        net.put(1, b"fill")
    assert leader.config_for(leader.decided_slot + 1).node_ids == (1, 2, 3, 4)
    # Whole nodes are cut off (not single links), so that their elections reach nobody.
    net.isolate(3)
    net.tick(5 * TIMEOUT)
    assert leader.is_leader and no_quorum_count(leader) == 0  # {1, 2, 4}: three of four
    net.isolate(2)
    net.tick(TIMEOUT + 2)
    assert not leader.is_leader and no_quorum_count(leader) == 1  # {1, 4}: two of four
