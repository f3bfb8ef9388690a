"""Disk faults inside the node: three ``kvstore.server.Node`` objects on in-memory streams (``memnet``),
the real clock (fsyncs and restores run in worker threads, which trio's autojump clock would skip past),
and ``Storage._fdatasync`` replaced by one that fails.

Checks, on both fsync paths (``inline``: the driver or a reader task fsyncs itself; ``committer``: the
committer task fsyncs in a worker thread, forced with ``inline_fsync_max=0``):

* a follower whose fsync fails is fenced at once: after the failure its core is never fed again (no
  ``receive`` or ``tick`` call however long the leader retransmits), nothing is written to its peer
  links, it reports ``disk: failed``; with the other follower down, no write is acknowledged; once that
  follower is back the cluster serves again, and after a restart on a healthy disk every acknowledged
  write is everywhere;
* a leader whose fsync fails answers its waiting write with ``disk_failed`` and steps down: the others
  elect a leader and the client's write succeeds there;
* a peer's snapshot is restored in a worker thread, never on the trio thread.
"""
from __future__ import annotations

import errno
import threading

import pytest
import trio

from kvstore import server as server_module
from kvstore.client import Unavailable, connect
from kvstore.statemachine import StateMachine

from .memnet import MemoryNetwork, resolve_as_written
from .test_node_memory import ENDPOINTS, PEERS, MemCluster

PATHS = {"inline": {}, "committer": {"inline_fsync_max": 0.0}}


def _failing_fdatasync(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error (injected by the test)")


def _count_calls(obj, name: str, counts: dict) -> None:
    original = getattr(obj, name)

    def counted(*args, **kwargs):
        counts[name] = counts.get(name, 0) + 1
        return original(*args, **kwargs)

    setattr(obj, name, counted)


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_a_follower_whose_fsync_fails_is_fenced_and_no_write_is_acknowledged(tmp_path, path):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, fsync=True, **PATHS[path])
        for i in PEERS:
            await cluster.start(i)
        leader = await cluster.wait_leader()
        broken_id, down_id = [i for i in PEERS if i != leader]
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.put("before", "1")
        cluster.crash(down_id)
        broken = cluster.nodes[broken_id]
        broken.storage._fdatasync = _failing_fdatasync
        async with connect(ENDPOINTS, timeout=2, transport=net.transport()) as kv:
            with pytest.raises(Unavailable):
                await kv.put("during", "2")
        assert broken.disk_state == "failed" and "restart" in broken.disk_error
        status = broken.status()
        assert status["disk"] == "failed" and not status["is_leader"] and status["leader"] is None
        assert status["leader_address"] is None  # (a client's probe takes no leader from a fenced node)

        # The leader keeps retransmitting to it; the fenced core hears none of it and says nothing.
        calls: dict[str, int] = {}
        _count_calls(broken.replica, "receive", calls)
        _count_calls(broken.replica, "tick", calls)
        _count_calls(broken, "_encode_peer_frames", calls)  # every Paxos frame to a peer is made here
        await trio.sleep(1.0)
        assert calls == {}, f"a fenced node's core or peer links were used: {calls}"

        await cluster.start(down_id)
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.put("after", "3")
            cluster.crash(broken_id)
            await cluster.start(broken_id)  # a healthy disk: recovery reads what it holds
            await cluster.wait_converged()
            for node in cluster.nodes.values():
                assert node.sm.get("before").value == "1" and node.sm.get("after").value == "3"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("path", sorted(PATHS))
async def test_a_leader_whose_fsync_fails_steps_down_and_the_write_succeeds_elsewhere(tmp_path, path):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, fsync=True, **PATHS[path])
        for i in PEERS:
            await cluster.start(i)
        old = await cluster.wait_leader()
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.put("before", "1")
            cluster.nodes[old].storage._fdatasync = _failing_fdatasync
            await kv.put("during", "2")  # refused by the broken leader with disk_failed, then retried
            assert cluster.nodes[old].disk_state == "failed"
            assert cluster.nodes[old].counters["disk_failures"] == 1
            new = await cluster.wait_leader_among([i for i in PEERS if i != old])
            assert new != old and not cluster.nodes[old].status()["is_leader"]
            assert await kv.get("during") == "2"
            # Where the leader serves, as a client's probe of a silent connection reads it: the leader's
            # own address from the leader, the same from the follower that follows it.
            leader_status = cluster.nodes[new].status()
            assert leader_status["leader_address"] == leader_status["address"]
            third = next(i for i in PEERS if i not in (old, new))
            with trio.fail_after(10):
                while cluster.nodes[third].status()["leader"] != new:
                    await trio.sleep(0.05)
            assert cluster.nodes[third].status()["leader_address"] == leader_status["address"]
        nursery.cancel_scope.cancel()


