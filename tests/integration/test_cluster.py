"""Real 3-process clusters on 127.0.0.1: durability and failover of acknowledged writes.

Every test starts ``kv serve`` processes with OS-assigned ports and temporary data directories, drives
them through ``kvstore.client``, injects a fault (SIGKILL, SIGSTOP, a wiped data dir), and checks the
one property that matters: every write the cluster acknowledged is there afterwards, and replicas agree.
Processes are torn down in ``finally``. Waits poll against deadlines; nothing sleeps for a fixed time to
"let things settle".
"""
from __future__ import annotations

import time

import pytest
import trio

from kvstore.client import Unavailable, connect

from .harness import Cluster

pytestmark = pytest.mark.slow

# kv serve --engine: the basic tests run for both engines (issue 18); the rest for the default (core).
ENGINES = ["core", "classic"]


async def _writer(kv, prefix: str, count: int, acked: dict, stop: trio.Event) -> None:
    """Write unique keys one after another; record the ones the cluster acknowledged."""
    for i in range(count):
        if stop.is_set():
            return
        key, value = f"{prefix}-{i:05d}", f"v-{prefix}-{i}"
        try:
            await kv.put(key, value)
        except Unavailable:
            continue  # not acknowledged: may or may not be there, we only check acknowledged ones
        acked[key] = value


async def _check_all(endpoints, acked: dict) -> None:
    async with connect(endpoints, timeout=20) as kv:
        items = dict(await kv.list(""))
    missing = {k: v for k, v in acked.items() if items.get(k) != v}
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {list(missing.items())[:5]}"


@pytest.mark.parametrize("engine", ENGINES)
async def test_put_get_delete_cas_list(tmp_path, engine):
    cluster = Cluster(tmp_path, extra_args=["--engine", engine])
    try:
        cluster.start_all()
        cluster.leader()
        async with connect(cluster.endpoints, timeout=15) as kv:
            rev1 = await kv.put("a", "1")
            rev2 = await kv.put("b", b"\x00\xffbinary")
            assert rev2 > rev1
            assert await kv.get("a") == "1"
            assert await kv.get("b") == b"\x00\xffbinary"
            assert await kv.get("missing") is None
            assert await kv.cas("a", expected="1", new="2") is True
            assert await kv.cas("a", expected="1", new="3") is False
            assert await kv.cas("c", expected=None, new="new") is True
            assert await kv.list("") == [("a", "2"), ("b", b"\x00\xffbinary"), ("c", "new")]
            assert await kv.delete("a") is True
            assert await kv.delete("a") is False
        assert {s["engine"] for s in cluster.wait_converged()} == {engine}
    finally:
        cluster.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_sigkill_leader_during_writes_loses_no_acknowledged_write(tmp_path, engine):
    cluster = Cluster(tmp_path, extra_args=["--engine", engine])
    acked: dict[str, str] = {}
    try:
        cluster.start_all()
        leader = cluster.leader()
        stop = trio.Event()
        async with connect(cluster.endpoints, timeout=10) as kv:
            async with trio.open_nursery() as nursery:
                for w in range(4):
                    nursery.start_soon(_writer, kv, f"w{w}", 400, acked, stop)
                with trio.move_on_after(60):
                    while len(acked) < 100:
                        await trio.sleep(0.02)
                cluster.kill(leader)
                before_kill = len(acked)
                with trio.move_on_after(60):
                    while len(acked) < before_kill + 100:  # writes go on through a new leader
                        await trio.sleep(0.02)
                cluster.start(leader)
                with trio.move_on_after(60):
                    while len(acked) < before_kill + 200:
                        await trio.sleep(0.02)
                stop.set()
        assert len(acked) >= before_kill + 100, "writes did not resume after the leader was killed"
        await _check_all(cluster.endpoints, acked)
        cluster.wait_converged(deadline_s=30)
        if engine == "core":
            # Each node's log names the leaders it followed (QA: elections left no trace in any log).
            new = cluster.leader()
            logs = {i: (tmp_path / f"node-{i}.log").read_text(errors="replace") for i in cluster.ports}
            assert f"node {leader}: leading at ballot" in logs[leader], logs[leader][-2000:]
            if new != leader:
                assert f"node {new}: leading at ballot" in logs[new]
                assert f"(the leader was node {leader} at (" in logs[new]
                other = next(i for i in cluster.ports if i not in (leader, new))
                assert f"node {other}: node {new} leads at ballot" in logs[other], logs[other][-2000:]
    finally:
        cluster.close()


@pytest.mark.parametrize("engine", ENGINES)
async def test_kill_all_at_once_and_restart_keeps_acknowledged_writes(tmp_path, engine):
    cluster = Cluster(tmp_path, extra_args=["--engine", engine])
    acked: dict[str, str] = {}
    try:
        cluster.start_all()
        cluster.leader()
        stop = trio.Event()
        async with connect(cluster.endpoints, timeout=5) as kv:
            async with trio.open_nursery() as nursery:
                for w in range(8):
                    nursery.start_soon(_writer, kv, f"w{w}", 10_000, acked, stop)
                with trio.move_on_after(60):
                    while len(acked) < 300:
                        await trio.sleep(0.01)
                for node_id in cluster.ports:  # all three at once, mid-write
                    cluster.procs[node_id].kill()
                stop.set()
        for node_id in cluster.ports:
            cluster.procs[node_id].wait(timeout=10)
        assert len(acked) >= 300
        cluster.start_all()
        cluster.leader(deadline_s=30)
        await _check_all(cluster.endpoints, acked)
        cluster.wait_converged(deadline_s=30)
    finally:
        cluster.close()


