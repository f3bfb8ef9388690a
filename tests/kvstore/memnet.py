"""An in-memory network for node tests: trio memory streams instead of sockets.

``MemoryNetwork.transport()`` gives an object with the two methods a ``kvstore.server.Node`` (and the
client) use to reach the network. ``connect`` to an address nobody listens on raises ``OSError``, like a
refused TCP connection, so nodes exercise their reconnect logic.
"""
from __future__ import annotations

import math

import trio
import trio.testing


class MemoryListener(trio.abc.Listener):
    def __init__(self) -> None:
        self.send, self.recv = trio.open_memory_channel(math.inf)
        self.closed = False

    async def accept(self):
        return await self.recv.receive()

    async def aclose(self) -> None:
        self.closed = True


class MemoryNetwork:
    def __init__(self) -> None:
        self.listeners: dict[tuple[str, int], MemoryListener] = {}

    def down(self, host: str, port: int) -> None:
        """The node at this address is gone: refuse new connections to it."""
        listener = self.listeners.pop((host, port), None)
        if listener is not None:
            listener.closed = True

    def transport(self) -> MemoryTransport:
        return MemoryTransport(self)


class MemoryTransport:
    def __init__(self, net: MemoryNetwork) -> None:
        self.net = net

    async def connect(self, host: str, port: int):
        listener = self.net.listeners.get((host, port))
        if listener is None or listener.closed:
            raise OSError(f"connection refused: {host}:{port}")
        ours, theirs = trio.testing.memory_stream_pair()
        listener.send.send_nowait(theirs)
        await trio.lowlevel.checkpoint()
        return ours

    async def open_listeners(self, host: str, port: int) -> list:
        listener = MemoryListener()
        self.net.listeners[(host, port)] = listener
        return [listener]


async def resolve_as_written(host: str, port: int) -> set[tuple[str, int]]:
    """A stand-in for ``kvstore.members._resolve`` (kv member add's check that an address resolves): the
    memory network's names resolve to themselves."""
    return {(host, port)}
