"""Frames and messages on the wire: peer links and client connections (see docs/protocol.md).

Theory of operation
-------------------
Everything that crosses a TCP connection is a *frame*: a 4-byte big-endian unsigned length ``N``
followed by ``N`` bytes that hold exactly one CBOR item (cbor2). The item is a map whose text field
``"t"`` names the message type. One module turns message objects into frames (``encode_frame``) and
frame bodies back into message objects (``decode_body``); nothing else in the store touches CBOR on a
connection, and nothing here is ever pickled.

Two error families (STYLE.md section 5, after ``h11/_util.py``):

* ``WireError``: the *remote side* sent something bad (a bad length, CBOR that does not parse, a map
  of the wrong shape, a field of the wrong type). It is the ONLY exception ``split_frames``,
  ``FrameReader.receive_frames`` (besides the stream's own errors) and ``decode_body`` raise for bad
  input. The caller logs one line, answers a client with an error reply where it can, and closes that
  one connection.
* ``TypeError`` / ``ValueError`` (``FrameTooLarge``): *our own* caller broke an API rule, for example by
  encoding an object that is not a message, or a message whose frame would exceed the size limit.

The frame itself (limits, error codes, the two error families, the maps of the client requests,
``split_frames``) is defined in ``kvstore.frames``, which a client can import without paxos
(``kvstore.oneshot``, for ``kv``'s one-shot commands); this module re-exports it.

Decoding never trusts cbor2's output types. cbor2 turns tags into datetimes, Decimals, Fractions,
UUIDs, regexes, sets and more; ``bool`` is a subclass of ``int`` in Python; a CBOR bignum tag gives an
``int`` of any size. So every field is checked with an exact ``type(x) is T`` test and integers are
checked against their range. The checks are plain dict lookups and type tests because this is the hot
path: tens of thousands of Paxos messages and client requests per second.

Forward compatibility: a map may carry fields this version does not know; they are ignored, so a
newer peer or client can add optional fields. A missing known field, a wrong type, or an unknown
``"t"`` is an error. The Paxos messages inside a ``px`` frame are positional arrays instead of maps
(they are the bulk of the traffic and a map would repeat every field name in every message); their
length must be exact, so a change to one means a new kind code, never a reinterpretation.

Resource bounds: a frame's length is checked against ``frame_bytes_max`` as soon as its 4 header bytes
are there, before any of its body is read, so a hostile length costs nothing (h11 bounds its buffer the
same way with ``max_incomplete_event_size``). cbor2 is run with a container depth limit and with map
keys restricted to text and byte strings (no hash-collision games with exotic keys). Trailing bytes
after the one CBOR item in a body are rejected, so a client that packs two items into one frame gets
an error instead of silently losing the second.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, overload

import cbor2
import trio

from paxos.ballot import Ballot
from paxos.messages import (
    MESSAGE_TYPES,
    Accept,
    Accepted,
    AcceptedEntry,
    Campaign,
    CatchupReply,
    CatchupRequest,
    Decide,
    DecidedEntry,
    Heartbeat,
    HeartbeatAck,
    Message,
    Nack,
    Prepare,
    PreVote,
    PreVoteReply,
    Promise,
)

from . import frames as _frames
from .frames import (
    _CBOR_DEPTH_MAX,
    _HEADER,
    HEADER_BYTES,
    ID_LIMIT,
    RECEIVE_CHUNK_BYTES,
    RECEIVE_FRAME_BYTES_MAX,
    U64_LIMIT,
    _check_result_map,
    admin_request,
    backup_request,
    cas_request,
    delete_request,
    get_request,
    list_request,
    split_frames,
    status_request,
)

# "X as X": re-exported for the modules that use them as wire.X
from .frames import FRAME_BYTES_MAX as FRAME_BYTES_MAX
from .frames import FrameTooLarge as FrameTooLarge
from .frames import WireError as WireError
from .frames import certificate_refused as certificate_refused
from .frames import every_node_refused_tls as every_node_refused_tls
from .frames import gave_up_reason as gave_up_reason
from .frames import handshake_refused as handshake_refused
from .frames import sent_once_unanswered as sent_once_unanswered

# The frame codec (limits, error codes, the two error families, the client request maps, split_frames)
# lives in kvstore.frames, which a client imports without paxos (kvstore.oneshot). Re-exported here:
# wire.X is frames.X, one definition of each.
RESULT_DEPTH_MAX = _frames.RESULT_DEPTH_MAX
NOT_LEADER = _frames.NOT_LEADER
BAD_REQUEST = _frames.BAD_REQUEST
UNAVAILABLE = _frames.UNAVAILABLE
STORAGE_FULL = _frames.STORAGE_FULL
TOO_LARGE = _frames.TOO_LARGE
NOT_LEADER_MESSAGE = _frames.NOT_LEADER_MESSAGE
SHUTTING_DOWN = _frames.SHUTTING_DOWN
TIMEOUT = _frames.TIMEOUT
PROTOCOL = _frames.PROTOCOL
STALE = _frames.STALE
DISK_FAILED = _frames.DISK_FAILED
PERMISSION_DENIED = _frames.PERMISSION_DENIED
OUTCOME_UNKNOWN = _frames.OUTCOME_UNKNOWN
COMPACTED = _frames.COMPACTED
EXPIRED = _frames.EXPIRED
EXPIRED_IN_DOUBT = _frames.EXPIRED_IN_DOUBT
ERROR_CODES = _frames.ERROR_CODES
encode_put_request_frame = _frames.encode_put_request_frame


# ---------------------------------------------------------------------------------------------------
# Message classes
# ---------------------------------------------------------------------------------------------------
# Values by convention, not frozen: a frozen dataclass sets each field through object.__setattr__,
# which doubles the cost of building one (1.6 against 0.75 us for a put), and every request and reply
# is built once on each side. Nothing may change a message after building it.


@dataclass(slots=True, kw_only=True)
class Hello:
    """First frame on a peer link, sent by the node that dialed: who I am and which cluster."""

    node_id: int
    cluster_id: str
    # The dialing node's incarnation (kvstore.identity): optional on the wire ("inc"), absent from
    # nodes older than incarnations.
    incarnation: str | None = None
    # The dialing node's Paxos engine (kvstore.server.ServerOptions.engine): optional on the wire
    # ("eng"), sent only when not "core", so that a node older than engines (which runs the core) says
    # "core" by saying nothing.
    engine: str = "core"
    # What the dialing node's state machine can switch on when every member can (FEATURES): optional on
    # the wire ("feat"), absent from nodes older than features, which can switch on none.
    features: tuple[str, ...] = ()
    # The node the dialing node meant to reach at this address: optional on the wire ("to"), absent from
    # older nodes. The node that answers there refuses a link meant for another (a removed member's
    # address given to a new one, or one socket under two names: QA).
    to: int | None = None


FEATURE_CLIENT_EXPIRY = "client-expiry"
"""The state machine refuses an expired client's writes (kvstore.statemachine, "Exactly-once")."""
FEATURES = (FEATURE_CLIENT_EXPIRY,)
"""The features this version's nodes advertise in their Hello."""
FEATURES_MAX = 32  # names in a Hello's "feat" at most (each a short text)