async def test_a_node_of_another_engine_is_refused_and_the_others_keep_serving(tmp_path):
    """kv serve --engine: node 3 runs classic among core nodes. Each side refuses the other's peer
    links, with a log line naming both engines; nodes 1 and 2 (a majority) keep serving writes."""
    cluster = Cluster(tmp_path, extra_args=["--engine", "core"])
    try:
        cluster.start(1)
        cluster.start(2)
        cluster.extra_args = ["--engine", "classic"]
        cluster.start(3)
        cluster.extra_args = ["--engine", "core"]
        cluster.leader(among=[1, 2])
        async with connect(cluster.endpoints[:2], timeout=15) as kv:
            for i in range(5):
                await kv.put(f"k{i}", str(i))
            assert await kv.get("k4") == "4"
        statuses = cluster.wait_converged(among=[1, 2])
        assert {s["engine"] for s in statuses} == {"core"}
        odd = cluster.status(3)
        assert odd is not None and odd["engine"] == "classic" and not odd["is_leader"]
        assert odd["applied_slot"] < statuses[0]["applied_slot"]  # it learnt nothing from the core nodes
        expected = {1: "runs the 'classic' engine, we run 'core'", 3: "runs the 'core' engine, we run 'classic'"}
        deadline = time.monotonic() + 20
        while True:
            logs = {n: (tmp_path / f"node-{n}.log").read_text(errors="replace") for n in expected}
            if all(expected[n] in logs[n] for n in expected) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for n, line in expected.items():
            assert line in logs[n], f"node {n}'s log does not say {line!r}"
    finally:
        cluster.close()


async def test_a_node_down_while_the_log_is_compacted_catches_up_by_snapshot(tmp_path):
    """A follower down while the others compact past everything it has comes back through a snapshot
    install. (Before incarnations this test wiped the follower's directory; a wiped node is now refused,
    see tests/integration/test_lost_disk.py.)"""
    cluster = Cluster(tmp_path, extra_args=["--snapshot-every", "50"])
    acked: dict[str, str] = {}
    try:
        cluster.start_all()
        leader = cluster.leader()
        victim = next(i for i in cluster.ports if i != leader)
        async with connect(cluster.endpoints, timeout=10) as kv:
            await _writer(kv, "before", 120, acked, trio.Event())
        cluster.kill(victim)
        async with connect(cluster.endpoints, timeout=10) as kv:
            await _writer(kv, "during", 120, acked, trio.Event())  # compaction passes the victim by
        cluster.start(victim)
        statuses = cluster.wait_converged(deadline_s=30)
        assert all(s["keys"] == len(acked) for s in statuses)
        assert max(s["snapshot_slot"] for s in statuses) > 0, "the log was never compacted"
        installed = next(s for s in statuses if s["id"] == victim)["counters"].get("snapshots_installed", 0)
        assert installed >= 1, "the returning follower did not catch up by snapshot"
        await _check_all(cluster.endpoints, acked)
    finally:
        cluster.close()


async def test_paused_old_leader_serves_no_stale_read(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start_all()
        old = cluster.leader()
        old_endpoint = f"127.0.0.1:{cluster.ports[old]}"
        async with connect(cluster.endpoints, timeout=10) as kv:
            await kv.put("k", "old")
        cluster.pause(old)
        try:
            others = [i for i in cluster.ports if i != old]
            new = cluster.leader(among=others, deadline_s=30)
            assert new != old
            async with connect([f"127.0.0.1:{cluster.ports[new]}"], timeout=10) as kv:
                await kv.put("k", "new")
        finally:
            cluster.resume(old)
        # Ask the old leader first: it must not answer from its stale state.
        async with connect([old_endpoint], timeout=10) as kv:
            assert await kv.get("k") == "new"
    finally:
        cluster.close()


@pytest.mark.parametrize("size", [1, 5])
async def test_clusters_of_one_and_five_nodes_serve_and_survive_a_restart(tmp_path, size):
    cluster = Cluster(tmp_path, size)
    acked: dict[str, str] = {}
    try:
        cluster.start_all()
        leader = cluster.leader(deadline_s=30)
        async with connect(cluster.endpoints, timeout=15) as kv:
            await _writer(kv, "a", 50, acked, trio.Event())
        cluster.kill(leader)  # with 1 node: total outage; with 5: a new leader takes over
        if size == 1:
            cluster.start(leader)
        async with connect(cluster.endpoints, timeout=20) as kv:
            await _writer(kv, "b", 50, acked, trio.Event())
        if size == 5:
            cluster.start(leader)
        assert len(acked) == 100
        await _check_all(cluster.endpoints, acked)
        cluster.wait_converged(deadline_s=30)
    finally:
        cluster.close()
