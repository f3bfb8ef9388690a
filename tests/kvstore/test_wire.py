"""Tests for kvstore.wire: frames, message encodings, and the refusal of everything malformed.

What is checked, and how:

* Round trips: hypothesis draws every message class (every Paxos message kind inside PaxosBatch,
  with accepted/decided entries; every client request; both replies; Hello; SnapshotChunk), encodes
  it to a frame, splits the frame off a buffer and decodes it; the result must equal the original
  (dataclass equality, so lists where tuples belong would fail).
* The Paxos array layout is checked against an independent reference built from
  ``dataclasses.fields`` (kind code from the position in MESSAGE_TYPES, then every field in
  declaration order), so the documented layout and the code cannot drift apart.
* Hostile input: arbitrary bytes (hypothesis), a few thousand seeded random byte strings, and valid
  frames with seeded random byte flips must make decode_body raise WireError and nothing else.
* Systematic wrong types: every field of every map message is replaced in turn by values of every
  wrong CBOR type (tags that cbor2 turns into datetime, Decimal, Fraction, UUID, set, regex; an unknown
  tag; bool where an int belongs; float; null; arrays and maps; out-of-range ints) or deleted; every
  position inside a px array is replaced by values of other types. Each must give WireError.
* Framing: split_frames refuses a 2**31 or 0 length from the header alone; FrameReader over
  trio.testing.memory_stream_pair reassembles frames split at every byte boundary, batches buffered
  frames, returns [] at a clean end of stream and raises WireError at an end inside a frame.
"""
from __future__ import annotations

import dataclasses
import datetime
import decimal
import fractions
import random
import re
import socket
import struct
import uuid
from pathlib import Path

import cbor2
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvstore import wire
from paxos import messages as pm
from paxos.ballot import Ballot

# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=1000)
slots = st.one_of(small, u64)
node_ids = st.integers(min_value=1, max_value=2**64 - 1)
req_ids = st.integers(min_value=0, max_value=2**63 - 1)
ballots = st.builds(Ballot, st.one_of(small, u64), st.integers(min_value=0, max_value=2**64 - 1))
values = st.lists(st.binary(max_size=40), max_size=5).map(tuple)
accepted_entries = st.builds(pm.AcceptedEntry, slot=slots, ballot=ballots, value=values)
decided_entries = st.builds(pm.DecidedEntry, slot=slots, value=values)

paxos_messages = st.one_of(
    st.builds(pm.Prepare, sender=node_ids, ballot=ballots, first_slot=slots),
    st.builds(
        pm.Promise, sender=node_ids, ballot=ballots, first_slot=slots,
        accepted=st.lists(accepted_entries, max_size=4).map(tuple),
        decided=st.lists(decided_entries, max_size=4).map(tuple), snapshot_slot=slots,
    ),
    st.builds(pm.Accept, sender=node_ids, ballot=ballots, slot=slots, value=values, decided_slot=slots),
    st.builds(pm.Accepted, sender=node_ids, ballot=ballots, slot=slots),
    st.builds(pm.Nack, sender=node_ids, ballot=ballots, promised=ballots),
    st.builds(pm.Decide, sender=node_ids, ballot=ballots, decided_slot=slots),
    st.builds(pm.Heartbeat, sender=node_ids, ballot=ballots, decided_slot=slots, seq=slots),
    st.builds(pm.HeartbeatAck, sender=node_ids, ballot=ballots, seq=slots),
    st.builds(pm.CatchupRequest, sender=node_ids, first_slot=slots),
    st.builds(pm.CatchupReply, sender=node_ids, entries=st.lists(decided_entries, max_size=4).map(tuple),
              snapshot_slot=slots),
)

str_or_bytes = st.one_of(st.text(max_size=30), st.binary(max_size=30))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False), st.text(max_size=10), st.binary(max_size=10),
)


def _nested(depth: int):
    """Result values with at most ``depth`` levels of lists/maps."""
    if depth == 0:
        return scalars
    inner = _nested(depth - 1)
    return st.one_of(
        scalars, st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3),
    )


results = st.dictionaries(st.text(max_size=8), _nested(wire.RESULT_DEPTH_MAX), max_size=4)


@st.composite
def snapshot_chunks(draw):
    data = draw(st.binary(max_size=50))
    offset = draw(small)
    total = offset + len(data) + draw(small)
    return wire.SnapshotChunk(sender=draw(node_ids), slot=draw(slots), offset=offset, total=total, data=data)


wire_messages = st.one_of(
    st.builds(wire.Hello, node_id=st.integers(min_value=1, max_value=2**63 - 1), cluster_id=st.text(max_size=20),
              engine=st.sampled_from(["core", "classic"])),
    st.builds(wire.PaxosBatch, messages=st.lists(paxos_messages, max_size=6).map(tuple)),
    snapshot_chunks(),
    st.builds(wire.PutRequest, id=req_ids, key=st.text(max_size=20), value=str_or_bytes,
              client_id=st.binary(min_size=16, max_size=16), request_id=u64, ack_below=u64),
    st.builds(wire.DeleteRequest, id=req_ids, key=st.text(max_size=20), prefix=st.booleans(),
              client_id=st.binary(max_size=16), request_id=u64, ack_below=u64),
    st.builds(wire.CasRequest, id=req_ids, key=st.text(max_size=20), expected=st.one_of(st.none(), str_or_bytes),
              new=str_or_bytes, client_id=st.binary(max_size=16), request_id=u64, ack_below=u64),
    st.builds(wire.GetRequest, id=req_ids, key=st.text(max_size=20), linearizable=st.booleans()),
    st.builds(wire.ListRequest, id=req_ids, prefix=st.text(max_size=20), keys_only=st.booleans(),
              linearizable=st.booleans(), limit=st.integers(min_value=0, max_value=2**63 - 1)),
    st.builds(wire.StatusRequest, id=req_ids),
    st.builds(wire.OkReply, id=req_ids, result=results),
    st.builds(wire.ErrorReply, id=st.one_of(st.none(), req_ids), code=st.sampled_from(wire.ERROR_CODES),
              message=st.text(max_size=30), leader=st.one_of(st.none(), st.just("127.0.0.1:7001")),
              refused=st.booleans()),
)


def decode_frame(frame: bytes):
    """Split exactly one frame off a buffer and decode it, checking nothing is left over."""
    buffer = bytearray(frame)
    bodies = wire.split_frames(buffer)
    assert len(bodies) == 1 and not buffer
    return wire.decode_body(bodies[0])


# ---------------------------------------------------------------------------------------------------
# Round trips and layout
# ---------------------------------------------------------------------------------------------------


@given(wire_messages)
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_every_message_survives_encode_then_decode(message):
    decoded = decode_frame(wire.encode_frame(message))
    assert decoded == message
    assert type(decoded) is type(message)


@given(st.lists(paxos_messages, min_size=1, max_size=5))
def test_paxos_batches_decode_to_tuples_and_ballot_objects(msgs):
    decoded = decode_frame(wire.encode_frame(wire.PaxosBatch(messages=tuple(msgs))))
    assert type(decoded.messages) is tuple
    for m in decoded.messages:
        for f in dataclasses.fields(m):
            v = getattr(m, f.name)
            assert type(v) is not list
            if f.name in ("ballot", "promised"):
                assert type(v) is Ballot


