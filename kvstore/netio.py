"""Socket writes without a task hop: the ``Outbox`` that the server and the client write through.

A trio ``send_all`` yields to the scheduler even when the socket takes every byte at once, and a
writer task adds a wake-up per message. On a small machine each scheduler pass costs tens of
microseconds, and a request one at a time pays for every pass on its path. An ``Outbox`` writes to
the socket directly (non-blocking) whenever nothing is queued ahead, and leaves only what the socket
does not take to a writer task.
"""
from __future__ import annotations

import math
import os
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import trio

if TYPE_CHECKING:
    from .tls import TlsStream

__all__ = ["Outbox", "socket_fd", "JOIN_BYTES_MAX"]

# The writer task joins queued chunks into one send of about this much at most
JOIN_BYTES_MAX = 1024 * 1024


class Outbox:
    """The bytes bound for one stream, written without a task hop whenever possible.

    ``write`` sends straight to the socket (non-blocking) when nothing is queued ahead and the
    writer task is idle: a reply or an Accept then leaves in the same scheduler pass that produced
    it, instead of after waking another task. Whatever the socket does not take at once (a full
    send buffer, or no socket: an in-memory test stream) is queued for ``run``, the writer task, which
    sends it in order with ``send_all``. So bytes leave in the order they were written.
    """

    __slots__ = ("fd", "seal", "busy", "backlog", "backlog_bytes", "limit", "bytes_limit", "sent_bytes", "drained",
                 "drained_below", "_send", "_recv")

    def __init__(self, limit: float = math.inf, bytes_limit: float = math.inf) -> None:
        self.fd: int | None = None  # the socket's descriptor while direct writes are allowed
        # a TLS stream's encryption (kvstore.tls.TlsStream.seal) while attached to one
        self.seal: Callable[[bytes], bytes] | None = None
        self.busy = False  # the writer task holds bytes it has not finished sending
        self.backlog = 0  # chunks queued for the writer task
        self.backlog_bytes = 0  # ... and their bytes
        self.limit = limit  # droppable writes are dropped once this many chunks are queued ...
        self.bytes_limit = bytes_limit  # ... or this many bytes (QA: 10,000 frames of 64 KiB values, 1 GB)
        self.sent_bytes = 0  # what left so far, directly or by the writer task (a slow reader's progress)
        # Called by the writer task after a send leaves fewer than ``drained_below`` bytes queued: the
        # owner may write more then (a client connection's answers held back: kvstore.clients)
        self.drained: Callable[[], None] | None = None
        self.drained_below = 0
        self._send, self._recv = trio.open_memory_channel(math.inf)

    def attach(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """Write to ``stream`` from now on; returns the stream to give ``run``.

        A plain TCP stream gets direct writes on its socket. A ``kvstore.tls.TlsStream`` gets them too,
        on the socket under it: the outbox seals each write into TLS records first, queued chunks
        included (written while no stream was attached, so still plaintext), and ``run`` sends records
        on the TCP stream. Either way bytes leave in the order they were written."""
        seal = getattr(stream, "seal", None)
        if seal is None:
            self.seal = None
            self.fd = socket_fd(stream)
            return stream
        tls_stream = cast("TlsStream", stream)  # only a kvstore.tls.TlsStream has seal
        queued: list[bytes] = []
        while True:
            try:
                queued.append(self._recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        for chunk in queued:
            sealed = seal(chunk)
            self.backlog_bytes += len(sealed) - len(chunk)
            self._send.send_nowait(sealed)
        self.seal = seal
        tls_stream.raw_sink = self.write_sealed
        raw = tls_stream.transport_stream
        self.fd = socket_fd(raw)
        return raw

    def detach(self) -> None:
        """No direct writes any more (the stream is about to close: its descriptor number may soon be
        another socket's); writes queue, as plaintext, until the next ``attach``."""
        self.fd = None
        self.seal = None

    def write(self, data: bytes, *, bytes_bounded: bool = True) -> bool:
        """Send or queue ``data``; False if it was dropped (backlog at its limit, or closed).
        ``bytes_bounded=False``: only the count of chunks bounds it (a snapshot's chunks, queued at once)."""
        bytes_limit = self.bytes_limit if bytes_bounded else math.inf
        if self.seal is None:
            return self._put(data, True, bytes_limit)
        if self.backlog >= self.limit or self.backlog_bytes >= bytes_limit:
            return False  # dropped before sealing: a TLS record, once made, must be sent
        try:
            records = self.seal(data)
        except ssl.SSLError:
            return False  # the TLS session broke: the reader sees the end of the connection
        return self._put(records, False, bytes_limit)

    def write_sealed(self, data: bytes) -> bool:
        """Send or queue bytes that are ready for the socket as they are (TLS records that the stream
        made while reading), never dropped."""
        return self._put(data, False, math.inf)

    def _put(self, data: bytes, droppable: bool, bytes_limit: float) -> bool:
        if self.fd is not None and not self.busy and not self.backlog:
            try:
                sent = os.write(self.fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                sent = 0  # a broken connection: the writer task's send_all will report it
            self.sent_bytes += sent
            if sent == len(data):
                return True
            data = data[sent:]  # the rest of a frame must go next, so it is queued even past the limit
        elif droppable and (self.backlog >= self.limit or self.backlog_bytes >= bytes_limit):
            return False
        try:
            self._send.send_nowait(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        self.backlog += 1
        self.backlog_bytes += len(data)
        return True

    def drop_backlog(self) -> None:
        """Forget what is queued (a peer link went down: the next connection starts afresh). Nothing to
        do on a closed outbox: a peer removed from the members has its outbox closed while its sender
        may be between a failed connect and its next checkpoint (soak: ``EndOfChannel`` here took a node
        down)."""
        while True:
            try:
                chunk = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            self.backlog -= 1
            self.backlog_bytes -= len(chunk)

    def close(self) -> None:
        """No more writes; ``run`` sends what is queued, then returns."""
        self._send.close()

    async def run(self, stream: trio.abc.SendStream) -> None:
        """Send queued chunks on ``stream`` until ``close`` (returns) or a stream error (raises)."""
        recv = self._recv
        while True:
            try:
                first = await recv.receive()
            except trio.EndOfChannel:
                return
            self.busy = True
            try:
                chunks = [first]
                size = len(first)
                # At most a MiB or so per send: joining a thousand frames of 64 KiB values (130 MB)
                # held the node's thread for 0.7 s, longer than an election timeout (QA).
                while len(chunks) < 1024 and size < JOIN_BYTES_MAX:
                    try:
                        chunk = recv.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    chunks.append(chunk)
                    size += len(chunk)
                self.backlog -= len(chunks)
                self.backlog_bytes -= size
                await stream.send_all(b"".join(chunks) if len(chunks) > 1 else first)
                self.sent_bytes += size
                if self.drained is not None and self.backlog_bytes < self.drained_below:
                    self.drained()  # (its writes queue behind: busy is still set)
            finally:
                self.busy = False


def socket_fd(stream: object) -> int | None:
    """The descriptor of a TCP stream's socket, or None for streams without one (in-memory tests)."""
    sock = getattr(stream, "socket", None)
    try:
        fd: int | None = sock.fileno() if sock is not None else None
        return fd
    except Exception:
        return None


def set_keepalive(stream: object, idle_s: int = 30, interval_s: int = 10, count: int = 3) -> None:
    """TCP keepalive on ``stream``'s socket: a watch's connection may carry nothing for hours, so
    neither end would notice a peer gone without a FIN (a partition, a host powered off); with this the
    kernel ends it after about ``idle_s + interval_s * count`` seconds."""
    sock = getattr(stream, "socket", None) or getattr(getattr(stream, "transport_stream", None), "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count)):
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass
