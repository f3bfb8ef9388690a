"""Lazy learners in real 3-process clusters (see "Lazy learners" in kvstore/server.py's docstring).

Under sustained writes, the follower that is neither the leader nor the standby (the lowest id but the
leader's) leaves decided commands unapplied and adopts the leader's snapshots. These tests drive such a
load, watch that node through ``status``, and check what users rely on: a serializable read there sees
every command the node had decided when the read arrived, nothing acknowledged is lost when the leader
dies, and every replica reaches the same state once the load stops.
"""
from __future__ import annotations

from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

from kvstore.client import KVError, Unavailable, connect

from .harness import Cluster

pytestmark = pytest.mark.slow

WRITERS = 24  # requests in flight: enough for a decided slot every few milliseconds
KEYS_PER_WRITER = 20  # 480 keys: the state stays small next to the snapshot interval, as a learner needs


class Acked:
    """What the cluster acknowledged, per key: the values a key may hold at the end.

    A key's last acknowledged value, plus any value written after it whose write failed (it may or may
    not have been applied)."""

    def __init__(self) -> None:
        self.allowed: dict[str, set[str]] = {}
        self.count = 0

    def check(self, items: dict) -> None:
        wrong = {k: (items.get(k), v) for k, v in self.allowed.items() if items.get(k) not in v}
        assert not wrong, f"{len(wrong)} keys lost an acknowledged write, e.g. {list(wrong.items())[:5]}"


async def _write_until(kv, prefix: str, acked: Acked, stop: trio.Event) -> None:
    """Overwrite this writer's keys round and round until ``stop``."""
    i = 0
    while not stop.is_set():
        key, value = f"{prefix}-{i % KEYS_PER_WRITER:03d}", f"v{i}"
        i += 1
        try:
            await kv.put(key, value)
        except Unavailable:
            if key in acked.allowed:
                acked.allowed[key].add(value)
            continue
        acked.allowed[key] = {value}
        acked.count += 1


async def _status(kv, cluster: Cluster, node_id: int) -> dict | None:
    try:
        return await kv.status(f"127.0.0.1:{cluster.ports[node_id]}")
    except (KVError, OSError):
        return None


async def _wait_for(kv, cluster: Cluster, node_id: int, predicate, what: str, deadline_s: float = 30.0) -> dict:
    last = None
    with trio.move_on_after(deadline_s):
        while True:
            last = await _status(kv, cluster, node_id)
            if last is not None and predicate(last):
                return last
            await trio.sleep(0.05)
    raise AssertionError(f"node {node_id}: {what} not within {deadline_s}s; last status {last}")


async def _lazy_after_two_adoptions(kv, cluster: Cluster, learner: int) -> dict:
    return await _wait_for(kv, cluster, learner,
                           lambda s: s["learner"] == "lazy" and s["counters"].get("snapshots_adopted", 0) >= 2,
                           "lazy, with two adopted snapshots")


def _learner_and_standby(cluster: Cluster, leader: int) -> tuple[int, int]:
    others = sorted(i for i in cluster.ports if i != leader)
    return others[-1], others[0]


@contextmanager
def _cluster(tmp_path, *extra_args: str):
    """Three nodes that snapshot every 400 commands, started; torn down at the end."""
    cluster = Cluster(tmp_path, extra_args=["--snapshot-every", "400", *extra_args])
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()


@asynccontextmanager
async def _writes(cluster: Cluster, acked: Acked):
    """WRITERS writers overwrite their keys until the block ends; yields a client for the block."""
    stop = trio.Event()
    async with connect(cluster.endpoints, timeout=10) as kv:
        async with trio.open_nursery() as nursery:
            for w in range(WRITERS):
                nursery.start_soon(_write_until, kv, f"w{w}", acked, stop)
            try:
                yield kv
            finally:
                stop.set()


async def _check_acked(endpoints: list[str], acked: Acked) -> None:
    async with connect(endpoints, timeout=20) as kv:
        acked.check(dict(await kv.list("")))


