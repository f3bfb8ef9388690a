"""Tests of ``kvstore.commands``: encode/decode round trips and strict rejection of bad input.

How: every command kind is encoded and decoded back (example tests plus a hypothesis round trip);
the caller's mistakes must raise ValueError on encode; hand-built CBOR with wrong types, tags,
trailing bytes or non-canonical heads must raise CommandError on decode; and hypothesis feeds
``decode_command`` arbitrary bytes (and mutations of valid commands) to check that CommandError is
the only exception it ever raises.
"""
from __future__ import annotations

import datetime
import decimal

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.commands import (
    CLIENT_ID_BYTES_MAX,
    KEY_BYTES_MAX,
    OP_PUT,
    VALUE_BYTES_MAX,
    Command,
    CommandError,
    decode_command,
    encode_cas,
    encode_delete,
    encode_put,
)

CID = b"client-1"


def test_put_round_trip():
    data = encode_put(CID, 7, 3, "alpha", b"\x00value")
    assert decode_command(data) == Command(op="put", client_id=CID, request_id=7, ack_below=3,
                                           key="alpha", value=b"\x00value")


def test_put_keeps_str_and_bytes_apart():
    assert decode_command(encode_put(CID, 1, 0, "k", "v")).value == "v"
    assert decode_command(encode_put(CID, 1, 0, "k", b"v")).value == b"v"
    assert type(decode_command(encode_put(CID, 1, 0, "k", "v")).value) is str


def test_delete_round_trip_single_and_prefix():
    single = decode_command(encode_delete(CID, 2, 2, "alpha"))
    assert (single.op, single.key, single.prefix, single.value) == ("delete", "alpha", False, None)
    ranged = decode_command(encode_delete(CID, 3, 2, "al", prefix=True))
    assert (ranged.op, ranged.key, ranged.prefix) == ("delete", "al", True)


def test_delete_empty_key_only_as_prefix():
    assert decode_command(encode_delete(CID, 1, 0, "", prefix=True)).key == ""
    with pytest.raises(ValueError, match="empty"):
        encode_delete(CID, 1, 0, "")


def test_cas_round_trip_with_and_without_expected():
    absent = decode_command(encode_cas(CID, 4, 0, "k", None, "new"))
    assert (absent.op, absent.expected, absent.value) == ("cas", None, "new")
    present = decode_command(encode_cas(CID, 5, 0, "k", b"old", b"new"))
    assert (present.expected, present.value) == (b"old", b"new")


def test_limits_are_inclusive():
    key = "k" * KEY_BYTES_MAX
    value = b"v" * VALUE_BYTES_MAX
    cid = b"c" * CLIENT_ID_BYTES_MAX
    command = decode_command(encode_put(cid, 2**64 - 1, 2**64 - 1, key, value))
    assert (command.key, command.value, command.client_id) == (key, value, cid)


