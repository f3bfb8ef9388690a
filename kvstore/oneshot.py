"""A blocking client for one request at a time, on plain sockets: what ``kv get`` and friends use.

Theory of operation
-------------------
``kvstore.client``'s ``AsyncClient`` runs under trio and keeps many requests in flight on one
connection. A one-shot ``kv`` command sends one request and exits, and starting trio and
importing the full wire module (which loads the paxos package) cost it more than everything else
together. ``OneShotClient`` has the same methods for these commands and the same behaviour, on a plain
``socket`` (and the standard ``ssl`` module for a TLS cluster) with the frame codec of
``kvstore.frames``, so it imports neither trio nor paxos.

What it keeps from ``kvstore.client`` (see its module docstring for the reasons):

* the endpoint list and its rules (``kvstore.endpoints``);
* one connection, to the node believed to lead; every call has a deadline (``timeout``), and one
  attempt at most ``attempt_timeout`` of it (a node that accepts but never answers must not hold us);
* one addition: a read or write with no answer after ``HEDGE_SECONDS`` also goes to the next endpoint,
  and the first useful answer wins (``_exchange_hedged``): a paused node accepts connections and never
  answers, and a one-shot command would otherwise wait out a whole attempt timeout on it each time;
* ``not_leader`` with a hint: reconnect to the hinted leader at once (twice in a row at most);
  without a hint, a refused or lost connection, no answer in time, or a node that cannot serve
  (``timeout``, ``unavailable``, ``shutting_down``, ``storage_full``, ``disk_failed``): the next
  endpoint, after a short pause that grows from 20 ms to 0.5 s;
* writes carry ``(client_id, request_id, ack_below)`` and a retry reuses them, so a write is applied
  once; ``stale`` and a deadline passed after a write was sent raise ``Unavailable`` with
  ``outcome_unknown``;
* the errors: ``Unavailable``, ``RequestError`` (with the code), both ``KVError``, with the messages of
  ``kvstore.client``; and keys and values over the store's limits raise ``kvstore.limits.TooLarge``
  before anything is sent.

The error classes are ``kvstore.errors``'s, the same classes ``kvstore.client`` raises. This is also
the engine of ``kvstore.client.Client``, the blocking client for plain scripts (one ``OneShotClient`` per
calling thread).
"""
from __future__ import annotations

import builtins
import math
import os
import selectors
import socket
import threading
import time
from itertools import count
from typing import Any

from . import frames
from .endpoints import format_endpoint, next_in_rotation, parse_endpoint, parse_endpoint_list
from .errors import Entry, KVError, RequestError, Unavailable, entries_of
from .limits import check_key, check_value
from .tlsfiles import TlsError

__all__ = ["OneShotClient", "KVError", "Unavailable", "RequestError", "Entry", "tls_client_context"]


class _ConnectionLost(Exception):
    pass


# Codes after which another node may serve the request (as kvstore.client): a full or failed disk stops
# one node, not the cluster.
_TRY_ANOTHER = (frames.TIMEOUT, frames.UNAVAILABLE, frames.SHUTTING_DOWN, frames.STORAGE_FULL, frames.DISK_FAILED)
_REDIRECTS_MAX = 2
RENEWALS_MAX = 3  # new client ids one write may take after "expired" answers (kvstore.client's too)


class _Expired(Exception):
    """``_call``: a write refused as expired that no earlier attempt may have reached (see ``_write``)."""

    def __init__(self, horizon: int) -> None:
        super().__init__(horizon)
        self.horizon = horizon
# A data request unanswered this long is also sent to the next endpoint, and the first useful answer
# wins (see OneShotClient._exchange_hedged): a paused or wedged node accepts connections and never
# answers, and each one-shot command would otherwise wait out a whole attempt timeout on it.
HEDGE_SECONDS = 0.25
_PAUSE_FIRST = 0.02
_PAUSE_MAX = 0.5


