"""``kvstore.frames`` (the codec the one-shot client imports without paxos) agrees with ``kvstore.wire``.

How: every client request (admin and backup included) encoded both ways gives the same bytes; and a
reply body is accepted by ``frames.decode_reply`` exactly when ``wire.decode_body`` decodes it to an
``OkReply`` or ``ErrorReply``,
with the same fields, for hand-written bodies (each field missing or of a wrong type, extra fields, bad
CBOR, tags, trailing bytes, a result nested too deep or with an int out of range) and for maps that
hypothesis draws from those fields and values. Arbitrary bytes raise nothing but ``WireError``.
"""
from __future__ import annotations

import datetime

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore import frames, wire


def test_the_wire_names_are_the_frames_names():
    assert wire.WireError is frames.WireError and wire.FrameTooLarge is frames.FrameTooLarge
    assert wire.ERROR_CODES == frames.ERROR_CODES and wire.FRAME_BYTES_MAX == frames.FRAME_BYTES_MAX
    assert wire.split_frames is frames.split_frames
    assert wire.ADMIN_OPS == frames.ADMIN_OPS


@pytest.mark.parametrize("value", ["text", b"\x00\xff", "é" * 3])
def test_requests_encode_to_the_same_bytes(value):
    cid = b"c" * 16
    pairs = [
        (wire.GetRequest(id=7, key="k", linearizable=True), frames.get_request(7, "k", True)),
        (wire.GetRequest(id=8, key="k", linearizable=False), frames.get_request(8, "k", False)),
        (wire.DeleteRequest(id=9, key="p/", prefix=True, client_id=cid, request_id=3, ack_below=2),
         frames.delete_request(9, "p/", True, cid, 3, 2)),
        (wire.CasRequest(id=10, key="k", expected=None, new=value, client_id=cid, request_id=4, ack_below=4),
         frames.cas_request(10, "k", None, value, cid, 4, 4)),
        (wire.CasRequest(id=11, key="k", expected=value, new="n", client_id=cid, request_id=5, ack_below=5),
         frames.cas_request(11, "k", value, "n", cid, 5, 5)),
        (wire.ListRequest(id=12, prefix="u/", keys_only=True, linearizable=False, limit=10),
         frames.list_request(12, "u/", True, False, 10)),
        (wire.ListRequest(id=14, prefix="u/", keys_only=False, linearizable=True, limit=0, meta=True),
         frames.list_request(14, "u/", False, True, 0, meta=True)),
        (wire.StatusRequest(id=13), frames.status_request(13)),
        (wire.AdminRequest(id=15, op="member_add", node=4, address="h:7004"),
         frames.admin_request(15, "member_add", 4, "h:7004")),
        (wire.AdminRequest(id=16, op="member_list"), frames.admin_request(16, "member_list", 0, "")),
        (wire.BackupRequest(id=17, session=3, offset=65536), frames.backup_request(17, 3, 65536)),
    ]
    for message, mapping in pairs:
        assert wire.encode_frame(message) == frames.encode_map_frame(mapping)
    put = wire.PutRequest(id=14, key="k", value=value, client_id=cid, request_id=6, ack_below=6)
    assert wire.encode_frame(put) == frames.encode_put_request_frame(14, "k", value, cid, 6, 6)


def _by_wire(body: bytes):
    try:
        message = wire.decode_body(body)
    except wire.WireError:
        return None
    if isinstance(message, wire.OkReply):
        return (True, message.id, message.result, "", "", None, False, 0)
    if isinstance(message, wire.ErrorReply):
        return (False, message.id, {}, message.code, message.message, message.leader, message.refused,
                message.horizon)
    return None  # a request: not a reply


def _by_frames(body: bytes):
    try:
        return tuple(frames.decode_reply(body))
    except wire.WireError:
        return None


def _agree(body: bytes) -> None:
    assert _by_frames(body) == _by_wire(body), body


OK = {"t": "ok", "id": 1, "r": {"rev": 3}}
ERR = {"t": "err", "id": 1, "code": "not_leader", "msg": "no", "leader": "h:1"}


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


BODIES = [
    OK, ERR, dict(ERR, id=None), dict(ERR, leader=None), dict(OK, extra=[1, 2]), dict(ERR, extra="x"),
    *[_without(OK, k) for k in OK], *[_without(ERR, k) for k in ERR],
    dict(OK, id=-1), dict(OK, id=2**63), dict(OK, id=True), dict(OK, id=None), dict(OK, id="1"),
    dict(OK, r=[1]), dict(OK, r=None), dict(OK, r={"a": {"b": {"c": {"d": {"e": 1}}}}}), dict(OK, r={"a": 2**64}),
    dict(OK, r={"items": [["k", b"v"], ["k2"]]}), dict(OK, r={1: 2}), dict(OK, r={"a": 1.5, "b": None}),
    dict(ERR, code=1), dict(ERR, msg=b"no"), dict(ERR, leader=7), dict(ERR, id=-5),
    dict(ERR, refused=True), dict(ERR, refused=False), dict(ERR, refused=1), dict(ERR, refused=None),
    dict(ERR, code="expired", horizon=5), dict(ERR, horizon=0), dict(ERR, horizon=2**64 - 1), dict(ERR, horizon=2**64),
    dict(ERR, horizon=-1), dict(ERR, horizon="5"), dict(ERR, horizon=None), dict(ERR, horizon=True),
    {"t": "get", "id": 1, "key": "k", "lin": True}, {"t": 1}, {}, [OK], "ok",
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_replies_decode_alike(body):
    _agree(cbor2.dumps(body))


def test_odd_encodings_decode_alike():
    good = cbor2.dumps(OK)
    _agree(good + b"\x00")  # trailing bytes
    _agree(good[:-1])  # cut short
    _agree(b"\xff\xff")
    _agree(cbor2.dumps(dict(OK, r={"when": datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)})))  # a tag
    _agree(cbor2.dumps({"t": "ok", "id": 1, "r": {"s": {1, 2}}}))
    _agree(b"")


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=5), st.binary(max_size=5),
                   st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["ok", "err"]), fields=st.dictionaries(
    st.sampled_from(["id", "r", "code", "msg", "leader", "refused", "horizon", "other"]), VALUES, max_size=8))
def test_drawn_replies_decode_alike(kind, fields):
    _agree(cbor2.dumps({"t": kind, **fields}))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_wire_error(body):
    try:
        frames.decode_reply(body)
    except wire.WireError:
        pass
