"""Crash a real node at each failpoint of its I/O path, restart it, and check nothing acknowledged is lost.

For each failpoint (``kvstore.failpoints``): a 3-node cluster (snapshots every 20 applied commands, so
the compaction failpoints are reached) where node 1 runs with ``KV_FAILPOINTS=<name>=exit``. Writers put
unique keys until node 1 dies at that point (its exit code is the failpoint's 1, and its log holds no
traceback); for ``before_reply``, which only the leader reaches, the other nodes are bounced until node
1 leads. Node 1 is restarted without the failpoint, more writes go in, then: every acknowledged write is
present with its value, and all three replicas report the same state_hash at the same applied_slot.
Engines (``kv serve --engine core|classic``, issue 18): the core crashes at every failpoint, the
classic engine at one of each kind (``CLASSIC_FAILPOINTS``: the log's fsync, the snapshot file, the
log rewrite after compaction), to keep CI in budget; the nodes' status must name the engine under test.
"""
from __future__ import annotations

import pytest
import trio

from kvstore.client import RequestError, Unavailable, connect

from .cluster import NemesisCluster

pytestmark = pytest.mark.slow

FAILPOINTS = ["before_fsync", "after_fsync", "before_snapshot_rename", "after_snapshot_rename",
              "before_log_rename", "after_log_rename", "before_reply"]
VICTIM = 1
CLASSIC_FAILPOINTS = ["before_fsync", "after_snapshot_rename", "before_log_rename"]
CASES = [(f, "core") for f in FAILPOINTS] + [(f, "classic") for f in CLASSIC_FAILPOINTS]


async def _writers(endpoints, prefix: str, acked: dict, stop: trio.Event, count: int = 4) -> None:
    async def one(w: int) -> None:
        async with connect(endpoints, timeout=5) as kv:
            for i in range(100_000):
                if stop.is_set():
                    return
                key, value = f"{prefix}{w}-{i}", f"v{w}-{i}"
                try:
                    await kv.put(key, value)
                except (Unavailable, RequestError):
                    continue
                acked[key] = value

    async with trio.open_nursery() as nursery:
        for w in range(count):
            nursery.start_soon(one, w)


@pytest.mark.parametrize("failpoint,engine", CASES, ids=[f"{f}-{e}" for f, e in CASES])
async def test_crash_at_failpoint_loses_no_acknowledged_write(tmp_path, failpoint, engine):
    cluster = NemesisCluster(tmp_path, extra_args=["--snapshot-every", "20"], engine=engine)
    acked: dict[str, str] = {}
    try:
        for node_id in cluster.ids:
            cluster.start(node_id, env={"KV_FAILPOINTS": f"{failpoint}=exit"} if node_id == VICTIM else None)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_writers, cluster.endpoints, "a", acked, stop)
            bounces = 0
            with trio.move_on_after(60):
                while cluster.alive(VICTIM):
                    await trio.sleep(0.2)
                    if failpoint == "before_reply" and bounces < 20:
                        leader = await cluster.leader()
                        if leader is not None and leader != VICTIM:
                            cluster.kill(leader)  # force an election, hoping node 1 wins it
                            cluster.start(leader)
                            bounces += 1
                            await trio.sleep(1.0)
            died = not cluster.alive(VICTIM)
            stop.set()
        assert died, f"node {VICTIM} never reached failpoint {failpoint} ({len(acked)} writes acked)"
        assert cluster.procs[VICTIM].returncode == 1
        log_text = cluster.log_path(VICTIM).read_text(errors="replace")
        assert "Traceback" not in log_text, f"node {VICTIM} crashed, not at the failpoint:\n{log_text[-2000:]}"

        cluster.start(VICTIM)  # without the failpoint
        cluster.heal()
        await cluster.wait_leader()
        stop2 = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_writers, cluster.endpoints, "b", acked, stop2)
            with trio.move_on_after(30):
                while sum(1 for k in acked if k.startswith("b")) < 60:
                    await trio.sleep(0.05)
            stop2.set()
        assert any(k.startswith("b") for k in acked), "no write succeeded after the restart"
        statuses = await cluster.wait_converged()
        async with connect([cluster.endpoint(VICTIM)], timeout=10) as kv:
            items = dict(await kv.list("", consistency="s"))  # the restarted node's own state
        lost = {k: v for k, v in acked.items() if items.get(k) != v}
        assert not lost, f"{len(lost)} acknowledged writes lost after a crash at {failpoint}: {list(lost.items())[:5]}"
        assert len({s["state_hash"] for s in statuses.values()}) == 1
        cluster.assert_engine(statuses)
    finally:
        cluster.close()
