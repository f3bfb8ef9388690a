"""A gray failure: a voter whose disk is slow, not broken, while the majority needs it.

How: three ``kv serve`` processes started with ``KV_FAILPOINTS="fsync_log=sleep<ms>@<flag file>"``
(``kvstore.failpoints``): while a node's flag file exists, every fdatasync of its log takes that much
longer, in whichever thread makes it, as on a slow disk. One follower is killed, so the only majority
left is the leader and the slow follower, and the slow follower's fsyncs (0.5 s) are longer than the
election timeout (0.3 s).

What must hold (QA, session 21: with the follower's disk throttled to 0.5-5 s per fsync, no write
succeeded in 25 s and about a hundred elections ran): the cluster keeps one leader after at most an
election or two at the onset, and writes go on at the slow disk's pace; every acknowledged write is on
every node once the disk is healed and the stopped node is back. Two changes made it so: a follower's
heartbeat acks no longer wait behind its fsyncs (``Node._send_acks_early``), and a candidate whose
phase 1 times out with no higher ballot in sight asks again at the same ballot instead of making the
slow voter write one more promise (``Replica._retry_prepare``).
"""
from __future__ import annotations

import pytest
import trio

from kvstore.client import RequestError, Unavailable, connect

from .cluster import NemesisCluster

pytestmark = pytest.mark.slow

SLOW_MS = 500  # per fsync of the slow node's log, above the cluster's 0.3 s election timeout
SLOW_SECONDS = 8.0  # how long the disk stays slow
PUT_TIMEOUT_S = 5.0


async def _put(endpoints, key: str, acked: dict) -> bool:
    async with connect(endpoints, timeout=PUT_TIMEOUT_S) as kv:
        try:
            await kv.put(key, "v")
        except (Unavailable, RequestError):
            return False
    acked[key] = "v"
    return True


@pytest.mark.parametrize("slow_one", ["follower", "leader"])
async def test_a_slow_voter_the_majority_needs_keeps_one_leader_and_writes_go_on(tmp_path, slow_one):
    cluster = NemesisCluster(tmp_path)
    acked: dict[str, str] = {}
    try:
        flags = {i: cluster.root / f"slow-disk-{i}" for i in cluster.ids}
        for node_id in cluster.ids:
            cluster.start(node_id, env={"KV_FAILPOINTS": f"fsync_log=sleep{SLOW_MS}@{flags[node_id]}"})
        leader = await cluster.wait_leader()
        for i in range(5):
            assert await _put(cluster.endpoints, f"before-{i}", acked)
        follower, down = [i for i in cluster.ids if i != leader]
        slow = follower if slow_one == "follower" else leader
        leader = leader if slow_one == "follower" else follower  # (the two nodes left, whichever leads)
        cluster.kill(down)
        flags[slow].touch()
        live = [cluster.endpoint(leader), cluster.endpoint(slow)]
        ballots: set = set()
        puts = failed = 0
        stop_at = trio.current_time() + SLOW_SECONDS
        while trio.current_time() < stop_at:  # bounded by time (each put by its timeout)
            if await _put(live, f"slow-{puts}", acked):
                puts += 1
            else:
                failed += 1
            for node_id in (leader, slow):
                status = await cluster.status(node_id, timeout=2.0)
                if status is not None and status.get("is_leader"):
                    ballots.add(str(status.get("ballot")))
        print(f"slow voter {slow}: {puts} writes acknowledged, {failed} failed, leader ballots {sorted(ballots)}")
        assert len(ballots) <= 3, (f"leadership changed {len(ballots) - 1} times in {SLOW_SECONDS} s with a slow "
                                   f"voter: {sorted(ballots)}\n{cluster.logs_tail()}")
        # Each write waits for a 0.5 s fsync on the slow node (group commit shares one between the
        # writes that arrive meanwhile); one at a time that is at most two a second.
        assert puts >= 4, f"{puts} writes acknowledged, {failed} failed, in {SLOW_SECONDS} s\n{cluster.logs_tail()}"

        flags[slow].unlink()
        cluster.start(down)
        cluster.assert_engine(await cluster.wait_converged())
        for node_id in cluster.ids:
            async with connect([cluster.endpoint(node_id)], timeout=10) as kv:
                items = dict(await kv.list("", consistency="s"))
            lost = sorted(k for k in acked if items.get(k) != "v")
            assert not lost, f"node {node_id} lacks {len(lost)} acknowledged writes: {lost[:5]}"
    finally:
        cluster.close()