def _reference_array(message) -> list:
    """The documented layout, derived independently: [code, then every field in declaration order]."""

    def conv(v):
        if isinstance(v, Ballot):
            return [v.number, v.node_id]
        if isinstance(v, (pm.AcceptedEntry, pm.DecidedEntry)):
            return [conv(getattr(v, f.name)) for f in dataclasses.fields(v)]
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v

    code = pm.MESSAGE_TYPES.index(type(message)) + 1
    return [code] + [conv(getattr(message, f.name)) for f in dataclasses.fields(message)]


@given(paxos_messages)
def test_paxos_array_layout_is_kind_code_then_fields_in_declaration_order(message):
    fields = [f.name for f in dataclasses.fields(message)]
    assert fields[0] == "sender"
    body = wire.encode_body(wire.PaxosBatch(messages=(message,)))
    assert cbor2.loads(body)["m"] == [_reference_array(message)]


def test_kind_codes_follow_message_types_order():
    assert [wire.KIND_CODES[t] for t in pm.MESSAGE_TYPES] == list(range(1, 14))


def test_a_heartbeat_ack_from_an_older_node_without_decided_slot_still_decodes():
    ack = wire.decode_paxos_message([8, 2, [3, 1], 11])
    assert ack == pm.HeartbeatAck(sender=2, ballot=Ballot(3, 1), seq=11, decided_slot=0)
    with pytest.raises(wire.WireError, match="kind 8 needs 4 or 5 elements, got 6"):
        wire.decode_paxos_message([8, 2, [3, 1], 11, 4, 5])


def test_frame_header_is_big_endian_body_length():
    frame = wire.encode_frame(wire.StatusRequest(id=7))
    body = cbor2.dumps({"t": "status", "id": 7})
    assert frame == len(body).to_bytes(4, "big") + body


def test_encode_frames_joins_frames():
    msgs = [wire.StatusRequest(id=i) for i in range(3)]
    data = wire.encode_frames(msgs)
    assert data == b"".join(wire.encode_frame(m) for m in msgs)
    assert [wire.decode_body(b) for b in wire.split_frames(bytearray(data))] == msgs


def test_unknown_extra_fields_are_ignored():
    body = cbor2.dumps({"t": "get", "id": 3, "key": "k", "lin": True, "future": [1, 2, {"x": 1}]})
    assert wire.decode_body(body) == wire.GetRequest(id=3, key="k", linearizable=True)


# ---------------------------------------------------------------------------------------------------
# Encoder contract (our own mistakes raise TypeError / ValueError)
# ---------------------------------------------------------------------------------------------------


def test_encoding_a_non_message_is_a_type_error():
    with pytest.raises(TypeError):
        wire.encode_frame({"t": "get"})
    with pytest.raises(TypeError):
        wire.encode_frame(wire.PaxosBatch(messages=(wire.StatusRequest(id=1),)))


def test_encoding_an_oversize_body_raises_frame_too_large():
    message = wire.PutRequest(id=1, key="k", value=b"x" * 200, client_id=b"c", request_id=1, ack_below=0)
    with pytest.raises(wire.FrameTooLarge):
        wire.encode_frame(message, frame_bytes_max=100)
    assert isinstance(wire.FrameTooLarge("x"), ValueError)


@pytest.mark.parametrize("bad", [
    {"s": {1, 2}}, {"d": datetime.datetime(2020, 1, 1)}, {"n": {1: "int key"}}, {"deep": [[[[[1]]]]]},
    {"big": 2**64}, {"obj": object()},
])
def test_encoding_an_ok_reply_with_a_bad_result_is_a_value_error(bad):
    with pytest.raises(ValueError):
        wire.encode_frame(wire.OkReply(id=1, result=bad))


def test_ok_reply_result_may_nest_exactly_to_the_depth_limit():
    result = {"a": [[{"b": [1.5, None, b"x", True]}]]}
    assert decode_frame(wire.encode_frame(wire.OkReply(id=1, result=result))).result == result


# ---------------------------------------------------------------------------------------------------
# Hostile bytes: WireError and nothing else
# ---------------------------------------------------------------------------------------------------


def _decode_or_wire_error(body: bytes) -> None:
    try:
        message = wire.decode_body(body)
    except wire.WireError:
        return
    # Whatever was accepted must be a real message that encodes back to something decodable.
    assert type(message) in wire.PEER_MESSAGE_TYPES + wire.CLIENT_REQUEST_TYPES + wire.REPLY_TYPES
    assert wire.decode_body(wire.encode_body(message)) == message


def _request_id_of_never_raises(body: bytes) -> None:
    rid = wire.request_id_of(body)
    assert rid is None or (type(rid) is int and 0 <= rid < 2**63)


@given(st.binary(max_size=300))
@settings(max_examples=1000)
def test_decode_body_on_arbitrary_bytes_raises_only_wire_error(body):
    _decode_or_wire_error(body)
    _request_id_of_never_raises(body)


def test_decode_body_on_seeded_random_bytes_raises_only_wire_error():
    rng = random.Random(20240611)
    for _ in range(3000):
        body = rng.randbytes(rng.randrange(1, 200))
        # Start some with a map header so that the decoder gets further than the first byte.
        if rng.random() < 0.5:
            body = bytes([0xA0 | rng.randrange(1, 8)]) + body
        _decode_or_wire_error(body)
        _request_id_of_never_raises(body)


def test_decode_body_on_mutated_valid_frames_raises_only_wire_error():
    rng = random.Random(77)
    samples = [wire.encode_body(m) for m in _samples()]
    for _ in range(3000):
        body = bytearray(rng.choice(samples))
        for _ in range(rng.randrange(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
        if rng.random() < 0.2:
            del body[rng.randrange(len(body)):]
        _decode_or_wire_error(bytes(body))
        _request_id_of_never_raises(bytes(body))


# Arbitrary CBOR-able structures under a known "t": the decoder must validate, never crash.
_any_cbor = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5), st.binary(max_size=5),
              st.datetimes(timezones=st.just(datetime.UTC)), st.decimals(allow_nan=False),
              st.fractions(), st.uuids()),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


@given(st.sampled_from(["hello", "px", "snap", "put", "del", "cas", "get", "list", "status", "ok", "err"]),
       st.dictionaries(st.sampled_from(["id", "key", "value", "m", "r", "node", "cluster", "from", "slot", "off",
                                        "total", "data", "cid", "rq", "ack", "prefix", "expected", "new", "lin",
                                        "keys_only", "limit", "code", "msg", "leader"]), _any_cbor, max_size=8))
@settings(max_examples=1000)
def test_decode_body_on_arbitrary_maps_of_known_type_raises_only_wire_error(kind, fields):
    body = cbor2.dumps({"t": kind, **fields})
    _decode_or_wire_error(body)
    _request_id_of_never_raises(body)


@given(st.lists(_any_cbor, max_size=8))
def test_decode_body_on_arbitrary_px_arrays_raises_only_wire_error(array):
    _decode_or_wire_error(cbor2.dumps({"t": "px", "m": [array]}))


