"""A node that lost its disk can never cost an acknowledged write (issue 17's story, real processes).

Three ``kv serve`` processes found a cluster. Node 3 is killed and ``acked-key`` is written (nodes 1
and 2 accept it). Nodes 1 and 2 are killed, node 2's data directory is emptied (a lost disk) and
nodes 2 and 3 are started again. Before incarnations, they elected a leader, said "key not found" and
decided another command in slot 1. Now node 2's new directory has a new incarnation, node 3 knows the
old one, so node 2 refuses to start (exit 1, the reason in its log) and node 3 alone is unavailable:
a linearizable read fails, it never says the key is missing. Once node 1 is back, nodes 1 and 3 serve
``acked-key`` and agree.
"""
from __future__ import annotations

import shutil

import pytest
import trio

from kvstore.client import Unavailable, connect

from ..nemesis.cluster import NemesisCluster

pytestmark = pytest.mark.slow


async def _wait_exit(cluster: NemesisCluster, node_id: int, deadline_s: float) -> int | None:
    with trio.move_on_after(deadline_s):
        while cluster.alive(node_id):
            await trio.sleep(0.1)
    return cluster.procs[node_id].poll()


async def test_a_wiped_node_is_refused_and_the_acknowledged_write_survives(tmp_path):
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        await cluster.wait_leader()
        cluster.kill(3)
        async with connect(cluster.endpoints, timeout=10) as kv:
            await kv.put("acked-key", "precious")
        cluster.kill(1)
        cluster.kill(2)
        shutil.rmtree(cluster.data_dir(2))

        cluster.start(2)
        cluster.start(3)
        code = await _wait_exit(cluster, 2, 30)
        assert code == 1, f"the wiped node 2 did not refuse to start (exit {code})\n{cluster.logs_tail()}"
        log_text = cluster.log_path(2).read_text(errors="replace")
        assert "lost its data" in log_text and "node 3 knows node 2 as incarnation" in log_text, log_text[-2000:]
        last = log_text.strip().splitlines()[-1]  # kv serve's one error line: the refusal itself
        assert last.startswith("Error: ") and "lost its data" in last, last
        async with connect([cluster.endpoint(3)], timeout=2) as kv:
            with pytest.raises(Unavailable):
                await kv.get("acked-key")  # linearizable: no leader, so unavailable, never "not found"

        cluster.start(1)
        await cluster.wait_leader(among=[1, 3])
        async with connect([cluster.endpoint(1), cluster.endpoint(3)], timeout=10) as kv:
            assert await kv.get("acked-key") == "precious"
            await kv.put("after", "1")
        statuses = {i: await cluster.status(i) for i in (1, 3)}
        with trio.move_on_after(20):
            while len({(s["applied_slot"], s["state_hash"]) for s in statuses.values()}) != 1:
                await trio.sleep(0.2)
                statuses = {i: await cluster.status(i) for i in (1, 3)}
        assert len({(s["applied_slot"], s["state_hash"]) for s in statuses.values()}) == 1, statuses
        async with connect([cluster.endpoint(3)], timeout=5) as kv:
            assert await kv.get("acked-key", consistency="s") == "precious"
    finally:
        cluster.close()


async def test_members_are_recorded_at_founding_and_survive_restarts(tmp_path):
    """Every node of a new cluster records the same incarnations, and a restart keeps its own."""
    cluster = NemesisCluster(tmp_path)
    try:
        cluster.start_all()
        await cluster.wait_leader()
        first = await cluster.statuses()
        members = {i: s["members"] for i, s in first.items()}
        assert all(m == members[1] for m in members.values()), members
        assert {int(k): v for k, v in members[1].items()} == {i: s["incarnation"] for i, s in first.items()}
        cluster.kill(2)
        cluster.start(2)
        await cluster.wait_leader()
        with trio.move_on_after(10):
            while await cluster.status(2) is None:
                await trio.sleep(0.1)
        assert (await cluster.status(2))["incarnation"] == first[2]["incarnation"]
    finally:
        cluster.close()
