"""The frame codec of the client protocol: what a client needs from ``kvstore.wire``, without paxos.

Theory of operation
-------------------
``kvstore.wire`` holds every message of the store (peer links and clients) as dataclasses, and the
Paxos messages, so importing it loads the ``paxos`` package and builds some twenty classes: about
70 ms, more than the rest of a one-shot ``kv get`` together. This module is the part of the wire format
that has no such cost: the frame (a 4-byte big-endian length, then one CBOR item), its limits, the error
codes, the two error families, the maps of the client requests, and the checks of a reply. ``wire``
imports all of it from here and re-exports it (``wire.WireError is frames.WireError``), so there is one
definition of each; ``kvstore.oneshot`` (the blocking client of ``kv``'s one-shot commands) uses this
module alone.

The request maps (``get_request`` ...) are the encodings that ``wire.encode_frame`` uses for the
request dataclasses, so both clients send the same bytes. ``decode_reply`` accepts exactly the ``ok`` and
``err`` bodies that ``wire.decode_body`` accepts, with the same checks (tests compare the two), and
returns a plain tuple instead of a dataclass.

Nothing here does I/O, and nothing is ever pickled.
"""
from __future__ import annotations

import io
import os
import struct
import time
from typing import Any, NamedTuple

import cbor2

CBOR2_VERSION_MIN = "6.2"
"""The oldest cbor2 this package works with (pyproject.toml says so too): 6.2 added the decoder options
every decode here passes (``max_depth``, ``strict_hashable_types``)."""


def check_cbor2() -> None:
    """Raise ImportError, naming the fix, if the installed cbor2 is older than ``CBOR2_VERSION_MIN``.

    Without this check an older cbor2 (one installed before, or Debian's python3-cbor2) fails every
    decode with a TypeError, which the decoders report as "not valid CBOR": a node would turn away every
    frame of every peer and client, and say only that the bytes were bad.
    """
    try:
        cbor2.CBORDecoder(io.BytesIO(b"\x00"), max_depth=1, strict_hashable_types=True)
    except TypeError:
        from importlib import metadata
        try:
            found = metadata.version("cbor2")
        except metadata.PackageNotFoundError:
            found = "an unknown version"
        where = getattr(cbor2, "__file__", "?")
        raise ImportError(f"paxos-kv needs cbor2 {CBOR2_VERSION_MIN} or later, found {found} (at {where}): "
                          f"pip install --upgrade 'cbor2>={CBOR2_VERSION_MIN}'") from None


check_cbor2()

FRAME_BYTES_MAX = 8 * 1024 * 1024
"""Default largest frame body, in bytes (the 4 header bytes not included)."""
HEADER_BYTES = 4
"""Size of the big-endian unsigned length that starts every frame."""
RECEIVE_CHUNK_BYTES = 64 * 1024
"""How much ``FrameReader`` asks its stream for at once, unless the frame it is reading needs more."""
RECEIVE_FRAME_BYTES_MAX = 8 * 1024 * 1024
"""How much ``FrameReader`` asks for at once, at most, while the rest of a larger frame is due."""
RANGE_ITEMS_MAX = 100_000
"""The most entries a ``list`` without a ``limit`` is answered with; one that matches more is ``too_large``
(a dump reads any number). A ``limit`` up to one more is answered (a client's limit of this many, and
one entry more to tell whether it left entries out). A node builds each answer in its event loop, ~1-1.5
us per entry: 700,000 keys of 8 bytes fit in a frame and took it 1 s (QA, session 26)."""
TIMEOUT_SECONDS_MAX = 1_000_000.0
"""The longest deadline a client takes (11.6 days): a socket's timeout past ~9.2e9 s raises OverflowError,
which no caller expects (QA: ``kv --command-timeout 9.3e9 status`` called a healthy cluster unreachable)."""
RESULT_DEPTH_MAX = 4
"""How many levels of lists/maps an ``OkReply`` result may nest *inside* its top-level map."""

# Integer ranges. Slots, ballot numbers, sequence numbers and client request ids fit in CBOR's
# native unsigned integer (no bignum tag needed); per-connection request ids fit in a signed 64-bit
# integer so that clients in languages without unsigned types can use them.
U64_LIMIT = 2**64
ID_LIMIT = 2**63