# ---------------------------------------------------------------------------------------------------
# Systematic wrong types
# ---------------------------------------------------------------------------------------------------


def _samples() -> list:
    b = Ballot(3, 2)
    return [
        wire.Hello(node_id=1, cluster_id="kv"),
        wire.SnapshotChunk(sender=2, slot=9, offset=0, total=3, data=b"abc"),
        wire.PutRequest(id=1, key="k", value="v", client_id=b"c" * 16, request_id=5, ack_below=4),
        wire.DeleteRequest(id=2, key="k", prefix=False, client_id=b"c" * 16, request_id=6, ack_below=4),
        wire.CasRequest(id=3, key="k", expected="old", new=b"new", client_id=b"c" * 16, request_id=7, ack_below=4),
        wire.GetRequest(id=4, key="k", linearizable=True),
        wire.ListRequest(id=5, prefix="a/", keys_only=False, linearizable=True, limit=10),
        wire.StatusRequest(id=6),
        wire.BackupRequest(id=9, session=12, offset=4096),
        wire.OkReply(id=7, result={"rev": 3}),
        wire.ErrorReply(id=8, code=wire.NOT_LEADER, message="ask node 2", leader="127.0.0.1:7002"),
        wire.PaxosBatch(messages=(
            pm.Prepare(sender=1, ballot=b, first_slot=4),
            pm.Promise(sender=2, ballot=b, first_slot=1,
                       accepted=(pm.AcceptedEntry(slot=1, ballot=b, value=(b"x",)),),
                       decided=(pm.DecidedEntry(slot=0, value=(b"y", b"z")),), snapshot_slot=0),
            pm.Accept(sender=1, ballot=b, slot=5, value=(b"a",), decided_slot=3),
            pm.Accepted(sender=2, ballot=b, slot=5),
            pm.Nack(sender=3, ballot=b, promised=Ballot(4, 3)),
            pm.Decide(sender=1, ballot=b, decided_slot=5),
            pm.Heartbeat(sender=1, ballot=b, decided_slot=5, seq=11),
            pm.HeartbeatAck(sender=2, ballot=b, seq=11, decided_slot=9),
            pm.CatchupRequest(sender=3, first_slot=2),
            pm.CatchupReply(sender=1, entries=(pm.DecidedEntry(slot=2, value=(b"q",)),), snapshot_slot=1),
            pm.Campaign(sender=1, ballot=b, decided_slot=7),
            pm.PreVote(sender=1, ballot=b, decided_slot=7),
            pm.PreVoteReply(sender=2, ballot=b, granted=True),
            pm.PreVoteReply(sender=3, ballot=b, granted=False),
        )),
    ]


# The CBOR types each map field accepts; every other candidate value below must be refused.
INT, BOOL, STR, BYTES, NONE, MAP, ARRAY = "int", "bool", "str", "bytes", "none", "map", "array"
FIELD_KINDS = {
    "hello": {"node": {INT}, "cluster": {STR}},
    "snap": {"from": {INT}, "slot": {INT}, "off": {INT}, "total": {INT}, "data": {BYTES}},
    "put": {"id": {INT}, "key": {STR}, "value": {STR, BYTES}, "cid": {BYTES}, "rq": {INT}, "ack": {INT}},
    "del": {"id": {INT}, "key": {STR}, "prefix": {BOOL}, "cid": {BYTES}, "rq": {INT}, "ack": {INT}},
    "cas": {"id": {INT}, "key": {STR}, "expected": {STR, BYTES, NONE}, "new": {STR, BYTES}, "cid": {BYTES},
            "rq": {INT}, "ack": {INT}},
    "get": {"id": {INT}, "key": {STR}, "lin": {BOOL}},
    "list": {"id": {INT}, "prefix": {STR}, "keys_only": {BOOL}, "lin": {BOOL}, "limit": {INT}},
    "status": {"id": {INT}},
    "backup": {"id": {INT}, "session": {INT}, "off": {INT}},
    "ok": {"id": {INT}, "r": {MAP}},
    "err": {"id": {INT, NONE}, "code": {STR}, "msg": {STR}, "leader": {STR, NONE}},
    "px": {"m": {ARRAY}},
}

# (kind, value): cbor2 encodes the datetime, Decimal, Fraction, UUID, set and regex as tags and
# decodes them back to those Python objects, which is exactly what the decoder must not trust.
CANDIDATES = [
    (INT, 1), (BOOL, True), (BOOL, False), (STR, "s"), (BYTES, b"b"), (NONE, None), (MAP, {"a": 1}),
    (ARRAY, [1]), ("float", 1.5), ("float", 1.0), ("datetime", datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)),
    ("decimal", decimal.Decimal("1.5")), ("fraction", fractions.Fraction(1, 3)), ("uuid", uuid.UUID(int=5)),
    ("set", {1, 2}), ("regex", re.compile("a+")), ("tag", cbor2.CBORTag(4000, 1)),
]


def _sample_maps() -> list[dict]:
    return [cbor2.loads(wire.encode_body(m)) for m in _samples()]


def test_the_wrong_type_table_covers_every_map_field():
    for obj in _sample_maps():
        assert set(obj) - {"t"} == set(FIELD_KINDS[obj["t"]]), obj["t"]


@pytest.mark.parametrize("obj", _sample_maps(), ids=lambda o: o["t"])
def test_every_map_field_refuses_every_wrong_type_and_absence(obj):
    assert wire.decode_body(cbor2.dumps(obj)) is not None  # the unmodified sample is valid
    for field, allowed in FIELD_KINDS[obj["t"]].items():
        for kind, value in CANDIDATES:
            if kind in allowed:
                continue
            bad = dict(obj, **{field: value})
            with pytest.raises(wire.WireError):
                wire.decode_body(cbor2.dumps(bad))
        missing = {k: v for k, v in obj.items() if k != field}
        with pytest.raises(wire.WireError, match="missing"):
            wire.decode_body(cbor2.dumps(missing))


INT_LIMITS = {
    # field: (lowest valid, first invalid above)
    ("hello", "node"): (1, 2**63), ("snap", "from"): (1, 2**64), ("snap", "slot"): (0, 2**64),
    ("put", "id"): (0, 2**63), ("put", "rq"): (0, 2**64), ("put", "ack"): (0, 2**64),
    ("del", "rq"): (0, 2**64), ("cas", "ack"): (0, 2**64), ("get", "id"): (0, 2**63),
    ("list", "limit"): (0, 2**63), ("status", "id"): (0, 2**63), ("ok", "id"): (0, 2**63),
    ("err", "id"): (0, 2**63),
    ("backup", "id"): (0, 2**63), ("backup", "session"): (0, 2**64), ("backup", "off"): (0, 2**64),
}


