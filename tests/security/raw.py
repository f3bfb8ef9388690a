"""Raw connections for the security tests: plain TCP, or TLS from the standard library's ``ssl``, that
send exact bytes (kv frames or not) and collect what comes back until the node closes or a deadline.
"""
from __future__ import annotations

import socket
import ssl
import struct
import time

import cbor2

from kvstore import wire


def frame(obj) -> bytes:
    body = cbor2.dumps(obj)
    return struct.pack(">I", len(body)) + body


def replies(data: bytes) -> list:
    return [wire.decode_body(b) for b in wire.split_frames(bytearray(data))]


_contexts: dict[tuple, ssl.SSLContext] = {}


def tls_context(files: dict[str, str]) -> ssl.SSLContext:
    """A TLS 1.3 client context for ``files`` (cacert, cert, key), made once per set of files."""
    ident = (files["cacert"], files["cert"], files["key"])
    if ident not in _contexts:
        _contexts[ident] = _make_context(files)
    return _contexts[ident]


def _make_context(files: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(files["cacert"])
    ctx.load_cert_chain(files["cert"], files["key"])
    return ctx


def exchange(port: int, data: bytes, *, files: dict[str, str] | None = None, timeout: float = 10.0,
             replies_wanted: int | None = None) -> tuple[bytes, bool, str]:
    """Send ``data`` on a fresh connection (TLS with ``files``, else plain TCP); return (bytes received,
    closed by the node, our ``127.0.0.1:port`` name). Reads until the node closes, ``timeout`` passes, or
    ``replies_wanted`` whole frames arrived. A TLS error while reading counts as closed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    name = f"127.0.0.1:{raw.getsockname()[1]}"
    try:
        s = tls_context(files).wrap_socket(raw, server_hostname="127.0.0.1") if files else raw
        s.sendall(data)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):  # refused during the handshake
        raw.close()
        return b"", True, name
    with s:
        received = b""
        closed = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
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


def fake_peer_frames(claimed: int, cluster_id: str = "kv") -> bytes:
    """A Hello claiming member ``claimed``, then a heartbeat from it with a ballot far above any real one
    (a real member sending it would depose the leader)."""
    hello = {"t": "hello", "node": claimed, "cluster": cluster_id}
    px = {"t": "px", "m": [[7, claimed, [10**6, claimed], 10**6, 1]]}
    return frame(hello) + frame(px)


PUT_FRAME_ID = 1  # the frame id of put_frame's request


def put_frame(key: str, value: str, request_id: int = 1) -> bytes:
    return frame({"t": "put", "id": PUT_FRAME_ID, "key": key, "value": value, "cid": b"p" * 16, "rq": request_id,
                  "ack": 1})
