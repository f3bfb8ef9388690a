"""What carrying phase 1 into every slot saves: the seed used as it comes, against the classic engine.

How: ``seed_instance_per_command`` runs the essential-paxos classes the way their own documentation
shows, one ``practical.Node`` per node per command, the first node calling ``prepare()`` for each
instance, acceptors persisting before every Promise and Accepted (the ``AutoSaveMixin`` usage
contract) and Accepted broadcast to every learner. A synchronous in-memory network delivers calls in
FIFO order and counts what crosses between nodes: messages, acceptor saves (one fsync each) and the
round trips the proposer waits before its value is chosen. ``classic_engine_per_command`` drives
three ``ClassicReplica`` objects one command at a time and counts the same things from their
``Actions``. The figures are exact, so the test pins them; docs/paxos.md quotes them.
"""
from __future__ import annotations

import random
from collections import deque

from paxos import practical
from paxos.classic import ClassicReplica
from paxos.replica import Config, Options


class _Net:
    """FIFO delivery of seed callbacks between the nodes of one instance, counting what crosses."""

    def __init__(self, nodes: dict) -> None:
        self.nodes = nodes
        self.queue: deque = deque()
        self.messages = 0
        self.saves = 0
        self.chosen = None

    def post(self, src: int, dst: int, method: str, *args) -> None:
        if src != dst:
            self.messages += 1
        self.queue.append((dst, method, args))

    def run(self) -> None:
        while self.queue:
            dst, method, args = self.queue.popleft()
            node = self.nodes[dst]
            getattr(node, method)(*args)
            if node.persistance_required:  # the seed's usage contract: save, then persisted()
                self.saves += 1
                node.persisted()


class _Messenger(practical.Messenger):
    def __init__(self, net: _Net, uid: int) -> None:
        self.net, self.uid = net, uid

    def send_prepare(self, proposal_id):
        for dst in self.net.nodes:
            self.net.post(self.uid, dst, "recv_prepare", self.uid, proposal_id)

    def send_promise(self, proposer_uid, proposal_id, previous_id, accepted_value):
        self.net.post(self.uid, proposer_uid, "recv_promise", self.uid, proposal_id, previous_id, accepted_value)

    def send_accept(self, proposal_id, proposal_value):
        for dst in self.net.nodes:
            self.net.post(self.uid, dst, "recv_accept_request", self.uid, proposal_id, proposal_value)

    def send_accepted(self, proposal_id, accepted_value):
        for dst in self.net.nodes:
            self.net.post(self.uid, dst, "recv_accepted", self.uid, proposal_id, accepted_value)

    def on_resolution(self, proposal_id, value):
        self.net.chosen = value


def seed_instance_per_command(nodes: int = 3, commands: int = 10) -> tuple[float, float]:
    """Messages and acceptor saves per command, one seed instance per command, phase 1 each time."""
    messages = saves = 0
    quorum = nodes // 2 + 1
    for i in range(commands):
        net = _Net({})
        net.nodes.update({uid: practical.Node(_Messenger(net, uid), uid, quorum) for uid in range(1, nodes + 1)})
        proposer = net.nodes[1]
        proposer.set_proposal((b"c%d" % i,))
        proposer.prepare()
        net.run()
        assert net.chosen == (b"c%d" % i,)
        messages += net.messages
        saves += net.saves
    return messages / commands, saves / commands


def classic_engine_per_command(nodes: int = 3, commands: int = 10) -> tuple[float, float]:
    """Messages and fsync-worthy batches per command, the classic engine, one command at a time."""
    config = Config(node_ids=tuple(range(1, nodes + 1)))
    replicas = {n: ClassicReplica(n, config, rng=random.Random(n), options=Options()) for n in config.node_ids}
    counted = {"messages": 0, "fsyncs": 0}
    network: deque = deque()

    def collect(replica) -> None:
        actions = replica.take_actions()
        counted["messages"] += len(actions.send)
        counted["fsyncs"] += bool(actions.persist)
        network.extend(actions.send)

    def settle() -> None:
        while network:
            to, message = network.popleft()
            replicas[to].receive(message)
            collect(replicas[to])

    for _ in range(100):
        for replica in replicas.values():
            replica.tick()
            collect(replica)
        settle()
        if any(r.is_leader for r in replicas.values()):
            break
    leader = next(r for r in replicas.values() if r.is_leader)
    counted["messages"] = counted["fsyncs"] = 0
    for i in range(commands):
        leader.propose(b"c%d" % i)
        collect(leader)
        settle()
    assert all(r.decided_slot == commands for r in replicas.values())
    return counted["messages"] / commands, counted["fsyncs"] / commands


def test_the_seed_as_it_comes_pays_phase_one_for_every_command():
    """Paxos Made Simple, section 2: Prepare to all, Promise from all, Accept! to all, Accepted from
    every acceptor to every learner; each acceptor saves its promise and its acceptance. On three
    nodes: 2 + 2 + 2 + 6 = 12 messages and 6 saves per command, and two round trips (phase 1, then
    phase 2) before the value is chosen; on five: 4 + 4 + 4 + 20 = 32 messages and 10 saves."""
    assert seed_instance_per_command(3) == (12, 6)
    assert seed_instance_per_command(5) == (32, 10)


def test_the_classic_engine_carries_phase_one_and_pays_only_phase_two():
    """Section 3: phase 1 once for all slots. Per command, one request at a time: an Accept to each
    follower, an Accepted back to the leader (the distinguished learner, section 2.3), a Decide to
    each follower; one fsync for each node's acceptance and each node's DecideRecord (the seed keeps no
    record of decisions: a store must). One round trip before the value is chosen."""
    assert classic_engine_per_command(3) == (6, 6)
    assert classic_engine_per_command(5) == (12, 10)