async def test_lazy_learner_adopts_snapshots_serves_fresh_reads_and_converges(tmp_path):
    acked = Acked()
    with _cluster(tmp_path) as cluster:
        leader = cluster.leader()
        learner, standby = _learner_and_standby(cluster, leader)
        async with _writes(cluster, acked) as kv:
            lazy = await _lazy_after_two_adoptions(kv, cluster, learner)
            # The adopted snapshots stood in for commands it never applied.
            assert lazy["counters"].get("commands_not_applied", 0) > 0
            standby_status = await _status(kv, cluster, standby)
            assert standby_status is not None and standby_status["learner"] == "eager"
            assert standby_status["counters"].get("snapshots_adopted", 0) == 0

            # A write acknowledged now is applied on the leader; once the learner has decided that
            # far, a serializable read there must show it, lazy or not.
            await kv.put("marker", "m1")
            leader_status = await _status(kv, cluster, leader)
            await _wait_for(kv, cluster, learner, lambda s: s["decided_slot"] >= leader_status["applied_slot"],
                            "decided as far as the leader had applied")
            async with connect([f"127.0.0.1:{cluster.ports[learner]}"], timeout=10) as local:
                assert await local.get("marker", consistency="s") == "m1"
            # Having served a read, it applies as it goes again, load or not.
            assert (await _status(kv, cluster, learner))["learner"] == "eager"
        assert acked.count > 800

        statuses = cluster.wait_converged(deadline_s=30)
        assert {s["learner"] for s in statuses} == {"eager"}  # a quiet cluster has no lazy learner
        await _check_acked(cluster.endpoints, acked)


async def test_leader_killed_while_a_learner_is_lazy_loses_no_acknowledged_write(tmp_path):
    acked = Acked()
    with _cluster(tmp_path) as cluster:
        leader = cluster.leader()
        learner, _ = _learner_and_standby(cluster, leader)
        async with _writes(cluster, acked) as kv:
            await _wait_for(kv, cluster, learner, lambda s: s["learner"] == "lazy" and s["apply_backlog"] > 0,
                            "lazy with a backlog")
            cluster.kill(leader)
            before = acked.count
            with trio.move_on_after(30):
                while acked.count < before + 300:
                    await trio.sleep(0.05)
            assert acked.count >= before + 300, "writes did not resume after the leader was killed"
        alive = [i for i in cluster.ports if i != leader]
        cluster.wait_converged(deadline_s=30, among=alive)
        await _check_acked([cluster.endpoints[i - 1] for i in alive], acked)


async def test_eager_learners_option_keeps_every_follower_applying(tmp_path):
    acked = Acked()
    with _cluster(tmp_path, "--eager-learners") as cluster:
        learner, _ = _learner_and_standby(cluster, cluster.leader())
        seen = set()
        async with _writes(cluster, acked) as kv:
            # Past two snapshots of its own, under the same load as above: never lazy.
            status = await _wait_for(kv, cluster, learner,
                                     lambda s: seen.add(s["learner"]) or s["counters"].get("snapshots", 0) >= 2,
                                     "two snapshots", deadline_s=60)
        assert seen == {"eager"}
        assert status["counters"].get("snapshots_adopted", 0) == 0


async def test_learner_killed_after_adopting_restarts_from_the_adopted_snapshot(tmp_path):
    acked = Acked()
    with _cluster(tmp_path) as cluster:
        leader = cluster.leader()
        learner, _ = _learner_and_standby(cluster, leader)
        async with _writes(cluster, acked) as kv:
            await _lazy_after_two_adoptions(kv, cluster, learner)
            cluster.kill(learner)  # SIGKILL: whatever adoption was under way stops half done
            # (Status reports the core's snapshot slot, which an install in flight moves before its
            # file is written; the newest snapshot file is what a restart has.)
            on_disk = max(int(p.name.split("-")[1].split(".")[0])
                          for p in cluster.data_dir(learner).glob("snapshot-*.snap"))
            cluster.start(learner)
            # It comes back from its newest snapshot (adopted, or installed), then follows.
            back = await _wait_for(kv, cluster, learner, lambda s: True, "back")
            assert back["snapshot_slot"] >= on_disk > 0
        cluster.wait_converged(deadline_s=30)
        await _check_acked(cluster.endpoints, acked)