# Error codes carried by ErrorReply.code. docs/protocol.md says when each one is used.
NOT_LEADER = "not_leader"
BAD_REQUEST = "bad_request"
UNAVAILABLE = "unavailable"
STORAGE_FULL = "storage_full"
TOO_LARGE = "too_large"
# What a not_leader answer says unless there is more to say (a node removed from the members says so)
NOT_LEADER_MESSAGE = "this node is not the leader"
SHUTTING_DOWN = "shutting_down"
TIMEOUT = "timeout"
PROTOCOL = "protocol"
STALE = "stale"
DISK_FAILED = "disk_failed"
PERMISSION_DENIED = "permission_denied"  # the client's certificate has no access rule for it (kvstore.acl)
# A membership change was proposed and did not take effect in time: its outcome is unknown, and a retry
# would be judged as a second change, so the client library does not retry it (kvstore.members).
OUTCOME_UNKNOWN = "outcome_unknown"
# A watch from a revision the node no longer keeps the changes of (kvstore.watches.History): etcd's
# ErrCompacted. Another node may keep more; else read the keys again and watch from their revision.
COMPACTED = "compacted"
# A write from a client id the cluster no longer remembers, made before the newest one it forgot: it may
# be a retry of a write that was applied, so it is not applied (see new_client_id). The reply's
# ``horizon`` is that newest forgotten client's stamp: a client that never sent this write before takes
# a new id stamped above it and sends the write again; one that did cannot know its outcome.
EXPIRED = "expired"
# What the clients say of a write refused as ``EXPIRED`` after an earlier attempt of it may have been proposed
EXPIRED_IN_DOUBT = ("the cluster no longer remembers this client (10,000 newer clients wrote since) and refused a "
                    "retry of this write: an earlier attempt of it may or may not have been applied; it will not be "
                    "applied again")
ERROR_CODES = (NOT_LEADER, BAD_REQUEST, UNAVAILABLE, STORAGE_FULL, TOO_LARGE, SHUTTING_DOWN, TIMEOUT, PROTOCOL,
               STALE, DISK_FAILED, PERMISSION_DENIED, OUTCOME_UNKNOWN, COMPACTED, EXPIRED)

_HEADER = struct.Struct(">I")
_CBOR_DEPTH_MAX = 8  # px map > m list > message > entry list > entry > value list: 6 levels used


class WireError(Exception):
    """The remote side sent something that is not a valid frame or message."""


class FrameTooLarge(ValueError):
    """Our own caller tried to encode a message whose body exceeds the frame size limit."""


# ---------------------------------------------------------------------------------------------------
# Client ids (docs/protocol.md, "Exactly-once")
# ---------------------------------------------------------------------------------------------------

CLIENT_ID_TAG = b"kvs\x01"
"""The first bytes of a stamped client id (``new_client_id``)."""
CLIENT_ID_STAMPED_BYTES = 28
"""A stamped client id's length: the tag, 8 bytes of stamp, 16 random bytes."""
STAMP_LIMIT = 2**62
"""Stamps are below this; an id whose stamp is not (or that is not stamped) is never refused as expired."""
STAMP_AHEAD_MS = 2_000
"""A new client stamped more than this above the cluster's clock (the leader's, through the log) is
refused ..."""
RENEW_ROOM_MS = 1_000
"""... unless it is at most this above the horizon (a renewed id: ``RENEW_STEP_MS`` above it)."""
RENEW_STEP_MS = 250
"""How far above the ``horizon`` an ``expired`` reply names a client stamps its new id."""