def tls_client_context(cacert: str, cert: str, key: str) -> Any:
    """The dialing side's ``ssl.SSLContext``: ``kvstore.tlsfiles.client_context`` of the three files (TLS
    1.3 only, the server's certificate signed by the CA and naming the host dialed, our certificate
    shown). Raises ``TlsError`` (a ValueError) for a file it cannot use."""
    from .tlsfiles import TlsFiles, client_context

    return client_context(TlsFiles(cacert, cert, key))


class _Connection:
    """One blocking connection (TCP, or TLS over it) to one endpoint, one request at a time."""

    def __init__(self, endpoint: tuple[str, int], sock: socket.socket) -> None:
        self.endpoint = endpoint
        self.sock = sock
        self.buffer = bytearray()

    @classmethod
    def open(cls, endpoint: tuple[str, int], timeout: float, tls: Any) -> _Connection:
        """Connect within ``frames.CONNECT_SECONDS`` (a reachable node takes milliseconds) and finish the TLS
        handshake within ``timeout`` seconds; ``OSError`` if not."""
        host, port = endpoint
        sock = socket.create_connection((host, port), timeout=max(min(timeout, frames.CONNECT_SECONDS), 0.001))
        try:
            sock.settimeout(max(timeout, 0.001))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=host)  # handshakes within the socket timeout
        except BaseException:
            sock.close()
            raise
        return cls(endpoint, sock)

    def close(self) -> None:
        try:
            # shutdown first: it wakes a recv blocked on this socket in another thread (close alone does not)
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass

    def exchange(self, frame: bytes, rid: int, deadline: float) -> frames.Reply | None:
        """Send ``frame`` (request id ``rid``) and return its reply, or None if none came by ``deadline``.

        Raises ``_ConnectionLost`` or ``OSError`` if the connection fails first, ``frames.WireError`` if
        the node sends garbage."""
        try:
            self.send(frame, deadline)
        except TimeoutError:  # socket.timeout
            return None
        return self.wait(rid, deadline)

    def send(self, frame: bytes, deadline: float) -> None:
        """Send ``frame`` by ``deadline`` (``TimeoutError`` if the node does not take it by then)."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        self.sock.sendall(frame)

    def wait(self, rid: int, deadline: float) -> frames.Reply | None:
        """The reply to request ``rid`` (sent already), or None if none came by ``deadline``; raises as
        ``exchange``."""
        try:
            while True:
                reply = self.buffered_reply(rid)
                if reply is not None:
                    return reply
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.sock.settimeout(remaining)
                self.receive()
        except TimeoutError:  # socket.timeout
            return None

    def buffered_reply(self, rid: int) -> frames.Reply | None:
        """The reply to request ``rid`` if it is among the bytes received so far (replies to requests
        given up on are dropped); raises ``_ConnectionLost`` if the node gave up on the connection."""
        for body in frames.split_frames(self.buffer):
            reply = frames.decode_reply(body)
            if reply.id is None:  # the server gave up on this connection (protocol error)
                if reply.refused:  # ... without reading our request (no room for its frame)
                    return reply
                raise _ConnectionLost(reply.message or "connection closed by server")
            if reply.id == rid:
                return reply
        return None

    def receive(self) -> None:
        """Read what the node sent (blocking, within the socket's timeout) into the buffer."""
        data = self.sock.recv(frames.RECEIVE_CHUNK_BYTES)
        if not data:
            raise _ConnectionLost("connection lost before the reply")
        self.buffer += data

    def has_buffered_bytes(self) -> bool:
        """Whether a TLS socket holds decrypted bytes not read yet (``select`` does not see them)."""
        pending = getattr(self.sock, "pending", None)
        return bool(pending is not None and pending())


class OneShotClient:
    """The blocking client of ``kv``'s one-shot commands; see the module docstring.

    ``endpoints``: ``HOST:PORT`` texts or one comma list (``EndpointError``, a ValueError, if malformed);
    ``cacert``, ``cert``, ``key``: all three for a TLS cluster (``TlsError`` for a file it cannot use).
    Nothing connects before the first call. Use it as a context manager, or call ``close()``.
    """

    def __init__(self, endpoints: list[str] | str, *, timeout: float = 5.0, cacert: str | None = None,
                 cert: str | None = None, key: str | None = None) -> None:
        self.endpoints = parse_endpoint_list(endpoints)
        self.timeout = frames.check_timeout(timeout)
        self.attempt_timeout = max(0.5, min(2.0, timeout / 3))
        given = [x for x in (cacert, cert, key) if x]
        if given and len(given) != 3:
            raise TlsError("TLS needs all three of the CA file, the certificate and its key (--cacert, --cert, --key)")
        self._tls = tls_client_context(str(cacert), str(cert), str(key)) if given else None
        self._conn: _Connection | None = None
        self._preferred = 0  # index into endpoints of the node we believe leads
        self._cursor = 0  # where the rotation through endpoints stands (see _advance)
        self._ids = count(1)
        self._new_identity()
        self._closed = False

    def _new_identity(self) -> None:
        """A client id of our own (the exactly-once name of our writes), drawn anew in a process that got
        this client by ``fork`` or by unpickling: a copy that kept the id would have its writes taken
        for retries of the original's, answered with their results and never applied (QA: two forked
        workers each told they took a lock that only one of them took)."""
        self.client_id = frames.new_client_id()  # (replaced when the cluster forgot it: see _write)
        self._request_ids = count(1)
        self._pid = os.getpid()

    def _own_process(self) -> None:
        """Before a call: in a forked child, a new identity and no connection (the socket is the
        parent's: its answers would go to whichever process reads first)."""
        if self._pid != os.getpid():
            self._new_identity()
            self._conn = None  # not closed: closing a TLS connection would write on the parent's socket

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["_conn"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._new_identity()  # a copy is another client, in this process or another

    def sibling(self) -> OneShotClient:
        """A new client for the same cluster (endpoints, timeout, TLS context) with a client id of its
        own: ``kvstore.client.Client`` gives one to each thread that calls it."""
        twin = OneShotClient.__new__(OneShotClient)
        twin.endpoints = list(self.endpoints)
        twin.timeout = self.timeout
        twin.attempt_timeout = self.attempt_timeout
        twin._tls = self._tls
        twin._conn = None
        twin._preferred = self._preferred
        twin._cursor = self._cursor
        twin._ids = count(1)
        twin._new_identity()
        twin._closed = False
        return twin

    def __enter__(self) -> OneShotClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; a call after this (or one under way, at its next attempt) raises
        ``KVError``."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    # --- the commands --------------------------------------------------------------------------

    def put(self, key: str, value: str | bytes) -> int:
        """Store ``value`` under ``key``; return the revision of the write."""
        check_key(key)
        check_value(value)
        result = self._write(lambda rid, cid, rq: frames.encode_put_request_frame(rid, key, value, cid, rq, rq))
        return int(result["rev"])

    def get(self, key: str, *, consistency: str = "l") -> str | bytes | None:
        entry = self.get_entry(key, consistency=consistency)
        return None if entry is None else entry.value

    def get_entry(self, key: str, *, consistency: str = "l") -> Entry | None:
        check_key(key)
        lin = _linearizable(consistency)
        result = self._call(lambda rid: frames.encode_map_frame(frames.get_request(rid, key, lin)), write=False)
        if not result.get("found"):
            return None
        return Entry(key, result["value"], result["ver"], result["mrev"])

    def delete(self, key: str) -> bool:
        """Delete ``key``; True if it existed."""
        check_key(key)
        result = self._write(lambda rid, cid, rq: frames.encode_map_frame(
            frames.delete_request(rid, key, False, cid, rq, rq)))
        return bool(result["deleted"] > 0)

    def delete_prefix(self, prefix: str) -> int:
        check_key(prefix, "prefix")
        result = self._write(lambda rid, cid, rq: frames.encode_map_frame(
            frames.delete_request(rid, prefix, True, cid, rq, rq)))
        return int(result["deleted"])

    def cas(self, key: str, expected: str | bytes | None, new: str | bytes) -> bool:
        check_key(key)
        check_value(expected, "expected value", optional=True)
        check_value(new, "new value")
        result = self._write(lambda rid, cid, rq: frames.encode_map_frame(
            frames.cas_request(rid, key, expected, new, cid, rq, rq)))
        return bool(result["ok"])

    def list(self, prefix: str = "", *, keys_only: bool = False, consistency: str = "l",
             limit: int = 0) -> builtins.list[tuple[str, Any]]:
        """``[(key, value), ...]`` in key order (``[(key, None), ...]`` with keys_only)."""
        items = self.range_items(prefix, keys_only=keys_only, consistency=consistency, limit=limit)
        return [(item[0], item[1] if len(item) > 1 else None) for item in items]

    def list_entries(self, prefix: str = "", *, consistency: str = "l", limit: int = 0) -> builtins.list[Entry]:
        """``[Entry(key, value, version, mod_revision), ...]`` in key order; see
        ``kvstore.client.AsyncClient.list_entries``."""
        return entries_of(self.range_items(prefix, consistency=consistency, limit=limit, meta=True))

    def range_items(self, prefix: str = "", *, keys_only: bool = False, consistency: str = "l", limit: int = 0,
                    meta: bool = False) -> builtins.list[builtins.list[Any]]:
        """The items of the ``list`` reply as they came (docs/protocol.md): ``[key, value]``, ``[key]``
        with keys_only; with ``meta`` each also ends with the key's version and mod_revision, unless
        the node predates ``meta`` (it then answers without them). For tools that print what they
        get, such as ``kv get --prefix``."""
        check_key(prefix, "prefix")
        lin = _linearizable(consistency)
        result = self._call(lambda rid: frames.encode_map_frame(
            frames.list_request(rid, prefix, keys_only, lin, limit, meta)), write=False)
        items: builtins.list[builtins.list[Any]] = result["items"]
        return items

    def admin(self, op: str, node: int = 0, address: str = "") -> dict[str, Any]:
        """A membership or leadership request, sent to the leader (``frames.ADMIN_OPS``); see
        ``kvstore.client.AsyncClient.admin``."""
        if op not in frames.ADMIN_OPS:
            raise ValueError(f"unknown admin operation {op!r}; expected one of {', '.join(frames.ADMIN_OPS)}")
        def listing(rid: int) -> bytes:
            return frames.encode_map_frame(frames.admin_request(rid, "member_list", 0, ""))

        # The list changes nothing: it goes as a read does, hedged past a node that does not answer and
        # sent again (QA: a paused member first in the endpoints held kv member list for its whole
        # timeout, and every change with it, the removal of that member included).
        deadline = time.monotonic() + self.timeout
        listed = self._call(listing, write=False, deadline=deadline)
        if op == "member_list":
            return listed
        # A change has no request id: it must not go out twice, so it is neither hedged nor sent again once
        # it went out unanswered. It goes to the node that answered the list, the leader (a follower that
        # knows one sends the list there), on a connection that node already answered on.
        return self._call(lambda rid: frames.encode_map_frame(frames.admin_request(rid, op, node, address)),
                          write=False, hedge=False, once=True, deadline=deadline)

    def backup(self, session: int = 0, offset: int = 0) -> dict[str, Any]:
        """One step of ``kv snapshot save``; see ``kvstore.client.AsyncClient.backup``."""
        return self._call(lambda rid: frames.encode_map_frame(frames.backup_request(rid, session, offset)),
                          write=False, hedge=False)  # (a backup session lives on one node)

    def status(self, endpoint: str | tuple[str, int], *, timeout: float | None = None) -> dict[str, Any]:
        """The status of one node, on a connection of its own (``Unavailable`` if it does not answer
        within ``timeout``, the client's by default; ``RequestError`` if it refuses)."""
        if isinstance(endpoint, str):
            endpoint = parse_endpoint(endpoint)
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        name = format_endpoint(*endpoint)
        try:
            conn = _Connection.open(endpoint, wait, self._tls)
        except OSError as exc:
            raise Unavailable(f"{name} is unreachable: {exc}") from None
        try:
            reply = conn.exchange(frames.encode_map_frame(frames.status_request(1)), 1, deadline)
        except (_ConnectionLost, OSError, frames.WireError) as exc:
            raise Unavailable(f"{name} closed the connection: {exc}") from None
        finally:
            conn.close()
        if reply is None:
            raise Unavailable(f"{name} did not answer within {wait:g}s")
        if not reply.ok:
            raise RequestError(reply.message, reply.code)
        return reply.result

    def cluster_status(self) -> builtins.list[dict[str, Any]]:
        """One entry per endpoint, each with ``"endpoint"`` and ``"reachable"``, asked all at once."""
        results: builtins.list[dict[str, Any]] = [{} for _ in self.endpoints]

        def one(i: int, endpoint: tuple[str, int]) -> None:
            name = format_endpoint(*endpoint)
            try:
                results[i] = {"endpoint": name, "reachable": True, **self.status(endpoint)}
            except (KVError, OSError) as exc:
                results[i] = {"endpoint": name, "reachable": False, "error": str(exc)}

        threads = [threading.Thread(target=one, args=(i, e), daemon=True) for i, e in enumerate(self.endpoints)]
        for thread in threads:
            thread.start()
        for thread in threads:
            # Joined in short waits: Ctrl-C may be delivered to a worker thread, and the main thread runs
            # Python's handler (KeyboardInterrupt) only when it wakes, which an unbounded join would
            # postpone until every worker is done.
            while thread.is_alive():
                thread.join(0.1)
        return results

    # --- machinery -----------------------------------------------------------------------------

    def _write(self, make: Any) -> dict[str, Any]:
        """The write ``make(id, client_id, request_id)`` builds. One write at a time: ack_below is the write
        itself (nothing older is still out). Refused as expired (the cluster forgot this client, or its
        stamp is not above the newest one forgotten: ``frames.new_client_id``) and never sent before, it
        goes on under a new client id, as ``AsyncClient._write``'s does."""
        self._own_process()
        request_id = next(self._request_ids)
        deadline = time.monotonic() + self.timeout
        for _ in range(RENEWALS_MAX):
            try:
                return self._call(lambda rid, cid=self.client_id: make(rid, cid, request_id), write=True,
                                  deadline=deadline)
            except _Expired as expired:
                self.client_id = frames.new_client_id(after=expired.horizon)
        raise Unavailable(f"the cluster refused this write as from a client it forgot {RENEWALS_MAX} times, each "
                          "time under a new client id; the write was not applied (is this machine's clock far "
                          "behind the cluster's clients'?)", outcome_unknown=False)

    def _call(self, build: Any, *, write: bool, hedge: bool = True, once: bool = False,
              deadline: float | None = None) -> dict[str, Any]:
        """Send the frame ``build(id)`` makes, retrying as ``kvstore.client.AsyncClient._call`` does,
        until ``timeout`` from now. Returns the OK reply's result.

        ``hedge``: the request may go to a second node when the first is slow to answer (once per
        call, ``_exchange_hedged``). Only for requests that any node may receive twice: reads, and
        writes, which carry their client and request ids (a write is applied once). ``once``: a request
        that must not be carried out twice (an admin request): its attempt may take the whole timeout, and
        one that went out and got no answer is not sent again (``Unavailable``, outcome unknown)."""
        self._own_process()
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        sent = False
        in_doubt = False  # an attempt may have been proposed (see kvstore.client.AsyncClient._call)
        pause = _PAUSE_FIRST
        redirects = 0
        last_error = "no endpoint answered"
        refused_by_node = False  # the last attempt's node answered, refusing (a full disk, no leader)
        no_leader_seen = False  # a node answered that it knows no leader
        tls_refused: set[tuple[str, int]] = set()  # endpoints whose handshake failed (frames.handshake_refused)
        while True:
            if self._closed:
                if not sent:
                    raise KVError("client is closed")
                # QA: a write applied while its client was closed got a bare KVError, as if not written.
                raise Unavailable("client was closed during the call" + (
                    "; the write may or may not have been applied" if write and in_doubt else ""),
                    outcome_unknown=write and in_doubt)
            if tls_refused and tls_refused.issuperset(self.endpoints):
                # A certificate that one node refuses (or one we do not trust) does not mend in seconds:
                # once every node said so, give up now rather than at the deadline.
                raise Unavailable(frames.every_node_refused_tls(last_error, write=write, in_doubt=in_doubt),
                                  outcome_unknown=write and in_doubt)
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                head = ("no node could serve the request" if refused_by_node else "no answer from the cluster")
                raise Unavailable(
                    f"{head} within {self.timeout:g}s "
                    f"({frames.gave_up_reason(last_error, no_leader_seen)})"
                    + ("; the write may or may not have been applied" if write and in_doubt else
                       "; the write was not applied" if write else ""),  # (nothing sent, or turned away)
                    outcome_unknown=write and in_doubt,
                )
            attempt_deadline = now + (remaining if once else min(remaining, self.attempt_timeout))
            reply = None
            in_doubt_now = False
            conn = self._conn
            endpoint = conn.endpoint if conn is not None else self.endpoints[self._preferred]
            abandoned = False
            try:
                if conn is None:
                    conn = self._connect(min(remaining, self.attempt_timeout))
                sent = in_doubt_now = True
                rid = next(self._ids)
                if hedge and len(self.endpoints) > 1 and attempt_deadline - now > HEDGE_SECONDS:
                    hedge = False  # (once per call)
                    reply, abandoned = self._exchange_hedged(conn, build, rid, attempt_deadline)
                else:
                    reply = conn.exchange(build(rid), rid, attempt_deadline)
                in_doubt_now = reply is None or not reply.refused or abandoned
                if reply is None:
                    last_error = f"{format_endpoint(*conn.endpoint)} did not answer"
                    self._drop(advance=True)
            except (_ConnectionLost, OSError, frames.WireError) as exc:
                last_error = f"connection failed: {exc}"
                if conn is not None:
                    self._drop(advance=True)
                if frames.handshake_refused(exc):
                    # (TLS 1.3 finishes our side of the handshake first: the node's alert refusing our
                    # certificate comes with its first answer, and it read nothing of the request)
                    in_doubt_now = False
                    tls_refused.add(endpoint)
            doubted = in_doubt or abandoned  # (an attempt other than the one answered may have been proposed)
            in_doubt = in_doubt or in_doubt_now
            refused_by_node = reply is not None  # (an error reply: an OK one returns below)
            if reply is None and once and in_doubt_now:
                raise Unavailable(frames.sent_once_unanswered(last_error), outcome_unknown=True)
            if reply is None:
                self._sleep(min(pause, deadline - time.monotonic()))
                pause = min(pause * 2, _PAUSE_MAX)
                continue
            if reply.ok:
                return reply.result
            code = reply.code
            if code == frames.NOT_LEADER:
                # (a node that says more than that, e.g. that it was removed from the members: its words)
                last_error = "no leader" if reply.message in ("", frames.NOT_LEADER_MESSAGE) else reply.message
                no_leader_seen = no_leader_seen or not reply.leader
                if reply.leader and redirects < _REDIRECTS_MAX:
                    # Follow the hint at once, but not forever: two nodes that still point at each other
                    # (a leader change under way) get the same pause as no hint at all.
                    redirects += 1
                    self._prefer(reply.leader)
                    continue
                if reply.leader:
                    self._prefer(reply.leader)
                else:
                    self._drop(advance=True)
            elif code == frames.STALE:
                raise Unavailable(reply.message, outcome_unknown=True)
            elif code == frames.EXPIRED and write:
                # This attempt was not applied, nor will any other under this client id be (see _write)
                if not doubted:
                    raise _Expired(reply.horizon)
                raise Unavailable(frames.EXPIRED_IN_DOUBT, outcome_unknown=True)
            elif code in _TRY_ANOTHER:
                last_error = reply.message
                self._drop(advance=True)
            else:
                raise RequestError(reply.message, code)
            redirects = 0
            jitter = 0.5 + os.urandom(1)[0] / 255
            self._sleep(min(pause * jitter, deadline - time.monotonic()))
            pause = min(pause * 2, _PAUSE_MAX)

    def _exchange_hedged(self, conn: _Connection, build: Any, rid: int,
                         deadline: float) -> tuple[frames.Reply | None, bool]:
        """``conn.exchange(build(rid), rid, deadline)``, but if no answer came within ``HEDGE_SECONDS``
        the request also goes to the next endpoint in the rotation, and whichever answer is useful
        first wins. Returns that reply (None if none came by ``deadline``) and whether a request was
        left unanswered on a connection given up (a write's outcome is then in doubt).

        The second node's answer is useful if it is an OK, an error about the request itself, or
        ``not_leader`` naming a third node (followed then, as any hint). A ``not_leader`` naming the
        first node (it leads, and is only slow, or it is gone and no election has ended yet) or any other
        "try another node" answer is dropped, the wait goes on for the first node's answer, and the
        second node is asked again ``HEDGE_SECONDS`` later, as long as the first has not answered: once
        the others have elected a new leader it names it, or leads (QA: with the leader paused, a command
        waited its whole attempt timeout, 1.7 s, for an election of 0.3-0.6 s). If the second node wins, its
        connection becomes the client's and the first one is closed. Failures of the second
        connection are only dropped; failures of the first raise, as ``exchange`` does, unless the
        second is still waiting (it then goes on alone)."""
        frame = build(rid)
        try:
            conn.send(frame, deadline)
        except TimeoutError:
            return None, False
        reply = conn.wait(rid, min(deadline, time.monotonic() + HEDGE_SECONDS))
        if reply is not None or time.monotonic() >= deadline:
            return reply, False
        index = next_in_rotation(self._cursor, self._preferred, len(self.endpoints))
        endpoint = self.endpoints[index]
        if endpoint == conn.endpoint:
            return conn.wait(rid, deadline), False
        try:
            # Bounded by HEDGE_SECONDS, not the attempt's deadline: a paused TLS node completes the TCP
            # connect (the kernel does) and never the handshake, and the first node may answer meanwhile.
            other: _Connection | None = _Connection.open(
                endpoint, max(min(deadline - time.monotonic(), HEDGE_SECONDS), 0.001), self._tls)
        except OSError:
            return conn.wait(rid, deadline), False  # (the rotation finds out about that node later)
        assert other is not None
        other_rid = next(self._ids)
        try:
            other.send(build(other_rid), deadline)
        except OSError:
            other.close()
            return conn.wait(rid, deadline), False
        waiting: dict[_Connection, int] = {conn: rid, other: other_rid}
        # The second copy was turned away on arrival (``refused``): it applied nothing. Otherwise it may
        # have been proposed (no answer, or an answer such as a timeout after the proposal: QA), and a
        # write is in doubt whichever answer wins.
        other_in_doubt = False  # a copy to the second node was answered other than by a refusal
        first_error: BaseException | None = None
        ask_again_at = math.inf  # when the second node, whose last answer was of no use, is asked again
        selector = selectors.DefaultSelector()  # (not select.select: descriptors past 1023, QA)
        for c in waiting:
            selector.register(c.sock, selectors.EVENT_READ, c)

        def drop(c: _Connection) -> None:  # (an unregistered socket at its end would wake select at once)
            del waiting[c]
            selector.unregister(c.sock)

        try:
            while waiting:
                for c, c_rid in list(waiting.items()):
                    try:
                        got = c.buffered_reply(c_rid)
                    except (_ConnectionLost, frames.WireError) as exc:
                        drop(c)
                        if c is conn:
                            first_error = exc
                        else:
                            other_in_doubt = True  # (its copy went unanswered)
                        continue
                    if got is None:
                        continue
                    if c is conn:
                        return got, other_in_doubt or other in waiting
                    other_in_doubt = other_in_doubt or not got.refused  # (sticky over the copies: QA28b)
                    drop(c)
                    if got.ok or (got.code == frames.NOT_LEADER and _endpoint_or_none(got.leader or "")
                                  not in (None, conn.endpoint)) or (
                            got.code != frames.NOT_LEADER and got.code not in _TRY_ANOTHER):
                        # The second node's answer wins: its connection becomes the client's (unless
                        # the client was closed meanwhile, from another thread: QA).
                        conn.close()
                        if self._closed:
                            c.close()
                        else:
                            self._conn = c
                        other = None
                        self._preferred = self._cursor = index
                        return got, True  # (the first node never answered)
                    # Not useful (the first node leads, or no leader is known): wait for the first, and
                    # ask this one again in a while.
                    ask_again_at = time.monotonic() + HEDGE_SECONDS
                now = time.monotonic()
                remaining = deadline - now
                if not waiting or remaining <= 0:
                    break
                if other is not None and other not in waiting and conn in waiting and now >= ask_again_at:
                    ask_again_at = math.inf
                    other_rid = next(self._ids)
                    try:
                        other.send(build(other_rid), deadline)
                    except OSError:
                        other.close()
                        other = None
                    else:
                        waiting[other] = other_rid
                        selector.register(other.sock, selectors.EVENT_READ, other)
                        continue  # (its answer may be buffered already: TLS)
                ready = [c for c in waiting if c.has_buffered_bytes()]
                if not ready:
                    ready = [key.data for key, _ in selector.select(min(remaining, max(ask_again_at - now, 0.0)))]
                for c in ready:
                    try:
                        # (the second node gets HEDGE_SECONDS to finish a TLS record it began)
                        left = deadline - time.monotonic()
                        c.sock.settimeout(max(left if c is conn else min(left, HEDGE_SECONDS), 0.001))
                        c.receive()
                    except (_ConnectionLost, OSError) as exc:  # (TimeoutError: the deadline passed)
                        drop(c)
                        if c is conn:
                            first_error = exc
                        else:
                            other_in_doubt = True  # (its copy went unanswered)
        finally:
            selector.close()
            if other is not None:
                other.close()
        if first_error is not None and conn not in waiting:
            raise first_error
        return None, other_in_doubt or other in waiting

    @staticmethod
    def _sleep(seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def _connect(self, timeout: float) -> _Connection:
        endpoint = self.endpoints[self._preferred]
        try:
            conn = _Connection.open(endpoint, timeout, self._tls)
        except OSError as exc:
            self._advance()
            if isinstance(exc, TimeoutError):
                raise _ConnectionLost(f"connecting to {format_endpoint(*endpoint)} timed out") from None
            raise
        self._conn = conn
        return conn

    def _prefer(self, leader: str) -> None:
        try:
            endpoint = parse_endpoint(leader)
        except ValueError:
            self._drop(advance=True)
            return
        if endpoint not in self.endpoints:
            self.endpoints.append(endpoint)
        index = self.endpoints.index(endpoint)
        if index != self._preferred or self._conn is None or self._conn.endpoint != endpoint:
            self._drop(advance=False)
            self._preferred = index

    def _drop(self, *, advance: bool) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if advance:
            self._advance()

    def _advance(self) -> None:
        """Move on from the endpoint that just failed (``endpoints.next_in_rotation``)."""
        self._cursor = self._preferred = next_in_rotation(self._cursor, self._preferred, len(self.endpoints))


def _endpoint_or_none(text: str) -> tuple[str, int] | None:
    try:
        return parse_endpoint(text)
    except ValueError:
        return None


def _linearizable(consistency: str) -> bool:
    if consistency not in ("l", "s"):
        raise ValueError(f"consistency must be 'l' (linearizable) or 's' (serializable, may be stale), "
                         f"not {consistency!r}")
    return consistency == "l"