@pytest.mark.parametrize("args, message", [
    ((b"", 1, 0, "k", "v"), "client_id"),
    ((b"x" * (CLIENT_ID_BYTES_MAX + 1), 1, 0, "k", "v"), "client_id"),
    (("text-id", 1, 0, "k", "v"), "client_id"),
    ((CID, True, 0, "k", "v"), "request_id"),
    ((CID, -1, 0, "k", "v"), "request_id"),
    ((CID, 2**64, 0, "k", "v"), "request_id"),
    ((CID, 1.0, 0, "k", "v"), "request_id"),
    ((CID, 1, False, "k", "v"), "ack_below"),
    ((CID, 1, 2, "k", "v"), "ack_below"),
    ((CID, 1, 0, "", "v"), "empty"),
    ((CID, 1, 0, b"k", "v"), "key must be str"),
    ((CID, 1, 0, "k" * (KEY_BYTES_MAX + 1), "v"), "bytes in UTF-8"),
    ((CID, 1, 0, "\u00e9" * (KEY_BYTES_MAX // 2 + 1), "v"), "bytes in UTF-8"),  # 2 bytes per char
    ((CID, 1, 0, "\ud800", "v"), "surrogate"),
    ((CID, 1, 0, "k", 5), "value must be str or bytes"),
    ((CID, 1, 0, "k", None), "value must be str or bytes"),
    ((CID, 1, 0, "k", bytearray(b"v")), "value must be str or bytes"),
    ((CID, 1, 0, "k", b"v" * (VALUE_BYTES_MAX + 1)), "more than"),
    ((CID, 1, 0, "k", "\u00e9" * (VALUE_BYTES_MAX // 2 + 1)), "more than"),
])
def test_encode_put_rejects_caller_mistakes(args, message):
    with pytest.raises(ValueError, match=message):
        encode_put(*args)


def test_encode_delete_and_cas_reject_caller_mistakes():
    with pytest.raises(ValueError, match="prefix must be bool"):
        encode_delete(CID, 1, 0, "k", prefix=1)
    with pytest.raises(ValueError, match="expected"):
        encode_cas(CID, 1, 0, "k", 3, "new")
    with pytest.raises(ValueError, match="new value"):
        encode_cas(CID, 1, 0, "k", None, None)
    with pytest.raises(ValueError, match="expected"):
        encode_cas(CID, 1, 0, "k", b"x" * (VALUE_BYTES_MAX + 1), "new")


def _raw(items) -> bytes:
    return cbor2.dumps(items)


@pytest.mark.parametrize("data, message", [
    (b"", "not valid CBOR"),
    (b"\x9f", "not valid CBOR"),
    (_raw({"op": 1}), "array"),
    (_raw([]), "array"),
    (_raw([9, CID, 1, 0, "k", "v"]), "op code"),
    (_raw([True, CID, 1, 0, "k", "v"]), "op code"),
    (_raw([1, CID, 1, 0, "k"]), "6 elements"),
    (_raw([3, CID, 1, 0, "k", None]), "7 elements"),
    (_raw([1, CID, True, 0, "k", "v"]), "request_id"),
    (_raw([1, CID, 1, 0, "k", 1.5]), "value"),
    (_raw([1, CID, 1, 0, "k", datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)]), "value"),
    (_raw([1, CID, decimal.Decimal("1.5"), 0, "k", "v"]), "request_id"),
    (_raw([1, CID, 1, 0, cbor2.CBORTag(32, "k"), "v"]), "key"),
    (_raw([1, CID, 1, 0, "", "v"]), "empty"),
    (_raw([2, CID, 1, 0, "k", 1]), "prefix"),
    (_raw([2, CID, 1, 0, "", False]), "empty"),
    (_raw([3, CID, 1, 0, "k", 7, "v"]), "expected"),
    (_raw([1, "cid", 1, 0, "k", "v"]), "client_id"),
    (_raw([1, CID, 1, 5, "k", "v"]), "ack_below"),
    (_raw([1, CID, 2**64, 0, "k", "v"]), "request_id"),  # encoded as a bignum tag
    (encode_put(CID, 1, 0, "k", "v") + b"\x00", "canonical"),  # trailing byte
    (b"\x9f" + encode_put(CID, 1, 0, "k", "v")[1:] + b"\xff", "canonical"),  # indefinite-length array
    (b"\x86\x18\x01" + encode_put(CID, 1, 0, "k", "v")[2:], "canonical"),  # non-minimal op code
    # self-describe tag (cbor2 versions decode the tagged array differently; rejected either way)
    (b"\xd9\xd9\xf7" + encode_put(CID, 1, 0, "k", "v"), "array|canonical"),
])
def test_decode_rejects_malformed(data, message):
    with pytest.raises(CommandError, match=message):
        decode_command(data)


def test_decode_rejects_non_bytes():
    with pytest.raises(CommandError):
        decode_command("not bytes")  # type: ignore[arg-type]


values = st.one_of(st.text(max_size=20), st.binary(max_size=20))
client_ids = st.binary(min_size=1, max_size=CLIENT_ID_BYTES_MAX)
keys = st.text(min_size=1, max_size=20)


@st.composite
def commands(draw) -> Command:
    request_id = draw(st.integers(0, 2**64 - 1))
    base = dict(client_id=draw(client_ids), request_id=request_id,
                ack_below=draw(st.integers(0, request_id)), key=draw(keys))
    op = draw(st.sampled_from(["put", "delete", "cas"]))
    if op == "put":
        return Command(op="put", value=draw(values), **base)
    if op == "delete":
        return Command(op="delete", prefix=draw(st.booleans()), **base)
    return Command(op="cas", expected=draw(st.none() | values), value=draw(values), **base)


def _encode(command: Command) -> bytes:
    ids = (command.client_id, command.request_id, command.ack_below, command.key)
    if command.op == "put":
        return encode_put(*ids, command.value)
    if command.op == "delete":
        return encode_delete(*ids, command.prefix)
    return encode_cas(*ids, command.expected, command.value)


@given(commands())
def test_round_trip_property(command):
    assert decode_command(_encode(command)) == command


def _decode_or_command_error(data: bytes) -> None:
    try:
        decode_command(data)
    except CommandError:
        pass


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_decode_arbitrary_bytes_raises_only_command_error(data):
    _decode_or_command_error(data)


@settings(max_examples=500)
@given(commands(), st.data())
def test_decode_mutated_commands_raises_only_command_error(command, data):
    # Mutations of valid commands reach deeper than random bytes: past the array head into fields.
    encoded = bytearray(_encode(command))
    for _ in range(data.draw(st.integers(1, 3))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    _decode_or_command_error(bytes(encoded[:cut]))
    _decode_or_command_error(bytes(encoded))


# The leader applies its own proposals from the Command it built, without decoding the bytes again
# (kvstore.server.Node._encode_write): that is only sound if both are always the same command.
_values = st.one_of(st.text(max_size=20), st.binary(max_size=20))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["put", "del", "cas"]), key=st.text(min_size=1, max_size=12),
       value=_values, expected=st.one_of(st.none(), _values), prefix=st.booleans(),
       request_id=st.integers(0, 2**64 - 1), data=st.data())
def test_the_leaders_command_equals_the_decoded_bytes(kind, key, value, expected, prefix, request_id, data):
    from kvstore import wire
    from kvstore.server import Node

    ack_below = data.draw(st.integers(0, request_id))
    common = dict(id=1, key=key, client_id=CID, request_id=request_id, ack_below=ack_below)
    if kind == "put":
        request = wire.PutRequest(value=value, **common)
    elif kind == "del":
        request = wire.DeleteRequest(prefix=prefix, **common)
    else:
        request = wire.CasRequest(expected=expected, new=value, **common)
    command_bytes, command = Node._encode_write(request)
    assert decode_command(command_bytes) == command


@settings(max_examples=400, deadline=None)
@given(client_id=client_ids, request_id=st.integers(0, 2**64 - 1),
       key=st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=300),
       value=st.one_of(st.binary(max_size=70_000), st.text(alphabet=st.characters(max_codepoint=127), max_size=300)),
       data=st.data())
def test_the_put_fast_path_accepts_exactly_the_canonical_encoding(client_id, request_id, key, value, data):
    """Puts are checked without a second encode (their length must be the canonical one). Every length
    class of every field (1, 2, 3, 5 and 9-byte heads) decodes, and a longer head for any one field
    (same values, non-minimal encoding) is refused."""
    ack_below = data.draw(st.integers(0, request_id))
    canonical = encode_put(client_id, request_id, ack_below, key, value)
    assert decode_command(canonical) == Command("put", client_id, request_id, ack_below, key, value)
    # Re-encode one item with a head one size up (the same value, not minimal): 0x18 + 1 byte, ...
    items = [OP_PUT, client_id, request_id, ack_below, key, value]
    which = data.draw(st.integers(0, 5))
    parts = [cbor2.dumps(item) for item in items]
    first = parts[which][0]
    major, info = first & 0xE0, first & 0x1F
    if info < 24:
        widened = bytes([major | 24, info]) + parts[which][1:]
    elif info < 27:
        size = 1 << (info - 24)
        number = int.from_bytes(parts[which][1:1 + size], "big")
        widened = bytes([major | (info + 1)]) + number.to_bytes(2 * size, "big") + parts[which][1 + size:]
    else:
        return  # already the widest head
    bad = b"\x86" + b"".join(parts[:which] + [widened] + parts[which + 1:])
    with pytest.raises(CommandError, match="canonical"):
        decode_command(bad)