def new_client_id(after: int | None = None) -> bytes:
    """A client id that says when it was made: ``CLIENT_ID_TAG``, the stamp (milliseconds since the
    epoch by this machine's clock, or ``after + RENEW_STEP_MS`` if given) in 8 bytes big endian, and 16
    random bytes.

    The state machine remembers the outcome of a bounded number of clients' writes. When it forgets a
    client it keeps the highest stamp of the clients it forgot (its *horizon*), and refuses (``EXPIRED``)
    every write of a client it does not know whose stamp is at or below it: a retry of a forgotten
    client's write is never applied a second time. It also refuses a new client stamped more than
    ``STAMP_AHEAD_MS`` above the cluster's clock (the leader's, which the log carries) unless it is at
    most ``RENEW_ROOM_MS`` above the horizon: one stamp far ahead, once forgotten, would move the horizon
    there for good (QA: one id stamped 2**62 - 1 left every later client unprotected).

    A new client is stamped now, between the two, unless its clock is far off. If its first write is
    refused so, it draws a new id with ``after`` the ``horizon`` the refusal names (``AsyncClient`` and
    ``OneShotClient`` do): the higher of the horizon and the cluster's clock. The new stamp is
    ``RENEW_STEP_MS`` above that: while many new clients come, the horizon moves on as fast as the time
    itself, and a stamp just above it was refused again before its write was decided (QA); and less than
    the time 10,000 clients take to come and go, so renewed ids do not push the horizon ahead of the time.
    ``after`` such that the stamp reaches ``STAMP_LIMIT`` gives an unstamped id: 16 random bytes, which
    the cluster never refuses and does not protect once forgotten (what every id was before stamps)."""
    stamp = time.time_ns() // 1_000_000 if after is None else after + RENEW_STEP_MS
    if stamp >= STAMP_LIMIT:
        return os.urandom(16)
    return CLIENT_ID_TAG + stamp.to_bytes(8, "big") + os.urandom(16)


def client_id_stamp(client_id: bytes) -> int | None:
    """The stamp of a client id that ``new_client_id`` made, None for any other id."""
    if len(client_id) == CLIENT_ID_STAMPED_BYTES and client_id.startswith(CLIENT_ID_TAG):
        stamp = int.from_bytes(client_id[4:12], "big")
        if stamp < STAMP_LIMIT:
            return stamp
    return None


# ---------------------------------------------------------------------------------------------------
# Results (the map an OkReply carries)
# ---------------------------------------------------------------------------------------------------


def _check_result(x: Any, depth: int, sequence_types: tuple[type, ...], error: type[Exception]) -> None:
    """Raise ``error`` unless ``x`` is an allowed OkReply result value at nesting ``depth``."""
    t = type(x)
    if t is str or t is bytes or t is bool or t is float or x is None:
        return
    if t is int:
        if -U64_LIMIT <= x < U64_LIMIT:
            return
        raise error("result: int out of CBOR's 64-bit range")
    if depth >= RESULT_DEPTH_MAX:
        raise error(f"result: lists/maps nested deeper than {RESULT_DEPTH_MAX}")
    if t in sequence_types:
        for item in x:
            ti = type(item)
            # (the scalars of a range's items checked here: a call per key and per value cost ~50 ms
            # for 50,000 entries, in the node's event loop)
            if ti is not str and ti is not bytes and ti is not bool and item is not None:
                _check_result(item, depth + 1, sequence_types, error)
        return
    if t is dict:
        for key, item in x.items():
            if type(key) is not str:
                raise error("result: map keys must be str")
            _check_result(item, depth + 1, sequence_types, error)
        return
    raise error(f"result: {t.__name__} is not allowed")


def _check_result_map(result: Any, sequence_types: tuple[type, ...], error: type[Exception]) -> dict[str, Any]:
    if type(result) is not dict:
        raise error("result: expected a map")
    for key, item in result.items():
        if type(key) is not str:
            raise error("result: map keys must be str")
        _check_result(item, 0, sequence_types, error)
    return result


# ---------------------------------------------------------------------------------------------------
# Client requests: the maps, and frames of them
# ---------------------------------------------------------------------------------------------------


def get_request(rid: int, key: str, linearizable: bool) -> dict[str, Any]:
    return {"t": "get", "id": rid, "key": key, "lin": linearizable}


def delete_request(rid: int, key: str, prefix: bool, client_id: bytes, request_id: int,
                   ack_below: int) -> dict[str, Any]:
    return {"t": "del", "id": rid, "key": key, "prefix": prefix, "cid": client_id, "rq": request_id,
            "ack": ack_below}


def cas_request(rid: int, key: str, expected: str | bytes | None, new: str | bytes, client_id: bytes,
                request_id: int, ack_below: int) -> dict[str, Any]:
    return {"t": "cas", "id": rid, "key": key, "expected": expected, "new": new, "cid": client_id,
            "rq": request_id, "ack": ack_below}


