"""Applied slots' values are kept packed (``paxos.replica``: ``_pack``/``_unpack``), and every reader
of a kept value still sees the tuple of commands that was decided.

Why packing: a tuple of small objects per slot, freed only at the next snapshot, interleaves in the
allocator's arenas with the state machine's entries, which live on, so a node's memory stays at its
highest log size; one ``bytes`` per slot does not (docs/benchmarks.md, session 12). What is checked,
on replicas over an in-memory network (tests/paxos/test_check_quorum.py's ``Net``):

* once handed out in ``Actions.apply``, a slot's decided value and the value the node accepted there
  are the same ``bytes`` object on every node;
* ``durable_state`` gives the tuples back, and ``durable_state(packed=True)`` (what the store's log
  rewrite gets, to unpack one record at a time) the kept bytes, which ``unpack_value`` reads;
* a follower that missed slots catches up from the leader's packed values and applies the same
  commands; a new leader learns the decided values from promises (packed on the voters) and the logs
  agree; a retransmitted Accept for an applied slot is a duplicate, not a second value;
* a replica rebuilt from ``durable_state`` (a restart) applies the recovered slots and packs them too.
"""
from __future__ import annotations

import random

from test_check_quorum import Net  # (tests/paxos is on sys.path: pytest prepends it)

from paxos.actions import unpack_value
from paxos.membership import Config
from paxos.messages import Accept
from paxos.replica import Replica


def packed_slots(replica: Replica) -> dict[int, bytes]:
    kept = replica._decided  # noqa: SLF001  (the representation is what this test is about)
    return {slot: value for slot, value in kept.items() if slot <= replica.applied_slot}


def test_applied_values_are_kept_as_one_bytes_object_shared_with_the_accepted_value():
    net = Net()
    net.elect(1)
    net.put(1, b"a", b"b", b"c")
    net.tick(2)  # lazy decides reach the followers
    for node_id, replica in net.nodes.items():
        assert net.applied[node_id] == [b"a", b"b", b"c"]
        kept = packed_slots(replica)
        assert kept, node_id
        for slot, value in kept.items():
            assert type(value) is bytes, (node_id, slot, value)
            accepted = replica._accepted.get(slot)  # noqa: SLF001
            if accepted is not None:
                assert accepted[1] is value, (node_id, slot)
        state = replica.durable_state()
        as_kept = replica.durable_state(packed=True)
        assert as_kept.decided == kept | {s: v for s, v in state.decided.items() if s not in kept}
        assert {s: unpack_value(v) for s, v in as_kept.decided.items()} == state.decided
        assert all(type(v) is tuple for v in state.decided.values())
        assert all(type(v) is tuple for _b, v in state.accepted.values())
        assert [c for s in sorted(state.decided) for c in state.decided[s]] == [b"a", b"b", b"c"]


def test_a_lagging_follower_catches_up_from_packed_values():
    net = Net()
    net.elect(1)
    net.put(1, b"before")
    net.cut |= {(1, 3), (3, 1)}
    net.put(1, b"x", b"y", b"z")
    net.tick(2)
    assert net.applied[3] == [b"before"]
    assert all(type(v) is bytes for v in packed_slots(net.nodes[1]).values())
    net.cut.clear()
    net.tick(4)  # the leader's decided_slot makes node 3 ask for what it lacks
    assert net.applied[3] == net.applied[1] == [b"before", b"x", b"y", b"z"]


def test_a_new_leader_learns_decided_values_from_packed_promises_and_the_logs_agree():
    net = Net()
    net.elect(1)
    net.put(1, b"one", b"two")
    net.tick(2)
    net.isolate(1)
    net.elect(2)  # phase 1 over slots that nodes 2 and 3 applied and packed
    net.put(2, b"three")
    net.cut.clear()
    net.tick(3 * 10)
    for node_id in net.nodes:
        assert net.applied[node_id] == [b"one", b"two", b"three"], node_id


def test_a_retransmitted_accept_for_an_applied_slot_is_a_duplicate():
    net = Net()
    leader = net.elect(1)
    net.put(1, b"v")
    net.tick(2)
    follower = net.nodes[2]
    slot = max(packed_slots(follower))
    ballot, kept = follower._accepted[slot]  # noqa: SLF001
    assert type(kept) is bytes
    before = follower.status()["counters"].get("duplicate", 0)
    value = leader.durable_state().decided[slot]
    follower.receive(Accept(sender=1, ballot=ballot, slot=slot, value=value, decided_slot=leader.decided_slot))
    follower.take_actions()
    assert follower.status()["counters"].get("duplicate", 0) == before + 1
    assert follower._accepted[slot][1] is kept  # noqa: SLF001


def test_a_replica_rebuilt_from_its_durable_state_applies_and_packs_the_recovered_slots():
    net = Net()
    net.elect(1)
    net.put(1, b"p", b"q")
    net.tick(2)
    state = net.nodes[3].durable_state()
    again = Replica(3, Config(node_ids=(1, 2, 3), alpha=2), rng=random.Random(3), state=state,
                    options=net.options)
    actions = again.take_actions()
    assert [c for _slot, batch in actions.apply for c in batch] == [b"p", b"q"]
    assert all(type(v) is bytes for v in packed_slots(again).values())
    assert again.durable_state().decided == state.decided