@dataclass(slots=True, kw_only=True)
class PaxosBatch:
    """Some ``paxos.messages`` messages from one node to the peer at the other end of the link."""

    messages: tuple[Message, ...]


@dataclass(slots=True, kw_only=True)
class SnapshotChunk:
    """Bytes ``[offset, offset + len(data))`` of a state machine snapshot of ``total`` bytes at ``slot``."""

    sender: int
    slot: int
    offset: int
    total: int
    data: bytes


@dataclass(slots=True, kw_only=True)
class PutRequest:
    id: int
    key: str
    value: str | bytes
    client_id: bytes
    request_id: int
    ack_below: int


@dataclass(slots=True, kw_only=True)
class DeleteRequest:
    id: int
    key: str
    prefix: bool
    client_id: bytes
    request_id: int
    ack_below: int


@dataclass(slots=True, kw_only=True)
class CasRequest:
    id: int
    key: str
    expected: str | bytes | None
    new: str | bytes
    client_id: bytes
    request_id: int
    ack_below: int


@dataclass(slots=True, kw_only=True)
class GetRequest:
    id: int
    key: str
    linearizable: bool


@dataclass(slots=True, kw_only=True)
class ListRequest:
    id: int
    prefix: str
    keys_only: bool
    linearizable: bool
    limit: int  # 0 = no limit
    meta: bool = False  # each item also carries the key's version and mod_revision


@dataclass(slots=True, kw_only=True)
class StatusRequest:
    id: int


ADMIN_OPS = _frames.ADMIN_OPS
"""What an ``AdminRequest`` may ask (see kvstore.members); defined in ``kvstore.frames``."""


@dataclass(slots=True, kw_only=True)
class AdminRequest:
    """Membership and leadership: ``op`` one of ``ADMIN_OPS``; ``node`` the member it is about (0: none);
    ``address`` HOST:PORT for member_add (else "")."""

    id: int
    op: str
    node: int = 0
    address: str = ""


@dataclass(slots=True, kw_only=True)
class BackupRequest:
    """``kv snapshot save`` (kvstore.backup): ``session`` 0 asks the leader to begin a backup (a read
    barrier, then a frozen state machine); otherwise the next piece of session ``session`` from byte
    ``offset`` of its snapshot bytes (the client pulls; the same offset again is a retry)."""

    id: int
    session: int = 0
    offset: int = 0


@dataclass(slots=True, kw_only=True)
class WatchRequest:
    """``kv watch``: tell this connection of every change to ``key`` (every key starting with it, with
    ``prefix``) that the node applies from now on, in ``WatchEvents`` frames carrying this request's id
    (``kvstore.watches``). With ``rev``, every change from revision ``rev`` on: the node first sends the
    changes it keeps from ``rev`` to its revision (its history, ``kvstore.watches.History``), or refuses
    with ``compacted`` if it no longer keeps all of them. Sent only when set (``"rev"``): a node that
    does not know the field ignores it, and its ``ok`` then lacks ``"from"``, which the client checks."""

    id: int
    key: str
    prefix: bool
    rev: int | None = None


@dataclass(slots=True, kw_only=True)
class UnwatchRequest:
    """End the watch of this connection whose request id was ``watch``."""

    id: int
    watch: int


@dataclass(slots=True, kw_only=True)
class WatchEvents:
    """Changes for the watch whose request id is ``id``, in the order the node applied them: each
    ``[kind, key, value, version, mod_revision]``, ``kind`` "put" (the key's new value, version and
    revision) or "del" (value None, version 0, the revision of the delete)."""

    id: int
    events: list[list[Any]]


@dataclass(slots=True, kw_only=True)
class OkReply:
    """Success: ``result`` is a map with str keys (see ``RESULT_DEPTH_MAX`` for what it may hold)."""

    id: int
    result: dict[str, Any]


@dataclass(slots=True, kw_only=True)
class ErrorReply:
    """Failure: ``id`` is None when the request could not be parsed; ``leader`` is a "host:port" hint.
    ``refused``: the node turned the request away before acting on it (a write it refuses so was not
    proposed by this attempt: the client may report it as not written, docs/protocol.md)."""

    id: int | None
    code: str
    message: str
    leader: str | None
    refused: bool = False
    # With code EXPIRED: the newest stamp of a client id the cluster forgot (frames.new_client_id). Optional
    # on the wire ("horizon"), sent only when not 0.
    horizon: int = 0


CLIENT_REQUEST_TYPES = (PutRequest, DeleteRequest, CasRequest, GetRequest, ListRequest, StatusRequest, AdminRequest,
                        BackupRequest, WatchRequest, UnwatchRequest)
WRITE_REQUEST_TYPES = (PutRequest, DeleteRequest, CasRequest)
REPLY_TYPES = (OkReply, ErrorReply, WatchEvents)
PEER_MESSAGE_TYPES = (Hello, PaxosBatch, SnapshotChunk)
# What decode_body returns: one of the types above.
WireMessage = (PutRequest | DeleteRequest | CasRequest | GetRequest | ListRequest | StatusRequest | AdminRequest
               | BackupRequest | WatchRequest | UnwatchRequest | OkReply | ErrorReply | WatchEvents | Hello
               | PaxosBatch | SnapshotChunk)

# ---------------------------------------------------------------------------------------------------
# Paxos messages as positional arrays: [kind_code, sender, fields in declaration order...]
# ---------------------------------------------------------------------------------------------------

KIND_PREPARE = 1
KIND_PROMISE = 2
KIND_ACCEPT = 3
KIND_ACCEPTED = 4
KIND_NACK = 5
KIND_DECIDE = 6
KIND_HEARTBEAT = 7
KIND_HEARTBEAT_ACK = 8
KIND_CATCHUP_REQUEST = 9
KIND_CATCHUP_REPLY = 10
KIND_CAMPAIGN = 11
KIND_PRE_VOTE = 12  # (a node of a version before 2026-12-05 closes the link on these: docs/operations.md)
KIND_PRE_VOTE_REPLY = 13

KIND_CODES = {
    Prepare: KIND_PREPARE,
    Promise: KIND_PROMISE,
    Accept: KIND_ACCEPT,
    Accepted: KIND_ACCEPTED,
    Nack: KIND_NACK,
    Decide: KIND_DECIDE,
    Heartbeat: KIND_HEARTBEAT,
    HeartbeatAck: KIND_HEARTBEAT_ACK,
    CatchupRequest: KIND_CATCHUP_REQUEST,
    CatchupReply: KIND_CATCHUP_REPLY,
    Campaign: KIND_CAMPAIGN,
    PreVote: KIND_PRE_VOTE,
    PreVoteReply: KIND_PRE_VOTE_REPLY,
}
# The codes are the wire contract; they were assigned in the order of MESSAGE_TYPES. If someone
# reorders or extends MESSAGE_TYPES, fail loudly at import instead of silently changing the protocol.
if tuple(KIND_CODES) != tuple(MESSAGE_TYPES) or list(KIND_CODES.values()) != list(range(1, 14)):
    raise ImportError("kvstore.wire kind codes no longer match paxos.messages.MESSAGE_TYPES")


