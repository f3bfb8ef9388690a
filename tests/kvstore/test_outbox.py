"""``kvstore.netio.Outbox``: direct socket writes that fall back to a writer task, bytes kept in order.

How: a real TCP connection on 127.0.0.1 with small socket buffers, so that direct writes fill the
socket and the rest must be queued; many chunks of distinct content are written in bursts while the
reader is slow; what arrives must be exactly the chunks concatenated in write order. Also: the
backlog limit drops whole chunks (never part of one), and ``drop_backlog`` empties the queue.
"""
from __future__ import annotations

import socket

import trio

from kvstore.netio import Outbox, socket_fd


async def _connected_pair():
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server_sock, _ = await listener.accept()
    listener.close()
    server = trio.SocketStream(server_sock)
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    return client, server


async def test_direct_writes_and_queued_remainders_arrive_in_order():
    client, server = await _connected_pair()
    outbox = Outbox()
    outbox.fd = socket_fd(client)
    assert outbox.fd is not None
    chunks = [bytes([i % 251]) * (1 + (i * 7919) % 3000) for i in range(300)]
    expected = b"".join(chunks)
    received = bytearray()
    queued_seen = False

    async def read_slowly() -> None:
        while len(received) < len(expected):
            data = await server.receive_some(8192)
            assert data, "connection closed early"
            received.extend(data)
            await trio.sleep(0.0005)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run, client)
            nursery.start_soon(read_slowly)
            for start in range(0, len(chunks), 10):
                for chunk in chunks[start:start + 10]:  # a burst, as one batch of replies
                    assert outbox.write(chunk)
                queued_seen = queued_seen or outbox.backlog > 0 or outbox.busy
                # Let the reader and the writer task run a little, often while the writer is in the
                # middle of sending the backlog: a direct write must not overtake it then.
                await trio.lowlevel.checkpoint()
            while len(received) < len(expected):
                await trio.sleep(0.01)
            outbox.close()
    assert queued_seen, "the socket never filled: the queued path was not exercised"
    assert bytes(received) == expected
    # Progress counts both paths (a connection whose answers leave by direct writes is not "stalled":
    # kvstore.clients.ClientLinks._await_room closes one whose sent_bytes stops moving)
    assert outbox.sent_bytes == len(expected)
    await client.aclose()
    await server.aclose()


async def test_without_a_socket_everything_goes_through_the_writer_task():
    sent = []

    class Recorder:
        async def send_all(self, data):
            sent.append(bytes(data))

    outbox = Outbox()
    for i in range(5):
        assert outbox.write(b"frame%d" % i)
    assert outbox.backlog == 5
    outbox.close()
    await outbox.run(Recorder())
    assert b"".join(sent) == b"frame0frame1frame2frame3frame4"
    assert outbox.backlog == 0


def test_a_full_backlog_drops_whole_chunks_and_drop_backlog_empties_it():
    outbox = Outbox(limit=3)
    assert [outbox.write(b"x%d" % i) for i in range(5)] == [True, True, True, False, False]
    assert outbox.backlog == 3
    outbox.drop_backlog()
    assert outbox.backlog == 0
    assert outbox.write(b"again")


def test_drop_backlog_on_a_closed_outbox_is_a_no_op():
    """A peer removed from the members has its outbox closed while its sender may sit between a failed
    connect and its next checkpoint, where it drops the backlog: that raised ``EndOfChannel`` and took the
    node down (soak, membership nemesis)."""
    outbox = Outbox()
    outbox.write(b"queued before the close")
    outbox.close()
    outbox.drop_backlog()
    outbox.drop_backlog()


async def test_the_bytes_limit_drops_whole_chunks_and_a_snapshot_write_passes_it():
    """QA: a peer stopped under 64 KiB values let its 10,000 frames hold a GB of the leader's memory.
    The bytes queued bound droppable writes too; a snapshot's chunks (``bytes_bounded=False``) are
    bound only by their count, so a snapshot larger than the limit still goes out whole."""
    outbox = Outbox(limit=100, bytes_limit=250)
    assert outbox.write(b"a" * 100) and outbox.write(b"b" * 100) and outbox.write(b"c" * 100)
    assert not outbox.write(b"d")  # 300 bytes queued: at the limit
    assert (outbox.backlog, outbox.backlog_bytes) == (3, 300)
    assert outbox.write(b"e" * 1000, bytes_bounded=False)
    outbox.drop_backlog()
    assert (outbox.backlog, outbox.backlog_bytes) == (0, 0)


async def test_the_writer_sends_at_most_about_a_mib_at_a_time():
    """QA: joining 1,024 queued frames of 64 KiB values (130 MB) held the node's thread for 0.7 s."""
    from kvstore import netio

    sends: list[int] = []

    class Recorder:
        async def send_all(self, data):
            sends.append(len(data))

    outbox = Outbox()
    for _ in range(40):
        assert outbox.write(b"x" * 65536)
    outbox.close()
    await outbox.run(Recorder())
    assert sum(sends) == 40 * 65536 and outbox.backlog_bytes == 0
    assert max(sends) <= netio.JOIN_BYTES_MAX + 65536 and len(sends) >= 2
