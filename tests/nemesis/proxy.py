"""A userspace TCP proxy (trio) for peer links, with per-link faults: blackhole, delay, dropped connections.

Peer links in the store are one-way: node ``src`` dials node ``dst`` and only sends on that connection.
``PeerProxies`` opens one listener per ordered pair ``(src, dst)`` on 127.0.0.1 (OS-assigned port); node
``src`` is started with that address as ``dst``'s entry in its own ``--peers``, and the proxy forwards
to ``dst``'s real listen address. A fault on link ``(src, dst)`` therefore hits exactly the messages
``src`` sends to ``dst``.

The proxy peeks at the first frame of each connection. A ``Hello`` makes it a peer link, subject to
the link's mode. Anything else is a client that followed a ``not_leader`` hint (the hint is the
address in the redirecting node's ``--peers``, i.e. a proxy): it is forwarded untouched, because the
faults model the network between replicas, not between clients and replicas.

Modes of a link:

* ``pass``: forward at once.
* ``delay``: forward each chunk ``delay`` seconds after it arrived (order kept).
* ``blackhole``: stop forwarding; new connections are accepted and held without forwarding. Bytes
  already accepted are held (TCP back-pressure then stops the sender). On ``heal`` every held
  connection is cut, so senders reconnect and streams stay frame-aligned (a partition that outlives
  TCP's patience ends the same way).

``drop(src, dst)`` cuts every current connection of a link once (a connection reset).
"""
from __future__ import annotations

import trio

from kvstore import wire

FIRST_FRAME_BYTES_MAX = 1 << 20
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _Conn:
    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.is_peer = False


class Link:
    def __init__(self, src: int, dst: int, target: tuple[str, int]) -> None:
        self.src, self.dst, self.target = src, dst, target
        self.mode = "pass"
        self.delay = 0.0
        self.conns: set[_Conn] = set()
        self.port: int | None = None
        self.forwarded_bytes = 0
        self.mismatched_hello = 0

    def cut(self) -> None:
        for conn in list(self.conns):
            if conn.is_peer:
                conn.scope.cancel()


class PeerProxies:
    """One proxy listener per ordered pair of nodes. Run ``await nursery.start(proxies.run)`` first."""

    def __init__(self, targets: dict[int, tuple[str, int]]) -> None:
        self.links: dict[tuple[int, int], Link] = {}
        for src in targets:
            for dst, target in targets.items():
                if src != dst:
                    self.links[(src, dst)] = Link(src, dst, target)

    def address(self, src: int, dst: int) -> tuple[str, int]:
        port = self.links[(src, dst)].port
        assert port is not None, "proxies not started"
        return ("127.0.0.1", port)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for link in self.links.values():
                listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
                link.port = listeners[0].socket.getsockname()[1]
                nursery.start_soon(trio.serve_listeners, self._handler(link), listeners)
            task_status.started()

    # ---- faults ----------------------------------------------------------------------------------

    def set_mode(self, src: int, dst: int, mode: str, delay: float = 0.0) -> None:
        assert mode in ("pass", "delay", "blackhole")
        link = self.links[(src, dst)]
        was_blackhole = link.mode == "blackhole"
        link.mode, link.delay = mode, (delay if mode == "delay" else 0.0)
        if was_blackhole and mode != "blackhole":
            link.cut()

    def isolate(self, node: int) -> None:
        for (src, dst) in self.links:
            if node in (src, dst):
                self.set_mode(src, dst, "blackhole")

    def drop(self, src: int, dst: int) -> None:
        self.links[(src, dst)].cut()

    def heal(self) -> None:
        for (src, dst) in self.links:
            self.set_mode(src, dst, "pass")

    # ---- forwarding ------------------------------------------------------------------------------

    def _handler(self, link: Link):
        async def handle(stream) -> None:
            conn = _Conn()
            link.conns.add(conn)
            upstream = None
            try:
                with conn.scope:
                    first, body = await _read_first_frame(stream)
                    if not first:
                        return
                    try:
                        message = wire.decode_body(body) if body else None
                    except wire.WireError:
                        message = None
                    if isinstance(message, wire.Hello):
                        conn.is_peer = True
                        if message.node_id != link.src:
                            link.mismatched_hello += 1
                    if conn.is_peer and link.mode == "blackhole":
                        await trio.sleep_forever()  # cut on heal
                    upstream = await trio.open_tcp_stream(*link.target)
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, link, conn, stream, upstream, first)
                        nursery.start_soon(self._pump, link, conn, upstream, stream, b"")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                link.conns.discard(conn)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                    if upstream is not None:
                        await trio.aclose_forcefully(upstream)
        return handle

    async def _pump(self, link: Link, conn: _Conn, src, dst, initial: bytes) -> None:
        send, recv = trio.open_memory_channel(256)

        async def sender() -> None:
            try:
                async for at, data in recv:
                    if conn.is_peer and link.mode == "delay":
                        await trio.sleep_until(at + link.delay)
                    await dst.send_all(data)
                    link.forwarded_bytes += len(data)
            except _STREAM_ERRORS:
                conn.scope.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                async with send:
                    data = initial
                    while True:
                        if data:
                            if conn.is_peer and link.mode == "blackhole":
                                await trio.sleep_forever()  # hold: cut on heal
                            await send.send((trio.current_time(), data))
                        try:
                            data = await src.receive_some(65536)
                        except _STREAM_ERRORS:
                            break
                        if not data:
                            break
        finally:
            # One direction ended: end the whole connection (peers never half-close on purpose).
            conn.scope.cancel()


async def _read_first_frame(stream) -> tuple[bytes, bytes | None]:
    """(every byte read so far, the first frame's body or None if it is not a sane frame)."""
    buf = bytearray()
    while True:
        if len(buf) >= wire.HEADER_BYTES:
            length = int.from_bytes(buf[:wire.HEADER_BYTES], "big")
            if length == 0 or length > FIRST_FRAME_BYTES_MAX:
                return bytes(buf), None
            if len(buf) >= wire.HEADER_BYTES + length:
                return bytes(buf), bytes(buf[wire.HEADER_BYTES:wire.HEADER_BYTES + length])
        data = await stream.receive_some(65536)
        if not data:
            return bytes(buf), None
        buf += data


__all__ = ["PeerProxies", "Link"]