def _b(ballot: Ballot) -> list[int]:
    return [ballot.number, ballot.node_id]


# Each encoder returns the array for one message. Values (batches) are tuples of bytes, which cbor2
# writes as arrays directly, so they need no conversion.
_PAXOS_ENCODERS: dict[type[Any], Callable[[Any], list[Any]]] = {
    Prepare: lambda m: [1, m.sender, [m.ballot.number, m.ballot.node_id], m.first_slot],
    Promise: lambda m: [
        2, m.sender, [m.ballot.number, m.ballot.node_id], m.first_slot,
        [[e.slot, [e.ballot.number, e.ballot.node_id], e.value] for e in m.accepted],
        [[e.slot, e.value] for e in m.decided],
        m.snapshot_slot,
    ],
    Accept: lambda m: [3, m.sender, [m.ballot.number, m.ballot.node_id], m.slot, m.value, m.decided_slot],
    Accepted: lambda m: [4, m.sender, [m.ballot.number, m.ballot.node_id], m.slot],
    Nack: lambda m: [5, m.sender, _b(m.ballot), _b(m.promised)],
    Decide: lambda m: [6, m.sender, [m.ballot.number, m.ballot.node_id], m.decided_slot],
    Heartbeat: lambda m: [7, m.sender, [m.ballot.number, m.ballot.node_id], m.decided_slot, m.seq],
    HeartbeatAck: lambda m: [8, m.sender, [m.ballot.number, m.ballot.node_id], m.seq, m.decided_slot],
    CatchupRequest: lambda m: [9, m.sender, m.first_slot],
    CatchupReply: lambda m: [10, m.sender, [[e.slot, e.value] for e in m.entries], m.snapshot_slot],
    Campaign: lambda m: [11, m.sender, [m.ballot.number, m.ballot.node_id], m.decided_slot],
    PreVote: lambda m: [12, m.sender, _b(m.ballot), m.decided_slot],
    PreVoteReply: lambda m: [13, m.sender, _b(m.ballot), m.granted],
}


def _granted(x: object) -> bool:
    if type(x) is bool:
        return x
    raise WireError("granted must be a bool")


def _got(x: object) -> str:
    """What a field held instead, for an error message: an int with its value (out of range: QA, "expected an
    int in [1, 2**63), got int" did not say which), anything else by its type."""
    if type(x) is int:
        text = str(x) if -10**30 < x < 10**30 else f"{str(x)[:12]}... ({len(str(abs(x)))} digits)"
        return f"int {text}"
    return type(x).__name__


def _u64(x: object, name: str) -> int:
    if type(x) is int and 0 <= x < U64_LIMIT:
        return x
    raise WireError(f"{name}: expected an int in [0, 2**64), got {_got(x)}")


def _sender(x: object) -> int:
    if type(x) is int and 1 <= x < U64_LIMIT:
        return x
    raise WireError(f"sender: expected a node id >= 1, got {type(x).__name__} {x!r:.40}")


def _ballot(x: object, name: str = "ballot") -> Ballot:
    if type(x) is list and len(x) == 2:
        number, node_id = x
        if type(number) is int and type(node_id) is int and 0 <= number < U64_LIMIT and 0 <= node_id < U64_LIMIT:
            return Ballot(number, node_id)
    raise WireError(f"{name}: expected [number, node_id] of ints >= 0")


def _value(x: object) -> tuple[bytes, ...]:
    if type(x) is list:
        for command in x:
            if type(command) is not bytes:
                raise WireError(f"value: expected an array of byte strings, found {type(command).__name__}")
        return tuple(x)
    raise WireError(f"value: expected an array of byte strings, got {type(x).__name__}")


def _decided_entries(x: object, name: str) -> tuple[DecidedEntry, ...]:
    if type(x) is not list:
        raise WireError(f"{name}: expected an array of [slot, value]")
    entries = []
    for e in x:
        if type(e) is not list or len(e) != 2:
            raise WireError(f"{name}: expected [slot, value] entries")
        entries.append(DecidedEntry(slot=_u64(e[0], "slot"), value=_value(e[1])))
    return tuple(entries)


def _accepted_entries(x: object) -> tuple[AcceptedEntry, ...]:
    if type(x) is not list:
        raise WireError("accepted: expected an array of [slot, ballot, value]")
    entries = []
    for e in x:
        if type(e) is not list or len(e) != 3:
            raise WireError("accepted: expected [slot, ballot, value] entries")
        entries.append(AcceptedEntry(slot=_u64(e[0], "slot"), ballot=_ballot(e[1]), value=_value(e[2])))
    return tuple(entries)


# Each decoder gets an array whose length was already checked against _PAXOS_LENGTHS.
_PAXOS_DECODERS: dict[int, Callable[[list[Any]], Message]] = {
    1: lambda a: Prepare(sender=_sender(a[1]), ballot=_ballot(a[2]), first_slot=_u64(a[3], "first_slot")),
    2: lambda a: Promise(
        sender=_sender(a[1]), ballot=_ballot(a[2]), first_slot=_u64(a[3], "first_slot"),
        accepted=_accepted_entries(a[4]), decided=_decided_entries(a[5], "decided"),
        snapshot_slot=_u64(a[6], "snapshot_slot"),
    ),
    3: lambda a: Accept(
        sender=_sender(a[1]), ballot=_ballot(a[2]), slot=_u64(a[3], "slot"), value=_value(a[4]),
        decided_slot=_u64(a[5], "decided_slot"),
    ),
    4: lambda a: Accepted(sender=_sender(a[1]), ballot=_ballot(a[2]), slot=_u64(a[3], "slot")),
    5: lambda a: Nack(sender=_sender(a[1]), ballot=_ballot(a[2]), promised=_ballot(a[3], "promised")),
    6: lambda a: Decide(sender=_sender(a[1]), ballot=_ballot(a[2]), decided_slot=_u64(a[3], "decided_slot")),
    7: lambda a: Heartbeat(
        sender=_sender(a[1]), ballot=_ballot(a[2]), decided_slot=_u64(a[3], "decided_slot"),
        seq=_u64(a[4], "seq"),
    ),
    8: lambda a: HeartbeatAck(sender=_sender(a[1]), ballot=_ballot(a[2]), seq=_u64(a[3], "seq"),
                              decided_slot=_u64(a[4], "decided_slot") if len(a) > 4 else 0),
    9: lambda a: CatchupRequest(sender=_sender(a[1]), first_slot=_u64(a[2], "first_slot")),
    10: lambda a: CatchupReply(
        sender=_sender(a[1]), entries=_decided_entries(a[2], "entries"), snapshot_slot=_u64(a[3], "snapshot_slot"),
    ),
    11: lambda a: Campaign(sender=_sender(a[1]), ballot=_ballot(a[2]), decided_slot=_u64(a[3], "decided_slot")),
    12: lambda a: PreVote(sender=_sender(a[1]), ballot=_ballot(a[2]), decided_slot=_u64(a[3], "decided_slot")),
    13: lambda a: PreVoteReply(sender=_sender(a[1]), ballot=_ballot(a[2]), granted=_granted(a[3])),
}
# Array length of each kind, including the kind code itself.
# A HeartbeatAck from an older node has no decided_slot (4 elements).
_PAXOS_LENGTHS = {1: (4,), 2: (7,), 3: (6,), 4: (4,), 5: (4,), 6: (4,), 7: (5,), 8: (4, 5), 9: (3,), 10: (4,),
                  11: (4,), 12: (4,), 13: (4,)}


