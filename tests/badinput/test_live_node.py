"""Bad input against a live ``kv serve`` process (a one-node cluster on 127.0.0.1).

Each case opens raw TCP connections and sends something wrong: garbage bytes, a length prefix of 2**31
or more, a frame cut in the middle then closed, half a frame then a stall, 300 idle connections, every
field of every client message with a wrong CBOR type, unknown message types, a client pretending to be
a peer (Hello with a wrong cluster id or an unknown node id, a peer frame on a client connection).
Each time: the node closes only that connection (with a ``protocol`` error reply where the frame was
readable), logs it in one line naming the connection, and keeps serving (a put and a get through the
normal client succeed afterwards). Memory: VmRSS of the process after a burst of all of the above is
within 50 MiB of before.

Engines (issue 18): the module runs twice, once against ``kv serve --engine core`` and once against
``--engine classic`` (the ``node`` fixture is parametrized; each node's status must name its engine).
A fake peer's ``hello`` names the node's own engine, so that it is refused for the reason its case
names (and the log line says so); a ``hello`` of the other engine is a case of its own.
"""
from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import cbor2
import pytest

from kvstore import wire
from kvstore.client import Client

from ..integration.harness import free_ports
from ..nemesis.cluster import REPO

pytestmark = pytest.mark.slow

RSS_GROWTH_MAX = 50 * 1024 * 1024


ENGINES = ["core", "classic"]


class LiveNode:
    def __init__(self, root: Path, engine: str = "core", extra_args: tuple[str, ...] = (),
                 open_files: int | None = None) -> None:
        import resource
        import subprocess
        import sys

        def limit_open_files() -> None:  # in the child: ulimit -n (soft and hard, so kv serve cannot raise it)
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        self.engine = engine
        self.port = free_ports(1)[0]
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log_path = root / "node.log"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kv_cli", "serve", "--id", "1", "--peers", f"1={self.endpoint}",
             "--data-dir", str(root / "data"), "--engine", engine, *extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=str(REPO), preexec_fn=limit_open_files if open_files is not None else None)
        log.close()
        self.client = Client([self.endpoint], timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.put("ready", "1")
                break
            except Exception as exc:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise AssertionError(f"node did not start:\n{self.log_text()}") from exc
                time.sleep(0.1)
        self.n = 0
        self.log_mark = 0
        status = self.client.status(self.endpoint)
        assert status["engine"] == engine, f"started with --engine {engine}, the node says {status['engine']!r}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def assert_serving(self) -> None:
        assert self.proc.poll() is None, f"node died:\n{self.log_text()[-3000:]}"
        self.n += 1
        key, value = f"probe-{self.n}", f"value-{self.n}"
        self.client.put(key, value)
        assert self.client.get(key) == value

    def close(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module", params=ENGINES)
def node(tmp_path_factory, request):
    n = LiveNode(tmp_path_factory.mktemp(f"badinput-{request.param}"), request.param)
    try:
        yield n
    finally:
        n.close()


def frame(obj) -> bytes:
    body = cbor2.dumps(obj)
    return struct.pack(">I", len(body)) + body


def exchange(node: LiveNode, data: bytes, *, timeout: float = 10.0,
             replies_wanted: int | None = None) -> tuple[bytes, bool, str]:
    """Send ``data`` on a fresh connection; return (bytes received, closed by the server, our name).
    Reads until the server closes, ``timeout`` passes, or ``replies_wanted`` whole replies arrived."""
    node.log_mark = len(node.log_text())
    with socket.create_connection(("127.0.0.1", node.port), timeout=timeout) as s:
        name = f"127.0.0.1:{s.getsockname()[1]}"
        s.sendall(data)
        received = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break
            if not chunk:
                closed = True
                break
            received += chunk
            if replies_wanted is not None and len(wire.split_frames(bytearray(received))) >= replies_wanted:
                break
        return received, closed, name


def replies(data: bytes) -> list:
    buf = bytearray(data)
    return [wire.decode_body(b) for b in wire.split_frames(buf)]


def log_lines_about(node: LiveNode, name: str) -> list[str]:
    # Only what was logged since this exchange began: the OS reuses ephemeral ports, so an earlier
    # connection may have had the same name.
    return [line for line in node.log_text()[node.log_mark:].splitlines() if name in line]


def assert_closed_with_one_log_line(node, received, closed, name, *, reply_expected: bool):
    assert closed, "the node did not close the bad connection"
    got = replies(received)
    if reply_expected:
        assert got and isinstance(got[-1], wire.ErrorReply) and got[-1].code == wire.PROTOCOL, got
    deadline = time.monotonic() + 5
    while not log_lines_about(node, name) and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = log_lines_about(node, name)
    assert len(lines) == 1, f"expected one log line about {name}, got {lines}"
    assert "Traceback" not in node.log_text()[node.log_mark:], node.log_text()[node.log_mark:][-3000:]


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x05hello",                       # a frame whose body is not CBOR
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",           # "GET " as a length: far too large
    b"\x00\x00\x00\x00",                            # length zero
    struct.pack(">I", 200) + bytes((i * 37 + 11) % 256 for i in range(200)),  # garbage of a sane length
], ids=["not-cbor", "http", "zero-length", "garbage"])
def test_garbage_closes_only_that_connection(node, data):
    received, closed, name = exchange(node, data)
    readable = 0 < struct.unpack(">I", data[:4])[0] <= wire.FRAME_BYTES_MAX
    assert_closed_with_one_log_line(node, received, closed, name, reply_expected=readable)
    node.assert_serving()


