"""Bad input against a live TLS node (``kv serve --cacert --cert --key``, a one-node cluster on 127.0.0.1).

How: raw connections (``raw.exchange``), plain TCP to the TLS port, or TLS with the admin certificate
to reach the frame reader; the cases of the plaintext bad-input suite (``tests/badinput/test_live_node``:
every field of every client message with a wrong CBOR type, missing fields, unknown types, huge length
prefixes) run again inside TLS, and a seeded fuzz sends random bytes and random CBOR both ways. Each
time: the node closes only that connection, logs no traceback, and keeps serving (a put and a get
through the normal client). Also: plaintext and garbage to the TLS port are refused with one log line;
a hundred handshakes that stall do not stop the node serving, and their descriptors are gone once they
close; a huge certificate chain is refused; the node's memory and descriptors stay bounded.

In-process (trio, real sockets on 127.0.0.1): stalled handshakes are closed by the node after its
handshake timeout (0.3 s here, ``TlsTransport.handshake_timeout_seconds``) and counted, with no
descriptor left behind; the node's streams are TLS streams that ``Outbox`` never writes to directly.
"""
from __future__ import annotations

import os
import random
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cbor2
import pytest
import trio

from kvstore import wire
from kvstore.netio import socket_fd
from kvstore.server import Node, ServerOptions
from kvstore.tls import TlsFiles, TlsStream, TlsTransport

from ..badinput import test_live_node as plain_suite
from ..integration.harness import free_ports
from .cluster import TlsCluster
from .pki import Pki
from .raw import exchange, frame, replies

RSS_GROWTH_MAX = 50 * 1024 * 1024
FD_SLACK = 8  # the node's own descriptors come and go a little (log files, peers' status checks)


def kv_replies(data: bytes) -> list:
    try:
        return replies(data)
    except wire.WireError:
        return []


class TlsNode:
    def __init__(self, root: Path, pki: Pki) -> None:
        self.cluster = TlsCluster(root, pki, size=1)
        self.cluster.start_all()
        self.port = self.cluster.ports[1]
        self.files = pki.files("admin")
        self.client = self.cluster.client(timeout=10)
        self.n = 0
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.put("ready", "1")
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"node did not start:\n{self.log_text()}") from exc
                time.sleep(0.1)

    @property
    def pid(self) -> int:
        return self.cluster.procs[1].pid

    def log_text(self) -> str:
        return self.cluster.log_text(1)

    def counter(self, name: str) -> int:
        return int(self.client.status(f"127.0.0.1:{self.port}").get("counters", {}).get(name, 0))

    def rss(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def wait_fds_at_most(self, count: int) -> None:
        deadline = time.monotonic() + 15
        while self.fds() > count and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.fds() <= count, f"the node holds {self.fds()} descriptors, expected at most {count}"

    def assert_serving(self) -> None:
        assert self.cluster.procs[1].poll() is None, f"node died:\n{self.log_text()[-3000:]}"
        self.n += 1
        self.client.put(f"probe-{self.n}", f"value-{self.n}")
        assert self.client.get(f"probe-{self.n}") == f"value-{self.n}"

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    pki = Pki(tmp_path_factory.mktemp("pki") / "pki", nodes=1)
    n = TlsNode(tmp_path_factory.mktemp("tls-node"), pki)
    try:
        yield n
    finally:
        n.close()


PLAIN_PUT = frame({"t": "put", "id": 1, "key": "plain", "value": "v", "cid": b"c" * 16, "rq": 1, "ack": 1})


@pytest.mark.slow
@pytest.mark.parametrize("data", [
    PLAIN_PUT,
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    bytes((i * 37 + 11) % 256 for i in range(200)),
    b"\x00" * 16384,
    b"\x16\x03\x01\xff\xff" + b"\x01" * 1000,  # a TLS record header announcing 64 KiB, then junk
    b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # a ClientHello too short to be one
], ids=["kv-frame", "http", "garbage", "zeros", "bad-record", "short-hello"])
def test_plaintext_and_garbage_to_the_tls_port_are_refused(node, data):
    time.sleep(1.1)  # the log line of the previous case's refusal, at most one a second (tls.LogThrottle)
    mark = len(node.log_text())
    counter = "tls_handshakes_refused" if data[0] == 0x16 else "tls_plaintext_refused"
    before = node.counter(counter)
    received, closed, name = exchange(node.port, data)
    assert closed
    if data[0] == 0x16:  # it starts as TLS: OpenSSL refuses it, and nothing of ours is said
        assert not kv_replies(received)
        said = "TLS handshake failed"
    else:  # not TLS at all: one plaintext refusal saying so, addressed to the kv request if there is one
        (reply,) = kv_replies(received)
        assert isinstance(reply, wire.ErrorReply) and reply.code == wire.PROTOCOL and reply.refused, reply
        assert "takes TLS connections only" in reply.message and reply.id == (1 if data == PLAIN_PUT else None)
        said = "it does not speak TLS"
    deadline = time.monotonic() + 5
    while name not in node.log_text()[mark:] and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in node.log_text()[mark:].splitlines() if name in line]
    assert len(lines) == 1 and said in lines[0], lines
    assert node.counter(counter) == before + 1
    assert "Traceback" not in node.log_text()[mark:]
    node.assert_serving()
    assert node.client.get("plain") is None


