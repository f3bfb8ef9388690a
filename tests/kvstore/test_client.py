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
