"""A node writing a snapshot keeps its place in the cluster, and keeps answering writes.

Writing a snapshot of a large state takes seconds (about 1-2 s at a million keys). If the node stopped
meanwhile, a leader would miss its heartbeats and the others would elect someone else at every
snapshot; if it stopped applying, every write would wait for the file. Here every snapshot file is
made to take 1 s (30 election timeouts' worth with these options) by slowing
``Storage.write_snapshot_file`` in its worker thread. The leader must stay leader under the same ballot
throughout, writes made while its snapshot is being written must be answered before the file is done
(the state machine is frozen copy-on-write, not stopped), every node must take its snapshots, and
nothing may be lost.

Real clock on purpose: the snapshot runs in a worker thread, and trio's autojump clock would skip
virtual time while it runs.
"""
from __future__ import annotations

import time

import trio

from kvstore.client import connect
from kvstore.storage import Storage

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, MemCluster

SLOW_SNAPSHOT_S = 1.0


async def test_a_leader_writing_a_slow_snapshot_stays_leader_and_loses_no_write(tmp_path, monkeypatch):
    original = Storage.write_snapshot_file

    def slow_write_snapshot_file(self, slot, chunks):
        time.sleep(SLOW_SNAPSHOT_S)  # in the worker thread, like a big state being written
        return original(self, slot, chunks)

    monkeypatch.setattr(Storage, "write_snapshot_file", slow_write_snapshot_file)
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, snapshot_every=20)
        leader = await cluster.start_all()
        ballot = cluster.nodes[leader].replica.ballot
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            answered_during_snapshot = 0
            with trio.fail_after(30):
                for i in range(60):  # three snapshot intervals on every node
                    await kv.put(f"k{i}", str(i))
                    if cluster.nodes[leader]._snapshotting:
                        answered_during_snapshot += 1
                    for node in cluster.nodes.values():
                        assert node.replica.leader_id == leader or not node.replica.is_leader
                # The first snapshot starts after 20 writes and takes a second; the rest of the writes
                # take far less than that, so they were answered while it was being written.
                assert answered_during_snapshot >= 20
                while any(node.counters["snapshots"] < 1 for node in cluster.nodes.values()):
                    await trio.sleep(0.05)
                assert cluster.nodes[leader].replica.is_leader
                assert cluster.nodes[leader].replica.ballot == ballot, "the leader changed during a snapshot"
                items = await kv.list("")
        assert sorted(k for k, _ in items) == sorted(f"k{i}" for i in range(60))
        await cluster.wait_converged()
        nursery.cancel_scope.cancel()


async def test_a_slow_memory_trim_after_a_snapshot_does_not_stop_the_node(tmp_path, monkeypatch):
    """After each snapshot a node hands freed memory back to the system (``malloc_trim``: 55-70 ms with
    a 200 MiB state). Made to take 1 s here: it runs in a worker thread, so writes go on being answered
    while it runs (the three nodes share this test's one thread: a trim in the event loop would stop
    them all), and the leader keeps its ballot."""
    from kvstore import runtime

    trims: list[tuple[float, float]] = []

    def slow_release_free_memory() -> bool:
        started = time.monotonic()
        time.sleep(SLOW_SNAPSHOT_S)
        trims.append((started, time.monotonic()))
        return True

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, snapshot_every=20)
        leader = await cluster.start_all()
        monkeypatch.setattr(runtime, "release_free_memory", slow_release_free_memory)  # (after the starts')
        ballot = cluster.nodes[leader].replica.ballot
        answered: list[float] = []
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            with trio.fail_after(30):
                i = 0
                while len(trims) < 3 or i < 60:  # a trim on every node at least
                    await kv.put(f"k{i}", str(i))
                    answered.append(time.monotonic())
                    i += 1
            assert cluster.nodes[leader].replica.is_leader
            assert cluster.nodes[leader].replica.ballot == ballot, "the leader changed during a memory trim"
            items = await kv.list("")
        assert sorted(k for k, _ in items) == sorted(f"k{n}" for n in range(i))
        during = [t for t in answered if any(start < t < end for start, end in trims)]
        assert len(during) >= 20, (len(during), trims)
        nursery.cancel_scope.cancel()