@pytest.mark.slow
def test_the_plaintext_suites_bad_frames_inside_tls(node):
    """Every wrong field type, missing field and unknown type of the plaintext suite, inside TLS."""
    rss_before = node.rss()
    mark = len(node.log_text())
    cases = plain_suite.WRONG_FIELD_CASES
    assert len(cases) > 150

    def refused_properly(case) -> tuple | None:
        kind, field_name, bad = case
        msg = dict(plain_suite.GOOD[kind], **{field_name: bad})
        received, closed, _ = exchange(node.port, frame({"t": "status", "id": 1}) + frame(msg), files=node.files)
        got = kv_replies(received)
        ok = (closed and len(got) == 2 and isinstance(got[0], wire.OkReply) and got[0].id == 1
              and isinstance(got[1], wire.ErrorReply) and got[1].code == wire.PROTOCOL
              and got[1].id == (7 if field_name != "id" else None))
        return None if ok else (kind, field_name, repr(bad), closed, got)

    with ThreadPoolExecutor(max_workers=8) as pool:  # eight connections at a time
        failures = [f for f in pool.map(refused_properly, cases) if f is not None]
    assert not failures, f"{len(failures)} bad messages not refused properly, e.g. {failures[:3]}"
    for kind, msg in plain_suite.GOOD.items():
        for field_name in msg:
            if field_name != "t":
                received, closed, _ = exchange(node.port, frame({k: v for k, v in msg.items() if k != field_name}),
                                               files=node.files)
                got = kv_replies(received)
                assert closed and got and got[-1].code == wire.PROTOCOL, (kind, field_name, got)
    for obj in ({"t": "nope", "id": 1}, {"t": 5, "id": 1}, ["t", "put"], "just a string"):
        received, closed, _ = exchange(node.port, frame(obj), files=node.files)
        got = kv_replies(received)
        assert closed and got and got[-1].code == wire.PROTOCOL, (obj, got)
    for length in (2**31, 2**32 - 1, wire.FRAME_BYTES_MAX + 1):
        received, closed, _ = exchange(node.port, struct.pack(">I", length) + b"x" * 100, files=node.files)
        got = kv_replies(received)
        assert closed and all(isinstance(r, wire.ErrorReply) and r.code == wire.PROTOCOL for r in got), got
    node.assert_serving()
    assert node.rss() - rss_before < RSS_GROWTH_MAX
    assert "Traceback" not in node.log_text()[mark:]


