"""Power cuts: a node loses everything written after its last fsync, and recovery is still correct.

Three in-process ``kvstore.server.Node``s on the in-memory network (``tests/kvstore/memnet.py``), with
fsync on and a real clock (fsyncs run in worker threads). Writers put unique keys through the client
while, five times, a node (the leader in most rounds) suffers a "power cut": its task is cancelled and,
instead of a clean close, its storage runs ``Storage.crash_drop_unsynced()``, which drops records that
were written (``flush``) but not yet durable (a cut waits, briefly, for a moment when such records
exist; fsync is slowed to widen that window; whether a cut drops bytes still depends on how far the
in-flight fsync reaches, and the test prints it). Half the cuts truncate the log to the last completed
fsync; the other half model reordered writeback (``crash_drop_unsynced(rng)``): every 4 KiB page of
the unsynced part of the preallocated log independently keeps what was written or becomes zeros, so
a later batch can survive after zeros where an earlier one was. The node must start again (its sync
marks say those bytes were never durable) and is rebuilt from what is left in its data directory.
Because nothing may leave a node before the records behind it are durable (the persist-send-apply
contract), no acknowledged write may be lost: at the end all three replicas agree (state hash, applied
slot) and hold every acknowledged write. It runs for both engines (``ServerOptions.engine``: the core,
and the classic engine of issue 18); each node must run the engine's class.
"""
from __future__ import annotations

import random
import time

import pytest
import trio

from kvstore.client import RequestError, Unavailable, connect
from kvstore.server import Node, ServerOptions
from paxos.classic import ClassicReplica
from paxos.replica import Replica

from ..kvstore.memnet import MemoryNetwork
from .workload import nemesis_seed

pytestmark = pytest.mark.slow

PEERS = {1: ("m1", 7001), 2: ("m2", 7002), 3: ("m3", 7003)}
ENDPOINTS = [f"{h}:{p}" for h, p in PEERS.values()]
ENGINE_CLASSES = {"core": Replica, "classic": ClassicReplica}


@pytest.mark.parametrize("engine", ["core", "classic"])
async def test_power_cuts_drop_unsynced_records_and_lose_no_acknowledged_write(tmp_path, engine):
    seed = nemesis_seed()
    rng = random.Random(seed)
    net = MemoryNetwork()
    nodes: dict[int, Node] = {}
    scopes: dict[int, trio.CancelScope] = {}
    dropped_bytes = []
    acked: dict[str, str] = {}

    async with trio.open_nursery() as nursery:

        async def start(node_id: int) -> None:
            options = ServerOptions(fsync=True, tick_seconds=0.01, heartbeat_ticks=5, election_timeout_ticks=30,
                                    request_timeout=5.0, snapshot_every=300, engine=engine)
            node = Node(node_id, PEERS, tmp_path / f"node-{node_id}", options, transport=net.transport())
            assert type(node.replica) is ENGINE_CLASSES[engine], type(node.replica)
            real_fdatasync = node.storage._fdatasync

            def slow_fdatasync(fd: int) -> None:  # a slow disk: batches pile up written but not durable
                time.sleep(0.03)
                real_fdatasync(fd)

            node.storage._fdatasync = slow_fdatasync
            scope = trio.CancelScope()

            async def run(task_status=trio.TASK_STATUS_IGNORED) -> None:
                with scope:
                    await node.run(task_status=task_status)

            await nursery.start(run)
            nodes[node_id] = node
            scopes[node_id] = scope

        def power_cut(node_id: int) -> None:
            node = nodes.pop(node_id)
            storage = node.storage
            plain_close = storage.close

            def cut_instead_of_close() -> None:
                storage.close = plain_close
                if not storage._closed and storage.failure is None:
                    reordered = rng.random() < 0.5
                    unsynced = storage._log_end - storage._synced_end
                    dropped_bytes.append((unsynced, "reordered" if reordered else "cut"))
                    storage.crash_drop_unsynced(random.Random(rng.random()) if reordered else None)
                plain_close()

            storage.close = cut_instead_of_close  # node.run's finally calls close after the cancel
            net.down(*PEERS[node_id])
            scopes.pop(node_id).cancel()

        async def leader() -> int | None:
            leaders = [i for i, n in nodes.items() if n.replica.is_leader]
            return leaders[0] if len(leaders) == 1 else None

        async def writer(w: int, stop: trio.Event) -> None:
            async with connect(ENDPOINTS, timeout=5, transport=net.transport()) as kv:
                for i in range(100_000):
                    if stop.is_set():
                        return
                    key, value = f"w{w}-{i}", f"v{w}-{i}"
                    try:
                        await kv.put(key, value)
                    except (Unavailable, RequestError):
                        continue
                    acked[key] = value

        for i in PEERS:
            await start(i)
        stop = trio.Event()
        with trio.fail_after(120):
            async with trio.open_nursery() as writers:
                for w in range(4):
                    writers.start_soon(writer, w, stop)
                for _round in range(5):
                    await trio.sleep(rng.uniform(0.5, 1.5))
                    current = await leader()
                    victim = current if current is not None and rng.random() < 0.7 else rng.choice(list(PEERS))
                    # Cut at a moment when the victim has written records that are not yet durable.
                    with trio.move_on_after(1.0):
                        while victim in nodes and nodes[victim].storage._log_end <= nodes[victim].storage._synced_end:
                            await trio.sleep(0)
                    power_cut(victim)
                    await trio.sleep(rng.uniform(0.2, 1.0))
                    await start(victim)
                await trio.sleep(1.0)
                stop.set()

            with trio.fail_after(30):
                while True:
                    seen = {(n.replica.applied_slot, n.sm.state_hash()) for n in nodes.values()}
                    if len(seen) == 1 and len(nodes) == 3:
                        break
                    await trio.sleep(0.05)
        assert len(acked) > 100, f"[NEMESIS_SEED={seed}] too few writes acknowledged: {len(acked)}"
        for node_id, node in nodes.items():
            lost = {k: v for k, v in acked.items() if (e := node.sm.get(k)) is None or e.value != v}
            assert not lost, (f"[NEMESIS_SEED={seed}] node {node_id} lost {len(lost)} acknowledged writes after "
                              f"power cuts (dropped unsynced bytes per cut: {dropped_bytes}): {list(lost)[:5]}")
        print(f"power cuts dropped {dropped_bytes} unsynced bytes; {len(acked)} writes acknowledged")
        nursery.cancel_scope.cancel()
