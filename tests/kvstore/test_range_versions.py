"""Each key's version and mod_revision in a range (``list`` with ``meta``), as etcd's range gives them.

Through a 3-node cluster on the in-memory network (``AsyncClient.list_entries``, and the raw items of a
keys-only range), the wire form (a request without ``meta`` is the same bytes as before it existed, so
older nodes see nothing new) and malformed items. A node that predates ``meta``: tests/cli/test_range_versions.py.
"""
from __future__ import annotations

import cbor2
import pytest
import trio

from kvstore import frames, wire
from kvstore.client import Entry, KVError, connect

from .memnet import MemoryNetwork
from .test_node_memory import ENDPOINTS, MemCluster


async def test_a_range_gives_each_keys_version_and_mod_revision(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        await cluster.start_all()
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            await kv.put("a", "1")  # revision 1
            await kv.put("b", "x")  # 2
            await kv.put("a", "2")  # 3: version 2 of a
            await kv.delete("b")  # 4
            await kv.put("b", "y")  # 5: b created again, version 1
            await kv.put("c", b"\xff")  # 6
            assert await kv.list_entries("") == [
                Entry("a", "2", 2, 3), Entry("b", "y", 1, 5), Entry("c", b"\xff", 1, 6)]
            assert await kv.list_entries("b") == [Entry("b", "y", 1, 5)]
            assert await kv.list_entries("", limit=1, consistency="s") == [Entry("a", "2", 2, 3)]
            assert await kv.list_entries("none/") == []
            assert await kv.list("") == [("a", "2"), ("b", "y"), ("c", b"\xff")]  # (unchanged)
            conn = await kv._connection()
            keys_only = await conn.call(lambda rid: wire.ListRequest(
                id=rid, prefix="", keys_only=True, linearizable=True, limit=0, meta=True), trio.current_time() + 5)
            assert isinstance(keys_only, wire.OkReply)
            assert keys_only.result["items"] == [["a", 2, 3], ["b", 1, 5], ["c", 1, 6]]
        nursery.cancel_scope.cancel()


def test_a_range_request_without_meta_is_the_bytes_it_always_was():
    plain = frames.encode_map_frame(frames.list_request(3, "p/", False, True, 0))
    assert "meta" not in cbor2.loads(plain[4:])
    assert wire.encode_frame(wire.ListRequest(id=3, prefix="p/", keys_only=False, linearizable=True, limit=0)) == plain
    decoded = wire.decode_body(frames.encode_map_frame(frames.list_request(3, "p/", False, True, 0, meta=True))[4:])
    assert isinstance(decoded, wire.ListRequest) and decoded.meta
    for wrong in (1, "yes", None, b"\x01"):  # (optional, but a bool when present)
        body = cbor2.dumps({**frames.list_request(3, "p/", False, True, 0), "meta": wrong})
        with pytest.raises(wire.WireError, match="meta"):
            wire.decode_body(body)


@pytest.mark.parametrize("item", [["a", "v", "1", 2], ["a", "v", 1], [1, "v", 1, 2], ["a", 5, 1, 2]])
def test_a_malformed_range_item_is_a_clear_error(item):
    from kvstore.errors import entries_of

    with pytest.raises(KVError, match="malformed item|without versions"):
        entries_of([item])