async def test_a_peers_snapshot_is_restored_in_a_worker_thread(tmp_path, monkeypatch):
    restores_on_trio_thread = []
    original = StateMachine.restore.__func__

    def spy(cls, data):
        restores_on_trio_thread.append(threading.current_thread() is threading.main_thread())
        return original(cls, data)

    monkeypatch.setattr(server_module.StateMachine, "restore", classmethod(spy))
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, snapshot_every=10, lazy_learners=False)
        for i in PEERS:
            await cluster.start(i)
        leader = await cluster.wait_leader()
        behind = next(i for i in PEERS if i != leader)
        cluster.crash(behind)
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(60):
                await kv.put(f"k{i}", str(i))
            await cluster.start(behind)  # the others compacted past its log: it needs a snapshot
            await cluster.wait_converged()
        assert cluster.nodes[behind].counters["snapshots_installed"] >= 1
        assert restores_on_trio_thread and not any(restores_on_trio_thread), restores_on_trio_thread
        nursery.cancel_scope.cancel()


async def test_status_shows_the_recent_fsync_time_so_a_slow_disk_is_seen_before_anything_fails(tmp_path):
    """``fsync_ms`` in a node's status (the ``FSYNC_MS`` column of ``kv status``): the group commit's
    average of recent fsyncs of the log. Gray-failure QA: with one node's fsyncs at 0.5 s and more,
    ``kv status`` said ``disk ok`` and nothing else. Here the leader's fdatasync takes 100 ms longer (it
    fsyncs every batch; a follower's share depends on its role)."""
    import time

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, fsync=True)
        for i in PEERS:
            await cluster.start(i)
        leader = await cluster.wait_leader()
        slow = cluster.nodes[leader]
        real = slow.storage._fdatasync

        def slow_fdatasync(fd: int) -> None:
            time.sleep(0.1)
            real(fd)

        slow.storage._fdatasync = slow_fdatasync
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(30):
                await kv.put(f"k{i}", "v")
        assert slow.status()["fsync_ms"] >= 30, slow.status()["fsync_ms"]
        assert all(cluster.nodes[i].status()["fsync_ms"] < 30 for i in PEERS if i != leader)
        nursery.cancel_scope.cancel()


async def test_a_member_change_on_a_leader_whose_disk_fails_is_answered_at_once_naming_the_disk(tmp_path,
                                                                                                monkeypatch):
    """QA: ``kv member add`` on a leader whose fsync failed as it wrote the change waited the whole 10 s,
    then asked whether a majority of the voters was up (it was; the others decided the change). A fenced
    node learns no more decisions: it says so at once, with the disk's error, outcome unknown."""
    from kvstore import members
    from kvstore.client import RequestError

    monkeypatch.setattr(members, "_resolve", resolve_as_written)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, fsync=True)
        leader = await cluster.start_all()
        async with connect(ENDPOINTS, timeout=20, transport=net.transport()) as kv:
            await kv.put("before", "1")
            cluster.nodes[leader].storage._fdatasync = _failing_fdatasync
            started = trio.current_time()
            with pytest.raises(RequestError, match="disk failed while the change to epoch 1 was being decided") as info:
                await kv.member_add(4, "n4:7004")
            assert trio.current_time() - started < members.ADMIN_TIMEOUT_SECONDS / 2
            assert info.value.code == "outcome_unknown" and "Input/output error" in str(info.value)
            assert cluster.nodes[leader].disk_state == "failed"
            # The list the answer recommends comes from another node: the failed one's view stops where its
            # disk failed (QA: it called itself the leader, at the epoch before a change the others decided)
            listed = await kv.member_list()
            assert listed["leader"] != leader
        nursery.cancel_scope.cancel()
