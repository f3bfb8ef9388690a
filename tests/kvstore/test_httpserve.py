"""``kvstore.httpserve``: the small HTTP server behind ``--metrics-addr`` and ``kv dashboard``.

Real sockets on 127.0.0.1, in one trio run: at most ``CONNECTIONS_MAX`` connections are open at once;
one beyond them closes the oldest connection still waiting for its request (QA: 64 idle connections
kept Prometheus's scrapes out for ``REQUEST_SECONDS``), and is itself closed at once only when every
open connection is being answered; a connection that sends no request within ``REQUEST_SECONDS`` is
closed; a malformed request gets a 400 and the server goes on.
"""
from __future__ import annotations

import trio

from kvstore import httpserve
from kvstore.httpserve import CONNECTIONS_MAX, Request, Response, serve_http


async def _exchange(port: int, request: bytes) -> bytes:
    """The whole answer to ``request`` (b"" if the server closed the connection without one)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
        return data


async def _get(port: int, path: str = "/metrics") -> bytes:
    """The whole answer to one GET."""
    return await _exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def _closed_by_server(stream: trio.SocketStream) -> bool:
    with trio.move_on_after(2):
        try:
            return await stream.receive_some(10) == b""
        except trio.BrokenResourceError:
            return True
    return False


async def test_a_new_connection_closes_the_oldest_idle_one_when_the_server_is_full():
    async def handle(request: Request) -> Response:
        return Response(200, b"up 1\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handle, "127.0.0.1:0")
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(CONNECTIONS_MAX)]
        await trio.sleep(0.2)  # every one accepted and waiting for its request
        answer = await _get(port)
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"up 1\n"), answer
        assert await _closed_by_server(idle[0])  # the oldest gave way
        # full again: the next new one takes the next oldest's place, and so on
        idle.append(await trio.open_tcp_stream("127.0.0.1", port))
        await trio.sleep(0.2)
        assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
        assert await _closed_by_server(idle[1])
        # the others still wait: each can still send its request and be answered
        await idle[-1].send_all(b"GET / HTTP/1.1\r\n\r\n")
        assert (await idle[-1].receive_some(65536)).startswith(b"HTTP/1.1 200 OK")
        for stream in idle:
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_new_connection_is_closed_at_once_when_every_open_one_is_being_answered():
    release = trio.Event()
    busy = 0

    async def handle(request: Request) -> Response:
        nonlocal busy
        busy += 1
        await release.wait()
        return Response(200, b"late\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handle, "127.0.0.1:0")
        answers: list[bytes] = []

        async def one() -> None:
            answers.append(await _get(port))

        async with trio.open_nursery() as clients:
            for _ in range(CONNECTIONS_MAX):
                clients.start_soon(one)
            with trio.fail_after(5):
                while busy < CONNECTIONS_MAX:
                    await trio.sleep(0.01)
            assert await _get(port) == b""  # nothing waits for a request: the new one is refused
            release.set()
        assert len(answers) == CONNECTIONS_MAX and all(a.startswith(b"HTTP/1.1 200 OK") for a in answers)
        assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")  # the count went back down
        nursery.cancel_scope.cancel()


async def test_a_connection_that_sends_no_request_in_time_is_closed(monkeypatch):
    monkeypatch.setattr(httpserve, "REQUEST_SECONDS", 0.3)

    async def handle(request: Request) -> Response:
        return Response(200, b"ok\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handle, "127.0.0.1:0")
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /metr")  # half a request line, then nothing
        assert await _closed_by_server(stream)
        await stream.aclose()
        bad = await trio.open_tcp_stream("127.0.0.1", port)
        await bad.send_all(b"NONSENSE\r\n\r\n")
        assert (await bad.receive_some(65536)).startswith(b"HTTP/1.1 400 Bad Request")
        await bad.aclose()
        assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
        nursery.cancel_scope.cancel()


async def test_a_request_target_urlsplit_refuses_gets_a_400_and_the_server_goes_on():
    # QA: "GET //[x HTTP/1.1" (an unclosed IPv6 host to urlsplit) ended `kv serve --metrics-addr` with exit 1
    async def handle(request: Request) -> Response:
        return Response(200, b"ok\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handle, "127.0.0.1:0")
        for target in ("//[x", "http://[::1/metrics", "//[", "/metrics?a=1"):
            answer = await _get(port, target)
            if target.startswith("/metrics?"):
                assert answer.startswith(b"HTTP/1.1 200 OK"), answer
            else:
                assert answer.startswith(b"HTTP/1.1 400 Bad Request"), (target, answer)
                assert answer.endswith(b"malformed request target\n"), answer
        assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")
        nursery.cancel_scope.cancel()


async def test_a_failure_nobody_foresaw_while_reading_a_request_ends_only_that_connection(monkeypatch, caplog):
    real_read = httpserve._read_request
    failures = 0

    async def read_or_fail(stream):
        nonlocal failures
        request = await real_read(stream)
        if request is not None and request.path == "/boom":
            failures += 1
            raise RuntimeError("a bug in reading requests")
        return request

    monkeypatch.setattr(httpserve, "_read_request", read_or_fail)

    async def handle(request: Request) -> Response:
        return Response(200, b"ok\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handle, "127.0.0.1:0")
        assert await _get(port, "/boom") == b""  # that connection is closed without an answer ...
        assert failures == 1
        assert (await _get(port)).startswith(b"HTTP/1.1 200 OK")  # ... and the server goes on
        assert "HTTP connection failed" in caplog.text and "a bug in reading requests" in caplog.text
        nursery.cancel_scope.cancel()


async def test_head_gets_the_head_only_and_a_content_length_int_would_take_otherwise_is_refused():
    """Fuzz QA: HEAD /metrics sent the body; "Content-Length: 1_0" and "+3" were taken (Python's int)."""
    async def handle(request: Request) -> Response:
        return Response(200, b"up 1\n")

    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, handle, "127.0.0.1:0")
        head = await _exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 5\r\n" in head and head.endswith(b"\r\n\r\n")
        for length in (b"1_0", b"+3", b"-1", b"99999999999999"):
            answer = await _exchange(port, b"POST / HTTP/1.1\r\nContent-Length: " + length + b"\r\n\r\n0123456789")
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 413")), (length, answer)
        nursery.cancel_scope.cancel()