def encode_paxos_message(message: object) -> list[Any]:
    """The CBOR-ready array for one ``paxos.messages`` message; ``TypeError`` for anything else."""
    encoder = _PAXOS_ENCODERS.get(type(message))
    if encoder is None:
        raise TypeError(f"not a paxos message: {type(message).__name__}")
    return encoder(message)


# Kinds above the last one this version knows, up to this, are a later version's messages: skipped
# (``_d_px``), so that a rolling upgrade to a version with new messages keeps the links of this one.
# (Versions before 2026-12-05 closed the link on an unknown kind: docs/operations.md, "Upgrading".)
_KIND_LATER_MAX = 255


def decode_paxos_message(array: object) -> Message | None:
    """The ``paxos.messages`` message for one decoded array; None for a later version's kind (skipped);
    ``WireError`` if it is malformed."""
    if type(array) is not list or not array:
        raise WireError("px: each message must be a non-empty array")
    kind = array[0]
    if type(kind) is not int or kind not in _PAXOS_DECODERS:
        if type(kind) is int and max(KIND_CODES.values()) < kind <= _KIND_LATER_MAX:
            return None
        raise WireError(f"px: unknown message kind {kind!r:.40}")
    if len(array) not in _PAXOS_LENGTHS[kind]:
        raise WireError(f"px: kind {kind} needs {' or '.join(map(str, _PAXOS_LENGTHS[kind]))} elements, "
                        f"got {len(array)}")
    return _PAXOS_DECODERS[kind](array)


# ---------------------------------------------------------------------------------------------------
# Map messages: encoders (our own objects, trusted) and decoders (remote bytes, checked)
# ---------------------------------------------------------------------------------------------------


def _encode_err(m: ErrorReply) -> dict[str, Any]:
    body = {"t": "err", "id": m.id, "code": m.code, "msg": m.message, "leader": m.leader}
    if m.refused:
        body["refused"] = True  # absent when false: older clients and the worked examples see no change
    if m.horizon:
        body["horizon"] = m.horizon
    return body


def _encode_ok(m: OkReply) -> dict[str, Any]:
    # Check our own result with the receiver's rules, so a server bug (a set, a datetime, a deep
    # structure) shows up here as ValueError instead of as a protocol error at every client.
    _check_result_map(m.result, (list, tuple), ValueError)
    return {"t": "ok", "id": m.id, "r": m.result}


def _encode_px(m: PaxosBatch) -> dict[str, Any]:
    # One table lookup per message, no per-message dict: this is the bulk of peer traffic.
    encoders = _PAXOS_ENCODERS
    try:
        return {"t": "px", "m": [encoders[type(x)](x) for x in m.messages]}
    except KeyError as exc:
        raise TypeError(f"PaxosBatch holds a non-paxos message: {exc}") from None


def _encode_hello(m: Hello) -> dict[str, Any]:
    o: dict[str, Any] = {"t": "hello", "node": m.node_id, "cluster": m.cluster_id}
    if m.incarnation is not None:
        o["inc"] = m.incarnation
    if m.engine != "core":
        o["eng"] = m.engine
    if m.features:
        o["feat"] = list(m.features)
    if m.to is not None:
        o["to"] = m.to
    return o


_MAP_ENCODERS: dict[type[Any], Callable[[Any], dict[str, Any]]] = {
    Hello: _encode_hello,
    PaxosBatch: _encode_px,
    SnapshotChunk: lambda m: {
        "t": "snap", "from": m.sender, "slot": m.slot, "off": m.offset, "total": m.total, "data": m.data,
    },
    PutRequest: lambda m: {
        "t": "put", "id": m.id, "key": m.key, "value": m.value, "cid": m.client_id, "rq": m.request_id,
        "ack": m.ack_below,
    },
    DeleteRequest: lambda m: delete_request(m.id, m.key, m.prefix, m.client_id, m.request_id, m.ack_below),
    CasRequest: lambda m: cas_request(m.id, m.key, m.expected, m.new, m.client_id, m.request_id, m.ack_below),
    GetRequest: lambda m: get_request(m.id, m.key, m.linearizable),
    ListRequest: lambda m: list_request(m.id, m.prefix, m.keys_only, m.linearizable, m.limit, m.meta),
    StatusRequest: lambda m: status_request(m.id),
    AdminRequest: lambda m: admin_request(m.id, m.op, m.node, m.address),
    BackupRequest: lambda m: backup_request(m.id, m.session, m.offset),
    WatchRequest: lambda m: ({"t": "watch", "id": m.id, "key": m.key, "prefix": m.prefix} if m.rev is None
                             else {"t": "watch", "id": m.id, "key": m.key, "prefix": m.prefix, "rev": m.rev}),
    UnwatchRequest: lambda m: {"t": "unwatch", "id": m.id, "watch": m.watch},
    WatchEvents: lambda m: {"t": "ev", "id": m.id, "ev": m.events},
    OkReply: _encode_ok,
    ErrorReply: _encode_err,
}


