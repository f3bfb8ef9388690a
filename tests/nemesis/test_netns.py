"""Real partitions: each node in its own network namespace, veth pairs to a bridge, links set down.

The same workload and final checks as ``test_nemesis.py`` (linearizable history, acknowledged writes
survive a crash of every node, replicas converge), but the faults are made by the kernel: a node's
link to the bridge goes down, so its packets (to peers and to clients) are lost rather than refused.
The nemesis isolates the leader most of the time, sometimes another node, sometimes two nodes at once
(no majority anywhere). Both engines, as in ``test_nemesis.py`` (the classic one for 15 s of faults
instead of 25). Skipped with the reason when namespaces cannot be created (not root, no ``ip netns``,
a container without the capability).
"""
from __future__ import annotations

import random

import pytest
import trio

from .cluster import NemesisCluster
from .netns import NetnsTopology, NetnsUnavailable
from .test_nemesis import _note, _run_scenario, _sleep_until_or

pytestmark = pytest.mark.slow


@pytest.fixture
def topology():
    try:
        topo = NetnsTopology.create(3)
    except NetnsUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    try:
        yield topo
    finally:
        topo.close()


async def netns_nemesis(cluster, rng: random.Random, stop_at: float, events) -> None:
    topo = cluster.topo
    while await _sleep_until_or(stop_at, rng.uniform(1.0, 3.0)):
        leader = await cluster.leader()
        roll = rng.random()
        if roll < 0.15:
            victims = rng.sample(cluster.ids, 2)
        elif leader is not None and roll < 0.75:
            victims = [leader]
        else:
            victims = [rng.choice(cluster.ids)]
        for v in victims:
            topo.isolate(v)
        _note(events, f"link down: {victims} (leader {leader})")
        await trio.sleep(rng.uniform(1.5, 4.0))
        topo.heal()
        _note(events, "links up")
    topo.heal()


# (engine, seconds of faults): the classic engine's run is shorter (CI time; docs/testing.md).
@pytest.mark.parametrize("engine,duration", [("core", 25), ("classic", 15)], ids=["core", "classic"])
async def test_netns_link_down_partitions(tmp_path, topology, engine, duration):
    def make_cluster(root, extra_args=None, engine="core"):
        cluster = NemesisCluster(root, extra_args=extra_args, addresses=topology.addresses(),
                                 command_prefix=topology.command_prefix, engine=engine)
        cluster.topo = topology
        plain_heal = cluster.heal

        def heal() -> None:
            topology.heal()
            plain_heal()

        cluster.heal = heal
        return cluster

    await _run_scenario(tmp_path, netns_nemesis, duration=duration, engine=engine, make_cluster=make_cluster)
