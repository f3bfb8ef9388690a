"""``kvstore.tls.TlsStream`` and the outbox that seals for it (``kvstore.netio.Outbox.attach``), over real
loopback TCP: records leave in the order they were sealed, whether the socket took them at once or the
writer task sent them later; writes queued before a stream was attached are sealed when it is; a write
dropped at the backlog limit is dropped before sealing, so the session survives it."""
from __future__ import annotations

import trio

from kvstore.netio import Outbox, socket_fd
from kvstore.server import Node, ServerOptions
from kvstore.tls import TlsFiles, TlsStream, TlsTransport, peer_identity

from .pki import Pki


async def tls_pair(tmp_path) -> tuple[TlsStream, TlsStream]:
    """(client side, server side) of a finished mutual-TLS handshake between node 1 and node 2."""
    pki = Pki(tmp_path / "pki", nodes=2)
    server = TlsTransport(TlsFiles(pki.cacert, str(pki.dir / "node-1.pem"), str(pki.dir / "node-1.key")))
    client = TlsTransport(TlsFiles(pki.cacert, str(pki.dir / "node-2.pem"), str(pki.dir / "node-2.key")),
                          server=False)
    listener = (await server.open_listeners("127.0.0.1", 0))[0]
    port = listener.socket.getsockname()[1]
    accepted: list[TlsStream] = []

    async def accept() -> None:
        stream = await listener.accept()
        await stream.do_handshake()
        accepted.append(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        dialed = await client.connect("127.0.0.1", port)
    await listener.aclose()
    return dialed, accepted[0]


async def read_exactly(stream: TlsStream, size: int) -> bytes:
    data = bytearray()
    with trio.fail_after(20):
        while len(data) < size:
            chunk = await stream.receive_some()
            assert chunk, f"the stream ended after {len(data)} of {size} bytes"
            data += chunk
    return bytes(data)


async def test_the_handshake_names_each_side(tmp_path):
    client, server = await tls_pair(tmp_path)
    assert peer_identity(server).node_id == 2
    assert peer_identity(client).node_id == 1
    await client.send_all(b"hello")
    assert await read_exactly(server, 5) == b"hello"
    await client.aclose()
    with trio.fail_after(5):
        assert await server.receive_some() == b""
    await server.aclose()


async def test_outbox_seals_queued_and_new_writes_in_order(tmp_path):
    client, server = await tls_pair(tmp_path)
    outbox = Outbox()
    outbox.write(b"queued-1;")  # before any stream: plaintext in the queue
    outbox.write(b"queued-2;")
    raw = outbox.attach(client)
    assert raw is client.transport_stream and outbox.fd == socket_fd(raw) is not None
    expected = bytearray(b"queued-1;queued-2;")
    big = bytes(range(256)) * 4096  # 1 MiB: more than the socket takes at once, so the writer task sends
    for i in range(200):
        piece = big if i % 50 == 7 else f"frame-{i};".encode()
        assert outbox.write(piece)
        expected += piece
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run, raw)
        assert await read_exactly(server, len(expected)) == bytes(expected)
        outbox.close()
    outbox.detach()
    assert outbox.fd is None and outbox.seal is None
    await client.aclose()
    await server.aclose()


async def test_a_write_dropped_at_the_limit_leaves_the_session_whole(tmp_path):
    client, server = await tls_pair(tmp_path)
    outbox = Outbox(limit=3)
    raw = outbox.attach(client)
    kept = bytearray()
    dropped = 0
    piece = b"x" * 65536
    # Nobody reads yet: the socket fills, then three chunks queue, then writes are dropped.
    for i in range(200):
        marked = piece[:-8] + f"{i:08d}".encode()
        if outbox.write(marked):
            kept += marked
        else:
            dropped += 1
    assert dropped > 0 and outbox.backlog == 3
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.run, raw)
        assert await read_exactly(server, len(kept)) == bytes(kept)
        # Writes after the drops still decrypt: the dropped ones never became records, so the record
        # sequence has no gap (a record made and then dropped would fail every later one).
        for i in range(10):
            assert outbox.write(f"after-{i};".encode())
        assert await read_exactly(server, len(b"after-0;") * 10) == b"".join(f"after-{i};".encode() for i in range(10))
        outbox.close()
    await client.aclose()
    await server.aclose()


async def test_garbage_from_the_other_side_breaks_the_session_and_refuses_writes(tmp_path):
    client, server = await tls_pair(tmp_path)
    outbox = Outbox()
    outbox.attach(client)
    await server.transport_stream.send_all(b"\x17\x03\x03\x00\x10" + b"not a real record")
    with trio.fail_after(5):
        try:
            await client.receive_some()
        except trio.BrokenResourceError as exc:
            assert "TLS session failed" in str(exc)
        else:
            raise AssertionError("a forged record was accepted")
    assert outbox.write(b"after the session broke") is False
    await client.aclose()
    await server.aclose()


async def test_three_tls_nodes_agree_and_report_their_peer_links_up(tmp_path):
    """Three in-process nodes on mutual TLS over loopback: writes go through, and each node's
    ``kv_peer_up`` says both links are up (it reads the outbox's socket, which TLS links now have too;
    before the outbox sealed for TLS streams it said 0 on every TLS cluster)."""
    from prometheus_client.parser import text_string_to_metric_families

    from kvstore import metrics
    from kvstore.client import connect

    from ..integration.harness import free_ports

    pki = Pki(tmp_path / "pki", nodes=3)
    ports = dict(zip((1, 2, 3), free_ports(3), strict=True))
    peers = {i: ("127.0.0.1", p) for i, p in ports.items()}
    nodes = {i: Node(i, peers, tmp_path / f"data-{i}", ServerOptions(fsync=False),
                     transport=TlsTransport(TlsFiles(pki.cacert, str(pki.dir / f"node-{i}.pem"),
                                                     str(pki.dir / f"node-{i}.key"))))
             for i in ports}
    async with trio.open_nursery() as nursery:
        for node in nodes.values():
            await nursery.start(node.run)
        with trio.fail_after(30):
            async with connect([f"127.0.0.1:{p}" for p in ports.values()], timeout=20, **pki.files("admin")) as kv:
                for i in range(20):
                    await kv.put(f"k{i}", f"v{i}")
                assert await kv.get("k19") == "v19"
            while not all(n.applied_slot == nodes[1].applied_slot > 0 for n in nodes.values()):
                await trio.sleep(0.05)
        assert len({n.sm.state_hash() for n in nodes.values()}) == 1
        for i, node in nodes.items():
            text = metrics.metrics_text(metrics.make_registry(node)).decode()
            up = {s.labels["peer"]: s.value for f in text_string_to_metric_families(text) if f.name == "kv_peer_up"
                  for s in f.samples}
            assert up == {str(p): 1.0 for p in ports if p != i}, (i, up)
        nursery.cancel_scope.cancel()