@pytest.mark.parametrize("kind,field", sorted(INT_LIMITS))
def test_int_fields_refuse_values_outside_their_range(kind, field):
    [obj] = [o for o in _sample_maps() if o["t"] == kind]
    low, limit = INT_LIMITS[(kind, field)]
    for value in (low - 1, limit, 2**70):  # 2**70 travels as a bignum tag and decodes to an int
        with pytest.raises(wire.WireError):
            wire.decode_body(cbor2.dumps(dict(obj, **{field: value})))
    if kind != "snap":  # a snap's offsets are also checked against its total
        wire.decode_body(cbor2.dumps(dict(obj, **{field: limit - 1})))


def test_snapshot_chunk_past_its_total_is_refused():
    obj = {"t": "snap", "from": 1, "slot": 1, "off": 2, "total": 4, "data": b"abc"}
    with pytest.raises(wire.WireError):
        wire.decode_body(cbor2.dumps(obj))


def _paths(x, path=()):
    """Every position (as an index path) inside a nested list, containers included."""
    yield path
    if type(x) is list:
        for i, item in enumerate(x):
            yield from _paths(item, path + (i,))


def _replace(x, path, value):
    if not path:
        return value
    copy = list(x)
    copy[path[0]] = _replace(x[path[0]], path[1:], value)
    return copy


def test_every_position_in_every_px_message_refuses_every_other_type():
    [px] = [o for o in _sample_maps() if o["t"] == "px"]
    py_kind = {int: INT, bool: BOOL, str: STR, bytes: BYTES, list: ARRAY}
    checked = 0
    for array in px["m"]:
        for path in _paths(array):
            if not path:
                continue
            original = _replace(array, (), array)
            here = original
            for i in path:
                here = here[i]
            for kind, value in CANDIDATES:
                if kind == py_kind[type(here)]:
                    continue
                bad = _replace(array, path, value)
                with pytest.raises(wire.WireError):
                    wire.decode_body(cbor2.dumps({"t": "px", "m": [bad]}))
                checked += 1
    assert checked > 1000  # every kind, every ballot, entry and command was visited


@pytest.mark.parametrize("array", [
    [], [0, 1, [1, 1], 0], [11, 1, 2], [1, 1, [1, 1]], [1, 1, [1, 1], 0, 0], [1, 0, [1, 1], 0],
    [1, -1, [1, 1], 0], [1, 1, [1, 1, 1], 0], [1, 1, [-1, 1], 0], [1, 1, [1, -1], 0], [1, 1, [1, 1], -1],
    [1, 1, [1, 1], 2**64], [True, 1, [1, 1], 0], [3, 1, [1, 1], 0, [b"x", "y"], 0], [9, 1, 1.0],
    [10, 1, [[1]], 0], [10, 1, [[1, [], 2]], 0], [2, 1, [1, 1], 0, [[1, [1, 1]]], [], 0],
])
def test_malformed_px_arrays_are_refused(array):
    with pytest.raises(wire.WireError):
        wire.decode_body(cbor2.dumps({"t": "px", "m": [array]}))


@pytest.mark.parametrize("body", [
    cbor2.dumps({"t": "nope", "id": 1}), cbor2.dumps({"id": 1}), cbor2.dumps({"t": 1, "id": 1}),
    cbor2.dumps({"t": ["get"], "id": 1}), cbor2.dumps(["get", 1]), cbor2.dumps("get"), b"",
    cbor2.dumps({"t": "status", "id": 1}) + b"\x00",  # trailing bytes after the item
    cbor2.dumps({b"t": "status", "id": 1}), cbor2.dumps(cbor2.CBORTag(4000, {"t": "status", "id": 1})),
    cbor2.dumps({"t": "ok", "id": 1, "r": {"x": {1, 2}}}), cbor2.dumps({"t": "ok", "id": 1, "r": {"x": 2**70}}),
    cbor2.dumps({"t": "ok", "id": 1, "r": {"x": [[[[[1]]]]]}}), cbor2.dumps({"t": "ok", "id": 1, "r": {"x": {1: 2}}}),
    cbor2.dumps({"t": "ok", "id": 1, "r": {"x": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)}}),
    b"\x81" * 1000 + b"\x01",  # nesting far beyond any message
])
def test_bodies_of_the_wrong_shape_are_refused(body):
    with pytest.raises(wire.WireError):
        wire.decode_body(body)


def _one_by_one(bodies: list) -> list:
    """What decode_bodies must return: decode_body of each body, stopping at the first WireError."""
    out = []
    for body in bodies:
        try:
            out.append(wire.decode_body(body))
        except wire.WireError as exc:
            out.append(exc)
            break
    return out


def _same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, wire.WireError):
            assert type(g) is wire.WireError and str(g) == str(w)
        else:
            assert g == w


def test_decode_bodies_agrees_with_decode_body_on_good_and_mutated_bodies():
    rng = random.Random(4242)
    samples = [wire.encode_body(m) for m in _samples()]
    for _ in range(2000):
        bodies = [rng.choice(samples) for _ in range(rng.randrange(1, 6))]
        if rng.random() < 0.5:  # damage one of them: flipped bytes, a cut, or a byte too many
            i = rng.randrange(len(bodies))
            body = bytearray(bodies[i])
            how = rng.randrange(3)
            if how == 0:
                body[rng.randrange(len(body))] = rng.randrange(256)
            elif how == 1 and len(body) > 1:
                del body[rng.randrange(1, len(body)):]
            else:
                body.append(rng.randrange(256))
            bodies[i] = bytes(body)
        _same(wire.decode_bodies(bodies), _one_by_one(bodies))


def test_decode_bodies_holds_each_item_to_its_own_frame():
    ok = wire.encode_body(wire.StatusRequest(id=1))
    # An item cut short would be completed by the next frame's bytes if frames were read as one stream.
    first, rest = ok[:-1], ok[-1:] + ok
    got = wire.decode_bodies([ok, first, rest])
    assert got[0] == wire.StatusRequest(id=1)
    assert isinstance(got[1], wire.WireError) and len(got) == 2
    # Two items in one frame: refused, and the frame after it is not decoded.
    got = wire.decode_bodies([ok + ok, ok])
    assert len(got) == 1 and "bytes after the CBOR item" in str(got[0])
    # A shared value (tag 28) in one frame cannot be referenced (tag 29) from the next.
    shared = cbor2.dumps(cbor2.CBORTag(28, {"t": "status", "id": 1}))
    reference = cbor2.dumps(cbor2.CBORTag(29, 0))
    got = wire.decode_bodies([shared, reference])
    assert got[0] == wire.StatusRequest(id=1) and isinstance(got[1], wire.WireError)


def test_request_id_of_finds_the_id_of_a_rejected_request():
    body = cbor2.dumps({"t": "put", "id": 42, "key": 5})
    with pytest.raises(wire.WireError):
        wire.decode_body(body)
    assert wire.request_id_of(body) == 42
    assert wire.request_id_of(cbor2.dumps({"t": "put", "id": True})) is None
    assert wire.request_id_of(cbor2.dumps({"t": "put", "id": -1})) is None
    assert wire.request_id_of(cbor2.dumps([1, 2])) is None
    assert wire.request_id_of(b"\xff\xff") is None


# ---------------------------------------------------------------------------------------------------
# split_frames
# ---------------------------------------------------------------------------------------------------


