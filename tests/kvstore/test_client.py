"""Client error surface: what a caller catches is the library's own exception, never a trio group."""
from __future__ import annotations

import pytest
import trio

from kvstore.client import Unavailable, connect, parse_endpoints

from .memnet import MemoryNetwork


async def test_unavailable_reaches_the_caller_unwrapped_outside_the_block(autojump_clock):
    net = MemoryNetwork()  # nobody listens: every connect is refused
    with pytest.raises(Unavailable) as info:
        async with connect(["n1:1"], timeout=1, transport=net.transport()) as kv:
            await kv.put("k", "v")
    assert not info.value.outcome_unknown  # never sent anywhere


async def test_status_of_a_node_that_hangs_up_is_unavailable(autojump_clock):
    net = MemoryNetwork()
    listener = (await net.transport().open_listeners("n1", 1))[0]

    async def hang_up() -> None:
        while True:
            stream = await listener.accept()
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hang_up)
        async with connect(["n1:1"], timeout=1, transport=net.transport()) as kv:
            with pytest.raises(Unavailable):
                await kv.status("n1:1")
        nursery.cancel_scope.cancel()


def test_endpoints_are_checked_before_connecting():
    assert parse_endpoints("a:1, b:2") == [("a", 1), ("b", 2)]
    for bad in ["", "a", "a:", "a:0", "a:65536", ":1", "a:x"]:
        with pytest.raises(ValueError):
            parse_endpoints(bad)


async def test_many_requests_redirected_at_once_do_not_tear_down_each_others_connections(tmp_path, autojump_clock):
    """A fresh client with 64 requests in flight, pointed at a follower first: every request hears
    not_leader (or loses its connection) at about the same time. Each must repair only the connection
    it used, not the one another request just opened to the leader; otherwise the requests take turns
    closing each other's connections and rotating the endpoint, and none gets through."""
    from .test_node_memory import ENDPOINTS, PEERS, MemCluster

    net = MemoryNetwork()
    async with trio.open_nursery() as nursery:
        cluster = MemCluster(nursery, tmp_path, net)
        for i in PEERS:
            await cluster.start(i)
        leader = await cluster.wait_leader()
        followers_first = [e for i, e in zip(PEERS, ENDPOINTS) if i != leader]
        followers_first.append(ENDPOINTS[list(PEERS).index(leader)])
        for round_ in range(3):
            done = []
            async with connect(followers_first, timeout=3, transport=net.transport()) as kv:
                async def put(n: int) -> None:
                    await kv.put(f"k{round_}-{n}", "v")
                    done.append(n)

                async with trio.open_nursery() as puts:
                    for n in range(64):
                        puts.start_soon(put, n)
            assert sorted(done) == list(range(64))
        nursery.cancel_scope.cancel()