def list_request(rid: int, prefix: str, keys_only: bool, linearizable: bool, limit: int,
                 meta: bool = False) -> dict[str, Any]:
    """``meta``: each item also carries the key's version and mod_revision (sent only when asked: a node
    from before it ignores the field and answers without them)."""
    request = {"t": "list", "id": rid, "prefix": prefix, "keys_only": keys_only, "lin": linearizable, "limit": limit}
    if meta:
        request["meta"] = True
    return request


def status_request(rid: int) -> dict[str, Any]:
    return {"t": "status", "id": rid}


ADMIN_OPS = ("member_list", "member_add", "member_promote", "member_remove", "move_leader")
"""The operations of an admin request (membership and leadership)."""


def admin_request(rid: int, op: str, node: int, address: str) -> dict[str, Any]:
    return {"t": "admin", "id": rid, "op": op, "node": node, "addr": address}


BACKUP_END_OFFSET = 1 << 63
"""A backup request's offset that no backup reaches: it asks the node to end the session now (a client
that failed or was interrupted: ``kvstore.backup.end_session``, ``kvstore.bulk.dump``)."""


def backup_request(rid: int, session: int, offset: int) -> dict[str, Any]:
    return {"t": "backup", "id": rid, "session": session, "off": offset}


# A client's connect (with TLS, its handshake too) that takes longer than this moves on to the next
# endpoint: a reachable node completes one in milliseconds (the kernel accepts it, however busy the
# process), so this is a host down or a network cut, which would otherwise cost a whole attempt timeout
# (QA: writes paused 1.7-2.4 s on a failover whose clients tried the node just cut off first).
CONNECT_SECONDS = 0.5


def gave_up_reason(last_error: str, no_leader_seen: bool) -> str:
    """Why a client call gave up, for its ``Unavailable``: the last attempt's error, and first, when
    some node answered that it knows no leader while the last attempt failed otherwise (the other
    nodes unreachable: no quorum), that. Both clients say it the same way."""
    if no_leader_seen and last_error != "no leader":
        return f"no leader among the nodes that answered; the last attempt: {last_error}"
    return last_error


def sent_once_unanswered(last_error: str) -> str:
    """Why a client gave up on a membership or leadership request that went out and got no answer: it is
    never sent twice (it has no request id to make it happen once), so it may or may not have been
    carried out (QA: a move-leader sent again to the next leader was refused there, though the first
    handover then finished). Both clients say it the same way."""
    return (f"the membership or leadership request got no answer ({last_error}); it may or may not have "
            "been carried out, and is not sent twice: check with kv member list")


# OpenSSL's reasons for a handshake that failed over a certificate: this side does not trust the node's
# (CERTIFICATE_VERIFY_FAILED), or the node sent an alert refusing ours. Only handshakes send these, so
# the node read nothing of what we sent.
_CERTIFICATE_REASONS = frozenset({
    "CERTIFICATE_VERIFY_FAILED", "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "SSLV3_ALERT_CERTIFICATE_REVOKED",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED",
})


# ... and its reason for a node that answered the handshake with something else than TLS: a plaintext
# node, which read our ClientHello as a bad frame and acted on nothing.
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER"})


def _ssl_reason(exc: BaseException | None) -> str | None:
    """OpenSSL's reason of ``exc``, without importing ``ssl`` (the one-shot client's start-up)."""
    if exc is None:
        return None
    reason = getattr(exc, "reason", None)
    if reason is None:  # (an error made by hand has none: its text names it, "[SSL: REASON] ...")
        text = str(exc)
        if not text.startswith("[SSL: "):
            return None
        reason = text[6:].partition("]")[0]
    return str(reason)


def certificate_refused(exc: BaseException | None) -> bool:
    """True if ``exc`` (from a connect, or from the first read of a TLS connection) is a TLS handshake that
    failed over a certificate: a setup error that retrying will not mend, and one in which the node acted
    on nothing."""
    return _ssl_reason(exc) in _CERTIFICATE_REASONS