def _get(obj: dict[str, Any], key: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise WireError(f"{obj['t']}: missing field {key!r}") from None


def _f_int(obj: dict[str, Any], key: str, low: int, limit: int) -> int:
    x = _get(obj, key)
    if type(x) is int and low <= x < limit:
        return x
    raise WireError(f"{obj['t']}.{key}: expected an int in [{low}, {limit}), got {_got(x)}")


def _f_id(obj: dict[str, Any]) -> int:
    x = _get(obj, "id")
    if type(x) is int and 0 <= x < ID_LIMIT:
        return x
    raise WireError(f"{obj['t']}.id: expected an int in [0, 2**63), got {_got(x)}")


def _f_str(obj: dict[str, Any], key: str) -> str:
    x = _get(obj, key)
    if type(x) is str:
        return x
    raise WireError(f"{obj['t']}.{key}: expected a text string, got {type(x).__name__}")


def _f_bytes(obj: dict[str, Any], key: str) -> bytes:
    x = _get(obj, key)
    if type(x) is bytes:
        return x
    raise WireError(f"{obj['t']}.{key}: expected a byte string, got {type(x).__name__}")


def _f_bool(obj: dict[str, Any], key: str) -> bool:
    x = _get(obj, key)
    if type(x) is bool:
        return x
    raise WireError(f"{obj['t']}.{key}: expected a bool, got {type(x).__name__}")


@overload
def _f_value(obj: dict[str, Any], key: str, none_ok: Literal[False] = False) -> str | bytes: ...
@overload
def _f_value(obj: dict[str, Any], key: str, none_ok: bool) -> str | bytes | None: ...
def _f_value(obj: dict[str, Any], key: str, none_ok: bool = False) -> str | bytes | None:
    x: str | bytes | None = _get(obj, key)  # checked next
    t = type(x)
    if t is str or t is bytes or (none_ok and x is None):
        return x
    raise WireError(f"{obj['t']}.{key}: expected a text or byte string, got {t.__name__}")


def _f_opt_str(obj: dict[str, Any], key: str) -> str | None:
    x = _get(obj, key)
    if x is None or type(x) is str:
        return x
    raise WireError(f"{obj['t']}.{key}: expected a text string or null, got {type(x).__name__}")


def _d_admin(obj: dict[str, Any]) -> AdminRequest:
    op = _f_str(obj, "op")
    if op not in ADMIN_OPS:
        raise WireError(f"admin.op: unknown operation {op[:40]!r}; expected one of {', '.join(ADMIN_OPS)}")
    address = _f_str(obj, "addr")
    if len(address) > 300:
        raise WireError("admin.addr: longer than 300 characters")
    return AdminRequest(id=_f_id(obj), op=op, node=_f_int(obj, "node", 0, 1 << 31), address=address)


def _d_px(obj: dict[str, Any]) -> PaxosBatch:
    items = _get(obj, "m")
    if type(items) is not list:
        raise WireError("px.m: expected an array")
    messages = [decode_paxos_message(a) for a in items]
    return PaxosBatch(messages=tuple([m for m in messages if m is not None]))


def _d_snap(obj: dict[str, Any]) -> SnapshotChunk:
    chunk = SnapshotChunk(
        sender=_f_int(obj, "from", 1, U64_LIMIT), slot=_f_int(obj, "slot", 0, U64_LIMIT),
        offset=_f_int(obj, "off", 0, U64_LIMIT), total=_f_int(obj, "total", 0, U64_LIMIT),
        data=_f_bytes(obj, "data"),
    )
    # A chunk that reaches past the snapshot's end is nonsense whatever the receiver does with it.
    if chunk.offset + len(chunk.data) > chunk.total:
        raise WireError("snap: off + len(data) exceeds total")
    return chunk


def _d_features(obj: dict[str, Any]) -> tuple[str, ...]:
    names = obj["feat"]
    if (type(names) is not list or len(names) > FEATURES_MAX
            or not all(type(name) is str and 0 < len(name) <= 64 for name in names)):
        raise WireError(f"hello.feat: expected a list of at most {FEATURES_MAX} short texts")
    return tuple(names)


def _d_err(obj: dict[str, Any]) -> ErrorReply:
    rid = _get(obj, "id")
    if rid is not None and not (type(rid) is int and 0 <= rid < ID_LIMIT):
        raise WireError(f"err.id: expected an int in [0, 2**63) or null, got {_got(rid)}")
    return ErrorReply(id=rid, code=_f_str(obj, "code"), message=_f_str(obj, "msg"), leader=_f_opt_str(obj, "leader"),
                      refused=_f_bool(obj, "refused") if "refused" in obj else False,
                      horizon=_f_int(obj, "horizon", 0, U64_LIMIT) if "horizon" in obj else 0)


# The four hottest requests get a fast path: one pass of lookups and exact type tests that accepts a
# well-formed request. Only when it fails does the slow path run the per-field helpers above, which
# re-check everything and raise a WireError naming the bad field. Both paths accept the same set.


def _d_put(o: dict[str, Any]) -> PutRequest:
    value: Any  # its type is tested exactly below (mypy does not narrow on ``type(x) in ...``)
    rid, key, value, cid, rq, ack = o.get("id"), o.get("key"), o.get("value"), o.get("cid"), o.get("rq"), o.get("ack")
    if (type(rid) is int and 0 <= rid < ID_LIMIT and type(key) is str and type(value) in _STR_BYTES
            and type(cid) is bytes and type(rq) is int and 0 <= rq < U64_LIMIT
            and type(ack) is int and 0 <= ack < U64_LIMIT):
        return PutRequest(id=rid, key=key, value=value, client_id=cid, request_id=rq, ack_below=ack)
    return PutRequest(
        id=_f_id(o), key=_f_str(o, "key"), value=_f_value(o, "value"), client_id=_f_bytes(o, "cid"),
        request_id=_f_int(o, "rq", 0, U64_LIMIT), ack_below=_f_int(o, "ack", 0, U64_LIMIT),
    )


def _d_del(o: dict[str, Any]) -> DeleteRequest:
    rid, key, prefix, cid, rq, ack = o.get("id"), o.get("key"), o.get("prefix"), o.get("cid"), o.get("rq"), o.get("ack")
    if (type(rid) is int and 0 <= rid < ID_LIMIT and type(key) is str and type(prefix) is bool
            and type(cid) is bytes and type(rq) is int and 0 <= rq < U64_LIMIT
            and type(ack) is int and 0 <= ack < U64_LIMIT):
        return DeleteRequest(id=rid, key=key, prefix=prefix, client_id=cid, request_id=rq, ack_below=ack)
    return DeleteRequest(
        id=_f_id(o), key=_f_str(o, "key"), prefix=_f_bool(o, "prefix"), client_id=_f_bytes(o, "cid"),
        request_id=_f_int(o, "rq", 0, U64_LIMIT), ack_below=_f_int(o, "ack", 0, U64_LIMIT),
    )


def _d_cas(o: dict[str, Any]) -> CasRequest:
    new: Any  # its type is tested exactly below (mypy does not narrow on ``type(x) in ...``)
    rid, key, new, cid, rq, ack = o.get("id"), o.get("key"), o.get("new"), o.get("cid"), o.get("rq"), o.get("ack")
    # "expected" may legitimately be null, so its presence is tested separately from its value.
    expected = o.get("expected", _MISSING)
    if (type(rid) is int and 0 <= rid < ID_LIMIT and type(key) is str and type(expected) in _STR_BYTES_NONE
            and type(new) in _STR_BYTES and type(cid) is bytes and type(rq) is int and 0 <= rq < U64_LIMIT
            and type(ack) is int and 0 <= ack < U64_LIMIT):
        return CasRequest(id=rid, key=key, expected=expected, new=new, client_id=cid, request_id=rq, ack_below=ack)
    return CasRequest(
        id=_f_id(o), key=_f_str(o, "key"), expected=_f_value(o, "expected", none_ok=True), new=_f_value(o, "new"),
        client_id=_f_bytes(o, "cid"), request_id=_f_int(o, "rq", 0, U64_LIMIT),
        ack_below=_f_int(o, "ack", 0, U64_LIMIT),
    )


def _d_get(o: dict[str, Any]) -> GetRequest:
    rid, key, lin = o.get("id"), o.get("key"), o.get("lin")
    if type(rid) is int and 0 <= rid < ID_LIMIT and type(key) is str and type(lin) is bool:
        return GetRequest(id=rid, key=key, linearizable=lin)
    return GetRequest(id=_f_id(o), key=_f_str(o, "key"), linearizable=_f_bool(o, "lin"))


def _d_ev(o: dict[str, Any]) -> WatchEvents:
    events = _get(o, "ev")
    if type(events) is not list or not events:
        raise WireError("ev.ev: expected a non-empty array of events")
    for event in events:
        if not (type(event) is list and len(event) == 5 and event[0] in ("put", "del") and type(event[1]) is str
                and type(event[3]) is int and 0 <= event[3] < U64_LIMIT
                and type(event[4]) is int and 0 < event[4] < U64_LIMIT
                and (type(event[2]) in _STR_BYTES if event[0] == "put" else event[2] is None and event[3] == 0)):
            raise WireError(f"ev.ev: expected [\"put\", key, value, version, revision] or "
                            f"[\"del\", key, null, 0, revision], got {_got(event)}")
    return WatchEvents(id=_f_id(o), events=events)


def encode_events_frame(wire_id: int, events: list[list[Any]]) -> bytes:
    """The frame of ``WatchEvents(id=wire_id, events=events)`` (the node's own events: not checked)."""
    body = cbor2.dumps({"t": "ev", "id": wire_id, "ev": events})
    return _HEADER.pack(len(body)) + body


_MISSING = object()
_STR_BYTES = (str, bytes)
_STR_BYTES_NONE = (str, bytes, type(None))


_MAP_DECODERS: dict[str, Callable[[dict[str, Any]], WireMessage]] = {
    "hello": lambda o: Hello(node_id=_f_int(o, "node", 1, ID_LIMIT), cluster_id=_f_str(o, "cluster"),
                             incarnation=_f_opt_str(o, "inc") if "inc" in o else None,
                             engine=_f_str(o, "eng") if "eng" in o else "core",
                             features=_d_features(o) if "feat" in o else (),
                             to=_f_int(o, "to", 1, ID_LIMIT) if "to" in o else None),
    "px": _d_px,
    "snap": _d_snap,
    "put": _d_put,
    "del": _d_del,
    "cas": _d_cas,
    "get": _d_get,
    "list": lambda o: ListRequest(
        id=_f_id(o), prefix=_f_str(o, "prefix"), keys_only=_f_bool(o, "keys_only"),
        linearizable=_f_bool(o, "lin"), limit=_f_int(o, "limit", 0, ID_LIMIT),
        meta=_f_bool(o, "meta") if "meta" in o else False,
    ),
    "status": lambda o: StatusRequest(id=_f_id(o)),
    "admin": lambda o: _d_admin(o),
    "backup": lambda o: BackupRequest(id=_f_id(o), session=_f_int(o, "session", 0, U64_LIMIT),
                                      offset=_f_int(o, "off", 0, U64_LIMIT)),
    "watch": lambda o: WatchRequest(id=_f_id(o), key=_f_str(o, "key"), prefix=_f_bool(o, "prefix"),
                                    rev=_f_int(o, "rev", 1, U64_LIMIT) if "rev" in o else None),
    "unwatch": lambda o: UnwatchRequest(id=_f_id(o), watch=_f_int(o, "watch", 0, ID_LIMIT)),
    "ok": lambda o: OkReply(id=_f_id(o), result=_check_result_map(_get(o, "r"), (list,), WireError)),
    "err": _d_err,
    "ev": lambda o: _d_ev(o),
}


# ---------------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------------


def encode_body(message: object) -> bytes:
    """The CBOR body (no header) of one message object.

    Raises ``TypeError`` if ``message`` is not one of this module's message classes. Our own objects
    are trusted, except that an ``OkReply`` result is checked (``ValueError``) because a bad one would
    be rejected by every receiver.
    """
    encoder = _MAP_ENCODERS.get(type(message))
    if encoder is None:
        raise TypeError(f"not a wire message: {type(message).__name__}")
    return cbor2.dumps(encoder(message))


def encode_frame(message: object, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """One complete frame: the 4-byte big-endian body length, then the CBOR body of ``message``.

    Raises ``TypeError`` for a non-message and ``FrameTooLarge`` (a ``ValueError``) if the body would
    exceed ``frame_bytes_max``: the receiver would close the connection, so sending it is a bug the
    caller must handle (answer ``too_large``, or split the batch).
    """
    body = encode_body(message)
    if len(body) > frame_bytes_max:
        raise FrameTooLarge(f"{type(message).__name__} body is {len(body)} bytes, limit {frame_bytes_max}")
    return _HEADER.pack(len(body)) + body


def encode_write_result_frame(wire_id: int, result: dict[str, Any]) -> bytes:
    """The frame of ``OkReply(id=wire_id, result=result)`` for the result of a write.

    The answer to every put, so it skips building an ``OkReply`` and checking the result: ``result``
    must be what ``StateMachine.apply`` returns for an executed write, a small map of str to int or
    bool, which is always valid. Byte for byte what ``encode_frame`` gives (a test checks).
    """
    body = cbor2.dumps({"t": "ok", "id": wire_id, "r": result})
    return _HEADER.pack(len(body)) + body


def encode_range_result_frame(wire_id: int, result: dict[str, Any], frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """The frame of ``OkReply(id=wire_id, result=result)`` for a range answer (``kvstore.waiters.read_reply``).

    It skips checking the result: its items are the state machine's keys, values and counters, valid by
    construction, and the check walks every one of them in the node's event loop (a sixth of an answer's
    cost). ``FrameTooLarge`` as ``encode_frame``. Byte for byte what ``encode_frame`` gives (a test checks).
    """
    body = cbor2.dumps({"t": "ok", "id": wire_id, "r": result})
    if len(body) > frame_bytes_max:
        raise FrameTooLarge(f"OkReply body is {len(body)} bytes, limit {frame_bytes_max}")
    return _HEADER.pack(len(body)) + body


def encode_frames(messages: Iterable[object]) -> bytes:
    """Several frames joined into one byte string, to hand to one ``send_all``."""
    return b"".join([encode_frame(m) for m in messages])


def decode_body(body: bytes) -> WireMessage:
    """The validated message object held in one frame body.

    Returns an instance of one of ``PEER_MESSAGE_TYPES``, ``CLIENT_REQUEST_TYPES`` or ``REPLY_TYPES``.
    Raises ``WireError``, and nothing else, for any body that is not exactly one CBOR map of a known
    ``"t"`` with every field present and of the right type (unknown extra fields are ignored).
    """
    try:
        fp = io.BytesIO(body)
        obj = cbor2.CBORDecoder(fp, max_depth=_CBOR_DEPTH_MAX, strict_hashable_types=True).decode()
        end = fp.tell()
    except Exception as exc:  # cbor2 raises several types (and ValueError/OverflowError from tags)
        raise WireError(f"not valid CBOR: {exc}") from exc
    if end != len(body):
        raise WireError(f"{len(body) - end} bytes after the CBOR item in the frame")
    return _message_of(obj)


def decode_bodies(bodies: list[bytes]) -> list[WireMessage | WireError]:
    """``decode_body`` of each body, in order, with one CBOR decoder for them all.

    Building a decoder costs about as much as decoding a small message, and a reader usually holds
    several frames at once (a client's replies, a leader's requests). cbor2 forgets shared values at
    the end of each top-level item, so decoding the bodies back to back reads each one exactly as
    ``decode_body`` would; each item must end exactly at its frame's end.

    Returns one message per body. If a body is bad, the list ends with its ``WireError`` (as a value,
    not raised; the bodies after it are not decoded), so a caller can serve the good frames that
    came first and then answer the bad one.
    """
    if len(bodies) == 1:
        try:
            return [decode_body(bodies[0])]
        except WireError as exc:
            return [exc]
    fp = io.BytesIO(b"".join(bodies))
    decoder = cbor2.CBORDecoder(fp, max_depth=_CBOR_DEPTH_MAX, strict_hashable_types=True)
    messages: list[WireMessage | WireError] = []
    end = 0
    for i, body in enumerate(bodies):
        end += len(body)
        try:
            obj = decoder.decode()
            whole = fp.tell() == end
        except Exception:
            whole = False
        try:
            if not whole:
                # Trouble at this frame: decode_body alone gives the exact error (an item that ran
                # into the next frame leaves no use for this decoder either).
                for rest in bodies[i:]:
                    messages.append(decode_body(rest))
                return messages
            messages.append(_message_of(obj))
        except WireError as exc:
            messages.append(exc)
            return messages
    return messages


def _message_of(obj: object) -> WireMessage:
    """The message object for one decoded CBOR item (``WireError`` unless it is a valid message)."""
    if type(obj) is not dict:
        raise WireError(f"frame body must be a CBOR map, got {type(obj).__name__}")
    kind = obj.get("t")
    if type(kind) is not str:
        raise WireError("frame map has no text field 't'")
    decoder = _MAP_DECODERS.get(kind)
    if decoder is None:
        raise WireError(f"unknown message type {kind!r:.40}")
    try:
        return decoder(obj)
    except WireError:
        raise
    except Exception as exc:  # belt and braces: a validation slip must still be a WireError
        raise WireError(f"{kind}: malformed message: {exc!r}") from exc


def request_id_of(body: bytes) -> int | None:
    """Best effort: the request ``id`` in a body that ``decode_body`` rejected, else None. Never raises.

    Lets the server address its ``protocol`` error reply to the request that caused it when the body
    was a CBOR map with a usable ``"id"`` but was wrong elsewhere.
    """
    try:
        obj = cbor2.loads(body, max_depth=_CBOR_DEPTH_MAX, strict_hashable_types=True)
        if type(obj) is dict:
            rid = obj.get("id")
            if type(rid) is int and 0 <= rid < ID_LIMIT:
                return rid
    except Exception:
        pass
    return None


class FrameCutShort(WireError):
    """The connection ended in the middle of a frame: the other end went away while it was writing (a
    client giving up on a node during a failover does), not a malformed frame."""


class FrameBudgetExhausted(WireError):
    """A frame too large to hold while it arrives: the node's ``FrameBudget`` is taken by frames still
    arriving on other connections. Not the sender's fault, unlike other ``WireError``s; the connection
    is closed all the same (the rest of the frame is on its way, and nothing else can be read first).
    ``unread``: the bytes of the frame still to come, which ``FrameReader.discard`` reads and drops (a
    connection closed with bytes unread ends in a reset, which can cost the client the refusal)."""

    def __init__(self, message: str, unread: int = 0) -> None:
        super().__init__(message)
        self.unread = unread


class FrameBudget:
    """Bytes that a node's connections may hold together for frames still arriving (``FrameReader``).

    Each connection holds at most one incomplete frame of up to ``frame_bytes_max`` (8 MiB), for as
    long as the sender takes to finish it: many connections that each send most of a large frame and
    stall would hold that many times 8 MiB. A reader whose incomplete frame announces more than
    ``RECEIVE_CHUNK_BYTES`` takes the frame's whole size from this budget before it reads on, and gives it
    back once the frame is complete or the connection ends; when the budget cannot cover it the
    reader raises ``FrameBudgetExhausted`` instead. Small frames never touch it, so requests of the
    usual size are served whatever large frames are doing.
    """

    def __init__(self, bytes_max: int) -> None:
        if bytes_max < 1:
            raise ValueError(f"a frame budget needs at least 1 byte, not {bytes_max}")
        self.bytes_max = bytes_max
        self.held = 0  # bytes taken by readers now

    def take(self, count: int) -> bool:
        """Take ``count`` bytes if the budget has them (True), else nothing (False)."""
        if self.held + count > self.bytes_max:
            return False
        self.held += count
        return True

    def give(self, count: int) -> None:
        """Give back ``count`` bytes taken earlier."""
        self.held -= count
        assert self.held >= 0, f"frame budget given back more than taken ({self.held})"


FRAME_STALL_SECONDS = 10.0
"""A frame that holds room of the node's ``FrameBudget`` while it arrives may go this long without a
byte; then its connection is closed (a ``WireError``) and the room given back."""
FRAME_MIN_BYTES_PER_SECOND = 64 * 1024
"""... and it must arrive whole within ``FRAME_STALL_SECONDS`` plus its size at this rate (8 MiB: 138 s):
a byte every few seconds never stalls, but would hold the room until the idle-client timeout."""


def _read_size(buffer: bytearray) -> int:
    """How much ``FrameReader`` asks its stream for next: ``RECEIVE_CHUNK_BYTES``, or the rest of the
    frame whose length the buffer starts with if that is more (``RECEIVE_FRAME_BYTES_MAX`` at most).

    Every read is a pass of trio's scheduler, and each pass waits for the other tasks' steps. In 64 KiB
    reads a 1 MiB Accept took 16 passes and a frame of four took 64: on a follower whose driver took
    steps of 30-100 ms (writing megabytes of values to its log, a loaded machine), the leader's frames
    came in at a few MB/s, its heartbeats waited behind them longer than an election timeout, and the
    follower called elections against a leader that was alive (bench/big_values.py). The length was
    checked already (``split_frames``), and a frame that holds the node's ``FrameBudget`` took its whole
    size before this read, so asking for its rest at once holds no more memory than reading it in chunks.
    """
    if len(buffer) < HEADER_BYTES:
        return RECEIVE_CHUNK_BYTES
    rest = HEADER_BYTES + int.from_bytes(buffer[:HEADER_BYTES], "big") - len(buffer)
    return min(max(rest, RECEIVE_CHUNK_BYTES), RECEIVE_FRAME_BYTES_MAX)


class FrameReader:
    """Reads frames from one trio ``ReceiveStream``; one reader per connection, used by one task.

    It keeps the bytes of an incomplete frame between calls. Beyond the frames it hands out it never
    holds more than one incomplete frame (at most ``HEADER_BYTES + frame_bytes_max`` bytes), because
    a length is checked before its body is read and complete frames are handed out at once.

    On a plain ``trio.SocketStream`` it reads the socket itself (``_receive_raw``) instead of going
    through ``receive_some``: trio's layers (two context managers, a checkpoint sandwich, a first
    ``recv`` that fails with ``EAGAIN``) cost tens of microseconds per message on a small machine,
    paid twice per write by a leader serving one request at a time. After a read found the socket
    empty it waits for readiness before the next read, until a read brings several frames at once. It
    yields to the scheduler just as often, and reports the same errors.
    """

    def __init__(self, stream: trio.abc.ReceiveStream, frame_bytes_max: int = FRAME_BYTES_MAX,
                 budget: FrameBudget | None = None) -> None:
        self.stream = stream
        self.frame_bytes_max = frame_bytes_max
        # The node's budget for large frames while they arrive (see FrameBudget); None: no limit
        # but frame_bytes_max (kvstore.client's reader, a peer link the node accepted)
        self.budget = budget
        self._buffer = bytearray()
        # the trio socket of a plain TCP stream (read directly); None: use receive_some
        self._socket = stream.socket if type(stream) is trio.SocketStream else None
        # Wait for readiness before reading, skipping a read that would fail with EAGAIN (one request
        # at a time it always would): set when a read found the socket empty, cleared when a read
        # brought several frames (load: more is likely there already, so read first, as trio does)
        self._drained = False

    async def receive_frames(self) -> list[bytes]:
        """Wait for at least one complete frame; return the bodies of ALL complete frames buffered.

        Returns ``[]`` at a clean end of stream (no partial frame buffered); call it no more after
        that. Raises ``WireError`` on a bad length (0 or oversize) or on end of stream in the middle of
        a frame. The stream's own errors (``trio.BrokenResourceError`` and so on) pass through.
        """
        buffer = self._buffer
        frames = split_frames(buffer, self.frame_bytes_max)
        if frames:
            return frames
        receive = self._receive_raw if self._socket is not None else self.stream.receive_some
        budget = self.budget
        taken = 0  # bytes of the budget this frame holds while it arrives (see FrameBudget)
        whole_by = math.inf  # when that frame must have arrived whole (FRAME_MIN_BYTES_PER_SECOND)
        try:
            # Every pass adds at least one byte to a buffer that holds no complete frame, and a buffer
            # of HEADER_BYTES + frame_bytes_max bytes always holds one (or split_frames raised), so the
            # loop ends within that many passes.
            for _ in range(HEADER_BYTES + self.frame_bytes_max + 1):
                if not taken and budget is not None and len(buffer) >= HEADER_BYTES:
                    size = HEADER_BYTES + int.from_bytes(buffer[:HEADER_BYTES], "big")  # (checked: split_frames)
                    if size > RECEIVE_CHUNK_BYTES:
                        if not budget.take(size):
                            unread = size - len(buffer)
                            buffer.clear()  # (the frame's start: discard drops the rest)
                            raise FrameBudgetExhausted(
                                f"a frame of {size} bytes cannot be received now: frames still arriving on other "
                                f"connections hold {budget.held} of the {budget.bytes_max} bytes this node keeps "
                                "for them; send it again later", unread)
                        taken = size
                        whole_by = trio.current_time() + FRAME_STALL_SECONDS + size / FRAME_MIN_BYTES_PER_SECOND
                if taken:
                    # A frame that holds room must keep coming, and at a pace: one that stalls or trickles
                    # would keep the room from other large requests until the idle-client timeout (600 s).
                    data = None
                    stall_at = trio.current_time() + FRAME_STALL_SECONDS
                    with trio.move_on_at(min(stall_at, whole_by)):
                        data = await receive(_read_size(buffer))
                    if data is None:
                        if stall_at <= whole_by:
                            raise WireError(f"no byte of a frame of {taken} bytes came for {FRAME_STALL_SECONDS:g}s "
                                            f"({len(buffer)} bytes of it arrived)")
                        raise WireError(f"a frame of {taken} bytes came slower than {FRAME_MIN_BYTES_PER_SECOND} "
                                        f"bytes/s ({len(buffer)} bytes of it arrived)")
                else:
                    data = await receive(_read_size(buffer))
                if not data:
                    if buffer:
                        raise FrameCutShort(
                            f"connection closed in the middle of a frame ({len(buffer)} bytes buffered)")
                    return []
                buffer += data
                frames = split_frames(buffer, self.frame_bytes_max)
                if frames:
                    if len(frames) > 1:
                        self._drained = False
                    return frames
            raise AssertionError("FrameReader: buffer grew past one frame without a complete frame")
        finally:
            if taken and budget is not None:
                budget.give(taken)

    async def discard(self, count: int) -> None:
        """Read ``count`` bytes and drop them (the rest of a refused frame: ``FrameBudgetExhausted.unread``),
        or until the stream ends; nothing is kept. The caller bounds the time it may take."""
        receive = self._receive_raw if self._socket is not None else self.stream.receive_some
        while count > 0:  # bounded: every pass reads at least one byte or returns
            data = await receive(min(count, RECEIVE_CHUNK_BYTES))
            if not data:
                return
            count -= len(data)

    async def _receive_raw(self, max_bytes: int) -> bytes:
        """``SocketStream.receive_some`` for a plain TCP stream, without its layers. The same
        checkpoints: a cancellable wait for readiness, or, when data is there at once, a cancellation
        check before the read and a shielded yield after it (so a cancellation never loses bytes read);
        trio's errors for a closed or broken socket."""
        sock = self._socket
        assert sock is not None
        waited = False
        while True:
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("this socket was already closed")
            if self._drained:
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    raise trio.ClosedResourceError("another task closed this socket") from None
                waited = True
            elif not waited:
                await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = os.read(fd, max_bytes)
            except BlockingIOError:
                self._drained = True
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()  # as trio's recv does
            return data