def test_split_frames_refuses_an_oversize_length_before_the_body_arrives():
    buffer = bytearray((2**31).to_bytes(4, "big"))
    with pytest.raises(wire.WireError):
        wire.split_frames(buffer)
    buffer = bytearray((101).to_bytes(4, "big") + b"x")
    with pytest.raises(wire.WireError):
        wire.split_frames(buffer, frame_bytes_max=100)


def test_split_frames_refuses_a_zero_length():
    with pytest.raises(wire.WireError):
        wire.split_frames(bytearray(b"\x00\x00\x00\x00"))


def test_split_frames_keeps_an_incomplete_frame():
    frame = wire.encode_frame(wire.StatusRequest(id=1))
    for cut in range(len(frame)):
        buffer = bytearray(frame[:cut])
        assert wire.split_frames(buffer) == []
        assert buffer == frame[:cut]


def test_split_frames_hands_out_good_frames_before_refusing_a_bad_header():
    good = wire.encode_frames([wire.StatusRequest(id=1), wire.StatusRequest(id=2)])
    buffer = bytearray(good + (2**31).to_bytes(4, "big"))
    bodies = wire.split_frames(buffer)
    assert [wire.decode_body(b).id for b in bodies] == [1, 2]
    with pytest.raises(wire.WireError):
        wire.split_frames(buffer)


@pytest.mark.parametrize("head,says", [
    (b"HTTP/1.1 200 OK\r\n", "speaks HTTP (a metrics or dashboard address?), not the kv protocol"),
    (b"GET /metrics HTTP/1.1\r\n", "speaks HTTP, not the kv protocol"),
    (b"\x16\x03\x01\x02\x00\x01", "speaks TLS and this side does not"),  # a ClientHello
    (b"\x15\x03\x03\x00\x02\x02\x28", "speaks TLS and this side does not"),  # an alert
])
def test_a_bad_length_that_starts_another_protocol_says_which(head, says):
    """Pointed at a metrics port, or at a TLS node without TLS, the error names the protocol instead of
    only a length that is the protocol's first four bytes (1213486160 is "HTTP")."""
    with pytest.raises(wire.WireError, match="is outside") as raised:
        wire.split_frames(bytearray(head))
    assert says in str(raised.value)
    with pytest.raises(wire.WireError) as plain:
        wire.split_frames(bytearray(b"\xff\xff\xff\xff"))
    assert "speaks" not in str(plain.value)


def test_gave_up_reason_says_no_leader_when_a_node_answered_so_and_the_rest_were_unreachable():
    refused = "connection failed: [Errno 111] Connection refused"
    assert wire.gave_up_reason(refused, no_leader_seen=True) == (
        "no leader among the nodes that answered; the last attempt: " + refused)
    assert wire.gave_up_reason(refused, no_leader_seen=False) == refused
    assert wire.gave_up_reason("no leader", no_leader_seen=True) == "no leader"


# ---------------------------------------------------------------------------------------------------
# FrameReader over an in-memory stream
# ---------------------------------------------------------------------------------------------------

FRAMES = [
    wire.StatusRequest(id=1),
    wire.PutRequest(id=2, key="k", value=b"v" * 300, client_id=b"c" * 16, request_id=1, ack_below=0),
    wire.OkReply(id=2, result={"rev": 1}),
]


async def _read_all(reader: wire.FrameReader) -> list:
    got = []
    for _ in range(10_000):
        bodies = await reader.receive_frames()
        if not bodies:
            return got
        got.extend(wire.decode_body(b) for b in bodies)
    raise AssertionError("reader never reached end of stream")


async def test_frames_split_at_every_byte_boundary_reassemble():
    data = wire.encode_frames(FRAMES)
    for cut in range(1, len(data)):
        left, right = trio.testing.memory_stream_pair()
        reader = wire.FrameReader(right)
        got = []

        async def send(left: trio.abc.SendStream, cut: int) -> None:
            await left.send_all(data[:cut])
            await trio.testing.wait_all_tasks_blocked()
            await left.send_all(data[cut:])
            await left.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send, left, cut)
            got = await _read_all(reader)
        assert got == FRAMES, cut


async def test_frames_sent_one_byte_at_a_time_reassemble():
    data = wire.encode_frames(FRAMES)
    left, right = trio.testing.memory_stream_pair()
    reader = wire.FrameReader(right, frame_bytes_max=400)

    async def send() -> None:
        for i in range(len(data)):
            await left.send_all(data[i:i + 1])
            await trio.testing.wait_all_tasks_blocked()
        await left.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        got = []
        for _ in range(len(data) + 1):
            bodies = await reader.receive_frames()
            # Never more than one incomplete frame is kept beyond what was handed out.
            assert len(reader._buffer) <= wire.HEADER_BYTES + 400
            if not bodies:
                break
            got.extend(wire.decode_body(b) for b in bodies)
    assert got == FRAMES


async def test_receive_frames_returns_every_buffered_frame_at_once():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(wire.encode_frames(FRAMES))
    bodies = await wire.FrameReader(right).receive_frames()
    assert [wire.decode_body(b) for b in bodies] == FRAMES


async def test_clean_end_of_stream_gives_an_empty_list():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(wire.encode_frame(FRAMES[0]))
    await left.aclose()
    reader = wire.FrameReader(right)
    assert len(await reader.receive_frames()) == 1
    assert await reader.receive_frames() == []


@pytest.mark.parametrize("cut", [1, 3, 4, 6])
async def test_end_of_stream_inside_a_frame_is_a_wire_error(cut):
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(wire.encode_frame(FRAMES[1])[:cut])
    await left.aclose()
    with pytest.raises(wire.WireError):
        await wire.FrameReader(right).receive_frames()


async def test_reader_refuses_an_oversize_length_without_waiting_for_the_body():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all((2**31).to_bytes(4, "big"))  # the stream stays open: no body will come
    with pytest.raises(wire.WireError):
        await wire.FrameReader(right).receive_frames()


async def test_reader_hands_out_good_frames_then_refuses_the_bad_header():
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(wire.encode_frame(FRAMES[0]) + (0).to_bytes(4, "big"))
    reader = wire.FrameReader(right)
    assert [wire.decode_body(b) for b in await reader.receive_frames()] == [FRAMES[0]]
    with pytest.raises(wire.WireError):
        await reader.receive_frames()


# ---------------------------------------------------------------------------------------------------
# FrameReader over a real socket (it reads the socket itself: FrameReader._receive_raw)
# ---------------------------------------------------------------------------------------------------


