"""A very small HTTP/1.1 server on trio, for ``/metrics`` (``kvstore.metrics``) and ``kv dashboard``.

Theory of operation
-------------------
One request per connection (every answer says ``Connection: close``), which is all Prometheus and a
polling web page need. ``serve_http`` listens on one address and hands each request to an async
``handle(request) -> Response``. The request head is read up to ``HEAD_BYTES_MAX`` and a body up to
``BODY_BYTES_MAX``; a connection that has not sent its request within ``REQUEST_SECONDS`` is closed. At
most ``CONNECTIONS_MAX`` are open at once (each holds a file descriptor of the node's: see
``kvstore.descriptors``): one accepted beyond that closes the oldest connection still waiting for its
request instead, so idle connections cannot lock a scraper out for ``REQUEST_SECONDS``; only when every
open connection is being answered is the new one closed at once. A handler that raises gets a 500 and
one log line with its traceback; the server goes on, as it does when reading a request fails in a way
nobody foresaw (a malformed request gets a 400).

Rules: it binds only where it is told (callers bind 127.0.0.1 unless the operator names another
address), never blocks the event loop on I/O, and never lets one connection's failure end the server.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from .endpoints import parse_endpoint

__all__ = ["Request", "Response", "serve_http", "parse_listen_address", "HEAD_BYTES_MAX", "BODY_BYTES_MAX",
           "REQUEST_SECONDS", "CONNECTIONS_MAX"]

log = logging.getLogger("kvstore.http")

HEAD_BYTES_MAX = 16 * 1024
BODY_BYTES_MAX = 64 * 1024
REQUEST_SECONDS = 10.0
CONNECTIONS_MAX = 64  # open at once; more are closed as soon as they are accepted

_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 500: "Internal Server Error", 502: "Bad Gateway"}


@dataclass
class Request:
    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str] = field(default_factory=dict)  # name -> last value
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)  # lowercase name -> last value


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_listen_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as ``kvstore.endpoints`` reads it, except that port 0 (any free port) is allowed.
    Raises ``EndpointError`` (a ValueError)."""
    if address.endswith(":0"):
        host, _ = parse_endpoint(address[:-2] + ":1")
        return host, 0
    return parse_endpoint(address)


async def serve_http(handle: Handler, address: str, *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handle`` on ``address`` (``HOST:PORT``; port 0 picks a free one) until cancelled.

    ``task_status.started(port)`` reports the port listened on. Raises ``EndpointError`` (a
    ValueError) for a malformed address and ``OSError`` if it cannot listen.
    """
    host, port = parse_listen_address(address)
    listeners = await trio.open_tcp_listeners(port, host=host)
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(partial(_serve_connection, handle, _Open()), listeners)


class _Open:
    """The connections open, and those of them still waiting for their request (oldest first)."""

    def __init__(self) -> None:
        self.count = 0
        self.waiting: dict[int, trio.CancelScope] = {}  # (insertion order: oldest first)
        self.next_id = 0

    def make_room(self) -> bool:
        """True if a new connection may stay: under the limit, or the oldest waiting one was closed."""
        if self.count <= CONNECTIONS_MAX:
            return True
        if not self.waiting:
            return False
        oldest = next(iter(self.waiting))
        self.waiting.pop(oldest).cancel()  # it sent no request yet: it gives way (and counts as closed now)
        self.count -= 1
        return True


async def _serve_connection(handle: Handler, open_: _Open, stream: trio.abc.Stream) -> None:
    open_.count += 1
    counted = True
    try:
        if not open_.make_room():
            return  # closed at once: a flood of connections must not use up the node's file descriptors
        conn_id = open_.next_id
        open_.next_id += 1
        request: Request | _BadRequest | None = None
        with trio.move_on_after(REQUEST_SECONDS) as waiting:
            open_.waiting[conn_id] = waiting
            try:
                request = await _read_request(stream)
            except _BadRequest as exc:
                request = exc
            finally:
                if open_.waiting.pop(conn_id, None) is None:
                    counted = False  # evicted by a newer connection, which took its place in the count
        if waiting.cancelled_caught or request is None:
            return
        if isinstance(request, _BadRequest):
            await _send(stream, Response(request.status, f"{request}\n".encode()))
            return
        try:
            response = await handle(request)
        except Exception:  # one handler's bug must not end the server
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = Response(500, b"internal error (see the server's log)\n")
        await _send(stream, response, head_only=request.method == "HEAD")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    except Exception:  # a bug of ours on one connection's input: that connection ends, the server goes on
        log.exception("HTTP connection failed")
    finally:
        if counted:
            open_.count -= 1
        await trio.aclose_forcefully(stream)


async def _read_request(stream: trio.abc.ReceiveStream) -> Request | None:
    data = bytearray()
    while b"\r\n\r\n" not in data:
        if len(data) > HEAD_BYTES_MAX:
            raise _BadRequest(413, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(400, "malformed request line")
    method, target = parts[0].upper(), parts[1]
    length = 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
        if name.strip().lower() == "content-length":
            text = value.strip()
            if not (text.isascii() and text.isdigit() and len(text) <= 12):  # (int() also takes "1_0", "+3")
                raise _BadRequest(400, "malformed Content-Length")
            length = int(text)
    if length < 0 or length > BODY_BYTES_MAX:
        raise _BadRequest(413, "request body too large")
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            return None
        body += chunk
    try:
        split = urlsplit(target)  # ValueError for some targets ("//[x": an unclosed IPv6 host)
        query = {name: values[-1] for name, values in parse_qs(split.query).items()}
        path = unquote(split.path)
    except ValueError:
        raise _BadRequest(400, "malformed request target") from None
    return Request(method=method, path=path, query=query, body=bytes(body[:length]), headers=headers)


async def _send(stream: trio.abc.SendStream, response: Response, *, head_only: bool = False) -> None:
    """Send ``response``; for a HEAD request, its head only (the Content-Length a GET would get)."""
    reason = _REASONS.get(response.status, "Unknown")
    head = (f"HTTP/1.1 {response.status} {reason}\r\n"
            f"Content-Type: {response.content_type}\r\n"
            f"Content-Length: {len(response.body)}\r\n"
            "Cache-Control: no-store\r\n"
            "Connection: close\r\n\r\n").encode("latin-1")
    await stream.send_all(head if head_only else head + response.body)
