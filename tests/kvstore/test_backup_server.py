"""The leader's side of ``kv snapshot save`` (kvstore.backup.BackupService) on in-memory nodes.

Three ``Node`` objects on ``memnet`` with trio's autojump clock. Checks: a backup of several 1 MiB
pieces holds exactly the state at its barrier while writes go on between the pieces; a piece asked
for again is the same bytes, one asked out of order or of an unknown session is refused; an idle
session is dropped and its frozen view released; at most ``SESSIONS_MAX`` unfinished sessions; after
the leader is lost, a backup taken through the new leader holds every write acknowledged before (with
either engine).
"""
from __future__ import annotations

import hashlib

import pytest
import trio

from kvstore import backup
from kvstore.client import RequestError, connect

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, PEERS, MemCluster


async def pull(kv, begin: dict, *, between=None) -> bytes:
    """Every piece of a session, in order; ``between(n)`` runs after the n-th piece."""
    parts = []
    offset = 0
    for n in range(10_000):  # bounded: a backup here is a few MiB
        result = await kv.backup(begin["session"], offset)
        assert result["offset"] == offset
        parts.append(result["data"])
        offset += len(result["data"])
        if between is not None:
            await between(n)
        if result["done"]:
            data = b"".join(parts)
            assert result["length"] == len(data) and result["sha256"] == hashlib.sha256(data).hexdigest()
            return data
    raise AssertionError("the backup never said done")


def load(tmp_path, begin: dict, data: bytes):
    """Write what was pulled as a backup file, check it and decode its state machine."""
    meta = {name: begin[name] for name in ("cluster_id", "node", "slot", "revision", "keys", "state_hash",
                                           "snapshot_format")}
    path = tmp_path / f"backup-{begin['session']}.kvbak"
    backup.write_backup(path, meta, [data[i:i + 100_000] for i in range(0, len(data), 100_000)])
    return backup.load_state(backup.read_backup(path))