def _random_cbor(rng: random.Random, depth: int = 0):
    pick = rng.randrange(8 if depth < 3 else 5)
    if pick == 0:
        return rng.randrange(-2**70, 2**70)
    if pick == 1:
        return "".join(rng.choice("abct/\x00é") for _ in range(rng.randrange(12)))
    if pick == 2:
        return rng.randbytes(rng.randrange(20))
    if pick == 3:
        return rng.choice([None, True, False, 1.5])
    if pick == 4:
        return cbor2.CBORTag(rng.randrange(300), rng.randrange(5))
    if pick == 5:
        return [_random_cbor(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["t", "id", "key", "value", "prefix", "cid", "rq", "ack", "lin", "node", "cluster", "m", "r"]
    obj = {rng.choice(keys): _random_cbor(rng, depth + 1) for _ in range(rng.randrange(6))}
    if rng.random() < 0.7:
        obj["t"] = rng.choice(["put", "get", "del", "cas", "list", "status", "hello", "px", "admin", "backup", "?"])
    return obj


@pytest.mark.slow
def test_seeded_fuzz_over_tls_keeps_the_node_serving(node):
    rng = random.Random(19)
    mark = len(node.log_text())
    rss_before = node.rss()
    fds_before = node.fds()
    payloads = [rng.randbytes(rng.randrange(1, 2000)) if i % 3 == 0
                else b"".join(frame(_random_cbor(rng)) for _ in range(rng.randrange(1, 4))) for i in range(150)]
    # Eight connections at a time; one that leaves half a frame waits 2 s for a close that never comes.
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(lambda data: exchange(node.port, data, files=node.files, timeout=2), payloads):
            pass
    node.assert_serving()
    assert "Traceback" not in node.log_text()[mark:], node.log_text()[mark:][-3000:]
    assert node.rss() - rss_before < RSS_GROWTH_MAX
    node.wait_fds_at_most(fds_before + FD_SLACK)


@pytest.mark.slow
def test_stalled_handshakes_do_not_stop_the_node_and_leave_no_descriptor(node):
    fds_before = node.fds()
    socks = []
    try:
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            if i % 2:
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
            socks.append(s)
        node.assert_serving()
        deadline = time.monotonic() + 10  # the node accepts them all and holds them, waiting
        while node.fds() < fds_before + 100 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node.fds() >= fds_before + 100, f"the node holds {node.fds() - fds_before} of 100 stalled connections"
        node.assert_serving()
    finally:
        for s in socks:
            s.close()
    node.wait_fds_at_most(fds_before + FD_SLACK)
    node.assert_serving()


@pytest.mark.slow
def test_a_huge_certificate_chain_is_refused(node):
    time.sleep(1.1)  # the log line of an earlier refusal, at most one a second (tls.LogThrottle)
    mark = len(node.log_text())
    files = node.cluster.pki.chain_of("admin", 400)  # ~240 KB of certificates
    assert Path(files["cert"]).stat().st_size > 200_000
    received, closed, name = exchange(node.port, frame({"t": "status", "id": 1}), files=files)
    assert closed and not kv_replies(received)
    deadline = time.monotonic() + 5
    while name not in node.log_text()[mark:] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "TLS handshake failed" in node.log_text()[mark:]
    node.assert_serving()


async def test_the_node_closes_stalled_handshakes_after_its_timeout(tmp_path):
    pki = Pki(tmp_path / "pki", nodes=1)
    files = TlsFiles(pki.cacert, str(pki.dir / "node-1.pem"), str(pki.dir / "node-1.key"))
    port = free_ports(1)[0]
    node = Node(1, {1: ("127.0.0.1", port)}, tmp_path / "data", ServerOptions(fsync=False),
                transport=TlsTransport(files, handshake_timeout_seconds=0.3))
    fds_before = len(os.listdir("/proc/self/fd"))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        streams = []
        for i in range(50):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            if i % 2:
                await stream.send_all(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello that never finishes
            streams.append(stream)
        for stream in streams:
            with trio.fail_after(10):  # a bound, far above the node's 0.3 s
                try:
                    data = await stream.receive_some(1024)
                except trio.BrokenResourceError:
                    data = b""
            assert data == b"", data
            await stream.aclose()
        assert node.counters["tls_handshakes_timed_out"] == 50
        # A real client gets through; its outbox seals each write and sends the records straight to the
        # socket under the TLS stream (kvstore.netio.Outbox.attach).
        from kvstore.client import connect

        admin = pki.files("admin")
        async with connect([f"127.0.0.1:{port}"], **admin) as kv:
            await kv.put("k", "v")
            assert await kv.get("k") == "v"
            conn = kv._conn
            assert isinstance(conn.stream, TlsStream) and socket_fd(conn.stream) is None
            assert conn.outbox.seal is not None and conn.outbox.fd == socket_fd(conn.stream.transport_stream)
        nursery.cancel_scope.cancel()
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/fd")) > fds_before and time.monotonic() < deadline:
        await trio.sleep(0.05)
    assert len(os.listdir("/proc/self/fd")) <= fds_before


def test_refusals_are_logged_at_most_once_a_second_each_and_the_rest_counted(monkeypatch):
    """A process without a certificate can open connections that fail their handshake as fast as it
    likes: one warning each let it grow the node's log without bound (QA: 2,000 lines in 0.1 s). Each
    kind of refusal is logged at most once a second, and the next line says how many were left out."""
    from kvstore import tls

    now = [100.0]
    monkeypatch.setattr(tls.time, "monotonic", lambda: now[0])
    throttle = tls.LogThrottle()
    assert throttle.allow("handshake failed") == ""
    assert [throttle.allow("handshake failed") for _ in range(1999)] == [None] * 1999
    assert throttle.allow("plaintext") == ""  # another kind has its own second
    now[0] += 1.0
    assert throttle.allow("handshake failed") == " (1999 more like it left out of the log since the last such line)"
    assert throttle.allow("handshake failed") is None
    now[0] += 5.0
    assert throttle.allow("handshake failed") == " (1 more like it left out of the log since the last such line)"
