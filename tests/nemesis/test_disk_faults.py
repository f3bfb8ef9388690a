"""Break a real node's disk while it runs: no write is acknowledged without a durable majority, and the
healthy majority serves again within an election timeout plus a margin.

How: three ``kv serve`` processes, each started with ``KV_FAILPOINTS="<point>=<error>@<flag file>"``
(``kvstore.failpoints``): while the node's flag file exists, every fsync (``fsync``) or log write
(``write_log``) in its storage fails with EIO or ENOSPC. The tests raise a flag and watch.

* A follower's fsync fails while the other follower is down: the only majority left needs the broken
  follower, so no put may be acknowledged (the bug this guards against: the failed follower answered
  a retransmitted Accept from memory and the leader acknowledged writes that were durable on one node).
  The broken follower reports ``disk: failed`` and why. Once the other follower is back, the leader and
  it serve puts again.
* The leader's fsync fails (or its log write hits ENOSPC, read-only mode): it stops voting at once, so
  the two healthy nodes elect a new leader and serve puts and linearizable reads; the old leader says
  it is not the leader, reports its disk state and still answers serializable reads.

Each test ends with the broken node restarted on a healthy disk: the replicas converge and every
acknowledged write is present on every node. Engines (``kv serve --engine core|classic``, issue 18):
the core runs every case, the classic engine one per kind of failure (a follower's fsync EIO, a
leader's fsync EIO, a leader's log write ENOSPC), to keep CI in budget; the nodes' status must name the
engine under test.
"""
from __future__ import annotations

import pytest
import trio

from kvstore.client import RequestError, Unavailable, connect

from .cluster import NemesisCluster

pytestmark = pytest.mark.slow

PUT_TIMEOUT_S = 2.0
# The nodes' election timeout is 30 ticks of 10 ms; the margin covers a loaded CI machine.
SERVING_AGAIN_DEADLINE_S = 10.0


def _start(cluster: NemesisCluster, point: str, error: str) -> dict[int, object]:
    flags = {i: cluster.root / f"break-disk-{i}" for i in cluster.ids}
    for node_id in cluster.ids:
        cluster.start(node_id, env={"KV_FAILPOINTS": f"{point}={error}@{flags[node_id]}"})
    return flags


async def _put(endpoints, key: str, value: str, acked: dict, timeout: float = PUT_TIMEOUT_S) -> bool:
    async with connect(endpoints, timeout=timeout) as kv:
        try:
            await kv.put(key, value)
        except (Unavailable, RequestError):
            return False
    acked[key] = value
    return True


async def _wait_put(endpoints, key: str, acked: dict, deadline_s: float) -> None:
    with trio.move_on_after(deadline_s):
        while not await _put(endpoints, key, "v", acked):
            await trio.sleep(0.05)
        return
    raise AssertionError(f"no put succeeded within {deadline_s}s")


async def _check_every_node_holds(cluster: NemesisCluster, acked: dict) -> None:
    cluster.assert_engine(await cluster.wait_converged())
    for node_id in cluster.ids:
        async with connect([cluster.endpoint(node_id)], timeout=10) as kv:
            items = dict(await kv.list("", consistency="s"))
        lost = {k: v for k, v in acked.items() if items.get(k) != v}
        assert not lost, f"node {node_id} lacks {len(lost)} acknowledged writes: {list(lost.items())[:5]}"


@pytest.mark.parametrize("error,engine", [("eio", "core"), ("enospc", "core"), ("eio", "classic")],
                         ids=["eio-core", "enospc-core", "eio-classic"])
async def test_a_follower_whose_fsync_fails_acknowledges_nothing(tmp_path, error, engine):
    cluster = NemesisCluster(tmp_path, engine=engine)
    acked: dict[str, str] = {}
    try:
        flags = _start(cluster, "fsync", error)
        leader = await cluster.wait_leader()
        for i in range(5):
            assert await _put(cluster.endpoints, f"before-{i}", "v", acked, timeout=10)
        broken, down = [i for i in cluster.ids if i != leader]
        cluster.kill(down)
        flags[broken].touch()
        for i in range(3):
            ok = await _put(cluster.endpoints, f"during-{i}", "v", acked)
            assert not ok, (f"put {i} was acknowledged while the only majority ({leader}, {broken}) had a "
                            f"broken disk on node {broken}\n{cluster.logs_tail()}")
        status = await cluster.status(broken)
        assert status is not None and status["disk"] == "failed", status
        assert "fsync" in status["disk_error"] and "restart" in status["disk_error"], status["disk_error"]
        assert "DISK FAILED" in cluster.log_path(broken).read_text(errors="replace")

        cluster.start(down)
        await _wait_put(cluster.endpoints, "after-restart", acked, SERVING_AGAIN_DEADLINE_S)

        flags[broken].unlink()
        cluster.kill(broken)
        cluster.start(broken)
        await _check_every_node_holds(cluster, acked)
    finally:
        cluster.close()


@pytest.mark.parametrize("point,error,state,engine", [
    ("fsync", "eio", "failed", "core"), ("fsync", "enospc", "failed", "core"),
    ("write_log", "enospc", "read-only", "core"),
    ("fsync", "eio", "failed", "classic"), ("write_log", "enospc", "read-only", "classic"),
], ids=["fsync-eio-core", "fsync-enospc-core", "write_log-enospc-core", "fsync-eio-classic",
        "write_log-enospc-classic"])
async def test_a_leader_that_cannot_write_steps_down_and_the_majority_serves(tmp_path, point, error, state, engine):
    cluster = NemesisCluster(tmp_path, engine=engine)
    acked: dict[str, str] = {}
    try:
        flags = _start(cluster, point, error)
        old = await cluster.wait_leader()
        for i in range(5):
            assert await _put(cluster.endpoints, f"before-{i}", "v", acked, timeout=10)
        flags[old].touch()
        # The next write reaches the old leader's disk and fails there; a client of every node then
        # finds the new leader by itself.
        await _put(cluster.endpoints, "trigger", "v", acked)
        await _wait_put(cluster.endpoints, "after-failover", acked, SERVING_AGAIN_DEADLINE_S)
        new = await cluster.wait_leader(deadline_s=SERVING_AGAIN_DEADLINE_S,
                                        among=[i for i in cluster.ids if i != old])
        assert new != old
        async with connect(cluster.endpoints, timeout=10) as kv:
            assert (await kv.get("after-failover")) is not None  # linearizable by default

        status = await cluster.status(old)
        assert status is not None, "the fenced node stopped answering status"
        assert status["disk"] == state and not status["is_leader"] and status["leader"] is None, status
        assert status["disk_error"], status
        async with connect([cluster.endpoint(old)], timeout=5) as kv:
            items = dict(await kv.list("before-", consistency="s"))  # serializable reads still work there
        assert all(items.get(f"before-{i}") == "v" for i in range(5)), items

        flags[old].unlink()
        cluster.kill(old)
        cluster.start(old)
        await _check_every_node_holds(cluster, acked)
    finally:
        cluster.close()
