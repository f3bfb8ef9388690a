"""Fake nodes on real sockets for the one-shot client's tests: threads that speak the client protocol.

``FakeNode(handler)`` listens on 127.0.0.1 (an OS-assigned port), optionally with TLS (an
``ssl.SSLContext`` for the server side), and answers every request frame with what
``handler(request_map)`` returns: a reply map (``ok(...)``, ``err(...)``), or ``SILENT`` to say nothing
(a node that accepts but does not answer). Each node records the requests it got. ``closed_port()`` is a
port where nothing listens (a node that is down).
"""
from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import cbor2

from kvstore import frames

SILENT = object()


def ok(request: dict, result: dict) -> dict:
    return {"t": "ok", "id": request["id"], "r": result}


def err(request: dict, code: str, message: str, leader: str | None = None) -> dict:
    return {"t": "err", "id": request.get("id"), "code": code, "msg": message, "leader": leader}


class FakeNode:
    def __init__(self, handler: Callable[[dict], Any], *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.requests: list[dict] = []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buffer = bytearray()
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                for body in frames.split_frames(buffer):
                    request = cbor2.loads(body)
                    self.requests.append(request)
                    reply = self.handler(request)
                    if reply is not SILENT:
                        payload = cbor2.dumps(reply)
                        conn.sendall(len(payload).to_bytes(4, "big") + payload)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.listener.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


class Store:
    """A tiny store behind a handler: put/get/del/cas/list/status like the real state machine."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[Any, int, int]] = {}
        self.revision = 0

    def handle(self, request: dict) -> dict:
        kind = request["t"]
        key = request.get("key")
        if kind == "put":
            self.revision += 1
            old = self.data.get(key)
            self.data[key] = (request["value"], (old[1] if old else 0) + 1, self.revision)
            return ok(request, {"rev": self.revision})
        if kind == "get":
            if key not in self.data:
                return ok(request, {"found": False})
            value, version, mrev = self.data[key]
            return ok(request, {"found": True, "value": value, "ver": version, "mrev": mrev})
        if kind == "del":
            self.revision += 1
            if request["prefix"]:
                doomed = [k for k in self.data if k.startswith(key)]
            else:
                doomed = [key] if key in self.data else []
            for k in doomed:
                del self.data[k]
            return ok(request, {"deleted": len(doomed), "rev": self.revision})
        if kind == "cas":
            current = self.data.get(key)
            if (current[0] if current else None) != request["expected"]:
                return ok(request, {"ok": False})
            self.revision += 1
            self.data[key] = (request["new"], (current[1] if current else 0) + 1, self.revision)
            return ok(request, {"ok": True, "rev": self.revision})
        if kind == "list":
            items = sorted((k, v[0]) for k, v in self.data.items() if k.startswith(request["prefix"]))
            return ok(request, {"items": [[k] if request["keys_only"] else [k, v] for k, v in items]})
        if kind == "status":
            return ok(request, {"id": 1, "leader": 1, "is_leader": True, "decided_slot": self.revision,
                                "applied_slot": self.revision})
        return err(request, "bad_request", f"unknown request {kind}")