class _RecordingStream(trio.abc.ReceiveStream):
    """Hands out ``data`` as fast as asked, and records how much each ``receive_some`` asked for."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked: list[int] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        assert max_bytes is not None
        self.asked.append(max_bytes)
        piece, self.data = self.data[:max_bytes], self.data[max_bytes:]
        return piece

    async def aclose(self) -> None:
        pass


async def test_reader_asks_for_the_rest_of_a_large_frame_at_once():
    # Each read is a pass of the scheduler: a 4 MiB frame in 64 KiB reads took 64 passes, each behind
    # every other task's step (a follower's heartbeats then came late: bench/big_values.py).
    body = b"x" * (4 << 20)
    stream = _RecordingStream(len(body).to_bytes(4, "big") + body
                              + wire.encode_frame(FRAMES[0]))
    reader = wire.FrameReader(stream, frame_bytes_max=8 << 20)
    assert await reader.receive_frames() == [body]
    assert stream.asked == [wire.RECEIVE_CHUNK_BYTES, len(body) + wire.HEADER_BYTES - wire.RECEIVE_CHUNK_BYTES]
    # a small frame next: a chunk, as before
    assert [wire.decode_body(b) for b in await reader.receive_frames()] == [FRAMES[0]]
    assert stream.asked[2:] == [wire.RECEIVE_CHUNK_BYTES]


async def test_reader_asks_for_a_huge_frame_in_reads_of_at_most_receive_frame_bytes_max():
    body = b"y" * (20 << 20)
    stream = _RecordingStream(len(body).to_bytes(4, "big") + body)
    reader = wire.FrameReader(stream, frame_bytes_max=32 << 20)
    assert await reader.receive_frames() == [body]
    assert max(stream.asked) == wire.RECEIVE_FRAME_BYTES_MAX
    assert len(stream.asked) == 4  # 64 KiB, then 8 + 8 + the last 4 MiB or so


def _socket_stream_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    return trio.SocketStream(a), trio.SocketStream(b)


async def test_socket_reader_reassembles_frames_sent_in_pieces_then_sees_the_end():
    left, right = _socket_stream_pair()
    reader = wire.FrameReader(right)
    assert reader._socket is not None  # the direct path is the one under test
    data = wire.encode_frames(FRAMES) * 50

    async def send() -> None:
        for i in range(0, len(data), 97):
            await left.send_all(data[i:i + 97])
            if i % 5:
                await trio.testing.wait_all_tasks_blocked()
        await left.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        got = await _read_all(reader)
    assert got == FRAMES * 50


async def test_socket_reader_waits_first_after_an_empty_socket_until_a_read_brings_several_frames():
    left, right = _socket_stream_pair()
    reader = wire.FrameReader(right)
    assert not reader._drained  # reads first, as trio does

    async def send_later(data: bytes) -> None:
        await trio.testing.wait_all_tasks_blocked()
        await left.send_all(data)

    async with trio.open_nursery() as nursery:  # the socket is empty: the read fails, then waits
        nursery.start_soon(send_later, wire.encode_frame(FRAMES[0]))
        assert len(await reader.receive_frames()) == 1
    assert reader._drained  # one request at a time: the next read waits for readiness first
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later, wire.encode_frames(FRAMES))
        assert len(await reader.receive_frames()) == 3
    assert not reader._drained  # several frames at once: load, read first again
    await left.aclose()


async def test_socket_reader_end_of_stream_inside_a_frame_is_a_wire_error():
    left, right = _socket_stream_pair()
    await left.send_all(wire.encode_frame(FRAMES[1])[:5])
    await left.aclose()
    with pytest.raises(wire.WireError):
        await wire.FrameReader(right).receive_frames()


async def test_socket_reader_yields_even_when_data_is_there_at_once():
    left, right = _socket_stream_pair()
    await left.send_all(wire.encode_frame(FRAMES[0]))
    reader = wire.FrameReader(right)
    with trio.CancelScope() as scope:
        scope.cancel()
        await reader.receive_frames()  # a checkpoint: raises Cancelled
    assert scope.cancelled_caught
    assert len(await reader.receive_frames()) == 1  # nothing was lost


async def test_socket_reader_closed_by_another_task_raises_closed_resource():
    left, right = _socket_stream_pair()
    reader = wire.FrameReader(right)

    raised: list[BaseException] = []

    async def read() -> None:
        try:
            await reader.receive_frames()
        except trio.ClosedResourceError as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        await right.aclose()
    assert len(raised) == 1
    with pytest.raises(trio.ClosedResourceError):
        await reader.receive_frames()  # and again, on the closed socket
    await left.aclose()


async def test_socket_reader_reset_by_the_peer_is_a_broken_resource():
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    reader = wire.FrameReader(server)
    assert reader._socket is not None
    client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.send_all(b"\0\0")  # half a header
    await client.aclose()  # with SO_LINGER 0: a reset
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(3):
            await reader.receive_frames()
    await server.aclose()
    await listener.aclose()


def _worked_example_dumps() -> list[bytes]:
    """The hex dumps of docs/protocol.md's section 6, in order, as bytes."""
    text = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text[text.index("## 6. Worked example"):text.index("## 7.")]
    dumps = []
    for block in section.split("```")[1::2]:
        dumps.append(bytes.fromhex("".join(line[6:] for line in block.strip().splitlines())))
    return dumps


def test_the_worked_example_in_protocol_md_is_what_the_encoder_produces():
    """docs/protocol.md section 6 prints the bytes of a put, the leader's answer and a follower's refusal:
    they are what the encoder and the server's not_leader answer produce (a change to either must update
    the doc)."""
    from kvstore.waiters import not_leader_reply

    put = wire.PutRequest(id=1, key="color", value="blue", client_id=bytes.fromhex("9f0c6b2e11a4d3775e08c1f2a6b4d9e0"),
                          request_id=1, ack_below=1)
    expected = [wire.encode_frame(put), wire.encode_frame(wire.OkReply(id=1, result={"rev": 42})),
                wire.encode_frame(not_leader_reply(1, "127.0.0.1:7002", refused=True))]
    assert _worked_example_dumps() == expected


@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=0, max_value=2**64 - 1),
       st.integers(min_value=0, max_value=2**64 - 1), st.booleans())
def test_write_result_frames_are_the_ok_reply_frames(rid, rev, deleted, ok):
    """The shortcut for write results encodes exactly what encode_frame(OkReply(...)) does."""
    for result in ({"rev": rev}, {"deleted": deleted, "rev": rev}, {"ok": ok, "rev": rev}):
        frame = wire.encode_write_result_frame(rid, result)
        assert frame == wire.encode_frame(wire.OkReply(id=rid, result=result))


@given(st.integers(min_value=0, max_value=2**63 - 1), st.integers(min_value=0, max_value=2**64 - 1),
       st.lists(st.tuples(st.text(min_size=1, max_size=10), st.text(max_size=10) | st.binary(max_size=10),
                          st.integers(min_value=1, max_value=2**63), st.integers(min_value=0, max_value=2**64 - 1)),
                max_size=8),
       st.sampled_from(["kv", "k", "kvm", "km"]))
def test_range_result_frames_are_the_ok_reply_frames(rid, rev, entries, shape):
    """The shortcut for range answers encodes exactly what encode_frame(OkReply(...)) does, in every
    shape of item (value or not, versions or not), and refuses what encode_frame refuses as too large."""
    width = {"kv": (0, 1), "k": (0,), "kvm": (0, 1, 2, 3), "km": (0, 2, 3)}[shape]
    result = {"items": [[entry[i] for i in width] for entry in entries], "rev": rev}
    assert wire.encode_range_result_frame(rid, result) == wire.encode_frame(wire.OkReply(id=rid, result=result))
    if entries:
        size = len(wire.encode_frame(wire.OkReply(id=rid, result=result))) - wire.HEADER_BYTES
        with pytest.raises(wire.FrameTooLarge):
            wire.encode_range_result_frame(rid, result, frame_bytes_max=size - 1)
        with pytest.raises(wire.FrameTooLarge):
            wire.encode_frame(wire.OkReply(id=rid, result=result), frame_bytes_max=size - 1)


