"""What the classic engine (``--engine classic``: one seed Paxos instance per slot) refuses of the admin
commands, and how: on three in-memory nodes (``test_node_memory.MemCluster``, autojump clock), moving the
leader and changing the members are refused with a message that names the engine they need, not as if
the refusal were temporary (QA: ``kv move-leader`` said "cannot hand leadership to node 1 now").
"""
from __future__ import annotations

import pytest
import trio

from kvstore.client import RequestError, connect

from .memnet import MemoryNetwork, resolve_as_written
from .test_node_memory import ENDPOINTS, PEERS, MemCluster


async def test_the_classic_engine_refuses_to_move_the_leader_or_change_members_saying_why(tmp_path, autojump_clock):
    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, engine="classic")
        leader = await cluster.start_all()
        other = min(i for i in PEERS if i != leader)
        async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
            with pytest.raises(RequestError, match="moving the leader needs --engine core"):
                await kv.move_leader(other)
            with pytest.raises(RequestError, match="membership changes need --engine core"):
                await kv.member_remove(other)
            await kv.put("still", "serving")
            assert await kv.get("still") == "serving"
        assert cluster.nodes[leader].replica.is_leader
        nursery.cancel_scope.cancel()


async def test_with_a_voter_down_the_classic_engine_still_names_the_engine_first(tmp_path, autojump_clock):
    """QA: with a voter down, ``kv member remove`` on a classic cluster was refused because that voter had
    not answered the leader, advice that bringing it back would not mend; the engine comes first."""
    from kvstore import members

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net, engine="classic")
        leader = await cluster.start_all()
        down, other = [i for i in PEERS if i != leader]
        cluster.crash(down)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(members, "_resolve", resolve_as_written)
            async with connect(ENDPOINTS, timeout=10, transport=net.transport()) as kv:
                for change in (lambda: kv.member_remove(other), lambda: kv.member_add(9, "n9:7009"),
                               lambda: kv.member_promote(9)):
                    with pytest.raises(RequestError, match="membership changes need --engine core"):
                        await change()
        nursery.cancel_scope.cancel()