def handshake_refused(exc: BaseException | None) -> bool:
    """``certificate_refused``, or a handshake that met a node without TLS: the other setup error that
    retrying will not mend (QA: a TLS client of a plaintext cluster retried for its whole timeout)."""
    reason = _ssl_reason(exc)
    return reason in _CERTIFICATE_REASONS or reason in _NOT_TLS_REASONS


def every_node_refused_tls(last_error: str, *, write: bool, in_doubt: bool) -> str:
    """The ``Unavailable`` text when every endpoint refused the handshake (``handshake_refused``: both
    clients give up at once then, instead of retrying until their deadline); for a write, whether it may
    have been applied (only by an earlier attempt of the call: a refused handshake applies nothing)."""
    what = ("no node serves TLS (leave out the TLS files: --cacert, --cert and --key, or KV_CACERT, KV_CERT, "
            "KV_KEY)" if any(reason in last_error for reason in _NOT_TLS_REASONS)
            else "the TLS handshake failed over a certificate with every node")
    return (f"{what} ({last_error})"
            + ("; the write may or may not have been applied" if write and in_doubt else
               "; the write was not applied" if write else ""))


def encode_map_frame(obj: dict[str, Any], frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """One frame holding the map ``obj`` (one of the request maps above); ``FrameTooLarge`` as from
    ``wire.encode_frame``."""
    body = cbor2.dumps(obj)
    if len(body) > frame_bytes_max:
        raise FrameTooLarge(f"{obj.get('t')} request body is {len(body)} bytes, limit {frame_bytes_max}")
    return _HEADER.pack(len(body)) + body


def encode_put_request_frame(wire_id: int, key: Any, value: Any, client_id: Any, request_id: int, ack_below: int,
                             frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """The frame of ``PutRequest(id=wire_id, key=key, value=value, client_id=client_id,
    request_id=request_id, ack_below=ack_below)``, without building the object: byte for byte what
    ``encode_frame`` gives (a test checks). The client's most frequent request; ``FrameTooLarge`` as
    from ``encode_frame``."""
    body = cbor2.dumps({"t": "put", "id": wire_id, "key": key, "value": value, "cid": client_id,
                        "rq": request_id, "ack": ack_below})
    if len(body) > frame_bytes_max:
        raise FrameTooLarge(f"PutRequest body is {len(body)} bytes, limit {frame_bytes_max}")
    return _HEADER.pack(len(body)) + body


# ---------------------------------------------------------------------------------------------------
# Reading frames and replies
# ---------------------------------------------------------------------------------------------------


# The first bytes of protocols people point a kv client or server at by mistake, read as a frame length
_OTHER_PROTOCOLS = {b"HTTP": "HTTP (a metrics or dashboard address?)", b"GET ": "HTTP", b"POST": "HTTP",
                    b"HEAD": "HTTP", b"PUT ": "HTTP", b"PRI ": "HTTP/2"}


def _other_protocol(head: bytes | bytearray) -> str:
    """What a bad frame length says when its 4 bytes are the start of another protocol ("" if none)."""
    head = bytes(head)
    if head[:1] in (b"\x15", b"\x16") and head[1:2] == b"\x03":
        return ": the other side speaks TLS and this side does not (--cacert, --cert and --key)"
    name = _OTHER_PROTOCOLS.get(head)
    return f": the other side speaks {name}, not the kv protocol" if name else ""


def check_timeout(timeout: object) -> float:
    """``timeout`` as seconds, if it is a number of seconds above 0 and at most ``TIMEOUT_SECONDS_MAX``;
    else ``ValueError`` (a client's ``timeout``, checked when the client is made)."""
    if (type(timeout) is not int and type(timeout) is not float) or not 0 < timeout <= TIMEOUT_SECONDS_MAX:
        # (a bool is no number of seconds here; nan fails the comparison)
        raise ValueError(f"timeout must be a number of seconds above 0 and at most {TIMEOUT_SECONDS_MAX:g}, "
                         f"not {timeout!r}")
    return float(timeout)


def split_frames(buffer: bytearray, frame_bytes_max: int = FRAME_BYTES_MAX) -> list[bytes]:
    """Remove every complete frame at the front of ``buffer`` and return their bodies, in order.

    What remains in ``buffer`` is the start of the next frame (possibly nothing). A frame header whose
    length is 0 or above ``frame_bytes_max`` raises ``WireError`` as soon as its 4 bytes are present,
    without waiting for the body. If complete frames come before the bad header they are returned
    first and the bad header stays at the front, so the next call raises: every good frame the
    remote side sent before its mistake is still served, in order.
    """
    frames: list[bytes] = []
    size = len(buffer)
    pos = 0
    unpack = _HEADER.unpack_from
    bad: str | None = None
    with memoryview(buffer) as view:
        # Each pass consumes at least HEADER_BYTES + 1 bytes, so this ends within size passes.
        while size - pos >= HEADER_BYTES:
            (length,) = unpack(buffer, pos)
            if length == 0 or length > frame_bytes_max:
                bad = f"frame length {length} is outside [1, {frame_bytes_max}]" + _other_protocol(buffer[pos:pos + 4])
                break
            end = pos + HEADER_BYTES + length
            if end > size:
                break
            frames.append(bytes(view[pos + HEADER_BYTES:end]))
            pos = end
    if pos:
        del buffer[:pos]
    if bad is not None and not frames:
        raise WireError(bad)
    return frames


class Reply(NamedTuple):
    """A decoded ``ok`` or ``err`` reply: ``ok`` tells which; ``result`` for ok, the rest for err
    (``id`` None: the server could not parse the request and gives up on the connection)."""

    ok: bool
    id: int | None
    result: dict[str, Any]
    code: str = ""
    message: str = ""
    leader: str | None = None
    refused: bool = False  # the node turned the request away before acting on it (``wire.ErrorReply``)
    horizon: int = 0  # with EXPIRED: the stamp a new client id must exceed (``new_client_id``)


def _text(obj: dict[str, Any], key: str, *, none_ok: bool = False) -> Any:
    if key not in obj:
        raise WireError(f"{obj['t']}: missing field {key!r}")
    x = obj[key]
    if type(x) is str or (none_ok and x is None):
        return x
    raise WireError(f"{obj['t']}.{key}: expected a text string{' or null' if none_ok else ''}, got {type(x).__name__}")


def decode_reply(body: bytes) -> Reply:
    """The reply held in one frame body. Raises ``WireError``, and nothing else, unless the body is
    exactly one CBOR map that ``wire.decode_body`` would take for an ``OkReply`` or an ``ErrorReply``
    (unknown extra fields are ignored, as there)."""
    try:
        fp = io.BytesIO(body)
        obj = cbor2.CBORDecoder(fp, max_depth=_CBOR_DEPTH_MAX, strict_hashable_types=True).decode()
        end = fp.tell()
    except Exception as exc:  # cbor2 raises several types (and ValueError/OverflowError from tags)
        raise WireError(f"not valid CBOR: {exc}") from exc
    if end != len(body):
        raise WireError(f"{len(body) - end} bytes after the CBOR item in the frame")
    if type(obj) is not dict:
        raise WireError(f"frame body must be a CBOR map, got {type(obj).__name__}")
    kind = obj.get("t")
    if kind not in ("ok", "err"):
        raise WireError(f"expected a reply, got message type {kind!r:.40}")
    if "id" not in obj:
        raise WireError(f"{kind}: missing field 'id'")
    rid = obj["id"]
    if not (type(rid) is int and 0 <= rid < ID_LIMIT) and not (kind == "err" and rid is None):
        raise WireError(f"{kind}.id: expected an int in [0, 2**63), got {type(rid).__name__}")
    if kind == "ok":
        if "r" not in obj:
            raise WireError("ok: missing field 'r'")
        return Reply(True, rid, _check_result_map(obj["r"], (list,), WireError))
    refused = obj.get("refused", False)
    if type(refused) is not bool:
        raise WireError(f"err.refused: expected a bool, got {type(refused).__name__}")
    horizon = obj.get("horizon", 0)
    if not (type(horizon) is int and 0 <= horizon < U64_LIMIT):
        raise WireError(f"err.horizon: expected an int in [0, 2**64), got {type(horizon).__name__}")
    return Reply(False, rid, {}, _text(obj, "code"), _text(obj, "msg"), _text(obj, "leader", none_ok=True), refused,
                 horizon)