@given(st.integers(min_value=0, max_value=2**63 - 1), st.text(max_size=30) | st.binary(max_size=30),
       st.text(max_size=30) | st.binary(max_size=300), st.binary(min_size=1, max_size=64),
       st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=2**64 - 1))
def test_put_request_frames_are_the_put_request_frames(rid, key, value, cid, rq, ack):
    """The client's shortcut for puts encodes exactly what encode_frame(PutRequest(...)) does."""
    frame = wire.encode_put_request_frame(rid, key, value, cid, rq, ack)
    assert frame == wire.encode_frame(wire.PutRequest(id=rid, key=key, value=value, client_id=cid,
                                                      request_id=rq, ack_below=ack))


def test_a_put_request_frame_too_large_is_refused():
    with pytest.raises(wire.FrameTooLarge):
        wire.encode_put_request_frame(1, "k", b"v" * 2000, b"c", 1, 0, frame_bytes_max=1000)


def test_hello_carries_an_optional_incarnation():
    """kvstore.identity: a Hello names the dialing node's incarnation ("inc"); one from an older node has none."""
    with_inc = wire.Hello(node_id=2, cluster_id="kv", incarnation="00ff00ff00ff00ff")
    assert wire.decode_body(wire.encode_frame(with_inc)[4:]) == with_inc
    assert wire.decode_body(cbor2.dumps({"t": "hello", "node": 2, "cluster": "kv"})).incarnation is None
    with pytest.raises(wire.WireError):
        wire.decode_body(cbor2.dumps({"t": "hello", "node": 2, "cluster": "kv", "inc": 7}))


def test_hello_carries_an_optional_engine():
    """kv serve --engine: a Hello names a non-core engine ("eng"); one without it (the core, or a node
    older than engines) decodes as "core", and a core Hello is encoded as before."""
    classic = wire.Hello(node_id=2, cluster_id="kv", incarnation="00ff00ff00ff00ff", engine="classic")
    assert wire.decode_body(wire.encode_frame(classic)[4:]) == classic
    core = wire.Hello(node_id=2, cluster_id="kv")
    assert wire.encode_frame(core)[4:] == cbor2.dumps({"t": "hello", "node": 2, "cluster": "kv"})
    assert wire.decode_body(cbor2.dumps({"t": "hello", "node": 2, "cluster": "kv"})).engine == "core"
    with pytest.raises(wire.WireError):
        wire.decode_body(cbor2.dumps({"t": "hello", "node": 2, "cluster": "kv", "eng": 1}))


def test_hello_carries_an_optional_addressee():
    """A Hello names the node its sender meant to reach ("to"), which refuses a link meant for another; one
    from an older node has none, and an older node reads past it (decoders take the keys they know)."""
    meant = wire.Hello(node_id=1, cluster_id="kv", to=3)
    assert wire.decode_body(wire.encode_frame(meant)[4:]) == meant
    assert wire.decode_body(cbor2.dumps({"t": "hello", "node": 1, "cluster": "kv"})).to is None
    for bad in (0, -1, "3", 1 << 63):
        with pytest.raises(wire.WireError):
            wire.decode_body(cbor2.dumps({"t": "hello", "node": 1, "cluster": "kv", "to": bad}))


def test_admin_requests_round_trip_and_bad_ones_get_a_clear_error():
    request = wire.AdminRequest(id=3, op="member_add", node=4, address="127.0.0.1:7004")
    assert wire.decode_body(wire.encode_body(request)) == request
    with pytest.raises(wire.WireError, match="admin.op: unknown operation 'explode'"):
        wire.decode_body(cbor2.dumps({"t": "admin", "id": 1, "op": "explode", "node": 0, "addr": ""}))
    with pytest.raises(wire.WireError, match="admin.node"):
        wire.decode_body(cbor2.dumps({"t": "admin", "id": 1, "op": "member_remove", "node": -1, "addr": ""}))
    with pytest.raises(wire.WireError, match="admin.addr: longer than 300"):
        wire.decode_body(cbor2.dumps({"t": "admin", "id": 1, "op": "member_add", "node": 4, "addr": "x" * 301}))


def test_backup_requests_round_trip_with_their_defaults():
    """kv snapshot save: session 0 begins a backup; a session and an offset pull its next piece."""
    begin = wire.BackupRequest(id=1)
    assert (begin.session, begin.offset) == (0, 0)
    assert wire.decode_body(wire.encode_body(begin)) == begin
    pull = wire.BackupRequest(id=2, session=2**53, offset=3 << 20)
    assert wire.decode_body(wire.encode_frame(pull)[4:]) == pull
    with pytest.raises(wire.WireError, match="backup.off"):
        wire.decode_body(cbor2.dumps({"t": "backup", "id": 1, "session": 1, "off": -1}))


# --- the node's budget for large frames while they arrive (wire.FrameBudget) -----------------------

BIG = 200_000  # a body over RECEIVE_CHUNK_BYTES: its frame takes its size from the budget


async def _send_start_of_frame(stream: trio.abc.SendStream, body_bytes: int, sent: int) -> None:
    await stream.send_all(struct.pack(">I", body_bytes) + b"x" * sent)


async def test_a_large_frame_holds_the_budget_while_it_arrives_and_gives_it_back_when_complete():
    budget = wire.FrameBudget(1_000_000)
    left, right = trio.testing.memory_stream_pair()
    reader = wire.FrameReader(right, budget=budget)
    body = b"y" * BIG
    async with trio.open_nursery() as nursery:
        got: list[list[bytes]] = []
        nursery.start_soon(lambda: _collect(reader, got))
        await left.send_all(struct.pack(">I", BIG) + body[:70_000])
        await trio.testing.wait_all_tasks_blocked()
        assert budget.held == 4 + BIG  # the whole frame's size, taken while it is incomplete
        await left.send_all(body[70_000:])
        await trio.testing.wait_all_tasks_blocked()
    assert got == [[body]]
    assert budget.held == 0


async def _collect(reader: wire.FrameReader, into: list[list[bytes]]) -> None:
    into.append(await reader.receive_frames())