@pytest.mark.parametrize("length", [2**31, 2**32 - 1, wire.FRAME_BYTES_MAX + 1])
def test_huge_length_prefix_is_refused_before_the_body(node, length):
    received, closed, name = exchange(node, struct.pack(">I", length) + b"x" * 100)
    assert_closed_with_one_log_line(node, received, closed, name, reply_expected=False)
    node.assert_serving()


def test_frame_cut_in_the_middle_then_closed(node):
    whole = frame({"t": "put", "id": 1, "key": "cut", "value": "v", "cid": b"c" * 16, "rq": 1, "ack": 1})
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(whole[: len(whole) // 2])
    node.assert_serving()
    assert node.client.get("cut") is None, "half a put frame must not be applied"


def test_half_a_frame_and_a_stall_does_not_block_others(node):
    whole = frame({"t": "get", "id": 1, "key": "k", "lin": True})
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
        s.sendall(whole[:3])
        node.assert_serving()
        s.sendall(whole[3:7])
        node.assert_serving()


def test_three_hundred_idle_connections(node):
    socks = []
    rss_before = node.rss()
    try:
        for i in range(300):
            s = socket.create_connection(("127.0.0.1", node.port), timeout=5)
            if i % 3 == 1:
                s.sendall(b"\x00\x00")  # half a header
            elif i % 3 == 2:
                s.sendall(struct.pack(">I", 1000) + b"x" * 10)  # half a body
            socks.append(s)
        node.assert_serving()
    finally:
        for s in socks:
            s.close()
    node.assert_serving()
    assert node.rss() - rss_before < RSS_GROWTH_MAX


GOOD = {
    "put": {"t": "put", "id": 7, "key": "k", "value": "v", "cid": b"c" * 16, "rq": 1, "ack": 1},
    "del": {"t": "del", "id": 7, "key": "k", "prefix": False, "cid": b"c" * 16, "rq": 1, "ack": 1},
    "cas": {"t": "cas", "id": 7, "key": "k", "expected": None, "new": "n", "cid": b"c" * 16, "rq": 1, "ack": 1},
    "get": {"t": "get", "id": 7, "key": "k", "lin": True},
    "list": {"t": "list", "id": 7, "prefix": "", "keys_only": False, "lin": True, "limit": 0},
    "status": {"t": "status", "id": 7},
    "watch": {"t": "watch", "id": 7, "key": "k", "prefix": False},
    "unwatch": {"t": "unwatch", "id": 7, "watch": 3},
}


def _wrong_values(value) -> list:
    """Values of another CBOR type than ``value`` (and a few hostile ones)."""
    candidates = [12345, -1, "text", b"bytes", [1, 2], {"a": 1}, True, None, 1.5, 2**70,
                  cbor2.CBORTag(1, 0)]  # tag 1 decodes to a datetime
    out = []
    for c in candidates:
        if type(c) is type(value):
            continue
        if value is None and c is None:
            continue
        out.append(c)
    return out


WRONG_FIELD_CASES = []
for _kind, _msg in GOOD.items():
    for _field in _msg:
        if _field == "t":
            continue
        for _bad in _wrong_values(_msg[_field]):
            if _kind == "cas" and _field == "expected" and type(_bad) in (str, bytes):
                continue  # text/bytes are legal expected values
            if _kind in ("put",) and _field == "value" and type(_bad) in (str, bytes):
                continue
            if _kind == "cas" and _field == "new" and type(_bad) in (str, bytes):
                continue
            WRONG_FIELD_CASES.append((_kind, _field, _bad))


def test_wrong_cbor_types_in_every_field_of_client_messages(node):
    assert len(WRONG_FIELD_CASES) > 150
    rss_before = node.rss()
    mark = len(node.log_text())
    failures = []
    for kind, field_name, bad in WRONG_FIELD_CASES:
        msg = dict(GOOD[kind])
        msg[field_name] = bad
        # A good request first: it is served, then the bad one gets an addressed protocol error.
        received, closed, name = exchange(node, frame({"t": "status", "id": 1}) + frame(msg))
        got = replies(received)
        ok = (closed and len(got) == 2 and isinstance(got[0], wire.OkReply) and got[0].id == 1
              and isinstance(got[1], wire.ErrorReply) and got[1].code == wire.PROTOCOL
              and got[1].id == (7 if field_name != "id" else None))
        if not ok:
            failures.append((kind, field_name, repr(bad), closed, got))
    assert not failures, f"{len(failures)} bad messages not refused properly, e.g. {failures[:3]}"
    node.assert_serving()
    # missing fields too
    for kind, msg in GOOD.items():
        for field_name in msg:
            if field_name == "t":
                continue
            partial = {k: v for k, v in msg.items() if k != field_name}
            received, closed, _ = exchange(node, frame(partial))
            got = replies(received)
            assert closed and got and got[-1].code == wire.PROTOCOL, (kind, field_name, got)
    node.assert_serving()
    assert node.rss() - rss_before < RSS_GROWTH_MAX
    assert "Traceback" not in node.log_text()[mark:]


@pytest.mark.parametrize("lin", [True, False])
def test_a_get_of_an_empty_or_oversized_key_is_a_bad_request_and_the_connection_goes_on(node, lin):
    """docs/protocol.md: a request over a limit gets bad_request, a get as a put (QA: the server answered
    "not found"). The connection stays open: the next request is served."""
    for key, problem in (("", "key must not be empty"), ("k" * 4097, "key has 4097 bytes in UTF-8, more than 4096"),
                         ("\u00e9" * 2049, "key has 4098 bytes")):
        request = dict(GOOD["get"], key=key, lin=lin)
        received, closed, _ = exchange(node, frame(request) + frame({"t": "status", "id": 8}), replies_wanted=2)
        got = replies(received)
        assert not closed and len(got) == 2, got
        assert isinstance(got[0], wire.ErrorReply) and got[0].code == wire.BAD_REQUEST and got[0].id == 7, got
        assert problem in got[0].message
        assert isinstance(got[1], wire.OkReply) and got[1].id == 8
    good = dict(GOOD["get"], key="k" * 4096, lin=lin)
    got = replies(exchange(node, frame(good), replies_wanted=1)[0])
    assert isinstance(got[0], wire.OkReply) and got[0].result["found"] is False


@pytest.mark.parametrize("lin", [True, False])
def test_a_list_with_an_oversized_prefix_is_a_bad_request_and_the_empty_prefix_lists_all(node, lin):
    """A prefix longer than any key can be matches nothing: bad_request, as for a get of such a key (QA: it
    was answered ok with no items). The empty prefix is every key, and one of 4096 bytes is allowed."""
    for prefix in ("p" * 4097, "\u00e9" * 2049):
        request = dict(GOOD["list"], prefix=prefix, lin=lin)
        received, closed, _ = exchange(node, frame(request) + frame({"t": "status", "id": 8}), replies_wanted=2)
        got = replies(received)
        assert not closed and len(got) == 2, got
        assert isinstance(got[0], wire.ErrorReply) and got[0].code == wire.BAD_REQUEST and got[0].id == 7, got
        assert "more than 4096" in got[0].message
        assert isinstance(got[1], wire.OkReply) and got[1].id == 8
    for prefix in ("", "p" * 4096):
        got = replies(exchange(node, frame(dict(GOOD["list"], prefix=prefix, lin=lin)), replies_wanted=1)[0])
        assert isinstance(got[0], wire.OkReply) and "items" in got[0].result, got


def test_bad_first_frame_gets_an_error_addressed_to_its_request(node):
    msg = dict(GOOD["put"], key=5)
    received, closed, _ = exchange(node, frame(msg))
    got = replies(received)
    assert closed and got and got[-1].code == wire.PROTOCOL
    assert got[-1].id == 7


@pytest.mark.parametrize("obj", [
    {"t": "nope", "id": 1},
    {"t": 5, "id": 1},
    {"id": 1, "key": "k"},
    ["t", "put"],
    "just a string",
    {"t": "ok", "id": 1, "r": {}},          # a reply sent to the server
    {"t": "err", "id": 1, "code": "x", "msg": "y", "leader": None},
], ids=["unknown-t", "int-t", "no-t", "array", "string", "ok-reply", "err-reply"])
def test_unknown_message_types(node, obj):
    if isinstance(obj, dict) and obj.get("t") in ("ok", "err"):
        # Well-formed messages of the wrong direction: an error reply, and the connection stays open
        # (a status request behind it on the same connection is answered).
        received, closed, _ = exchange(node, frame(obj) + frame({"t": "status", "id": 2}), replies_wanted=2)
        got = replies(received)
        assert len(got) == 2 and isinstance(got[0], wire.ErrorReply), got
        assert isinstance(got[1], wire.OkReply) and got[1].id == 2, got
        assert not closed, "the node closed the connection after a well-formed reply-type message"
    else:
        received, closed, name = exchange(node, frame(obj))
        got = replies(received)
        assert got and isinstance(got[-1], wire.ErrorReply), got
        assert_closed_with_one_log_line(node, received, closed, name, reply_expected=True)
    node.assert_serving()


@pytest.mark.parametrize("hello,reason", [
    ({"t": "hello", "node": 2, "cluster": "kv"}, "which is not a member"),       # not in this one-node cluster
    ({"t": "hello", "node": 1, "cluster": "kv"}, "which is not a member"),       # claims to be the node itself
    ({"t": "hello", "node": 1, "cluster": "another"}, "in cluster 'another'"),   # wrong cluster id
    ({"t": "hello", "node": 0, "cluster": "kv"}, "hello.node"),                  # node ids start at 1
    ({"t": "hello", "node": 2, "cluster": "kv", "eng": "other-engine"}, None),   # the other engine: both named
], ids=["unknown-node", "itself", "wrong-cluster", "node-zero", "other-engine"])
def test_client_pretending_to_be_a_peer_is_refused(node, hello, reason):
    hello = _with_engine(node, hello)
    if reason is None:
        other = next(e for e in ENGINES if e != node.engine)
        reason = f"runs the {other!r} engine, we run {node.engine!r}"
    px = {"t": "px", "m": [[7, hello["node"], [99, hello["node"]], 10**6, 1]]}  # a heartbeat from "the leader"
    received, closed, name = exchange(node, frame(hello) + frame(px))
    assert_closed_with_one_log_line(node, received, closed, name, reply_expected=True)
    line = log_lines_about(node, name)[0]
    assert reason in line, f"refused for another reason than {reason!r}: {line}"
    node.assert_serving()
    status = node.client.status(node.endpoint)
    assert status["is_leader"], "a fake peer's heartbeat with a higher ballot must not depose the leader"


def _with_engine(node: LiveNode, hello: dict) -> dict:
    """The hello as a peer of ``node``'s engine would send it (``eng`` only when not core, as
    kvstore.peers does), so that only the field its case names is wrong; the ``other-engine`` case
    gets the engine ``node`` does not run."""
    hello = dict(hello)
    if hello.get("eng") == "other-engine":
        other = next(e for e in ENGINES if e != node.engine)
        hello["eng"] = other
        if other == "core":
            del hello["eng"]  # a core node says nothing
    elif node.engine != "core":
        hello["eng"] = node.engine
    return hello


def test_peer_frame_on_a_client_connection_is_refused(node):
    """A peer's frame after a client request: the request is answered, then a ``protocol`` error with id
    null, and the connection closes (protocol.md: an ``err`` with id null means the connection is over)."""
    px = {"t": "px", "m": [[7, 2, [99, 2], 10**6, 1]]}
    get = {"t": "get", "id": 9, "key": "probe-1", "lin": False}
    received, closed, name = exchange(node, frame(get) + frame(px) + frame(get), timeout=5)
    got = replies(received)
    assert len(got) == 2 and isinstance(got[0], wire.OkReply) and got[0].id == 9, got
    assert got[1].code == wire.PROTOCOL and got[1].id is None and "peer message" in got[1].message, got
    assert_closed_with_one_log_line(node, received, closed, name, reply_expected=True)
    node.assert_serving()
    assert node.client.status(node.endpoint)["is_leader"]


@pytest.mark.parametrize("bad", [b"\x00\x00\x00\x02\xff\xff", b"\x00\x00\x00\x00"], ids=["garbage-body", "zero-length"])
def test_requests_before_a_bad_frame_are_answered_before_the_error(node, bad):
    """Protocol.md, section 2: frames that arrived complete before a bad one are still served. Three puts
    and a linearizable get (they wait for consensus), then a bad frame, in one write: four answers, then
    the ``protocol`` error, then the connection closes; the puts were applied."""
    key = f"before-bad-{len(bad)}"
    puts = b"".join(frame({"t": "put", "id": i, "key": f"{key}-{i}", "value": "v", "cid": bytes([len(bad)]) * 16,
                           "rq": i, "ack": 1}) for i in (1, 2, 3))
    get = frame({"t": "get", "id": 4, "key": f"{key}-1", "lin": True})
    received, closed, name = exchange(node, puts + get + bad)
    got = replies(received)
    assert [type(r).__name__ for r in got] == ["OkReply"] * 4 + ["ErrorReply"], got
    assert sorted(r.id for r in got[:4]) == [1, 2, 3, 4] and got[-1].code == wire.PROTOCOL, got
    assert_closed_with_one_log_line(node, received, closed, name, reply_expected=True)
    assert [node.client.get(f"{key}-{i}") for i in (1, 2, 3)] == ["v", "v", "v"]
    node.assert_serving()


def test_a_client_that_half_closes_after_its_requests_still_gets_every_answer(node):
    """A client may end its side once its requests are sent (``shutdown(SHUT_WR)``, as ``nc -N`` does)
    and read on (QA: the node closed at once, dropping the answers of writes still waiting for consensus,
    which it went on to apply: the client could not tell). Three puts and a linearizable get, then the
    end of the stream: four answers, then the node closes; the puts were applied."""
    for attempt in range(5):
        key = f"half-closed-{attempt}"
        cid = bytes([100 + attempt]) * 16
        requests = b"".join(frame({"t": "put", "id": i, "key": f"{key}-{i}", "value": "v", "cid": cid, "rq": i,
                                   "ack": 1}) for i in (1, 2, 3))
        requests += frame({"t": "get", "id": 4, "key": f"{key}-1", "lin": True})
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
            s.sendall(requests)
            s.shutdown(socket.SHUT_WR)
            received = b""
            while chunk := s.recv(65536):
                received += chunk
        got = replies(received)
        assert sorted((type(r).__name__, r.id) for r in got) == [("OkReply", i) for i in (1, 2, 3, 4)], got
        assert [node.client.get(f"{key}-{i}") for i in (1, 2, 3)] == ["v", "v", "v"]
    node.assert_serving()


def _peak_rss(node: LiveNode) -> int:
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_many_large_answers_asked_in_one_write_are_held_back_until_the_client_reads(node):
    """QA: 600 gets of a 1 MiB value in one 20 KB write made the node build 600 MB of answers at once (1.9 GB
    of memory, 2 s without a heartbeat, a leader change), then close the connection. Now at most a window
    of answers is encoded ahead of what the client read: the node's peak memory stays put while the client
    does not read, it serves others meanwhile, and the client gets every answer once it reads."""
    value = bytes(range(256)) * 4096  # 1 MiB
    node.client.put("large-answers", value)
    gets = 240
    requests = b"".join(frame({"t": "get", "id": i, "key": "large-answers", "lin": i % 4 == 0}) for i in range(gets))
    peak_before = _peak_rss(node)
    with socket.create_connection(("127.0.0.1", node.port), timeout=30) as s:
        s.sendall(requests)
        time.sleep(1.5)  # the client reads nothing for a while ...
        node.assert_serving()  # ... and the node serves others meanwhile
        received = bytearray()
        got: list = []
        while len(got) < gets:
            chunk = s.recv(1 << 20)
            assert chunk, f"the node closed the connection after {len(got)} of {gets} answers"
            received += chunk
            got += [wire.decode_body(b) for b in wire.split_frames(received)]
    assert sorted(r.id for r in got) == list(range(gets))
    wrong = [r for r in got if not (isinstance(r, wire.OkReply) and r.result["value"] == value)]
    assert not wrong, wrong[:1]
    growth = _peak_rss(node) - peak_before
    assert growth < 100 * 1024 * 1024, f"peak memory grew by {growth // (1024 * 1024)} MiB for {gets} MiB of answers"
    node.assert_serving()


def test_memory_stays_bounded_after_a_burst_of_bad_input(node):
    rss_before = node.rss()
    for i in range(200):
        exchange(node, struct.pack(">I", 2**31 + i) + b"x" * 1000, timeout=5)
        exchange(node, frame({"t": "put", "id": i, "key": 5, "value": "v", "cid": b"c", "rq": 1, "ack": 1}), timeout=5)
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.sendall(struct.pack(">I", 4 * 1024 * 1024) + b"y" * 65536)  # a big frame, abandoned
    node.assert_serving()
    assert node.rss() - rss_before < RSS_GROWTH_MAX, f"RSS grew by {(node.rss() - rss_before) >> 20} MiB"


def test_large_frames_that_stall_cannot_take_more_memory_than_the_node_keeps_for_them(tmp_path):
    """kv serve --arriving-frames-max-mib 9: one connection that sends the start of an 8 MiB frame and
    stalls holds 8 MiB of the 9; a second large frame is refused with ``unavailable`` (its connection
    closed cleanly once the node has read and dropped the rest of it; not the node); small requests go
    on; once the first connection ends, a large write fits."""
    node = LiveNode(tmp_path, extra_args=("--arriving-frames-max-mib", "9"))
    try:
        with socket.create_connection(("127.0.0.1", node.port), timeout=10) as stalled:
            stalled.sendall(struct.pack(">I", 8 << 20) + b"x" * 100_000)
            time.sleep(0.3)
            # The whole refused frame is sent: the node reads and drops its rest, so the connection ends
            # cleanly after the refusal (not with a reset that could reach the client first).
            with socket.create_connection(("127.0.0.1", node.port), timeout=10) as refused:
                refused.sendall(struct.pack(">I", 2 << 20) + b"y" * (2 << 20))
                received = b""
                while chunk := refused.recv(65536):  # (a reset raises ConnectionResetError: the test fails)
                    received += chunk
            got = replies(received)
            assert len(got) == 1 and got[0].id is None and got[0].code == wire.UNAVAILABLE and got[0].refused, got
            assert "cannot be received now" in got[0].message and "send it again later" in got[0].message
            node.assert_serving()  # small requests need no room
            counters = node.client.status(node.endpoint)["counters"]
            assert counters["frames_refused_for_room"] == 1
            assert counters.get("protocol_errors", 0) == 0  # not the sender's fault
        big = "v" * 1_000_000  # a frame of about 1 MB: it takes room while it arrives, and now finds it
        node.client.put("big", big)  # (refused until the node saw the stalled connection end: the client retries)
        assert node.client.get("big") == big
        assert node.proc.poll() is None
    finally:
        node.close()


def test_a_flood_of_idle_connections_is_refused_and_never_fails_the_disk(tmp_path):
    """ulimit -n 256, so the node takes 128 client connections. 400 connections that send nothing: the
    node takes 128 and refuses the rest, writes its snapshots meanwhile (before, EMFILE on a snapshot
    fenced the node for good: "disk failed"), and once the silent ones are 10 s old a new client that
    sends a request takes the place of one of them, while the flood is still open."""
    from kvstore import descriptors
    from kvstore.oneshot import OneShotClient

    node = LiveNode(tmp_path, extra_args=("--snapshot-every", "300", "--idle-snapshot-seconds", "0"), open_files=256)
    flood: list[socket.socket] = []
    try:
        writer = OneShotClient(node.endpoint, timeout=10)  # connected before the flood: it keeps its connection
        writer.put("first", "1")
        flooded = time.monotonic()
        for _ in range(400):
            flood.append(socket.create_connection(("127.0.0.1", node.port), timeout=5))
        for i in range(1000):  # past three snapshot intervals
            writer.put(f"k{i}", f"v{i}")
        time.sleep(max(0.0, flooded + descriptors.IDLE_EVICT_SECONDS + 0.5 - time.monotonic()))
        with OneShotClient(node.endpoint, timeout=10) as late:
            late.put("late", "x")
            status = late.status(node.endpoint)
            assert late.get("late") == "x"
        assert status["disk"] == "ok", status["disk_error"]
        assert status["client_connections_max"] == 128
        counters = status["counters"]
        assert counters["connections_refused_over_limit"] >= 400 - 128 - 64  # (64: the wait for a Hello)
        assert counters["connections_evicted_silent"] >= 1
        assert counters["snapshots"] >= 3 and status["snapshot_slot"] >= 900
        assert [writer.get(f"k{i}") for i in range(0, 1000, 37)] == [f"v{i}" for i in range(0, 1000, 37)]
        writer.close()
        assert "Too many open files" not in node.log_text()
    finally:
        for sock in flood:
            sock.close()
        node.close()