async def test_a_backup_in_pieces_is_the_state_at_its_barrier_while_writes_go_on(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        with trio.fail_after(10):
            while not cluster.nodes[leader].sm.expiry_on:  # (on by itself: see below)
                await trio.sleep(0.05)
        followers_first = [e for i, e in zip(PEERS, ENDPOINTS, strict=True) if i != leader] + [ENDPOINTS[leader - 1]]
        value = "x" * 2000
        async with connect(followers_first, timeout=10, transport=net.transport()) as kv:
            for i in range(1600):  # ~3.3 MB of state: four pieces
                await kv.put(f"k/{i:05d}", f"{i}:{value}")
            begin = await kv.backup()  # asked of a follower first: the client follows the hint
            assert begin["node"] == leader and begin["keys"] == 1600 and begin["cluster_id"] == "kv"
            assert begin["slot"] == cluster.nodes[leader].applied_slot

            async def write_more(n: int) -> None:
                await kv.put(f"k/{n:05d}", "changed after the barrier")
                await kv.put(f"new/{n}", "written after the barrier")
                await kv.delete(f"k/{n + 100:05d}")

            retried = await kv.backup(begin["session"], 0)
            data = await pull(kv, begin, between=write_more)
            assert data.startswith(retried["data"]) and len(data) > 3 * backup.CHUNK_BYTES
            assert await kv.get("k/00000") == "changed after the barrier"
        sm = load(tmp_path, begin, data)
        assert len(sm) == 1600 and sm.state_hash() == begin["state_hash"]
        # The cluster has client expiry on; the backup leaves its horizon out, so older versions restore it
        assert cluster.nodes[leader].sm.expiry_on and not sm.expiry_on and b"expiry" not in data
        assert sm.get("k/00000").value == f"0:{value}" and sm.get("k/00100").value == f"100:{value}"
        assert sm.range("new/") == []
        assert cluster.nodes[leader].sm._journals == [], "the frozen view was released"
        assert cluster.nodes[leader].counters["backups_sent"] == 1
        nursery.cancel_scope.cancel()


async def test_retries_out_of_order_unknown_and_idle_sessions(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        async with connect([ENDPOINTS[leader - 1]], timeout=10, transport=net.transport()) as kv:
            for i in range(20):  # 2 MB: the first piece is not the last
                await kv.put(f"k{i}", "v" * 100_000)
            begin = await kv.backup()
            first = await kv.backup(begin["session"], 0)
            assert await kv.backup(begin["session"], 0) == first  # the same offset again: a retry
            with pytest.raises(RequestError, match="asked for byte 5, the next one is"):
                await kv.backup(begin["session"], 5)
            with pytest.raises(RequestError, match="no backup session 2 on this node"):
                await kv.backup(2, 0)
            assert cluster.nodes[leader].sm._journals != [], "a session holds its frozen view"
            await trio.sleep(backup.SESSION_IDLE_SECONDS + 2 * backup.REAP_SECONDS)
            with pytest.raises(RequestError, match=f"no backup session {begin['session']} on this node"):
                await kv.backup(begin["session"], len(first["data"]))
            assert cluster.nodes[leader].sm._journals == [], "an idle session's view was released"

            sessions = [await kv.backup() for _ in range(backup.SESSIONS_MAX)]
            with pytest.raises(RequestError, match=f"{backup.SESSIONS_MAX} backups are being saved"):
                await kv.backup()
            data = await pull(kv, sessions[0])
            assert load(tmp_path, sessions[0], data).state_hash() == sessions[0]["state_hash"]
            # A finished one frees a place.
            assert (await kv.backup())["session"] not in [s["session"] for s in sessions]
        nursery.cancel_scope.cancel()


async def test_a_client_that_gives_up_ends_its_session_and_frees_its_place(tmp_path, autojump_clock):
    """A save whose file cannot be written, or a dump cut short, ends its session (offset
    ``END_OFFSET``) instead of leaving it to idle out: QA ran four that failed and every backup of the node
    was refused for 30 s. The frozen view is released at once; ending an unknown session is no error."""
    from kvstore import bulk

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        leader = await cluster.start_all()
        node = cluster.nodes[leader]
        async with connect([ENDPOINTS[leader - 1]], timeout=10, transport=net.transport()) as kv:
            for i in range(20):
                await kv.put(f"k{i}", "v" * 100_000)

            async def full_disk(data: bytes) -> None:
                raise OSError(28, "No space left on device")

            for _ in range(backup.SESSIONS_MAX + 1):  # more than the node keeps at once
                with pytest.raises(OSError, match="No space left"):
                    await bulk.dump(kv, full_disk)
                service = node.members._backups
                assert service.sessions == {} and node.sm._journals == []

            # kv snapshot save's own code, with the blocking client's calls made from a thread
            def call(session: int, offset: int) -> dict:
                return trio.from_thread.run(kv.backup, session, offset)

            (tmp_path / "b.kvbak.part").mkdir()  # (the file it writes first cannot be made: a directory)
            for _ in range(backup.SESSIONS_MAX + 1):
                with pytest.raises(backup.BackupError, match="cannot write"):
                    await trio.to_thread.run_sync(backup.save_backup, call, tmp_path / "b.kvbak")
                assert service.sessions == {}
            assert await kv.backup(12345, backup.END_OFFSET) == {"offset": backup.END_OFFSET, "ended": True}
            assert (await kv.backup())["session"] >= 1  # a place is free
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("engine", ["core", "classic"])
async def test_after_the_leader_is_lost_the_new_leaders_backup_holds_every_acknowledged_write(
        tmp_path, autojump_clock, engine):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, engine=engine)
        leader = await cluster.start_all()
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            for i in range(50):
                await kv.put(f"k{i}", f"v{i}")
        cluster.crash(leader)
        survivors = [e for i, e in zip(PEERS, ENDPOINTS, strict=True) if i != leader]
        async with connect(survivors, timeout=20, transport=net.transport()) as kv:
            begin = await kv.backup()
            assert begin["node"] != leader
            sm = load(tmp_path, begin, await pull(kv, begin))
        assert {key: sm.get(key).value for key in (f"k{i}" for i in range(50))} == {f"k{i}": f"v{i}" for i in range(50)}
        nursery.cancel_scope.cancel()