async def test_a_large_frame_that_finds_the_budget_taken_is_refused_and_small_frames_are_not():
    budget = wire.FrameBudget(300_000)
    a_left, a_right = trio.testing.memory_stream_pair()
    b_left, b_right = trio.testing.memory_stream_pair()
    c_left, c_right = trio.testing.memory_stream_pair()
    first = wire.FrameReader(a_right, budget=budget)
    second = wire.FrameReader(b_right, budget=budget)
    small = wire.FrameReader(c_right, budget=budget)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first.receive_frames)  # stalls in the middle of a BIG frame, holding the budget
        await _send_start_of_frame(a_left, BIG, 70_000)
        await trio.testing.wait_all_tasks_blocked()
        assert budget.held == 4 + BIG
        await _send_start_of_frame(b_left, BIG, 70_000)
        with pytest.raises(wire.FrameBudgetExhausted,
                           match=r"a frame of 200004 bytes cannot be received now") as refused:
            await second.receive_frames()
        assert budget.held == 4 + BIG  # the refused frame took nothing
        # What the reader had of the refused frame is dropped; discard reads and drops the rest, and
        # nothing more (the bytes after the frame stay unread).
        arrived = 4 + BIG - refused.value.unread  # (the header and what the reader's first read brought)
        assert 4 <= arrived <= 4 + 70_000
        await b_left.send_all(b"y" * (BIG - 70_000) + b"after")
        with trio.fail_after(5):
            await second.discard(refused.value.unread)
        assert await b_right.receive_some(100) == b"after"
        await c_left.send_all(struct.pack(">I", 5) + b"hello")
        assert await small.receive_frames() == [b"hello"]  # a small frame needs no budget
        nursery.cancel_scope.cancel()  # the first connection ends in the middle of its frame
    assert budget.held == 0  # ... and gives its share back


async def test_a_reader_without_a_budget_takes_nothing():
    left, right = trio.testing.memory_stream_pair()
    reader = wire.FrameReader(right)
    body = b"z" * BIG
    await left.send_all(struct.pack(">I", BIG) + body)
    assert await reader.receive_frames() == [body]


def test_a_frame_budget_needs_a_byte():
    with pytest.raises(ValueError, match="at least 1 byte"):
        wire.FrameBudget(0)


async def test_a_large_frame_that_stalls_is_refused_and_gives_its_room_back(autojump_clock):
    budget = wire.FrameBudget(1_000_000)
    left, right = trio.testing.memory_stream_pair()
    reader = wire.FrameReader(right, budget=budget)
    await _send_start_of_frame(left, BIG, 70_000)
    started = trio.current_time()
    stalled = rf"no byte of a frame of {4 + BIG} bytes came for 10s"
    with trio.fail_after(60), pytest.raises(wire.WireError, match=stalled):
        await reader.receive_frames()
    assert trio.current_time() - started == pytest.approx(wire.FRAME_STALL_SECONDS)
    assert budget.held == 0


async def test_a_large_frame_that_comes_slowly_but_keeps_coming_is_received(autojump_clock):
    budget = wire.FrameBudget(1_000_000)
    left, right = trio.testing.memory_stream_pair()
    reader = wire.FrameReader(right, budget=budget)
    body = bytes(range(256)) * (BIG // 256) + b"z" * (BIG % 256)

    async def trickle() -> None:
        data = struct.pack(">I", BIG) + body
        for i in range(0, len(data), 10_000):  # 80 kB/s, with a pause of 9 s in the middle: never a stall
            await left.send_all(data[i:i + 10_000])
            await trio.sleep(wire.FRAME_STALL_SECONDS - 1 if i == 100_000 else 0.125)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        with trio.fail_after(120):
            assert await reader.receive_frames() == [body]
    assert budget.held == 0


async def test_a_large_frame_that_trickles_is_refused_and_gives_its_room_back(autojump_clock):
    """A byte every second never stalls, but the frame must arrive at FRAME_MIN_BYTES_PER_SECOND after the
    grace of a stall: otherwise it would hold its room until the idle-client timeout (600 s)."""
    budget = wire.FrameBudget(1_000_000)
    left, right = trio.testing.memory_stream_pair()
    reader = wire.FrameReader(right, budget=budget)
    size = 4 + BIG

    async def trickle() -> None:
        await _send_start_of_frame(left, BIG, 70_000)
        for _ in range(1000):
            await trio.sleep(1)
            await left.send_all(b"x")

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        with trio.fail_after(120), pytest.raises(wire.WireError, match=rf"a frame of {size} bytes came slower than "
                                                                         rf"{wire.FRAME_MIN_BYTES_PER_SECOND} bytes/s"):
            await reader.receive_frames()
        nursery.cancel_scope.cancel()
    limit = wire.FRAME_STALL_SECONDS + size / wire.FRAME_MIN_BYTES_PER_SECOND
    assert trio.current_time() - started == pytest.approx(limit, abs=0.01)
    assert budget.held == 0


def test_certificate_refusals_are_told_from_other_connection_failures():
    import ssl

    verify = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    alert = ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)")
    required = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    for refused in (verify, alert, required):
        assert wire.certificate_refused(refused), refused
    others = [None, ConnectionResetError(104, "Connection reset by peer"), OSError("connection refused"),
              ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
              ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac")]
    for other in others:
        assert not wire.certificate_refused(other), other
    # A node that answered the handshake in plaintext is the other setup error retrying will not mend
    plaintext_node = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    assert wire.handshake_refused(plaintext_node) and not wire.certificate_refused(plaintext_node)
    for refused in (verify, alert, required):
        assert wire.handshake_refused(refused), refused
    for other in others[:3] + others[4:]:
        assert not wire.handshake_refused(other), other


def test_a_pre_vote_reply_grants_with_a_bool_only():
    assert wire.decode_paxos_message([13, 2, [3, 1], False]) == pm.PreVoteReply(sender=2, ballot=Ballot(3, 1),
                                                                               granted=False)
    for bad in (1, 0, None, "yes"):
        with pytest.raises(wire.WireError, match="granted must be a bool"):
            wire.decode_paxos_message([13, 2, [3, 1], bad])


def test_a_later_version_s_message_kind_is_skipped_not_a_broken_link():
    """Versions before this one closed a peer link on an unknown kind, so a rolling upgrade to a version
    with new messages (this one's PreVote) lost links to the older nodes. Kinds above the last one
    known (up to 255) are skipped; 0, negative and larger kinds are still malformed."""
    prepare = [1, 1, [1, 1], 0]
    batch = wire.decode_body(cbor2.dumps({"t": "px", "m": [[14, 1, "anything"], prepare, [255]]}))
    assert batch.messages == (pm.Prepare(sender=1, ballot=Ballot(1, 1), first_slot=0),)
    for kind in (0, -1, 256):
        with pytest.raises(wire.WireError, match="unknown message kind"):
            wire.decode_body(cbor2.dumps({"t": "px", "m": [[kind, 1, [1, 1], 0]]}))


def test_an_int_out_of_range_is_named_with_its_value():
    """QA: "hello.node: expected an int in [1, 2**63), got int" did not say which int."""
    body = cbor2.dumps({"t": "get", "id": 2**64, "key": "k", "lin": True})
    expected = r"get\.id: expected an int in \[0, 2\*\*63\), got int 18446744073709551616"
    with pytest.raises(wire.WireError, match=expected):
        wire.decode_body(body)
    body = cbor2.dumps({"t": "get", "id": -(10**40), "key": "k", "lin": True})
    with pytest.raises(wire.WireError, match=r"got int -10000000000\.\.\. \(41 digits\)"):
        wire.decode_body(body)
    with pytest.raises(wire.WireError, match=r"got str$"):
        wire.decode_body(cbor2.dumps({"t": "get", "id": "7", "key": "k", "lin": True}))
